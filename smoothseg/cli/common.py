"""What every console command shares: logging flags, root logging, and clean error exits."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence

from smoothseg.errors import SmoothSegError
from smoothseg.logging_setup import configure_logging
from smoothseg.paths import log_roots

logger = logging.getLogger("smoothseg.cli")


def make_parser(prog: str, description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=description,
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    parser.add_argument("-q", "--quiet", action="store_true", help="log warnings and errors only")
    return parser


def run(parser: argparse.ArgumentParser, body: Callable[[argparse.Namespace], int | None],
        argv: Sequence[str] | None = None) -> int:
    """Parse ``argv``, configure logging, log the data roots and run ``body``.

    A :class:`SmoothSegError` becomes one ``error:`` line on stderr and exit code 2 (no traceback).
    """
    args = parser.parse_args(argv)
    configure_logging(verbose=args.verbose, quiet=args.quiet)
    log_roots(logger)
    try:
        code = body(args)
    except SmoothSegError as exc:
        print(f"{parser.prog}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{parser.prog}: interrupted", file=sys.stderr)
        return 130
    return int(code or 0)

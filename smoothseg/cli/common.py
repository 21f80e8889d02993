"""What every console command shares: logging flags, root logging, and clean error exits."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable, Sequence

from smoothseg.errors import SmoothSegError
from smoothseg.logging_setup import configure_logging
from smoothseg.paths import log_roots

logger = logging.getLogger("smoothseg.cli")


class _DefaultsHelp(argparse.ArgumentDefaultsHelpFormatter):
    """Adds "(default: X)" to a flag's help, once, and not for flags without a meaningful default."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "(default" in text or action.default in (None, False, argparse.SUPPRESS):
            return text
        return super()._get_help_string(action)


class _NnUNetOnly(argparse.Action):
    """An nnU-Net flag that has no meaning here: a one-line explanation instead of a misreading."""

    def __init__(self, option_strings, dest, explanation: str = "", **kwargs):
        self.explanation = explanation
        super().__init__(option_strings, dest, nargs="?", help=argparse.SUPPRESS, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        parser.error(f"{option_string} is an nnU-Net option with no meaning in smoothseg: {self.explanation}")


def nnunet_only(parser: argparse.ArgumentParser, flags: dict[str, str]) -> None:
    """Refuse nnU-Net-only ``flags`` (flag -> why it means nothing here) with that explanation."""
    for flag, explanation in flags.items():
        parser.add_argument(flag, action=_NnUNetOnly, explanation=explanation, default=argparse.SUPPRESS)


def make_parser(prog: str, description: str) -> argparse.ArgumentParser:
    """A parser that never guesses: no abbreviated flags (``-c`` is never taken for ``-chk``)."""
    parser = argparse.ArgumentParser(prog=prog, description=description, formatter_class=_DefaultsHelp,
                                     allow_abbrev=False)
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
    for nnunet_var, ours in (("nnUNet_raw", "SMOOTHSEG_RAW"), ("nnUNet_preprocessed", "SMOOTHSEG_PREPROCESSED"),
                             ("nnUNet_results", "SMOOTHSEG_RESULTS")):
        if os.environ.get(nnunet_var) and not os.environ.get(ours):
            logger.warning("%s is set, but smoothseg reads %s (or SMOOTHSEG_HOME); it is ignored. To share nnU-Net's "
                           "raw folder: export %s=\"$%s\"", nnunet_var, ours, ours, nnunet_var)
    try:
        code = body(args)
    except SmoothSegError as exc:
        print(f"{parser.prog}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{parser.prog}: interrupted", file=sys.stderr)
        return 130
    return int(code or 0)

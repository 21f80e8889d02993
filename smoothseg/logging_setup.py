"""Logging configuration shared by every command-line tool, and progress bars that stay out of log files."""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterable
from typing import Any, TypeVar

from tqdm import tqdm

T = TypeVar("T")

FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"


def configure_logging(verbose: bool = False, quiet: bool = False) -> None:
    """Send smoothseg's log records to stderr: INFO by default, DEBUG with ``verbose``, WARNING with ``quiet``."""
    level = logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(FORMAT, datefmt="%H:%M:%S"))
    handler.setLevel(level)
    root = logging.getLogger("smoothseg")
    root.handlers[:] = [handler]
    root.setLevel(min(level, logging.INFO))  # file logs (e.g. training_log.txt) still receive INFO with --quiet
    root.propagate = False


def progress_bar(iterable: Iterable[T] | None = None, **kwargs: Any) -> tqdm:
    """A tqdm bar that draws only when stderr is a terminal.

    Redirected to a file (a cluster job's log, ``2> log.txt``) the bar's carriage-return frames would fill the file;
    there, the one log line per epoch or case says the same. ``disable`` in ``kwargs`` still switches it off.
    """
    kwargs["disable"] = bool(kwargs.get("disable", False)) or not _stderr_is_terminal()
    return tqdm(iterable, **kwargs)


def _stderr_is_terminal() -> bool:
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):  # replaced or closed stream
        return False

"""Logging configuration shared by every command-line tool."""

from __future__ import annotations

import logging
import sys

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

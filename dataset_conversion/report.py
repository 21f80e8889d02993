"""Per-case bookkeeping shared by the dataset converters: what was converted, what was skipped and why.

A converter never lets one bad case stop the rest. It converts each case inside :func:`ConversionReport.case`,
which records the case as converted, or as skipped with the error's message, and goes on. At the end the report
is written next to the dataset as ``conversion_report.json``, and the log records of the run as ``conversion.log``.

Loggers of the converters live under ``smoothseg.conversion`` so that the command-line logging set-up (which
configures the ``smoothseg`` logger) shows them.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from smoothseg.atomic import write_json, write_text
from smoothseg.errors import SmoothSegError
from smoothseg.logging_setup import FORMAT

logger = logging.getLogger("smoothseg.conversion")

REPORT_FILE = "conversion_report.json"
LOG_FILE = "conversion.log"

#: Files and folders a converter writes into a dataset folder; ``--overwrite`` removes exactly these.
OWNED_ENTRIES: tuple[str, ...] = ("imagesTr", "labelsTr", "imagesTs", "labelsTs", "dataset.json", "clinical.csv",
                                  REPORT_FILE, LOG_FILE)


class ConversionError(SmoothSegError):
    """One case cannot be converted; the converter records the message and skips the case."""


@dataclass
class CaseOutcome:
    """Details of one case; filled in by the converter while it works on the case."""

    case_id: str
    source: str
    details: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    def warn(self, message: str) -> None:
        """Record a warning for this case and log it."""
        self.warnings.append(message)
        logger.warning("[%s] %s", self.case_id, message)


@dataclass
class ConversionReport:
    """Cases converted and skipped (with reasons), plus dataset-wide warnings and facts."""

    dataset: Path
    source: Path
    converted: list[CaseOutcome] = field(default_factory=list)
    skipped: list[CaseOutcome] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    facts: dict[str, Any] = field(default_factory=dict)

    @contextmanager
    def case(self, case_id: str, source: str | Path) -> Iterator[CaseOutcome]:
        """Convert one case inside this block: an exception skips the case (recorded), never the run.

        :class:`SmoothSegError` messages are recorded as they are; any other exception (a corrupted file
        that makes a library fail) is recorded with its type, and logged with its traceback at debug level.
        """
        outcome = CaseOutcome(case_id, str(source))
        try:
            yield outcome
        except SmoothSegError as exc:
            self._skip(outcome, str(exc))
        except Exception as exc:  # noqa: BLE001 - one broken case must not stop the others
            logger.debug("[%s] traceback", case_id, exc_info=True)
            self._skip(outcome, f"{type(exc).__name__}: {exc}")
        else:
            self.converted.append(outcome)

    def _skip(self, outcome: CaseOutcome, reason: str) -> None:
        outcome.details = {"reason": reason, **outcome.details}
        self.skipped.append(outcome)
        logger.error("[%s] skipped: %s", outcome.case_id, reason)

    def skip(self, case_id: str, source: str | Path, reason: str) -> None:
        """Record a case skipped before any work on it started."""
        self._skip(CaseOutcome(case_id, str(source)), reason)

    def warn(self, message: str) -> None:
        """Record a dataset-wide warning and log it."""
        self.warnings.append(message)
        logger.warning("%s", message)

    @property
    def converted_ids(self) -> list[str]:
        return [c.case_id for c in self.converted]

    def to_dict(self) -> dict[str, Any]:
        def case(c: CaseOutcome) -> dict[str, Any]:
            return {"case_id": c.case_id, "source": c.source, **c.details, "warnings": list(c.warnings)}

        return {
            "dataset": str(self.dataset),
            "source": str(self.source),
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "n_converted": len(self.converted),
            "n_skipped": len(self.skipped),
            "converted": [case(c) for c in self.converted],
            "skipped": [case(c) for c in self.skipped],
            "warnings": list(self.warnings),
            **self.facts,
        }

    def summary(self) -> str:
        lines = [f"{self.dataset.name}: {len(self.converted)} case(s) converted, {len(self.skipped)} skipped"]
        lines += [f"  - skipped {c.case_id}: {c.details.get('reason', '')}" for c in self.skipped]
        n_case_warnings = sum(len(c.warnings) for c in self.converted)
        if n_case_warnings or self.warnings:
            lines.append(f"  {len(self.warnings) + n_case_warnings} warning(s); see {self.dataset / REPORT_FILE}")
        return "\n".join(lines)

    def save(self, log_lines: list[str] | None = None) -> Path:
        """Write ``conversion_report.json`` (and ``conversion.log`` when ``log_lines`` are given) atomically."""
        path = write_json(self.to_dict(), self.dataset / REPORT_FILE)
        if log_lines is not None:
            write_text("".join(line + "\n" for line in log_lines), self.dataset / LOG_FILE)
        return path


class _Collector(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []
        self.setFormatter(logging.Formatter(FORMAT, datefmt="%Y-%m-%d %H:%M:%S"))

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


@contextmanager
def collect_log() -> Iterator[list[str]]:
    """Collect the formatted records the ``smoothseg.conversion`` loggers emit inside the block.

    The records are those the logging configuration lets through (INFO and up from the command line).
    """
    handler = _Collector()
    target = logging.getLogger("smoothseg.conversion")
    target.addHandler(handler)
    try:
        yield handler.lines
    finally:
        target.removeHandler(handler)


def prepare_output_folder(folder: Path, overwrite: bool) -> None:
    """Create ``folder``; refuse to mix with an earlier conversion unless ``overwrite`` (which removes its files).

    Only the entries a converter writes (:data:`OWNED_ENTRIES`) are removed; anything else in the folder stays.
    A report and log alone (left by a run that converted nothing) do not block a new run.
    """
    present = [name for name in OWNED_ENTRIES if (folder / name).exists()]
    blocking = [name for name in present if name not in (REPORT_FILE, LOG_FILE)]
    if blocking and not overwrite:
        raise SmoothSegError(f"{folder}: already holds a converted dataset ({', '.join(blocking)}); pass --overwrite "
                             "(overwrite=True) to replace it")
    for name in present:
        path = folder / name
        logger.info("removing earlier %s", path)
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink()
    folder.mkdir(parents=True, exist_ok=True)

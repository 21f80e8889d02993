"""Exception types that smoothseg raises for problems the user can fix.

Every error carries a message that names the offending file (or key) and the problem, so the
command-line layer can print it without a traceback. Every error survives pickling (``__reduce__``), so one raised in
a worker process reaches the parent intact instead of breaking the pool.
"""

from __future__ import annotations

from pathlib import Path


class SmoothSegError(Exception):
    """Base class for user-facing errors; the CLI prints these without a traceback."""


class ImageReadError(SmoothSegError):
    """An image file cannot be read, is not 3D, or holds non-finite values."""

    def __init__(self, path: str | Path, problem: str):
        self.path = Path(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")

    def __reduce__(self):
        return type(self), (self.path, self.problem)


class ImageWriteError(SmoothSegError):
    """An image cannot be written (unsupported format or pixel type, full disk, no permission)."""

    def __init__(self, path: str | Path, problem: str):
        self.path = Path(path)
        self.problem = problem
        super().__init__(f"{self.path}: cannot write image: {problem}")

    def __reduce__(self):
        return type(self), (self.path, self.problem)


class DatasetSchemaError(SmoothSegError):
    """``dataset.json`` (or another dataset file) does not follow the expected schema."""

    def __init__(self, path: str | Path, key: str | None, problem: str):
        self.path = Path(path)
        self.key = key
        self.problem = problem
        where = f"key '{key}'" if key else "file"
        super().__init__(f"{self.path}: {where}: {problem}")

    def __reduce__(self):
        return type(self), (self.path, self.key, self.problem)


class DatasetNotFoundError(SmoothSegError):
    """A dataset id or name does not resolve to a folder under a data root."""

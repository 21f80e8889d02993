"""Atomic file writes: a file appears under its final name complete, or not at all.

Every writer in smoothseg goes through here: it writes under the target's own name inside a hidden
temporary folder beside the target (same file system, same ending, so format detection by
extension still works) and renames the result over the target.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path to write to; on success it is moved to ``path``, on error removed.

    The temporary path has the target's own file name inside a hidden sibling folder, so formats
    that write a detached data file next to their header (``.mhd`` + ``.zraw``) keep a valid
    reference. Companion files are moved first and the named file last, so the target appears
    only once everything it refers to is in place.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp_dir = path.parent / f".tmp-{uuid.uuid4().hex[:12]}"
    tmp_dir.mkdir()
    tmp = tmp_dir / path.name
    try:
        yield tmp
        if not tmp.exists():
            raise FileNotFoundError(f"writer produced no file for {path}")
        for companion in tmp_dir.iterdir():
            if companion != tmp:
                os.replace(companion, path.parent / companion.name)
        os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)


def atomic_write(path: str | Path, writer: Callable[[Path], Any]) -> Path:
    """Call ``writer(tmp_path)`` and move the result to ``path`` atomically."""
    with atomic_path(path) as tmp:
        writer(tmp)
    return Path(path)


def write_text(text: str, path: str | Path) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def write_json(data: Any, path: str | Path) -> Path:
    """Write ``data`` as indented JSON with a trailing newline (stable bytes), atomically."""
    return write_text(json.dumps(data, indent=2) + "\n", path)


def json_safe(value: Any, *, strict: bool = False) -> Any:
    """A deep copy made of plain JSON types: NumPy scalars -> Python, non-finite floats -> None, tuples -> lists,
    paths -> str. ``strict``: any other type is a ``ValueError`` (for validating data read back); else kept."""
    if isinstance(value, dict):
        return {str(k): json_safe(v, strict=strict) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v, strict=strict) for v in value]
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(float(value)) else None
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, Path):
        return str(value)
    if strict:
        raise ValueError(f"value of type {type(value).__name__} is not JSON-able")
    return value

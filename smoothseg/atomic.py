"""Atomic file writes: a file appears under its final name complete, or not at all.

Every writer in smoothseg goes through here: it writes under the target's own name inside a hidden
temporary folder beside the target (same file system, same ending, so format detection by
extension still works) and renames the result over the target.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


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

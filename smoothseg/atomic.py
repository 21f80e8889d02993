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
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from smoothseg.errors import SmoothSegError

#: Hidden temporary folders of :func:`atomic_path` are named ``.tmp-<pid>-<random>``.
TMP_PREFIX = ".tmp-"


def pid_alive(pid: int) -> bool:
    """Whether a process with this PID runs on this machine (another user's counts as running)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def remove_stale_temp(folder: str | Path) -> int:
    """Remove the temporary folders that writers killed mid-write (``kill -9``, power loss) left in ``folder``.

    A folder counts as stale when the process that made it is no longer running (its PID is in the name); folders of
    the older ``.tmp-<random>`` form carry no PID and are removed when older than a day. Returns how many went.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return 0
    removed = 0
    for entry in folder.iterdir():
        if not (entry.name.startswith(TMP_PREFIX) and entry.is_dir()):
            continue
        owner = entry.name[len(TMP_PREFIX):].split("-", 1)[0]
        if owner.isdigit() and "-" in entry.name[len(TMP_PREFIX):]:
            stale = not pid_alive(int(owner))
        else:
            stale = time.time() - entry.stat().st_mtime > 86_400
        if stale:
            shutil.rmtree(entry, ignore_errors=True)
            removed += 1
    return removed


def ensure_writable_folder(folder: str | Path, what: str = "output folder") -> Path:
    """Create ``folder`` if needed and check that files can be written in it, before any work is done.

    Raises :class:`~smoothseg.errors.SmoothSegError` naming the folder and the problem (a regular file in the way,
    no permission, read-only file system, full disk).
    """
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f"{TMP_PREFIX}{os.getpid()}-probe"
        probe.write_bytes(b"0")
        probe.unlink()
    except FileExistsError:
        raise SmoothSegError(f"{folder}: cannot use it as the {what}: a file, not a folder, is in the way") from None
    except NotADirectoryError:
        raise SmoothSegError(f"{folder}: cannot use it as the {what}: part of the path is a file, not a folder") \
            from None
    except OSError as exc:
        raise SmoothSegError(f"{folder}: the {what} is not writable ({exc.strerror or exc})") from None
    return folder


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
    tmp_dir = path.parent / f"{TMP_PREFIX}{os.getpid()}-{uuid.uuid4().hex[:12]}"
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

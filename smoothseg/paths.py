"""Data roots and dataset lookup.

smoothseg keeps three roots, like nnU-Net:

* ``SMOOTHSEG_RAW``: raw datasets (``DatasetXXX_Name/imagesTr`` ...);
* ``SMOOTHSEG_PREPROCESSED``: fingerprints, plans and preprocessed arrays;
* ``SMOOTHSEG_RESULTS``: trained models and predictions made during validation.

Each defaults, when unset, to a sub-folder (``raw``, ``preprocessed``, ``results``) of one base folder:
``SMOOTHSEG_HOME`` if set, else ``~/smoothseg_data``. Nothing needs configuring to start.
The environment is read at call time, so a process may change it before calling.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from smoothseg.errors import DatasetNotFoundError

logger = logging.getLogger(__name__)

_ROOTS = {"raw": "SMOOTHSEG_RAW", "preprocessed": "SMOOTHSEG_PREPROCESSED", "results": "SMOOTHSEG_RESULTS"}
_DATASET_RE = re.compile(r"^Dataset(\d{3})_([A-Za-z0-9_\-]+)$")


def base_folder() -> Path:
    """The folder that holds the default roots: ``$SMOOTHSEG_HOME`` or ``~/smoothseg_data``."""
    home = os.environ.get("SMOOTHSEG_HOME")
    return Path(home).expanduser() if home else Path.home() / "smoothseg_data"


def _root(kind: str) -> Path:
    value = os.environ.get(_ROOTS[kind])
    return Path(value).expanduser() if value else base_folder() / kind


def raw_root() -> Path:
    return _root("raw")


def preprocessed_root() -> Path:
    return _root("preprocessed")


def results_root() -> Path:
    return _root("results")


@contextmanager
def using_roots(raw: Path | None = None, preprocessed: Path | None = None,
                results: Path | None = None) -> Iterator[None]:
    """Point the given roots elsewhere for the duration of the ``with`` block, then restore the environment.

    The roots travel as the ``SMOOTHSEG_*`` variables so that worker processes started inside the block see them.
    """
    wanted = {"raw": raw, "preprocessed": preprocessed, "results": results}
    saved = {var: os.environ.get(var) for var in _ROOTS.values()}
    try:
        for kind, folder in wanted.items():
            if folder is not None:
                os.environ[_ROOTS[kind]] = str(folder)
        yield
    finally:
        for var, value in saved.items():
            if value is None:
                os.environ.pop(var, None)
            else:
                os.environ[var] = value


def log_roots(log: logging.Logger | None = None) -> None:
    """Log which data roots are in use and whether each came from the environment."""
    log = log or logger
    for kind, var in _ROOTS.items():
        source = f"${var}" if os.environ.get(var) else "default"
        log.info("%-12s root: %s (%s)", kind, _root(kind), source)


def dataset_folder_name(dataset_id: int, name: str) -> str:
    """``DatasetXXX_Name`` for an id and a short name."""
    if not 0 <= dataset_id <= 999:
        raise ValueError(f"dataset id must be within 0..999, got {dataset_id}")
    if not re.fullmatch(r"[A-Za-z0-9_\-]+", name):
        raise ValueError(f"dataset name may hold only letters, digits, '_' and '-', got {name!r}")
    return f"Dataset{dataset_id:03d}_{name}"


def parse_dataset_id(identifier: str | int) -> int | str:
    """The numeric id for ``7``/``"007"``, or the full folder name for ``"Dataset007_X"``."""
    if isinstance(identifier, int):
        return identifier
    text = str(identifier).strip()
    if text.isdigit():
        return int(text)
    if _DATASET_RE.match(text):
        return text
    raise DatasetNotFoundError(
        f"'{identifier}' is not a dataset id: use a number (7, 007) or a folder name (Dataset007_HCCTACESeg)"
    )


def find_dataset(identifier: str | int, root: Path | None = None) -> Path:
    """Resolve ``7``, ``"007"`` or ``"Dataset007_HCCTACESeg"`` to a dataset folder under ``root``.

    ``root`` defaults to the raw root. Raises :class:`DatasetNotFoundError` listing what exists.
    """
    root = Path(root) if root is not None else raw_root()
    key = parse_dataset_id(identifier)
    existing = sorted(p.name for p in root.iterdir() if p.is_dir() and _DATASET_RE.match(p.name)) \
        if root.is_dir() else []
    if isinstance(key, str):
        matches = [n for n in existing if n == key]
    else:
        matches = [n for n in existing if int(_DATASET_RE.match(n).group(1)) == key]
    if len(matches) == 1:
        return root / matches[0]
    listing = ", ".join(existing) if existing else "none"
    if not matches:
        raise DatasetNotFoundError(f"no dataset '{identifier}' under {root} (datasets there: {listing})")
    raise DatasetNotFoundError(f"dataset id '{identifier}' is ambiguous under {root}: {', '.join(matches)}")


def dataset_id_of(folder_name: str) -> int:
    """The numeric id in a ``DatasetXXX_Name`` folder name."""
    m = _DATASET_RE.match(folder_name)
    if not m:
        raise DatasetNotFoundError(f"'{folder_name}' is not a DatasetXXX_Name folder name")
    return int(m.group(1))

"""The viewer's data for one finished job: the CT and the label map in display orientation, cut into slices on demand.

The worker writes ``view/ct.npy`` (int16 HU) and ``view/labels.npy`` (uint8, 0/1/2) in the canonical orientation of
:mod:`smoothseg.dataset.orientation` (array axes z, y, x along +S, +P, +L), and ``view/meta.json``. The server
memory-maps them and cuts one slice per request, so a 512 x 512 x 300 CT costs the browser one slice at a time. Slices
are shown the radiological way: axial with the patient's right on the left and anterior up; coronal and sagittal
with the head up (sagittal with anterior on the left). The axial index counts from the feet, as the report's
``axial_slice_range`` does.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from smoothseg.atomic import atomic_write, write_json
from smoothseg.dataset.io import Geometry
from smoothseg.dataset.orientation import Orientation

__all__ = ["PLANES", "read_meta", "slice_bytes", "write_view"]

PLANES = ("axial", "coronal", "sagittal")
HU_RANGE = (-32768, 32767)


def _save(array: np.ndarray, path: Path) -> None:
    atomic_write(path, lambda tmp: np.save(tmp, np.ascontiguousarray(array)))


def write_view(image: np.ndarray, geometry: Geometry, labels: np.ndarray, report: dict[str, Any], folder: Path
               ) -> dict[str, Any]:
    """Write the viewer's volumes and ``meta.json`` (shape, spacing per plane, the report's lesions) into ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    orientation = Orientation.from_direction(geometry.direction)
    ct = np.clip(np.rint(orientation.to_canonical(image)), *HU_RANGE).astype("<i2")
    _save(ct, folder / "ct.npy")
    _save(orientation.to_canonical(labels).astype(np.uint8), folder / "labels.npy")
    sz, sy, sx = orientation.canonical_tuple(geometry.spacing_zyx)
    nz, ny, nx = ct.shape
    meta = {
        "shape_zyx": [nz, ny, nx],
        "spacing_zyx": [sz, sy, sx],
        # per plane: slice count, and the displayed image's rows x columns and their pixel spacing (mm)
        "planes": {"axial": {"slices": nz, "rows": ny, "cols": nx, "row_mm": sy, "col_mm": sx},
                   "coronal": {"slices": ny, "rows": nz, "cols": nx, "row_mm": sz, "col_mm": sx},
                   "sagittal": {"slices": nx, "rows": nz, "cols": ny, "row_mm": sz, "col_mm": sy}},
        "lesions": [{key: lesion.get(key) for key in (
            "lesion", "volume_ml", "max_diameter_mm", "max_axial_diameter_mm", "axial_slice_range",
            "largest_axial_slice", "confidence")} for lesion in report.get("lesions", [])],
    }
    write_json(meta, folder / "meta.json")
    return meta


def read_meta(folder: Path) -> dict[str, Any] | None:
    path = folder / "meta.json"
    return json.loads(path.read_text()) if path.is_file() else None


def _cut(volume: np.ndarray, plane: str, index: int) -> np.ndarray:
    if plane == "axial":
        return volume[index]
    if plane == "coronal":
        return volume[::-1, index, :]
    return volume[::-1, :, index]


def slice_bytes(folder: Path, plane: str, index: int) -> bytes:
    """One displayed slice: its int16 HU values (little-endian) followed by its uint8 labels, row-major.

    ``IndexError`` for a slice outside the volume, ``ValueError`` for an unknown plane."""
    if plane not in PLANES:
        raise ValueError(f"unknown plane {plane!r}; choose from {', '.join(PLANES)}")
    ct = np.load(folder / "ct.npy", mmap_mode="r")
    labels = np.load(folder / "labels.npy", mmap_mode="r")
    count = {"axial": ct.shape[0], "coronal": ct.shape[1], "sagittal": ct.shape[2]}[plane]
    if not 0 <= index < count:
        raise IndexError(f"{plane} slice {index} is outside 0..{count - 1}")
    return (np.ascontiguousarray(_cut(ct, plane, index), dtype="<i2").tobytes()
            + np.ascontiguousarray(_cut(labels, plane, index), dtype=np.uint8).tobytes())

"""DICOM SEG side of the HCC-TACE-Seg converter: which CT instances a SEG references, and its label map on a CT grid.

Segments are mapped by their *label* (``SegmentLabel``, case-insensitive, falling back to the segmented property
type's code meaning), never by segment number, because numbering differs between SEG objects:

=================  =====================  =========================================================
segment label      class                  raw label value
=================  =====================  =========================================================
Liver              ``liver``              1
Mass (Tumor)       ``tumor``              2
Portal vein        ``portal_vein``        3
Abdominal aorta    ``aorta``              4
Necrosis           ``necrosis``           2 (joins the tumour), or 5 with ``keep_necrosis``
=================  =====================  =========================================================

Where segments overlap, the higher class in :data:`PRIORITY` wins: necrosis > tumour > portal vein > aorta > liver.
The tumour lies inside the liver, so it must win over it; vessels are drawn over the parenchyma they run through.

Frames are placed on the CT grid by the CT instance they were derived from (``DerivationImageSequence`` /
``SourceImageSequence``, by SOPInstanceUID), or, for frames without such a reference, by their
``PlanePositionSequence`` position projected on the slice normal.
"""

from __future__ import annotations

import logging
import re
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from dataset_conversion.dicom_ct import ORIENTATION_TOL, CTVolume, require_dicom_libraries
from dataset_conversion.report import ConversionError

if TYPE_CHECKING:
    from pydicom import Dataset

logger = logging.getLogger("smoothseg.conversion.dicom_seg")

#: Normalised segment label -> class. Labels are lower-cased with runs of spaces, ``_`` and ``-`` made one space.
SEGMENT_CLASSES: dict[str, str] = {
    "liver": "liver",
    "mass": "tumor", "tumor": "tumor", "tumour": "tumor", "lesion": "tumor", "hcc": "tumor",
    "neoplasm": "tumor",
    "portal vein": "portal_vein", "portalvein": "portal_vein",
    "abdominal aorta": "aorta", "aorta": "aorta",
    "necrosis": "necrosis", "necrotic": "necrosis", "necrotic tissue": "necrosis",
}

#: Raw label values written to ``labelsTr`` (``necrosis`` is added as 5 only with ``keep_necrosis``).
LABELS: dict[str, int] = {"background": 0, "liver": 1, "tumor": 2, "portal_vein": 3, "aorta": 4}
NECROSIS_LABEL = 5

#: Paint order: a class listed later wins where segments overlap.
PRIORITY: tuple[str, ...] = ("liver", "aorta", "portal_vein", "tumor", "necrosis")

#: A frame placed by position must lie within this fraction of the slice spacing of a CT slice.
POSITION_TOL = 0.1


def normalise_label(label: str) -> str:
    return re.sub(r"[\s_\-]+", " ", str(label)).strip().lower()


def label_values(keep_necrosis: bool = False) -> dict[str, int]:
    """The ``labels`` of dataset.json."""
    return {**LABELS, "necrosis": NECROSIS_LABEL} if keep_necrosis else dict(LABELS)


def class_value(cls: str, keep_necrosis: bool) -> int:
    if cls == "necrosis":
        return NECROSIS_LABEL if keep_necrosis else LABELS["tumor"]
    return LABELS[cls]


def read_segmentation(path: Path) -> tuple[Dataset, str | None]:
    """Read a DICOM SEG: with highdicom, else (for objects highdicom rejects) as a plain pydicom dataset.

    Returns the dataset and, after a fallback, a warning saying why. Only the attributes every SEG has are used
    afterwards, so both readers give the same label map. Raises :class:`ConversionError` naming the file when
    neither can read it.
    """
    pydicom, hd = require_dicom_libraries()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return hd.seg.segread(path), None
        except Exception as exc:  # noqa: BLE001 - highdicom raises many types for malformed objects
            rejected = f"{type(exc).__name__}: {exc}"
        try:
            ds = pydicom.dcmread(path)
        except Exception as exc:  # noqa: BLE001 - pydicom raises many types for corrupted files
            raise ConversionError(f"{path}: unreadable DICOM SEG ({type(exc).__name__}: {exc})") from None
    if "SegmentSequence" not in ds or "PixelData" not in ds:
        raise ConversionError(f"{path}: not a usable DICOM SEG ({rejected})")
    return ds, f"{path}: highdicom rejected the SEG ({rejected}); read it with pydicom alone"


def segment_classes(seg: Dataset, path: Path) -> tuple[dict[int, str], list[str]]:
    """Segment number -> class for the segments we know, and the labels of those we do not (ignored)."""
    classes: dict[int, str] = {}
    unknown: list[str] = []
    for item in seg.SegmentSequence:
        number = int(item.SegmentNumber)
        names = [str(item.get("SegmentLabel", "") or "")]
        for code in item.get("SegmentedPropertyTypeCodeSequence", []) or []:
            names.append(str(code.get("CodeMeaning", "") or ""))
        cls = next((SEGMENT_CLASSES[normalise_label(n)] for n in names if normalise_label(n) in SEGMENT_CLASSES),
                   None)
        if cls is None:
            unknown.append(f"{number}:{names[0] or '?'}")
        else:
            classes[number] = cls
    if not classes:
        raise ConversionError(f"{path}: no segment has a known label ({', '.join(unknown)}); expected labels like "
                              f"{', '.join(sorted({'Liver', 'Mass', 'Portal vein', 'Abdominal aorta'}))}")
    return classes, unknown


def series_referenced_uids(seg: Dataset) -> list[str]:
    """SOPInstanceUIDs listed in the SEG's ReferencedSeriesSequence / ReferencedInstanceSequence."""
    uids: dict[str, None] = {}
    for series in seg.get("ReferencedSeriesSequence", []) or []:
        for inst in series.get("ReferencedInstanceSequence", []) or []:
            uids[str(inst.ReferencedSOPInstanceUID)] = None
    return list(uids)


def frame_referenced_uids(seg: Dataset) -> list[str]:
    """SOPInstanceUIDs the SEG frames were derived from (per-frame DerivationImageSequence/SourceImageSequence)."""
    uids: dict[str, None] = {}
    for frame in seg.get("PerFrameFunctionalGroupsSequence", []) or []:
        for uid in _frame_source_uids(frame):
            uids[uid] = None
    return list(uids)


def referenced_instance_uids(seg: Dataset) -> list[str]:
    """SOPInstanceUIDs of the source CT instances: series-level references first, then per-frame ones."""
    return list(dict.fromkeys(series_referenced_uids(seg) + frame_referenced_uids(seg)))


def _frame_source_uids(frame: Dataset) -> list[str]:
    out = []
    for derivation in frame.get("DerivationImageSequence", []) or []:
        for source in derivation.get("SourceImageSequence", []) or []:
            uid = source.get("ReferencedSOPInstanceUID")
            if uid:
                out.append(str(uid))
    return out


def _frame_position(frame: Dataset, shared: Dataset | None) -> tuple[float, ...] | None:
    for group in (frame, shared):
        if group is None:
            continue
        planes = group.get("PlanePositionSequence")
        if planes and planes[0].get("ImagePositionPatient") is not None:
            return tuple(float(v) for v in planes[0].ImagePositionPatient)
    return None


def _seg_orientation(seg: Dataset, shared: Dataset | None) -> tuple[float, ...] | None:
    for group in (shared, *(seg.get("PerFrameFunctionalGroupsSequence", []) or [])[:1]):
        if group is None:
            continue
        planes = group.get("PlaneOrientationSequence")
        if planes and planes[0].get("ImageOrientationPatient") is not None:
            return tuple(float(v) for v in planes[0].ImageOrientationPatient)
    return None


@dataclass
class _FrameRef:
    index: int
    segment_numbers: list[int] | None  # None: a LABELMAP frame holding any segment
    source_uids: list[str]
    position: tuple[float, ...] | None


def _frames(seg: Dataset) -> Iterator[_FrameRef]:
    shared = (seg.get("SharedFunctionalGroupsSequence") or [None])[0]
    per_frame = seg.get("PerFrameFunctionalGroupsSequence") or []
    shared_segment = None
    if shared is not None and shared.get("SegmentIdentificationSequence"):
        shared_segment = [int(shared.SegmentIdentificationSequence[0].ReferencedSegmentNumber)]
    for i, frame in enumerate(per_frame):
        ident = frame.get("SegmentIdentificationSequence")
        numbers = [int(ident[0].ReferencedSegmentNumber)] if ident else shared_segment
        yield _FrameRef(i, numbers, _frame_source_uids(frame), _frame_position(frame, shared))


def _slice_of(ref: _FrameRef, volume: CTVolume, uid_index: dict[str, int], path: Path) -> int:
    for uid in ref.source_uids:
        if uid in uid_index:
            return uid_index[uid]
    if ref.position is None:
        what = f"references CT instance(s) {', '.join(ref.source_uids)} that are not" if ref.source_uids else \
            "has neither a source-image reference nor a plane position to place it"
        raise ConversionError(f"{path}: frame {ref.index + 1} {what}"
                              + (" in the CT volume" if ref.source_uids else ""))
    geometry = volume.geometry
    normal = geometry.direction_matrix[:, 2]
    offset = float(np.dot(normal, ref.position))
    k = int(np.argmin(np.abs(volume.offsets - offset)))
    spacing_z = geometry.spacing[2]
    if abs(volume.offsets[k] - offset) > POSITION_TOL * spacing_z:
        raise ConversionError(f"{path}: frame {ref.index + 1} at {offset:.3f} mm along the normal matches no CT slice "
                              f"(CT covers {volume.offsets[0]:.3f} to {volume.offsets[-1]:.3f} mm)")
    slice_origin = np.asarray(geometry.origin) + (volume.offsets[k] - volume.offsets[0]) * normal
    inplane = np.asarray(ref.position) - slice_origin - (offset - volume.offsets[k]) * normal
    if np.linalg.norm(inplane) > 0.5 * min(geometry.spacing[:2]):
        raise ConversionError(f"{path}: frame {ref.index + 1} is shifted in-plane by {np.linalg.norm(inplane):.3f} mm "
                              "from the CT slice; cropped SEG frames are not supported")
    return k


def _check_grid(seg: Dataset, volume: CTVolume, path: Path) -> None:
    rows, cols = int(seg.Rows), int(seg.Columns)
    if (rows, cols) != volume.shape[1:]:
        raise ConversionError(f"{path}: SEG frames are {rows}x{cols} pixels but the CT slices are "
                              f"{volume.shape[1]}x{volume.shape[2]}")
    shared = (seg.get("SharedFunctionalGroupsSequence") or [None])[0]
    orientation = _seg_orientation(seg, shared)
    ct_orientation = tuple(np.asarray(volume.geometry.direction_matrix[:, :2]).T.ravel())
    if orientation is not None and np.max(np.abs(np.subtract(orientation, ct_orientation))) > 10 * ORIENTATION_TOL:
        raise ConversionError(f"{path}: SEG orientation {orientation} differs from the CT's {ct_orientation}")


def _frame_masks(ref: _FrameRef, stored: np.ndarray, kind: str, max_fraction: int, wanted: dict[int, str],
                 path: Path) -> Iterator[tuple[int, np.ndarray]]:
    if kind == "LABELMAP":
        for number in np.unique(stored):
            if int(number) in wanted:
                yield int(number), stored == number
        return
    if ref.segment_numbers is None:
        raise ConversionError(f"{path}: frame {ref.index + 1} has no SegmentIdentificationSequence")
    mask = stored > (max_fraction / 2.0) if kind == "FRACTIONAL" else stored > 0
    for number in ref.segment_numbers:
        if number in wanted:
            yield number, mask


def build_label_map(seg: Dataset, volume: CTVolume, path: Path, *, keep_necrosis: bool = False
                    ) -> tuple[np.ndarray, dict[str, object]]:
    """The SEG's label map on the CT grid (uint8, ``(z, y, x)``) and facts for the conversion report."""
    classes, unknown = segment_classes(seg, path)
    _check_grid(seg, volume, path)
    kind = str(seg.get("SegmentationType", "BINARY")).upper()
    max_fraction = int(seg.get("MaximumFractionalValue", 1) or 1)
    labels = np.zeros(volume.shape, dtype=np.uint8)
    rank = np.zeros(256, dtype=np.int16)  # label value -> paint priority (background 0)
    for cls in PRIORITY:
        rank[class_value(cls, keep_necrosis)] = max(rank[class_value(cls, keep_necrosis)], PRIORITY.index(cls) + 1)
    uid_index = volume.uid_to_index()
    n_frames = int(seg.get("NumberOfFrames", 1) or 1)
    refs = list(_frames(seg))
    if len(refs) != n_frames:
        raise ConversionError(f"{path}: {n_frames} frames but {len(refs)} per-frame functional group items")
    by_position = 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            pixels = np.asarray(seg.pixel_array).reshape(n_frames, int(seg.Rows), int(seg.Columns))
        except Exception as exc:  # noqa: BLE001 - decoding failures depend on the corruption
            raise ConversionError(f"{path}: unreadable SEG pixel data ({type(exc).__name__}: {exc})") from None
    for ref in refs:
        k = _slice_of(ref, volume, uid_index, path)
        by_position += not any(uid in uid_index for uid in ref.source_uids)
        for number, mask in _frame_masks(ref, pixels[ref.index], kind, max_fraction, classes, path):
            cls = classes[number]
            value = class_value(cls, keep_necrosis)
            plane = labels[k]
            paint = mask & (rank[plane] <= rank[value])
            plane[paint] = value
    present = {name: int(np.count_nonzero(labels == v)) for name, v in label_values(keep_necrosis).items() if v}
    facts = {"segments": {str(n): c for n, c in sorted(classes.items())}, "segment_type": kind,
             "frames": n_frames, "frames_placed_by_position": by_position, "voxels": present}
    if unknown:
        facts["ignored_segments"] = unknown
    return labels, facts

"""DICOM side of the converters: indexing a download folder and building a CT volume from chosen instances.

* :func:`index_dicom_tree` reads the header of every file under a folder (pixel data is not read) and keeps what
  the converters need to choose instances: patient, modality, UIDs, acquisition number and plane geometry. Files
  that are not DICOM, or are corrupted, are listed with the reason rather than raised.
* :func:`build_ct_volume` stacks single-frame CT instances into a ``(z, y, x)`` int16 array of Hounsfield units and
  its :class:`~smoothseg.dataset.io.Geometry`, sorted along the slice normal, with every geometry check that makes
  the stack a proper volume (one in-plane grid here; one orientation, no duplicate position, no missing slice, even
  spacing and no gantry tilt by :func:`smoothseg.dataset.io.stack_problems`, the checks of every DICOM series
  smoothseg reads).

pydicom is optional (the ``dicom`` extra); :func:`require_dicom_libraries` raises a clear error when it is missing.
"""

from __future__ import annotations

import logging
import os
import warnings
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType

import numpy as np
from tqdm import tqdm

from dataset_conversion.report import ConversionError
from smoothseg.dataset.io import Geometry, stack_problems
from smoothseg.errors import SmoothSegError

logger = logging.getLogger("smoothseg.conversion.dicom")

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
ENHANCED_CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2.1"
SEGMENTATION_STORAGE = "1.2.840.10008.5.1.4.1.1.66.4"
LABELMAP_SEGMENTATION_STORAGE = "1.2.840.10008.5.1.4.1.1.66.7"

#: Direction cosines that differ by less than this count as the same orientation.
ORIENTATION_TOL = 1e-4

_INT16 = np.iinfo(np.int16)


def require_dicom_libraries() -> tuple[ModuleType, ModuleType]:
    """Import and return ``(pydicom, highdicom)``, or raise a :class:`SmoothSegError` saying how to install them."""
    try:
        import highdicom
        import pydicom
    except ImportError as exc:
        raise SmoothSegError(f"the DICOM converter needs pydicom and highdicom ({exc}); install them with "
                             "pip install \"smoothseg[dicom]\"") from None
    return pydicom, highdicom


@dataclass(frozen=True)
class DicomFile:
    """Header facts of one DICOM file (single-frame image, SEG or anything else)."""

    path: Path
    patient_id: str
    modality: str
    sop_class_uid: str
    sop_instance_uid: str
    study_uid: str
    series_uid: str
    frame_of_reference_uid: str | None = None
    acquisition_number: int | None = None
    position: tuple[float, float, float] | None = None
    orientation: tuple[float, ...] | None = None
    pixel_spacing: tuple[float, float] | None = None
    rows: int | None = None
    columns: int | None = None
    number_of_frames: int = 1

    @property
    def is_segmentation(self) -> bool:
        return self.modality.upper() == "SEG" or self.sop_class_uid in (SEGMENTATION_STORAGE,
                                                                          LABELMAP_SEGMENTATION_STORAGE)

    @property
    def is_ct(self) -> bool:
        return self.sop_class_uid in (CT_IMAGE_STORAGE, ENHANCED_CT_IMAGE_STORAGE) or self.modality.upper() == "CT"

    @property
    def phase_key(self) -> tuple[str, int | None]:
        """(series, acquisition number): what tells two contrast phases stacked in one series apart."""
        return self.series_uid, self.acquisition_number


@dataclass
class DicomIndex:
    """All readable DICOM files under a folder, and the files that could not be used (path, reason)."""

    root: Path
    files: list[DicomFile] = field(default_factory=list)
    unreadable: list[tuple[Path, str]] = field(default_factory=list)

    def by_patient(self) -> dict[str, list[DicomFile]]:
        groups: dict[str, list[DicomFile]] = defaultdict(list)
        for f in self.files:
            groups[f.patient_id].append(f)
        return dict(sorted(groups.items()))

    def unreadable_for(self, patient_id: str) -> list[tuple[Path, str]]:
        """Unreadable files whose path has a folder named after the patient (how TCIA downloads are laid out)."""
        return [(p, why) for p, why in self.unreadable
                if patient_id in p.relative_to(self.root).parts[:-1]]


def _floats(value, n: int) -> tuple[float, ...] | None:
    if value is None:
        return None
    try:
        out = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        return None
    return out if len(out) == n else None


def _int_or_none(value) -> int | None:
    try:
        return int(value) if value is not None and str(value).strip() != "" else None
    except (TypeError, ValueError):
        return None


def read_header(path: Path) -> DicomFile:
    """Read the header of one file (no pixel data). Raises ValueError when it is not a usable DICOM object."""
    pydicom, _ = require_dicom_libraries()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # corrupted files make pydicom warn per element; the caller reports once
        ds = pydicom.dcmread(path, stop_before_pixels=True)
    sop_uid = str(ds.get("SOPInstanceUID", "") or "").strip()
    if not sop_uid:
        raise ValueError("no SOPInstanceUID (corrupted file?)")
    sop_class = str(ds.get("SOPClassUID", "") or "").strip()
    if not sop_class:
        file_meta = getattr(ds, "file_meta", None)
        sop_class = str(getattr(file_meta, "MediaStorageSOPClassUID", "") or "") if file_meta is not None else ""
    return DicomFile(
        path=path,
        patient_id=str(ds.get("PatientID", "") or "").strip(),
        modality=str(ds.get("Modality", "") or "").strip(),
        sop_class_uid=sop_class,
        sop_instance_uid=sop_uid,
        study_uid=str(ds.get("StudyInstanceUID", "") or ""),
        series_uid=str(ds.get("SeriesInstanceUID", "") or ""),
        frame_of_reference_uid=str(ds.get("FrameOfReferenceUID", "") or "") or None,
        acquisition_number=_int_or_none(ds.get("AcquisitionNumber")),
        position=_floats(ds.get("ImagePositionPatient"), 3),
        orientation=_floats(ds.get("ImageOrientationPatient"), 6),
        pixel_spacing=_floats(ds.get("PixelSpacing"), 2),
        rows=_int_or_none(ds.get("Rows")),
        columns=_int_or_none(ds.get("Columns")),
        number_of_frames=_int_or_none(ds.get("NumberOfFrames")) or 1,
    )


def _walk_files(root: Path) -> list[Path]:
    files = []
    for folder, dirs, names in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        files.extend(Path(folder) / n for n in sorted(names) if not n.startswith("."))
    return files


def index_dicom_tree(root: str | Path, *, progress: bool = True) -> DicomIndex:
    """Read the header of every file under ``root`` (recursively); the folder layout does not matter.

    Files without the DICOM ``DICM`` prefix are ignored when their name does not end in ``.dcm`` (NBIA's
    ``LICENSE`` and ``metadata.csv``), and listed as unreadable otherwise, as are corrupted DICOM files.
    """
    pydicom, _ = require_dicom_libraries()
    root = Path(root)
    if not root.is_dir():
        raise SmoothSegError(f"{root}: input folder does not exist")
    index = DicomIndex(root)
    for path in tqdm(_walk_files(root), desc="index DICOM", unit="file", disable=not progress):
        try:
            index.files.append(read_header(path))
        except pydicom.errors.InvalidDicomError:
            if path.suffix.lower() == ".dcm":
                index.unreadable.append((path, "not a DICOM file (no DICM prefix)"))
            else:
                logger.debug("ignoring non-DICOM file %s", path)
        except Exception as exc:  # noqa: BLE001 - a corrupted header can fail in many ways inside pydicom
            index.unreadable.append((path, f"unreadable DICOM header ({type(exc).__name__}: {exc})"))
    for path, why in index.unreadable:
        logger.debug("unreadable: %s: %s", path, why)
    logger.info("indexed %d DICOM file(s) of %d patient(s) under %s (%d unreadable)", len(index.files),
                len(index.by_patient()), root, len(index.unreadable))
    return index


@dataclass
class SliceStack:
    """Sorted single-frame slices and the geometry they define (headers only, no pixels)."""

    slices: list[DicomFile]
    geometry: Geometry
    rows: int
    columns: int

    @property
    def normal(self) -> np.ndarray:
        return self.geometry.direction_matrix[:, 2]

    @property
    def offsets(self) -> np.ndarray:
        """Position of each slice along the normal (mm)."""
        return np.array([np.dot(self.normal, s.position) for s in self.slices])


def _unit(v: np.ndarray, what: str, where: Path) -> np.ndarray:
    norm = float(np.linalg.norm(v))
    if not 0.9 < norm < 1.1:
        raise ConversionError(f"{where}: ImageOrientationPatient {what} vector has length {norm:.3f}, not 1")
    return v / norm


def stack_slices(slices: Sequence[DicomFile]) -> SliceStack:
    """Sort slices along their normal and derive the volume geometry, checking it describes a regular grid.

    Direction columns are the row direction (x, along a row), the column direction (y, down a column) and their
    cross product (the slice normal); the origin is the position of the first slice along the normal; the slice
    spacing is the mean distance between consecutive slices, each of which must be within 1 % of it.
    """
    if not slices:
        raise ConversionError("no CT slices to build a volume from")
    first = slices[0]
    for s in slices:
        missing = [name for name, value in (("ImagePositionPatient", s.position),
                                            ("ImageOrientationPatient", s.orientation),
                                            ("PixelSpacing", s.pixel_spacing), ("Rows", s.rows),
                                            ("Columns", s.columns)) if value is None]
        if missing:
            raise ConversionError(f"{s.path}: CT slice lacks {', '.join(missing)}")
        if s.number_of_frames != 1:
            raise ConversionError(f"{s.path}: multi-frame (enhanced) CT is not supported, only single-frame slices")
        if np.max(np.abs(np.subtract(s.orientation, first.orientation))) > ORIENTATION_TOL:
            raise ConversionError(f"{s.path}: ImageOrientationPatient {s.orientation} differs from "
                                  f"{first.orientation} of {first.path.name}; the slices do not form one volume")
        if (s.rows, s.columns) != (first.rows, first.columns):
            raise ConversionError(f"{s.path}: {s.rows}x{s.columns} pixels, but {first.path.name} has "
                                  f"{first.rows}x{first.columns}")
        if np.max(np.abs(np.subtract(s.pixel_spacing, first.pixel_spacing))) > 1e-4 * max(first.pixel_spacing):
            raise ConversionError(f"{s.path}: PixelSpacing {s.pixel_spacing} differs from {first.pixel_spacing} "
                                  f"of {first.path.name}")
    row_dir = _unit(np.asarray(first.orientation[:3]), "row", first.path)
    col_dir = _unit(np.asarray(first.orientation[3:]), "column", first.path)
    if abs(float(np.dot(row_dir, col_dir))) > 1e-3:
        raise ConversionError(f"{first.path}: ImageOrientationPatient row and column vectors are not orthogonal")
    normal = np.cross(row_dir, col_dir)
    normal /= np.linalg.norm(normal)
    offsets = np.array([np.dot(normal, s.position) for s in slices])
    order = np.argsort(offsets, kind="stable")
    ordered = [slices[i] for i in order]
    offsets = offsets[order]
    row_spacing, col_spacing = first.pixel_spacing  # DICOM: (between rows = y, between columns = x)
    positions = np.array([s.position for s in ordered])
    # the same checks as every DICOM series smoothseg reads (smoothseg.dataset.io.stack_problems): one place
    problems = stack_problems(positions, [np.asarray(s.orientation, float) for s in ordered], None,
                              [f"{s.path.name} (acquisition {s.acquisition_number})" for s in ordered])
    if problems:
        hint = " (two phases stacked in one volume?)" if any("duplicate" in p for p in problems) else ""
        raise ConversionError(f"{first.path.parent}: the CT slices do not form one regular volume: "
                              + "; ".join(p.split(" (--resample-irregular")[0] for p in problems) + hint)
    slice_spacing = _slice_spacing(offsets, first)
    direction = np.column_stack([row_dir, col_dir, normal]) + 0.0  # + 0.0 turns -0.0 into 0.0
    geometry = Geometry((col_spacing, row_spacing, slice_spacing), tuple(positions[0]), tuple(direction.ravel()))
    return SliceStack(ordered, geometry, int(first.rows), int(first.columns))


def _slice_spacing(offsets: np.ndarray, first: DicomFile) -> float:
    """The mean distance between consecutive slices (checked regular before); 1 mm for a single slice."""
    if len(offsets) == 1:
        logger.warning("%s: a single slice; slice spacing set to 1 mm", first.path)
        return 1.0
    return float((offsets[-1] - offsets[0]) / (len(offsets) - 1))


@dataclass
class CTVolume:
    """A CT volume in Hounsfield units, its geometry, and the SOP instance behind each slice."""

    hu: np.ndarray  # (z, y, x) int16
    geometry: Geometry
    sop_instance_uids: list[str]
    offsets: np.ndarray  # position of each slice along the normal (mm)

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.hu.shape)

    def uid_to_index(self) -> dict[str, int]:
        return {uid: k for k, uid in enumerate(self.sop_instance_uids)}


def read_hu_slice(path: Path, rows: int, columns: int) -> tuple[np.ndarray, int]:
    """Pixels of one CT slice in HU (float64, RescaleSlope/Intercept applied) and the number clipped to int16."""
    pydicom, _ = require_dicom_libraries()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(path)
            stored = np.asarray(ds.pixel_array)
    except Exception as exc:  # noqa: BLE001 - pydicom/decoder errors vary by corruption and transfer syntax
        raise ConversionError(f"{path}: unreadable CT pixel data ({type(exc).__name__}: {exc})") from None
    if stored.shape != (rows, columns):
        raise ConversionError(f"{path}: pixel data has shape {stored.shape}, expected ({rows}, {columns})")
    slope = float(ds.get("RescaleSlope", 1) or 1)
    intercept = float(ds.get("RescaleIntercept", 0) or 0)
    hu = stored.astype(np.float64) * slope + intercept
    outside = int(np.count_nonzero((hu < _INT16.min) | (hu > _INT16.max)))
    return hu, outside


def build_ct_volume(slices: Sequence[DicomFile], *, progress: bool = False) -> CTVolume:
    """Read ``slices`` into an int16 HU volume sorted along the slice normal, with its geometry.

    Raises :class:`ConversionError` naming the file when a slice is unreadable or the stack is not a regular volume.
    """
    stack = stack_slices(slices)
    hu = np.empty((len(stack.slices), stack.rows, stack.columns), dtype=np.int16)
    clipped = 0
    for k, s in enumerate(tqdm(stack.slices, desc="read CT", unit="slice", disable=not progress, leave=False)):
        values, outside = read_hu_slice(s.path, stack.rows, stack.columns)
        clipped += outside
        hu[k] = np.clip(np.rint(values), _INT16.min, _INT16.max).astype(np.int16)
    if clipped:
        logger.warning("%d voxel(s) outside the int16 range were clipped", clipped)
    return CTVolume(hu, stack.geometry, [s.sop_instance_uid for s in stack.slices], stack.offsets)


def group_phases(files: Iterable[DicomFile]) -> dict[tuple[str, int | None], list[DicomFile]]:
    """Single-frame CT files grouped by (series, acquisition number)."""
    groups: dict[tuple[str, int | None], list[DicomFile]] = defaultdict(list)
    for f in files:
        if f.is_ct and f.number_of_frames == 1:
            groups[f.phase_key].append(f)
    return dict(groups)

"""Image I/O that never loses geometry.

Everything is read through SimpleITK, so NIfTI, NRRD, MHA/MHD and DICOM series folders all work.
Arrays are returned in NumPy order ``(z, y, x)``; :class:`Geometry` keeps the physical frame in
SimpleITK's ``(x, y, z)`` order (spacing in mm, origin in mm, direction as a row-major 3x3 matrix).

Reading validates what later stages rely on: the image is 3D, single-channel and finite.
Writing is atomic: the file appears under its final name complete, or not at all.
"""

from __future__ import annotations

import gzip
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from smoothseg.atomic import atomic_path
from smoothseg.errors import ImageReadError, ImageWriteError, SmoothSegError

#: File endings smoothseg accepts for single-file images, longest first so ``.nii.gz`` wins over ``.gz``.
#: File endings of images (".seg.nrrd", 3D Slicer's segmentation file, is an NRRD; it comes before ".nrrd" so that a
#: case id never ends in ".seg").
IMAGE_ENDINGS: tuple[str, ...] = (".seg.nrrd", ".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")


@dataclass(frozen=True)
class Geometry:
    """Physical frame of a 3D image, in SimpleITK's (x, y, z) convention.

    ``direction`` is the row-major 3x3 matrix whose columns are the physical directions of the
    index axes i, j, k. A voxel with index (i, j, k) lies at
    ``origin + direction @ (spacing * (i, j, k))``.
    """

    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]
    direction: tuple[float, ...] = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)

    def __post_init__(self) -> None:
        object.__setattr__(self, "spacing", tuple(float(v) for v in self.spacing))
        object.__setattr__(self, "origin", tuple(float(v) for v in self.origin))
        object.__setattr__(self, "direction", tuple(float(v) for v in np.asarray(self.direction).ravel()))
        if len(self.spacing) != 3 or len(self.origin) != 3 or len(self.direction) != 9:
            raise ValueError("Geometry needs 3 spacings, 3 origin values and 9 direction values")
        if min(self.spacing) <= 0:
            raise ValueError(f"spacing must be positive, got {self.spacing}")

    @property
    def direction_matrix(self) -> np.ndarray:
        return np.asarray(self.direction, dtype=float).reshape(3, 3)

    @property
    def spacing_zyx(self) -> tuple[float, float, float]:
        """Spacing in NumPy array order (z, y, x)."""
        return self.spacing[::-1]

    @classmethod
    def from_sitk(cls, image: sitk.Image) -> Geometry:
        return cls(image.GetSpacing(), image.GetOrigin(), image.GetDirection())

    def apply_to(self, image: sitk.Image) -> sitk.Image:
        """Stamp this geometry onto a SimpleITK image (in place) and return it."""
        image.SetSpacing(self.spacing)
        image.SetOrigin(self.origin)
        image.SetDirection(self.direction)
        return image

    def index_to_physical(self, index_xyz: np.ndarray) -> np.ndarray:
        """Physical coordinates (mm) of continuous indices given as ``(..., 3)`` in (i, j, k) order."""
        idx = np.asarray(index_xyz, dtype=float)
        return np.asarray(self.origin) + (idx * np.asarray(self.spacing)) @ self.direction_matrix.T

    def differences(self, other: Geometry, *, spacing_tol: float = 1e-4, origin_tol_mm: float = 1e-3,
                    direction_tol: float = 1e-4) -> list[str]:
        """Human-readable list of the ways ``other`` differs from this geometry beyond tolerance.

        ``spacing_tol`` is relative; ``origin_tol_mm`` is absolute in mm; ``direction_tol`` is on
        the matrix entries.
        """
        problems = []
        s1, s2 = np.asarray(self.spacing), np.asarray(other.spacing)
        if np.any(np.abs(s1 - s2) > spacing_tol * np.maximum(np.abs(s1), np.abs(s2))):
            problems.append(f"spacing {_fmt(self.spacing)} vs {_fmt(other.spacing)}")
        if np.any(np.abs(np.subtract(self.origin, other.origin)) > origin_tol_mm):
            problems.append(f"origin {_fmt(self.origin)} vs {_fmt(other.origin)}")
        if np.any(np.abs(np.subtract(self.direction, other.direction)) > direction_tol):
            problems.append(f"direction {_fmt(self.direction)} vs {_fmt(other.direction)}")
        return problems

    def to_dict(self) -> dict:
        return {"spacing": list(self.spacing), "origin": list(self.origin), "direction": list(self.direction)}

    @classmethod
    def from_dict(cls, d: dict) -> Geometry:
        return cls(d["spacing"], d["origin"], d["direction"])


@dataclass(frozen=True)
class ImageHeader:
    """What an image file's header says, read without loading voxels."""

    path: Path
    dimension: int
    size: tuple[int, ...]  # SimpleITK order (x, y, z[, t])
    components: int
    pixel_type: str
    geometry: Geometry | None  # None when the image is not 3D

    @property
    def shape(self) -> tuple[int, ...]:
        """Array shape in NumPy order (z, y, x)."""
        return tuple(self.size[::-1])


def _fmt(values) -> str:
    return "(" + ", ".join(f"{v:.4g}" for v in values) + ")"


def image_ending(path: str | Path) -> str | None:
    """The recognised file ending of ``path`` (e.g. ``.nii.gz``), or None."""
    name = Path(path).name.lower()
    for ending in IMAGE_ENDINGS:
        if name.endswith(ending):
            return ending
    return None


def _dicom_file_names(folder: Path, series_uid: str | None) -> list[str]:
    reader = sitk.ImageSeriesReader()
    series = list(reader.GetGDCMSeriesIDs(str(folder)))
    if not series:
        raise ImageReadError(folder, "folder holds no readable DICOM series")
    if series_uid is None:
        if len(series) > 1:
            raise ImageReadError(
                folder, f"folder holds {len(series)} DICOM series ({', '.join(series)}); pass series_uid to choose one"
            )
        series_uid = series[0]
    elif series_uid not in series:
        raise ImageReadError(folder, f"DICOM series {series_uid} not found; present: {', '.join(series)}")
    return list(reader.GetGDCMSeriesFileNames(str(folder), series_uid))


def _check_3d(path: Path, dimension: int, components: int) -> None:
    if dimension != 3:
        raise ImageReadError(path, f"expected a 3D image, found a {dimension}D image")
    if components != 1:
        raise ImageReadError(path, f"expected a single-channel image, found {components} components per voxel")


def _information_reader(path: Path, problem: str) -> sitk.ImageFileReader:
    """A reader for ``path`` that has read the header, or an :class:`ImageReadError` saying ``problem``."""
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError as exc:
        raise ImageReadError(path, f"{problem} ({_first_line(exc)})") from None
    return reader


def read_header(path: str | Path) -> ImageHeader:
    """Read an image's header (size, geometry, pixel type) without loading its voxels."""
    path = Path(path)
    if not path.exists():
        raise ImageReadError(path, "file does not exist")
    if path.is_dir():  # DICOM series: the header is spread over the files, so read the series
        image = read_sitk(path)
        return ImageHeader(path, 3, tuple(image.GetSize()), 1, image.GetPixelIDTypeAsString(),
                           Geometry.from_sitk(image))
    reader = _information_reader(path, "unreadable image header")
    dim = reader.GetDimension()
    geometry = None
    if dim == 3:
        geometry = Geometry(reader.GetSpacing(), reader.GetOrigin(), reader.GetDirection())
    return ImageHeader(path, dim, tuple(reader.GetSize()), reader.GetNumberOfComponents(),
                       sitk.GetPixelIDValueAsString(reader.GetPixelID()), geometry)


def _first_line(exc: Exception) -> str:
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    # SimpleITK messages start with a source location; the last line usually says what went wrong.
    return lines[-1] if lines else type(exc).__name__


_NIFTI_FLOAT_TYPES = {16: "f4", 64: "f8"}


def _nifti_header(reader: sitk.ImageFileReader) -> dict[str, str]:
    """The NIfTI header fields the voxel check needs, copied out of the reader (plain strings)."""
    keys = [k for k in reader.GetMetaDataKeys() if k in ("vox_offset", "bitpix", "datatype") or k.startswith("dim[")]
    header = {k: reader.GetMetaData(k) for k in keys}
    header["size"] = ",".join(str(v) for v in reader.GetSize())
    return header


def _check_nifti_voxels(path: Path, header: dict[str, str], check_finite: bool) -> None:
    """Check a NIfTI file's voxel block ourselves, because ITK's NIfTI reader does not.

    ITK fills a truncated voxel block with zeros and silently replaces NaN/Inf with 0. Here the
    (decompressed) voxel block is read from disk: a short block or a broken gzip stream is refused,
    and so are non-finite floats. ``header`` comes from :func:`_nifti_header` (a plain dict, so this
    can run in a thread while ITK decodes: SimpleITK objects are not thread-safe).
    """
    if not all(k in header for k in ("vox_offset", "bitpix", "datatype", "dim[0]")):
        return
    n_dims = int(header["dim[0]"])
    n_voxels = int(np.prod([int(header[f"dim[{i}]"]) for i in range(1, n_dims + 1)]))
    offset = int(float(header["vox_offset"]))
    n_bytes = n_voxels * int(header["bitpix"]) // 8
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            raw = f.read(offset + n_bytes)
    except (OSError, EOFError, zlib.error) as exc:
        raise ImageReadError(path, f"unreadable or truncated image (compressed data is corrupt: {exc})") from None
    if len(raw) < offset + n_bytes:
        raise ImageReadError(path, f"unreadable or truncated image: voxel data holds {max(len(raw) - offset, 0)} of "
                                   f"{n_bytes} bytes")
    float_code = _NIFTI_FLOAT_TYPES.get(int(header["datatype"]))
    if check_finite and float_code:
        endian = "<" if int.from_bytes(raw[:4], "little") in (348, 540) else ">"
        shape_zyx = tuple(int(v) for v in header["size"].split(","))[::-1]
        _check_finite(path, np.frombuffer(raw, endian + float_code, count=n_voxels, offset=offset), shape_zyx)


def _check_finite(path: Path, values: np.ndarray, shape_zyx: tuple[int, ...]) -> None:
    bad = ~np.isfinite(values)
    n_bad = int(bad.sum())
    if n_bad:
        first = np.unravel_index(int(np.flatnonzero(bad.ravel())[0]), shape_zyx)[::-1]
        raise ImageReadError(path, f"{n_bad} voxel(s) are NaN or Inf (first at index (x, y, z) = "
                                   f"{tuple(int(v) for v in first)})")


def read_sitk(path: str | Path, series_uid: str | None = None, *, check_finite: bool = True,
              allow_non_ct: bool = False, resample_irregular: bool = False,
              notes: list[str] | None = None) -> sitk.Image:
    """Read a file or DICOM series folder into a SimpleITK image, checking it is 3D, scalar, complete and finite, and
    that a DICOM series is a regular CT stack (:func:`dicom_series_problems`). Slices that repeat another slice
    exactly (same position, same pixels) are dropped, and with ``resample_irregular`` a series with gaps or a shear is
    resampled onto a regular orthogonal grid (:func:`resample_stack`) instead of refused; either adds a line to
    ``notes`` when given."""
    path = Path(path)
    if not path.exists():
        raise ImageReadError(path, "file does not exist")
    if image_ending(path) in (".nii", ".nii.gz") and path.is_file():
        return _read_nifti(path, check_finite)
    if path.is_dir():
        files = _dicom_file_names(path, series_uid)
        if len(files) == 1 and _frames(files[0]) > 1:
            return _read_multiframe(path, files[0], allow_non_ct)
        reader, image = _read_stack(path, files, notes)
        problems = dicom_series_problems(reader, allow_non_ct=allow_non_ct)
        if problems and resample_irregular and all(p.endswith(RESAMPLABLE) for p in problems):
            image = _resampled_series(reader, image)
            if notes is not None:
                notes.append("irregular DICOM series resampled onto a regular orthogonal grid (the label map lies on "
                             "that grid): " + "; ".join(p[:-len(RESAMPLABLE)] for p in problems))
        elif problems:
            raise ImageReadError(path, "; ".join(problems))
        return image
    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError as exc:
        raise ImageReadError(path, f"unreadable or truncated image ({_first_line(exc)})") from None
    _check_3d(path, image.GetDimension(), image.GetNumberOfComponentsPerPixel())
    return image


def dicom_series_files(path: str | Path, series_uid: str | None = None) -> list[str]:
    """The files of a DICOM series folder that make up the volume :func:`read_image` reads, in its slice order (odd
    images skipped, exact duplicates dropped): what a DICOM SEG of that volume references."""
    path = Path(path)
    files = _dicom_file_names(path, series_uid)
    if len(files) == 1:
        return files
    reader, _ = _read_stack(path, files, None)
    return list(reader.GetFileNames())


def _read_stack(path: Path, files: list[str], notes: list[str] | None) -> tuple[sitk.ImageSeriesReader, sitk.Image]:
    """Read a series' ``files`` as one stack: images that do not belong to it (a localizer, another size or
    orientation) skipped, then exact duplicate slices dropped, each with a line in ``notes`` when given."""
    try:
        reader, image = _read_series(path, files)
        odd = any("another orientation" in problem for problem in dicom_series_problems(reader, allow_non_ct=True))
    except ImageReadError:  # e.g. slices of another size in the stack
        odd = True
    if odd:  # a localizer or other odd images among the slices: keep the one consistent stack, if there is one
        files, skipped = _consistent_stack(path, files)
        if notes is not None:
            notes.append(f"{len(skipped)} DICOM image(s) that do not belong to the CT stack were skipped "
                         f"(localizer, or another size or orientation): {', '.join(skipped[:5])}")
        reader, image = _read_series(path, files)
    kept = _without_exact_duplicates(reader, image)
    if len(kept) < len(files):
        dropped = [Path(f).name for f in files if f not in kept]
        if notes is not None:
            notes.append(f"{len(dropped)} duplicate DICOM slice(s) with the same position and pixels as another "
                         f"were dropped: {', '.join(dropped[:5])}")
        reader, image = _read_series(path, kept)
    return reader, image


def _resampled_series(reader: sitk.ImageSeriesReader, image: sitk.Image) -> sitk.Image:
    """The read series (one slice per file, in the reader's order) resampled by :func:`resample_stack`."""
    n = len(reader.GetFileNames())
    positions = np.array([_numbers(reader.GetMetaData(i, "0020|0032")) for i in range(n)])
    orientation = _numbers(reader.GetMetaData(0, "0020|0037"))
    array, geometry = resample_stack(sitk.GetArrayFromImage(image), positions, orientation, image.GetSpacing()[:2])
    if np.issubdtype(sitk.GetArrayViewFromImage(image).dtype, np.integer):
        array = np.round(array).astype(np.int16)
    return to_sitk(array, geometry)


def _consistent_stack(path: Path, files: list[str]) -> tuple[list[str], list[str]]:
    """``(kept, skipped file names)``: the files of the largest group sharing one size and orientation that are not
    localizers (ImageType LOCALIZER); refused when that group has fewer than 2 images or another group is as large
    (two stacks: which one is the CT is not for smoothseg to guess). Reads each file's header (only for series that
    did not read as one stack)."""
    groups: dict[tuple, list[str]] = {}
    skipped = []
    for file in files:
        reader = sitk.ImageFileReader()
        reader.SetFileName(file)
        try:
            reader.ReadImageInformation()
        except RuntimeError:
            skipped.append(Path(file).name)
            continue
        image_type = reader.GetMetaData("0008|0008").upper() if reader.HasMetaDataKey("0008|0008") else ""
        if "LOCALIZER" in image_type:
            skipped.append(Path(file).name)
            continue
        orientation = tuple(np.round(_numbers(reader.GetMetaData("0020|0037")), 4)) \
            if reader.HasMetaDataKey("0020|0037") else ()
        groups.setdefault((reader.GetSize()[:2], orientation), []).append(file)
    sizes = sorted((len(g) for g in groups.values()), reverse=True)
    if not sizes or sizes[0] < 2 or (len(sizes) > 1 and sizes[1] == sizes[0]):
        raise ImageReadError(path, f"no single consistent CT stack: {len(files)} image(s) in {len(groups)} group(s) "
                                   f"of one size and orientation, of {', '.join(map(str, sizes)) or 'none'} image(s), "
                                   f"{len(skipped)} localizer or unreadable")
    largest = max(groups.values(), key=len)
    skipped += [Path(f).name for g in groups.values() if g is not largest for f in g]
    return [f for f in files if f in set(largest)], sorted(skipped)


def _read_series(path: Path, files: list[str]) -> tuple[sitk.ImageSeriesReader, sitk.Image]:
    """Read the DICOM ``files`` as one 3D image, keeping each slice's header for the checks."""
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(files)
    reader.MetaDataDictionaryArrayUpdateOn()
    try:
        image = reader.Execute()
    except RuntimeError as exc:
        raise ImageReadError(path, f"unreadable or truncated image ({_first_line(exc)})") from None
    _check_3d(path, image.GetDimension(), image.GetNumberOfComponentsPerPixel())
    return reader, image


def _without_exact_duplicates(reader: sitk.ImageSeriesReader, image: sitk.Image) -> list[str]:
    """The reader's files without those that repeat an earlier one's position and pixels exactly (the image holds one
    slice per file, in the reader's order), sorted along the slice normal when any was dropped. Slices at one
    position with different pixels are kept, and refused by the checks."""
    files = list(reader.GetFileNames())
    keys = ("0020|0032", "0020|0037")
    if not all(reader.HasMetaDataKey(i, key) for i in range(len(files)) for key in keys):
        return files
    iop = _numbers(reader.GetMetaData(0, "0020|0037"))
    along = np.array([_numbers(reader.GetMetaData(i, "0020|0032")) for i in range(len(files))]) @ np.cross(iop[:3],
                                                                                                         iop[3:])
    array = None
    drop: set[int] = set()
    for i in range(len(files)):
        for j in range(i + 1, len(files)):
            if j in drop or abs(along[i] - along[j]) > 1e-3:
                continue
            array = sitk.GetArrayViewFromImage(image) if array is None else array
            if np.array_equal(array[i], array[j]):
                drop.add(j)
    if not drop:
        return files
    return [files[k] for k in np.argsort(along, kind="stable") if k not in drop]  # GDCM could not sort them


def _frames(file: str) -> int:
    """NumberOfFrames of a DICOM file (1 when absent or unreadable)."""
    reader = sitk.ImageFileReader()
    reader.SetFileName(file)
    try:
        reader.ReadImageInformation()
        return int(reader.GetMetaData("0028|0008").strip()) if reader.HasMetaDataKey("0028|0008") else 1
    except (RuntimeError, ValueError):
        return 1


def _numbers(text: str) -> np.ndarray:
    return np.array([float(v) for v in text.strip().split("\\")], dtype=float)


def stack_problems(positions: np.ndarray, orientations: list[np.ndarray], modality: str | None,
                   instances: list[str], *, allow_non_ct: bool = False) -> list[str]:
    """What makes a stack of DICOM slices (or frames) unsafe to use as one regular volume. A volume has one slice
    spacing and one direction, so every departure from a regular, orthogonal stack would put voxels in the wrong
    place without a word:

    * a Modality other than CT (the models are CT models), unless ``allow_non_ct``;
    * slices whose orientation (ImageOrientationPatient) differs from the first one's;
    * two slices at the same position along the normal (a duplicate: identical or not);
    * a step more than 1.5 times the median step (missing slices), naming the positions and instance numbers;
    * a step that differs from the median by more than ``SLICE_STEP_RTOL`` otherwise (uneven spacing: each slice
      after it would be misplaced by the difference);
    * positions that move within the slice plane from slice to slice by more than 1% of the step or 0.05 mm (a
      tilted gantry or sheared series: the direction would be taken from the shear).

    ``positions`` ``(n, 3)`` and ``orientations`` (6 values each) in the stack's order, ``instances`` the instance
    (or frame) numbers to name.
    """
    problems = []
    if modality is not None and modality.upper() != "CT" and not allow_non_ct:
        problems.append(f"Modality is {modality or 'empty'}, not CT: the models segment CT (use --allow-non-ct if "
                        "you know what you do)")
    n = len(positions)
    if n < 2 or not orientations:
        return problems
    iop = orientations[0]
    normal = np.cross(iop[:3], iop[3:])
    turned = [i for i in range(1, len(orientations)) if np.abs(orientations[i] - iop).max() > 1e-4]
    if turned:
        problems.append(f"{len(turned)} slice(s) have another orientation than the first (e.g. slice {turned[0] + 1})")
    points = np.asarray(positions, dtype=float)
    along = points @ normal
    order = np.argsort(along, kind="stable")  # the checks look at the stack sorted along the normal
    if np.any(np.diff(along) < 0) and np.any(np.diff(along) > 0):
        problems.append("the slices are not in position order (the reader could not sort them)")
    points, along = points[order], along[order]
    steps = np.diff(along)
    median = float(np.median(np.abs(steps)))
    instance = [instances[int(i)] for i in order]

    def where(k: int) -> str:
        return f"{along[k]:.2f} and {along[k + 1]:.2f} mm (instances {instance[k]} and {instance[k + 1]})"

    duplicates = [k for k in range(n - 1) if abs(steps[k]) <= max(1e-3 * median, 1e-3)]
    if duplicates:
        problems.append(f"{len(duplicates)} duplicate slice position(s): two slices at {where(duplicates[0])}")
    if median > 0:
        gaps = [k for k in range(n - 1) if abs(steps[k]) > 1.5 * median]
        if gaps:
            problems.append(f"missing slice(s): a gap of {abs(steps[gaps[0]]):.2f} mm between {where(gaps[0])}, "
                            f"the median step being {median:.2f} mm ({len(gaps)} gap(s)){RESAMPLABLE}")
        uneven = [k for k in range(n - 1) if k not in gaps and k not in duplicates
                  and abs(abs(steps[k]) - median) > max(SLICE_STEP_RTOL * median, 1e-3)]
        if uneven:
            problems.append(f"uneven slice spacing: a step of {abs(steps[uneven[0]]):.3f} mm between "
                            f"{where(uneven[0])}, the median step being {median:.3f} mm ({len(uneven)} uneven "
                            f"step(s)){RESAMPLABLE}")
        in_plane = np.linalg.norm(np.diff(points, axis=0) - steps[:, None] * normal, axis=1)
        if in_plane.max() > max(0.01 * median, 0.05):
            problems.append(f"slice positions move {in_plane.max():.2f} mm within the slice plane per slice (a "
                            f"tilted gantry or sheared series): the volume would not be orthogonal{RESAMPLABLE}")
    return problems


#: Steps between slices may differ from the median step by this fraction (1 %) before the stack counts as uneven.
SLICE_STEP_RTOL = 0.01
#: Ends the problems that ``--resample-irregular`` resolves (a gap, a shear) instead of refusing the case.
RESAMPLABLE = " (--resample-irregular resamples it onto a regular orthogonal grid)"


def resample_stack(slices: np.ndarray, positions: np.ndarray, orientation: np.ndarray, pixel_spacing_xy,
                   fill: float = -1024.0) -> tuple[np.ndarray, Geometry]:
    """A stack of slices ``(n, rows, cols)`` at ``positions`` (any order, with gaps or shear) resampled onto the
    regular orthogonal grid that starts at the lowest slice: spacing along the normal the median step, each target
    slice interpolated linearly between its two neighbours along the normal, and shifted within its plane by its
    (interpolated) in-plane offset (linear interpolation; ``fill`` outside), as dcm2niix and 3D Slicer do for a
    tilted gantry. Returns the float32 array and its geometry (origin the lowest slice's position, direction the
    row, column and normal cosines)."""
    row, col = np.asarray(orientation[:3], float), np.asarray(orientation[3:], float)
    normal = np.cross(row, col)
    points = np.asarray(positions, dtype=float)
    order = np.argsort(points @ normal, kind="stable")
    slices, points = np.asarray(slices, dtype=np.float32)[order], points[order]
    along = points @ normal
    step = float(np.median(np.diff(along)))
    count = int(round((along[-1] - along[0]) / step)) + 1
    offsets = points - points[0] - (along - along[0])[:, None] * normal  # in-plane offsets from the first slice
    sx, sy = float(pixel_spacing_xy[0]), float(pixel_spacing_xy[1])
    out = np.empty((count, *slices.shape[1:]), dtype=np.float32)
    for t in range(count):
        z = along[0] + t * step
        k = int(np.clip(np.searchsorted(along, z, side="right") - 1, 0, len(along) - 2))
        w = float(np.clip((z - along[k]) / (along[k + 1] - along[k]), 0.0, 1.0))
        plane = (1 - w) * slices[k] + w * slices[k + 1] if w > 0 else slices[k]
        offset = (1 - w) * offsets[k] + w * offsets[k + 1]
        shift = (float(offset @ col) / sy, float(offset @ row) / sx)  # (rows, columns) in voxels
        out[t] = ndimage.shift(plane, shift, order=1, mode="constant", cval=fill) if np.abs(shift).max() > 1e-3 \
            else plane
    geometry = Geometry((sx, sy, step), tuple(points[0]), tuple(np.column_stack([row, col, normal]).ravel()))
    return out, geometry


def dicom_series_problems(reader: sitk.ImageSeriesReader, *, allow_non_ct: bool = False) -> list[str]:
    """:func:`stack_problems` of a read series, from each slice's own header (``reader`` after ``Execute`` with
    ``MetaDataDictionaryArrayUpdateOn``)."""
    n = len(reader.GetFileNames())

    def tag(i: int, key: str) -> str | None:
        return reader.GetMetaData(i, key).strip() if reader.HasMetaDataKey(i, key) else None

    positions = [tag(i, "0020|0032") for i in range(n)]
    orientations = [tag(i, "0020|0037") for i in range(n)]
    if any(p is None for p in positions) or any(o is None for o in orientations):
        positions, orientations = [], []
    return stack_problems(np.array([_numbers(p) for p in positions]).reshape(-1, 3),
                          [_numbers(o) for o in orientations], tag(0, "0008|0060"),
                          [tag(i, "0020|0013") or "?" for i in range(n)], allow_non_ct=allow_non_ct)


def _read_multiframe(path: Path, file: str, allow_non_ct: bool) -> sitk.Image:
    """One multi-frame (Enhanced or legacy-converted enhanced) CT object: frames sorted along the slice normal,
    geometry from the functional groups (positions per frame, orientation, pixel spacing), stored values rescaled
    (the frame's own slope and intercept where given), checked as a series is (:func:`stack_problems`)."""
    try:
        import pydicom
    except ImportError:
        raise ImageReadError(path, 'a multi-frame DICOM object needs pydicom: pip install -e ".[dicom]"') from None
    ds = pydicom.dcmread(file)
    shared = ds.SharedFunctionalGroupsSequence[0] if "SharedFunctionalGroupsSequence" in ds else None
    frames = ds.PerFrameFunctionalGroupsSequence

    def group(k: int, name: str):
        own = frames[k].get(name)
        return own[0] if own else (shared.get(name)[0] if shared is not None and shared.get(name) else None)

    try:
        positions = np.array([[float(v) for v in group(k, "PlanePositionSequence").ImagePositionPatient]
                              for k in range(len(frames))])
        orientations = [np.array([float(v) for v in group(k, "PlaneOrientationSequence").ImageOrientationPatient])
                        for k in range(len(frames))]
        pixel_spacing = [float(v) for v in group(0, "PixelMeasuresSequence").PixelSpacing]
    except (AttributeError, TypeError, IndexError) as exc:
        raise ImageReadError(path, f"multi-frame object without plane positions, orientation or pixel spacing "
                                   f"({exc})") from None
    problems = stack_problems(positions, orientations, str(ds.get("Modality", "")) or None,
                              [f"frame {k + 1}" for k in range(len(frames))], allow_non_ct=allow_non_ct)
    if problems:
        raise ImageReadError(path, "; ".join(problems))
    stored = ds.pixel_array.astype(np.float64).reshape(len(frames), int(ds.Rows), int(ds.Columns))
    values = np.empty(stored.shape, dtype=np.float32)
    for k in range(len(frames)):
        rescale = group(k, "PixelValueTransformationSequence")
        slope = float(getattr(rescale, "RescaleSlope", 1.0)) if rescale is not None else 1.0
        intercept = float(getattr(rescale, "RescaleIntercept", 0.0)) if rescale is not None else 0.0
        values[k] = stored[k] * slope + intercept
    iop = orientations[0]
    normal = np.cross(iop[:3], iop[3:])
    order = np.argsort(positions @ normal, kind="stable")
    along = (positions @ normal)[order]
    step = float(np.median(np.diff(along))) if len(frames) > 1 else 1.0
    direction = np.column_stack([iop[:3], iop[3:], normal]).ravel()
    array = values[order]
    if np.allclose(array, np.round(array)) and np.abs(array).max() < 32768:
        array = np.round(array).astype(np.int16)
    geometry = Geometry((pixel_spacing[1], pixel_spacing[0], step), tuple(positions[order[0]]), tuple(direction))
    return to_sitk(array, geometry)


def _read_nifti(path: Path, check_finite: bool) -> sitk.Image:
    """Read a NIfTI file while a second thread checks its voxel block (zlib releases the GIL)."""
    reader = _information_reader(path, "unreadable or truncated image")
    _check_3d(path, reader.GetDimension(), reader.GetNumberOfComponents())
    with ThreadPoolExecutor(max_workers=1) as pool:
        check = pool.submit(_check_nifti_voxels, path, _nifti_header(reader), check_finite)
        try:
            image, failure = reader.Execute(), None
        except RuntimeError as exc:
            image, failure = None, exc
        check.result()  # raises the more specific ImageReadError first
    if failure is not None:
        raise ImageReadError(path, f"unreadable or truncated image ({_first_line(failure)})") from None
    return image


def read_image(path: str | Path, *, series_uid: str | None = None, check_finite: bool = True,
               allow_non_ct: bool = False, resample_irregular: bool = False,
               notes: list[str] | None = None) -> tuple[np.ndarray, Geometry]:
    """Read a 3D image into a ``(z, y, x)`` array and its :class:`Geometry`.

    Raises :class:`ImageReadError` (naming the file) when the file is missing, unreadable or
    truncated, not 3D, multi-channel, or (with ``check_finite``) holds NaN or Inf voxels; for a DICOM series folder
    also when the slices do not form a regular CT stack (:func:`dicom_series_problems`; ``allow_non_ct`` lets other
    modalities through; ``resample_irregular`` resamples a series with gaps or a shear instead). What was cleaned up
    on the way (exact duplicate slices dropped, a series resampled) is appended to ``notes``.
    """
    path = Path(path)
    image = read_sitk(path, series_uid, check_finite=check_finite, allow_non_ct=allow_non_ct,
                      resample_irregular=resample_irregular, notes=notes)
    try:
        array = sitk.GetArrayFromImage(image)
    except RuntimeError as exc:  # pragma: no cover - SimpleITK reads lazily only for some formats
        raise ImageReadError(path, f"unreadable voxel data ({_first_line(exc)})") from None
    if check_finite and np.issubdtype(array.dtype, np.floating):
        _check_finite(path, array, array.shape)
    return array, Geometry.from_sitk(image)


#: Fewer voxels than this along an axis: the image is a few slices, not a volume.
MIN_SLICES = 8


def is_dicom_folder(path: str | Path) -> bool:
    """Whether ``path`` is a folder whose files look like DICOM (the ``DICM`` marker at byte 128 of the first one)."""
    path = Path(path)
    if not path.is_dir():
        return False
    for entry in sorted(path.iterdir()):
        if entry.is_file() and not entry.name.startswith("."):
            try:
                with open(entry, "rb") as f:
                    f.seek(128)
                    return f.read(4) == b"DICM"
            except OSError:
                return False
    return False


def ct_input_warnings(array: np.ndarray) -> list[str]:
    """Why a CT given for prediction will likely be predicted badly (empty when nothing is odd).

    * fewer than :data:`MIN_SLICES` voxels along an axis: the models learnt from volumes, and a slab of a few
      slices is predicted much worse than the same slices inside their volume;
    * an 8-bit pixel type: it cannot hold CT numbers (about -1024 to 3000 HU), so the values were clipped or
      rescaled (a screenshot or a windowed export, not the scanner's data).
    """
    warnings = []
    thinnest = int(min(array.shape))
    if thinnest < MIN_SLICES:
        warnings.append(f"only {thinnest} voxel(s) along one axis (shape {tuple(array.shape)}): the models were "
                        f"trained on volumes, and fewer than {MIN_SLICES} slices predict much worse than the same "
                        "slices inside their volume")
    if array.dtype in (np.int8, np.uint8, np.bool_):
        warnings.append(f"pixel type {array.dtype} cannot hold CT numbers (about -1024 to 3000 HU): the values were "
                        "clipped or rescaled, and predictions will be wrong unless the image is in HU")
    return warnings


def to_sitk(array: np.ndarray, geometry: Geometry) -> sitk.Image:
    """Wrap a ``(z, y, x)`` array as a SimpleITK image with ``geometry``."""
    array = np.asarray(array)
    if array.ndim != 3:
        raise SmoothSegError(f"expected a 3D (z, y, x) array, got shape {array.shape}")
    if array.dtype == bool:
        array = array.astype(np.uint8)
    try:
        image = sitk.GetImageFromArray(array, isVector=False)
    except TypeError as exc:
        raise SmoothSegError(f"cannot store a {array.dtype} array as an image ({exc})") from None
    return geometry.apply_to(image)


def write_sitk(image: sitk.Image, path: str | Path, *, compress: bool = True) -> Path:
    """Write a SimpleITK image atomically: to a temporary sibling first, then rename over ``path``."""
    path = Path(path)
    if image_ending(path) is None:
        raise ImageWriteError(path, f"unknown file ending; use one of {', '.join(IMAGE_ENDINGS)}")
    try:
        with atomic_path(path) as tmp:
            sitk.WriteImage(image, str(tmp), useCompression=compress)
    except (RuntimeError, OSError) as exc:
        raise ImageWriteError(path, _first_line(exc)) from None
    return path


def write_image(array: np.ndarray, geometry: Geometry, path: str | Path, *, compress: bool = True) -> Path:
    """Write a ``(z, y, x)`` array with exactly ``geometry`` to ``path`` (format from the ending), atomically.

    Raises :class:`ImageWriteError` naming the file when it cannot be written; an existing file at
    ``path`` is then left untouched.
    """
    path = Path(path)
    try:
        image = to_sitk(array, geometry)
    except SmoothSegError as exc:
        raise ImageWriteError(path, str(exc)) from None
    return write_sitk(image, path, compress=compress)

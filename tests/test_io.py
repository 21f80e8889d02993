"""Image I/O: exact geometry round trips, atomic writes, and clear errors for bad files."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from smoothseg.atomic import atomic_write
from smoothseg.dataset.io import Geometry, read_header, read_image, write_image
from smoothseg.errors import ImageReadError, ImageWriteError

FLIPPED = Geometry((0.75, 0.8125, 2.5), (101.25, -33.5, 412.0), (-1, 0, 0, 0, -1, 0, 0, 0, 1))


def _oblique() -> Geometry:
    angle = np.deg2rad(17.0)
    rot = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, -1.0]])
    return Geometry((0.7, 0.9, 3.3), (-12.3, 45.6, -78.9), tuple(rot.ravel()))


@pytest.mark.parametrize("ending", [".nii.gz", ".nii", ".nrrd", ".mha", ".mhd"])
@pytest.mark.parametrize("dtype", [np.int16, np.uint8, np.float32])
def test_round_trip_keeps_array_and_flipped_geometry_exactly(tmp_path: Path, ending: str, dtype) -> None:
    rng = np.random.default_rng(0)
    array = (rng.normal(0, 100, size=(4, 5, 6))).astype(dtype)
    path = write_image(array, FLIPPED, tmp_path / f"img{ending}")
    back, geometry = read_image(path)
    assert back.dtype == array.dtype
    np.testing.assert_array_equal(back, array)
    assert geometry == FLIPPED


@pytest.mark.parametrize("ending, tol", [(".mha", 0.0), (".nrrd", 0.0), (".nii.gz", 1e-5)])
def test_round_trip_oblique_direction(tmp_path: Path, ending: str, tol: float) -> None:
    """Any direction survives; NIfTI stores float32 (and a quaternion), hence its tolerance."""
    geometry = _oblique()
    _, back = read_image(write_image(np.zeros((3, 4, 5), np.int16), geometry, tmp_path / f"o{ending}"))
    np.testing.assert_allclose(back.direction, geometry.direction, atol=tol)
    np.testing.assert_allclose(back.origin, geometry.origin, atol=max(tol, 1e-12) * 100)
    np.testing.assert_allclose(back.spacing, geometry.spacing, rtol=max(tol, 1e-12))


def test_geometry_maps_indices_like_simpleitk() -> None:
    geometry = _oblique()
    image = geometry.apply_to(sitk.Image(5, 4, 3, sitk.sitkInt16))
    for index in [(0, 0, 0), (4, 3, 2), (1, 2, 1)]:
        np.testing.assert_allclose(geometry.index_to_physical(np.array(index)),
                                   image.TransformIndexToPhysicalPoint(index), atol=1e-9)


def test_geometry_differences_respect_tolerance() -> None:
    near = Geometry(FLIPPED.spacing, tuple(np.add(FLIPPED.origin, 1e-5)), FLIPPED.direction)
    assert FLIPPED.differences(near) == []
    far = Geometry((0.75, 0.8125, 3.0), (0, 0, 0), np.eye(3).ravel())
    problems = FLIPPED.differences(far)
    assert [p.split()[0] for p in problems] == ["spacing", "origin", "direction"]


def test_write_is_atomic_and_leaves_no_temporary_files(tmp_path: Path) -> None:
    target = tmp_path / "out" / "seg.nii.gz"
    write_image(np.ones((2, 3, 4), np.uint8), FLIPPED, target)
    assert sorted(p.name for p in target.parent.iterdir()) == ["seg.nii.gz"]
    before = target.read_bytes()
    # A failing write must leave the old file intact and no debris.
    with pytest.raises(ImageWriteError, match="seg.nii.gz: cannot write image"):
        write_image(np.ones((2, 3, 4), dtype=np.complex256), FLIPPED, target)
    with pytest.raises(ImageWriteError, match="unknown file ending"):
        write_image(np.ones((2, 3, 4)), FLIPPED, target.with_name("seg.xyz"))
    assert target.read_bytes() == before
    assert sorted(p.name for p in target.parent.iterdir()) == ["seg.nii.gz"]


def test_writer_failing_midway_leaves_target_untouched(tmp_path: Path) -> None:
    target = tmp_path / "report.json"
    target.write_text("old")

    def half_then_fail(tmp: Path) -> None:
        tmp.write_text("partial")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(target, half_then_fail)
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["report.json"]


def test_unwritable_folder_gives_clear_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(ImageWriteError, match="cannot write image"):
        write_image(np.zeros((2, 2, 2), np.uint8), FLIPPED, blocker / "seg.nii.gz")


def test_mhd_keeps_its_data_file_reference(tmp_path: Path) -> None:
    array = np.arange(24, dtype=np.int16).reshape(2, 3, 4)
    path = write_image(array, FLIPPED, tmp_path / "vol.mhd")
    assert (tmp_path / "vol.zraw").exists()
    np.testing.assert_array_equal(read_image(path)[0], array)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp")]


def test_bool_array_is_written_as_uint8(tmp_path: Path) -> None:
    back, _ = read_image(write_image(np.eye(3, dtype=bool)[None], FLIPPED, tmp_path / "m.nii.gz"))
    assert back.dtype == np.uint8 and back.sum() == 3


def _assert_names(exc: pytest.ExceptionInfo, path: Path, words: str) -> None:
    message = str(exc.value)
    assert str(path) in message, message
    assert words in message, message
    assert exc.value.path == path


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.nii.gz"
    with pytest.raises(ImageReadError) as exc:
        read_image(path)
    _assert_names(exc, path, "does not exist")


def test_2d_image_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "slice.nii.gz"
    sitk.WriteImage(sitk.Image(8, 8, sitk.sitkInt16), str(path))
    with pytest.raises(ImageReadError) as exc:
        read_image(path)
    _assert_names(exc, path, "found a 2D image")
    assert read_header(path).dimension == 2


def test_4d_image_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "series.nii.gz"
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((2, 3, 4, 5), np.int16), isVector=False), str(path))
    with pytest.raises(ImageReadError) as exc:
        read_image(path)
    _assert_names(exc, path, "found a 4D image")


def test_multichannel_image_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "rgb.mha"
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((2, 3, 4, 3), np.uint8), isVector=True), str(path))
    with pytest.raises(ImageReadError) as exc:
        read_image(path)
    _assert_names(exc, path, "3 components")


@pytest.mark.parametrize("ending", [".nii.gz", ".nii", ".mha", ".nrrd"])
def test_truncated_file_is_refused(tmp_path: Path, ending: str) -> None:
    path = write_image(np.random.default_rng(1).normal(size=(20, 30, 30)).astype(np.float32), FLIPPED,
                       tmp_path / f"t{ending}")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageReadError) as exc:
        read_image(path)
    _assert_names(exc, path, "unreadable")


def test_garbage_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "junk.nii.gz"
    path.write_bytes(gzip.compress(b"this is not an image" * 10))
    with pytest.raises(ImageReadError) as exc:
        read_image(path)
    _assert_names(exc, path, "unreadable")


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("ending", [".nii.gz", ".nii", ".mha"])
def test_non_finite_voxels_are_refused(tmp_path: Path, bad: float, ending: str) -> None:
    """ITK's NIfTI reader turns NaN into 0 silently; smoothseg must still see and refuse them."""
    array = np.zeros((3, 4, 5), np.float32)
    array[1, 2, 3] = bad
    path = write_image(array, FLIPPED, tmp_path / f"nan{ending}")
    with pytest.raises(ImageReadError) as exc:
        read_image(path)
    _assert_names(exc, path, "1 voxel(s) are NaN or Inf")
    assert "(3, 2, 1)" in str(exc.value)


def test_dicom_series_folder(tmp_path: Path) -> None:
    """A folder of single-slice DICOM files reads as one 3D volume with its slice spacing."""
    array = (np.arange(4 * 6 * 7).reshape(4, 6, 7) - 100).astype(np.int16)
    series = tmp_path / "ct"
    series.mkdir()
    for k in range(array.shape[0]):
        sl = sitk.GetImageFromArray(array[k])
        sl.SetSpacing((0.7, 0.8))
        for tag, value in {"0008|0060": "CT", "0020|000e": "1.2.826.0.1.3680043.2.1125.1",
                           "0020|0032": f"-10\\20\\{30 + 2.5 * k}", "0020|0037": "1\\0\\0\\0\\1\\0",
                           "0020|0013": str(k + 1), "0028|0030": "0.8\\0.7"}.items():
            sl.SetMetaData(tag, value)
        writer = sitk.ImageFileWriter()
        writer.KeepOriginalImageUIDOn()
        writer.SetFileName(str(series / f"{k:03d}.dcm"))
        writer.Execute(sl)
    back, geometry = read_image(series)
    np.testing.assert_array_equal(back, array)
    np.testing.assert_allclose(geometry.spacing, (0.7, 0.8, 2.5), atol=1e-6)
    np.testing.assert_allclose(geometry.origin, (-10, 20, 30), atol=1e-6)
    header = read_header(series)
    assert header.shape == (4, 6, 7)


def test_folder_without_dicom_is_refused(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(ImageReadError) as exc:
        read_image(tmp_path / "empty")
    assert "no readable DICOM series" in str(exc.value)

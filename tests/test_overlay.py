"""Tests for the overlay pictures: slice choice, LPS display orientation, aspect ratio and where contours land."""

from __future__ import annotations

import matplotlib.image
import numpy as np
import pytest
from cli_helpers import run_cli

from smoothseg.dataset.io import Geometry, write_image
from smoothseg.errors import SmoothSegError
from smoothseg.evaluation.overlay import DPI, FIGURE_SIZE_IN, DisplayFrame, draw_overlay, save_overlay, select_slices

SHAPE = (21, 41, 49)  # (z, y, x)
SPACING = (0.8, 0.8, 2.5)  # (x, y, z) mm
ORIGIN = (-20.0, -16.0, -25.0)
TUMOUR = (slice(9, 14), slice(5, 12), slice(33, 42))  # off-centre: anterior, patient left, mid-height
TUMOUR_CENTRE = (11, 8, 37)


def _scene() -> tuple[np.ndarray, np.ndarray, Geometry]:
    """An image, a 0/1/2 segmentation (liver block + one tumour) and an identity-direction geometry."""
    image = np.zeros(SHAPE, dtype=np.int16)
    labels = np.zeros(SHAPE, dtype=np.uint8)
    labels[3:18, 3:30, 20:45] = 1
    labels[TUMOUR] = 2
    image[labels == 1] = 60
    image[labels == 2] = 20
    return image, labels, Geometry(SPACING, ORIGIN)


def _flipped(array: np.ndarray) -> tuple[np.ndarray, Geometry]:
    """The same physical scene stored with x and z reversed (direction diag(-1, 1, -1))."""
    nz, _, nx = array.shape
    origin = (ORIGIN[0] + SPACING[0] * (nx - 1), ORIGIN[1], ORIGIN[2] + SPACING[2] * (nz - 1))
    return array[::-1, :, ::-1], Geometry(SPACING, origin, (-1, 0, 0, 0, 1, 0, 0, 0, -1))


def _permuted(array: np.ndarray) -> tuple[np.ndarray, Geometry]:
    """The same scene with the i and j index axes swapped (i along physical y, j along physical x)."""
    spacing = (SPACING[1], SPACING[0], SPACING[2])
    return array.transpose(0, 2, 1), Geometry(spacing, ORIGIN, (0, 1, 0, 1, 0, 0, 0, 0, 1))


# ---------------------------------------------------------------------------------------------------- slice choice

def test_slices_pass_through_the_largest_lesion():
    labels = np.zeros((20, 30, 30), dtype=np.uint8)
    labels[2:18, 2:28, 2:28] = 1
    labels[3:5, 3:5, 3:5] = 2            # small lesion
    labels[10:16, 15:25, 12:20] = 2      # large lesion
    choice = select_slices(labels)
    assert labels[choice.index_zyx] == 2 and 10 <= choice.index_zyx[0] < 16
    assert choice.reason == "largest prediction lesion"


def test_slices_stay_inside_a_non_convex_lesion():
    labels = np.zeros((10, 30, 30), dtype=np.uint8)
    labels[3:7, 5:25, 5:9] = 2   # U shape: its centre of mass lies in the empty middle
    labels[3:7, 5:25, 21:25] = 2
    labels[3:7, 21:25, 5:25] = 2
    choice = select_slices(labels)
    assert labels[choice.index_zyx] == 2


def test_reference_lesion_wins_then_liver_then_volume_centre():
    prediction = np.zeros((10, 20, 20), dtype=np.uint8)
    prediction[1:9, 1:19, 1:19] = 1
    prediction[2:8, 2:10, 2:10] = 2      # big predicted blob
    reference = np.zeros_like(prediction)
    reference[4:6, 14:17, 14:17] = 2     # the real (small) lesion elsewhere
    choice = select_slices(prediction, reference)
    assert reference[choice.index_zyx] == 2 and choice.reason == "largest reference lesion"
    liver_only = np.zeros_like(prediction)
    liver_only[2:5, 10:19, 0:3] = 1
    assert select_slices(liver_only).index_zyx == (3, 14, 1)
    assert select_slices(np.zeros((4, 6, 8), np.uint8)).index_zyx == (2, 3, 4)


# ----------------------------------------------------------------------------------------------------- orientation

@pytest.mark.parametrize("transform", [_flipped, _permuted])
def test_display_is_the_same_whatever_the_storage_order(transform):
    image, labels, geometry = _scene()
    reference_frame = DisplayFrame.from_geometry(geometry, image.shape)
    expected = reference_frame.apply(labels)
    stored, stored_geometry = transform(labels)
    frame = DisplayFrame.from_geometry(stored_geometry, stored.shape)
    np.testing.assert_array_equal(frame.apply(stored), expected)
    assert frame.spacing == pytest.approx(reference_frame.spacing)
    assert frame.spacing == pytest.approx((SPACING[2], SPACING[1], SPACING[0]))  # (S, P, L)
    # the chosen point is the same physical voxel, and it lies in the tumour
    choice = select_slices(stored)
    assert stored[choice.index_zyx] == 2
    assert frame.to_display_index(choice.index_zyx) == reference_frame.to_display_index(select_slices(labels).index_zyx)


def test_lps_display_axes_grow_towards_superior_posterior_left():
    _, labels, geometry = _scene()
    frame = DisplayFrame.from_geometry(geometry, labels.shape)
    assert frame.source_axes == (0, 1, 2) and frame.flips == (False, False, False)
    flipped, flipped_geometry = _flipped(labels)
    frame = DisplayFrame.from_geometry(flipped_geometry, flipped.shape)
    assert frame.flips == (True, False, True)
    # a voxel's physical position grows along each display axis
    p0 = flipped_geometry.index_to_physical(np.array([flipped.shape[2] - 1, 0, flipped.shape[0] - 1]))
    assert frame.to_display_index((flipped.shape[0] - 1, 0, flipped.shape[2] - 1)) == (0, 0, 0)
    assert tuple(p0) == pytest.approx(ORIGIN)


# -------------------------------------------------------------------------------------------------------- drawing

def _rgb(fig) -> np.ndarray:
    fig.canvas.draw()
    return np.asarray(fig.canvas.buffer_rgba())[..., :3].astype(int)


def _red_centroid_in(fig, ax) -> tuple[float, float]:
    """Centroid (x, y in display pixels, y up) of prediction-tumour red pixels inside ``ax``."""
    rgb = _rgb(fig)
    height = rgb.shape[0]
    box = ax.get_window_extent()
    red = (rgb[..., 0] > 180) & (rgb[..., 1] < 90) & (rgb[..., 2] < 90)
    rows, cols = np.nonzero(red)
    ys = height - rows
    inside = (cols >= box.x0) & (cols <= box.x1) & (ys >= box.y0) & (ys <= box.y1)
    assert inside.sum() > 20, "no tumour contour drawn in this panel"
    return float(cols[inside].mean()), float(ys[inside].mean())


def test_tumour_contour_is_drawn_where_the_lesion_is_in_every_panel():
    image, labels, geometry = _scene()
    fig = draw_overlay(image, geometry, labels, title="phantom")
    _rgb(fig)  # lay out (aspect) before asking the axes for transforms
    axial, coronal, sagittal = fig.axes[:3]
    z, y, x = TUMOUR_CENTRE
    nz = SHAPE[0]
    # data coordinates in each displayed plane: axial (col x, row y), coronal (col x, row nz-1-z),
    # sagittal (col y, row nz-1-z)
    for ax, data_xy in ((axial, (x, y)), (coronal, (x, nz - 1 - z)), (sagittal, (y, nz - 1 - z))):
        expected = ax.transData.transform(data_xy)
        got = _red_centroid_in(fig, ax)
        assert np.hypot(got[0] - expected[0], got[1] - expected[1]) < 4, (ax.get_title(), got, expected)
    # radiological axial view: the tumour (patient left, anterior) is right of and above the axial panel's centre
    box = axial.get_window_extent()
    cx, cy = _red_centroid_in(fig, axial)
    assert cx > (box.x0 + box.x1) / 2 and cy > (box.y0 + box.y1) / 2


def test_flipped_storage_renders_identically():
    image, labels, geometry = _scene()
    flipped_image, flipped_geometry = _flipped(image)
    flipped_labels, _ = _flipped(labels)
    plain = _rgb(draw_overlay(image, geometry, labels, reference=labels, title="x"))
    flipped = _rgb(draw_overlay(flipped_image, flipped_geometry, flipped_labels, reference=flipped_labels, title="x"))
    np.testing.assert_array_equal(plain, flipped)


def test_panels_have_the_physical_aspect_ratio():
    image, labels, geometry = _scene()
    fig = draw_overlay(image, geometry, labels)
    _rgb(fig)
    nz, ny, nx = SHAPE
    sx, sy, sz = SPACING
    expected = {0: (nx * sx) / (ny * sy), 1: (nx * sx) / (nz * sz), 2: (ny * sy) / (nz * sz)}
    for index, ratio in expected.items():
        box = fig.axes[index].get_window_extent()
        assert box.width / box.height == pytest.approx(ratio, rel=0.03)


def test_saved_png_has_the_figure_size(tmp_path):
    image, labels, geometry = _scene()
    path = save_overlay(tmp_path / "o.png", image, geometry, labels, reference=labels, title="case")
    pixels = matplotlib.image.imread(path)
    assert pixels.shape[:2] == (round(FIGURE_SIZE_IN[1] * DPI), round(FIGURE_SIZE_IN[0] * DPI))
    assert not any(p.name.startswith(".tmp") for p in tmp_path.iterdir())


def test_bad_window_and_grid_are_refused():
    image, labels, geometry = _scene()
    with pytest.raises(SmoothSegError, match="window"):
        draw_overlay(image, geometry, labels, window=(100, 0))
    with pytest.raises(SmoothSegError, match="shape"):
        draw_overlay(image, geometry, labels[:, :, :10])


def test_cli_plot_overlay(tmp_path):
    image, labels, geometry = _scene()
    raw_reference = labels.copy()
    raw_reference[4:6, 20:22, 25:27] = 3  # a raw label (portal vein) in the reference is fine
    write_image(image, geometry, tmp_path / "case7_0000.nii.gz")
    write_image(labels, geometry, tmp_path / "seg.nii.gz")
    write_image(raw_reference, geometry, tmp_path / "ref.nrrd")
    out = tmp_path / "pics" / "case7.png"
    result = run_cli("plot_overlay", "-i", str(tmp_path / "case7_0000.nii.gz"), "-s", str(tmp_path / "seg.nii.gz"),
                     "-r", str(tmp_path / "ref.nrrd"), "-o", str(out), "--window", "-100", "200",
                     home=tmp_path / "home")
    assert result.returncode == 0, result.stderr
    assert matplotlib.image.imread(out).shape[:2] == (560, 1500)

    write_image(labels, Geometry((0.8, 0.8, 3.0), ORIGIN), tmp_path / "bad.nii.gz")
    result = run_cli("plot_overlay", "-i", str(tmp_path / "case7_0000.nii.gz"), "-s", str(tmp_path / "bad.nii.gz"),
                     "-o", str(tmp_path / "bad.png"), home=tmp_path / "home")
    assert result.returncode == 2 and "Traceback" not in result.stderr and "spacing" in result.stderr
    assert not (tmp_path / "bad.png").exists()

"""Overlay pictures: a CT with segmentation contours in axial, coronal and sagittal slices.

This module owns how a case is *shown*: which slices, in which orientation, with which aspect ratio and colours.

* **Slices.** The three planes pass through one point (:func:`select_slices`): a voxel of the largest lesion of the
  reference (by voxel count, 26-connected), else of the prediction; without tumour the liver's centre; without
  liver the volume's centre. The point is the lesion's centre of mass when that lies inside it, else the lesion
  voxel nearest to it, so every plane cuts the lesion.
* **Orientation.** Images are displayed in the radiological convention in LPS patient coordinates (ITK's physical
  frame: +x Left, +y Posterior, +z Superior), whatever the direction matrix: each index axis is matched to the
  physical axis it is closest to (:class:`DisplayFrame`), the array is transposed to (S, P, L) order and flipped
  where the direction's sign is negative. Axial: viewed from the feet, patient right on the screen's left, anterior
  up. Coronal: viewed from the front, patient right on the left, superior up. Sagittal: anterior on the left,
  superior up. Oblique directions are shown in the nearest axis-aligned orientation, without resampling.
* **Aspect ratio.** Each panel's pixel aspect is the ratio of the physical spacings of its two axes.
* **Colours.** Prediction: liver region (labels 1 and 2) green, tumour (2) red, solid. Reference: liver cyan,
  tumour yellow, dashed. Both label maps use the output convention 0/1/2 (map raw labels first).

Drawing (:func:`draw_overlay`) makes a :class:`matplotlib.figure.Figure` on the Agg canvas and does no I/O;
:func:`save_overlay` writes it atomically.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from scipy import ndimage

from smoothseg.atomic import atomic_write
from smoothseg.dataset.io import Geometry
from smoothseg.dataset.orientation import Orientation
from smoothseg.errors import SmoothSegError
from smoothseg.labels import LIVER, TUMOR
from smoothseg.masks.components import connected_lesions

logger = logging.getLogger(__name__)

__all__ = [
    "COLOURS", "DEFAULT_WINDOW", "DisplayFrame", "SliceChoice", "draw_overlay", "save_overlay", "select_slices",
]

#: Default intensity window (HU): an abdominal soft-tissue window (level 50, width 400).
DEFAULT_WINDOW: tuple[float, float] = (-150.0, 250.0)
#: Contour colours and line styles: (structure source, region) -> (colour, linestyle, legend label).
COLOURS: dict[tuple[str, str], tuple[str, str, str]] = {
    ("prediction", "liver"): ("#00e000", "solid", "prediction liver"),
    ("prediction", "tumor"): ("#ff0000", "solid", "prediction tumour"),
    ("reference", "liver"): ("#00e5ff", "dashed", "reference liver"),
    ("reference", "tumor"): ("#ffd400", "dashed", "reference tumour"),
}
FIGURE_SIZE_IN: tuple[float, float] = (15.0, 5.6)
DPI: int = 100
_PLANES = ("axial", "coronal", "sagittal")
_AXIS_NAMES = ("L", "P", "S")  # physical x, y, z of LPS


# ----------------------------------------------------------------------------------------------------------------
# Orientation
# ----------------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class DisplayFrame:
    """How to turn a (z, y, x) array with a direction matrix into an (S, P, L) array in LPS order.

    This is the preprocessor's canonical orientation (:class:`~smoothseg.preprocessing.orientation.Orientation`):
    ``source_axes[n]`` is the NumPy axis of the stored array that becomes display axis n (0 = S, 1 = P, 2 = L),
    ``flips[n]`` whether it must be reversed so the index grows towards +S / +P / +L, and ``spacing[n]`` its spacing
    in mm.
    """

    orientation: Orientation
    spacing: tuple[float, float, float]
    shape: tuple[int, int, int]

    @property
    def source_axes(self) -> tuple[int, int, int]:
        return self.orientation.axes

    @property
    def flips(self) -> tuple[bool, bool, bool]:
        return self.orientation.flips

    @classmethod
    def from_geometry(cls, geometry: Geometry, shape_zyx: tuple[int, ...]) -> DisplayFrame:
        """Match each index axis (i, j, k) to its nearest physical axis."""
        orientation = Orientation.from_direction(geometry.direction)
        return cls(orientation, orientation.canonical_tuple(float(v) for v in geometry.spacing_zyx),
                   orientation.canonical_tuple(int(v) for v in shape_zyx))

    def apply(self, array: np.ndarray) -> np.ndarray:
        """The array in display order (S, P, L), each index growing towards superior, posterior, patient left."""
        return self.orientation.to_canonical(np.asarray(array))

    def to_display_index(self, index_zyx: tuple[int, int, int]) -> tuple[int, int, int]:
        """Where a voxel of the stored array lies in the display array."""
        out = []
        for n in range(3):
            value = int(index_zyx[self.source_axes[n]])
            out.append(self.shape[n] - 1 - value if self.flips[n] else value)
        return tuple(out)


# ----------------------------------------------------------------------------------------------------------------
# Slice choice
# ----------------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class SliceChoice:
    """The point the three planes pass through, as an index (z, y, x) of the stored array, and why it was chosen."""

    index_zyx: tuple[int, int, int]
    reason: str


def _point_in(mask: np.ndarray) -> tuple[int, int, int]:
    """Centre of mass of ``mask`` if it is a mask voxel, else the mask voxel nearest to it (index distance)."""
    centre = np.asarray(ndimage.center_of_mass(mask))
    rounded = tuple(int(v) for v in np.rint(centre))
    if mask[rounded]:
        return rounded
    voxels = np.argwhere(mask)
    return tuple(int(v) for v in voxels[np.argmin(((voxels - centre) ** 2).sum(axis=1))])


def _largest_lesion(labels: np.ndarray) -> np.ndarray | None:
    lesions, n = connected_lesions(labels == TUMOR)
    if n == 0:
        return None
    sizes = np.bincount(lesions.ravel(), minlength=n + 1)
    sizes[0] = 0
    return lesions == int(np.argmax(sizes))


def select_slices(segmentation: np.ndarray, reference: np.ndarray | None = None) -> SliceChoice:
    """The voxel the axial, coronal and sagittal planes pass through (see the module docstring for the rule).

    Both label maps use 0/1/2 (liver region = 1 or 2, tumour = 2) and share the stored array's (z, y, x) order.
    """
    segmentation = np.asarray(segmentation)
    candidates = [("reference", reference), ("prediction", segmentation)] if reference is not None \
        else [("prediction", segmentation)]
    for source, labels in candidates:
        lesion = _largest_lesion(np.asarray(labels))
        if lesion is not None:
            return SliceChoice(_point_in(lesion), f"largest {source} lesion")
    for source, labels in candidates:
        liver = np.isin(np.asarray(labels), (1, 2))
        if liver.any():
            return SliceChoice(tuple(int(v) for v in np.rint(ndimage.center_of_mass(liver))), f"{source} liver centre")
    return SliceChoice(tuple(int(s) // 2 for s in segmentation.shape), "volume centre (no liver, no tumour)")


# ----------------------------------------------------------------------------------------------------------------
# Drawing
# ----------------------------------------------------------------------------------------------------------------

def _planes(volume: np.ndarray, point: tuple[int, int, int]) -> dict[str, np.ndarray]:
    """The three 2D planes of an (S, P, L) volume through ``point``, oriented for display with row 0 on top."""
    s, p, l_ = point
    return {
        "axial": volume[s, :, :],            # rows anterior -> posterior, columns patient right -> left
        "coronal": volume[::-1, p, :],       # rows superior -> inferior, columns patient right -> left
        "sagittal": volume[::-1, :, l_],     # rows superior -> inferior, columns anterior -> posterior
    }


def _aspects(spacing: tuple[float, float, float]) -> dict[str, float]:
    s, p, l_ = spacing
    return {"axial": p / l_, "coronal": s / l_, "sagittal": s / p}


_EDGE_LABELS = {"axial": ("R", "L", "A", "P"), "coronal": ("R", "L", "S", "I"), "sagittal": ("A", "P", "S", "I")}


def _label_edges(ax, plane: str) -> None:
    left, right, top, bottom = _EDGE_LABELS[plane]
    style = dict(transform=ax.transAxes, color="white", fontsize=11, fontweight="bold")
    ax.text(0.01, 0.5, left, ha="left", va="center", **style)
    ax.text(0.99, 0.5, right, ha="right", va="center", **style)
    ax.text(0.5, 0.99, top, ha="center", va="top", **style)
    ax.text(0.5, 0.01, bottom, ha="center", va="bottom", **style)


def _draw_contours(ax, labels_2d: np.ndarray, source: str) -> set[tuple[str, str]]:
    drawn = set()
    for region, mask in (("liver", np.isin(labels_2d, (LIVER, TUMOR))), ("tumor", labels_2d == TUMOR)):
        if mask.any() and not mask.all():
            colour, style, _ = COLOURS[(source, region)]
            ax.contour(mask.astype(np.float32), levels=[0.5], colors=[colour], linestyles=[style], linewidths=1.3)
            drawn.add((source, region))
    return drawn


def _check_same_grid(name: str, array: np.ndarray, image: np.ndarray) -> None:
    if np.asarray(array).shape != image.shape:
        raise SmoothSegError(f"{name} has shape {np.asarray(array).shape} but the image has {image.shape}; "
                             "overlays need label maps on the image's grid")


def draw_overlay(image: np.ndarray, geometry: Geometry, segmentation: np.ndarray, *,
                 reference: np.ndarray | None = None, title: str = "",
                 window: tuple[float, float] = DEFAULT_WINDOW, choice: SliceChoice | None = None) -> Figure:
    """Draw the three planes through ``choice`` (default :func:`select_slices`) with contours; no I/O.

    ``image``, ``segmentation`` and ``reference`` are (z, y, x) arrays on the same grid described by ``geometry``;
    the label maps use 0/1/2. The figure is :data:`FIGURE_SIZE_IN` at :data:`DPI` on an Agg canvas.
    """
    image = np.asarray(image)
    _check_same_grid("segmentation", segmentation, image)
    if reference is not None:
        _check_same_grid("reference", reference, image)
    if window[1] <= window[0]:
        raise SmoothSegError(f"window must be LO < HI, got {window}")
    choice = choice or select_slices(segmentation, reference)
    frame = DisplayFrame.from_geometry(geometry, image.shape)
    point = frame.to_display_index(choice.index_zyx)
    image_planes = _planes(frame.apply(image), point)
    seg_planes = _planes(frame.apply(segmentation), point)
    ref_planes = _planes(frame.apply(reference), point) if reference is not None else None
    aspects = _aspects(frame.spacing)
    physical = geometry.index_to_physical(np.asarray(choice.index_zyx[::-1], dtype=float))

    fig = Figure(figsize=FIGURE_SIZE_IN, dpi=DPI)
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 3)
    drawn: set[tuple[str, str]] = set()
    for ax, plane, coordinate in zip(axes, _PLANES, (physical[2], physical[1], physical[0]), strict=True):
        ax.imshow(image_planes[plane], cmap="gray", vmin=window[0], vmax=window[1], aspect=aspects[plane],
                  interpolation="nearest")
        rows, cols = image_planes[plane].shape
        drawn |= _draw_contours(ax, seg_planes[plane], "prediction")
        if ref_planes is not None:
            drawn |= _draw_contours(ax, ref_planes[plane], "reference")
        ax.set_xlim(-0.5, cols - 0.5)
        ax.set_ylim(rows - 0.5, -0.5)
        axis_letter = {"axial": "S", "coronal": "P", "sagittal": "L"}[plane]
        ax.set_title(f"{plane}  ({axis_letter} = {coordinate:+.1f} mm)", fontsize=11)
        ax.set_axis_off()
        _label_edges(ax, plane)
    handles = [Line2D([], [], color=c, linestyle=s, linewidth=2, label=label)
               for key, (c, s, label) in COLOURS.items() if key in drawn]
    if handles:
        fig.legend(handles=handles, loc="lower center", ncol=len(handles), frameon=False, fontsize=11)
    fig.suptitle(f"{title}\nslices through the {choice.reason}" if title else f"slices through the {choice.reason}",
                 fontsize=13)
    fig.subplots_adjust(left=0.01, right=0.99, top=0.86, bottom=0.08, wspace=0.04)
    return fig


def save_overlay(path: str | Path, image: np.ndarray, geometry: Geometry, segmentation: np.ndarray, *,
                 reference: np.ndarray | None = None, title: str = "",
                 window: tuple[float, float] = DEFAULT_WINDOW) -> Path:
    """Draw with :func:`draw_overlay` and write the PNG atomically to ``path``; returns ``path``."""
    path = Path(path)
    fig = draw_overlay(image, geometry, segmentation, reference=reference, title=title, window=window)
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=DPI, format="png"))
    logger.info("overlay written: %s", path)
    return path

"""Overlay pictures of evaluated cases from files: the best and worst case of an evaluation, and one image with its
segmentation (``smoothseg_plot_overlay``)."""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from smoothseg.dataset.cases import case_id_of
from smoothseg.dataset.dataset_json import TaskRegions
from smoothseg.dataset.io import IMAGE_ENDINGS, read_image
from smoothseg.dataset.raw_dataset import RawDataset
from smoothseg.errors import SmoothSegError
from smoothseg.evaluation.matching import PREDICTION_LABELS, regions_for, to_task_labels
from smoothseg.evaluation.overlay import DEFAULT_WINDOW, save_overlay

__all__ = ["find_case_image", "image_folders", "plot_overlay_files", "write_overlays"]

logger = logging.getLogger(__name__)


def find_case_image(images_dir: str | Path, case_id: str) -> Path | None:
    """The image of ``case_id``: ``<case>_0000<ending>`` (nnU-Net) or ``<case><ending>``, any image ending."""
    images_dir = Path(images_dir)
    for name in (f"{case_id}_0000", case_id):
        for ending in IMAGE_ENDINGS:
            candidate = images_dir / f"{name}{ending}"
            if candidate.is_file():
                return candidate
    return None


def image_folders(reference_dir: Path, images_dir: Path | None, dataset: str | None) -> list[Path]:
    """Where to look for images: ``images_dir``; else the dataset's imagesTr/imagesTs; else ``labelsXx``'s sibling."""
    if images_dir is not None:
        return [Path(images_dir)]
    if dataset is not None:
        folder = RawDataset.find(dataset).folder
        return [folder / "imagesTr", folder / "imagesTs"]
    if reference_dir.name.startswith("labels"):
        sibling = reference_dir.parent / ("images" + reference_dir.name[len("labels"):])
        if sibling.is_dir():
            return [sibling]
    return []


def _overlay_choices(rows: Sequence[dict]) -> dict[str, dict]:
    """``{"best": row, "worst": row}`` by tumour Dice (finite values), falling back to liver Dice; {} if neither."""
    for metric in ("tumor_dice", "liver_dice"):
        scored = [r for r in rows if math.isfinite(float(r[metric]))]
        if scored:
            ordered = sorted(scored, key=lambda r: float(r[metric]))
            return {"best": {**ordered[-1], "_metric": metric}, "worst": {**ordered[0], "_metric": metric}}
    return {}


def write_overlays(rows: Sequence[dict], folders: list[Path], target: Path, regions: TaskRegions) -> list[dict]:
    written = []
    for role, row in _overlay_choices(rows).items():
        case_id, metric = row["case_id"], row["_metric"]
        image_path = next((p for p in (find_case_image(f, case_id) for f in folders) if p is not None), None)
        if image_path is None:
            logger.warning("no image for case %s in %s; overlay skipped", case_id, ", ".join(map(str, folders)))
            continue
        image, geometry = read_image(image_path)
        reference, _ = read_image(Path(row["reference_file"]))
        prediction, _ = read_image(Path(row["prediction_file"]))
        title = f"{case_id}: {role} case by {metric.replace('_', ' ')} = {float(row[metric]):.3f}"
        path = save_overlay(target / f"{role}_{case_id}.png", image, geometry, prediction,
                            reference=to_task_labels(reference, regions), title=title, window=DEFAULT_WINDOW)
        written.append({"role": role, "case_id": case_id, "metric": metric, "value": float(row[metric]),
                        "file": str(path)})
    return written


def plot_overlay_files(image: Path, segmentation: Path, output_png: Path, *, reference: Path | None = None,
                       window: tuple[float, float] = DEFAULT_WINDOW, dataset: str | None = None,
                       title: str | None = None) -> Path:
    """Read an image, its segmentation (0/1/2) and optionally a reference, and write their overlay PNG.

    The reference's raw labels are mapped with ``dataset``'s ``task_regions`` (default liver {1, 2}, tumour {2}).
    All label maps must lie on the image's grid (size, spacing, origin, direction), else :class:`SmoothSegError`
    lists the differences. The title defaults to the case id (the image name without ending and ``_0000``).
    """
    array, geometry = read_image(Path(image))
    problems = []
    maps = {}
    for name, path in (("segmentation", segmentation), ("reference", reference)):
        if path is None:
            continue
        labels, label_geometry = read_image(Path(path))
        differences = ([f"shape {labels.shape} vs {array.shape}"] if labels.shape != array.shape else []) \
            + geometry.differences(label_geometry)
        if differences:
            problems.append(f"{name} {path} is not on the grid of image {image} (image vs {name}): "
                            + "; ".join(differences))
        maps[name] = labels
    if problems:
        raise SmoothSegError("\n".join(problems))
    unexpected = sorted(set(np.unique(maps["segmentation"]).tolist()) - set(PREDICTION_LABELS))
    if unexpected:
        raise SmoothSegError(f"{segmentation}: holds label(s) {unexpected}; segmentations use 0/1/2 "
                             "(pass raw label maps with -r)")
    ref = to_task_labels(maps["reference"], regions_for(dataset)) if "reference" in maps else None
    return save_overlay(output_png, array, geometry, maps["segmentation"], reference=ref,
                        title=title or case_id_of(Path(image)), window=window)

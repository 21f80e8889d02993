"""Training arms of the ablation: the same variants trained on noisy tumour labels or on a fraction of the cases.

An arm changes only what the models are *trained* on; the validation references stay the clean raw labels.

* ``--label-noise KIND:LEVEL`` (:mod:`smoothseg.masks.label_noise`): a copy of the raw dataset whose training labels
  are corrupted (images linked, not copied), reproducibly from the seed and the case id, preprocessed with the
  dataset's own plans into the arm's preprocessed root. Everything the trainer derives from labels (lesion lists,
  class locations, the TLVR targets of the clinical regression) then comes from the noisy labels, as it would from a
  noisy annotator.
* ``--train-fraction F``: each fold's training cases reduced to a seeded subset of ``round(F * n)`` (at least one);
  the validation cases unchanged. With ``--unlabelled-rest`` the cases left out stay in the fold as *unlabelled*
  (``splits.json``'s ``"unlabelled"``): their images and clinical rows reach the tumour model through the knowledge
  term (:mod:`smoothseg.training.unlabelled`), their labels never.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from smoothseg.atomic import write_json
from smoothseg.dataset.io import read_image, write_image
from smoothseg.dataset.raw_dataset import RawDataset
from smoothseg.errors import SmoothSegError
from smoothseg.masks.label_noise import LabelNoise, corrupt_tumour
from smoothseg.planning.plans import Plans
from smoothseg.preprocessing.dataset_preprocessing import preprocess_task

__all__ = ["TrainingArm", "arm_preprocessed", "fraction_splits", "noisy_raw_copy"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainingArm:
    """What the models of an ablation run are trained on: clean labels of every case by default."""

    noise: LabelNoise | None = None
    fraction: float = 1.0
    unlabelled_rest: bool = False  # the cases a fraction leaves out become unlabelled cases of the fold

    def __post_init__(self) -> None:
        if not 0 < self.fraction <= 1:
            raise SmoothSegError(f"--train-fraction must be in (0, 1], got {self.fraction}")
        if self.unlabelled_rest and self.fraction == 1:
            raise SmoothSegError("--unlabelled-rest needs --train-fraction below 1 (it keeps the cases left out as "
                                 "unlabelled ones)")

    @property
    def is_default(self) -> bool:
        return (self.noise is None or self.noise.level == 0) and self.fraction == 1

    @property
    def key(self) -> str:
        parts = ([f"noise-{self.noise.key}"] if self.noise is not None and self.noise.level > 0 else []) + \
            ([f"fraction-{self.fraction:g}"] if self.fraction < 1 else []) + \
            (["unlabelled-rest"] if self.unlabelled_rest else [])
        return "_".join(parts) or "clean"

    def to_dict(self) -> dict[str, Any]:
        return {"label_noise": None if self.noise is None else f"{self.noise.kind}:{self.noise.level:g}",
                "train_fraction": self.fraction, "unlabelled_rest": self.unlabelled_rest}


def _link(source: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.exists() or target.is_symlink():
        target.unlink()
    try:
        os.symlink(source.resolve(), target)
    except OSError:  # no symlinks here (some file systems): copy
        shutil.copy2(source, target)


def noisy_raw_copy(raw: RawDataset, target: Path, noise: LabelNoise, seed: int) -> RawDataset:
    """A raw dataset at ``target`` with ``raw``'s training cases, their tumour labels corrupted by ``noise`` (per
    case from ``[seed, crc32(case id)]``); removed tumour becomes the first non-tumour liver label."""
    regions = raw.spec.task_regions
    tumour_labels = np.asarray(regions.tumor)
    liver_only = [v for v in regions.liver if v not in regions.tumor]
    if not liver_only:
        raise SmoothSegError(f"{raw.dataset_json}: label noise needs a liver label besides the tumour labels")
    target.mkdir(parents=True, exist_ok=True)
    shutil.copy2(raw.dataset_json, target / "dataset.json")
    if raw.spec.clinical is not None:
        _link(raw.folder / raw.spec.clinical.file, target / raw.spec.clinical.file)
    for case in raw.training_cases:
        if case.label is None:
            continue
        for path in case.images.values():
            _link(path, target / "imagesTr" / path.name)
        destination = target / "labelsTr" / case.label.name
        if destination.exists():
            continue  # written by an earlier run of this arm and seed (writes are atomic)
        label, geometry = read_image(case.label, check_finite=False)
        tumour = np.isin(label, tumour_labels)
        region = np.isin(label, regions.liver) & ~tumour
        rng = np.random.default_rng([seed, zlib.crc32(case.case_id.encode())])
        noisy = corrupt_tumour(tumour, region, geometry.spacing_zyx, noise, rng)
        out = label.copy()
        out[tumour & ~noisy] = liver_only[0]
        out[noisy & ~tumour] = regions.tumor[0]
        write_image(out, geometry, destination)
    return RawDataset(target)


def fraction_splits(splits: dict[str, Any], fraction: float, seed: int,
                    unlabelled_rest: bool = False) -> dict[str, Any]:
    """``splits.json`` content with each fold's training cases reduced to a seeded subset (validation unchanged);
    with ``unlabelled_rest`` the others listed as the fold's ``"unlabelled"`` cases."""
    folds = []
    for index, fold in enumerate(splits["splits"]):
        train = list(fold["train"])
        keep = max(1, round(fraction * len(train)))
        chosen = set(np.random.default_rng([seed, index]).choice(len(train), keep, replace=False).tolist())
        entry = {**fold, "train": [c for i, c in enumerate(train) if i in chosen]}
        if unlabelled_rest:
            entry["unlabelled"] = [c for i, c in enumerate(train) if i not in chosen]
        folds.append(entry)
    return {**splits, "splits": folds, "train_fraction": fraction, "train_fraction_seed": seed}


def arm_preprocessed(dataset_folder: Path, raw: RawDataset, arm: TrainingArm, seed: int, root: Path,
                     num_processes: int) -> Path:
    """The preprocessed root the models of ``arm`` and ``seed`` train from (``root/<arm>_seed<seed>``): the dataset's
    plans and fingerprint, its splits (reduced for a fraction), and its preprocessed cases, or those of the noisy
    copy of the raw dataset (tumour task; the liver task's cases are the clean ones, linked)."""
    arm_root = root / f"{arm.key}_seed{seed}"
    target = arm_root / dataset_folder.name
    target.mkdir(parents=True, exist_ok=True)
    for name in ("plans.json", "fingerprint.json"):
        if (dataset_folder / name).exists():
            shutil.copy2(dataset_folder / name, target / name)
    splits = json.loads((dataset_folder / "splits.json").read_text())
    write_json(fraction_splits(splits, arm.fraction, seed, arm.unlabelled_rest) if arm.fraction < 1 else splits,
               target / "splits.json")
    if arm.noise is None or arm.noise.level == 0:
        for task in ("liver", "tumor"):
            _link_folder(dataset_folder / task, target / task)
        return arm_root
    logger.info("ablation arm %s, seed %d: corrupting the training labels and preprocessing them", arm.key, seed)
    noisy = noisy_raw_copy(raw, root / f"{arm.key}_seed{seed}_raw" / raw.name, arm.noise, seed)
    plans = Plans.load(dataset_folder / "plans.json")
    cases = [c for c in noisy.training_cases if c.label is not None]
    _link_folder(dataset_folder / "liver", target / "liver")  # the liver region is the clean one
    preprocess_task(cases, plans, "tumor", target / "tumor", num_processes)
    return arm_root


def _link_folder(source: Path, target: Path) -> None:
    if target.is_symlink() or target.exists():
        return
    os.symlink(source.resolve(), target, target_is_directory=True)

"""The model store: where trained models live on disk, and finding the liver + tumour pair to predict with.

This module owns the layout that training writes under the results root,
``<results>/DatasetXXX_Name/<Trainer>__<task>/fold_k/<checkpoint>``: :func:`select_models` picks the dataset,
trainer, checkpoint and folds of a :class:`ModelPair` (one liver and one tumour configuration), with errors that list
what exists. Moving a pair between machines is :mod:`smoothseg.models.archive`.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from smoothseg.errors import DatasetNotFoundError, SmoothSegError
from smoothseg.paths import find_dataset, results_root
from smoothseg.planning.plans import TASKS

logger = logging.getLogger(__name__)

DEFAULT_TRAINER = "SmoothSegTrainer"
DEFAULT_CHECKPOINT = "checkpoint_final.pth"

DATASET_FOLDER_RE = re.compile(r"^Dataset\d{3}_[A-Za-z0-9_\-]+$")
FOLD_FOLDER_RE = re.compile(r"^fold_(.+)$")


@dataclass(frozen=True)
class ModelPair:
    """A liver and a tumour model: which dataset folder, trainer, checkpoint file and folds (per task)."""

    dataset_folder: Path
    trainer: str = DEFAULT_TRAINER
    checkpoint: str = DEFAULT_CHECKPOINT
    folds: dict[str, tuple[str, ...]] = field(default_factory=dict)

    @property
    def dataset(self) -> str:
        return self.dataset_folder.name

    def task_folder(self, task: str) -> Path:
        return self.dataset_folder / f"{self.trainer}__{task}"

    def checkpoints(self, task: str) -> list[Path]:
        return [self.task_folder(task) / f"fold_{f}" / self.checkpoint for f in self.folds[task]]

    def describe(self) -> str:
        folds = "; ".join(f"{task} folds {', '.join(self.folds[task])}" for task in TASKS if task in self.folds)
        return f"{self.dataset} / {self.trainer} / {self.checkpoint} ({folds})"

    def to_dict(self) -> dict[str, Any]:
        return {"dataset": self.dataset, "trainer": self.trainer, "checkpoint": self.checkpoint,
                "folds": {task: list(folds) for task, folds in self.folds.items()}}


def _fold_key(fold: str) -> tuple[int, int, str]:
    return (0, int(fold), "") if fold.isdigit() else (1, 0, fold)


def available_folds(task_folder: Path, checkpoint: str = DEFAULT_CHECKPOINT) -> list[str]:
    """Folds (``"0"``, ``"1"``, ..., ``"all"``) under ``task_folder`` that hold ``checkpoint``, sorted."""
    if not task_folder.is_dir():
        return []
    folds = [m.group(1) for p in task_folder.iterdir()
             if (m := FOLD_FOLDER_RE.match(p.name)) and (p / checkpoint).is_file()]
    return sorted(folds, key=_fold_key)


def dataset_folders(root: Path) -> list[Path]:
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and DATASET_FOLDER_RE.match(p.name))


def describe_results(root: Path | None = None, checkpoint: str = DEFAULT_CHECKPOINT) -> str:
    """One line per dataset under the results root, naming its trained configurations and their folds."""
    root = Path(root) if root is not None else results_root()
    lines = []
    for folder in dataset_folders(root):
        configs = []
        for sub in sorted(p for p in folder.iterdir() if p.is_dir() and "__" in p.name):
            folds = available_folds(sub, checkpoint)
            configs.append(f"{sub.name} ({'folds ' + ', '.join(folds) if folds else f'no {checkpoint}'})")
        lines.append(f"  {folder.name}: {', '.join(configs) if configs else 'no trained configurations'}")
    return "\n".join(lines) if lines else f"  (no DatasetXXX_Name folders under {root})"


def trained_datasets(root: Path | None = None, trainer: str = DEFAULT_TRAINER,
                     checkpoint: str = DEFAULT_CHECKPOINT) -> list[Path]:
    """Dataset folders under the results root with ``checkpoint`` for both the liver and the tumour model."""
    root = Path(root) if root is not None else results_root()
    return [folder for folder in dataset_folders(root)
            if all(available_folds(folder / f"{trainer}__{task}", checkpoint) for task in TASKS)]


def select_models(dataset: str | int | None = None, folds: list[str] | tuple[str, ...] | None = None,
                  checkpoint: str = DEFAULT_CHECKPOINT, trainer: str = DEFAULT_TRAINER,
                  root: Path | None = None) -> ModelPair:
    """The model pair to predict with.

    Without ``dataset``, the one dataset under the results root that has trained liver and tumour models for
    ``trainer`` and ``checkpoint`` is used; none or several is a :class:`SmoothSegError` that lists what exists.
    ``folds`` defaults, per task, to every fold that holds ``checkpoint``; given folds must exist for both tasks.
    """
    root = Path(root) if root is not None else results_root()
    if dataset is None:
        candidates = trained_datasets(root, trainer, checkpoint)
        if len(candidates) != 1:
            problem = "no dataset" if not candidates else f"{len(candidates)} datasets"
            raise SmoothSegError(
                f"{problem} under {root} {'has' if not candidates else 'have'} trained liver and tumor models "
                f"({trainer}, {checkpoint}); choose one with -d. Found:\n{describe_results(root, checkpoint)}")
        folder = candidates[0]
    else:
        try:
            folder = find_dataset(dataset, root)
        except DatasetNotFoundError as exc:
            raise DatasetNotFoundError(f"{exc}. Trained models found:\n{describe_results(root, checkpoint)}") from None
    chosen: dict[str, tuple[str, ...]] = {}
    for task in TASKS:
        task_folder = folder / f"{trainer}__{task}"
        present = available_folds(task_folder, checkpoint)
        if not present:
            raise SmoothSegError(f"{task_folder}: no trained {task} model (no fold_*/{checkpoint}). Found:\n"
                                 f"{describe_results(root, checkpoint)}")
        if folds:
            missing = [str(f) for f in folds if str(f) not in present]
            if missing:
                raise SmoothSegError(f"{task_folder}: fold(s) {', '.join(missing)} have no {checkpoint}; "
                                     f"available: {', '.join(present)}")
            chosen[task] = tuple(str(f) for f in folds)
        else:
            chosen[task] = tuple(present)
    pair = ModelPair(folder, trainer, checkpoint, chosen)
    logger.info("models: %s", pair.describe())
    return pair

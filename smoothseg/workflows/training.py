"""Train, then validate: ``smoothseg_train``'s workflow above the trainer.

The trainer trains and knows nothing of inference. Once both models of a fold are final, :func:`train_and_validate`
runs the full validation of that fold (:func:`smoothseg.workflows.validation.validate_fold`: the cascade on the
fold's validation cases, the tumour stage on the *predicted* liver, and the choice of post-processing), as nnU-Net's
``run_training`` runs its final validation after the trainer.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from smoothseg.errors import SmoothSegError
from smoothseg.inference.cascade import ModelOptions
from smoothseg.training.config import TrainingConfig
from smoothseg.training.distributed import from_environment
from smoothseg.training.trainer import get_trainer_class, train
from smoothseg.workflows.unlabelled import prepare_unlabelled
from smoothseg.workflows.validation import validate_fold

__all__ = ["fold_validation", "train_and_validate", "validate_only"]

logger = logging.getLogger(__name__)

FINAL_CHECKPOINT = "checkpoint_final.pth"


def _other_final(output: Path, trainer: str, task: str) -> Path:
    other = "tumor" if task == "liver" else "liver"
    return output.parent.parent / f"{trainer}__{other}" / output.name / FINAL_CHECKPOINT


def fold_validation(config: TrainingConfig, output: Path, device: torch.device) -> Path | None:
    """The full validation of ``config``'s fold once both of its models are final; None (with the reason logged)
    while the other model is missing, and for fold ``all`` (no held-out cases)."""
    if config.fold == "all":
        logger.info("no full validation for fold 'all' (it has no held-out cases)")
        return None
    other = _other_final(output, config.trainer, config.task)
    if not other.exists():
        logger.info("full validation waits for the %s model of fold %s (%s)", other.parent.parent.name.split("__")[-1],
                    config.fold, other)
        return None
    return validate_fold(output.parent.parent.name, config.fold, trainer=config.trainer,
                         models=ModelOptions(device=device), objective=config.pp_objective)


def train_and_validate(config: TrainingConfig, device: torch.device) -> Path:
    """Train ``config`` on ``device`` (a tumour model's unlabelled cases prepared first with the fold's liver
    model); then, with ``config.validate``, validate the fold when it is complete."""
    if from_environment().is_main:
        prepare_unlabelled(config, device)
    output = train(config, device)
    if config.validate and from_environment().is_main:  # in a torchrun job, rank 0 validates alone
        fold_validation(config, output, torch.device("cuda", 0) if device.type == "cuda" else device)
    return output


def validate_only(config: TrainingConfig, device: torch.device) -> Path:
    """``smoothseg_train ... --val``: the full validation of a finished fold, without training."""
    output = get_trainer_class(config.trainer).output_folder(config)
    if not (output / FINAL_CHECKPOINT).exists():
        raise SmoothSegError(f"--val: {output} has no {FINAL_CHECKPOINT}; train this fold first")
    result = fold_validation(config, output, device)
    if result is None:
        raise SmoothSegError("--val needs the final liver and tumor models of this fold (see the log)")
    return result

"""Optimiser and learning-rate schedule of a training run."""

from __future__ import annotations

import torch

from smoothseg.errors import SmoothSegError
from smoothseg.training.config import DEFAULT_LR, TrainingConfig


def initial_lr(config: TrainingConfig) -> float:
    """``config.initial_lr``, or the optimizer's default; an unknown optimizer is an error."""
    if config.optimizer not in DEFAULT_LR:
        raise SmoothSegError(f"unknown optimizer '{config.optimizer}'; choose from {', '.join(DEFAULT_LR)}")
    return float(config.initial_lr) if config.initial_lr is not None else DEFAULT_LR[config.optimizer]


def build_optimizer(parameters, config: TrainingConfig) -> torch.optim.Optimizer:
    """AdamW (default; Myronenko 2018 trains SegResNetVAE with Adam and poly decay) or SGD with Nesterov momentum
    (nnU-Net). On the demo dataset, the tumour class appears after ~100 AdamW iterations and only after several
    hundred SGD iterations (documentation/benchmarks.md)."""
    lr = initial_lr(config)
    if config.optimizer == "adamw":
        return torch.optim.AdamW(parameters, lr=lr, weight_decay=config.weight_decay)
    return torch.optim.SGD(parameters, lr=lr, momentum=config.momentum, nesterov=True,
                           weight_decay=config.weight_decay)


def poly_lr(config: TrainingConfig, epoch: int) -> float:
    """Poly schedule: ``initial_lr * (1 - epoch / epochs) ** 0.9``."""
    return initial_lr(config) * (1 - epoch / config.epochs) ** 0.9

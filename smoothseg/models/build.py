"""Networks from plans and from checkpoints, and freshly initialised model pairs (benchmarks, smoke tests).

:func:`build_network` is the one place where a :class:`~smoothseg.planning.plans.ConfigurationPlan` becomes a
SegResNetVAE (training builds it; prediction rebuilds it from the checkpoint's ``network_kwargs`` with
:func:`network_from_checkpoint`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from smoothseg.atomic import write_json
from smoothseg.errors import SmoothSegError
from smoothseg.models.checkpoint import save_checkpoint
from smoothseg.models.store import DEFAULT_CHECKPOINT, DEFAULT_TRAINER, ModelPair
from smoothseg.network.segresnet_vae import SegResNetVAE
from smoothseg.planning.plans import TASKS, ConfigurationPlan, Plans

__all__ = ["build_network", "network_from_checkpoint", "write_untrained_models"]


def build_network(plan: ConfigurationPlan, vae: bool = True, deep_supervision: bool = False) -> SegResNetVAE:
    """The SegResNetVAE that ``plan`` describes (``vae=False``: without its VAE branch, for the ablation;
    ``deep_supervision``: with a segmentation head on each coarser decoder stage, used in training only)."""
    net = plan.network
    return SegResNetVAE(in_channels=1, out_channels=plan.num_classes, input_image_size=plan.patch_size,
                        init_filters=net.init_filters, blocks_down=net.blocks_down, blocks_up=net.blocks_up,
                        norm=net.norm, dropout=net.dropout, vae=vae, vae_nz=net.vae_nz,
                        vae_estimate_std=net.vae_estimate_std, deep_supervision=deep_supervision)


def network_from_checkpoint(payload: dict[str, Any], path: Path) -> SegResNetVAE:
    """Rebuild the network of a loaded checkpoint (``network_kwargs`` + ``network_state``), with a clear error."""
    try:
        network = SegResNetVAE(**payload["network_kwargs"])
        network.load_state_dict(payload["network_state"])
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        raise SmoothSegError(f"{path}: cannot rebuild the network ({type(exc).__name__}: {exc})") from None
    return network


def write_untrained_models(plans: Plans, dataset_folder: Path, trainer: str = DEFAULT_TRAINER,
                           folds: tuple[str, ...] = ("0",), seed: int = 0,
                           checkpoint: str = DEFAULT_CHECKPOINT) -> ModelPair:
    """Write freshly initialised liver and tumour checkpoints (same payload keys as training) for ``plans``.

    Their predictions are meaningless; they exist to time the pipeline and to test it without training.
    ``plans.json`` is written next to each configuration, as :func:`~smoothseg.models.archive.install_models` does.
    """
    dataset_folder = Path(dataset_folder)
    for task in TASKS:
        task_folder = dataset_folder / f"{trainer}__{task}"
        write_json(plans.to_dict(), task_folder / "plans.json")
        for fold in folds:
            torch.manual_seed(seed + int(fold) if fold.isdigit() else seed)
            network = build_network(plans[task])
            payload = {"network_state": network.state_dict(), "network_kwargs": network.init_kwargs, "epoch": 0,
                       "trainer": trainer, "task": task, "fold": fold, "dataset": dataset_folder.name,
                       "plans": plans.to_dict(), "tlvr_model": None, "tlvr_scores": None, "git_hash": None}
            save_checkpoint(payload, task_folder / f"fold_{fold}" / checkpoint)
    return ModelPair(dataset_folder, trainer, checkpoint, {task: tuple(folds) for task in TASKS})

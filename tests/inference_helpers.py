"""Helpers for the inference tests: tiny plans and model pairs that need no training.

Importing this module does not import torch, so worker processes that import it start quickly.
"""

from __future__ import annotations

import os
from pathlib import Path

from smoothseg.inference.cohort_workers import LoadJob, Outcome
from smoothseg.models.build import write_untrained_models
from smoothseg.models.store import ModelPair
from smoothseg.planning.plans import Plans

TINY_DATASET = "Dataset950_TinyModels"


def tiny_plans(dataset: str = TINY_DATASET) -> Plans:
    """Plans of a 4-filter SegResNetVAE with 16x32x32 patches for both configurations (mirroring as planned)."""
    def config(spacing, classes, crop, margin, mirror_axes):
        return {"spacing": list(spacing), "patch_size": [16, 32, 32], "batch_size": 2,
                "window": {"lower": -100.0, "upper": 250.0, "mean": 100.0, "std": 50.0}, "num_classes": len(classes),
                "class_names": classes, "crop": crop, "crop_margin_mm": margin, "mirror_axes": mirror_axes,
                "network": {"init_filters": 4, "vae_nz": 16}}

    return Plans.from_dict({
        "dataset": dataset, "task_regions": {"liver": [1, 2], "tumor": [2]},
        "configurations": {
            "liver": config((6.0, 5.0, 5.0), ["background", "liver"], "none", [0.0, 0.0, 0.0], []),
            "tumor": config((5.0, 3.0, 3.0), ["background", "liver", "tumor"], "liver", [5.0, 10.0, 10.0], [0, 1, 2]),
        }})


def make_model_pair(results: Path, folds: tuple[str, ...] = ("0",), dataset: str = TINY_DATASET) -> ModelPair:
    """Untrained liver and tumour checkpoints under ``results/<dataset>``."""
    return write_untrained_models(tiny_plans(dataset), results / dataset, folds=folds)


def make_constant(checkpoint: Path, logits: list[float]) -> None:
    """Rewrite a checkpoint so that its network outputs ``logits`` at every voxel (zero head weights, fixed bias)."""
    import torch

    from smoothseg.models.checkpoint import load_checkpoint, save_checkpoint

    payload = load_checkpoint(checkpoint)
    state = payload["network_state"]
    state["head.2.weight"] = torch.zeros_like(state["head.2.weight"])
    state["head.2.bias"] = torch.tensor(logits, dtype=state["head.2.bias"].dtype)
    save_checkpoint(payload, checkpoint)


def die_on_bad(job: LoadJob) -> Outcome:
    """A worker function that kills its process for case ``bad``, as the OS does to a worker out of memory."""
    if job.case.case_id == "bad":
        os._exit(1)
    return Outcome(True, job.case.case_id)


def shrink_plans(preprocessed_folder: Path) -> Path:
    """Edit a planned dataset's ``plans.json`` down to a 4-filter network on 16 x 32 x 32 patches, batch 2, for both
    configurations (as a user may edit it by hand); returns the folder."""
    import json

    plans_path = Path(preprocessed_folder) / "plans.json"
    plans = json.loads(plans_path.read_text())
    for cfg in plans["configurations"].values():
        cfg.update(patch_size=[16, 32, 32], batch_size=2)
        cfg["network"].update(init_filters=4, vae_nz=16)
    plans_path.write_text(json.dumps(plans))
    return Path(preprocessed_folder)


def train_tiny_pair(home: Path, raw_dataset: Path) -> Path:
    """``home`` as a data home with ``raw_dataset`` (copied) planned, preprocessed with :func:`shrink_plans` and tiny
    liver + tumour models trained for fold 0 (one epoch of two iterations, one torch thread); returns ``home``.

    The roots are pointed at ``home`` only for the call."""
    import shutil

    import pytest
    import torch

    from smoothseg.training.config import TrainingConfig
    from smoothseg.training.trainer import train
    from smoothseg.workflows.plan_and_preprocess import plan_and_preprocess

    shutil.copytree(raw_dataset, home / "raw" / raw_dataset.name)
    threads = torch.get_num_threads()
    with pytest.MonkeyPatch.context() as mp:
        for var in ("SMOOTHSEG_RAW", "SMOOTHSEG_PREPROCESSED", "SMOOTHSEG_RESULTS"):
            mp.delenv(var, raising=False)
        mp.setenv("SMOOTHSEG_HOME", str(home))
        torch.set_num_threads(1)  # tiny networks: threads cost more than they give
        try:
            shrink_plans(plan_and_preprocess(900).folder)
            for task in ("liver", "tumor"):
                train(TrainingConfig(dataset="900", task=task, fold="0", device="cpu", epochs=1, iters_per_epoch=2,
                                     val_iters=1, num_workers=0))
        finally:
            torch.set_num_threads(threads)
    return home


def use_home(home: Path, monkeypatch):
    """Point this test's roots at ``home`` (in-process calls and CLI processes) with one torch thread; a generator for
    a fixture body: ``yield from use_home(trained, monkeypatch)``."""
    import torch

    for var in ("SMOOTHSEG_RAW", "SMOOTHSEG_PREPROCESSED", "SMOOTHSEG_RESULTS"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("SMOOTHSEG_HOME", str(home))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield home
    finally:
        torch.set_num_threads(threads)

"""Trainers: a plain segmentation :class:`Trainer` and :class:`SmoothSegTrainer`, which adds the TLVR term.

The trainer composes the parts built elsewhere: the network (:mod:`smoothseg.network`), the losses
(:mod:`smoothseg.training.losses`), patch loading and augmentation
(:mod:`smoothseg.training.data_loader`, :mod:`smoothseg.training.augmentation`), checkpoints and the
progress log. Configuration comes from ``plans.json`` and :class:`TrainingConfig` (the CLI flags),
never from subclasses per hyperparameter; subclasses change behaviour only.

Output: ``<results>/DatasetXXX/<Trainer>__<config>/fold_k/`` with ``checkpoint_{latest,best,final}.pth``,
``progress.png``, ``training_log.txt`` and ``run_config.json``.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from smoothseg.atomic import write_json
from smoothseg.dataset.raw_dataset import RawDataset
from smoothseg.device import autocast, autocast_dtype, precision_name, resolve_device
from smoothseg.errors import SmoothSegError
from smoothseg.knowledge.weak_labels import fold_weak_labels
from smoothseg.logging_setup import progress_bar
from smoothseg.models.build import build_network
from smoothseg.models.checkpoint import git_hash, load_checkpoint, save_checkpoint
from smoothseg.paths import find_dataset, preprocessed_root, results_root
from smoothseg.planning.plans import TASKS, Plans
from smoothseg.planning.splits import load_fold
from smoothseg.preprocessing.normalization import outside_fill_value
from smoothseg.training.augmentation import default_num_workers, make_augmenter, training_transforms
from smoothseg.training.config import RESUME_KEPT, RESUME_KEPT_ANY_TASK, TrainingConfig
from smoothseg.training.data_loader import PatchLoader, SamplingConfig
from smoothseg.training.distributed import DistributedContext, broadcast_from_main, from_environment, sum_over_ranks
from smoothseg.training.distributed import start as start_distributed
from smoothseg.training.distributed import stop as stop_distributed
from smoothseg.training.distributed import wrap as wrap_distributed
from smoothseg.training.fold_guard import FINAL, check_not_finished, clear_previous_run, fold_lock
from smoothseg.training.gpu_augmentation import DeviceAugmenter, training_ranges
from smoothseg.training.losses import DiceCELoss, SmoothSegLoss
from smoothseg.training.optim import build_optimizer, poly_lr
from smoothseg.training.progress import ProgressLog
from smoothseg.training.unlabelled import (
    ConstraintStep,
    UnlabelledCase,
    band,
    cache_folder,
    fold_unlabelled,
    load_prepared,
    tlvr_band_width,
)

logger = logging.getLogger(__name__)

TRAINERS: dict[str, type[Trainer]] = {}


def register_trainer(cls: type[Trainer]) -> type[Trainer]:
    """Class decorator: make a trainer selectable with ``-tr NAME``."""
    TRAINERS[cls.__name__] = cls
    return cls


def get_trainer_class(name: str) -> type[Trainer]:
    if name not in TRAINERS:
        raise SmoothSegError(f"unknown trainer '{name}'; available: {', '.join(sorted(TRAINERS))}")
    return TRAINERS[name]


class Trainer:
    """Plain segmentation trainer: Dice + cross-entropy, plus the SegResNetVAE's VAE term (weight 0.1)."""

    uses_tlvr = False
    #: seconds between progress.png refreshes (drawing it takes ~0.6 s on a 2-core CPU, 3% of a demo epoch)
    plot_interval_s = 60.0

    def __init__(self, config: TrainingConfig, device: torch.device | None = None,
                 dist_ctx: DistributedContext | None = None):
        self.config = config
        self.dist = dist_ctx if dist_ctx is not None else from_environment()
        self.name = type(self).__name__
        self.preprocessed = find_dataset(config.dataset, preprocessed_root())
        self.plans = Plans.load(self.preprocessed / "plans.json")
        if config.task not in self.plans.configurations:
            raise SmoothSegError(f"no configuration '{config.task}' in {self.preprocessed / 'plans.json'}; "
                                 f"available: {', '.join(self.plans.configurations)}")
        self.plan = self.plans[config.task]
        for flag, value in (("--mask-leak-mm", config.mask_leak_mm), ("mask_jitter_mm", config.mask_jitter_mm)):
            if not (math.isfinite(value) and value >= 0):
                raise SmoothSegError(f"{flag} must be a non-negative number of mm, got {value}")
        for flag, value in (("--lesion-sampling", config.lesion_sampling), ("--clean-liver", config.clean_liver),
                            ("--lesion-synthesis", config.lesion_synthesis)):
            if not (math.isfinite(value) and 0 <= value <= 1):
                raise SmoothSegError(f"{flag} must be a share between 0 and 1, got {value}")
        if not (math.isfinite(config.lesion_alpha) and config.lesion_alpha >= 0):
            raise SmoothSegError(f"--lesion-alpha must be a non-negative number, got {config.lesion_alpha}")
        if config.unlabelled_every < 0:
            raise SmoothSegError(f"--unlabelled-every must be 0 (off) or a number of iterations, got "
                                 f"{config.unlabelled_every}")
        self.task_folder = self.preprocessed / config.task
        self.train_ids, self.val_ids = load_fold(self.preprocessed / "splits.json", config.fold)
        missing = [c for c in self.train_ids + self.val_ids if not (self.task_folder / f"{c}.json").exists()]
        if missing:
            raise SmoothSegError(f"{len(missing)} case(s) of fold {config.fold} are not preprocessed for "
                                 f"'{config.task}' ({', '.join(missing[:5])}); run smoothseg_plan_and_preprocess "
                                 f"-d {config.dataset} -c {config.task}")
        self.output = self.output_folder(config)
        self.device = start_distributed(self.dist, device if device is not None else resolve_device(config.device))
        # Mixed precision: float16 with a gradient scaler on CUDA; float32 on a CPU unless bf16 is asked for.
        self.amp_dtype = autocast_dtype(self.device, config.precision, training=True)
        #: Set per epoch by :meth:`_loader` when training batches are augmented on the device.
        self.device_augmenter: DeviceAugmenter | None = None
        self.skipped_steps = 0
        self._last_plot = -math.inf  # progress.png: after epoch 0, then at most every plot_interval_s, and at the end
        torch.manual_seed(config.seed)  # the initial weights depend on --seed only, not on what ran before
        # Channels-last on a CPU: oneDNN's 3D convolutions run a training step 1-2.5% faster; its GroupNorm kernel is
        # less exact (relative ~5e-6 per layer), which moves gradients by ~0.3% (documentation/benchmarks.md)
        self.memory_format = torch.channels_last_3d if self.device.type == "cpu" else torch.contiguous_format
        self.network = build_network(self.plan, vae=config.vae, deep_supervision=config.deep_supervision).to(
            self.device, memory_format=self.memory_format)
        self.optimizer = build_optimizer(self.network.parameters(), config)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp_dtype == torch.float16)
        self.progress = ProgressLog()
        self.start_epoch = 0
        self.ema_dice: float | None = None
        self.best_ema = -1.0
        self.epochs_since_best = 0
        self.train_tlvr: dict[str, float] = {}
        self.val_tlvr: dict[str, float] = {}
        self.tlvr_model: dict[str, Any] | None = None
        self.tlvr_scores: dict[str, float] | None = None
        #: Unlabelled cases with their TLVR band, once :meth:`prepare_knowledge` found them (tumour task only).
        self.unlabelled: list[UnlabelledCase] = []
        #: The ``data_use`` of the checkpoint a ``--c`` run continues (None otherwise).
        self.resumed_data_use: dict[str, Any] | None = None
        self.loss_fn = self.build_loss()

    # -- set-up ---------------------------------------------------------------------------------------------------
    @classmethod
    def output_folder(cls, config: TrainingConfig) -> Path:
        """``<results>/DatasetXXX_Name/<Trainer>__<task>/fold_<k>`` of ``config``."""
        dataset = find_dataset(config.dataset, preprocessed_root()).name
        return results_root() / dataset / f"{cls.__name__}__{config.task}" / f"fold_{config.fold}"

    def build_loss(self) -> SmoothSegLoss:
        seg = DiceCELoss(self.plan.num_classes, batch_dice=self.config.batch_dice)
        return SmoothSegLoss(seg, vae_weight=self.config.vae_weight, tlvr_weight=self.effective_tlvr_weight())

    def effective_tlvr_weight(self) -> float:
        return 0.0

    def prepare_knowledge(self) -> None:
        """Hook for trainers that use clinical knowledge; the plain trainer uses none."""
        logger.info("%s: no TLVR term (plain segmentation trainer)", self.name)

    def _device_augmentation(self) -> bool:
        """Whether training batches are augmented on the training device (:mod:`~smoothseg.training.gpu_augmentation`):
        ``auto`` on CUDA, ``on`` anywhere (the same torch code on a CPU), ``off`` never."""
        mode = self.config.gpu_augmentation
        if mode not in ("auto", "on", "off"):
            raise SmoothSegError(f"--gpu-augmentation: choose auto, on or off, got {mode!r}")
        return mode == "on" or (mode == "auto" and self.device.type == "cuda")

    def _loader(self, ids: list[str], tlvr: dict[str, float], seed: int, train: bool):
        """Patches of ``ids`` (augmented, with the mask perturbations, when ``train``), wrapped in an augmenter.

        With augmentation on the device, the training workers cut source patches (mask moves included) and
        ``self.device_augmenter`` (seeded from ``seed``) turns them into augmented training patches in
        :meth:`train_step`."""
        fill = outside_fill_value(self.plan)
        on_device = train and self._device_augmentation()
        if on_device:
            self.device_augmenter = DeviceAugmenter(training_ranges(self.plan.patch_size, self.plan.mirror_axes),
                                                    fill, seed=seed)
        sampling = SamplingConfig(self.plan.patch_size, self.plan.batch_size,
                                  crop_size=self.device_augmenter.source_size if on_device else None,
                                  oversample_foreground=self.config.oversample_foreground,
                                  mask_outside_liver=self.plan.crop == "liver",
                                  mask_jitter_mm=self.config.mask_jitter_mm if train else 0.0,
                                  mask_leak_mm=self.config.mask_leak_mm if train else 0.0, fill_value=fill,
                                  **(self._tumour_sampling() if train and self.plan.crop == "liver" else {}))
        workers = self.config.num_workers if self.config.num_workers is not None else default_num_workers()
        workers = workers if train else min(workers, 1)
        loader = PatchLoader(self.task_folder, ids, sampling, tlvr, seed=seed, num_threads=max(workers, 1))
        transforms = training_transforms(self.plan.patch_size, fill, self.plan.mirror_axes) \
            if train and not on_device else None
        return make_augmenter(loader, transforms, workers, seed)

    def _tumour_sampling(self) -> dict[str, float]:
        """The tumour task's training sampling: lesion-balanced foreground, clean-liver negatives, lesion synthesis."""
        return {"lesion_sampling": self.config.lesion_sampling, "lesion_alpha": self.config.lesion_alpha,
                "clean_liver": self.config.clean_liver, "lesion_synthesis": self.config.lesion_synthesis}

    # -- checkpoints ----------------------------------------------------------------------------------------------
    def _payload(self, epoch: int) -> dict[str, Any]:
        return {
            "network_state": self.network.state_dict(),
            "network_kwargs": self.network.init_kwargs,
            "optimizer_state": self.optimizer.state_dict(),
            "scaler_state": self.scaler.state_dict(),
            "epoch": epoch,
            "trainer": self.name,
            "task": self.config.task,
            "fold": str(self.config.fold),
            "dataset": self.preprocessed.name,
            "plans": self.plans.to_dict(),
            "config": asdict(self.config),
            "progress": self.progress.to_dict(),
            "ema_dice": self.ema_dice,
            "best_ema": self.best_ema,
            "epochs_since_best": self.epochs_since_best,
            "tlvr_model": self.tlvr_model,
            "tlvr_scores": self.tlvr_scores,
            "data_use": self.data_use(),
            "git_hash": git_hash(),
            "rng_state": {"torch": torch.get_rng_state(),
                          "cuda": torch.cuda.get_rng_state_all() if self.device.type == "cuda" else []},
        }

    def data_use(self) -> dict[str, Any]:
        """Which cases this run used how: segmentation loss (``labelled``), validation batches, and the unlabelled
        ones (knowledge term only) with their source, clinical prediction and band."""
        return {"labelled": list(self.train_ids), "validation": list(self.val_ids),
                "unlabelled": {c.case_id: {"source": c.source, "clinical_tlvr": c.clinical_tlvr,
                                           "band": [c.low, c.high]} for c in self.unlabelled}}

    def unlabelled_gradient(self, rng: np.random.Generator) -> dict[str, float]:
        """Accumulate the whole-liver knowledge term of an unlabelled case drawn by ``rng`` into the gradients
        (:mod:`smoothseg.training.unlabelled`; nothing inside the band). Called by :meth:`train_step` after its own
        backward pass, so the term joins that step's gradient: one optimiser step, one clipping, one non-finite
        check, and momentum and weight decay applied once."""
        case = self.unlabelled[int(rng.integers(len(self.unlabelled)))]
        step = ConstraintStep(self.network, tuple(self.plan.patch_size), outside_fill_value(self.plan), self.device,
                              self.memory_format, self._autocast)
        return step(case, self.loss_fn.tlvr_weight, rng, lambda surrogate: self.scaler.scale(surrogate).backward())

    def _resume(self) -> None:
        for name in ("checkpoint_latest.pth", "checkpoint_final.pth"):
            path = self.output / name
            if path.exists():
                break
        else:
            raise SmoothSegError(f"--c: no checkpoint to continue from in {self.output}")
        ckpt = load_checkpoint(path, self.device)
        self.resumed_data_use = ckpt.get("data_use") or {}
        if ckpt.get("trainer") != self.name or ckpt.get("task") != self.config.task:
            raise SmoothSegError(f"{path} was written by {ckpt.get('trainer')} for '{ckpt.get('task')}', "
                                 f"not {self.name} for '{self.config.task}'")
        saved_optimizer = ckpt.get("config", {}).get("optimizer", "sgd")  # checkpoints before the option were SGD
        if saved_optimizer != self.config.optimizer:
            raise SmoothSegError(f"{path} was trained with --optimizer {saved_optimizer}; continue it with the same "
                                 f"optimizer (got {self.config.optimizer})")
        for key, before_option in RESUME_KEPT.items():  # runs from before an option had none: its "off" value
            if self.config.task != "tumor" and key not in RESUME_KEPT_ANY_TASK:
                continue
            saved, now = float(ckpt.get("config", {}).get(key, before_option)), float(getattr(self.config, key))
            if saved != now:
                flag = "--" + key.replace("_", "-")
                if key == "deep_supervision":  # a switch: name the flag that continues the run as it was trained
                    raise SmoothSegError(f"{path} was trained {'with' if saved else 'without'} deep supervision; "
                                         f"continue it with {flag if saved else '--no-' + flag[2:]}")
                raise SmoothSegError(f"{path} was trained with {flag} {saved:g}; continue it with the same value "
                                     f"(got {now:g})")
        self.network.load_state_dict(ckpt["network_state"])
        self.optimizer.load_state_dict(ckpt["optimizer_state"])
        self.scaler.load_state_dict(ckpt["scaler_state"])
        self.start_epoch = int(ckpt["epoch"]) + 1
        self.progress = ProgressLog(ckpt["progress"])
        self.progress.truncate(self.start_epoch)
        self.ema_dice, self.best_ema = ckpt["ema_dice"], ckpt["best_ema"]
        self.epochs_since_best = int(ckpt.get("epochs_since_best", 0))
        rng = ckpt.get("rng_state")
        if rng:  # the VAE's sampling noise continues where it stopped (older checkpoints lack the state)
            torch.set_rng_state(rng["torch"])
            if self.device.type == "cuda" and rng.get("cuda"):
                torch.cuda.set_rng_state_all(rng["cuda"])
        logger.info("resuming from %s: %d epoch(s) done, continuing at epoch %d of %d", path.name, self.start_epoch,
                    self.start_epoch, self.config.epochs)

    # -- the loop -------------------------------------------------------------------------------------------------
    def lr_at(self, epoch: int) -> float:
        return poly_lr(self.config, epoch)

    def _autocast(self):
        return autocast(self.device, self.amp_dtype)

    def _to_device(self, batch: dict) -> tuple[torch.Tensor, ...]:
        def tensor(value, dtype):  # NumPy from the loader, or tensors already on the device (device augmentation)
            value = value if isinstance(value, torch.Tensor) else torch.as_tensor(np.asarray(value))
            return value.to(self.device, dtype, non_blocking=True)

        data = tensor(batch["data"], torch.float32).contiguous(memory_format=self.memory_format)
        seg = tensor(batch["seg"], torch.long)
        knowledge = [tensor(batch[k], torch.float32) for k in ("clinical_tlvr", "liver_coverage", "case_tlvr")]
        return data, seg[:, 0], *knowledge

    def train_step(self, batch: dict, unlabelled_rng: np.random.Generator | None = None) -> dict[str, float]:
        """One optimiser step on ``batch``; with ``unlabelled_rng``, an unlabelled case's whole-liver term joins the
        gradient (its parts returned as ``unlabelled_*``)."""
        if self.device_augmenter is not None:
            batch = self.device_augmenter(batch, self.device)
        data, seg, tlvr, coverage, case_tlvr = self._to_device(batch)
        self.optimizer.zero_grad(set_to_none=True)
        with self._autocast():
            logits, vae_loss, *deep = self.model_for_training(data)  # deep: the deep-supervision heads, if any
        total, parts = self.loss_fn(logits.float(), seg, vae_loss=vae_loss.float(), clinical_tlvr=tlvr,
                                    liver_coverage=coverage, case_tlvr=case_tlvr,
                                    deep_logits=[d.float() for d in deep[0]] if deep else None)
        self.scaler.scale(total).backward()
        if unlabelled_rng is not None:
            parts.update({f"unlabelled_{k}": v for k, v in self.unlabelled_gradient(unlabelled_rng).items()})
        self.scaler.unscale_(self.optimizer)
        norm = torch.nn.utils.clip_grad_norm_(self.network.parameters(), self.config.grad_clip)
        if self.scaler.is_enabled() or torch.isfinite(norm):
            self.scaler.step(self.optimizer)  # the fp16 scaler skips non-finite steps itself (and rescales)
        else:
            # One NaN step would turn every weight into NaN for good: skip it, as the fp16 scaler does.
            self.skipped_steps += 1
            logger.warning("non-finite gradient (norm %s): optimiser step skipped (%d so far)", float(norm),
                           self.skipped_steps)
        self.scaler.update()
        return parts

    @torch.no_grad()
    def validation_step(self, batch: dict) -> tuple[float, np.ndarray]:
        data, seg, *_ = self._to_device(batch)
        self.network.eval()
        with self._autocast():
            logits = self.network(data)
        self.network.train()
        loss = float(self.loss_fn.seg_loss(logits.float(), seg))
        pred = logits.argmax(1)
        stats = np.zeros((self.plan.num_classes - 1, 3))
        for c in range(1, self.plan.num_classes):
            p, t = pred == c, seg == c
            stats[c - 1] = [(p & t).sum().item(), (p & ~t).sum().item(), (~p & t).sum().item()]
        return loss, stats

    def run(self) -> Path:
        """Train (or continue) to ``config.epochs`` and return the output folder.

        The fold is locked while it trains, and a finished fold is only continued (``--c``) or trained again
        (``--overwrite``) when asked (:mod:`smoothseg.training.fold_guard`). In a ``torchrun`` job every rank trains
        and only rank 0 locks, writes and logs to the fold folder.
        """
        check_not_finished(self.output, self.config.continue_training, self.config.overwrite)
        try:
            if not self.dist.is_main:
                return self._run(self.config)
            with fold_lock(self.output):
                if self.config.overwrite:
                    clear_previous_run(self.output)
                return self._run_logged()
        finally:
            stop_distributed(self.dist)

    def _run_logged(self) -> Path:
        cfg = self.config
        file_log = logging.FileHandler(self.output / "training_log.txt")
        file_log.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s"))
        file_log.setLevel(logging.INFO)
        package_logger = logging.getLogger("smoothseg")
        previous_level = package_logger.level
        if package_logger.getEffectiveLevel() > logging.INFO:  # the text log always gets INFO records
            package_logger.setLevel(logging.INFO)
        package_logger.addHandler(file_log)
        try:
            return self._run(cfg)
        finally:
            package_logger.removeHandler(file_log)
            package_logger.setLevel(previous_level)
            file_log.close()

    def _run(self, cfg: TrainingConfig) -> Path:
        torch.manual_seed(cfg.seed)
        if cfg.continue_training:
            self._resume()
        self._share_knowledge()
        world = self.dist.world_size
        if self.dist.is_main:
            write_json({"config": asdict(cfg), "trainer": self.name, "plan": self.plans.to_dict()["configurations"][
                cfg.task], "train_cases": self.train_ids, "val_cases": self.val_ids, "device": str(self.device),
                "precision": precision_name(self.amp_dtype),
                "world_size": world, "tlvr_scores": self.tlvr_scores, "git_hash": git_hash()},
                self.output / "run_config.json")
        logger.info("%s on %s fold %s: %d training / %d validation cases, device %s, %s, epochs %d-%d%s", self.name,
                    cfg.task, cfg.fold, len(self.train_ids), len(self.val_ids), self.device,
                    precision_name(self.amp_dtype), self.start_epoch, cfg.epochs - 1,
                    f"; {world} processes, batch {self.plan.batch_size} per process = {world * self.plan.batch_size} "
                    "per step" if world > 1 else "")
        model = wrap_distributed(self.network, self.dist, self.device)
        self.model_for_training = torch.compile(model) if cfg.compile else model
        rank = (self.dist.rank,) if self.dist.enabled else ()  # each rank samples its own patches
        for epoch in range(self.start_epoch, cfg.epochs):
            # The data of epoch e depend on (seed, e) only, so a run resumed at e draws what an uninterrupted one does.
            train_aug = self._loader(self.train_ids, self.train_tlvr, _epoch_seed(cfg.seed, epoch, *rank), train=True)
            val_aug = self._loader(self.val_ids, self.val_tlvr, _epoch_seed(cfg.seed + 10_000, epoch, *rank),
                                   train=False)
            try:
                stop = self._epoch(epoch, train_aug, val_aug)
            finally:
                for aug in (train_aug, val_aug):
                    if hasattr(aug, "_finish"):
                        aug._finish()
            if stop:
                break
        if self.dist.is_main:
            final = self._payload(len(self.progress.series.get("train_loss", [])) - 1)
            save_checkpoint(final, self.output / "checkpoint_final.pth")
            self._plot_progress()
            logger.info("training done: %s (best EMA pseudo-Dice %.4f)", self.output / "checkpoint_final.pth",
                        self.best_ema)
        return self.output

    def _share_knowledge(self) -> None:
        """The TLVR weak labels, computed once (by rank 0 in a torchrun job) and the same on every rank."""
        if self.dist.is_main:
            self.prepare_knowledge()
        shared = broadcast_from_main(self.dist, (self.train_tlvr, self.val_tlvr, self.tlvr_model, self.tlvr_scores,
                                                 self.loss_fn.tlvr_weight))
        self.train_tlvr, self.val_tlvr, self.tlvr_model, self.tlvr_scores, weight = shared
        if weight != self.loss_fn.tlvr_weight:
            self.loss_fn = SmoothSegLoss(self.loss_fn.seg_loss, vae_weight=self.config.vae_weight, tlvr_weight=weight)

    def _plot_progress(self) -> None:
        self.progress.plot(self.output / "progress.png")
        self._last_plot = time.monotonic()

    def _epoch(self, epoch: int, train_aug, val_aug) -> bool:
        """One epoch of training and validation; returns True when early stopping triggers."""
        cfg = self.config
        t0 = time.time()
        lr = self.lr_at(epoch)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.network.train()
        sums: dict[str, float] = {}
        bar = progress_bar(range(cfg.iters_per_epoch), desc=f"epoch {epoch}", unit="it", leave=False)
        unlabelled_rng = np.random.default_rng([cfg.seed, epoch, 7])  # which unlabelled case, which tiles
        constraint: list[dict[str, float]] = []
        for it in bar:
            # counted over the run, so a step comes every unlabelled_every iterations also across short epochs
            due = bool(self.unlabelled) and (epoch * cfg.iters_per_epoch + it + 1) % max(cfg.unlabelled_every, 1) == 0
            parts = self.train_step(next(train_aug), unlabelled_rng if due else None)
            if due:
                constraint.append({k[len("unlabelled_"):]: parts.pop(k) for k in list(parts)
                                   if k.startswith("unlabelled_")})
            for k, v in parts.items():
                sums[k] = sums.get(k, 0.0) + v
            bar.set_postfix(loss=f"{parts['total']:.3f}")
        means = {k: v / cfg.iters_per_epoch for k, v in sums.items()}
        if constraint:
            logger.info("epoch %d: %d unlabelled whole-liver term(s), %d outside the band, mean penalty %.3g", epoch,
                        len(constraint), sum(1 for c in constraint if c["tiles"]),
                        float(np.mean([c["penalty"] for c in constraint])))
        val_losses, stats = [], np.zeros((self.plan.num_classes - 1, 3))
        for _ in range(cfg.val_iters):
            loss, s = self.validation_step(next(val_aug))
            val_losses.append(loss)
            stats += s
        if self.dist.enabled:  # every rank logs, and decides on the best model and on stopping, from the same numbers
            keys = sorted(means)
            pooled = sum_over_ranks(self.dist, torch.tensor([*(means[k] for k in keys), sum(val_losses),
                                                             len(val_losses), *stats.ravel()], dtype=torch.float64))
            pooled = pooled.tolist()
            world = self.dist.world_size
            means = {k: pooled[i] / world for i, k in enumerate(keys)}
            val_losses = [pooled[len(keys)] / max(pooled[len(keys) + 1], 1.0)]
            stats = np.asarray(pooled[len(keys) + 2:]).reshape(stats.shape)
        dice_per_class = 2 * stats[:, 0] / np.maximum(2 * stats[:, 0] + stats[:, 1] + stats[:, 2], 1)
        present = (stats[:, 0] + stats[:, 2]) > 0
        per_class = {f"pseudo_dice_{name}": float(d) if (stats[c, 0] + stats[c, 1] + stats[c, 2]) > 0 else float("nan")
                     for c, (name, d) in enumerate(zip(self.plan.class_names[1:], dice_per_class, strict=True))}
        pseudo_dice = float(dice_per_class[present].mean()) if present.any() else float("nan")
        if not math.isnan(pseudo_dice):
            self.ema_dice = pseudo_dice if self.ema_dice is None else 0.9 * self.ema_dice + 0.1 * pseudo_dice
        self.progress.log(train_loss=means.get("total", float("nan")), train_seg=means.get("seg", float("nan")),
                          train_vae=means.get("vae", float("nan")), train_tlvr=means.get("tlvr", float("nan")),
                          train_unlabelled=float(np.mean([c["penalty"] for c in constraint])) if constraint
                          else float("nan"),
                          val_loss=float(np.mean(val_losses)) if val_losses else float("nan"),
                          pseudo_dice=pseudo_dice, ema_pseudo_dice=self.ema_dice if self.ema_dice is not None
                          else float("nan"), lr=lr, epoch_time=time.time() - t0, **per_class)
        improved = self.ema_dice is not None and self.ema_dice > self.best_ema
        if improved:
            self.best_ema, self.epochs_since_best = self.ema_dice, 0
        else:
            self.epochs_since_best += 1
        if self.dist.is_main:
            payload = self._payload(epoch)
            save_checkpoint(payload, self.output / "checkpoint_latest.pth")
            if improved:
                save_checkpoint(payload, self.output / "checkpoint_best.pth")
            if time.monotonic() - self._last_plot >= self.plot_interval_s:
                self._plot_progress()
        logger.info("epoch %d: train loss %.4f (seg %.4f, vae %.4f, tlvr %s), val loss %.4f, pseudo-Dice %s, "
                    "EMA %.4f%s, lr %.5f, %.1f s", epoch, means.get("total", float("nan")),
                    means.get("seg", float("nan")), means.get("vae", float("nan")),
                    f"{means['tlvr']:.4f}" if "tlvr" in means else "off", self.progress.last("val_loss"),
                    " / ".join(f"{d:.3f}" for d in dice_per_class), self.ema_dice or 0.0,
                    " (best)" if improved else "", lr, time.time() - t0)
        if cfg.patience is not None and self.epochs_since_best >= cfg.patience:
            logger.info("early stopping: no EMA pseudo-Dice improvement for %d epochs", cfg.patience)
            return True
        return False


register_trainer(Trainer)


@register_trainer
class SmoothSegTrainer(Trainer):
    """SmoothSegNet: the plain trainer plus the knowledge-informed TLVR term on the tumour task."""

    uses_tlvr = True

    def effective_tlvr_weight(self) -> float:
        return self.config.tlvr_weight if self.config.task == "tumor" else 0.0

    def _tlvr_off(self, reason: str) -> None:
        logger.info("TLVR term off: %s", reason)
        self.loss_fn = SmoothSegLoss(self.loss_fn.seg_loss, vae_weight=self.config.vae_weight, tlvr_weight=0.0)

    def prepare_knowledge(self) -> None:
        if self.config.task != "tumor":
            logger.info("TLVR term off: it regularises the tumor task only")
            return
        if self.config.tlvr_weight == 0:
            logger.info("TLVR term off: --tlvr-weight 0 (ablation)")
            return
        truth = {c: json.loads((self.task_folder / f"{c}.json").read_text())["tlvr"] for c in self.train_ids}
        raw = RawDataset.find(self.plans.dataset)
        unlabelled = fold_unlabelled(self.preprocessed / "splits.json", self.config.fold, raw.spec.unlabelled) \
            if self.config.unlabelled_every > 0 else {}
        labels = fold_weak_labels(raw, truth, self.train_ids, self.val_ids, weight=self.config.tlvr_weight,
                                  seed=self.config.seed, unlabelled_ids=list(unlabelled))
        if labels.off_reason is not None:
            self._tlvr_off(labels.off_reason)
            if unlabelled:
                logger.warning("%d unlabelled case(s) not used: they contribute through the TLVR term only, which is "
                               "off", len(unlabelled))
            return
        self.train_tlvr, self.val_tlvr = labels.train, labels.val
        self.tlvr_model, self.tlvr_scores = labels.model, labels.scores
        logger.info("TLVR weight %g", self.config.tlvr_weight)
        if unlabelled:
            self._prepare_unlabelled(unlabelled, labels.unlabelled, tlvr_band_width(truth, labels.train))

    @classmethod
    def liver_checkpoint(cls, config: TrainingConfig) -> Path:
        """The liver model that crops ``config``'s unlabelled cases: ``--liver-model``, else the fold's final liver
        checkpoint of this trainer in the same results root."""
        if config.liver_model:
            return Path(config.liver_model)
        output = cls.output_folder(config)
        return output.parent.parent / f"{cls.__name__}__liver" / output.name / FINAL

    def _prepare_unlabelled(self, cases: dict[str, str], predictions: dict[str, float], width: float) -> None:
        """Load the prepared unlabelled cases and give each its band (clinical prediction +- out-of-fold RMSE)."""
        if self.dist.enabled:
            logger.warning("%d unlabelled case(s) not used: not supported under torchrun yet (each rank would update "
                           "its replica alone); train on one device to use them", len(cases))
            return
        without = [c for c in cases if c not in predictions]
        if without:
            logger.warning("unlabelled case(s) without a clinical row are not used: %s", ", ".join(without[:10]))
        used = {c: s for c, s in cases.items() if c in predictions}
        clash = sorted(set(used) & set(self.train_ids + self.val_ids))
        if clash:
            raise SmoothSegError(f"unlabelled case(s) {', '.join(clash[:10])} are also training or validation cases of "
                                 f"fold {self.config.fold}; an unlabelled case must be another patient "
                                 "(smoothseg_verify_dataset reports it)")
        if self.resumed_data_use is not None and sorted(self.resumed_data_use.get("unlabelled", {})) != sorted(used):
            raise SmoothSegError(f"--c: {self.output} was trained with unlabelled cases "
                                 f"{sorted(self.resumed_data_use.get('unlabelled', {})) or 'none'}, now "
                                 f"{sorted(used) or 'none'}; continue with the same cases (or --unlabelled-every 0 "
                                 "for a run that had none), or train again with --overwrite")
        liver = self.liver_checkpoint(self.config)
        if used and not liver.is_file():
            raise SmoothSegError(f"{len(used)} unlabelled case(s) need the fold's liver model to crop them, and "
                                 f"{liver} does not exist: train the liver model of fold {self.config.fold} first "
                                 "(or pass --liver-model, or --unlabelled-every 0 to leave them out)")
        self.unlabelled = load_prepared(cache_folder(self.preprocessed, liver, self.plan.content_hash()), used) \
            if used else []
        for case in self.unlabelled:
            case.clinical_tlvr = predictions[case.case_id]
            case.low, case.high = band(case.clinical_tlvr, width)
        if self.unlabelled:
            logger.info("%d unlabelled case(s) (knowledge term only, a whole-liver step every %d iterations; band "
                        "+-%.4f, the regression's out-of-fold RMSE), cropped by %s", len(self.unlabelled),
                        self.config.unlabelled_every, width, liver)


def _epoch_seed(seed: int, epoch: int, *rank: int) -> int:
    """The data seed of one epoch, from the run's seed, the epoch number and (in a torchrun job) the rank only."""
    return int(np.random.SeedSequence([int(seed), int(epoch), *map(int, rank)]).generate_state(1)[0])


def train(config: TrainingConfig, device: torch.device | None = None) -> Path:
    """Build the selected trainer for ``config`` and run it (training only; :mod:`smoothseg.workflows.training`
    validates the fold afterwards)."""
    if config.task not in TASKS:
        raise SmoothSegError(f"unknown configuration '{config.task}'; available: {', '.join(TASKS)}")
    return get_trainer_class(config.trainer)(config, device).run()

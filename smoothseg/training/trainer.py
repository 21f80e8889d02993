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
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from smoothseg.atomic import write_json
from smoothseg.errors import SmoothSegError
from smoothseg.network.segresnet_vae import SegResNetVAE
from smoothseg.paths import find_dataset, preprocessed_root, results_root
from smoothseg.planning.plans import TASKS, ConfigurationPlan, Plans
from smoothseg.preprocessing.normalization import normalize_ct
from smoothseg.training.augmentation import default_num_workers, make_augmenter, training_transforms
from smoothseg.training.checkpoint import git_hash, load_checkpoint, save_checkpoint
from smoothseg.training.data_loader import PatchLoader, SamplingConfig
from smoothseg.training.losses import DiceCELoss, SmoothSegLoss
from smoothseg.training.progress import ProgressLog

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


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA, then MPS, then CPU; an explicit device that is missing is a clear error."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise SmoothSegError("-device cuda was requested but no CUDA GPU is available to torch "
                             f"(torch {torch.__version__}, CUDA build: {torch.version.cuda}); use -device cpu")
    if name == "mps" and not (getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()):
        raise SmoothSegError("-device mps was requested but the Apple MPS backend is not available; use -device cpu")
    if name not in ("cuda", "cpu", "mps"):
        raise SmoothSegError(f"unknown device '{name}'; use auto, cuda, cpu or mps")
    return torch.device(name)


@dataclass
class TrainingConfig:
    """Run settings (CLI flags). Plans hold everything about data and network."""

    dataset: str
    task: str
    fold: str  # "0".."k-1" or "all"
    trainer: str = "SmoothSegTrainer"
    device: str = "auto"
    epochs: int = 1000
    iters_per_epoch: int = 250
    val_iters: int = 50
    optimizer: str = "adamw"  # "adamw" (SegResNetVAE's recipe) or "sgd" (nnU-Net's)
    initial_lr: float | None = None  # None: DEFAULT_LR[optimizer]
    weight_decay: float = 3e-5
    momentum: float = 0.99  # SGD only
    batch_dice: bool = True
    grad_clip: float = 12.0
    vae_weight: float = 0.1
    tlvr_weight: float = 0.5
    oversample_foreground: float = 0.33
    mask_jitter_mm: float = 5.0
    patience: int | None = None
    compile: bool = False
    num_workers: int | None = None
    seed: int = 0
    continue_training: bool = False
    validate: bool = True  # run the cascade on the fold's validation cases once both tasks are trained


#: Initial learning rate of each optimizer when none is given (poly decay to 0 over the run).
DEFAULT_LR = {"adamw": 1e-3, "sgd": 1e-2}


def build_optimizer(parameters, config: TrainingConfig) -> torch.optim.Optimizer:
    """AdamW (default; Myronenko 2018 trains SegResNetVAE with Adam and poly decay) or SGD with Nesterov momentum
    (nnU-Net). On the demo dataset, the tumour class appears after ~100 AdamW iterations and only after several
    hundred SGD iterations (documentation/benchmarks.md)."""
    lr = initial_lr(config)
    if config.optimizer == "adamw":
        return torch.optim.AdamW(parameters, lr=lr, weight_decay=config.weight_decay)
    return torch.optim.SGD(parameters, lr=lr, momentum=config.momentum, nesterov=True,
                           weight_decay=config.weight_decay)


def initial_lr(config: TrainingConfig) -> float:
    """``config.initial_lr``, or the optimizer's default; an unknown optimizer is an error."""
    if config.optimizer not in DEFAULT_LR:
        raise SmoothSegError(f"unknown optimizer '{config.optimizer}'; choose from {', '.join(DEFAULT_LR)}")
    return float(config.initial_lr) if config.initial_lr is not None else DEFAULT_LR[config.optimizer]


def build_network(plan: ConfigurationPlan) -> SegResNetVAE:
    net = plan.network
    return SegResNetVAE(in_channels=1, out_channels=plan.num_classes, input_image_size=plan.patch_size,
                        init_filters=net.init_filters, blocks_down=net.blocks_down, blocks_up=net.blocks_up,
                        norm=net.norm, dropout=net.dropout, vae=True, vae_nz=net.vae_nz,
                        vae_estimate_std=net.vae_estimate_std)


def outside_fill_value(plan: ConfigurationPlan) -> float:
    """The normalised intensity written outside the liver mask: the window's lower bound."""
    return float(normalize_ct(np.array([plan.window.lower], dtype=np.float32), plan.window)[0])


class Trainer:
    """Plain segmentation trainer: Dice + cross-entropy, plus the SegResNetVAE's VAE term (weight 0.1)."""

    uses_tlvr = False

    def __init__(self, config: TrainingConfig):
        self.config = config
        self.name = type(self).__name__
        self.preprocessed = find_dataset(config.dataset, preprocessed_root())
        self.plans = Plans.load(self.preprocessed / "plans.json")
        if config.task not in self.plans.configurations:
            raise SmoothSegError(f"no configuration '{config.task}' in {self.preprocessed / 'plans.json'}; "
                                 f"available: {', '.join(self.plans.configurations)}")
        self.plan = self.plans[config.task]
        self.task_folder = self.preprocessed / config.task
        self.train_ids, self.val_ids = self._split()
        missing = [c for c in self.train_ids + self.val_ids if not (self.task_folder / f"{c}.json").exists()]
        if missing:
            raise SmoothSegError(f"{len(missing)} case(s) of fold {config.fold} are not preprocessed for "
                                 f"'{config.task}' ({', '.join(missing[:5])}); run smoothseg_plan_and_preprocess "
                                 f"-d {config.dataset} -c {config.task}")
        self.output = results_root() / self.preprocessed.name / f"{self.name}__{config.task}" / f"fold_{config.fold}"
        self.device = resolve_device(config.device)
        self.amp = self.device.type == "cuda"
        torch.manual_seed(config.seed)  # the initial weights depend on --seed only, not on what ran before
        self.network = build_network(self.plan).to(self.device)
        self.optimizer = build_optimizer(self.network.parameters(), config)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp)
        self.progress = ProgressLog()
        self.start_epoch = 0
        self.ema_dice: float | None = None
        self.best_ema = -1.0
        self.epochs_since_best = 0
        self.train_tlvr: dict[str, float] = {}
        self.val_tlvr: dict[str, float] = {}
        self.tlvr_model: dict[str, Any] | None = None
        self.tlvr_scores: dict[str, float] | None = None
        self.loss_fn = self.build_loss()

    # -- set-up ---------------------------------------------------------------------------------------------------
    def _split(self) -> tuple[list[str], list[str]]:
        splits_path = self.preprocessed / "splits.json"
        if not splits_path.is_file():
            raise SmoothSegError(f"{splits_path} not found; run smoothseg_plan_and_preprocess first")
        splits = json.loads(splits_path.read_text())["splits"]
        fold = self.config.fold
        if fold == "all":
            ids = sorted({c for s in splits for c in s["train"] + s["val"]})
            return ids, ids
        if not str(fold).isdigit() or int(fold) >= len(splits):
            raise SmoothSegError(f"fold {fold} does not exist in {splits_path}; available: "
                                 f"{', '.join(str(i) for i in range(len(splits)))} or all")
        split = splits[int(fold)]
        return list(split["train"]), list(split["val"])

    def build_loss(self) -> SmoothSegLoss:
        seg = DiceCELoss(self.plan.num_classes, batch_dice=self.config.batch_dice)
        return SmoothSegLoss(seg, vae_weight=self.config.vae_weight, tlvr_weight=self.effective_tlvr_weight())

    def effective_tlvr_weight(self) -> float:
        return 0.0

    def prepare_knowledge(self) -> None:
        """Hook for trainers that use clinical knowledge; the plain trainer uses none."""
        logger.info("%s: no TLVR term (plain segmentation trainer)", self.name)

    def _loader(self, ids: list[str], tlvr: dict[str, float], seed: int, train: bool):
        fill = outside_fill_value(self.plan)
        sampling = SamplingConfig(self.plan.patch_size, self.plan.batch_size,
                                  oversample_foreground=self.config.oversample_foreground,
                                  mask_outside_liver=self.plan.crop == "liver",
                                  mask_jitter_mm=self.config.mask_jitter_mm if train else 0.0, fill_value=fill)
        workers = self.config.num_workers if self.config.num_workers is not None else default_num_workers()
        workers = workers if train else min(workers, 1)
        loader = PatchLoader(self.task_folder, ids, sampling, tlvr, seed=seed, num_threads=max(workers, 1))
        transforms = training_transforms(self.plan.patch_size, fill, self.plan.mirror_axes) if train else None
        return make_augmenter(loader, transforms, workers, seed)

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
            "git_hash": git_hash(),
        }

    def _resume(self) -> None:
        for name in ("checkpoint_latest.pth", "checkpoint_final.pth"):
            path = self.output / name
            if path.exists():
                break
        else:
            raise SmoothSegError(f"--c: no checkpoint to continue from in {self.output}")
        ckpt = load_checkpoint(path, self.device)
        if ckpt.get("trainer") != self.name or ckpt.get("task") != self.config.task:
            raise SmoothSegError(f"{path} was written by {ckpt.get('trainer')} for '{ckpt.get('task')}', "
                                 f"not {self.name} for '{self.config.task}'")
        saved_optimizer = ckpt.get("config", {}).get("optimizer", "sgd")  # checkpoints before the option were SGD
        if saved_optimizer != self.config.optimizer:
            raise SmoothSegError(f"{path} was trained with --optimizer {saved_optimizer}; continue it with the same "
                                 f"optimizer (got {self.config.optimizer})")
        self.network.load_state_dict(ckpt["network_state"])
        self.optimizer.load_state_dict(ckpt["optimizer_state"])
        self.scaler.load_state_dict(ckpt["scaler_state"])
        self.start_epoch = int(ckpt["epoch"]) + 1
        self.progress = ProgressLog(ckpt["progress"])
        self.progress.truncate(self.start_epoch)
        self.ema_dice, self.best_ema = ckpt["ema_dice"], ckpt["best_ema"]
        self.epochs_since_best = int(ckpt.get("epochs_since_best", 0))
        logger.info("resuming from %s: %d epoch(s) done, continuing at epoch %d of %d", path.name, self.start_epoch,
                    self.start_epoch, self.config.epochs)

    # -- the loop -------------------------------------------------------------------------------------------------
    def lr_at(self, epoch: int) -> float:
        """Poly schedule: ``initial_lr * (1 - epoch / epochs) ** 0.9``."""
        return initial_lr(self.config) * (1 - epoch / self.config.epochs) ** 0.9

    def _autocast(self):
        return torch.autocast("cuda", dtype=torch.float16) if self.amp else nullcontext()

    def _to_device(self, batch: dict) -> tuple[torch.Tensor, ...]:
        data = torch.as_tensor(np.asarray(batch["data"]), dtype=torch.float32).to(self.device, non_blocking=True)
        seg = torch.as_tensor(np.asarray(batch["seg"]), dtype=torch.long).to(self.device, non_blocking=True)
        tlvr = torch.as_tensor(np.asarray(batch["clinical_tlvr"]), dtype=torch.float32).to(self.device)
        cov = torch.as_tensor(np.asarray(batch["liver_coverage"]), dtype=torch.float32).to(self.device)
        return data, seg[:, 0], tlvr, cov

    def train_step(self, batch: dict) -> dict[str, float]:
        data, seg, tlvr, coverage = self._to_device(batch)
        self.optimizer.zero_grad(set_to_none=True)
        with self._autocast():
            logits, vae_loss = self.model_for_training(data)
        total, parts = self.loss_fn(logits.float(), seg, vae_loss=vae_loss.float(), clinical_tlvr=tlvr,
                                    liver_coverage=coverage)
        self.scaler.scale(total).backward()
        self.scaler.unscale_(self.optimizer)
        torch.nn.utils.clip_grad_norm_(self.network.parameters(), self.config.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return parts

    @torch.no_grad()
    def validation_step(self, batch: dict) -> tuple[float, np.ndarray]:
        data, seg, _, _ = self._to_device(batch)
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
        """Train (or continue) to ``config.epochs`` and return the output folder."""
        cfg = self.config
        self.output.mkdir(parents=True, exist_ok=True)
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
        self.prepare_knowledge()
        write_json({"config": asdict(cfg), "trainer": self.name, "plan": self.plans.to_dict()["configurations"][
            cfg.task], "train_cases": self.train_ids, "val_cases": self.val_ids, "device": str(self.device),
            "amp": self.amp, "tlvr_scores": self.tlvr_scores, "git_hash": git_hash()},
            self.output / "run_config.json")
        logger.info("%s on %s fold %s: %d training / %d validation cases, device %s%s, epochs %d-%d", self.name,
                    cfg.task, cfg.fold, len(self.train_ids), len(self.val_ids), self.device,
                    " + AMP" if self.amp else "", self.start_epoch, cfg.epochs - 1)
        self.model_for_training = torch.compile(self.network) if cfg.compile else self.network
        train_aug = self._loader(self.train_ids, self.train_tlvr, cfg.seed + self.start_epoch, train=True)
        val_aug = self._loader(self.val_ids, self.val_tlvr, cfg.seed + 10_000, train=False)
        try:
            for epoch in range(self.start_epoch, cfg.epochs):
                if self._epoch(epoch, train_aug, val_aug):
                    break
        finally:
            for aug in (train_aug, val_aug):
                if hasattr(aug, "_finish"):
                    aug._finish()
        final = self._payload(len(self.progress.series.get("train_loss", [])) - 1)
        save_checkpoint(final, self.output / "checkpoint_final.pth")
        logger.info("training done: %s (best EMA pseudo-Dice %.4f)", self.output / "checkpoint_final.pth",
                    self.best_ema)
        if cfg.validate:
            self.full_validation()
        return self.output

    def full_validation(self) -> Path | None:
        """Predict the fold's validation cases with the full cascade (the tumour stage on the *predicted* liver).

        Runs once both the liver and the tumour model of this fold are final; until then it logs why it waits.
        """
        other = "tumor" if self.config.task == "liver" else "liver"
        other_final = self.output.parent.parent / f"{self.name}__{other}" / self.output.name / "checkpoint_final.pth"
        if self.config.fold == "all":
            logger.info("no full validation for fold 'all' (it has no held-out cases)")
            return None
        if not other_final.exists():
            logger.info("full validation waits for the %s model of fold %s (%s)", other, self.config.fold,
                        other_final)
            return None
        from smoothseg.inference.validation import validate_fold

        return validate_fold(self.preprocessed.name, self.config.fold, trainer=self.name, device=self.config.device)

    def _epoch(self, epoch: int, train_aug, val_aug) -> bool:
        """One epoch of training and validation; returns True when early stopping triggers."""
        cfg = self.config
        t0 = time.time()
        lr = self.lr_at(epoch)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.network.train()
        sums: dict[str, float] = {}
        bar = tqdm(range(cfg.iters_per_epoch), desc=f"epoch {epoch}", unit="it", leave=False)
        for _ in bar:
            parts = self.train_step(next(train_aug))
            for k, v in parts.items():
                sums[k] = sums.get(k, 0.0) + v
            bar.set_postfix(loss=f"{parts['total']:.3f}")
        means = {k: v / cfg.iters_per_epoch for k, v in sums.items()}
        val_losses, stats = [], np.zeros((self.plan.num_classes - 1, 3))
        for _ in range(cfg.val_iters):
            loss, s = self.validation_step(next(val_aug))
            val_losses.append(loss)
            stats += s
        dice_per_class = 2 * stats[:, 0] / np.maximum(2 * stats[:, 0] + stats[:, 1] + stats[:, 2], 1)
        present = (stats[:, 0] + stats[:, 2]) > 0
        pseudo_dice = float(dice_per_class[present].mean()) if present.any() else float("nan")
        if not math.isnan(pseudo_dice):
            self.ema_dice = pseudo_dice if self.ema_dice is None else 0.9 * self.ema_dice + 0.1 * pseudo_dice
        self.progress.log(train_loss=means.get("total", float("nan")), train_seg=means.get("seg", float("nan")),
                          train_vae=means.get("vae", float("nan")), train_tlvr=means.get("tlvr", float("nan")),
                          val_loss=float(np.mean(val_losses)) if val_losses else float("nan"),
                          pseudo_dice=pseudo_dice, ema_pseudo_dice=self.ema_dice if self.ema_dice is not None
                          else float("nan"), lr=lr, epoch_time=time.time() - t0)
        improved = self.ema_dice is not None and self.ema_dice > self.best_ema
        if improved:
            self.best_ema, self.epochs_since_best = self.ema_dice, 0
        else:
            self.epochs_since_best += 1
        payload = self._payload(epoch)
        save_checkpoint(payload, self.output / "checkpoint_latest.pth")
        if improved:
            save_checkpoint(payload, self.output / "checkpoint_best.pth")
        self.progress.plot(self.output / "progress.png")
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
        from smoothseg.dataset.raw_dataset import RawDataset
        from smoothseg.knowledge.tlvr import TLVRRegressor, describe_availability

        if self.config.task != "tumor":
            logger.info("TLVR term off: it regularises the tumor task only")
            return
        if self.config.tlvr_weight == 0:
            logger.info("TLVR term off: --tlvr-weight 0 (ablation)")
            return
        raw = RawDataset.find(self.plans.dataset)
        available, reason = describe_availability(raw.spec, self.config.tlvr_weight)
        if not available:
            self._tlvr_off(reason)
            return
        table = raw.clinical()
        truth = {c: json.loads((self.task_folder / f"{c}.json").read_text())["tlvr"] for c in self.train_ids}
        ids = [c for c in self.train_ids if c in table.index]
        if len(ids) < 3:
            self._tlvr_off(f"only {len(ids)} training case(s) have clinical rows (need 3)")
            return
        target = np.array([truth[c] for c in ids])
        regressor = TLVRRegressor.from_spec(raw.spec)
        oof = regressor.cross_fit(table.loc[ids], target, random_state=self.config.seed)
        self.tlvr_scores = {k: float(v) for k, v in regressor.cross_validated_scores(
            table.loc[ids], target, random_state=self.config.seed).items()}
        regressor.fit(table.loc[ids], target)
        self.tlvr_model = regressor.to_dict()
        self.train_tlvr = {c: float(v) for c, v in oof.items()}
        val_ids = [c for c in self.val_ids if c in table.index]
        if val_ids:
            self.val_tlvr = dict(zip(val_ids, (float(v) for v in regressor.predict(table.loc[val_ids])),
                                     strict=True))
        logger.info("TLVR regression on %d training cases (validation cases never seen): out-of-fold R2 %.3f, "
                    "MAE %.4f (predicting the mean: %.4f); TLVR weight %g", len(ids), self.tlvr_scores["r2"],
                    self.tlvr_scores["mae"], self.tlvr_scores["mae_mean_baseline"], self.config.tlvr_weight)


def train(config: TrainingConfig) -> Path:
    """Build the selected trainer for ``config`` and run it."""
    if config.task not in TASKS:
        raise SmoothSegError(f"unknown configuration '{config.task}'; available: {', '.join(TASKS)}")
    return get_trainer_class(config.trainer)(config).run()


def validate_only(config: TrainingConfig) -> Path:
    """``smoothseg_train ... --val``: the full validation of a finished fold, without training."""
    trainer = get_trainer_class(config.trainer)(config)
    if not (trainer.output / "checkpoint_final.pth").exists():
        raise SmoothSegError(f"--val: {trainer.output} has no checkpoint_final.pth; train this fold first")
    result = trainer.full_validation()
    if result is None:
        raise SmoothSegError("--val needs the final liver and tumor models of this fold (see the log)")
    return result

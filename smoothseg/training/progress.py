"""Training progress: per-epoch metrics kept in memory and in the checkpoint, and ``progress.png``."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import numpy as np

from smoothseg.atomic import atomic_path


class ProgressLog:
    """Per-epoch scalar series (losses and their parts, pseudo-Dice, EMA pseudo-Dice, learning rate, time)."""

    def __init__(self, series: dict[str, list[float]] | None = None):
        self.series: dict[str, list[float]] = defaultdict(list, {k: list(v) for k, v in (series or {}).items()})

    def log(self, **values: float) -> None:
        for key, value in values.items():
            self.series[key].append(float(value))

    def last(self, key: str, default: float = float("nan")) -> float:
        values = self.series.get(key)
        return values[-1] if values else default

    def truncate(self, n_epochs: int) -> None:
        """Keep the first ``n_epochs`` entries of every series (used when resuming)."""
        for key in list(self.series):
            self.series[key] = self.series[key][:n_epochs]

    def to_dict(self) -> dict[str, list[float]]:
        return {k: list(v) for k, v in self.series.items()}

    def plot(self, path: Path) -> Path:
        """Write progress.png: losses (total and parts), pseudo-Dice (raw and EMA), learning rate."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, axes = plt.subplots(3, 1, figsize=(10, 11), sharex=True)
        epochs = np.arange(len(self.series.get("train_loss", [])))
        for key, style in (("train_loss", "b-"), ("val_loss", "r-"), ("train_seg", "b:"), ("train_vae", "c:"),
                           ("train_tlvr", "m:")):
            values = self.series.get(key)
            if values and len(values) == len(epochs):
                axes[0].plot(epochs, values, style, label=key)
        axes[0].set_ylabel("loss")
        axes[0].legend(loc="upper right")
        for key, style in (("ema_pseudo_dice", "k-"),):
            values = self.series.get(key)
            if values and len(values) == len(epochs):
                axes[1].plot(epochs, values, style, label="EMA of the class mean")
        for key, style in zip(sorted(k for k in self.series if k.startswith("pseudo_dice_")), ("b.-", "r.-", "g.-"),
                              strict=False):
            values = self.series[key]
            if len(values) == len(epochs):  # one curve per class: a collapsed class shows as a flat line at 0
                axes[1].plot(epochs, values, style, label=key.replace("pseudo_dice_", ""))
        axes[1].set_ylabel("validation pseudo-Dice per class")
        axes[1].set_ylim(0, 1)
        axes[1].legend(loc="lower right")
        if self.series.get("lr"):
            axes[2].plot(epochs, self.series["lr"], "k-")
        axes[2].set_ylabel("learning rate")
        axes[2].set_xlabel("epoch")
        fig.tight_layout()
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png", dpi=80)
        plt.close(fig)
        return Path(path)

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
        """Write progress.png, one quantity per axis so none hides another: segmentation losses (train, validation);
        the VAE and TLVR terms, each on its own scale; the validation pseudo-Dice of each class (a collapsed class is a
        flat line at 0) with the EMA of their mean; the learning rate and the seconds per epoch."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, axes = plt.subplots(5, 1, figsize=(10, 15), sharex=True)
        epochs = np.arange(len(self.series.get("train_loss", [])))

        def draw(ax, key, style, label=None):
            values = self.series.get(key)
            if values and len(values) == len(epochs) and not np.all(np.isnan(values)):
                ax.plot(epochs, values, style, label=label or key)
                return True
            return False

        for key, style in (("train_loss", "b-"), ("train_seg", "b:"), ("val_loss", "r-")):
            draw(axes[0], key, style)
        axes[0].set_ylabel("loss")
        axes[0].legend(loc="upper right", fontsize="small")
        draw(axes[1], "train_vae", "c-", "VAE term (train)")
        axes[1].set_ylabel("VAE term")
        twin = axes[1].twinx()
        if draw(twin, "train_tlvr", "m-", "TLVR term (train)"):
            twin.set_ylabel("TLVR term", color="m")
        axes[1].legend(loc="upper left", fontsize="small")
        for key, style in zip(sorted(k for k in self.series if k.startswith("pseudo_dice_")), ("b.-", "r.-", "g.-"),
                              strict=False):
            draw(axes[2], key, style, key.replace("pseudo_dice_", ""))
        draw(axes[2], "ema_pseudo_dice", "k-", "EMA of the class mean")
        axes[2].set_ylabel("validation pseudo-Dice")
        axes[2].set_ylim(0, 1)
        axes[2].legend(loc="lower right", fontsize="small")
        draw(axes[3], "lr", "k-", "learning rate")
        axes[3].set_ylabel("learning rate")
        draw(axes[4], "epoch_time", "k.-", "seconds per epoch")
        axes[4].set_ylabel("s / epoch")
        axes[4].set_xlabel("epoch")
        fig.tight_layout()
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png", dpi=80)
        plt.close(fig)
        return Path(path)

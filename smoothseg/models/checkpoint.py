"""Self-describing checkpoints: plain tensors and JSON-able metadata only, loadable with ``weights_only=True``.

A checkpoint holds the network's state_dict, the optimiser and AMP-scaler states, the epoch, the
plans of the configuration, the trainer name, the network's constructor arguments, the fitted TLVR
regressor (as a dict), the training log, and the git hash of the code that wrote it.
"""

from __future__ import annotations

import subprocess
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch

from smoothseg.atomic import atomic_path
from smoothseg.errors import SmoothSegError

CHECKPOINT_NAMES = ("checkpoint_final.pth", "checkpoint_best.pth", "checkpoint_latest.pth")


@lru_cache(maxsize=1)
def git_hash() -> str | None:
    """The commit of the smoothseg source tree, or None outside a git checkout (asked once per process)."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True, text=True,
                             timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def save_checkpoint(payload: dict[str, Any], path: Path) -> Path:
    """Write ``payload`` atomically with ``torch.save``."""
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
    return Path(path)


def load_checkpoint(path: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint with ``weights_only=True`` (no arbitrary code runs), with clear errors."""
    path = Path(path)
    if not path.is_file():
        raise SmoothSegError(f"{path}: checkpoint not found")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch raises several types for corrupt or unsafe files
        raise SmoothSegError(f"{path}: cannot load checkpoint ({type(exc).__name__}: {str(exc)[:300]})") from None

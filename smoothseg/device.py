"""Device resolution: ``auto|cpu|cuda|mps`` -> :class:`torch.device`, once, at the edge (the CLI or the top-level call).

Library functions below the edge take a :class:`torch.device` and never resolve a name again.
"""

from __future__ import annotations

import torch

from smoothseg.errors import SmoothSegError

DEVICE_CHOICES = ("auto", "cpu", "cuda", "mps")


def _mps_available() -> bool:
    return getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()


def resolve_device(name: str | torch.device) -> torch.device:
    """``auto`` picks CUDA, then MPS, then CPU; an explicit device that is missing is a clear error.

    A :class:`torch.device` is returned as it is.
    """
    if isinstance(name, torch.device):
        return name
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if _mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise SmoothSegError("-device cuda was requested but no CUDA GPU is available to torch "
                             f"(torch {torch.__version__}, CUDA build: {torch.version.cuda}); use -device cpu")
    if name == "mps" and not _mps_available():
        raise SmoothSegError("-device mps was requested but the Apple MPS backend is not available; use -device cpu")
    if name not in DEVICE_CHOICES:
        raise SmoothSegError(f"unknown device '{name}'; use {', '.join(DEVICE_CHOICES)}")
    return torch.device(name)

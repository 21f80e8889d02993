"""Device resolution: ``auto|cpu|cuda|mps`` -> :class:`torch.device`, once, at the edge (the CLI or the top-level call).

Library functions below the edge take a :class:`torch.device` and never resolve a name again.
"""

from __future__ import annotations

import contextlib

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


#: Arithmetic of the network's forward (and backward) pass: ``auto`` (the fastest one measured to be safe on the
#: device), ``fp32``, ``bf16`` or ``fp16`` (CUDA only). Reductions, losses and the softmax stay in float32.
PRECISION_CHOICES = ("auto", "fp32", "bf16", "fp16")


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bfloat16 convolutions natively (AVX512-BF16 or AMX); without it oneDNN emulates them
    and bfloat16 is slower than float32."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def autocast_dtype(device: torch.device, precision: str = "auto", *, training: bool = False) -> torch.dtype | None:
    """The autocast dtype for ``precision`` on ``device``, or ``None`` for plain float32.

    ``auto`` is float16 on CUDA (with a gradient scaler in training, as nnU-Net). On a CPU that computes bfloat16
    natively it is bfloat16 for prediction (2x faster per tile on a 2-core AVX512-BF16 VM, documentation/
    benchmarks.md) but float32 for training: oneDNN's bfloat16 convolution backward (torch 2.13) returned NaN
    weight gradients in 1 of 20 random trials of a 16-channel 3x3x3 convolution on 2 x 4 x 4 voxels, and a 4-filter
    network's weights turned NaN within two epochs; ``bf16`` still asks for it explicitly. Elsewhere (MPS, CPUs
    without bfloat16 units) float32.
    """
    if precision not in PRECISION_CHOICES:
        raise SmoothSegError(f"unknown precision '{precision}'; use {', '.join(PRECISION_CHOICES)}")
    if precision == "auto":
        if device.type == "cuda":
            return torch.float16
        native = device.type == "cpu" and cpu_has_native_bf16()
        return torch.bfloat16 if native and not training else None
    if precision == "fp32":
        return None
    if precision == "fp16" and device.type != "cuda":
        raise SmoothSegError(f"--precision fp16 needs a CUDA device (got {device.type}); use bf16 or fp32")
    if device.type not in ("cuda", "cpu"):
        raise SmoothSegError(f"--precision {precision} is not supported on {device.type}; use fp32")
    return torch.bfloat16 if precision == "bf16" else torch.float16


def autocast(device: torch.device, dtype: torch.dtype | None):
    """The autocast context for ``dtype`` on ``device`` (a no-op context for float32)."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def precision_name(dtype: torch.dtype | None) -> str:
    return {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[dtype]

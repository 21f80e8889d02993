"""Mixed precision: which autocast dtype each device gets, and that bf16 / channels-last prediction is the same
prediction as float32 up to bfloat16 rounding."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from inference_helpers import make_model_pair

from smoothseg import device as device_module
from smoothseg.device import autocast_dtype, precision_name
from smoothseg.errors import SmoothSegError
from smoothseg.inference.predictor import StagePredictor

CPU = torch.device("cpu")
CUDA = torch.device("cuda")  # a device object only: nothing runs on it


@pytest.mark.parametrize("native", [True, False])
def test_auto_precision_per_device(monkeypatch: pytest.MonkeyPatch, native: bool) -> None:
    monkeypatch.setattr(device_module, "cpu_has_native_bf16", lambda: native)
    assert autocast_dtype(CUDA, "auto") is torch.float16
    assert autocast_dtype(CPU, "auto") is (torch.bfloat16 if native else None)
    assert autocast_dtype(torch.device("mps"), "auto") is None
    assert autocast_dtype(CPU, "fp32") is None and autocast_dtype(CUDA, "fp32") is None
    assert autocast_dtype(CPU, "bf16") is torch.bfloat16
    assert precision_name(autocast_dtype(CUDA, "auto")) == "fp16"
    # Training: fp16 on CUDA, but float32 on every CPU (oneDNN's bf16 convolution backward can return NaN).
    assert autocast_dtype(CUDA, "auto", training=True) is torch.float16
    assert autocast_dtype(CPU, "auto", training=True) is None
    assert autocast_dtype(CPU, "bf16", training=True) is torch.bfloat16


def test_impossible_precisions_are_refused_clearly() -> None:
    with pytest.raises(SmoothSegError, match="fp16 needs a CUDA device"):
        autocast_dtype(CPU, "fp16")
    with pytest.raises(SmoothSegError, match="unknown precision 'half'"):
        autocast_dtype(CPU, "half")
    with pytest.raises(SmoothSegError, match="not supported on mps"):
        autocast_dtype(torch.device("mps"), "bf16")


def test_bf16_channels_last_prediction_matches_fp32(tmp_path: Path) -> None:
    """The same checkpoint predicted in float32 and in bf16 channels-last: probabilities within bfloat16 rounding
    (its 8-bit mantissa: ~1e-2 relative per layer), valid distributions, and the network really is channels-last."""
    torch.manual_seed(0)
    pair = make_model_pair(tmp_path)
    fp32 = StagePredictor(pair.checkpoints("liver"), device="cpu", precision="fp32")
    bf16 = StagePredictor(pair.checkpoints("liver"), device="cpu", precision="bf16")
    assert fp32.autocast_dtype is None and bf16.autocast_dtype is torch.bfloat16
    conv = next(m for m in bf16.networks[0].modules() if isinstance(m, torch.nn.Conv3d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last_3d)
    data = np.random.default_rng(0).normal(size=(1, 20, 40, 36)).astype(np.float32)
    p32, p16 = fp32.predict_preprocessed(data), bf16.predict_preprocessed(data)
    assert p16.dtype == np.float32 and p16.shape == p32.shape
    np.testing.assert_allclose(p16.sum(0), 1.0, atol=1e-5)
    assert np.abs(p16 - p32).max() < 0.05
    assert np.abs(p16 - p32).max() > 0  # bf16 really ran: float32 would be identical

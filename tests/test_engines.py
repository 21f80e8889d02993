"""Inference engines (torch, OpenVINO, ONNX Runtime) and the tumour stage's skipped tiles, on tiny trained models.

The engines must give the torch path's label maps up to floating-point ties; the converted OpenVINO model is cached
on disk and read back; tiles of the tumour crop without liver are not run and change no label.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from cli_helpers import run_cli
from inference_helpers import train_tiny_pair, use_home

from smoothseg.dataset.io import read_image
from smoothseg.errors import SmoothSegError
from smoothseg.inference import engines
from smoothseg.inference.cascade import CascadePredictor, ModelOptions
from smoothseg.inference.engines import LARGE_TILE_ELEMENTS, engine_dtype, resolve_engine
from smoothseg.inference.predictor import StagePredictor
from smoothseg.models.store import select_models

pytest.importorskip("openvino")  # installed by the test extra; a user without [cpu-fast] never reaches this code
pytest.importorskip("onnxruntime")

CPU = torch.device("cpu")
DATASET = "Dataset900_SyntheticLiver"


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, demo_dataset_pristine: Path) -> Path:
    return train_tiny_pair(tmp_path_factory.mktemp("engines") / "home", demo_dataset_pristine)


@pytest.fixture
def home(trained: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    yield from use_home(trained, monkeypatch)


def _test_images(home: Path) -> list[Path]:
    return sorted((home / "raw" / DATASET / "imagesTs").glob("*_0000.nii.gz"))


def _cascade(engine: str, precision: str = "fp32") -> CascadePredictor:
    return CascadePredictor.from_models(select_models("900"), ModelOptions(
        device=CPU, engine=engine, precision=precision, active_contour="off", min_lesion_volume_ml=0.0,
        tumor_threshold="argmax"))


def _outputs(cascade: CascadePredictor, path: Path):
    image, geometry = read_image(path)
    return cascade.network_outputs(image, geometry, tumour_probability=True)


# -- choosing an engine ----------------------------------------------------------------------------------------------

def test_auto_picks_openvino_for_large_tiles_on_a_cpu_and_torch_otherwise(monkeypatch) -> None:
    assert resolve_engine("auto", CPU, LARGE_TILE_ELEMENTS) == "openvino"
    assert resolve_engine("auto", CPU, LARGE_TILE_ELEMENTS - 1) == "torch"
    assert resolve_engine("auto", torch.device("cuda"), 10 * LARGE_TILE_ELEMENTS) == "torch"
    monkeypatch.setattr(engines, "engine_installed", lambda engine: engine == "torch")
    assert resolve_engine("auto", CPU, 10 * LARGE_TILE_ELEMENTS) == "torch"
    with pytest.raises(SmoothSegError, match=r'needs the .openvino. package: pip install "smoothseg\[cpu-fast\]"'):
        resolve_engine("openvino", CPU)


def test_impossible_engines_are_refused_clearly() -> None:
    with pytest.raises(SmoothSegError, match="--engine openvino runs on the CPU"):
        resolve_engine("openvino", torch.device("cuda"))
    with pytest.raises(SmoothSegError, match="unknown engine 'tensorrt'"):
        resolve_engine("tensorrt", CPU)
    with pytest.raises(SmoothSegError, match="onnxruntime computes in float32 only"):
        engine_dtype("onnxruntime", CPU, "bf16")
    assert engine_dtype("onnxruntime", CPU, "auto") is None
    assert engine_dtype("openvino", CPU, "fp32") is None
    with pytest.raises(SmoothSegError, match="unknown engine"):
        ModelOptions(engine="tensorrt")


# -- the same label maps ---------------------------------------------------------------------------------------------

def test_openvino_and_onnxruntime_give_torchs_label_maps_up_to_ties(home: Path) -> None:
    cascades = {engine: _cascade(engine) for engine in ("torch", "openvino", "onnxruntime")}
    assert {engine: c.tumor.engine for engine, c in cascades.items()} == {e: e for e in cascades}
    assert cascades["openvino"].model_info["engines"] == {"liver": "openvino", "tumor": "openvino"}
    assert all(not isinstance(r, torch.nn.Module) for r in cascades["openvino"].tumor.runners)
    for path in _test_images(home):
        reference = _outputs(cascades["torch"], path)
        assert np.isin(reference.labels, (1, 2)).any(), path  # the comparison is about something
        for engine in ("openvino", "onnxruntime"):
            other = _outputs(cascades[engine], path)
            assert np.mean(other.labels != reference.labels) <= 1e-4, (engine, path)
            # where both call it liver (a boundary voxel at a liver tie has P(tumour) 0 on one side)
            both = (other.labels > 0) & (reference.labels > 0)
            difference = np.abs(other.tumour_probability - reference.tumour_probability)[both]
            assert difference.max() < 1e-4, (engine, path, difference.max())


def test_openvino_bf16_follows_the_precision_flag(home: Path) -> None:
    stage = StagePredictor(select_models("900").checkpoints("tumor"), device=CPU, engine="openvino", precision="bf16")
    assert stage.dtype is torch.bfloat16 and stage.autocast_dtype is None and not stage.channels_last
    assert stage.runners[0]._config["INFERENCE_PRECISION_HINT"] == "bf16"
    fp32 = StagePredictor(select_models("900").checkpoints("tumor"), device=CPU, engine="openvino", precision="fp32")
    assert fp32.runners[0]._config["INFERENCE_PRECISION_HINT"] == "f32"


def test_the_converted_model_is_cached_and_read_back(home: Path, monkeypatch, caplog) -> None:
    checkpoints = select_models("900").checkpoints("tumor")
    data = np.random.default_rng(0).normal(size=(1, 20, 40, 36)).astype(np.float32)
    first = StagePredictor(checkpoints, device=CPU, engine="openvino", precision="fp32")
    expected = first.predict_preprocessed(data)
    cached = sorted((home / "cache" / "openvino").glob("*.xml"))
    assert cached and all(p.with_suffix(".bin").is_file() for p in cached)
    assert first.runners[0].cache_path((first.tile_batch_size, 1, 16, 32, 32)) in cached  # 8 tiles, full batches

    def no_conversion(self, shape):
        raise AssertionError("converted again although the cache holds the model")

    with monkeypatch.context() as patched:
        patched.setattr(engines.OpenVinoNetwork, "_convert", no_conversion)
        second = StagePredictor(checkpoints, device=CPU, engine="openvino", precision="fp32")
        np.testing.assert_array_equal(second.predict_preprocessed(data), expected)

    for path in cached:
        path.write_text("<not a model")  # a damaged cache entry: converted again, with a warning
    third = StagePredictor(checkpoints, device=CPU, engine="openvino", precision="fp32")
    with caplog.at_level(logging.WARNING, logger="smoothseg.inference.engines"):
        np.testing.assert_allclose(third.predict_preprocessed(data), expected, atol=1e-6)
    assert "unreadable" in caplog.text


# -- tiles without liver ---------------------------------------------------------------------------------------------

class _CountingRunner:
    def __init__(self, runner) -> None:
        self.runner, self.tiles = runner, 0

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        self.tiles += batch.shape[0]
        return self.runner(batch)


def test_tumour_tiles_without_liver_are_skipped_and_change_no_label(home: Path, monkeypatch) -> None:
    """An L-shaped liver (the reference liver's lowest quarter of slices plus a column in one corner, so its box is the
    whole liver's): the crop's empty part holds tiles without liver, which are not run; the liver, tumour and
    P(tumour) are those of running every tile."""
    options = ModelOptions(device=CPU, engine="torch", precision="fp32", active_contour="off",
                           min_lesion_volume_ml=0.0, tumor_threshold="argmax")
    skipping = CascadePredictor.from_models(select_models("900"), options)
    everything = CascadePredictor.from_models(select_models("900"), options)
    original = StagePredictor.predict_preprocessed
    monkeypatch.setattr(everything.tumor, "predict_preprocessed", lambda data, region=None: original(
        everything.tumor, data, None))
    counters = {}
    for name, cascade in (("skipping", skipping), ("everything", everything)):
        counters[name] = _CountingRunner(cascade.tumor.runners[0])
        cascade.tumor.runners = [counters[name]]
    for path in _test_images(home):
        image, geometry = read_image(path)
        reference, _ = read_image(home / "raw" / DATASET / "labelsTs" / path.name.replace("_0000", ""))
        liver = reference > 0
        box = np.argwhere(liver)
        quarter = box.min(0) + (box.max(0) - box.min(0)) // 4
        keep = np.zeros_like(liver)
        keep[:quarter[0] + 1] = True
        keep[:, :quarter[1] + 1, :quarter[2] + 1] = True
        liver &= keep
        results = [cascade._tumour_stage(image, geometry, liver, with_probability=True)
                   for cascade in (skipping, everything)]
        for a, b in zip(*results, strict=True):
            np.testing.assert_allclose(a, b, atol=1e-6)
    assert 0 < counters["skipping"].tiles < counters["everything"].tiles, counters


# -- the command line ------------------------------------------------------------------------------------------------

def test_predict_cli_engine_flag(home: Path, tmp_path: Path) -> None:
    image = _test_images(home)[0]
    labels = {}
    for engine in ("torch", "openvino"):
        out = tmp_path / engine
        result = run_cli("predict", "-i", str(image), "-o", str(out), "-device", "cpu", "--engine", engine,
                         "--precision", "fp32", "-npp", "0", "-nps", "0", home=home)
        assert result.returncode == 0, result.stderr
        case = image.name.replace("_0000.nii.gz", "")
        labels[engine], _ = read_image(out / f"{case}.nii.gz")
        report = json.loads((out / f"{case}_report.json").read_text())
        assert report["model"]["engine"] == engine, report["model"]
    assert np.mean(labels["torch"] != labels["openvino"]) <= 1e-4
    refused = run_cli("predict", "-i", str(image), "-o", str(tmp_path / "x"), "-device", "cpu", "--engine",
                      "onnxruntime", "--precision", "bf16", home=home)
    assert refused.returncode != 0
    assert "onnxruntime computes in float32 only" in refused.stderr and "Traceback" not in refused.stderr

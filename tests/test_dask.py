"""Cohort prediction on a 2-worker local Dask cluster: the serial run's label maps, voxel for voxel; a corrupt case
fails alone; one summary; a re-run with --continue skips what is done."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from cli_helpers import run_cli
from inference_helpers import make_constant, make_model_pair

from smoothseg.dataset.io import Geometry, read_image, write_image
from smoothseg.errors import SmoothSegError
from smoothseg.inference.cascade import ModelOptions
from smoothseg.inference.cohort import CohortOptions, predict
from smoothseg.inference.dask_cohort import DaskSettings, _client, predict_on_dask
from smoothseg.paths import using_roots

pytest.importorskip("dask.distributed")


@pytest.fixture
def cohort(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path]:
    """Untrained models (the liver model says "liver" everywhere) and 3 CTs plus one truncated file."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # the Dask workers inherit it: same kernels as the serial run
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    results = tmp_path / "home" / "results"
    pair = make_model_pair(results)
    for checkpoint in pair.checkpoints("liver"):
        make_constant(checkpoint, [-5.0, 5.0])
    inputs = tmp_path / "in"
    rng = np.random.default_rng(0)
    for i in range(3):
        image = (rng.normal(60, 40, (16 + 4 * i, 36, 40))).astype(np.int16)
        write_image(image, Geometry((1.5, 1.5, 4.0), (0.0, 0.0, 0.0)), inputs / f"case{i}_0000.nii.gz")
    good = (inputs / "case0_0000.nii.gz").read_bytes()
    (inputs / "broken_0000.nii.gz").write_bytes(good[: len(good) // 2])
    yield inputs, results
    torch.set_num_threads(threads)


def test_dask_predicts_what_the_serial_run_predicts(cohort: tuple[Path, Path], tmp_path: Path) -> None:
    inputs, results = cohort
    dataset = results.iterdir().__next__().name
    models = ModelOptions(device=torch.device("cpu"), step_size=1.0)
    with using_roots(results=results):
        serial = predict(inputs, tmp_path / "serial", dataset=dataset, models=models,
                         options=CohortOptions(num_processes_preprocessing=0, num_processes_postprocessing=0,
                                               progress=False))
        on_dask = predict_on_dask(inputs, tmp_path / "dask", DaskSettings(workers=2), dataset=dataset, models=models,
                                  options=CohortOptions(progress=False))
    assert [(c.case_id, c.status) for c in on_dask.cases] == [(c.case_id, c.status) for c in serial.cases]
    statuses = {c.case_id: c.status for c in on_dask.cases}
    assert statuses == {"broken": "failed", "case0": "ok", "case1": "ok", "case2": "ok"}
    broken = next(c for c in on_dask.cases if c.case_id == "broken")
    assert "broken_0000.nii.gz" in broken.message
    for i in range(3):
        a, ga = read_image(tmp_path / "serial" / f"case{i}.nii.gz")
        b, gb = read_image(tmp_path / "dask" / f"case{i}.nii.gz")
        assert ga == gb
        np.testing.assert_array_equal(a, b)
    summary = json.loads((tmp_path / "dask" / "summary.json").read_text())
    assert (summary["n_ok"], summary["n_failed"]) == (3, 1) and summary["runner"]["dask_workers"] == 2
    assert len((tmp_path / "dask" / "report.csv").read_text().splitlines()) == 4
    with using_roots(results=results):
        again = predict_on_dask(inputs, tmp_path / "dask", DaskSettings(workers=2), dataset=dataset, models=models,
                                options=CohortOptions(progress=False, continue_prediction=True))
    assert {c.case_id: c.status for c in again.cases} == {"broken": "failed", "case0": "skipped",
                                                           "case1": "skipped", "case2": "skipped"}


def test_dask_flags_without_dask_say_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "dask", None)
    with pytest.raises(SmoothSegError, match=r"need Dask: pip install -e \".\[cluster\]\""):
        _client(DaskSettings(workers=1))
    with pytest.raises(SmoothSegError, match="either --dask-workers"):
        DaskSettings(workers=2, scheduler="tcp://x:8786")


def test_predict_cli_with_dask_workers(cohort: tuple[Path, Path], tmp_path: Path) -> None:
    inputs, results = cohort
    out = tmp_path / "cli"
    result = run_cli("predict", "-i", str(inputs), "-o", str(out), "-device", "cpu", "--step-size", "1",
                     "--dask-workers", "2", home=results.parent)
    assert result.returncode == 1, result.stderr  # the broken case fails, the others are written
    assert "broken_0000.nii.gz" in result.stderr and "Traceback" not in result.stderr
    assert sorted(p.name for p in out.glob("case*.nii.gz")) == ["case0.nii.gz", "case1.nii.gz", "case2.nii.gz"]

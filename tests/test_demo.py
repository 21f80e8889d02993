"""The demo, end to end, as a real process on tiny settings: every step runs and its outputs are right."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from cli_helpers import run_cli

from smoothseg.dataset.io import read_image
from smoothseg.workflows.demo import DemoSettings, demo_settings, with_overrides

TINY = ["--cases", "8", "--liver-epochs", "3", "--tumor-epochs", "2", "--iters-per-epoch", "8", "--val-iters", "1",
        "--num-workers", "0", "-np", "1"]


def _chance_dice(pred: np.ndarray, ref: np.ndarray) -> float:
    """Expected Dice of a random mask with the prediction's volume against the reference: 2pq / (p + q)."""
    p, q = pred.mean(), ref.mean()
    return 2 * p * q / (p + q) if p + q else 0.0


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory: pytest.TempPathFactory):
    home = tmp_path_factory.mktemp("demo_home")
    workdir = home / "work"
    result = run_cli("demo", "--quick", "--device", "cpu", "--workdir", str(workdir), *TINY, home=home, timeout=900)
    return result, workdir


def test_demo_quick_runs_every_step_and_writes_correct_outputs(demo_run) -> None:
    result, workdir = demo_run
    assert result.returncode == 0, result.stderr[-3000:]
    run_dir = workdir / "cpu-quick"
    raw = workdir / "raw" / "Dataset900_SyntheticLiver"
    images = sorted((raw / "imagesTs").glob("*_0000.nii.gz"))
    assert len(images) == 2
    liver_dice, chance = [], []
    for image_path in images:
        case = image_path.name.replace("_0000.nii.gz", "")
        label, label_geometry = read_image(run_dir / "predictions" / f"{case}.nii.gz")
        image, geometry = read_image(image_path)
        assert label.shape == image.shape and label_geometry == geometry  # size, spacing, origin, direction
        assert set(np.unique(label)) <= {0, 1, 2}
        reference = read_image(raw / "labelsTs" / f"{case}.nii.gz")[0]
        liver_labels = json.loads((raw / "dataset.json").read_text())["task_regions"]["liver"]
        pred_liver, ref_liver = label > 0, np.isin(reference, liver_labels)
        liver_dice.append(2 * (pred_liver & ref_liver).sum() / (pred_liver.sum() + ref_liver.sum()))
        chance.append(_chance_dice(pred_liver, ref_liver))
        report = json.loads((run_dir / "predictions" / f"{case}_report.json").read_text())
        assert report["case_id"] == case
    summary = json.loads((run_dir / "evaluation" / "summary.json").read_text())
    assert summary["n_cases"] == 2
    mean_dice = summary["metrics"]["liver_dice"]["mean_per_case"]
    assert mean_dice == pytest.approx(float(np.mean(liver_dice)), abs=1e-6)
    # Even 24 iterations put the liver far above a random mask of the same volume.
    assert mean_dice > 2 * float(np.mean(chance)) and mean_dice > 0.2
    demo = json.loads((run_dir / "demo.json").read_text())
    assert demo["metrics"]["liver_dice"] == pytest.approx(mean_dice)
    assert demo["settings"]["liver_epochs"] == 3 and demo["settings"]["n_cases"] == 8
    for task in ("liver", "tumor"):
        model = run_dir / "results" / "Dataset900_SyntheticLiver" / f"SmoothSegTrainer__{task}" / "fold_0"
        assert (model / "checkpoint_final.pth").is_file() and (model / "progress.png").is_file()
    # the overlays show the best and the worst case by the metric the evaluation chose, and they exist as PNGs
    overlays = {o["role"]: o for o in summary["overlays"]}
    metric = overlays["best"]["metric"]
    scores = {row["case_id"]: row[metric] for row in summary["cases"] if row[metric] is not None}
    assert overlays["best"]["value"] == pytest.approx(max(scores.values()))
    assert overlays["worst"]["value"] == pytest.approx(min(scores.values()))
    for overlay in overlays.values():
        assert Path(overlay["file"]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    out = result.stdout
    assert "| " in out and "Dice per case (mean): liver" in out and str(run_dir / "predictions") in out
    # the verdict printed is the one demo.json records, computed from the bar
    met = all(demo["metrics"][k] is not None and demo["metrics"][k] >= v for k, v in demo["quality_bar"].items())
    assert demo["meets_quality_bar"] is met
    verdict = "Quality bar (liver >= 0.90, tumor >= 0.50, per-case mean): met." if met else \
        "Quality bar (liver >= 0.90, tumor >= 0.50): not expected from a --quick run"
    assert verdict in out


def test_demo_rerun_reuses_data_and_trained_models(demo_run) -> None:
    result, workdir = demo_run
    assert result.returncode == 0, result.stderr[-3000:]
    checkpoint = (workdir / "cpu-quick" / "results" / "Dataset900_SyntheticLiver" / "SmoothSegTrainer__liver" /
                  "fold_0" / "checkpoint_final.pth")
    before = checkpoint.stat().st_mtime_ns
    again = run_cli("demo", "--quick", "--device", "cpu", "--workdir", str(workdir), *TINY, home=workdir.parent,
                    timeout=900)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "already trained with these settings" in again.stdout
    assert checkpoint.stat().st_mtime_ns == before


def test_demo_refuses_too_few_cases(tmp_path: Path) -> None:
    result = run_cli("demo", "--quick", "--device", "cpu", "--workdir", str(tmp_path / "w"), "--cases", "4",
                     home=tmp_path)
    assert result.returncode == 2
    assert "at least 8 synthetic cases" in result.stderr and "Traceback" not in result.stderr


def test_settings_are_sized_to_the_device() -> None:
    cpu, quick, cuda = demo_settings("cpu"), demo_settings("cpu", quick=True), demo_settings("cuda")
    assert quick.iterations("tumor") < cpu.iterations("tumor") < cuda.iterations("tumor")
    assert cpu.gpu_memory_target_gb < cuda.gpu_memory_target_gb
    assert demo_settings("mps") == cpu
    changed = with_overrides(cpu, n_cases=10, tumor_epochs=None)
    assert isinstance(changed, DemoSettings) and changed.n_cases == 10 and changed.tumor_epochs == cpu.tumor_epochs


def test_the_readme_python_api_runs_as_shown_after_the_demo(demo_run, tmp_path: Path) -> None:
    """The README's Python snippet, run as a user would after the demo, with the roots the demo printed."""
    import os
    import re
    import subprocess
    import sys

    result, workdir = demo_run
    assert result.returncode == 0, result.stderr[-3000:]
    exports = dict(re.findall(r"^export (SMOOTHSEG_\w+)=(\S+)$", result.stdout, flags=re.MULTILINE))
    assert set(exports) == {"SMOOTHSEG_RAW", "SMOOTHSEG_PREPROCESSED", "SMOOTHSEG_RESULTS"}
    assert exports["SMOOTHSEG_RESULTS"] == str(workdir / "cpu-quick" / "results")
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    section = readme[readme.index("## Python API"):]
    snippet = re.search(r"```python\n(.*?)```", section, flags=re.DOTALL).group(1)
    snippet += "\nassert result.labels.shape == ct.shape and set(result.labels.ravel().tolist()) <= {0, 1, 2}\n"
    env = {k: v for k, v in os.environ.items() if not k.startswith("SMOOTHSEG_")}
    env.update(exports)
    env["SMOOTHSEG_HOME"] = str(tmp_path / "elsewhere")  # the exports alone must be enough
    run = subprocess.run([sys.executable, "-c", snippet], capture_output=True, text=True, env=env, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "case" in run.stdout.lower()  # verify_dataset's summary was printed

"""``smoothseg_ablate``: all five variants over two seeds on a tiny dataset, models shared where variants allow,
resumption without retraining, and the statistics underneath (calibration, the paired test)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from cli_helpers import run_cli
from inference_helpers import shrink_plans
from scipy.stats import wilcoxon

from smoothseg.masks.label_noise import LabelNoise
from smoothseg.models.checkpoint import load_checkpoint
from smoothseg.workflows.ablation import (
    VARIANTS,
    AblationSettings,
    calibration,
    calibration_scores,
    paired_test,
    run_ablation,
)
from smoothseg.workflows.plan_and_preprocess import plan_and_preprocess
from smoothseg.workflows.training_arms import TrainingArm

SHORT = {"liver_epochs": 1, "tumor_epochs": 1, "iters_per_epoch": 2, "val_iters": 1, "num_workers": 0,
         "step_size": 1.0, "precision": "fp32"}


def test_calibration_statistics_match_hand_computation() -> None:
    """Two bins filled: p = 0.05 (4 voxels, 1 tumour) and p = 0.95 (2 voxels, both tumour)."""
    p = np.array([0.05] * 4 + [0.95] * 2)
    y = np.array([1, 0, 0, 0, 1, 1], bool)
    scores = calibration_scores([calibration(p[:3], y[:3]), calibration(p[3:], y[3:])])  # pooled over two parts
    expected_ece = 4 / 6 * abs(0.25 - 0.05) + 2 / 6 * abs(1.0 - 0.95)
    assert scores["ece"] == pytest.approx(expected_ece)
    assert scores["brier"] == pytest.approx(np.mean((p - y) ** 2))
    assert scores["count"][0] == 4 and scores["count"][9] == 2 and math.isnan(scores["frequency"][5])


def test_paired_test_uses_case_means_over_seeds() -> None:
    full = {s: {f"c{i}": {"tumor_dice": 0.5 + 0.01 * i} for i in range(6)} for s in (0, 1)}
    variant = {s: {f"c{i}": {"tumor_dice": 0.5 + 0.01 * i - 0.02 * (i + 1) - 0.01 * s} for i in range(6)}
               for s in (0, 1)}
    variant[0]["c5"]["tumor_dice"] = math.nan  # undefined in one seed: the other seed's value stands for the case
    result = paired_test(variant, full)
    differences = [-0.02 * (i + 1) - 0.005 for i in range(5)] + [-0.02 * 6 - 0.01]
    assert result["n_cases"] == 6
    assert result["mean_difference"] == pytest.approx(np.mean(differences))
    assert result["wilcoxon_p"] == pytest.approx(wilcoxon(differences).pvalue)
    assert result["smallest_attainable_p"] == pytest.approx(2 / 64)
    assert paired_test(full, full)["wilcoxon_p"] == 1.0


@pytest.fixture
def planned(demo_dataset: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield shrink_plans(plan_and_preprocess(900).folder)
    torch.set_num_threads(threads)


def test_ablation_runs_every_variant_over_two_seeds_and_resumes(planned: Path, data_home: Path) -> None:
    settings = AblationSettings(dataset=900, folds=("0",), seeds=(0, 1), **SHORT)
    folder = run_ablation(settings)
    report = json.loads((folder / "ablation.json").read_text())
    summary = report["summary"]
    assert list(summary) == list(VARIANTS)
    for variant, entry in summary.items():
        assert sorted(entry["per_seed"]) == ["0", "1"]
        for seed_values in entry["per_seed"].values():
            assert seed_values["n_cases"] >= 1
            assert 0 <= seed_values["ece"] <= 1 and 0 <= seed_values["brier"] <= 1
            assert 0 <= seed_values["liver_dice"] <= 1
        assert ("vs_full" in entry) == (variant != "full")
    # Models are shared: 10 per seed (no_active_contour and argmax_operating_point reuse full's, the tumour-only
    # variants full's liver).
    models = folder / "models"
    for seed in (0, 1):
        assert sorted(p.name for p in (models / f"seed_{seed}").iterdir()) == [
            "liver", "liver_novae", "single", "tumor", "tumor_deepsup", "tumor_nocleanliver_deepsup",
            "tumor_nolesionsampling_deepsup", "tumor_notlvr_deepsup", "tumor_novae_deepsup", "tumor_synthesis_deepsup"]
    checkpoints = {p.relative_to(models).parts[1]: p for p in models.rglob("checkpoint_final.pth")
                   if p.relative_to(models).parts[0] == "seed_0"}
    assert not load_checkpoint(checkpoints["tumor_novae_deepsup"])["network_kwargs"]["vae"]
    assert not load_checkpoint(checkpoints["liver_novae"])["network_kwargs"]["vae"]
    assert load_checkpoint(checkpoints["tumor_deepsup"])["network_kwargs"]["vae"]
    single = load_checkpoint(checkpoints["single"])
    assert single["network_kwargs"]["out_channels"] == 3 and single["task"] == "liver"
    run_config = json.loads((checkpoints["tumor_notlvr_deepsup"].parent / "run_config.json").read_text())
    assert run_config["config"]["tlvr_weight"] == 0.0 and run_config["config"]["seed"] == 0
    full_config = json.loads((checkpoints["tumor_deepsup"].parent / "run_config.json").read_text())["config"]
    for key, field in (("tumor_nolesionsampling_deepsup", "lesion_sampling"),
                       ("tumor_nocleanliver_deepsup", "clean_liver")):
        config = json.loads((checkpoints[key].parent / "run_config.json").read_text())["config"]
        assert config[field] == 0.0 and full_config[field] > 0
    synthesis = json.loads((checkpoints["tumor_synthesis_deepsup"].parent / "run_config.json").read_text())["config"]
    assert synthesis["lesion_synthesis"] > 0 and full_config["lesion_synthesis"] == 0
    assert load_checkpoint(checkpoints["tumor_deepsup"])["network_kwargs"]["deep_supervision"]
    assert not load_checkpoint(checkpoints["tumor"])["network_kwargs"]["deep_supervision"]
    # a variant's scores are cached under the names of its models too, so a variant whose models change (a default
    # that changed: full's tumour model has deep supervision now) is never scored from another model's cache
    assert list((folder / "cases").glob("full_liver+tumor_deepsup_seed0_fold0_*.json"))
    assert list((folder / "cases").glob("no_deep_supervision_liver+tumor_seed0_fold0_*.json"))
    # the operating points: argmax without a minimum volume for its variant, chosen (in-sample, one fold) for the others
    points = report["settings"]["operating_points"]
    assert all(points["argmax_operating_point"][str(s)]["0"]["key"] == "argmax|0|0" for s in (0, 1))
    assert points["full"]["0"]["0"]["chosen_on"] == "fold(s) 0 (in-sample: no other fold)"
    assert points["no_active_contour"]["0"]["0"]["key"] == points["full"]["0"]["0"]["key"]  # the same networks
    assert "in-sample" in (folder / "ablation.md").read_text()
    seed_1 = json.loads((models / "seed_1" / "tumor" / planned.name / "SmoothSegTrainer__tumor" / "fold_0" /
                         "run_config.json").read_text())
    assert seed_1["config"]["seed"] == 1
    markdown = (folder / "ablation.md").read_text()
    for variant in VARIANTS:
        assert f"| {variant} |" in markdown
    assert "< 1 ml" in markdown and (folder / "reliability.png").stat().st_size > 1000
    # Run again: nothing is retrained, the same numbers come back.
    stamps = {p: p.stat().st_mtime_ns for p in models.rglob("checkpoint_final.pth")}
    again = run_ablation(settings)
    assert {p: p.stat().st_mtime_ns for p in models.rglob("checkpoint_final.pth")} == stamps
    assert json.loads((again / "ablation.json").read_text())["summary"] == summary


def test_ablate_cli_refuses_fold_all_clearly(planned: Path, data_home: Path) -> None:
    result = run_cli("ablate", "-d", "900", "-f", "all", "--seeds", "1", home=data_home)
    assert result.returncode == 2
    assert "fold 'all' has no validation cases" in result.stderr


def test_training_arms_train_on_noisy_labels_or_fewer_cases_and_score_on_clean_ones(planned: Path,
                                                                                    data_home: Path) -> None:
    arm = TrainingArm(LabelNoise("drop", 1.0), fraction=0.5)
    folder = run_ablation(AblationSettings(dataset=900, folds=("0",), seeds=(0,), variants=("full",), arm=arm,
                                           **SHORT))
    assert folder == planned.parents[1] / "results" / planned.name / "ablation" / "arms" / "noise-drop-1_fraction-0.5"
    root = folder / "preprocessed" / "noise-drop-1_fraction-0.5_seed0" / planned.name
    clean_splits = json.loads((planned / "splits.json").read_text())["splits"][0]
    arm_splits = json.loads((root / "splits.json").read_text())["splits"][0]
    assert len(arm_splits["train"]) == round(0.5 * len(clean_splits["train"])) and arm_splits["val"] == \
        clean_splits["val"]
    # the arm's tumour labels lost every lesion under 1 ml; the liver region is the clean one
    lost = 0
    for case in sorted(p.name[:-8] for p in (planned / "tumor").glob("*_seg.npy")):
        clean, noisy = np.load(planned / "tumor" / f"{case}_seg.npy"), np.load(root / "tumor" / f"{case}_seg.npy")
        assert np.array_equal(clean > 0, noisy > 0)
        lost += int((clean == 2).sum() - (noisy == 2).sum())
        assert json.loads((root / "tumor" / f"{case}.json").read_text())["tlvr"] <= \
            json.loads((planned / "tumor" / f"{case}.json").read_text())["tlvr"]
    assert lost > 0
    config = json.loads(next((folder / "models").rglob("SmoothSegTrainer__tumor/fold_0/run_config.json")).read_text())
    assert config["config"]["seed"] == 0
    report = json.loads((folder / "ablation.json").read_text())
    assert report["settings"]["label_noise"] == "drop:1" and report["settings"]["train_fraction"] == 0.5
    assert report["summary"]["full"]["per_seed"]["0"]["n_cases"] == len(clean_splits["val"])  # scored on all of them
    assert "Training arm: training labels corrupted by drop:1; 0.5 of each fold's training cases" in \
        (folder / "ablation.md").read_text()
    assert (folder / "models" / "seed_0" / "liver").is_dir()  # fewer cases: its own liver model
    # a noise arm on every case shares the clean run's liver model
    noise_only = run_ablation(AblationSettings(dataset=900, folds=("0",), seeds=(0,), variants=("full",),
                                               arm=TrainingArm(LabelNoise("miss", 1.0)), **SHORT))
    assert not (noise_only / "models" / "seed_0" / "liver").exists()
    assert (noise_only.parents[1] / "models" / "seed_0" / "liver").is_dir()

"""Unlabelled CTs with clinical data (issue 29, item 3): the dataset format and its check, the arm that hides labels,
the whole-liver constraint (band, tiles, exact gradient), and a tumour model trained with unlabelled cases that
never gives them a segmentation loss."""

from __future__ import annotations

import contextlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from inference_helpers import shrink_plans
from torch import nn

from smoothseg.dataset.dataset_json import DatasetSpec
from smoothseg.dataset.verify import verify_dataset
from smoothseg.errors import DatasetSchemaError, SmoothSegError
from smoothseg.models.checkpoint import load_checkpoint
from smoothseg.planning.plans import Plans
from smoothseg.synthetic.demo_dataset import make_demo_dataset
from smoothseg.training.config import TrainingConfig
from smoothseg.training.trainer import SmoothSegTrainer, train
from smoothseg.training.unlabelled import (
    ConstraintStep,
    UnlabelledCase,
    _tiles,
    band,
    cache_folder,
    constraint_penalty,
    load_prepared,
    tlvr_band_width,
)
from smoothseg.workflows.ablation import AblationSettings, run_ablation
from smoothseg.workflows.plan_and_preprocess import plan_and_preprocess
from smoothseg.workflows.training import train_and_validate
from smoothseg.workflows.training_arms import TrainingArm, fraction_splits

UNLABELLED = ["SynLiver_004", "SynLiver_005"]


def _make_unlabelled(dataset: Path, ids: list[str]) -> None:
    """Turn the test cases ``ids`` of ``dataset`` into unlabelled ones: image moved to imagesUnlabelled, label
    deleted (the demo's training cases are few enough already)."""
    spec = json.loads((dataset / "dataset.json").read_text())
    (dataset / "imagesUnlabelled").mkdir()
    for case_id in ids:
        shutil.move(dataset / "imagesTs" / f"{case_id}_0000.nii.gz", dataset / "imagesUnlabelled")
        (dataset / "labelsTs" / f"{case_id}.nii.gz").unlink()
    spec["imagesUnlabelled"] = ids
    (dataset / "dataset.json").write_text(json.dumps(spec))


def _spec(**extra) -> dict:
    return {"channel_names": {"0": "CT"}, "labels": {"background": 0, "liver": 1, "tumor": 2}, "numTraining": 1,
            "file_ending": ".nii.gz", **extra}


def test_dataset_json_lists_unlabelled_cases_and_refuses_bad_lists() -> None:
    spec = DatasetSpec.from_dict(_spec(imagesUnlabelled=["a", "b"]))
    assert spec.unlabelled == ("a", "b") and spec.to_dict()["imagesUnlabelled"] == ["a", "b"]
    assert DatasetSpec.from_dict(_spec()).unlabelled == () and "imagesUnlabelled" not in DatasetSpec.from_dict(
        _spec()).to_dict()
    for bad in ("a", ["a", "a"], [1], [""]):
        with pytest.raises(DatasetSchemaError, match="imagesUnlabelled"):
            DatasetSpec.from_dict(_spec(imagesUnlabelled=bad))


def test_verify_checks_unlabelled_cases(demo_dataset: Path) -> None:
    _make_unlabelled(demo_dataset, UNLABELLED)
    report = verify_dataset(demo_dataset)
    assert report.ok, report.summary()
    assert report.n_unlabelled == 2 and report.n_training == 4 and report.n_test == 0
    # a stray image nobody listed, and a listed case with no clinical row
    shutil.copy(demo_dataset / "imagesTr" / "SynLiver_000_0000.nii.gz", demo_dataset / "imagesUnlabelled" /
                "SynLiver_999_0000.nii.gz")
    clinical = demo_dataset / json.loads((demo_dataset / "dataset.json").read_text())["clinical"]["file"]
    lines = clinical.read_text().splitlines()
    clinical.write_text("\n".join(line for line in lines if not line.startswith("SynLiver_005")) + "\n")
    problems = [str(p) for p in verify_dataset(demo_dataset).problems]
    assert any("SynLiver_999" in p and "not listed" in p for p in problems), problems
    assert any("SynLiver_005" in p and "no clinical row" in p for p in problems), problems


def test_fraction_arm_keeps_the_rest_as_unlabelled() -> None:
    splits = {"splits": [{"train": [f"c{i}" for i in range(10)], "val": ["v0", "v1"]}]}
    out = fraction_splits(splits, 0.3, seed=1, unlabelled_rest=True)["splits"][0]
    assert len(out["train"]) == 3 and len(out["unlabelled"]) == 7 and out["val"] == ["v0", "v1"]
    assert sorted(out["train"] + out["unlabelled"]) == sorted(splits["splits"][0]["train"])
    assert out["train"] == fraction_splits(splits, 0.3, seed=1)["splits"][0]["train"]  # the same labelled subset
    assert "unlabelled" not in fraction_splits(splits, 0.3, seed=1)["splits"][0]
    assert TrainingArm(fraction=0.3, unlabelled_rest=True).key == "fraction-0.3_unlabelled-rest"
    with pytest.raises(SmoothSegError, match="--unlabelled-rest needs --train-fraction"):
        TrainingArm(unlabelled_rest=True)


def test_band_and_penalty() -> None:
    assert band(0.1, 0.05) == pytest.approx((0.05, 0.15))
    assert band(0.02, 0.05) == (0.0, pytest.approx(0.07)) and band(0.98, 0.05) == (pytest.approx(0.93), 1.0)
    assert float(constraint_penalty(0.1, 0.05, 0.15)) == 0.0
    assert float(constraint_penalty(0.2, 0.05, 0.15)) == pytest.approx(0.05 ** 2)
    assert float(constraint_penalty(0.0, 0.05, 0.15)) == pytest.approx(0.05 ** 2)
    assert tlvr_band_width({"a": 0.1, "b": 0.2}, {"a": 0.13, "b": 0.16}) == pytest.approx(np.sqrt((0.03 ** 2 +
                                                                                                   0.04 ** 2) / 2))


@pytest.mark.parametrize("shape", [(5, 9, 7), (16, 32, 32), (23, 41, 70)])
def test_tiles_own_every_liver_voxel_once(shape: tuple[int, ...]) -> None:
    rng = np.random.default_rng(0)
    liver = rng.random(shape) < 0.3
    count = np.zeros(shape, dtype=int)
    for box, owned in _tiles(liver, (8, 16, 16)):
        assert owned.shape == liver[box].shape and not (owned & ~liver[box]).any()
        count[box] += owned
    np.testing.assert_array_equal(count, liver.astype(int))


class _Net(nn.Module):
    """Fully convolutional 3-class network (logits only, as SegResNetVAE in evaluation mode)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.a = nn.Conv3d(1, 4, 3, padding=1)
        self.b = nn.Conv3d(4, 3, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(torch.relu(self.a(x)))


def _case(low: float, high: float) -> UnlabelledCase:
    rng = np.random.default_rng(1)
    data = rng.normal(size=(1, 12, 20, 18)).astype(np.float32)
    liver = np.zeros((12, 20, 18), dtype=bool)
    liver[2:11, 3:18, 2:16] = True
    return UnlabelledCase("u", "imagesUnlabelled", data, liver, 0.1, low, high)


def _step(net: nn.Module, max_tiles: int = 100) -> ConstraintStep:
    return ConstraintStep(net, (8, 8, 8), -1.0, torch.device("cpu"), torch.contiguous_format, contextlib.nullcontext,
                          max_tiles=max_tiles)


def test_constraint_gradient_is_the_exact_gradient_of_the_whole_liver_penalty() -> None:
    """Two passes (no-gradient TLVR, then tile by tile) give the gradient autograd gives through all tiles at once."""
    case = _case(0.6, 0.7)  # an untrained network says ~1/3 tumour: below the band, so a penalty
    net = _Net()
    step = _step(net)
    result = step(case, 0.5, np.random.default_rng(0), lambda s: s.backward())
    assert result["tiles"] == len(_tiles(case.liver, (8, 8, 8))) and result["penalty"] > 0
    two_pass = [p.grad.clone() for p in net.parameters()]
    net.zero_grad()
    whole = sum(step._tumour_sum(case, box, owned) for box, owned in _tiles(case.liver, (8, 8, 8)))
    tlvr = whole / case.liver_voxels
    assert float(tlvr.detach()) == pytest.approx(result["tlvr"], rel=1e-5)
    (0.5 * constraint_penalty(tlvr.double(), case.low, case.high)).backward()
    for a, p in zip(two_pass, net.parameters(), strict=True):
        torch.testing.assert_close(a, p.grad, rtol=1e-4, atol=1e-9)


def test_no_gradient_inside_the_band_and_a_subset_of_tiles_otherwise() -> None:
    net = _Net()
    inside = _step(net)
    tlvr = inside.tlvr(_case(0.0, 1.0))
    result = inside(_case(tlvr - 0.01, tlvr + 0.01), 0.5, np.random.default_rng(0), lambda s: s.backward())
    assert result == {"tlvr": pytest.approx(tlvr), "penalty": 0.0, "tiles": 0}
    assert all(p.grad is None for p in net.parameters())
    subset = _step(net, max_tiles=2)(_case(0.9, 1.0), 0.5, np.random.default_rng(0), lambda s: s.backward())
    assert subset["tiles"] == 2 and all(p.grad is not None and p.grad.abs().sum() > 0 for p in net.parameters())


class _PointNet(nn.Module):
    """1x1x1 convolution: a voxel's output depends on that voxel only, so tiling cannot change it."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(1)
        self.conv = nn.Conv3d(1, 3, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


def test_whole_liver_tlvr_is_the_mean_tumour_probability_over_the_liver() -> None:
    """Against the whole volume in one pass: tiles, padding and the owned-voxel masks place every voxel right."""
    net, case = _PointNet(), _case(0.0, 1.0)
    with torch.no_grad():
        probability = torch.softmax(net(torch.from_numpy(case.data)[None]), 1)[0, 2].numpy()
    expected = probability[case.liver].mean()
    for patch in ((8, 8, 8), (5, 7, 9), (16, 32, 32)):  # tiles inside, odd tiles, one padded tile
        step = ConstraintStep(net, patch, -1.0, torch.device("cpu"), torch.contiguous_format, contextlib.nullcontext)
        assert step.tlvr(case) == pytest.approx(float(expected), rel=1e-5), patch


def test_a_subset_of_tiles_estimates_the_gradient_without_bias() -> None:
    net, case = _PointNet(), _case(0.9, 1.0)
    exact = _step(net)
    exact(case, 1.0, np.random.default_rng(0), lambda s: s.backward())
    reference = [p.grad.clone() for p in net.parameters()]
    net.zero_grad()
    draws = 400
    rng = np.random.default_rng(0)
    sampled = _step(net, max_tiles=2)
    for _ in range(draws):
        sampled(case, 1.0 / draws, rng, lambda s: s.backward())
    for mean, ref in zip((p.grad for p in net.parameters()), reference, strict=True):
        torch.testing.assert_close(mean, ref, rtol=0.1, atol=1e-6)


def _tiny_config(task: str, **kw) -> TrainingConfig:
    base = dict(dataset="900", task=task, fold="0", device="cpu", epochs=1, iters_per_epoch=4, val_iters=1,
                num_workers=0, validate=False)
    return TrainingConfig(**{**base, **kw})


def test_tumour_model_trains_on_unlabelled_cases_through_the_knowledge_term_only(demo_dataset: Path,
                                                                                data_home: Path, caplog) -> None:
    """Cases listed under imagesUnlabelled (no label file exists) are cropped by the fold's liver model, given a band
    around their clinical prediction, and used every N iterations; the checkpoint says which case was used how."""
    _make_unlabelled(demo_dataset, UNLABELLED)
    folder = shrink_plans(plan_and_preprocess(900).folder)
    train(_tiny_config("liver", iters_per_epoch=2))
    with caplog.at_level("INFO", logger="smoothseg"):
        output = train_and_validate(_tiny_config("tumor", unlabelled_every=1), torch.device("cpu"))
    payload = load_checkpoint(output / "checkpoint_final.pth")
    use = payload["data_use"]
    assert sorted(use["unlabelled"]) == UNLABELLED
    assert not set(UNLABELLED) & set(use["labelled"] + use["validation"])
    for entry in use["unlabelled"].values():
        low, high = entry["band"]
        assert entry["source"] == "imagesUnlabelled" and 0 <= low <= entry["clinical_tlvr"] <= high <= 1
    assert np.isfinite(payload["progress"]["train_unlabelled"]).all()
    assert "4 unlabelled whole-liver term(s), 4 outside the band" in caplog.text  # an untrained model: ~1/3 tumour
    liver = output.parent.parent / "SmoothSegTrainer__liver" / "fold_0" / "checkpoint_final.pth"
    cache = cache_folder(folder, liver, Plans.load(folder / "plans.json")["tumor"].content_hash())
    for case_id in UNLABELLED:
        meta = json.loads((cache / f"{case_id}.json").read_text())
        data, mask = np.load(cache / f"{case_id}.npy"), np.load(cache / f"{case_id}_liver.npy")
        assert "error" not in meta and data.shape[1:] == mask.shape == tuple(meta["shape"]) and mask.any()
    # off: no unlabelled case used; the same seed then trains other weights, by the unlabelled terms alone (runs are
    # reproducible bit for bit on a CPU)
    again = load_checkpoint(train(_tiny_config("tumor", unlabelled_every=0, overwrite=True)) / "checkpoint_final.pth")
    assert again["data_use"]["unlabelled"] == {}
    assert any(not torch.equal(a, b) for a, b in zip(payload["network_state"].values(),
                                                    again["network_state"].values(), strict=True))
    same = load_checkpoint(train(_tiny_config("tumor", unlabelled_every=0, overwrite=True)) / "checkpoint_final.pth")
    assert all(torch.equal(a, b) for a, b in zip(same["network_state"].values(), again["network_state"].values(),
                                                 strict=True))
    # a run continued with --c keeps its unlabelled set: this one had none, so adding them now is refused
    with pytest.raises(SmoothSegError, match=r"--c: .* was trained with unlabelled cases none, now "
                                             r"\['SynLiver_004', 'SynLiver_005'\]"):
        train(_tiny_config("tumor", epochs=2, unlabelled_every=1, continue_training=True))
    # an unlabelled case must be another patient than the fold's training and validation cases
    splits = json.loads((folder / "splits.json").read_text())
    trained_on = splits["splits"][0]["train"][0]
    splits["splits"][0]["unlabelled"] = [trained_on]
    (folder / "splits.json").write_text(json.dumps(splits))
    with pytest.raises(SmoothSegError, match=f"unlabelled case\\(s\\) {trained_on} are also training or validation "
                                             "cases of fold 0"):
        SmoothSegTrainer(_tiny_config("tumor", overwrite=True)).prepare_knowledge()


def test_hidden_label_cases_never_reach_the_segmentation_loss(data_home: Path) -> None:
    """A fold's ``"unlabelled"`` training cases (an arm that hides labels): their preprocessed label maps are
    deleted, and the tumour model still trains, so nothing read them."""
    make_demo_dataset(data_home / "raw", n_cases=9, seed=1, size="small")  # 6 training cases: 3 labelled in fold 0
    folder = shrink_plans(plan_and_preprocess(900).folder)
    splits = json.loads((folder / "splits.json").read_text())
    hidden = splits["splits"][0]["train"][:2]
    splits["splits"][0]["train"] = splits["splits"][0]["train"][2:]
    splits["splits"][0]["unlabelled"] = hidden
    (folder / "splits.json").write_text(json.dumps(splits))
    train(_tiny_config("liver", iters_per_epoch=2))
    raw = data_home / "raw" / folder.name
    for case_id in hidden:  # every label-derived file of theirs: the segmentation, its TLVR, the raw label
        (folder / "tumor" / f"{case_id}_seg.npy").unlink()
        (folder / "tumor" / f"{case_id}.json").unlink()
        (raw / "labelsTr" / f"{case_id}.nii.gz").unlink()
    output = train_and_validate(_tiny_config("tumor", unlabelled_every=2), torch.device("cpu"))
    use = load_checkpoint(output / "checkpoint_final.pth")["data_use"]
    assert sorted(use["unlabelled"]) == sorted(hidden)
    assert all(v["source"] == "imagesTr" for v in use["unlabelled"].values())


def test_unlabelled_cases_without_a_liver_model_are_a_clear_error(demo_dataset: Path, data_home: Path) -> None:
    _make_unlabelled(demo_dataset, UNLABELLED)
    shrink_plans(plan_and_preprocess(900).folder)
    with pytest.raises(SmoothSegError, match="train the liver model of fold 0 first"):
        SmoothSegTrainer(_tiny_config("tumor")).prepare_knowledge()


def test_ablation_arm_keeps_the_rest_unlabelled_and_shares_the_liver_models(data_home: Path) -> None:
    """``--train-fraction F --unlabelled-rest``: the fold's other training cases reach the tumour model as unlabelled
    cases (their labels hidden), cropped by the arm's liver model, which is the one of the same fraction without
    them."""
    make_demo_dataset(data_home / "raw", n_cases=9, seed=1, size="small")
    shrink_plans(plan_and_preprocess(900).folder)
    arm = TrainingArm(fraction=0.75, unlabelled_rest=True)
    folder = run_ablation(AblationSettings(dataset=900, folds=("0",), seeds=(0,), variants=("full",), arm=arm,
                                           liver_epochs=1, tumor_epochs=1, iters_per_epoch=2, val_iters=1,
                                           num_workers=0, step_size=1.0, precision="fp32"))
    assert folder.name == "fraction-0.75_unlabelled-rest"
    assert not (folder / "models" / "seed_0" / "liver").exists()
    liver = next((folder.parent / "fraction-0.75" / "models" / "seed_0" / "liver").rglob("checkpoint_final.pth"))
    tumour = load_checkpoint(next((folder / "models").rglob("SmoothSegTrainer__tumor/fold_0/checkpoint_final.pth")))
    splits = json.loads(next((folder / "preprocessed").rglob("splits.json")).read_text())["splits"][0]
    assert sorted(tumour["data_use"]["unlabelled"]) == sorted(splits["unlabelled"]) != []
    assert tumour["data_use"]["labelled"] == splits["train"] and tumour["config"]["liver_model"] == str(liver)
    assert "the others kept without labels" in (folder / "ablation.md").read_text(encoding="utf-8")


def test_unprepared_or_failed_cases_are_reported_clearly(tmp_path: Path, caplog) -> None:
    """A case never prepared stops training with a message naming it; one whose preparation failed is left out with
    its reason."""
    with pytest.raises(SmoothSegError, match=r"1 unlabelled case\(s\) not prepared \(u1\)"):
        load_prepared(tmp_path, {"u1": "imagesUnlabelled"})
    (tmp_path / "u1.json").write_text(json.dumps({"error": "/x/u1_0000.nii.gz: the liver model found no liver"}))
    with caplog.at_level("WARNING", logger="smoothseg"):
        assert load_prepared(tmp_path, {"u1": "imagesUnlabelled"}) == []
    assert "u1 not used: /x/u1_0000.nii.gz: the liver model found no liver" in caplog.text

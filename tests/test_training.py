"""Data loading, the trainers, checkpoints and resuming, on tiny plans edited by hand (as users may)."""

from __future__ import annotations

import json
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from batchgenerators.transforms.abstract_transforms import Compose
from batchgenerators.transforms.noise_transforms import GaussianBlurTransform, GaussianNoiseTransform
from cli_helpers import run_cli
from inference_helpers import shrink_plans

from smoothseg.dataset.io import read_image
from smoothseg.errors import SmoothSegError
from smoothseg.models.build import network_from_checkpoint
from smoothseg.models.checkpoint import load_checkpoint
from smoothseg.network.segresnet_vae import SegResNetVAE
from smoothseg.preprocessing.dataset_preprocessing import SDF_CLIP_MM, liver_sdf, load_liver_sdf, sdf_file
from smoothseg.training.augmentation import make_augmenter, training_transforms
from smoothseg.training.config import TrainingConfig
from smoothseg.training.data_loader import LEAK_FRACTION, PatchLoader, SamplingConfig
from smoothseg.training.trainer import SmoothSegTrainer, Trainer, train
from smoothseg.workflows.plan_and_preprocess import plan_and_preprocess
from smoothseg.workflows.training import train_and_validate

TINY_PATCH = {"liver": [16, 32, 32], "tumor": [16, 32, 32]}


@pytest.fixture
def tiny(demo_dataset: Path, data_home: Path) -> Path:
    """The demo dataset planned and preprocessed, with plans edited down to a tiny network."""
    return shrink_plans(plan_and_preprocess(900).folder)


def _config(task: str, **kw) -> TrainingConfig:
    base = dict(dataset="900", task=task, fold="0", device="cpu", epochs=2, iters_per_epoch=3, val_iters=1,
                num_workers=0)
    base.update(kw)
    return TrainingConfig(**base)


def test_patch_loader_oversamples_and_masks(tiny: Path) -> None:
    ids = sorted(p.stem for p in (tiny / "tumor").glob("*.json"))
    cfg = SamplingConfig((16, 32, 32), 6, oversample_foreground=0.5, mask_outside_liver=True, mask_jitter_mm=0.0,
                         fill_value=-9.0)
    loader = PatchLoader(tiny / "tumor", ids, cfg, {ids[0]: 0.25}, seed=3)
    batch = loader.generate_train_batch()
    assert batch["data"].shape == (6, 1, 16, 32, 32) and batch["seg"].shape == (6, 1, 16, 32, 32)
    seg = batch["seg"][:, 0]
    assert all((seg[b] > 0).any() for b in range(3))  # the oversampled half holds liver or tumour
    outside = seg == 0
    assert np.all(batch["data"][:, 0][outside] == -9.0)  # intensities outside the liver are masked
    assert np.all((batch["liver_coverage"] >= 0) & (batch["liver_coverage"] <= 1))
    tlvr = dict(zip(batch["keys"], batch["clinical_tlvr"], strict=True))
    assert all(np.isnan(v) for k, v in tlvr.items() if k != ids[0])
    again = PatchLoader(tiny / "tumor", ids, cfg, {ids[0]: 0.25}, seed=3).generate_train_batch()
    np.testing.assert_array_equal(again["data"], batch["data"])  # reproducible for a seed


@pytest.mark.parametrize("workers", [0, 1])
def test_augmented_batches_depend_on_the_seed_only(tiny: Path, workers: int) -> None:
    """Two augmenters with one seed give the same batches, in a worker process too (batchgenerators' noise and blur
    draw from Python's ``random``, which CPython reseeds from the OS in every forked child)."""
    ids = sorted(p.stem for p in (tiny / "liver").glob("*.json"))
    cfg = SamplingConfig((16, 32, 32), 2, oversample_foreground=0.5)
    noisy = Compose([GaussianNoiseTransform(noise_variance=(0.0, 0.1), p_per_sample=1.0),
                     GaussianBlurTransform((0.5, 1.0), p_per_sample=1.0)])

    def batches(seed: int) -> list[np.ndarray]:
        random.seed(None)  # whatever the parent's generator holds must not matter
        aug = make_augmenter(PatchLoader(tiny / "liver", ids, cfg, seed=seed, num_threads=max(workers, 1)), noisy,
                             workers, seed)
        try:
            return [next(aug)["data"] for _ in range(3)]
        finally:
            if hasattr(aug, "_finish"):
                aug._finish()

    first, again, other = batches(5), batches(5), batches(6)
    for a, b in zip(first, again, strict=True):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(first[0], other[0])


def test_whole_liver_patch_has_full_coverage(tiny: Path) -> None:
    ids = sorted(p.stem for p in (tiny / "tumor").glob("*.json"))
    shape = np.load(tiny / "tumor" / f"{ids[0]}_seg.npy").shape
    big = tuple(int(np.ceil(s / 16) * 16) for s in shape)
    loader = PatchLoader(tiny / "tumor", [ids[0]], SamplingConfig(big, 1, oversample_foreground=0.0), seed=0)
    assert loader.generate_train_batch()["liver_coverage"][0] == pytest.approx(1.0)


def test_mask_jitter_changes_the_mask(tiny: Path) -> None:
    ids = sorted(p.stem for p in (tiny / "tumor").glob("*.json"))
    cfg = SamplingConfig((16, 32, 32), 8, oversample_foreground=1.0, mask_outside_liver=True, mask_jitter_mm=8.0,
                         fill_value=-9.0)
    batch = PatchLoader(tiny / "tumor", ids, cfg, seed=1).generate_train_batch()
    unmasked = (batch["data"][:, 0] != -9.0)
    labelled = batch["seg"][:, 0] > 0
    assert not np.array_equal(unmasked, labelled)  # dilated masks show intensities around the liver


def _moved(loader: PatchLoader, labels: np.ndarray, start, spacing, mm: float, use_sdf: bool) -> np.ndarray:
    """The loader's moved liver mask, from a distance transform per patch or from the case's stored distances."""
    sdf = liver_sdf(labels, spacing) if use_sdf else None
    return loader._jittered_mask(labels, np.asarray(start), spacing, mm=mm, sdf=sdf)


@pytest.mark.parametrize("use_sdf", [False, True])
def test_mask_jitter_does_not_erode_the_patch_faces(tmp_path: Path, use_sdf: bool) -> None:
    """An eroded mask shrinks where the liver ends, not where the patch happens to end inside the liver."""
    cfg = SamplingConfig((8, 12, 12), 1, mask_outside_liver=True, mask_jitter_mm=2.0)
    loader = PatchLoader(tmp_path, ["case"], cfg)
    labels = np.zeros((20, 30, 30), dtype=np.int16)
    labels[2:18, 3:27, 3:27] = 1  # the liver; the patch below lies inside it except near its x end
    mask = _moved(loader, labels, [6, 9, 17], (1.0, 1.0, 1.0), -2.0, use_sdf)  # 2 voxels at 1 mm
    assert mask.shape == (8, 12, 12)
    assert mask[:, :, :8].all()  # patch faces inside the liver stay liver (x 17..24 are >= 2 voxels inside)
    assert not mask[:, :, 8:].any()  # x 25, 26 are within 2 voxels of the liver's end at 27, x 27..28 outside it
    dilated = _moved(loader, labels, [6, 9, 17], (1.0, 1.0, 1.0), 2.0, use_sdf)
    assert dilated[:, :, :12].all() and dilated[:, :, 10].all()


@pytest.mark.parametrize("use_sdf", [False, True])
@pytest.mark.parametrize("axis, spacing", [(2, (1.0, 1.0, 1.0)), (0, (5.0, 1.0, 1.0))])
def test_mask_moves_from_a_liver_boundary_just_outside_the_patch(tmp_path: Path, axis: int, spacing,
                                                                 use_sdf: bool) -> None:
    """The perturbation sees the case beyond the patch: a boundary one voxel outside the patch erodes the patch's
    first slice, and a liver ending one voxel before the patch dilates into it."""
    patch = (8, 8, 8)
    loader = PatchLoader(tmp_path, ["case"], SamplingConfig(patch, 1, mask_outside_liver=True, mask_jitter_mm=9.0))
    step = spacing[axis]
    start = np.array([16, 16, 16])  # far (16 voxels = 16 mm or more) from the case's other faces
    start[axis] = 6
    face = [slice(None)] * 3
    face[axis] = 0
    labels = np.zeros((40, 40, 40), dtype=np.int16)
    region = [slice(0, 40)] * 3
    region[axis] = slice(5, 40)  # the liver starts one voxel before the patch (index 6 along the axis)
    labels[tuple(region)] = 1
    eroded = _moved(loader, labels, start, spacing, -2.0 * step, use_sdf)
    assert not eroded[tuple(face)].any()  # index 6 is 2 voxels from the outside (index 4): removed
    nxt = list(face)
    nxt[axis] = 1
    assert eroded[tuple(nxt)].all()
    labels[:] = 0
    region[axis] = slice(0, 5)  # the liver ends one voxel before the patch
    labels[tuple(region)] = 1
    dilated = _moved(loader, labels, start, spacing, 2.0 * step, use_sdf)
    assert dilated[tuple(face)].all() and not dilated[tuple(nxt)].any()


@pytest.mark.parametrize("use_sdf", [False, True])
def test_mask_moves_by_euclidean_millimetres_on_anisotropic_voxels(tmp_path: Path, use_sdf: bool) -> None:
    """A dilation by d mm adds exactly the voxels within d mm of the liver, whatever the spacing."""
    spacing = (5.0, 3.0, 3.0)
    cfg = SamplingConfig((12, 24, 24), 1, mask_outside_liver=True, mask_jitter_mm=5.0, mask_leak_mm=15.0)
    loader = PatchLoader(tmp_path, ["case"], cfg)
    labels = np.zeros((12, 24, 24), dtype=np.int16)
    labels[6, 12, 12] = 1  # a one-voxel liver: the dilated mask is a ball of radius d mm around it
    zz, yy, xx = np.indices(labels.shape)
    distance = np.sqrt(((zz - 6) * 5.0) ** 2 + ((yy - 12) * 3.0) ** 2 + ((xx - 12) * 3.0) ** 2)
    for mm in (4.0, 9.5, 14.9):
        mask = _moved(loader, labels, np.zeros(3, dtype=int), spacing, mm, use_sdf)
        np.testing.assert_array_equal(mask, distance <= mm)
    big = np.zeros((12, 24, 24), dtype=np.int16)
    big[2:10, 4:20, 4:20] = 1
    eroded = _moved(loader, big, np.zeros(3, dtype=int), spacing, -5.5, use_sdf)
    # the faces: one slice (5 mm <= 5.5) in z, one row (3 mm) but not two (6 mm) in y and x
    assert eroded[3:9, 5:19, 5:19].all() and eroded.sum() == 6 * 14 * 14


def test_stored_liver_distances_give_the_distance_transforms_masks(tiny: Path) -> None:
    """On the preprocessed phantoms: the stored float32 distances (written for the tumour task only) move the masks
    exactly as the per-patch distance transform does, at random patches and offsets (dilations and erosions up to
    the leak's 15 mm), except voxels whose distance lies within float32 rounding of the offset."""
    import json

    from scipy import ndimage

    ids = sorted(p.stem for p in (tiny / "tumor").glob("*.json"))
    assert not any(sdf_file(tiny / "liver", c).exists() for c in ids)
    cfg = SamplingConfig((16, 32, 32), 1, mask_outside_liver=True, mask_jitter_mm=5.0, mask_leak_mm=15.0)
    loader = PatchLoader(tiny / "tumor", ids, cfg, seed=0)
    rng = np.random.default_rng(0)
    compared = changed = 0
    for case_id in ids:
        seg = np.load(tiny / "tumor" / f"{case_id}_seg.npy")
        spacing = json.loads((tiny / "tumor" / f"{case_id}.json").read_text())["spacing"]
        sdf = load_liver_sdf(tiny / "tumor", case_id)
        assert sdf.dtype == np.float32 and isinstance(sdf, np.memmap)
        assert (sdf[seg > 0] < 0).all() and (sdf[seg == 0] > 0).all()
        inner = ndimage.distance_transform_edt(np.pad(seg > 0, 1), sampling=spacing)[1:-1, 1:-1, 1:-1]
        exact = np.where(seg > 0, -inner, ndimage.distance_transform_edt(seg == 0, sampling=spacing))
        for _ in range(12):
            start = np.array([rng.integers(-4, max(s - 12, -3)) for s in seg.shape])
            mm = float(rng.choice([-1, 1]) * rng.uniform(0.5, 15.0))
            by_edt = loader._jittered_mask(seg, start, spacing, mm=mm)
            by_sdf = loader._jittered_mask(seg, start, spacing, mm=mm, sdf=sdf)
            inside = loader._crop(np.ones(seg.shape, bool), start, False)  # patch voxels within the case
            near = np.abs(loader._crop(exact, start, np.inf) - mm) <= 1e-5  # float32 rounding at <= 16 mm: 1e-6
            differ = (by_edt != by_sdf) & inside
            assert not (differ & ~near).any(), (case_id, start, mm)
            compared += int(inside.sum())
            changed += int(by_edt[inside].sum() != (loader._crop(seg, start, 0)[inside] > 0).sum())
    assert compared > 0 and changed > 0  # the offsets moved the masks


def test_the_loader_reads_the_stored_distances_instead_of_a_distance_transform(tiny: Path, monkeypatch) -> None:
    import smoothseg.training.data_loader as data_loader

    ids = sorted(p.stem for p in (tiny / "tumor").glob("*.json"))
    cfg = SamplingConfig((16, 32, 32), 4, oversample_foreground=0.5, mask_outside_liver=True, mask_jitter_mm=5.0,
                         mask_leak_mm=15.0, fill_value=-9.0)
    reference = PatchLoader(tiny / "tumor", ids, cfg, seed=5).generate_train_batch()

    def no_transform(*args, **kwargs):
        raise AssertionError("a distance transform per patch although the case stores its distances")

    monkeypatch.setattr(data_loader.ndimage, "distance_transform_edt", no_transform)
    batch = PatchLoader(tiny / "tumor", ids, cfg, seed=5).generate_train_batch()
    np.testing.assert_array_equal(batch["seg"], reference["seg"])
    for case_id in ids:  # without the files (an older preprocessing) the loader falls back to the transform
        sdf_file(tiny / "tumor", case_id).unlink()
    with pytest.raises(AssertionError, match="distance transform per patch"):
        PatchLoader(tiny / "tumor", ids, cfg, seed=5).generate_train_batch()
    assert SDF_CLIP_MM > cfg.mask_leak_mm


def test_a_quarter_of_the_masks_leak_into_neighbouring_tissue(tmp_path: Path) -> None:
    """The mask offsets: boundary jitter within +-mask_jitter_mm, and LEAK_FRACTION of them a dilation up to
    mask_leak_mm; with mask_leak_mm 0 (or <= the jitter) no mask leaks."""
    leaky = PatchLoader(tmp_path, ["case"], SamplingConfig((8, 8, 8), 1, mask_jitter_mm=5.0, mask_leak_mm=15.0), seed=4)
    offsets = np.array([leaky._mask_offset_mm() for _ in range(4000)])
    assert offsets.min() >= -5.0 and offsets.max() <= 15.0
    assert abs(np.mean(offsets > 5.0) - LEAK_FRACTION) < 0.03
    assert abs(np.mean(offsets < 0.0) - (1 - LEAK_FRACTION) / 2) < 0.03  # erosion as often as before
    plain = PatchLoader(tmp_path, ["case"], SamplingConfig((8, 8, 8), 1, mask_jitter_mm=5.0, mask_leak_mm=0.0), seed=4)
    offsets = np.array([plain._mask_offset_mm() for _ in range(1000)])
    assert offsets.min() >= -5.0 and offsets.max() <= 5.0 and np.mean(offsets < 0) > 0.4


def test_liver_coverage_is_counted_after_augmentation(tiny: Path) -> None:
    """Coverage and the TLVR term's patch ratio come from the same (augmented, masked) labels."""
    ids = sorted(p.stem for p in (tiny / "tumor").glob("*.json"))
    cfg = SamplingConfig((16, 32, 32), 4, oversample_foreground=1.0, mask_outside_liver=True, mask_jitter_mm=5.0)
    batch = PatchLoader(tiny / "tumor", ids, cfg, seed=2).generate_train_batch()
    augmented = training_transforms((16, 32, 32))(**{k: (v.copy() if isinstance(v, np.ndarray) else v)
                                                      for k, v in batch.items()})
    for out in (batch, augmented):
        counts = (out["seg"][:, 0] > 0).reshape(4, -1).sum(1)
        np.testing.assert_allclose(out["liver_coverage"], np.clip(counts / out["liver_voxels"], 0, 1), rtol=1e-6)
    truth = {c: json.loads((tiny / "tumor" / f"{c}.json").read_text())["tlvr"] for c in batch["keys"]}
    np.testing.assert_allclose(batch["case_tlvr"], [truth[c] for c in batch["keys"]], rtol=1e-6)


def test_a_resumed_run_trains_what_an_uninterrupted_one_does(tiny: Path, data_home: Path) -> None:
    """Epoch e draws the same patches and VAE noise whether the run was resumed before it or not.

    Bit for bit: with every generator seeded (Python's ``random`` included, which batchgenerators' noise and blur
    use), a run is reproducible on one machine. Without the per-epoch data seeds and the stored RNG state, the first
    resumed epoch sees other patches and other noise."""
    fold = data_home / "results" / "Dataset900_SyntheticLiver" / "SmoothSegTrainer__tumor" / "fold_0"
    train(_config("tumor", epochs=1))
    resumed = load_checkpoint(train(_config("tumor", epochs=3, continue_training=True)) / "checkpoint_final.pth")
    shutil.rmtree(fold)
    straight = load_checkpoint(train(_config("tumor", epochs=3)) / "checkpoint_final.pth")
    for key in ("train_loss", "train_vae", "val_loss"):
        a, b = resumed["progress"][key], straight["progress"][key]
        assert len(a) == len(b) == 3
        assert a == b, key


@pytest.mark.parametrize("task", ["liver", "tumor"])
def test_training_writes_checkpoints_and_progress(tiny: Path, data_home: Path, task: str) -> None:
    out = train(_config(task))
    assert out == data_home / "results" / "Dataset900_SyntheticLiver" / f"SmoothSegTrainer__{task}" / "fold_0"
    for name in ("checkpoint_latest.pth", "checkpoint_final.pth", "progress.png", "training_log.txt",
                 "run_config.json"):
        assert (out / name).is_file(), name
    assert (out / "progress.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    ckpt = torch.load(out / "checkpoint_final.pth", weights_only=True)
    assert ckpt["trainer"] == "SmoothSegTrainer" and ckpt["task"] == task and ckpt["epoch"] == 1
    assert ckpt["plans"]["configurations"][task]["patch_size"] == TINY_PATCH[task]
    assert len(ckpt["progress"]["train_loss"]) == 2 and all(np.isfinite(ckpt["progress"]["train_loss"]))
    model = SegResNetVAE(**ckpt["network_kwargs"])
    model.load_state_dict(ckpt["network_state"])
    classes = ("liver", "tumor") if task == "tumor" else ("liver",)
    assert sorted(k for k in ckpt["progress"] if k.startswith("pseudo_dice_")) == [f"pseudo_dice_{c}" for c in classes]
    assert all(len(ckpt["progress"][f"pseudo_dice_{c}"]) == 2 for c in classes)  # one curve per class in the plot
    if task == "tumor":
        assert ckpt["tlvr_model"] is not None and "r2" in ckpt["tlvr_scores"]
        assert np.isfinite(ckpt["progress"]["train_tlvr"]).all()
    else:
        assert ckpt["tlvr_model"] is None and np.isnan(ckpt["progress"]["train_tlvr"]).all()
    log = (out / "training_log.txt").read_text()
    assert "epoch 1:" in log


@pytest.mark.parametrize("interval, plotted_after", [(0.0, [0, 1, 2, 2]), (1e9, [0, 2])])
def test_progress_plot_after_the_first_epoch_then_by_time_and_at_the_end(tiny: Path, interval: float,
                                                                          plotted_after: list[int]) -> None:
    trainer = Trainer(_config("liver", epochs=3, iters_per_epoch=1))
    trainer.plot_interval_s = interval
    plotted = []
    real_plot = trainer.progress.plot
    trainer.progress.plot = lambda path: (plotted.append(len(trainer.progress.series["train_loss"]) - 1),
                                          real_plot(path))[1]
    out = trainer.run()
    assert plotted == plotted_after  # epochs done at each drawing; the last drawing shows the whole run
    assert (out / "progress.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_tlvr_off_without_clinical_table(tiny: Path, demo_dataset: Path, caplog) -> None:
    spec = json.loads((demo_dataset / "dataset.json").read_text())
    del spec["clinical"]
    (demo_dataset / "dataset.json").write_text(json.dumps(spec))
    with caplog.at_level("INFO", logger="smoothseg"):
        out = train(_config("tumor", epochs=1))
    assert "TLVR term off: " in caplog.text and "clinical" in caplog.text
    assert torch.load(out / "checkpoint_final.pth", weights_only=True)["tlvr_model"] is None


def test_zero_tlvr_weight_reproduces_the_plain_trainer(tiny: Path) -> None:
    loader = PatchLoader(tiny / "tumor", sorted(p.stem for p in (tiny / "tumor").glob("*.json")),
                         SamplingConfig((16, 32, 32), 2), seed=0)
    batch = loader.generate_train_batch()
    batch["clinical_tlvr"] = np.array([0.2, 0.1], dtype=np.float32)
    totals = []
    for cls, weight in ((Trainer, 0.5), (SmoothSegTrainer, 0.0), (SmoothSegTrainer, 0.5)):
        torch.manual_seed(0)
        trainer = cls(_config("tumor", trainer=cls.__name__, tlvr_weight=weight))
        trainer.model_for_training = trainer.network
        totals.append(trainer.train_step(batch)["total"])
    assert totals[0] == totals[1]
    assert totals[2] != totals[0]


def test_seed_alone_decides_the_initial_weights(tiny: Path) -> None:
    """--seed fixes the initial weights whatever ran before in the process (the demo trains the liver model first)."""
    def weights(seed: int, draws: int) -> list[torch.Tensor]:
        torch.rand(draws)  # what an earlier run in the same process consumed
        return [p.detach().clone() for p in Trainer(_config("tumor", seed=seed)).network.parameters()]

    first, second, other = weights(0, 1), weights(0, 1000), weights(1, 1)
    assert all(torch.equal(a, b) for a, b in zip(first, second, strict=True))
    assert not all(torch.equal(a, c) for a, c in zip(first, other, strict=True))


def test_cpu_training_is_channels_last_and_computes_what_a_contiguous_network_does(tiny: Path) -> None:
    """On a CPU the network and its input are channels-last (faster oneDNN kernels). A step gives the loss of the same
    network in the default layout and gradients pointing the same way (the channels-last GroupNorm is less exact, so
    they are not equal to the last digit), and the weights load into a plain network that predicts the same. Without
    the VAE branch, whose noise ``randn_like`` draws in the tensor's memory order."""
    trainer = Trainer(_config("tumor", vae=False))
    trainer.model_for_training = trainer.network
    convs = [m.weight for m in trainer.network.modules() if isinstance(m, torch.nn.Conv3d) and m.in_channels > 1
             and m.kernel_size[0] > 1]
    assert convs and all(w.is_contiguous(memory_format=torch.channels_last_3d) and not w.is_contiguous()
                         for w in convs)
    batch = next(trainer._loader(trainer.train_ids, {}, seed=0, train=True))
    image = trainer._to_device(batch)[0]
    assert image.is_contiguous(memory_format=torch.channels_last_3d)

    plain = Trainer(_config("tumor", vae=False))
    plain.memory_format = torch.contiguous_format
    plain.network.to(memory_format=torch.contiguous_format)  # in place: the optimiser keeps its parameters
    assert all(p.is_contiguous() for p in plain.network.parameters())
    plain.model_for_training = plain.network
    fast, slow = trainer.train_step(batch)["total"], plain.train_step(batch)["total"]
    assert fast == pytest.approx(slow, rel=1e-4)
    for a, b in zip(trainer.network.parameters(), plain.network.parameters(), strict=True):
        assert float(torch.nn.functional.cosine_similarity(a.grad.flatten(), b.grad.flatten(), dim=0)) > 0.99

    reloaded = network_from_checkpoint({"network_state": trainer.network.state_dict(),
                                        "network_kwargs": trainer.network.init_kwargs}, tiny / "x.pth").eval()
    assert all(p.is_contiguous() for p in reloaded.parameters())
    with torch.no_grad():
        torch.testing.assert_close(reloaded(image.contiguous())[0], trainer.network.eval()(image)[0],
                                   rtol=1e-3, atol=1e-3)


def test_a_non_finite_gradient_skips_the_step_and_keeps_the_weights(tiny: Path, caplog) -> None:
    """CPU training runs in float32 by default (bf16 convolution backward can return NaN); should a gradient still be
    non-finite, the step is skipped instead of writing NaN into every weight, and one good step after it trains."""
    trainer = Trainer(_config("tumor"))
    assert trainer.amp_dtype is None  # auto on a CPU trains in float32
    trainer.model_for_training = trainer.network  # what run() sets up
    loader = trainer._loader(trainer.train_ids, {}, seed=0, train=True)
    batch = next(loader)
    before = [p.detach().clone() for p in trainer.network.parameters()]
    real_loss = trainer.loss_fn
    trainer.loss_fn = lambda *a, **k: (lambda total, parts: (total * float("nan"), parts))(*real_loss(*a, **k))
    trainer.train_step(batch)
    assert trainer.skipped_steps == 1 and "optimiser step skipped" in caplog.text
    assert all(torch.equal(a, b) for a, b in zip(before, trainer.network.parameters(), strict=True))
    trainer.loss_fn = real_loss
    trainer.train_step(batch)
    after = list(trainer.network.parameters())
    assert all(torch.isfinite(p).all() for p in after) and not all(
        torch.equal(a, b) for a, b in zip(before, after, strict=True))
    assert trainer.skipped_steps == 1


@pytest.mark.parametrize("change, words", [
    ({"fold": "7"}, "fold 7 does not exist"),
    ({"trainer": "NoSuchTrainer"}, "available: SmoothSegTrainer, Trainer"),
    ({"dataset": "42"}, "Dataset900_SyntheticLiver"),
    ({"device": "cuda"}, "no CUDA GPU"),
])
def test_clear_errors(tiny: Path, change: dict, words: str) -> None:
    if change.get("device") == "cuda" and torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(SmoothSegError, match=words):
        train(_config("tumor", **change))


def test_optimizers_learning_rates_and_resume_with_another_optimizer(tiny: Path) -> None:
    from smoothseg.training.config import DEFAULT_LR
    from smoothseg.training.optim import initial_lr

    adamw = SmoothSegTrainer(_config("tumor"))
    assert isinstance(adamw.optimizer, torch.optim.AdamW) and adamw.loss_fn.seg_loss.batch_dice
    assert adamw.lr_at(0) == DEFAULT_LR["adamw"]
    sgd = SmoothSegTrainer(_config("tumor", optimizer="sgd", initial_lr=0.02, batch_dice=False))
    assert isinstance(sgd.optimizer, torch.optim.SGD) and sgd.optimizer.defaults["nesterov"]
    assert sgd.lr_at(0) == 0.02 and not sgd.loss_fn.seg_loss.batch_dice
    assert initial_lr(_config("tumor", optimizer="sgd")) == DEFAULT_LR["sgd"]
    with pytest.raises(SmoothSegError, match="unknown optimizer 'adam'"):
        SmoothSegTrainer(_config("tumor", optimizer="adam"))
    train(_config("tumor", epochs=1))
    with pytest.raises(SmoothSegError, match="trained with --optimizer adamw"):
        train(_config("tumor", epochs=2, optimizer="sgd", continue_training=True))


def test_mask_leak_reaches_the_training_loader_only_and_a_run_keeps_it(tiny: Path, monkeypatch) -> None:
    """--mask-leak-mm goes from the command line to the training loader (never the validation loader); a run
    continued with another value, or a negative value, is a clear error."""
    import smoothseg.cli.train as cli_train

    seen = {}
    monkeypatch.setattr(cli_train, "train_and_validate", lambda config, device: seen.setdefault("config", config))
    assert cli_train.main(["900", "tumor", "0", "-device", "cpu", "--mask-leak-mm", "0"]) == 0
    assert seen["config"].mask_leak_mm == 0.0
    ids = sorted(p.stem for p in (tiny / "tumor").glob("*.json"))
    for leak in (0.0, 15.0):
        trainer = SmoothSegTrainer(_config("tumor", mask_leak_mm=leak))
        assert trainer._loader(ids, {}, seed=0, train=True).data_loader.config.mask_leak_mm == leak
        assert trainer._loader(ids, {}, seed=0, train=False).data_loader.config.mask_leak_mm == 0.0
    with pytest.raises(SmoothSegError, match="--mask-leak-mm must be a non-negative number"):
        SmoothSegTrainer(_config("tumor", mask_leak_mm=-1.0))
    train(_config("tumor", epochs=1))
    with pytest.raises(SmoothSegError, match="trained with --mask-leak-mm 15; continue it with the same value"):
        train(_config("tumor", epochs=2, mask_leak_mm=0.0, continue_training=True))
    with pytest.raises(SmoothSegError, match="trained with --lesion-sampling 0.5; continue it with the same value"):
        train(_config("tumor", epochs=2, lesion_sampling=0.0, continue_training=True))


def test_lesion_sampling_and_clean_liver_reach_the_tumour_training_loader_only(tiny: Path, monkeypatch) -> None:
    """The flags go from the command line to the tumour task's training loader; the validation loader and the liver
    task sample as before; out-of-range values are clear errors."""
    import smoothseg.cli.train as cli_train

    seen = {}
    monkeypatch.setattr(cli_train, "train_and_validate", lambda config, device: seen.setdefault("config", config))
    assert cli_train.main(["900", "tumor", "0", "-device", "cpu", "--lesion-sampling", "0.8", "--lesion-alpha", "0.5",
                           "--clean-liver", "0", "--lesion-synthesis", "0.2"]) == 0
    config = seen["config"]
    assert (config.lesion_sampling, config.lesion_alpha, config.clean_liver, config.lesion_synthesis) == \
        (0.8, 0.5, 0, 0.2)
    ids = sorted(p.stem for p in (tiny / "tumor").glob("*.json"))
    trainer = SmoothSegTrainer(_config("tumor", lesion_sampling=0.8, clean_liver=0.3, lesion_synthesis=0.2))
    train_loader = trainer._loader(ids, {}, seed=0, train=True).data_loader
    train_cfg = train_loader.config
    val_cfg = trainer._loader(ids, {}, seed=0, train=False).data_loader.config
    assert (train_cfg.lesion_sampling, train_cfg.clean_liver, train_cfg.lesion_synthesis) == (0.8, 0.3, 0.2)
    assert train_loader.synthesis is not None  # the preprocessed cases carry their intensity statistics
    assert (val_cfg.lesion_sampling, val_cfg.clean_liver, val_cfg.lesion_synthesis) == (0.0, 0.0, 0.0)
    liver = SmoothSegTrainer(_config("liver", lesion_sampling=0.8, clean_liver=0.3, lesion_synthesis=0.2))
    liver_cfg = liver._loader(ids, {}, seed=0, train=True).data_loader.config
    assert (liver_cfg.lesion_sampling, liver_cfg.clean_liver, liver_cfg.lesion_synthesis) == (0.0, 0.0, 0.0)
    with pytest.raises(SmoothSegError, match="--clean-liver must be a share between 0 and 1"):
        SmoothSegTrainer(_config("tumor", clean_liver=2.0))


def test_unknown_configuration_lists_the_existing_ones(tiny: Path, data_home: Path) -> None:
    out = run_cli("train", "900", "lung", "0", home=data_home)
    assert out.returncode == 2 and "invalid choice: 'lung'" in out.stderr and "liver" in out.stderr


def test_killed_run_resumes_from_its_last_checkpoint(tiny: Path, data_home: Path) -> None:
    import os

    env = {k: v for k, v in os.environ.items() if not k.startswith("SMOOTHSEG_")}
    env["SMOOTHSEG_HOME"] = str(data_home)
    args = [sys.executable, "-m", "smoothseg.cli.train", "900", "tumor", "0", "-device", "cpu", "--epochs", "40",
            "--iters-per-epoch", "2", "--val-iters", "1", "--num-workers", "0"]
    fold = data_home / "results" / "Dataset900_SyntheticLiver" / "SmoothSegTrainer__tumor" / "fold_0"
    proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 120
        while time.time() < deadline:
            latest = fold / "checkpoint_latest.pth"
            if latest.exists() and load_checkpoint(latest)["epoch"] >= 1:
                break
            time.sleep(0.2)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    assert not (fold / "checkpoint_final.pth").exists()
    done = load_checkpoint(fold / "checkpoint_latest.pth")["epoch"] + 1
    assert 2 <= done < 40
    resumed = run_cli("train", "900", "tumor", "0", "-device", "cpu", "--epochs", str(done + 2), "--iters-per-epoch",
                      "2", "--val-iters", "1", "--num-workers", "0", "--c", home=data_home)
    assert resumed.returncode == 0, resumed.stderr
    assert f"{done} epoch(s) done, continuing at epoch {done}" in resumed.stderr
    final = load_checkpoint(fold / "checkpoint_final.pth")
    assert final["epoch"] == done + 1 and len(final["progress"]["train_loss"]) == done + 2


def test_training_both_tasks_runs_the_full_validation(tiny: Path, data_home: Path) -> None:
    """Once liver and tumour models of a fold are final, training ends with the cascade on the validation cases."""
    cpu = torch.device("cpu")
    liver = train_and_validate(_config("liver", epochs=1), cpu)
    assert not (liver / "validation").exists()  # waits for the tumour model
    tumor = train_and_validate(_config("tumor", epochs=1), cpu)
    validation = tumor / "validation"
    val_ids = json.loads((tiny / "splits.json").read_text())["splits"][0]["val"]
    metrics = json.loads((validation / "metrics.json").read_text())
    rows = {row["case_id"]: row for row in metrics["cases"]}
    assert sorted(rows) == sorted(val_ids)
    raw = data_home / "raw" / "Dataset900_SyntheticLiver"
    for case_id in val_ids:
        labels, geometry = read_image(validation / f"{case_id}.nii.gz")
        _, image_geometry = read_image(raw / "imagesTr" / f"{case_id}_0000.nii.gz")
        assert not geometry.differences(image_geometry, spacing_tol=1e-6, origin_tol_mm=1e-4, direction_tol=1e-6)
        assert set(np.unique(labels).tolist()) <= {0, 1, 2}
        reference, _ = read_image(raw / "labelsTr" / f"{case_id}.nii.gz")
        pred, ref = labels > 0, np.isin(reference, (1, 2, 3))  # the demo dataset's liver region: 1, 2 and vessel 3
        assert rows[case_id]["liver_dice"] == pytest.approx(2 * (pred & ref).sum() / (pred.sum() + ref.sum()))
    again = run_cli("train", "900", "tumor", "0", "-device", "cpu", "--val", home=data_home)
    assert again.returncode == 0, again.stderr
    missing = run_cli("train", "900", "tumor", "1", "-device", "cpu", "--val", home=data_home)
    assert missing.returncode == 2 and "train this fold first" in missing.stderr


def test_deep_supervision_trains_its_heads_and_a_run_keeps_it(tiny: Path) -> None:
    """--deep-supervision: the checkpoint's network has the deep heads (trained: they moved from their initial
    weights) and rebuilds for prediction; a continued run must keep the setting, on either task."""
    output = train(_config("liver", epochs=1, deep_supervision=True))
    payload = load_checkpoint(output / "checkpoint_final.pth")
    assert payload["network_kwargs"]["deep_supervision"] and payload["config"]["deep_supervision"]
    network = network_from_checkpoint(payload, output / "checkpoint_final.pth")
    initial = SmoothSegTrainer(_config("liver", deep_supervision=True)).network  # seed 0's initial weights
    assert any(not torch.equal(a, b) for a, b in zip(network.deep_heads.parameters(), initial.deep_heads.parameters(),
                                                    strict=True))
    with pytest.raises(SmoothSegError, match="trained with deep supervision; continue it with --deep-supervision"):
        train(_config("liver", epochs=2, continue_training=True))


def test_deep_supervision_defaults_to_the_tumour_task_only(tiny: Path) -> None:
    """Unset, deep supervision is on for the tumour task (what the ablation measured) and off for the liver task;
    either can be set explicitly (``--deep-supervision`` / ``--no-deep-supervision``)."""
    assert _config("tumor").deep_supervision is True and _config("liver").deep_supervision is False
    assert _config("tumor", deep_supervision=False).deep_supervision is False
    assert SmoothSegTrainer(_config("tumor")).network.deep_supervision
    assert not SmoothSegTrainer(_config("liver")).network.deep_supervision


def test_no_deep_supervision_flag_trains_without_heads(tiny: Path, data_home: Path) -> None:
    result = run_cli("train", "900", "tumor", "0", "-device", "cpu", "--epochs", "1", "--iters-per-epoch", "1",
                     "--val-iters", "1", "--num-workers", "0", "--no-val", "--no-deep-supervision", home=data_home)
    assert result.returncode == 0, result.stderr
    output = data_home / "results" / "Dataset900_SyntheticLiver" / "SmoothSegTrainer__tumor" / "fold_0"
    payload = load_checkpoint(output / "checkpoint_final.pth")
    assert payload["config"]["deep_supervision"] is False and not payload["network_kwargs"]["deep_supervision"]

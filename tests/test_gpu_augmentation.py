"""Augmentation on the training device (smoothseg.training.gpu_augmentation), run here on CPU tensors: the geometry
of the spatial transform, labels kept, the CPU pipeline's ranges, statistics close to batchgenerators', and a
training run that uses it."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from inference_helpers import shrink_plans

from smoothseg.training.augmentation import training_transforms
from smoothseg.training.config import TrainingConfig
from smoothseg.training.data_loader import PatchLoader, SamplingConfig
from smoothseg.training.gpu_augmentation import (
    DeviceAugmenter,
    rotation_matrix,
    source_patch_size,
    spatial_transform,
    training_ranges,
)
from smoothseg.training.trainer import train
from smoothseg.workflows.plan_and_preprocess import plan_and_preprocess


def _source(shape, seed=0) -> tuple[torch.Tensor, torch.Tensor]:
    rng = np.random.default_rng(seed)
    data = torch.from_numpy(rng.normal(size=(1, 1, *shape)).astype(np.float32))
    seg = torch.from_numpy(rng.integers(0, 3, size=(1, 1, *shape)).astype(np.int16))
    return data, seg


@pytest.mark.parametrize("patch", [(32, 48, 48), (16, 112, 128)])
def test_the_source_patch_holds_every_sampled_point(patch) -> None:
    ranges = training_ranges(patch)
    source = np.asarray(source_patch_size(ranges))
    assert (source >= patch).all() and ((source - patch) % 2 == 0).all()
    half = (np.asarray(patch) - 1) / 2
    corners = np.array(np.meshgrid(*[(-h, h) for h in half], indexing="ij")).reshape(3, -1).T
    augmenter = DeviceAugmenter(ranges, 0.0, seed=1)
    moved = 0
    for _ in range(2000):
        matrix = augmenter.matrix(augmenter.draw())
        if matrix is None:
            continue
        moved += 1
        reach = np.abs(corners @ matrix.T).max(0)
        assert (reach <= (source - 1) / 2 - 1 + 1e-6).all(), (matrix, reach, source)
    assert moved > 500
    if patch[0] * 3 < max(patch[1:]):  # anisotropic: rotation within the (y, x) plane only, z needs no margin
        assert ranges.out_of_plane == (0.0, 0.0) and source[0] <= patch[0] * 1.2 + 4


def test_no_rotation_or_scale_is_the_exact_centre_crop() -> None:
    data, seg = _source((21, 30, 34))
    out_data, out_seg = spatial_transform(data, seg, (11, 16, 20), [None], fill_value=-3.0)
    torch.testing.assert_close(out_data, data[:, :, 5:16, 7:23, 7:27], rtol=0, atol=0)
    assert torch.equal(out_seg, seg[:, :, 5:16, 7:23, 7:27])


def test_a_quarter_turn_in_plane_is_a_rot90_and_keeps_labels_and_intensities() -> None:
    data, seg = _source((9, 21, 21))
    matrix = rotation_matrix(math.pi / 2, 0.0, 0.0)
    out_data, out_seg = spatial_transform(data, seg, (9, 15, 15), [matrix], fill_value=-3.0)
    centre_data, centre_seg = data[0, 0, :, 3:18, 3:18], seg[0, 0, :, 3:18, 3:18]
    # output (z, y, x) reads source (z, x', -y'): a quarter turn of the (y, x) plane
    matches = [k for k in (1, 3) if torch.equal(out_seg[0, 0], torch.rot90(centre_seg, k, dims=(1, 2)))]
    assert matches, "the labels are not a quarter turn of the centre"
    torch.testing.assert_close(out_data[0, 0], torch.rot90(centre_data, matches[0], dims=(1, 2)), atol=1e-5, rtol=0)
    assert set(out_seg.unique().tolist()) <= {0, 1, 2}


def test_a_bar_along_x_turned_by_a_quarter_lies_along_y_and_scaling_reads_further_out() -> None:
    data = torch.zeros(1, 1, 9, 41, 41)
    seg = torch.zeros(1, 1, 9, 41, 41, dtype=torch.int16)
    seg[0, 0, 4, 20, 10:31] = 2  # a bar along x through the centre
    data[0, 0, 4, 20, 10:31] = 1.0
    _, turned = spatial_transform(data, seg, (9, 31, 31), [rotation_matrix(math.pi / 2, 0, 0)], 0.0)
    assert torch.equal(torch.nonzero(turned[0, 0] == 2)[:, 2].unique(), torch.tensor([15]))  # one x column
    assert turned[0, 0, 4, 5:26, 15].eq(2).all() and turned.eq(2).sum() == 21
    _, zoomed = spatial_transform(data, seg, (9, 31, 31), [2.0 * np.eye(3)], 0.0)  # reads 2 voxels per voxel
    assert zoomed.eq(2).sum() == 11 and zoomed[0, 0, 4, 15, 10:21].eq(2).all()
    filled, _ = spatial_transform(data, seg, (9, 31, 31), [4.0 * np.eye(3)], -7.0)  # beyond the source: the fill
    assert filled[0, 0, 0, 0, 0] == -7.0


def test_parameters_follow_the_cpu_pipelines_probabilities_and_ranges() -> None:
    ranges = training_ranges((32, 48, 48))
    augmenter = DeviceAugmenter(ranges, 0.0, seed=3)
    draws = [augmenter.draw() for _ in range(4000)]
    n = len(draws)

    def share(values, p):
        k = sum(v is not None for v in values)
        assert abs(k / n - p) < 5 * math.sqrt(p * (1 - p) / n), (k / n, p)

    share([d.rotation for d in draws], ranges.p_rotation)
    share([d.scale for d in draws], ranges.p_scale)
    share([d.noise_std for d in draws], ranges.p_noise)
    share([d.blur_sigma for d in draws], ranges.p_blur * ranges.p_blur_channel)
    share([d.brightness for d in draws], ranges.p_brightness)
    share([d.contrast for d in draws], ranges.p_contrast)
    share([d.low_resolution_zoom for d in draws], ranges.p_low_resolution * ranges.p_low_resolution_channel)
    share([d.gamma_inverted for d in draws], ranges.p_gamma_inverted)
    share([d.gamma for d in draws], ranges.p_gamma)
    for axis in (0, 1, 2):
        share([True if axis in d.mirror else None for d in draws], 0.5)

    def within(values, bounds):
        values = [v for v in values if v is not None]
        assert values and min(values) >= bounds[0] and max(values) <= bounds[1]

    within([d.scale for d in draws], ranges.scale)
    within([d.noise_std for d in draws], ranges.noise_std)
    within([d.blur_sigma for d in draws], ranges.blur_sigma)
    within([d.brightness for d in draws], ranges.brightness)
    within([d.contrast for d in draws], ranges.contrast)
    within([d.low_resolution_zoom for d in draws], ranges.low_resolution_zoom)
    within([d.gamma for d in draws], ranges.gamma)
    angles = [math.atan2(d.rotation[2, 1], d.rotation[1, 1]) for d in draws if d.rotation is not None]
    assert max(abs(a) for a in angles) <= math.pi / 6 + math.pi / 12 + 1e-6  # in-plane, plus what tilts add


@pytest.fixture
def tiny(demo_dataset: Path, data_home: Path) -> Path:
    return shrink_plans(plan_and_preprocess(900).folder)


def test_augmented_statistics_are_close_to_batchgenerators(tiny: Path) -> None:
    """The same tumour cases through both pipelines (300 patches each): intensity mean and spread inside the labelled
    liver, the share of labelled voxels and of tumour voxels agree within loose bounds; a broken transform (e.g. no
    fill value outside the source, labels interpolated) would not."""
    folder = tiny / "tumor"
    ids = sorted(p.stem for p in folder.glob("*.json"))
    patch, fill = (16, 32, 32), -4.0
    ranges = training_ranges(patch)
    device = DeviceAugmenter(ranges, fill, seed=0)
    common = dict(oversample_foreground=0.33, mask_outside_liver=True, mask_jitter_mm=5.0, fill_value=fill)
    cpu_loader = PatchLoader(folder, ids, SamplingConfig(patch, 6, **common), seed=0)
    device_loader = PatchLoader(folder, ids, SamplingConfig(patch, 6, crop_size=device.source_size, **common), seed=0)
    cpu_transforms = training_transforms(patch, fill, ranges.mirror_axes)
    np.random.seed(0)
    stats = {"cpu": [], "device": []}
    for _ in range(50):
        cpu = cpu_transforms(**cpu_loader.generate_train_batch())
        stats["cpu"].append((np.asarray(cpu["data"]), np.asarray(cpu["seg"])))
        dev = device(device_loader.generate_train_batch())
        assert tuple(dev["data"].shape[2:]) == patch and dev["liver_coverage"].shape == (6,)
        stats["device"].append((dev["data"].numpy(), dev["seg"].numpy()))
    summary = {}
    for name, batches in stats.items():
        data = np.concatenate([d for d, _ in batches])
        seg = np.concatenate([s for _, s in batches])
        assert set(np.unique(seg)) <= {0, 1, 2}
        liver = seg > 0
        summary[name] = (data[liver].mean(), data[liver].std(), liver.mean(), (seg == 2).mean())
    cpu, dev = summary["cpu"], summary["device"]
    assert abs(cpu[0] - dev[0]) < 0.25, summary
    assert 0.75 < dev[1] / cpu[1] < 1.33, summary
    assert 0.7 < dev[2] / cpu[2] < 1.43, summary
    assert 0.4 < (dev[3] + 1e-4) / (cpu[3] + 1e-4) < 2.5, summary


def test_the_same_seed_gives_the_same_augmented_batch() -> None:
    ranges = training_ranges((8, 16, 16))
    size = source_patch_size(ranges)
    data, seg = _source(size, seed=4)
    batch = {"data": data.repeat(4, 1, 1, 1, 1), "seg": seg.repeat(4, 1, 1, 1, 1), "liver_voxels": np.full(4, 1e4)}
    a = DeviceAugmenter(ranges, 0.0, seed=9)(batch)
    b = DeviceAugmenter(ranges, 0.0, seed=9)(batch)
    c = DeviceAugmenter(ranges, 0.0, seed=10)(batch)
    assert torch.equal(a["data"], b["data"]) and torch.equal(a["seg"], b["seg"])
    assert not torch.equal(a["data"], c["data"])
    with pytest.raises(ValueError, match="expected source patches"):
        DeviceAugmenter(ranges, 0.0)({**batch, "data": data[..., :-1]})


def test_training_with_device_augmentation_ships_source_patches(tiny: Path, monkeypatch) -> None:
    shapes = []
    original = DeviceAugmenter.__call__

    def spy(self, batch, device=None):
        shapes.append((tuple(np.asarray(batch["data"]).shape[2:]), self.source_size))
        return original(self, batch, device)

    monkeypatch.setattr(DeviceAugmenter, "__call__", spy)
    out = train(TrainingConfig(dataset="900", task="tumor", fold="0", device="cpu", epochs=1, iters_per_epoch=3,
                               val_iters=1, num_workers=1, gpu_augmentation="on", validate=False))
    assert len(shapes) == 3 and all(got == expected for got, expected in shapes)
    assert shapes[0][0] != (16, 32, 32)  # the workers cut larger patches than the network sees
    assert (out / "checkpoint_final.pth").is_file()
    with pytest.raises(Exception, match="choose auto, on or off"):
        train(TrainingConfig(dataset="900", task="tumor", fold="1", device="cpu", epochs=1, iters_per_epoch=1,
                             val_iters=1, num_workers=0, gpu_augmentation="maybe", validate=False))

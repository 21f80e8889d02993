"""Tests for smoothseg.inference.sliding_window: tiling, Gaussian weights, stitching, mirroring, batching."""

from __future__ import annotations

import itertools
import logging

import numpy as np
import pytest
import torch
from torch import nn

from smoothseg.inference import sliding_window as sw
from smoothseg.inference.sliding_window import compute_tile_starts, gaussian_importance_map, sliding_window_predict

PATCH = (8, 10, 12)


class ConstantModel(nn.Module):
    """Returns the same logits at every voxel, whatever the input."""

    def __init__(self, logits: list[float]) -> None:
        super().__init__()
        self.register_buffer("logits", torch.tensor(logits, dtype=torch.float32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k = self.logits.numel()
        return self.logits.view(1, k, 1, 1, 1).expand(x.shape[0], k, *x.shape[2:]).clone()


def voxelwise_model(in_channels: int = 2, num_classes: int = 3, seed: int = 0) -> nn.Module:
    """A 1x1x1 convolution with fixed random weights: logits are a function of each voxel's intensities only."""
    torch.manual_seed(seed)
    conv = nn.Conv3d(in_channels, num_classes, kernel_size=1)
    with torch.no_grad():
        conv.weight.mul_(3.0)
    return conv.eval()


def contextual_model(num_classes: int = 3, seed: int = 1) -> nn.Module:
    """A 3x3x3 convolution with random (asymmetric) weights and zero padding: neither flip- nor tile-equivariant."""
    torch.manual_seed(seed)
    return nn.Conv3d(1, num_classes, kernel_size=3, padding=1).eval()


def _image(shape: tuple[int, ...], channels: int = 2, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn((channels, *shape), generator=generator)


# ----------------------------------------------------------------------------------------------------------------
# Gaussian map and tile layout
# ----------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("patch", [(8, 9, 10), (16, 16, 16), (5, 32, 7)])
def test_gaussian_map_is_positive_symmetric_and_peaks_at_the_centre(patch: tuple[int, int, int]) -> None:
    g = gaussian_importance_map(patch)
    assert g.shape == patch and g.dtype == torch.float32
    assert float(g.min()) > 0
    assert float(g.max()) == pytest.approx(1.0)
    centre = tuple(p // 2 for p in patch)
    assert float(g[centre]) == pytest.approx(float(g.max()), rel=0.05)
    assert float(g[0, 0, 0]) < 0.01 * float(g[centre])
    torch.testing.assert_close(g, torch.flip(g, (0, 1, 2)))
    # Monotonic away from the centre along each axis.
    line = g[:, patch[1] // 2, patch[2] // 2]
    assert torch.all(line[1:patch[0] // 2 + 1] >= line[:patch[0] // 2])


def test_gaussian_map_minimum_is_clamped() -> None:
    g = gaussian_importance_map((64, 64, 64), sigma_scale=1 / 16, min_value=1e-4, dtype=torch.float64)
    assert g.dtype == torch.float64
    assert float(g.min()) == pytest.approx(1e-4)


@pytest.mark.parametrize(("image_shape", "patch", "step"), [
    ((100, 37, 64), (32, 32, 64), 0.5),
    ((8, 10, 12), (8, 10, 12), 0.5),
    ((57, 91, 33), (16, 20, 8), 0.25),
    ((57, 91, 33), (16, 20, 8), 1.0),
    ((130, 130, 130), (48, 64, 96), 0.7),
])
def test_tile_starts_cover_the_image_and_respect_the_step(image_shape, patch, step) -> None:
    starts = compute_tile_starts(image_shape, patch, step)
    for n, p, axis_starts in zip(image_shape, patch, starts, strict=True):
        assert axis_starts[0] == 0
        assert axis_starts[-1] == n - p
        assert axis_starts == sorted(set(axis_starts))
        covered = np.zeros(n, dtype=bool)
        for s in axis_starts:
            covered[s:s + p] = True
        assert covered.all()
        gaps = np.diff(axis_starts)
        if len(axis_starts) > 1:
            # Neighbours are at most one target step apart (plus rounding), i.e. they overlap by >= (1 - step) * p.
            assert gaps.max() <= int(np.ceil(step * p)) + 0
            assert (p - gaps).min() >= p - int(np.ceil(step * p))
            # Evenly spread: the gaps differ by at most one voxel.
            assert gaps.max() - gaps.min() <= 1
        # Mirror-symmetric layout (a middle tile cannot be centred exactly when n - p is odd: +-1 voxel there).
        mirrored = sorted(n - p - s for s in axis_starts)
        assert all(abs(a - b) <= (1 if 2 * i + 1 == len(axis_starts) else 0)
                   for i, (a, b) in enumerate(zip(mirrored, axis_starts, strict=True)))


def test_tile_starts_reject_images_smaller_than_the_patch_and_bad_steps() -> None:
    with pytest.raises(ValueError):
        compute_tile_starts((7, 10, 12), PATCH)
    with pytest.raises(ValueError):
        compute_tile_starts((8, 10, 12), PATCH, step_size=0.0)
    with pytest.raises(ValueError):
        compute_tile_starts((8, 10), PATCH)


# ----------------------------------------------------------------------------------------------------------------
# Stitching
# ----------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("shape", [(8, 10, 12), (5, 6, 7), (3, 30, 9), (19, 23, 17), (21, 31, 40)])
@pytest.mark.parametrize("gaussian", [True, False])
def test_constant_model_gives_constant_probabilities_everywhere(shape, gaussian) -> None:
    logits = [0.3, -1.2, 2.0]
    expected = torch.softmax(torch.tensor(logits), 0)
    out = sliding_window_predict(ConstantModel(logits), _image(shape, 1), PATCH, 3, gaussian=gaussian)
    assert out.shape == (3, *shape) and out.dtype == torch.float32 and out.device.type == "cpu"
    torch.testing.assert_close(out, expected.view(3, 1, 1, 1).expand_as(out), atol=1e-6, rtol=0)
    # Including the very borders and corners.
    torch.testing.assert_close(out[:, -1, -1, -1], expected, atol=1e-6, rtol=0)


@pytest.mark.parametrize("shape", [(8, 10, 12), (5, 6, 7), (19, 23, 17), (13, 40, 25)])
@pytest.mark.parametrize("step", [0.5, 0.33, 1.0])
def test_voxelwise_model_matches_whole_image_prediction(shape, step) -> None:
    model = voxelwise_model()
    image = _image(shape)
    with torch.no_grad():
        expected = torch.softmax(model(image[None]), 1)[0]
    out = sliding_window_predict(model, image, PATCH, 3, step_size=step)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=0)
    torch.testing.assert_close(out.sum(0), torch.ones(shape), atol=1e-5, rtol=0)


@pytest.mark.parametrize("shape", [(8, 10, 12), (7, 10, 12)])
def test_result_is_an_ordinary_tensor(shape) -> None:
    out = sliding_window_predict(voxelwise_model(), _image(shape), PATCH, 3)
    assert not out.is_inference() and out.is_contiguous()
    out += 1.0  # in-place updates must work outside inference mode


def test_accepts_numpy_images_and_tuple_outputs() -> None:
    model = voxelwise_model()

    class TupleModel(nn.Module):  # like a network that also returns a VAE branch / deep-supervision outputs
        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            return model(x), torch.zeros(())

    image = _image((9, 11, 13))
    out = sliding_window_predict(TupleModel(), image.numpy(), PATCH, 3)
    torch.testing.assert_close(out, sliding_window_predict(model, image, PATCH, 3))


def test_module_in_training_mode_is_evaluated_in_eval_mode_and_restored() -> None:
    seen: list[bool] = []

    class Recorder(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            seen.append(self.training)
            return torch.zeros((x.shape[0], 2, *x.shape[2:]))

    model = Recorder().train()
    sliding_window_predict(model, _image((8, 10, 12), 1), PATCH, 2)
    assert seen and not any(seen)
    assert model.training


def test_wrong_output_shape_is_reported() -> None:
    with pytest.raises(ValueError, match="network output"):
        sliding_window_predict(voxelwise_model(num_classes=2), _image((8, 10, 12)), PATCH, 3)


# ----------------------------------------------------------------------------------------------------------------
# Mirroring and batching
# ----------------------------------------------------------------------------------------------------------------

def test_mirroring_a_voxelwise_model_changes_nothing() -> None:
    model = voxelwise_model()
    image = _image((11, 23, 17))
    plain = sliding_window_predict(model, image, PATCH, 3)
    mirrored = sliding_window_predict(model, image, PATCH, 3, mirror_axes=(0, 1, 2))
    torch.testing.assert_close(mirrored, plain, atol=1e-5, rtol=0)


@pytest.mark.parametrize("axes", [(0, 1, 2), (2,), (0, 2)])
def test_mirroring_equals_the_explicit_average_of_flipped_predictions(axes) -> None:
    model = contextual_model()
    image = _image((11, 23, 17), 1)
    tta = sliding_window_predict(model, image, PATCH, 3, mirror_axes=axes)
    plain = sliding_window_predict(model, image, PATCH, 3)
    assert (tta - plain).abs().max() > 1e-3  # the model is not flip-equivariant, so TTA matters

    combos = [c for k in range(len(axes) + 1) for c in itertools.combinations(axes, k)]
    expected = torch.zeros_like(tta)
    for combo in combos:
        dims = tuple(a + 1 for a in combo)  # spatial axis -> dim of the (C, Z, Y, X) image
        flipped = torch.flip(image, dims) if dims else image
        prediction = sliding_window_predict(model, flipped, PATCH, 3)
        expected += torch.flip(prediction, dims) if dims else prediction
    expected /= len(combos)
    torch.testing.assert_close(tta, expected, atol=1e-5, rtol=0)


def test_batch_size_does_not_change_the_result() -> None:
    model = contextual_model()
    image = _image((13, 27, 30), 1)
    reference = sliding_window_predict(model, image, PATCH, 3, batch_size=1, mirror_axes=(1,))
    for batch_size in (3, 7, 1000):
        out = sliding_window_predict(model, image, PATCH, 3, batch_size=batch_size, mirror_axes=(1,))
        torch.testing.assert_close(out, reference, atol=1e-6, rtol=0)


def test_progress_bar_runs() -> None:
    out = sliding_window_predict(voxelwise_model(), _image((9, 11, 13)), PATCH, 3, progress=True)
    assert out.shape == (3, 9, 11, 13)


def test_out_of_memory_on_the_accumulation_device_falls_back_to_cpu(monkeypatch, caplog) -> None:
    original = sw._Accumulator._allocate

    def allocate(self, num_classes, shape, device):
        if device.type != "cpu":
            raise torch.OutOfMemoryError("simulated")
        original(self, num_classes, shape, device)

    monkeypatch.setattr(sw._Accumulator, "_allocate", allocate)
    model = voxelwise_model()
    image = _image((9, 11, 13))
    with caplog.at_level(logging.WARNING, logger="smoothseg.inference.sliding_window"):
        out = sliding_window_predict(model, image, PATCH, 3, accumulate_device="meta")
    assert "Out of memory" in caplog.text
    torch.testing.assert_close(out, sliding_window_predict(model, image, PATCH, 3))


def test_argument_checks() -> None:
    model = voxelwise_model()
    with pytest.raises(ValueError):
        sliding_window_predict(model, _image((9, 11, 13))[0], PATCH, 3)  # no channel axis
    with pytest.raises(ValueError):
        sliding_window_predict(model, _image((9, 11, 13)), PATCH, 3, mirror_axes=(3,))
    with pytest.raises(ValueError):
        sliding_window_predict(model, _image((9, 11, 13)), PATCH, 3, batch_size=0)


# ----------------------------------------------------------------------------------------------------------------
# Tiles outside a region (the tumour stage's liver) are not run
# ----------------------------------------------------------------------------------------------------------------

class CountingModel(nn.Module):
    """A contextual model that counts the tiles it is given."""

    def __init__(self) -> None:
        super().__init__()
        self.inner = contextual_model()
        self.tiles = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.tiles += x.shape[0]
        return self.inner(x)


def _corner_region(shape: tuple[int, int, int]) -> np.ndarray:
    region = np.zeros(shape, dtype=bool)
    region[1:5, 2:7, 3:8] = True  # one corner of the image: most tiles hold none of it
    return region


def test_tiles_without_the_region_are_not_run_and_the_region_keeps_its_probabilities() -> None:
    shape = (24, 40, 44)
    image = _image(shape, 1)
    region = _corner_region(shape)
    everything, skipping = CountingModel(), CountingModel()
    reference = sliding_window_predict(everything, image, PATCH, 3, batch_size=1)
    out = sliding_window_predict(skipping, image, PATCH, 3, batch_size=1, region=region)
    all_tiles = int(np.prod([len(s) for s in compute_tile_starts(shape, PATCH, 0.5)]))
    assert everything.tiles == all_tiles
    assert 0 < skipping.tiles < all_tiles / 4
    assert skipping.tiles == len(sw.tiles_to_run(sw.tile_regions(shape, PATCH, 0.5), region))
    # the region and its margin: summed over the same tiles as before
    near = np.zeros(shape, dtype=bool)
    near[0:5 + sw.REGION_MARGIN, 0:7 + sw.REGION_MARGIN, 1:8 + sw.REGION_MARGIN] = True
    torch.testing.assert_close(out[:, torch.from_numpy(near)], reference[:, torch.from_numpy(near)], atol=1e-6, rtol=0)
    # voxels no tile reached: background; everywhere a probability distribution
    far = out[:, -1, -1, -1]
    assert far.tolist() == [1.0, 0.0, 0.0]
    torch.testing.assert_close(out.sum(0), torch.ones(shape), atol=1e-5, rtol=0)


def test_a_tile_that_touches_the_region_only_within_the_margin_still_runs() -> None:
    tiles = [(slice(0, 8), slice(0, 10), slice(0, 12)), (slice(0, 8), slice(0, 10), slice(14, 26))]
    region = np.zeros((8, 10, 26), dtype=bool)
    region[4, 5, 13] = True  # one voxel between the two tiles: 2 voxels past the first, next to the second
    assert sw.tiles_to_run(tiles, region, margin=2) == tiles
    assert sw.tiles_to_run(tiles, region, margin=1) == tiles[1:]
    assert sw.tiles_to_run(tiles, region, margin=0) == []
    assert sw.tiles_to_run(tiles, None) == tiles


def test_an_empty_region_runs_no_tile_and_a_full_one_every_tile() -> None:
    shape = (9, 11, 13)
    image = _image(shape, 1)
    model = CountingModel()
    out = sliding_window_predict(model, image, PATCH, 3, region=np.zeros(shape, dtype=bool))
    assert model.tiles == 0 and bool((out[0] == 1).all())
    model = CountingModel()
    full = sliding_window_predict(model, image, PATCH, 3, region=np.ones(shape, dtype=bool))
    torch.testing.assert_close(full, sliding_window_predict(contextual_model(), image, PATCH, 3))
    with pytest.raises(ValueError, match="region shape"):
        sliding_window_predict(model, image, PATCH, 3, region=np.ones((9, 11, 12), dtype=bool))

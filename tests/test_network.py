"""SegResNetVAE: shapes, train/eval conventions, validation, parameter and activation counts, learning, autocast."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from smoothseg.network import (
    SegResNetVAE,
    count_parameters,
    estimate_activation_elements,
    measure_activation_elements,
    required_divisor,
)


def small(**kwargs) -> SegResNetVAE:
    defaults = {"in_channels": 1, "out_channels": 3, "input_image_size": (16, 32, 32), "init_filters": 4,
                "num_groups": 4}
    return SegResNetVAE(**{**defaults, **kwargs})


def expected_parameters(c_in: int, c_out: int, f: int, blocks_down, blocks_up, patch, vae: bool = True,
                        nz: int = 256, estimate_std: bool = False) -> int:
    """Hand-derived count: bias-free 3x3x3 convs 27*a*b, 1x1x1 a*b, affine norms 2c, heads with bias."""
    n = len(blocks_down)

    def norm(c: int) -> int:
        return 2 * c

    def res_block(c: int) -> int:
        return 2 * norm(c) + 2 * 27 * c * c

    def decoder_and_head(head_out: int) -> int:
        total = 0
        for j, b in enumerate(blocks_up):
            c = f * 2 ** (n - 1 - j)
            total += c * (c // 2) + b * res_block(c // 2)
        return total + norm(f) + f * head_out + head_out

    total = 27 * c_in * f
    for i, b in enumerate(blocks_down):
        c = f * 2 ** i
        total += (27 * (c // 2) * c if i else 0) + b * res_block(c)
    total += decoder_and_head(c_out)
    if vae:
        c_deep = f * 2 ** (n - 1)
        flat = 16 * math.prod(s // 2 ** n for s in patch)
        m = 2 * nz if estimate_std else nz
        total += norm(c_deep) + 27 * c_deep * 16  # vae_down
        total += flat * m + m + nz * flat + flat  # the two Linear layers
        total += 16 * c_deep  # 1x1 conv back to the deepest width
        total += decoder_and_head(c_in)
    return total


@pytest.mark.parametrize("norm", ["group", "instance"])
def test_output_shapes_train_and_eval(norm: str) -> None:
    torch.manual_seed(0)
    model = small(norm=norm, in_channels=2, out_channels=3)
    x = torch.randn(2, 2, 16, 32, 32)
    model.train()
    logits, vae_loss = model(x)
    assert logits.shape == (2, 3, 16, 32, 32)
    assert vae_loss.ndim == 0 and vae_loss.dtype == torch.float32 and torch.isfinite(vae_loss)
    assert vae_loss.item() > 0
    model.eval()
    with torch.no_grad():
        out = model(x)
    assert isinstance(out, torch.Tensor) and out.shape == (2, 3, 16, 32, 32)
    # Eval mode is fully convolutional: other sizes (multiples of 8) work without the VAE's fixed size.
    with torch.no_grad():
        assert model(torch.randn(1, 2, 24, 16, 40)).shape == (1, 3, 24, 16, 40)


def test_training_without_vae_returns_zero_loss() -> None:
    model = small(vae=False, input_image_size=None)
    assert not model.vae_modules()
    logits, vae_loss = model.train()(torch.randn(1, 1, 16, 32, 32))
    assert logits.shape == (1, 3, 16, 32, 32)
    assert vae_loss.ndim == 0 and vae_loss.item() == 0.0


def test_eval_does_not_run_vae_branch() -> None:
    model = small()
    calls = []
    leaves = [m for top in model.vae_modules() for m in top.modules() if next(m.children(), None) is None]
    for module in leaves:
        module.register_forward_hook(lambda *_: calls.append(1))
    x = torch.randn(1, 1, 16, 32, 32)
    with torch.no_grad():
        model.eval()(x)
    assert calls == []
    with torch.no_grad():
        model.train()(x)
    assert len(calls) == len(leaves)  # every VAE leaf runs exactly once per training step


@pytest.mark.parametrize("patch", [(16, 32, 24), (8, 32, 32), (16, 16, 30)])
def test_patch_not_divisible_by_16_raises(patch: tuple[int, int, int]) -> None:
    with pytest.raises(ValueError, match="multiples of 16"):
        small(input_image_size=patch)


def test_divisor_generalises_and_other_validation() -> None:
    assert required_divisor((1, 2, 2, 4)) == 16 and required_divisor((1, 1, 1)) == 8
    SegResNetVAE(input_image_size=(8, 16, 8), init_filters=4, num_groups=4, blocks_down=(1, 1, 1), blocks_up=(1, 1))
    with pytest.raises(ValueError, match="multiples of 32"):
        SegResNetVAE(input_image_size=(16, 32, 32), blocks_down=(1, 1, 1, 1, 1), blocks_up=(1, 1, 1, 1))
    with pytest.raises(ValueError, match="required"):
        SegResNetVAE(input_image_size=None)
    with pytest.raises(ValueError, match="blocks_up"):
        SegResNetVAE(input_image_size=(16, 16, 16), blocks_up=(1, 1))
    with pytest.raises(ValueError, match="norm"):
        SegResNetVAE(input_image_size=(16, 16, 16), norm="batch")
    model = small()
    with pytest.raises(ValueError, match="input_image_size"):
        model.train()(torch.randn(1, 1, 32, 32, 32))


@pytest.mark.parametrize(("kwargs", "patch"), [
    ({"init_filters": 4, "num_groups": 4}, (16, 32, 32)),
    ({"init_filters": 8, "vae_estimate_std": True, "vae_nz": 32, "norm": "instance"}, (32, 16, 16)),
    ({"init_filters": 6, "num_groups": 3, "blocks_down": (1, 1, 2), "blocks_up": (2, 1), "out_channels": 2},
     (8, 8, 16)),
    ({"init_filters": 8, "vae": False}, (16, 16, 16)),
])
def test_parameter_count_matches_closed_form(kwargs: dict, patch: tuple[int, int, int]) -> None:
    model = SegResNetVAE(input_image_size=patch, **kwargs)
    expected = expected_parameters(
        1, kwargs.get("out_channels", 3), kwargs["init_filters"], kwargs.get("blocks_down", (1, 2, 2, 4)),
        kwargs.get("blocks_up", (1, 1, 1)), patch, vae=kwargs.get("vae", True), nz=kwargs.get("vae_nz", 256),
        estimate_std=kwargs.get("vae_estimate_std", False))
    assert count_parameters(model) == expected


def _convs(module: torch.nn.Module) -> list[torch.nn.Conv3d]:
    return [m for m in module.modules() if isinstance(m, torch.nn.Conv3d)]


def test_architecture_follows_myronenko_table_1() -> None:
    """Myronenko 2018 (arXiv 1810.11654), Table 1, for its BraTS input (4 channels, 160 x 192 x 128, 3 outputs)."""
    model = SegResNetVAE(4, 3, (128, 192, 160), init_filters=32, vae_nz=128, vae_estimate_std=True)
    # Encoder: InitConv 32; stages of 32, 64, 128, 256 channels with 1, 2, 2, 4 ResNet blocks (two 3x3x3 convs each),
    # each stage after the first entered by a 3x3x3 convolution with stride 2.
    assert (model.conv_init.in_channels, model.conv_init.out_channels) == (4, 32)
    for stage, (channels, blocks) in enumerate(zip((32, 64, 128, 256), (1, 2, 2, 4), strict=True)):
        convs = _convs(model.down_layers[stage])
        down = [c for c in convs if c.stride == (2, 2, 2)]
        assert len(down) == (stage > 0) and all(c.kernel_size == (3, 3, 3) for c in convs)
        block_convs = [c for c in convs if c.stride == (1, 1, 1)]
        assert len(block_convs) == 2 * blocks and {(c.in_channels, c.out_channels) for c in block_convs} == {
            (channels, channels)}
    # Decoder: per level a 1x1x1 convolution halving the channels, upsampling, one block: 128, 64, 32; then a 1x1x1
    # convolution to the 3 outputs.
    for level, channels in enumerate((128, 64, 32)):
        (reduce,) = _convs(model.up_samples[level])
        assert (reduce.kernel_size, reduce.in_channels, reduce.out_channels) == ((1, 1, 1), 2 * channels, channels)
        assert [(c.in_channels, c.out_channels) for c in _convs(model.up_layers[level])] == [(channels, channels)] * 2
    (end,) = _convs(model.head)
    assert (end.kernel_size, end.in_channels, end.out_channels) == ((1, 1, 1), 32, 3)
    # VAE: 16 filters with stride 2 (16 x 10 x 12 x 8), a dense layer to 256 = mean and std of a 128-dim latent,
    # back to 256 x 20 x 24 x 16, then the decoder's levels and a 1x1x1 convolution to the 4 input channels.
    (vd,) = _convs(model.vae_down)
    assert (vd.out_channels, vd.stride) == (16, (2, 2, 2))
    assert (model.vae_fc_latent.in_features, model.vae_fc_latent.out_features) == (16 * 8 * 12 * 10, 256)
    assert (model.vae_fc_up.in_features, model.vae_fc_up.out_features) == (128, 16 * 8 * 12 * 10)  # draw 128
    (vu,) = _convs(model.vae_up_init)
    assert (vu.in_channels, vu.out_channels) == (16, 256)
    for level, channels in enumerate((128, 64, 32)):
        assert [(c.in_channels, c.out_channels) for c in _convs(model.vae_up_layers[level])] == [(channels,
                                                                                                 channels)] * 2
    (vend,) = _convs(model.vae_head)
    assert (vend.in_channels, vend.out_channels) == (32, 4)


def test_doubling_width_roughly_quadruples_parameters() -> None:
    n8 = count_parameters(SegResNetVAE(input_image_size=(16, 16, 16), init_filters=8))
    n16 = count_parameters(SegResNetVAE(input_image_size=(16, 16, 16), init_filters=16))
    assert 3.7 < n16 / n8 < 4.1


@pytest.mark.parametrize(("kwargs", "patch"), [
    ({"init_filters": 4, "num_groups": 4}, (16, 32, 32)),
    ({"init_filters": 8, "vae_estimate_std": True, "vae_nz": 16, "dropout": 0.2, "in_channels": 2,
      "blocks_down": (1, 1, 1), "blocks_up": (2, 1)}, (8, 16, 24)),
    ({"init_filters": 4, "num_groups": 4, "out_channels": 2, "vae": False}, (16, 16, 32)),
])
def test_estimated_activation_elements_match_measured(kwargs: dict, patch: tuple[int, int, int]) -> None:
    model = SegResNetVAE(input_image_size=patch, **kwargs)
    model.eval()
    measured = measure_activation_elements(model, patch)
    assert not model.training  # mode restored
    estimated = estimate_activation_elements(
        patch, kwargs.get("in_channels", 1), kwargs.get("out_channels", 3), kwargs["init_filters"],
        kwargs.get("blocks_down", (1, 2, 2, 4)), kwargs.get("blocks_up", (1, 1, 1)), vae=kwargs.get("vae", True),
        vae_nz=kwargs.get("vae_nz", 256), vae_estimate_std=kwargs.get("vae_estimate_std", False),
        dropout=kwargs.get("dropout", 0.0))
    assert estimated == measured
    assert measure_activation_elements(model, (kwargs.get("in_channels", 1), *patch)) == measured
    assert estimate_activation_elements(patch, 1, 3, 4, (1, 2, 2, 4), (1, 1, 1), vae=False, batch_size=3) == 3 * (
        estimate_activation_elements(patch, 1, 3, 4, (1, 2, 2, 4), (1, 1, 1), vae=False))


@pytest.mark.parametrize("estimate_std", [False, True])
def test_vae_loss_falls_when_fitting_one_input(estimate_std: bool) -> None:
    torch.manual_seed(0)
    model = SegResNetVAE(input_image_size=(16, 16, 16), init_filters=8, vae_nz=32, vae_estimate_std=estimate_std)
    # A smooth fixed image (low-resolution noise, upsampled) plus an offset: learnable from a 32-d latent.
    x = 1.0 + F.interpolate(torch.randn(1, 1, 4, 4, 4), size=(16, 16, 16), mode="trilinear", align_corners=False)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()

    def vae_loss() -> torch.Tensor:
        torch.manual_seed(1)  # the same reparameterisation noise for the before/after comparison
        return model(x)[1]

    with torch.no_grad():
        before = vae_loss().item()
    for _ in range(40):
        optimizer.zero_grad()
        _, loss = model(x)
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        after = vae_loss().item()
    assert after < 0.7 * before


def test_vae_reconstruction_term_is_normalised_by_the_patch_variance() -> None:
    """Scaling the input's spread by k leaves L_rec of a constant (mean) reconstruction at 1, not k^2."""
    torch.manual_seed(0)
    model = SegResNetVAE(input_image_size=(16, 16, 16), init_filters=4, vae_nz=8).train()
    for p in model.vae_head.parameters():  # the reconstruction head outputs the constant 0 (= the inputs' mean)
        torch.nn.init.zeros_(p)
    x = torch.randn(2, 1, 16, 16, 16)
    x = (x - x.mean(dim=(2, 3, 4), keepdim=True)) / x.std(dim=(2, 3, 4), unbiased=False, keepdim=True)
    losses = []
    for scale in (1.0, 5.0):
        torch.manual_seed(1)
        losses.append(model(scale * x)[1].item())
    # L_rec = 1 exactly for both scales; the KL term (on the latent mean) is small and scale-dependent.
    assert 1.0 <= losses[0] < 1.5 and 1.0 <= losses[1] < 1.5 + 0.5 * losses[0]
    assert losses[1] < 5.0  # a plain MSE would be ~25


def test_segmentation_gradient_flows() -> None:
    torch.manual_seed(0)
    model = small()
    x = torch.randn(1, 1, 16, 32, 32)
    target = (x > 0.5).long() + (x > 1.5).long()
    target = target[:, 0]
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.train()
    logits, _ = model(x)
    before = F.cross_entropy(logits, target)
    losses = []
    for _ in range(3):
        optimizer.zero_grad()
        logits, vae_loss = model(x)
        loss = F.cross_entropy(logits, target)
        (loss + 0.1 * vae_loss).backward()
        assert model.conv_init.weight.grad is not None and model.conv_init.weight.grad.abs().sum() > 0
        assert model.vae_fc_latent.weight.grad.abs().sum() > 0
        optimizer.step()
        losses.append(loss.item())
    with torch.no_grad():
        after = F.cross_entropy(model(x)[0], target)
    assert after.item() < before.item()


def test_cpu_autocast_bfloat16_forward() -> None:
    torch.manual_seed(0)
    model = small()
    x = torch.randn(1, 1, 16, 32, 32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits, vae_loss = model.train()(x)
        eval_logits = model.eval()(x)
    assert logits.shape == eval_logits.shape == (1, 3, 16, 32, 32)
    assert torch.isfinite(logits.float()).all() and torch.isfinite(vae_loss)
    assert vae_loss.dtype == torch.float32


def test_init_kwargs_rebuild_the_same_model() -> None:
    model = small(norm="instance", dropout=0.1)
    clone = SegResNetVAE(**model.init_kwargs)
    clone.load_state_dict(model.state_dict())
    assert count_parameters(clone) == count_parameters(model)


def test_instance_norm_is_instance_normalisation() -> None:
    """The 'instance' norm (a GroupNorm with one channel per group) normalises each channel of each sample by its own
    statistics, exactly as an affine InstanceNorm3d with the same parameters."""
    from smoothseg.network.segresnet_vae import _make_norm

    norm = _make_norm("instance", 8, 4)
    reference = torch.nn.InstanceNorm3d(8, affine=True)
    with torch.no_grad():
        reference.weight.normal_()
        reference.bias.normal_()
    norm.load_state_dict(reference.state_dict())
    x = torch.randn(2, 8, 6, 10, 12) * 3 + 5
    torch.testing.assert_close(norm(x), reference(x), atol=1e-5, rtol=1e-5)


def test_deep_supervision_heads_in_training_only_and_the_same_logits() -> None:
    """Deep heads at 1/2 and 1/4 of the input (finest first) in training mode; eval mode and the full-resolution
    logits are those of the same network without the heads; a checkpoint from before the option rebuilds."""
    torch.manual_seed(0)
    deep = small(deep_supervision=True)
    x = torch.randn(2, 1, 16, 32, 32)
    logits, vae_loss, aux = deep.train()(x)
    assert [tuple(a.shape) for a in aux] == [(2, 3, 8, 16, 16), (2, 3, 4, 8, 8)]
    assert logits.shape == (2, 3, 16, 32, 32) and vae_loss.ndim == 0
    plain = small()
    assert set(deep.state_dict()) - set(plain.state_dict()) == {k for k in deep.state_dict() if
                                                                k.startswith("deep_heads.")}
    plain.load_state_dict({k: v for k, v in deep.state_dict().items() if not k.startswith("deep_heads.")})
    deep.eval()
    plain.eval()
    with torch.no_grad():
        torch.testing.assert_close(deep(x), plain(x))
    heads = sum(p.numel() for p in deep.deep_heads.parameters())
    assert heads == (2 * 8 + 8 * 3 + 3) + (2 * 16 + 16 * 3 + 3)  # norm, conv1x1 with bias, at 8 and 16 channels
    old_kwargs = {k: v for k, v in plain.init_kwargs.items() if k != "deep_supervision"}
    assert not SegResNetVAE(**old_kwargs).deep_supervision

"""SegResNetVAE: the 3D segmentation network of SmoothSegNet (Myronenko 2018, arXiv:1810.11654).

This module owns the network and nothing else: the module graph, its forward pass, the VAE regulariser's loss
*value*, and two sizing helpers a planner uses to choose patch, batch size and width from a memory budget
(:func:`estimate_activation_elements`, checked against :func:`measure_activation_elements`). It knows nothing about
training: the VAE-loss weight (0.1 in Myronenko 2018), the segmentation loss, optimisers and data live in
:mod:`smoothseg.training`.

Architecture (``L = len(blocks_down)`` encoder stages, ``F = init_filters``)::

    encoder   conv3x3(in -> F) [Dropout3d]  stage 0: blocks_down[0] x ResBlock(F)
              stage i>0: conv3x3 stride 2 (F*2^(i-1) -> F*2^i), blocks_down[i] x ResBlock(F*2^i)
    decoder   per up stage j: conv1x1 (c -> c/2), upsample x2, + skip of the encoder stage at that resolution,
              blocks_up[j] x ResBlock(c/2);  head: norm, ReLU, conv1x1 (F -> out_channels, with bias)
    VAE       from the deepest encoder features (F*2^(L-1) channels at patch/2^(L-1)):
              norm, ReLU, conv3x3 stride 2 (-> 16), flatten, Linear (-> nz, or 2*nz when the std is learnt),
              reparameterised sample, Linear (nz -> 16 * prod(patch/2^L)), ReLU, reshape, conv1x1 (16 -> F*2^(L-1)),
              upsample x2, then the decoder's up stages *without* skips (own weights), and a head
              norm, ReLU, conv1x1 (F -> in_channels, with bias) that reconstructs the input image.

Deep supervision (``deep_supervision=True``, off by default): one more head (norm, ReLU, conv1x1 -> out_channels) on
the output of every decoder stage but the last, i.e. at 1/2, 1/4, ... of the input resolution; their logits are
returned in training mode only (for a loss on downsampled targets), and eval mode is unchanged.

``ResBlock(c)`` is the pre-activation block ``x + conv3x3(ReLU(norm(conv3x3(ReLU(norm(x))))))``. Convolutions are
bias-free except the two output heads (a bias in front of a normalisation layer is redundant). Normalisation is
GroupNorm (``min(num_groups, channels)`` groups) or affine InstanceNorm.

The VAE branch needs a fixed spatial input size (its Linear layers are sized from ``input_image_size``), so a patch
side must be a multiple of ``2 ** len(blocks_down)`` (16 for the default four stages): ``2 ** (L - 1)`` from the
encoder's stride-2 convolutions and one more factor 2 from the VAE's stride-2 convolution. The VAE only runs in
training mode; in eval mode the network is fully convolutional and accepts any input whose sides are multiples of
``2 ** (L - 1)``, which is what the sliding-window predictor feeds it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

__all__ = [
    "ResidualBlock",
    "SegResNetVAE",
    "count_parameters",
    "estimate_activation_elements",
    "measure_activation_elements",
    "required_divisor",
]

#: Channels of the VAE's bottleneck grid (Myronenko 2018, Table 1: "GN, ReLU, Conv(16) stride 2").
VAE_BOTTLENECK_CHANNELS = 16
_NORMS = ("group", "instance")
_UPSAMPLE_MODES = ("trilinear", "nearest")


def required_divisor(blocks_down: Sequence[int]) -> int:
    """Multiple every patch side must be for a network with ``len(blocks_down)`` encoder stages (16 for 4)."""
    return 2 ** len(blocks_down)


def _make_norm(kind: str, channels: int, num_groups: int) -> nn.Module:
    if kind == "group":
        groups = min(num_groups, channels)
        if channels % groups:
            raise ValueError(f"GroupNorm: {channels} channels cannot be split into {groups} groups; "
                             f"choose init_filters as a multiple of num_groups={num_groups}")
        return nn.GroupNorm(groups, channels)
    # Affine instance norm as a GroupNorm of one channel per group: the same statistics and parameters (``weight``,
    # ``bias``; state dicts of either load into the other), but oneDNN runs it 1.4x faster on contiguous and 4x
    # faster on channels-last tensors than InstanceNorm3d (32 channels x 32 x 144 x 160 on a 2-core CPU).
    return nn.GroupNorm(channels, channels)


def _conv3(in_channels: int, out_channels: int, stride: int = 1, bias: bool = False) -> nn.Conv3d:
    return nn.Conv3d(in_channels, out_channels, kernel_size=3, stride=stride, padding=1, bias=bias)


def _conv1(in_channels: int, out_channels: int, bias: bool = False) -> nn.Conv3d:
    return nn.Conv3d(in_channels, out_channels, kernel_size=1, bias=bias)


def _upsample(mode: str) -> nn.Upsample:
    return nn.Upsample(scale_factor=2, mode=mode, align_corners=False if mode == "trilinear" else None)


class ResidualBlock(nn.Module):
    """Pre-activation residual block: ``x + conv(ReLU(norm(conv(ReLU(norm(x))))))`` with 3x3x3 convolutions."""

    def __init__(self, channels: int, norm: str, num_groups: int):
        super().__init__()
        self.norm1 = _make_norm(norm, channels, num_groups)
        self.act1 = nn.ReLU(inplace=True)
        self.conv1 = _conv3(channels, channels)
        self.norm2 = _make_norm(norm, channels, num_groups)
        self.act2 = nn.ReLU(inplace=True)
        self.conv2 = _conv3(channels, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(self.act1(self.norm1(x)))
        h = self.conv2(self.act2(self.norm2(h)))
        return x + h


class _Head(nn.Sequential):
    """norm, ReLU, 1x1x1 convolution with bias: the segmentation and the reconstruction outputs."""

    def __init__(self, in_channels: int, out_channels: int, norm: str, num_groups: int):
        super().__init__(_make_norm(norm, in_channels, num_groups), nn.ReLU(inplace=True),
                         _conv1(in_channels, out_channels, bias=True))


def _up_stages(n_deep: int, init_filters: int, blocks_up: Sequence[int], norm: str, num_groups: int,
               upsample_mode: str) -> tuple[nn.ModuleList, nn.ModuleList]:
    """(1x1 conv halving channels + upsample) modules and residual-block stacks for each decoder stage."""
    samples, layers = nn.ModuleList(), nn.ModuleList()
    for j, n_blocks in enumerate(blocks_up):
        c_in = init_filters * 2 ** (n_deep - 1 - j)
        c_out = c_in // 2
        samples.append(nn.Sequential(_conv1(c_in, c_out), _upsample(upsample_mode)))
        layers.append(nn.Sequential(*[ResidualBlock(c_out, norm, num_groups) for _ in range(n_blocks)]))
    return samples, layers


class SegResNetVAE(nn.Module):
    """3D SegResNet with the variational-autoencoder regulariser of Myronenko (2018).

    Args:
        in_channels: image channels (1 for CT).
        out_channels: segmentation classes, background included (logits, no softmax).
        input_image_size: training patch size ``(Z, Y, X)``; required when ``vae`` is True (it sizes the VAE's
            Linear layers) and every side must be a multiple of ``2 ** len(blocks_down)``.
        init_filters: channels of the first stage; stage ``i`` has ``init_filters * 2**i``.
        blocks_down: residual blocks per encoder stage.
        blocks_up: residual blocks per decoder stage; must have ``len(blocks_down) - 1`` entries.
        norm: ``"group"`` (GroupNorm) or ``"instance"`` (affine InstanceNorm).
        num_groups: GroupNorm groups (capped at the channel count); ignored for instance norm.
        dropout: Dropout3d probability after the initial convolution; 0 disables it (no module is created).
        vae: build and train the VAE branch.
        vae_nz: latent dimensionality (the number of means).
        vae_estimate_std: learn a per-latent log-variance (the Linear then outputs ``2 * vae_nz`` values);
            if False, sample with the fixed standard deviation ``vae_default_std`` (MONAI's variant) and the
            Linear outputs only the ``vae_nz`` means, so there are no unused parameters.
        vae_default_std: the fixed standard deviation used when ``vae_estimate_std`` is False.
        upsample_mode: ``"trilinear"`` or ``"nearest"`` for the non-trainable x2 upsampling.
        deep_supervision: add a segmentation head to every decoder stage but the last (see the module docstring).

    Forward convention:
        * training mode (``self.training``): a tuple ``(logits, vae_loss)``; ``vae_loss`` is a float32
          scalar tensor, ``torch.zeros(())`` on the input's device when ``vae`` is False. The caller adds
          ``0.1 * vae_loss`` (Myronenko's weight) to its segmentation loss. With ``deep_supervision`` the tuple has
          a third element: the list of the deep heads' logits, finest (1/2 resolution) first.
        * eval mode: ``logits`` only, shape ``(B, out_channels, Z, Y, X)``; the VAE branch is not executed.

    VAE loss (per mini-batch, returned unweighted)::

        vae_loss = L_rec + L_KL
        L_rec    = mean over samples b and channels c of
                   mean_voxels((x - x_rec)^2) / max(var_voxels(x), 1e-3)                 (variance-normalised MSE)
        L_KL     = 1 / (B * nz) * sum_{b, k} 0.5 * (mu^2 + sigma^2 - log sigma^2 - 1)    (vae_estimate_std=True)
        L_KL     = 1 / (B * nz) * sum_{b, k} 0.5 * mu^2                                   (vae_estimate_std=False)

    ``L_KL`` is the exact KL divergence ``KL(N(mu, sigma^2) || N(0, 1))`` averaged over latent dimensions. With a
    fixed sigma the terms ``sigma^2 - log sigma^2 - 1`` are a constant with zero gradient and are dropped, so the
    loss is 0 at its optimum. Myronenko writes ``L_KL = 1/N * sum(mu^2 + sigma^2 - log sigma^2 - 1)`` with ``N``
    the number of image voxels; we normalise by the number of latent values instead (as MONAI does), which keeps the
    KL term on the same per-element scale as the MSE term whatever the patch size. The learnt std is parametrised
    as a log-variance, ``sigma = exp(0.5 * logvar)``.

    ``L_rec`` is the MSE divided by the intensity variance of each sample and channel of the patch (``1 - R^2`` of
    the reconstruction): Myronenko's inputs are z-scored over the brain, so their variance is ~1 and the plain MSE is
    on that scale. CT patches windowed and z-scored with liver statistics hold air, fat and bone far outside the
    liver's spread (variances of 3-20 in practice), which made the plain MSE, even at weight 0.1, as large as the
    segmentation loss and slowed the segmentation early in training. Normalised, predicting the patch mean scores 1
    whatever the window, and the term keeps its intended, secondary weight.
    """

    def __init__(
        self,
        in_channels: int = 1,
        out_channels: int = 3,
        input_image_size: Sequence[int] | None = None,
        init_filters: int = 8,
        blocks_down: Sequence[int] = (1, 2, 2, 4),
        blocks_up: Sequence[int] = (1, 1, 1),
        norm: str = "group",
        num_groups: int = 8,
        dropout: float = 0.0,
        vae: bool = True,
        vae_nz: int = 256,
        vae_estimate_std: bool = False,
        vae_default_std: float = 0.3,
        upsample_mode: str = "trilinear",
        deep_supervision: bool = False,
    ):
        super().__init__()
        blocks_down, blocks_up = tuple(int(b) for b in blocks_down), tuple(int(b) for b in blocks_up)
        if not blocks_down or any(b < 0 for b in blocks_down + blocks_up):
            raise ValueError(f"blocks_down must be non-empty and block counts >= 0, got {blocks_down}, {blocks_up}")
        if len(blocks_up) != len(blocks_down) - 1:
            raise ValueError(f"blocks_up needs len(blocks_down) - 1 = {len(blocks_down) - 1} entries so the output "
                             f"has the input's resolution, got {len(blocks_up)}")
        if norm not in _NORMS:
            raise ValueError(f"norm must be one of {_NORMS}, got {norm!r}")
        if upsample_mode not in _UPSAMPLE_MODES:
            raise ValueError(f"upsample_mode must be one of {_UPSAMPLE_MODES}, got {upsample_mode!r}")
        if min(in_channels, out_channels, init_filters, num_groups) < 1:
            raise ValueError("in_channels, out_channels, init_filters and num_groups must be positive")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        divisor = required_divisor(blocks_down)
        if input_image_size is not None:
            input_image_size = tuple(int(s) for s in input_image_size)
            if len(input_image_size) != 3 or any(s <= 0 or s % divisor for s in input_image_size):
                raise ValueError(
                    f"input_image_size must be 3 positive multiples of {divisor} (= 2 ** len(blocks_down): "
                    f"{len(blocks_down) - 1} stride-2 encoder convolutions plus the VAE's stride-2 convolution), "
                    f"got {list(input_image_size)}")
        elif vae:
            raise ValueError("input_image_size (the training patch size) is required when vae=True")
        if vae and (vae_nz < 1 or vae_default_std <= 0):
            raise ValueError(f"vae_nz must be >= 1 and vae_default_std > 0, got {vae_nz}, {vae_default_std}")

        self.in_channels, self.out_channels = int(in_channels), int(out_channels)
        self.input_image_size = input_image_size
        self.init_filters, self.blocks_down, self.blocks_up = int(init_filters), blocks_down, blocks_up
        self.vae, self.vae_nz = bool(vae), int(vae_nz)
        self.vae_estimate_std, self.vae_default_std = bool(vae_estimate_std), float(vae_default_std)
        #: JSON-able constructor arguments, for checkpoints (``SegResNetVAE(**model.init_kwargs)`` rebuilds it).
        self.init_kwargs = {
            "in_channels": self.in_channels, "out_channels": self.out_channels,
            "input_image_size": list(input_image_size) if input_image_size is not None else None,
            "init_filters": self.init_filters, "blocks_down": list(blocks_down), "blocks_up": list(blocks_up),
            "norm": norm, "num_groups": int(num_groups), "dropout": float(dropout), "vae": self.vae,
            "vae_nz": self.vae_nz, "vae_estimate_std": self.vae_estimate_std, "vae_default_std": self.vae_default_std,
            "upsample_mode": upsample_mode, "deep_supervision": bool(deep_supervision),
        }
        self.deep_supervision = bool(deep_supervision)
        n_stages = len(blocks_down)
        self._min_divisor = 2 ** (n_stages - 1)

        # Encoder.
        self.conv_init = _conv3(in_channels, init_filters)
        self.dropout = nn.Dropout3d(dropout) if dropout > 0 else None
        self.down_layers = nn.ModuleList()
        for i, n_blocks in enumerate(blocks_down):
            c = init_filters * 2 ** i
            pre = [_conv3(c // 2, c, stride=2)] if i > 0 else []
            self.down_layers.append(nn.Sequential(*pre, *[ResidualBlock(c, norm, num_groups) for _ in range(n_blocks)]))

        # Decoder.
        self.up_samples, self.up_layers = _up_stages(n_stages, init_filters, blocks_up, norm, num_groups,
                                                     upsample_mode)
        self.head = _Head(init_filters, out_channels, norm, num_groups)
        # Deep supervision: a head on every decoder stage but the last (coarsest first, as the stages run).
        self.deep_heads = nn.ModuleList(
            [_Head(init_filters * 2 ** (n_stages - 2 - j), out_channels, norm, num_groups)
             for j in range(len(blocks_up) - 1)] if self.deep_supervision else [])

        # VAE branch (own decoder weights, as in Myronenko's Table 1).
        if self.vae:
            c_deep = init_filters * 2 ** (n_stages - 1)
            self.vae_grid = tuple(s // divisor for s in input_image_size)
            n_flat = VAE_BOTTLENECK_CHANNELS * math.prod(self.vae_grid)
            self.vae_down = nn.Sequential(_make_norm(norm, c_deep, num_groups), nn.ReLU(inplace=True),
                                          _conv3(c_deep, VAE_BOTTLENECK_CHANNELS, stride=2))
            self.vae_fc_latent = nn.Linear(n_flat, 2 * vae_nz if vae_estimate_std else vae_nz)
            self.vae_fc_up = nn.Linear(vae_nz, n_flat)
            self.vae_fc_act = nn.ReLU(inplace=True)
            self.vae_up_init = nn.Sequential(_conv1(VAE_BOTTLENECK_CHANNELS, c_deep), _upsample(upsample_mode))
            self.vae_up_samples, self.vae_up_layers = _up_stages(n_stages, init_filters, blocks_up, norm, num_groups,
                                                                 upsample_mode)
            self.vae_head = _Head(init_filters, in_channels, norm, num_groups)

    def vae_modules(self) -> list[nn.Module]:
        """The modules of the VAE branch (empty when ``vae`` is False); they run in training mode only."""
        if not self.vae:
            return []
        return [self.vae_down, self.vae_fc_latent, self.vae_fc_up, self.vae_fc_act, self.vae_up_init,
                self.vae_up_samples, self.vae_up_layers, self.vae_head]

    def _encode(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.conv_init(x)
        if self.dropout is not None:
            x = self.dropout(x)
        features = []
        for layer in self.down_layers:
            x = layer(x)
            features.append(x)
        return features

    def _decode(self, features: list[torch.Tensor], deep: bool = False) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """The logits and, with ``deep``, the deep heads' logits (finest first)."""
        x = features[-1]
        aux = []
        for j, (up, layer) in enumerate(zip(self.up_samples, self.up_layers, strict=True)):
            x = layer(up(x) + features[-2 - j])
            if deep and j < len(self.deep_heads):
                aux.append(self.deep_heads[j](x))
        return self.head(x), aux[::-1]

    def _vae_loss(self, x: torch.Tensor, deepest: torch.Tensor) -> torch.Tensor:
        """Variance-normalised reconstruction MSE plus KL term (class docstring), as a float32 scalar."""
        h = torch.flatten(self.vae_down(deepest), 1)
        raw = self.vae_fc_latent(h)
        stats = raw.float()  # the loss is computed in float32 also under autocast
        mu = stats[:, : self.vae_nz]
        if self.vae_estimate_std:
            logvar = stats[:, self.vae_nz:].clamp(-20.0, 20.0)
            std = torch.exp(0.5 * logvar)
            kl = 0.5 * torch.mean(mu.square() + logvar.exp() - logvar - 1.0)
        else:
            std = torch.full_like(mu, self.vae_default_std)
            kl = 0.5 * torch.mean(mu.square())
        z = mu + std * torch.randn_like(mu)
        h = self.vae_fc_act(self.vae_fc_up(z.to(raw.dtype)))
        h = self.vae_up_init(h.view(h.shape[0], VAE_BOTTLENECK_CHANNELS, *self.vae_grid))
        for up, layer in zip(self.vae_up_samples, self.vae_up_layers, strict=True):
            h = layer(up(h))
        reconstruction = self.vae_head(h).float().flatten(2)
        target = x.float().flatten(2)
        variance = target.var(dim=2, unbiased=False).clamp(min=1e-3)
        return ((reconstruction - target).square().mean(dim=2) / variance).mean() + kl

    def forward(self, x: torch.Tensor) -> torch.Tensor | tuple:
        """Logits in eval mode; ``(logits, vae_loss[, deep logits])`` in training mode (see the class docstring)."""
        if x.ndim != 5 or x.shape[1] != self.in_channels:
            raise ValueError(f"expected input of shape (B, {self.in_channels}, Z, Y, X), got {tuple(x.shape)}")
        spatial = tuple(x.shape[2:])
        if any(s % self._min_divisor for s in spatial):
            raise ValueError(f"every spatial side must be a multiple of {self._min_divisor}, got {spatial}")
        run_vae = self.training and self.vae
        if run_vae and spatial != self.input_image_size:
            raise ValueError(f"in training mode the VAE branch needs inputs of size {self.input_image_size} "
                             f"(input_image_size), got {spatial}")
        features = self._encode(x)
        logits, aux = self._decode(features, deep=self.training and self.deep_supervision)
        if not self.training:
            return logits
        vae_loss = self._vae_loss(x, features[-1]) if run_vae else torch.zeros((), device=x.device,
                                                                                 dtype=torch.float32)
        return (logits, vae_loss, aux) if self.deep_supervision else (logits, vae_loss)


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameter elements of ``model`` (only those with ``requires_grad`` if ``trainable_only``)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def measure_activation_elements(model: nn.Module, input_shape: Sequence[int]) -> int:
    """Sum of output elements of every leaf module over one training-mode forward pass (batch size 1).

    ``input_shape`` is the spatial patch ``(Z, Y, X)`` (channels are taken from ``model.in_channels``) or
    ``(C, Z, Y, X)``. The pass runs on zeros under ``torch.no_grad`` with forward hooks on every module that has
    no children (convolutions, norms, activations, Linear, Upsample, Dropout); a module called twice counts twice.
    The model's training/eval mode is restored afterwards. This is the measured counterpart of
    :func:`estimate_activation_elements`.
    """
    shape = tuple(int(s) for s in input_shape)
    if len(shape) == 3:
        shape = (int(model.in_channels), *shape)
    if len(shape) != 4:
        raise ValueError(f"input_shape must be (Z, Y, X) or (C, Z, Y, X), got {tuple(input_shape)}")
    total = 0

    def hook(_module: nn.Module, _inputs: object, output: object) -> None:
        nonlocal total
        outputs = output if isinstance(output, tuple | list) else (output,)
        total += sum(o.numel() for o in outputs if isinstance(o, torch.Tensor))

    handles = [m.register_forward_hook(hook) for m in model.modules() if next(m.children(), None) is None]
    was_training = model.training
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    try:
        model.train()
        with torch.no_grad():
            model(torch.zeros((1, *shape), device=device))
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()
    return total


def estimate_activation_elements(
    patch_size: Sequence[int],
    in_channels: int,
    out_channels: int,
    init_filters: int,
    blocks_down: Sequence[int],
    blocks_up: Sequence[int],
    vae: bool = True,
    *,
    vae_nz: int = 256,
    vae_estimate_std: bool = False,
    dropout: float = 0.0,
    batch_size: int = 1,
) -> int:
    """Closed-form count of what :func:`measure_activation_elements` measures (per ``batch_size`` samples).

    With ``V_i = prod(patch / 2^i)`` voxels and ``c_i = init_filters * 2^i`` channels at stage ``i``, one leaf-module
    output contributes ``channels * voxels``: a residual block ``6 c V`` (norm, ReLU, conv, twice), the initial conv
    ``F V_0`` (twice with dropout), a stride-2 conv ``c_i V_i``, a decoder stage ``c V_low + c V_high`` (1x1 conv
    before, upsample after) plus its blocks, a head ``2 F V_0 + out V_0``; the VAE adds ``2 c_deep V_deep``
    (norm, ReLU), ``16 V_g`` (stride-2 conv), the latent Linear (``nz`` or ``2 nz``), ``2 * 16 V_g`` (Linear, ReLU),
    ``c_deep V_g + c_deep V_deep`` (1x1 conv, upsample), its decoder stages and a head with ``in_channels`` outputs.
    A planner multiplies this by the bytes per element (and a safety factor for autograd's extra buffers).
    """
    patch = tuple(int(s) for s in patch_size)
    n = len(blocks_down)
    if len(blocks_up) != n - 1:
        raise ValueError(f"blocks_up needs {n - 1} entries, got {len(blocks_up)}")
    divisor = required_divisor(blocks_down) if vae else 2 ** (n - 1)
    if len(patch) != 3 or any(s <= 0 or s % divisor for s in patch):
        raise ValueError(f"patch_size must be 3 positive multiples of {divisor}, got {list(patch)}")
    voxels = [math.prod(s // 2 ** i for s in patch) for i in range(n + 1)]
    f = init_filters

    def decoder(head_channels: int) -> int:
        total = 0
        for j, n_blocks in enumerate(blocks_up):
            c = f * 2 ** (n - 2 - j)  # channels after the stage's 1x1 conv
            lo, hi = voxels[n - 1 - j], voxels[n - 2 - j]
            total += c * lo + c * hi + 6 * n_blocks * c * hi
        return total + (2 * f + head_channels) * voxels[0]

    total = f * voxels[0] * (2 if dropout > 0 else 1)
    for i, n_blocks in enumerate(blocks_down):
        c = f * 2 ** i
        total += (c * voxels[i] if i > 0 else 0) + 6 * n_blocks * c * voxels[i]
    total += decoder(out_channels)
    if vae:
        c_deep, v_deep, v_grid = f * 2 ** (n - 1), voxels[n - 1], voxels[n]
        k = VAE_BOTTLENECK_CHANNELS
        total += 2 * c_deep * v_deep + k * v_grid + (2 * vae_nz if vae_estimate_std else vae_nz)
        total += 2 * k * v_grid + c_deep * v_grid + c_deep * v_deep
        total += decoder(in_channels)
    return total * int(batch_size)

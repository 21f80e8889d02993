"""Loss modules for the liver and tumour stages; each is a plain ``nn.Module`` whose docstring gives its formula.

* :class:`DiceCELoss`: soft Dice on softmax probabilities + (focal) cross-entropy, the segmentation loss.
* :class:`TLVRLoss`: SmoothSegNet's knowledge-informed term, the squared gap between the patch's soft
  tumour-to-liver ratio and a patch-aware target: the patch's reference ratio rescaled by the clinical prediction
  over the case's reference TLVR.
* :class:`SmoothSegLoss` (alias :data:`CompositeLoss`): L_seg + w_vae * L_VAE + lambda * L_TLVR, returning
  the total and its parts for logging.

Shapes: logits ``(B, C, Z, Y, X)`` (any number of spatial dims), integer targets ``(B, Z, Y, X)`` or
``(B, 1, Z, Y, X)``. The formulas are also written out in ``documentation/method.md``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["CompositeLoss", "DiceCELoss", "SmoothSegLoss", "TLVRLoss"]


def _as_labels(target: Tensor, logits: Tensor) -> Tensor:
    """Integer labels of shape (B, *spatial) matching ``logits`` (B, C, *spatial)."""
    if target.ndim == logits.ndim:
        if target.shape[1] != 1:
            raise ValueError(f"target with a channel axis must have 1 channel, got shape {tuple(target.shape)}")
        target = target[:, 0]
    if target.shape != logits.shape[:1] + logits.shape[2:]:
        raise ValueError(f"target shape {tuple(target.shape)} does not match logits shape {tuple(logits.shape)}")
    if target.is_floating_point():
        target = target.round()
    return target.long()


class DiceCELoss(nn.Module):
    """Soft Dice + cross-entropy (focal cross-entropy when ``focal_gamma > 0``).

    With p = softmax(logits) over the class axis, g the one-hot target, and sums over the voxels of
    each sample (or over the whole batch when ``batch_dice``)::

        Dice_k  = (2 * sum(p_k * g_k) + smooth) / (sum(p_k) + sum(g_k) + smooth)
        L_Dice  = 1 - mean_k Dice_k              (k over classes, background excluded unless include_background;
                                                  mean also over samples unless batch_dice)
        L_CE    = mean_voxels( -(1 - p_y)^gamma * log p_y )   (y the true class; gamma = 0 is plain CE)
        L       = ce_weight * L_CE + dice_weight * L_Dice

    A class absent from both target and prediction scores Dice 1; absent from the target but
    predicted, it scores about 0, so tumour-free patches penalise false-positive tumour.
    """

    def __init__(self, num_classes: int, include_background: bool = False, batch_dice: bool = False,
                 smooth: float = 1e-5, ce_weight: float = 1.0, dice_weight: float = 1.0, focal_gamma: float = 0.0):
        super().__init__()
        if num_classes < 2:
            raise ValueError(f"num_classes must be >= 2, got {num_classes}")
        if min(ce_weight, dice_weight, focal_gamma, smooth) < 0:
            raise ValueError("ce_weight, dice_weight, focal_gamma and smooth must be >= 0")
        self.num_classes = num_classes
        self.include_background = include_background
        self.batch_dice = batch_dice
        self.smooth = smooth
        self.ce_weight = ce_weight
        self.dice_weight = dice_weight
        self.focal_gamma = focal_gamma

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        if logits.ndim < 3 or logits.shape[1] != self.num_classes:
            raise ValueError(f"expected logits (B, {self.num_classes}, *spatial), got {tuple(logits.shape)}")
        labels = _as_labels(target, logits)
        logits = logits.float()
        loss = logits.new_zeros(())
        if self.ce_weight:
            loss = loss + self.ce_weight * self.cross_entropy(logits, labels)
        if self.dice_weight:
            loss = loss + self.dice_weight * self.dice(logits, labels)
        return loss

    def cross_entropy(self, logits: Tensor, labels: Tensor) -> Tensor:
        """Mean (focal) cross-entropy over all voxels."""
        log_p = F.log_softmax(logits, dim=1)
        log_p_true = log_p.gather(1, labels.unsqueeze(1)).squeeze(1)
        ce = -log_p_true
        if self.focal_gamma > 0:
            ce = (1.0 - log_p_true.exp()).clamp(min=0.0).pow(self.focal_gamma) * ce
        return ce.mean()

    def dice(self, logits: Tensor, labels: Tensor) -> Tensor:
        """1 - mean soft Dice over the foreground (or all) classes."""
        probs = torch.softmax(logits, dim=1)
        onehot = F.one_hot(labels, self.num_classes).movedim(-1, 1).to(probs.dtype)
        axes = tuple(range(2, probs.ndim))
        if self.batch_dice:
            axes = (0, *axes)
        intersect = (probs * onehot).sum(axes)
        denominator = probs.sum(axes) + onehot.sum(axes)
        dice = (2.0 * intersect + self.smooth) / (denominator + self.smooth).clamp(min=1e-8)
        if not self.include_background:
            dice = dice[..., 1:]
        return 1.0 - dice.mean()


class TLVRLoss(nn.Module):
    """Knowledge-informed smoothing term: the patch's soft tumour ratio against a patch-aware clinical target.

    For each sample b, with p = softmax(logits) (probabilities, never raw logits), sums over the
    voxels v of the patch, T the tumour class and L the liver-region classes (T included)::

        r_hat_b = sum_v p_T(v) / (sum_v sum_{k in L} p_k(v) + eps)          predicted soft ratio in the patch
        r_ref_b = #{v : y(v) = T} / #{v : y(v) in L}                         reference ratio in the patch
        R_b     = the case's reference TLVR (whole liver region)
        t_b     = the patient's clinical TLVR prediction (cross-fitted, see ``smoothseg.knowledge.tlvr``)
        c_b     = the patch's share of the case's liver region, in [0, 1]

        tau_b   = clip(r_ref_b * t_b / R_b, 0, 1)       when R_b > 0
        tau_b   = c_b * t_b                             when R_b = 0 (a tumour-free case)
        L_TLVR  = mean over valid b of (r_hat_b - tau_b)^2

    The clinical prediction rescales the patch's own tumour fraction by the factor by which it disagrees with the
    case's labels. So (documentation/method.md): tau = t at full coverage (there r_ref = R); tau = r_ref whenever
    t = R, i.e. the term never contradicts correct labels; tau stays in [0, 1]; a tumour-free patch of a case with
    tumour gets 0 (it is never asked to grow false-positive tumour); and a tumour-free patient predicted
    tumour-free (t = 0) gets 0 everywhere. Only a tumour-free case that the clinical model believes has tumour
    gets a positive target, in proportion to the patch's share of its liver.

    A sample is valid when its patch holds reference liver region and t_b, R_b and c_b are finite (NaN marks a
    patient without clinical data); others contribute nothing and are excluded from the mean. With no valid sample
    the loss is 0 (still attached to the graph).
    """

    def __init__(self, tumour_class: int = 2, liver_classes: Sequence[int] = (1, 2), eps: float = 1e-6):
        super().__init__()
        liver_classes = tuple(int(k) for k in liver_classes)
        if tumour_class not in liver_classes:
            raise ValueError(f"the tumour class {tumour_class} must be one of the liver-region classes "
                             f"{liver_classes} (tumour is part of the liver region)")
        if min(liver_classes) < 0 or len(set(liver_classes)) != len(liver_classes):
            raise ValueError(f"liver_classes must be distinct non-negative class indices, got {liver_classes}")
        self.tumour_class = int(tumour_class)
        self.liver_classes = liver_classes
        self.eps = eps

    def soft_ratio(self, logits: Tensor) -> Tensor:
        """r_hat per sample, shape (B,): soft tumour volume / soft liver-region volume in the patch."""
        if max(self.liver_classes) >= logits.shape[1]:
            raise ValueError(f"liver classes {self.liver_classes} do not fit logits with {logits.shape[1]} classes")
        probs = torch.softmax(logits.float(), dim=1)
        batch = probs.shape[0]
        tumour = probs[:, self.tumour_class].reshape(batch, -1).sum(1)
        liver = probs[:, list(self.liver_classes)].sum(1).reshape(batch, -1).sum(1)
        return tumour / (liver + self.eps)

    def patch_target(self, target_labels: Tensor, clinical_tlvr: Tensor, liver_coverage: Tensor,
                     case_tlvr: Tensor) -> tuple[Tensor, Tensor]:
        """(tau, valid) per sample: the patch-aware target and whether the sample counts."""
        batch = target_labels.shape[0]
        labels = target_labels.reshape(batch, -1)
        liver_ids = torch.as_tensor(self.liver_classes, device=labels.device, dtype=labels.dtype)
        ref_liver = torch.isin(labels, liver_ids).sum(1).float()
        ref_tumour = (labels == self.tumour_class).sum(1).float()
        r_ref = ref_tumour / ref_liver.clamp(min=1.0)
        values = [torch.as_tensor(v, dtype=torch.float32, device=labels.device).reshape(-1)
                  for v in (clinical_tlvr, liver_coverage, case_tlvr)]
        if any(v.shape != (batch,) for v in values):
            raise ValueError(f"clinical_tlvr, liver_coverage and case_tlvr must have shape ({batch},), got "
                             f"{[tuple(v.shape) for v in values]}")
        valid = (ref_liver > 0) & torch.isfinite(values[0]) & torch.isfinite(values[1]) & torch.isfinite(values[2])
        t, c, big_r = (torch.where(valid, v, torch.zeros_like(v)).clamp(0.0, 1.0) for v in values)
        has_tumour = big_r > 0
        rescaled = r_ref * t / torch.where(has_tumour, big_r, torch.ones_like(big_r))
        tau = torch.where(has_tumour, rescaled, c * t).clamp(0.0, 1.0)
        return tau, valid

    def forward(self, logits: Tensor, target_labels: Tensor, clinical_tlvr: Tensor, liver_coverage: Tensor,
                case_tlvr: Tensor) -> Tensor:
        labels = _as_labels(target_labels, logits)
        r_hat = self.soft_ratio(logits)
        tau, valid = self.patch_target(labels, clinical_tlvr, liver_coverage, case_tlvr)
        weight = valid.to(r_hat.dtype)
        return ((r_hat - tau).pow(2) * weight).sum() / weight.sum().clamp(min=1.0)


class SmoothSegLoss(nn.Module):
    """SmoothSegNet's training objective::

        L = L_seg + vae_weight * L_VAE + tlvr_weight * L_TLVR        (vae_weight 0.1, as in Myronenko 2018)

    ``L_seg`` is ``seg_loss(logits, target)`` (e.g. :class:`DiceCELoss`), ``L_VAE`` comes from the
    network's VAE branch (``SegResNetVAE.forward`` returns it in training mode; omitted when
    ``vae_loss`` is None), and ``L_TLVR`` is
    ``tlvr_loss`` (default :class:`TLVRLoss`). With ``tlvr_weight == 0`` the TLVR term is not computed,
    so the result equals the plain ``L_seg + vae_weight * L_VAE`` bit for bit.

    With deep supervision (``deep_logits``, the network's coarser heads, finest first) ``L_seg`` becomes the
    weighted mean ``sum_k w_k L_seg(logits_k, target_k) / sum_k w_k`` over the full-resolution logits (k = 0) and
    the deep heads, ``w_k = 2^-k`` (nnU-Net's weights), each target downsampled to its head's size by nearest
    neighbour; the VAE and TLVR terms use the full-resolution logits only.

    ``forward`` returns ``(total, parts)``; ``parts`` maps "seg", "vae", "tlvr" (those computed) and
    "total" to floats for logging.
    """

    def __init__(self, seg_loss: nn.Module, vae_weight: float = 0.1, tlvr_weight: float = 0.5,
                 tlvr_loss: nn.Module | None = None):
        super().__init__()
        if vae_weight < 0 or tlvr_weight < 0:
            raise ValueError(f"loss weights must be >= 0, got vae_weight={vae_weight}, tlvr_weight={tlvr_weight}")
        self.seg_loss = seg_loss
        self.tlvr_loss = tlvr_loss if tlvr_loss is not None else TLVRLoss()
        self.vae_weight = vae_weight
        self.tlvr_weight = tlvr_weight

    def forward(self, logits: Tensor, target: Tensor, vae_loss: Tensor | None = None,
                clinical_tlvr: Tensor | None = None, liver_coverage: Tensor | None = None,
                case_tlvr: Tensor | None = None,
                deep_logits: Sequence[Tensor] | None = None) -> tuple[Tensor, dict[str, float]]:
        seg = self.seg_loss(logits, target)
        if deep_logits:
            labels = _as_labels(target, logits)
            weights = [0.5 ** k for k in range(len(deep_logits) + 1)]
            for weight, deep in zip(weights[1:], deep_logits, strict=True):
                small = F.interpolate(labels[:, None].float(), size=deep.shape[2:], mode="nearest")[:, 0].long()
                seg = seg + weight * self.seg_loss(deep, small)
            seg = seg / sum(weights)
        total = seg
        parts = {"seg": float(seg.detach())}
        if vae_loss is not None and self.vae_weight:
            total = total + self.vae_weight * vae_loss
            parts["vae"] = float(vae_loss.detach())
        if self.tlvr_weight:
            if clinical_tlvr is None or liver_coverage is None or case_tlvr is None:
                raise ValueError("the TLVR term is on (tlvr_weight > 0) but clinical_tlvr, liver_coverage or "
                                 "case_tlvr is missing; set tlvr_weight=0 when the dataset has no clinical table")
            tlvr = self.tlvr_loss(logits, target, clinical_tlvr, liver_coverage, case_tlvr)
            total = total + self.tlvr_weight * tlvr
            parts["tlvr"] = float(tlvr.detach())
        parts["total"] = float(total.detach())
        return total, parts


#: Alias: the composite objective under a generic name.
CompositeLoss = SmoothSegLoss

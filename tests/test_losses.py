"""Loss modules: Dice + CE (and focal), the VAE term, the TLVR term on probabilities, and the composite."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from smoothseg.training.losses import CompositeLoss, DiceCELoss, SmoothSegLoss, TLVRLoss

SHAPE = (2, 3, 4, 5, 6)  # (B, C, Z, Y, X)


def random_labels(seed: int = 0, shape=(2, 4, 5, 6), classes: int = 3) -> torch.Tensor:
    return torch.randint(0, classes, shape, generator=torch.Generator().manual_seed(seed))


def random_logits(seed: int = 1, shape=SHAPE, requires_grad: bool = False) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed)).requires_grad_(requires_grad)


def confident_logits(labels: torch.Tensor, classes: int = 3, scale: float = 30.0) -> torch.Tensor:
    return scale * F.one_hot(labels, classes).movedim(-1, 1).float()


# ---------------------------------------------------------------------- Dice + CE


@pytest.mark.parametrize("batch_dice", [False, True])
@pytest.mark.parametrize("include_background", [False, True])
def test_dice_ce_near_zero_when_perfect_and_large_when_wrong(batch_dice, include_background):
    labels = random_labels()
    loss = DiceCELoss(3, include_background=include_background, batch_dice=batch_dice)
    perfect = loss(confident_logits(labels), labels)
    wrong = loss(confident_logits((labels + 1) % 3), labels)
    assert perfect.item() < 1e-4
    assert wrong.item() > 1.0
    # A (B, 1, Z, Y, X) target gives the same value.
    assert torch.equal(loss(confident_logits(labels), labels[:, None]), perfect)


def test_dice_matches_a_hand_computation():
    logits = random_logits()
    labels = random_labels()
    loss = DiceCELoss(3, include_background=False, ce_weight=0.0, smooth=0.0)
    p = torch.softmax(logits, 1)
    dices = []
    for b in range(2):
        for k in (1, 2):
            g = (labels[b] == k).float()
            dices.append(2 * (p[b, k] * g).sum() / (p[b, k].sum() + g.sum()))
    assert loss(logits, labels).item() == pytest.approx(1 - torch.stack(dices).mean().item(), abs=1e-6)
    ce_only = DiceCELoss(3, dice_weight=0.0)
    assert ce_only(logits, labels).item() == pytest.approx(F.cross_entropy(logits, labels).item(), abs=1e-6)


def test_absent_class_predicted_absent_scores_full_dice():
    labels = torch.zeros(1, 4, 4, 4, dtype=torch.long)
    labels[0, :2] = 1  # no tumour (class 2) anywhere
    assert DiceCELoss(3)(confident_logits(labels), labels).item() < 1e-4
    fp = confident_logits(labels)
    fp[0, 2, 3, 3, 3] = 100.0  # one false-positive tumour voxel
    assert DiceCELoss(3, ce_weight=0.0)(fp, labels).item() > 0.4


def test_focal_variant():
    logits = random_logits()
    labels = random_labels()
    plain = DiceCELoss(3, dice_weight=0.0)
    focal = DiceCELoss(3, dice_weight=0.0, focal_gamma=2.0)
    log_p = F.log_softmax(logits, 1).gather(1, labels[:, None])[:, 0]
    expected = (-(1 - log_p.exp()) ** 2 * log_p).mean()
    assert focal(logits, labels).item() == pytest.approx(expected.item(), abs=1e-6)
    assert focal(logits, labels) < plain(logits, labels)  # easy voxels are down-weighted
    assert DiceCELoss(3, focal_gamma=2.0)(confident_logits(labels), labels).item() < 1e-4
    assert DiceCELoss(3, focal_gamma=2.0)(confident_logits((labels + 1) % 3), labels).item() > 1.0


def test_dice_ce_rejects_bad_shapes():
    with pytest.raises(ValueError, match="logits"):
        DiceCELoss(4)(random_logits(), random_labels())
    with pytest.raises(ValueError, match="does not match"):
        DiceCELoss(3)(random_logits(), random_labels(shape=(2, 4, 5, 5)))


# ---------------------------------------------------------------------- TLVR term


def liver_labels(batch: int = 2, tumour_voxels: int = 12) -> torch.Tensor:
    """(B, 4, 5, 6) labels: background, liver, and some tumour in every sample."""
    labels = torch.zeros(batch, 4, 5, 6, dtype=torch.long)
    labels[:, 1:, 1:, 1:] = 1
    flat = labels.view(batch, -1)
    liver_idx = torch.nonzero(flat[0] == 1)[:, 0]
    flat[:, liver_idx[:tumour_voxels]] = 2
    return labels


def logits_with_ratio(ratio: torch.Tensor, shape=SHAPE) -> torch.Tensor:
    """Logits whose softmax is, at every voxel, (0.4, 0.6 (1 - r), 0.6 r): patch ratio r exactly."""
    batch = shape[0]
    probs = torch.empty(shape, dtype=torch.float64)
    r = ratio.double().view(batch, 1, 1, 1)
    probs[:, 0] = 0.4
    probs[:, 1] = 0.6 * (1 - r)
    probs[:, 2] = 0.6 * r
    return probs.log().float()


def _patch_ratio(labels: torch.Tensor) -> torch.Tensor:
    return (labels == 2).reshape(len(labels), -1).sum(1).float() / (labels > 0).reshape(len(labels), -1).sum(1).float()


def test_tlvr_zero_when_prediction_matches_patch_aware_target():
    labels = liver_labels()
    t, c, big_r = torch.tensor([0.30, 0.05]), torch.tensor([0.25, 0.8]), torch.tensor([0.2, 0.1])
    tau, valid = TLVRLoss().patch_target(labels, t, c, big_r)
    assert valid.all()
    loss = TLVRLoss()(logits_with_ratio(tau), labels, t, c, big_r)
    assert loss.item() == pytest.approx(0.0, abs=1e-10)
    # Off-target by 0.1 in every sample gives 0.01.
    off = TLVRLoss()(logits_with_ratio(tau + 0.1), labels, t, c, big_r)
    assert off.item() == pytest.approx(0.01, abs=1e-5)


@pytest.mark.parametrize("too_high", [True, False])
def test_tlvr_gradient_sign_on_tumour_logits(too_high):
    labels = liver_labels()
    logits = random_logits(requires_grad=True)
    loss_fn = TLVRLoss()
    with torch.no_grad():
        r_hat = loss_fn.soft_ratio(logits)
    coverage = torch.ones(2)  # the patch is the whole case: its ratio is the case's, and the target the clinical value
    clinical = (r_hat - 0.1) if too_high else (r_hat + 0.1)
    loss_fn(logits, labels, clinical, coverage, _patch_ratio(labels)).backward()
    tumour_grad = logits.grad[:, 2]
    if too_high:  # r_hat > tau: descending the gradient lowers every tumour logit
        assert (tumour_grad > 0).all()
    else:
        assert (tumour_grad < 0).all()


def test_tlvr_uses_softmax_probabilities_not_logits():
    labels = liver_labels()
    logits = random_logits()
    shift = 5.0 * torch.randn(2, 1, 4, 5, 6, generator=torch.Generator().manual_seed(9))
    t, c, big_r = torch.tensor([0.2, 0.4]), torch.tensor([0.5, 1.0]), torch.tensor([0.3, 0.3])
    a = TLVRLoss()(logits, labels, t, c, big_r)
    b = TLVRLoss()(logits + shift, labels, t, c, big_r)  # same probabilities, very different logits
    assert a.item() == pytest.approx(b.item(), rel=1e-5, abs=1e-8)


# The target's properties (DESIGN.md section 4, documentation/method.md), checked on patches cut from a constructed
# case, not by re-deriving the formula.

def _case() -> torch.Tensor:
    """A 12 x 16 x 16 case: background, a 10 x 12 x 12 liver region and a 4 x 6 x 6 tumour in one corner of it."""
    case = torch.zeros(12, 16, 16, dtype=torch.long)
    case[1:11, 2:14, 2:14] = 1
    case[2:6, 3:9, 3:9] = 2
    return case


def _patches(case: torch.Tensor) -> dict[str, tuple[torch.Tensor, float]]:
    """Named patches (the whole case, half the liver without tumour, one through the tumour, one inside it), each
    with its share of the case's liver region."""
    boxes = {"whole": (slice(0, 12), slice(0, 16), slice(0, 16)),
             "tumour_free_half": (slice(0, 12), slice(0, 16), slice(9, 16)),
             "through_tumour": (slice(0, 8), slice(0, 10), slice(0, 10)),
             "inside_tumour": (slice(3, 5), slice(4, 8), slice(4, 8))}
    liver = float((case > 0).sum())
    return {name: (case[box].clone(), float((case[box] > 0).sum()) / liver) for name, box in boxes.items()}


def _tau(patch: torch.Tensor, t: float, coverage: float, case_tlvr: float) -> float:
    tau, valid = TLVRLoss().patch_target(patch[None], torch.tensor([t]), torch.tensor([coverage]),
                                         torch.tensor([case_tlvr]))
    assert valid.item()
    return float(tau.item())


def test_tlvr_target_equals_the_clinical_prediction_at_full_coverage():
    case = _case()
    big_r = float((case == 2).sum()) / float((case > 0).sum())
    patch, coverage = _patches(case)["whole"]
    assert coverage == 1.0
    for t in (0.0, 0.01, big_r, 0.3, 0.9, 1.0):
        assert _tau(patch, t, coverage, big_r) == pytest.approx(t, abs=1e-6)


def test_tlvr_target_never_contradicts_correct_labels():
    """With an exact clinical prediction (t = the case's label TLVR) every patch's target is its own label ratio,
    so a tumour-free half of a liver with TLVR 0.3 is asked for 0, not 0.15."""
    case = _case()
    big_r = float((case == 2).sum()) / float((case > 0).sum())
    for name, (patch, coverage) in _patches(case).items():
        own = float((patch == 2).sum()) / float((patch > 0).sum())
        assert _tau(patch, big_r, coverage, big_r) == pytest.approx(own, abs=1e-6), name
    half, coverage = _patches(case)["tumour_free_half"]
    assert 0.4 < coverage < 0.6 and _tau(half, 0.3, coverage, 0.3) == 0.0


def test_tlvr_target_stays_in_the_unit_interval_and_grows_with_the_prediction():
    case = _case()
    big_r = float((case == 2).sum()) / float((case > 0).sum())
    ts = torch.linspace(0, 1, 21).tolist()
    for name, (patch, coverage) in _patches(case).items():
        taus = [_tau(patch, t, coverage, big_r) for t in ts]
        assert all(0.0 <= v <= 1.0 for v in taus), name
        assert all(b >= a - 1e-7 for a, b in zip(taus, taus[1:], strict=False)), name
    # a tumour-free patch of a case with tumour is never asked for tumour, whatever the clinical model says
    half, coverage = _patches(case)["tumour_free_half"]
    assert all(_tau(half, t, coverage, big_r) == 0.0 for t in ts)


def test_tlvr_target_is_zero_for_a_tumour_free_patient_predicted_tumour_free():
    case = _case()
    case[case == 2] = 1
    for name, (patch, coverage) in _patches(case).items():
        if (patch > 0).any():
            assert _tau(patch, 0.0, coverage, 0.0) == 0.0, name
    # predicted with tumour, a tumour-free patient's patches are asked for it in proportion to their liver share
    whole, coverage = _patches(case)["whole"]
    assert _tau(whole, 0.2, coverage, 0.0) == pytest.approx(0.2)


def test_tlvr_excludes_samples_without_liver_or_clinical_value():
    labels = liver_labels()
    labels[0] = 0  # sample 0: no liver region in the patch
    logits = random_logits(requires_grad=True)
    t, c, big_r = torch.tensor([0.3, 0.3]), torch.tensor([0.5, 0.5]), torch.tensor([0.2, 0.2])
    both = TLVRLoss()(logits, labels, t, c, big_r)
    only_second = TLVRLoss()(logits[1:], labels[1:], t[1:], c[1:], big_r[1:])
    assert both.item() == pytest.approx(only_second.item(), rel=1e-6)
    # A NaN clinical value (no clinical row) also excludes the sample, without NaN gradients.
    labels = liver_labels()
    nan_first = TLVRLoss()(logits, labels, torch.tensor([math.nan, 0.3]), c, big_r)
    assert nan_first.item() == pytest.approx(TLVRLoss()(logits[1:], labels[1:], t[1:], c[1:], big_r[1:]).item(),
                                             rel=1e-6)
    nan_first.backward()
    assert torch.isfinite(logits.grad).all()
    # No valid sample: 0, still differentiable.
    empty = TLVRLoss()(logits, torch.zeros_like(labels), t, c, big_r)
    assert empty.item() == 0.0 and empty.requires_grad
    logits.grad = None
    empty.backward()
    assert torch.equal(logits.grad, torch.zeros_like(logits))


def test_tlvr_validates_configuration_and_shapes():
    with pytest.raises(ValueError, match="liver-region classes"):
        TLVRLoss(tumour_class=2, liver_classes=(1,))
    with pytest.raises(ValueError, match="shape"):
        TLVRLoss()(random_logits(), liver_labels(), torch.zeros(3), torch.ones(2), torch.ones(2))
    with pytest.raises(ValueError, match="do not fit"):
        TLVRLoss(tumour_class=3, liver_classes=(1, 3))(random_logits(), liver_labels(), torch.zeros(2),
                                                       torch.ones(2), torch.ones(2))


# ---------------------------------------------------------------------- composite


class _Exploding(torch.nn.Module):
    def forward(self, *args):
        raise AssertionError("the TLVR term must not be computed when its weight is 0")


def test_zero_tlvr_weight_reproduces_plain_loss_exactly():
    labels = liver_labels()
    seg = DiceCELoss(3)
    vae = torch.tensor(0.37, requires_grad=True)
    logits_a = random_logits(requires_grad=True)
    logits_b = random_logits(requires_grad=True)

    plain = seg(logits_a, labels) + 0.1 * vae  # what a trainer without the TLVR term computes
    total, parts = SmoothSegLoss(seg, vae_weight=0.1, tlvr_weight=0.0, tlvr_loss=_Exploding())(
        logits_b, labels, vae_loss=vae, clinical_tlvr=None, liver_coverage=None)
    assert torch.equal(total, plain)
    assert set(parts) == {"seg", "vae", "total"}
    plain.backward()
    total.backward()
    assert torch.equal(logits_a.grad, logits_b.grad)

    seg_only, _ = CompositeLoss(seg, tlvr_weight=0.0)(logits_b, labels)
    assert torch.equal(seg_only, seg(logits_b, labels))


def test_composite_adds_weighted_terms_and_reports_parts():
    labels = liver_labels()
    logits = random_logits(requires_grad=True)
    seg, tlvr = DiceCELoss(3), TLVRLoss()
    vae = torch.tensor(0.5)
    t, c, big_r = torch.tensor([0.3, 0.1]), torch.tensor([0.6, 0.9]), torch.tensor([0.2, 0.2])
    total, parts = SmoothSegLoss(seg, vae_weight=0.1, tlvr_weight=0.5)(logits, labels, vae, t, c, big_r)
    expected = seg(logits, labels) + 0.1 * vae + 0.5 * tlvr(logits, labels, t, c, big_r)
    assert total.item() == pytest.approx(expected.item(), rel=1e-6)
    assert set(parts) == {"seg", "vae", "tlvr", "total"}
    assert all(isinstance(v, float) for v in parts.values())
    assert parts["total"] == pytest.approx(parts["seg"] + 0.1 * parts["vae"] + 0.5 * parts["tlvr"], rel=1e-6)
    total.backward()
    assert torch.isfinite(logits.grad).all()
    with pytest.raises(ValueError, match="tlvr_weight=0"):
        SmoothSegLoss(seg)(logits, labels, vae)


def test_deep_supervision_weights_halve_per_scale_on_downsampled_targets():
    """L_seg with deep heads = (L(full) + L(1/2)/2 + L(1/4)/4) / 1.75, each target downsampled by nearest
    neighbour; without deep logits the loss is the plain one."""
    torch.manual_seed(1)
    target = torch.randint(0, 3, (2, 8, 16, 16))
    full, half, quarter = (torch.randn(2, 3, *s) for s in ((8, 16, 16), (4, 8, 8), (2, 4, 4)))
    seg = DiceCELoss(3)
    loss = SmoothSegLoss(seg, tlvr_weight=0.0)
    total, parts = loss(full, target, deep_logits=[half, quarter])
    expected = (seg(full, target) + seg(half, target[:, ::2, ::2, ::2]) / 2 +
                seg(quarter, target[:, ::4, ::4, ::4]) / 4) / 1.75
    torch.testing.assert_close(total, expected)
    assert parts["seg"] == pytest.approx(float(expected))
    torch.testing.assert_close(loss(full, target)[0], seg(full, target))

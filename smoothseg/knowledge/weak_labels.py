"""The TLVR weak labels of one fold: cross-fitted clinical predictions for its training cases, and a model fitted on
all of them for its validation cases.

Contract (no leakage; see :mod:`smoothseg.knowledge.tlvr`): the regression sees the clinical rows and reference
TLVRs of the fold's training cases only. A training case's weak label is its out-of-fold prediction; a validation
case's is the prediction of the model fitted on every training case. Cases without a clinical row, or whose row
holds no feature value, get no weak label (and no TLVR target).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from smoothseg.dataset.raw_dataset import RawDataset
from smoothseg.knowledge.tlvr import TLVRRegressor, describe_availability

__all__ = ["FoldWeakLabels", "fold_weak_labels"]

logger = logging.getLogger(__name__)

#: Fewer training cases with a clinical row than this: no regression, no TLVR term.
MIN_CLINICAL_CASES = 3


@dataclass
class FoldWeakLabels:
    """Weak labels by case id, the fitted regression (JSON-able) and its out-of-fold scores; ``off_reason`` says why
    there are none."""

    train: dict[str, float] = field(default_factory=dict)
    val: dict[str, float] = field(default_factory=dict)
    model: dict[str, Any] | None = None
    scores: dict[str, float] | None = None
    off_reason: str | None = None
    unlabelled: dict[str, float] = field(default_factory=dict)  # predictions for cases without labels


def with_clinical_data(table):
    """The rows of a clinical table that hold at least one feature value: a row with every feature missing is no
    clinical data (imputing it would hand the case the cohort's mean as its target)."""
    return table[table.notna().any(axis=1)]


def fold_weak_labels(raw: RawDataset, reference_tlvr: Mapping[str, float], train_ids: Sequence[str],
                     val_ids: Sequence[str], *, weight: float, seed: int,
                     unlabelled_ids: Sequence[str] = ()) -> FoldWeakLabels:
    """Fit the fold's TLVR regression on ``train_ids`` (reference TLVRs from ``reference_tlvr``) and label the cases.

    ``weight`` is the TLVR term's weight (0: nothing to fit); ``seed`` shuffles the cross-fitting folds.
    ``unlabelled_ids`` (cases without labels) are predicted like validation cases, by the model fitted on every
    training case.
    """
    available, reason = describe_availability(raw.spec, weight)
    if not available:
        return FoldWeakLabels(off_reason=reason)
    table = with_clinical_data(raw.clinical())
    ids = [c for c in train_ids if c in table.index]
    if len(ids) < MIN_CLINICAL_CASES:
        return FoldWeakLabels(off_reason=f"only {len(ids)} training case(s) have clinical rows "
                                         f"(need {MIN_CLINICAL_CASES})")
    target = [reference_tlvr[c] for c in ids]
    regressor = TLVRRegressor.from_spec(raw.spec)
    oof = regressor.cross_fit(table.loc[ids], target, random_state=seed)
    scores = {k: float(v) for k, v in regressor.cross_validated_scores(table.loc[ids], target,
                                                                       random_state=seed).items()}
    regressor.fit(table.loc[ids], target)
    labels = FoldWeakLabels(train={c: float(v) for c, v in oof.items()}, model=regressor.to_dict(), scores=scores)
    for ids_, target_dict in ((val_ids, labels.val), (unlabelled_ids, labels.unlabelled)):
        known = [c for c in ids_ if c in table.index]
        if known:
            target_dict.update(zip(known, (float(v) for v in regressor.predict(table.loc[known])), strict=True))
    logger.info("TLVR regression on %d training cases (validation cases never seen): out-of-fold R2 %.3f, MAE %.4f "
                "(predicting the mean: %.4f)", len(ids), scores["r2"], scores["mae"], scores["mae_mean_baseline"])
    return labels

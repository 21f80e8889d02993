"""Active contours as a candidate post-processing step, chosen by the fold validation as nnU-Net chooses its own.

On real CT the contours mend bad boundaries and damage good ones (issue 21: from the reference segmentation of a
LiTS crop they lower tumour Dice from 1.00 to 0.90; from an eroded one they raise it from 0.77 to 0.85). Whether they
help depends on the model and the data, so the fold validation tries them:

1. the validation cases are predicted *without* contours;
2. each candidate of :func:`candidates` ("off", the plan's settings, and a few variants: more iterations, a contour
   that may grow or shrink more easily, a window from each lesion's own intensities) is applied to each prediction,
   and the case's tumour Dice is computed against the reference (a case with neither reference nor predicted tumour
   counts 1, as for the minimum lesion volume);
3. the candidate with the best mean per-case Dice is chosen; ties go to "off", so contours run only where they
   raised validation Dice.

The table and the choice go into ``postprocessing.json`` (key ``active_contour``); with several folds the tables are
pooled and the choice is made again (:func:`choice_from_folders`). ``smoothseg_predict --active-contour auto`` uses
it; ``on`` runs the plan's settings, ``off`` none.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from smoothseg.dataset.io import Geometry
from smoothseg.inference.lesion_filter import read_fold_choices
from smoothseg.inference.postprocessing import refine_and_compose
from smoothseg.labels import TUMOR
from smoothseg.masks.measures import binary_dice
from smoothseg.planning.plans import ActiveContourPlan

__all__ = ["OFF", "candidate_scores", "candidates", "choice_from_folders", "choose", "section"]

logger = logging.getLogger(__name__)

OFF = "off"


def candidates(plan_settings: ActiveContourPlan) -> dict[str, ActiveContourPlan | None]:
    """The settings the validation tries, by name ("off": no contours)."""
    return {
        OFF: None,
        "plan": plan_settings,
        "more_iterations": replace(plan_settings, iterations=2 * plan_settings.iterations),
        "may_grow": replace(plan_settings, lambda2=2.0 * plan_settings.lambda2),
        "may_shrink": replace(plan_settings, lambda1=2.0 * plan_settings.lambda1),
        "lesion_window": replace(plan_settings, window=None),
    }


def candidate_scores(image: np.ndarray, geometry: Geometry, prediction: np.ndarray, reference_tumour: np.ndarray,
                     settings: Mapping[str, ActiveContourPlan | None]) -> dict[str, float | None]:
    """The case's tumour Dice after each candidate (``prediction`` made without contours; None: both empty)."""
    reference_tumour = np.asarray(reference_tumour, dtype=bool)
    return {name: binary_dice(refine_and_compose(image, geometry, prediction, params) == TUMOR, reference_tumour)
            for name, params in settings.items()}


def choose(per_case: Mapping[str, Mapping[str, float | None]]) -> tuple[str, dict[str, float]]:
    """The candidate with the best mean per-case Dice (a None counts 1; ties: "off", then the listed order), and
    every candidate's mean. Only candidates scored on every case take part."""
    names = [n for n in dict.fromkeys(k for row in per_case.values() for k in row)
             if all(n in row for row in per_case.values())]
    means = {n: float(np.mean([1.0 if row[n] is None else row[n] for row in per_case.values()])) for n in names}
    if not means:
        return OFF, means
    best = max(means.values())
    winners = [n for n, v in means.items() if v >= best - 1e-9]
    return (OFF if OFF in winners else winners[0]), means


def section(per_case: Mapping[str, Mapping[str, float | None]],
            settings: Mapping[str, ActiveContourPlan | None]) -> dict[str, Any]:
    """The ``active_contour`` section of ``postprocessing.json``."""
    chosen, means = choose(per_case)
    logger.info("active contours on validation: %s; chosen: %s",
                ", ".join(f"{n} {v:.4f}" for n, v in means.items()), chosen)
    return {"chosen": chosen, "mean_tumor_dice": means,
            "settings": {n: None if p is None else p.to_dict() for n, p in settings.items()},
            "per_case": {c: dict(row) for c, row in per_case.items()}}


def choice_from_folders(fold_folders: Iterable[Path]) -> tuple[ActiveContourPlan | None, str, bool]:
    """The pooled choice over the tumour fold folders' ``postprocessing.json``: ``(settings or None, why, found)``;
    ``found`` is False when no fold has a validation with candidates."""
    per_case: dict[str, Mapping[str, float | None]] = {}
    settings: dict[str, Any] = {}
    used = []
    for fold, data in read_fold_choices(fold_folders):
        try:  # postprocessing.json written before the contours were chosen has no such section
            section_ = data["active_contour"]
            per_case.update({f"{fold}/{c}": dict(row) for c, row in section_["per_case"].items()})
            settings.update(section_["settings"])
        except (KeyError, TypeError, AttributeError, ValueError):
            continue
        used.append(fold)
    if not per_case:
        return None, "no fold validation has tried them yet: off", False
    chosen, means = choose(per_case)
    why = f"{chosen} chosen on {len(per_case)} validation case(s) of {', '.join(used)} " \
          f"(mean tumour Dice {means.get(chosen, float('nan')):.4f}; off {means.get(OFF, float('nan')):.4f})"
    if chosen == OFF or settings.get(chosen) is None:
        return None, why, True
    return ActiveContourPlan.from_dict(settings[chosen]), why, True

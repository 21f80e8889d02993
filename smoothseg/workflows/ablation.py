"""The ablation of SmoothSegNet's components (``smoothseg_ablate``): which of them help, on this dataset, by how much.

Variants (:data:`VARIANTS`), each the full method with one component taken away:

* ``full``: liver model and tumour model with the VAE branch, the TLVR term and deep supervision on the tumour model,
  active contours on (the tumour plan's settings);
* ``no_tlvr``: the tumour model trained without the TLVR term (``tlvr_weight`` 0); the liver model is ``full``'s;
* ``no_vae``: both models without the VAE branch (the segmentation network alone);
* ``no_active_contour``: ``full``'s models, active contours off;
* ``single_stage``: no cascade: one 3-class model (background, liver, tumour) on the whole CT at the liver stage's
  planning (spacing, patch, window, width), its liver reduced to the largest component with holes filled and the
  tumour kept inside it, active contours on. It has no TLVR term (the term is defined on the liver crop);
* ``no_lesion_sampling``: the tumour model trained with foreground patches centred per tumour voxel only
  (``lesion_sampling`` 0);
* ``no_clean_liver``: the tumour model trained without clean-liver negatives (``clean_liver`` 0);
* ``argmax_operating_point``: ``full``'s models, the tumour the argmax of the classes and every lesion kept,
  instead of the operating point chosen for detection;
* ``no_deep_supervision``: the tumour model trained without deep supervision (on by default for the tumour task
  since the five-fold ablation of two seeds, benchmarks.md; the liver model has none in any variant);
* ``lesion_synthesis``: the one variant that *adds* a component, off by default until measured: the tumour model
  trained with small synthetic lesions painted into a third of its patches (``lesion_synthesis`` 0.33).

Model folders are named by what the model is, not relative to the defaults (``tumor_deepsup`` is ``full``'s tumour
model; ``tumor``, without deep supervision, is ``no_deep_supervision``'s), so models trained before a default changed
are reused only by the variant they belong to.

Operating point: every variant but ``argmax_operating_point`` uses a voxel threshold, lesion confidence and minimum
lesion volume chosen as the fold validation chooses them (:mod:`smoothseg.inference.operating_point`, lesion F1 with at
most 0.5 false-positive lesions per tumour-free liver), **cross-fitted**: for the cases of fold k on the same
variant's predictions of the other ablated folds' validation cases, so no case helps choose its own operating point.
With one fold there are no others, and the choice is made on the fold's own cases (in-sample; ``ablation.md`` says
so). The operating point chosen for each fold is recorded.

What runs: every model a chosen variant needs, once per seed and fold (variants that differ only in
post-processing share models, and the tumour-only variants share ``full``'s liver model), trained with the given
length under ``<results>/<dataset>/ablation/models/seed_<s>/<model>/``; a model whose final checkpoint exists is
reused, one with only a latest checkpoint is continued (so an interrupted ablation resumes where it stopped). Then
each model group predicts the validation cases of each fold with that fold's models (one network pass per case),
keeping the label map and P(tumour) (``ablation/cases/maps/``) and each case's operating-point counts and
calibration; finally each variant is scored at its operating point. Everything is cached under ``ablation/cases/``.

What is written, under ``<results>/<dataset>/ablation/``:

* ``ablation.json``: per variant and seed the per-case metrics (:func:`~smoothseg.evaluation.metrics.evaluate_case`
  against the reference), and per variant the summary: mean ± sd over seeds of the per-seed values, the paired
  per-case differences to ``full`` and their Wilcoxon signed-rank test;
* ``ablation.md``: the same as tables in the paper's layout;
* ``reliability.png``: the reliability diagram of the tumour probability, ``full`` against ``no_tlvr``.

Per seed: tumour Dice is the mean over cases with a defined value (a tumour-free case predicted tumour-free has none;
with a false positive it scores 0), split at a reference maximal lesion diameter of 10 cm; lesion F1 pools the
lesion counts of all cases; detection by size pools the reference lesions per volume bin; calibration pools the
voxels of the reference liver region: expected calibration error of P(tumour) over :data:`ECE_BINS` equal-width
bins (sum over bins of the voxel fraction times |observed tumour fraction - mean probability|) and the Brier score
(mean squared difference of P(tumour) and the tumour indicator). The tumour probability is the tumour stage's
softmax before post-processing (``single_stage``: the single model's), 0 outside the predicted liver.

Paired test: per case, each variant's tumour Dice is averaged over the seeds (the case is the unit, not the
case-seed pair, which would count a case several times), and the differences to ``full`` are tested with
``scipy.stats.wilcoxon`` (two-sided; cases without a defined Dice in either are left out). With n cases the
smallest attainable p is 2 / 2**n (0.0625 for 5 cases): a few validation cases cannot show significance, which the
table states.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from smoothseg.atomic import atomic_path, json_safe, write_json, write_text
from smoothseg.dataset.io import Geometry, read_image
from smoothseg.dataset.raw_dataset import RawDataset
from smoothseg.errors import SmoothSegError
from smoothseg.evaluation.evaluate import lesion_detection_summary, tumour_burden
from smoothseg.evaluation.froc import candidate_rows
from smoothseg.evaluation.matching import to_task_labels
from smoothseg.evaluation.metrics import LESION_DIAMETER_BINS, LESION_SIZE_BINS, evaluate_case
from smoothseg.evaluation.strata import DIAMETER_STRATUM_COLUMN, assign_strata, format_mean_std
from smoothseg.inference.cascade import CascadePredictor, active_contour_plan
from smoothseg.inference.lesion_filter import remove_small_lesions
from smoothseg.inference.operating_point import (
    OperatingPoint,
    choose_operating_point,
    parse_key,
    tumour_at,
)
from smoothseg.inference.postprocessing import compose_labels, postprocess_liver, refine_and_compose
from smoothseg.inference.predictor import StagePredictor
from smoothseg.labels import TUMOR
from smoothseg.masks.components import keep_inside
from smoothseg.paths import find_dataset, preprocessed_root, results_root, using_roots
from smoothseg.planning.plans import ActiveContourPlan, Plans
from smoothseg.preprocessing.dataset_preprocessing import preprocess_task
from smoothseg.training.config import TrainingConfig
from smoothseg.training.trainer import train
from smoothseg.workflows.training_arms import TrainingArm, arm_preprocessed
from smoothseg.workflows.unlabelled import prepare_unlabelled
from smoothseg.workflows.validation import validation_cases

__all__ = ["ECE_BINS", "VARIANTS", "AblationSettings", "calibration", "load_cache", "run_ablation"]

logger = logging.getLogger(__name__)

VARIANTS = ("full", "no_tlvr", "no_vae", "no_active_contour", "single_stage", "no_lesion_sampling", "no_clean_liver",
            "argmax_operating_point", "lesion_synthesis", "no_deep_supervision")
ECE_BINS = 10
ARMS = "arms"
FINAL = "checkpoint_final.pth"
LATEST = "checkpoint_latest.pth"
TRAINER = "SmoothSegTrainer"


@dataclass(frozen=True)
class ModelSpec:
    """One model to train: ``task`` liver, tumor or single (the 3-class whole-CT model), with or without the VAE
    branch, the TLVR term, lesion-balanced sampling and clean-liver negatives (the last three: tumour only)."""

    task: str
    vae: bool = True
    tlvr: bool = True
    lesion_sampling: bool = True
    clean_liver: bool = True
    synthesis: bool = False
    deep_supervision: bool | None = None  # None: the trainer's default (on for the tumour task only)

    def __post_init__(self) -> None:
        if self.deep_supervision is None:
            object.__setattr__(self, "deep_supervision", self.task == "tumor")

    @property
    def key(self) -> str:
        tumour = self.task == "tumor"
        return self.task + ("" if self.vae else "_novae") + ("_notlvr" if tumour and not self.tlvr else "") + \
            ("_nolesionsampling" if tumour and not self.lesion_sampling else "") + \
            ("_nocleanliver" if tumour and not self.clean_liver else "") + \
            ("_synthesis" if tumour and self.synthesis else "") + ("_deepsup" if self.deep_supervision else "")


#: The models of each variant: (liver, tumour) for the cascade, (single,) without one.
VARIANT_MODELS: dict[str, tuple[ModelSpec, ...]] = {
    "full": (ModelSpec("liver"), ModelSpec("tumor")),
    "no_tlvr": (ModelSpec("liver"), ModelSpec("tumor", tlvr=False)),
    "no_vae": (ModelSpec("liver", vae=False), ModelSpec("tumor", vae=False)),
    "no_active_contour": (ModelSpec("liver"), ModelSpec("tumor")),
    "single_stage": (ModelSpec("single"),),
    "no_lesion_sampling": (ModelSpec("liver"), ModelSpec("tumor", lesion_sampling=False)),
    "no_clean_liver": (ModelSpec("liver"), ModelSpec("tumor", clean_liver=False)),
    "argmax_operating_point": (ModelSpec("liver"), ModelSpec("tumor")),
    "lesion_synthesis": (ModelSpec("liver"), ModelSpec("tumor", synthesis=True)),
    "no_deep_supervision": (ModelSpec("liver"), ModelSpec("tumor", deep_supervision=False)),
}
#: The share of patches with painted lesions in the ``lesion_synthesis`` variant.
SYNTHESIS_SHARE = 0.33
ACTIVE_CONTOURS = {variant: variant != "no_active_contour" for variant in VARIANTS}
#: Variants scored at argmax without a minimum lesion volume; the others at the cross-fitted operating point.
ARGMAX_VARIANTS = ("argmax_operating_point",)


@dataclass
class AblationSettings:
    """What to ablate and how long to train (the flags of ``smoothseg_ablate``)."""

    dataset: str | int
    folds: tuple[str, ...] = ("0",)
    seeds: tuple[int, ...] = (0, 1, 2)
    variants: tuple[str, ...] = VARIANTS
    liver_epochs: int = 1000
    tumor_epochs: int = 1000
    iters_per_epoch: int = 250
    val_iters: int = 50
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    precision: str = "auto"
    num_workers: int | None = None
    num_processes: int = 1
    step_size: float = 0.5
    arm: TrainingArm = field(default_factory=TrainingArm)  # noisy labels or fewer cases (training only)

    def __post_init__(self) -> None:
        unknown = [v for v in self.variants if v not in VARIANTS]
        if unknown:
            raise SmoothSegError(f"unknown ablation variant(s) {', '.join(unknown)}; choose from {', '.join(VARIANTS)}")
        if not self.seeds or not self.folds:
            raise SmoothSegError("the ablation needs at least one seed and one fold")
        self.folds = tuple(str(f) for f in self.folds)
        if "all" in self.folds:
            raise SmoothSegError("fold 'all' has no validation cases to compare the variants on")
        self.variants = tuple(dict.fromkeys(("full", *self.variants)))  # the reference is always there
        if not self.arm.is_default and "single_stage" in self.variants:
            raise SmoothSegError("the single_stage variant has no label-noise or train-fraction arm; leave it out")


# ------------------------------------------------------------------------------------------------------------------
# Training
# ------------------------------------------------------------------------------------------------------------------

def _single_stage_preprocessed(dataset_folder: Path, raw: RawDataset, root: Path, num_processes: int) -> Path:
    """A preprocessed root whose ``liver`` configuration predicts three classes (the single-stage model); the liver
    stage's spacing, patch and window, the same splits."""
    target = root / dataset_folder.name
    plans = Plans.load(dataset_folder / "plans.json")
    liver = plans["liver"]
    single = replace(liver, num_classes=3, class_names=("background", "liver", "tumor"))
    plans = replace(plans, configurations={**plans.configurations, "liver": single})
    target.mkdir(parents=True, exist_ok=True)
    plans.save(target / "plans.json")
    for name in ("splits.json", "fingerprint.json"):
        if (dataset_folder / name).exists():
            shutil.copy2(dataset_folder / name, target / name)
    cases = [c for c in raw.training_cases if c.label is not None]
    preprocess_task(cases, plans, "liver", target / "liver", num_processes)
    return root


def _train(spec: ModelSpec, seed: int, fold: str, settings: AblationSettings, folder: Path,
           single_root: Callable[[], Path], arm_root: Callable[[int], Path | None],
           liver_model: Path | None = None) -> Path:
    """The final checkpoint of ``spec`` for ``seed`` and ``fold``: trained now, continued, or found. In a label-noise
    arm on every case the liver models are the clean run's (the noise leaves the liver region as it is).
    ``liver_model`` (tumour models): the liver checkpoint that crops the fold's unlabelled cases, if it has any."""
    shared_liver = spec.task == "liver" and settings.arm.fraction == 1 and not settings.arm.is_default
    models = (_base_folder(folder) if shared_liver else folder) / "models"
    if spec.task == "liver" and settings.arm.unlabelled_rest:  # the same liver models as the arm without them
        models = _base_folder(folder) / ARMS / replace(settings.arm, unlabelled_rest=False).key / "models"
    results = models / f"seed_{seed}" / spec.key
    task = "tumor" if spec.task == "tumor" else "liver"
    dataset_name = find_dataset(settings.dataset, preprocessed_root()).name
    fold_folder = results / dataset_name / f"{TRAINER}__{task}" / f"fold_{fold}"
    if (fold_folder / FINAL).exists():
        return fold_folder / FINAL
    config = TrainingConfig(
        dataset=str(settings.dataset), task=task, fold=fold, trainer=TRAINER,
        epochs=settings.liver_epochs if task == "liver" else settings.tumor_epochs,
        iters_per_epoch=settings.iters_per_epoch, val_iters=settings.val_iters, seed=seed, vae=spec.vae,
        tlvr_weight=0.5 if spec.tlvr else 0.0, num_workers=settings.num_workers, precision=settings.precision,
        lesion_sampling=TrainingConfig.lesion_sampling if spec.lesion_sampling else 0.0,
        clean_liver=TrainingConfig.clean_liver if spec.clean_liver else 0.0,
        lesion_synthesis=SYNTHESIS_SHARE if spec.synthesis else 0.0, deep_supervision=spec.deep_supervision,
        continue_training=(fold_folder / LATEST).exists(), validate=False,
        liver_model=str(liver_model) if liver_model is not None and task == "tumor" else None)
    logger.info("ablation: training %s (seed %d, fold %s) -> %s", spec.key, seed, fold, fold_folder)
    preprocessed = single_root() if spec.task == "single" else (None if shared_liver else arm_root(seed))
    with using_roots(results=results, preprocessed=preprocessed):
        prepare_unlabelled(config, settings.device)
        train(config, settings.device)
    return fold_folder / FINAL


# ------------------------------------------------------------------------------------------------------------------
# Prediction and scoring
# ------------------------------------------------------------------------------------------------------------------

def calibration(probability: np.ndarray, truth: np.ndarray, bins: int = ECE_BINS) -> dict[str, list[float] | float]:
    """Sufficient statistics of P(tumour) against the tumour indicator over some voxels: per equal-width bin the
    voxel count, the sum of probabilities and the number of tumour voxels, and the sum of squared errors (Brier)."""
    p = np.asarray(probability, dtype=np.float64).ravel()
    y = np.asarray(truth, dtype=bool).ravel()
    index = np.minimum((p * bins).astype(np.int64), bins - 1)
    return {"count": np.bincount(index, minlength=bins).astype(float).tolist(),
            "sum_p": np.bincount(index, weights=p, minlength=bins).tolist(),
            "sum_y": np.bincount(index, weights=y.astype(np.float64), minlength=bins).tolist(),
            "sum_sq": float(np.sum((p - y) ** 2)), "n": int(p.size)}


def calibration_scores(parts: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """ECE, Brier score and the reliability curve of pooled :func:`calibration` statistics."""
    count = np.sum([c["count"] for c in parts], axis=0)
    sum_p = np.sum([c["sum_p"] for c in parts], axis=0)
    sum_y = np.sum([c["sum_y"] for c in parts], axis=0)
    n = float(sum(c["n"] for c in parts))
    if n == 0:
        return {"ece": math.nan, "brier": math.nan, "confidence": [], "frequency": [], "count": []}
    filled = count > 0
    confidence = np.where(filled, sum_p / np.maximum(count, 1), np.nan)
    frequency = np.where(filled, sum_y / np.maximum(count, 1), np.nan)
    ece = float(np.sum(count[filled] / n * np.abs(frequency[filled] - confidence[filled])))
    return {"ece": ece, "brier": sum(c["sum_sq"] for c in parts) / n, "confidence": confidence.tolist(),
            "frequency": frequency.tolist(), "count": count.tolist()}


class _Pair:
    """The networks of one variant group for one seed and fold: a cascade, or the single-stage model."""

    def __init__(self, checkpoints: dict[str, Path], settings: AblationSettings, contours: ActiveContourPlan):
        options = {"device": settings.device, "step_size": settings.step_size, "tta": False,
                   "precision": settings.precision}
        self.contours = contours
        if "single" in checkpoints:
            self.single: StagePredictor | None = StagePredictor([checkpoints["single"]], **options)
            self.cascade = None
        else:
            self.single = None
            self.cascade = CascadePredictor(StagePredictor([checkpoints["liver"]], **options),
                                            StagePredictor([checkpoints["tumor"]], **options))

    def networks(self, image: np.ndarray, geometry: Geometry) -> tuple[np.ndarray, np.ndarray]:
        """The label map before active contours and P(tumour) on the original grid."""
        if self.cascade is not None:
            outputs = self.cascade.network_outputs(image, geometry, tumour_probability=True)
            return outputs.labels, outputs.tumour_probability
        assert self.single is not None
        probabilities = self.single.predict_probabilities(image, geometry)
        labels = np.argmax(probabilities, axis=0)
        liver = postprocess_liver(labels > 0)
        probability = np.where(liver, probabilities[TUMOR], 0.0).astype(np.float32)
        return compose_labels(liver, keep_inside(labels == TUMOR, liver)), probability


def _predict_group(pair: Callable[[], _Pair], raw: RawDataset, fold: str, settings: AblationSettings,
                   maps: Path) -> dict[str, dict[str, Any]]:
    """One network pass per validation case of ``fold`` for one model group (``pair`` loads it, only when a case's
    maps are missing): the label map and P(tumour) are kept in ``maps/<case>.npz``; returned per case, from those
    kept maps: the operating-point counts (:func:`candidate_rows`) and the calibration of P(tumour) in the reference
    liver region."""
    by_id = {c.case_id: c for c in raw.training_cases}
    out: dict[str, dict[str, Any]] = {}
    networks: _Pair | None = None
    for case_id in validation_cases(settings.dataset, fold):
        case = by_id[case_id]
        reference_raw, geometry = read_image(case.label)
        reference = to_task_labels(reference_raw, raw.spec.task_regions)
        kept = maps / f"{case_id}.npz"
        if not kept.exists():
            networks = networks or pair()
            image, geometry = read_image(case.image(0))
            labels, probability = networks.networks(image, geometry)
            maps.mkdir(parents=True, exist_ok=True)
            with atomic_path(kept) as tmp, open(tmp, "wb") as f:
                np.savez_compressed(f, labels=labels.astype(np.uint8), probability=probability.astype(np.float16))
            logger.info("ablation: fold %s case %s predicted", fold, case_id)
        labels, probability = _load_map(kept)
        liver = reference > 0
        out[case_id] = {"operating_point": candidate_rows(labels, probability, reference == TUMOR,
                                                          geometry.spacing_zyx),
                        "calibration": calibration(probability[liver], reference[liver] == TUMOR)}
    return out


def _load_map(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """A kept prediction: the label map before post-processing and P(tumour) (float32 of the stored float16)."""
    with np.load(path, allow_pickle=False) as saved:
        return saved["labels"], saved["probability"].astype(np.float32)


def _operating_point(variant: str, fold: str, rows: dict[str, dict[str, dict[str, Any]]],
                     ) -> tuple[OperatingPoint, str]:
    """Where ``variant`` is scored on ``fold`` and why: argmax with every lesion, or the operating point chosen on the
    other folds' cases of ``rows`` (fold -> case -> that case's group rows), on the fold's own without others."""
    if variant in ARGMAX_VARIANTS:
        return OperatingPoint(), "fixed: argmax, every lesion"
    others = [f for f in rows if f != fold]
    chosen_on = others or [fold]
    per_case = {f"{f}/{c}": r["operating_point"] for f in chosen_on for c, r in rows[f].items()}
    best, _ = choose_operating_point(per_case, "f1")
    point = parse_key(best["key"]) if best is not None else OperatingPoint()
    return point, f"fold(s) {', '.join(chosen_on)}" + ("" if others else " (in-sample: no other fold)")


def _score_variant(variant: str, point: OperatingPoint, raw: RawDataset, fold: str, settings: AblationSettings,
                   maps: Path, group_rows: dict[str, dict[str, Any]], contours: ActiveContourPlan,
                   ) -> dict[str, dict[str, Any]]:
    """Per validation case of ``fold``: ``variant``'s kept prediction at ``point`` (voxel threshold, lesion
    confidence), post-processed (active contours unless switched off, minimum volume) and scored against the
    reference, with the group's calibration."""
    by_id = {c.case_id: c for c in raw.training_cases}
    out = {}
    for case_id in validation_cases(settings.dataset, fold):
        case = by_id[case_id]
        image, geometry = read_image(case.image(0))
        reference_raw, _ = read_image(case.label)
        reference = to_task_labels(reference_raw, raw.spec.task_regions)
        labels, probability = _load_map(maps / f"{case_id}.npz")
        labels = compose_labels(labels > 0, tumour_at(labels, probability, point))
        if ACTIVE_CONTOURS[variant]:
            labels = refine_and_compose(image, geometry, labels, contours)
        labels, _ = remove_small_lesions(labels, geometry.spacing_zyx, point.min_volume_ml)
        out[case_id] = {**evaluate_case(reference, labels, geometry.spacing_zyx),
                        "calibration": group_rows[case_id]["calibration"]}
        logger.info("ablation: fold %s case %s: %s tumour Dice %.3f", fold, case_id, variant,
                    out[case_id]["tumor_dice"])
    return out


# ------------------------------------------------------------------------------------------------------------------
# Aggregation
# ------------------------------------------------------------------------------------------------------------------

def _mean(values: Sequence[float]) -> float:
    finite = [v for v in values if v is not None and math.isfinite(v)]
    return float(np.mean(finite)) if finite else math.nan


def seed_summary(rows: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """One variant and seed: the numbers of the table, from its per-case rows (all folds)."""
    cases = list(rows.values())
    # Copies with their ids: the rows are stored as they were scored.
    strata = assign_strata([{**row, "case_id": case_id} for case_id, row in rows.items()])
    large = [r for r in strata if r[DIAMETER_STRATUM_COLUMN] == "diameter_ge_10cm"]
    small = [r for r in strata if r[DIAMETER_STRATUM_COLUMN] == "diameter_lt_10cm"]
    detection = lesion_detection_summary(cases)
    out: dict[str, Any] = {
        "tumor_dice": _mean([r["tumor_dice"] for r in cases]),
        "tumor_dice_ge_10cm": _mean([r["tumor_dice"] for r in large]),
        "tumor_dice_lt_10cm": _mean([r["tumor_dice"] for r in small]),
        "liver_dice": _mean([r["liver_dice"] for r in cases]),
        "lesion_f1": detection["f1"],
        "n_cases": len(cases), "n_ge_10cm": len(large), "n_lt_10cm": len(small),
        "fp_per_tumour_free_liver": detection["fp_lesions_per_tumour_free_case"],
    }
    for key, entry in (*detection["by_size"].items(), *detection["by_diameter"].items()):
        out[f"sensitivity_{key}"] = entry["sensitivity"]
        out[f"n_lesions_{key}"] = entry["n_reference"]
    out["tlvr_rmse"] = tumour_burden([{**row, "case_id": case_id} for case_id, row in rows.items()])[
        "rmse_segmentation"]
    scores = calibration_scores([r["calibration"] for r in cases])
    out.update({"ece": scores["ece"], "brier": scores["brier"]})
    return out


SUMMARY_KEYS = ("tumor_dice", "tumor_dice_ge_10cm", "tumor_dice_lt_10cm", "liver_dice", "lesion_f1", "ece", "brier",
                *(f"sensitivity_{k}" for k, _, _, _ in (*LESION_SIZE_BINS, *LESION_DIAMETER_BINS)),
                "fp_per_tumour_free_liver", "tlvr_rmse")


def _over_seeds(per_seed: list[dict[str, Any]]) -> dict[str, Any]:
    out = {}
    for key in SUMMARY_KEYS:
        values = np.array([s[key] for s in per_seed], dtype=float)
        finite = values[np.isfinite(values)]
        out[key] = {"mean": float(finite.mean()) if finite.size else math.nan,
                    "sd": float(finite.std(ddof=1)) if finite.size > 1 else math.nan,
                    "per_seed": values.tolist()}
    return out


def paired_test(variant: dict[int, dict[str, dict[str, Any]]], full: dict[int, dict[str, dict[str, Any]]],
                metric: str = "tumor_dice") -> dict[str, Any]:
    """Per case the seed-mean of ``metric`` for the variant and for ``full``; their differences and the Wilcoxon
    signed-rank test (two-sided) over the cases where both are defined."""
    from scipy.stats import wilcoxon

    seeds = sorted(set(variant) & set(full))
    cases = sorted(set.intersection(*(set(variant[s]) & set(full[s]) for s in seeds))) if seeds else []
    differences = {}
    for case in cases:
        a = _mean([variant[s][case][metric] for s in seeds])
        b = _mean([full[s][case][metric] for s in seeds])
        if math.isfinite(a) and math.isfinite(b):
            differences[case] = a - b
    diffs = np.array(list(differences.values()))
    if diffs.size == 0 or not np.any(diffs):
        p = math.nan if diffs.size == 0 else 1.0
    else:
        p = float(wilcoxon(diffs, zero_method="wilcox", alternative="two-sided").pvalue)
    return {"metric": metric, "n_cases": int(diffs.size), "mean_difference": float(diffs.mean()) if diffs.size
            else math.nan, "per_case_difference": differences, "wilcoxon_p": p,
            "smallest_attainable_p": 2.0 / 2 ** diffs.size if diffs.size else math.nan}


def summarise(results: dict[str, dict[int, dict[str, dict[str, Any]]]]) -> dict[str, Any]:
    """Per variant: per-seed numbers, mean ± sd over seeds, the paired test against ``full`` and the pooled
    reliability curve."""
    out = {}
    for variant, per_seed in results.items():
        seeds = {seed: seed_summary(rows) for seed, rows in sorted(per_seed.items())}
        entry: dict[str, Any] = {"per_seed": seeds, "over_seeds": _over_seeds(list(seeds.values())),
                                 "reliability": calibration_scores([r["calibration"] for rows in per_seed.values()
                                                                    for r in rows.values()])}
        if variant != "full":
            entry["vs_full"] = paired_test(per_seed, results["full"])
        out[variant] = entry
    return out


def _cell(stat: dict[str, float], digits: int = 3) -> str:
    return format_mean_std(stat["mean"], stat["sd"] if math.isfinite(stat["sd"]) else None, digits)


def _arm_text(settings: dict[str, Any]) -> str:
    noise, fraction = settings.get("label_noise"), settings.get("train_fraction", 1.0)
    if noise is None and fraction == 1:
        return ""
    parts = ([f"training labels corrupted by {noise}"] if noise else []) + \
        ([f"{fraction:g} of each fold's training cases"] if fraction < 1 else []) + \
        (["the others kept without labels (knowledge term only)"] if settings.get("unlabelled_rest") else [])
    return f" **Training arm: {'; '.join(parts)}** (validation references clean)."


def ablation_markdown(summary: dict[str, Any], settings: dict[str, Any]) -> str:
    """The tables of ``ablation.md``."""
    seeds, folds = settings["seeds"], settings["folds"]
    lines = ["# Ablation", "",
             f"Dataset {settings['dataset']}, fold(s) {', '.join(folds)} (their validation cases), seeds "
             f"{', '.join(str(s) for s in seeds)}; training {settings['liver_epochs']} liver / "
             f"{settings['tumor_epochs']} tumour epochs x {settings['iters_per_epoch']} iterations. Mean ± sd over "
             "seeds of each seed's value. Δ: per case, the variant's tumour Dice minus full's (seed means), mean "
             "over cases; p: Wilcoxon signed-rank, two-sided." + _arm_text(settings), "",
             "| variant | tumour Dice | ≥ 10 cm | < 10 cm | liver Dice | lesion F1 | ECE | Brier | Δ tumour Dice | p |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for variant, entry in summary.items():
        s = entry["over_seeds"]
        vs = entry.get("vs_full")
        delta = f"{vs['mean_difference']:+.3f} (n={vs['n_cases']})" if vs else "–"
        p = f"{vs['wilcoxon_p']:.3g}" if vs and math.isfinite(vs["wilcoxon_p"]) else "–"
        lines.append(f"| {variant} | {_cell(s['tumor_dice'])} | {_cell(s['tumor_dice_ge_10cm'])} | "
                     f"{_cell(s['tumor_dice_lt_10cm'])} | {_cell(s['liver_dice'])} | {_cell(s['lesion_f1'])} | "
                     f"{_cell(s['ece'], 4)} | {_cell(s['brier'], 4)} | {delta} | {p} |")
    first = next(iter(summary.values()))
    n_cases = first["per_seed"][next(iter(first["per_seed"]))]
    all_bins = (*LESION_SIZE_BINS, *LESION_DIAMETER_BINS)
    bins = " | ".join(label for _, label, _, _ in all_bins)
    lines += ["", f"Cases per seed: {n_cases['n_cases']} ({n_cases['n_ge_10cm']} with a lesion ≥ 10 cm, "
              f"{n_cases['n_lt_10cm']} with lesions < 10 cm only). With n cases the smallest attainable p is "
              "2/2^n.", "", "## Lesion detection by size (sensitivity; false-positive lesions per tumour-free liver)",
              "", f"| variant | {bins} | FP / tumour-free liver | TLVR RMSE |", "|---|" + "---|" * (len(all_bins) + 2)]
    for variant, entry in summary.items():
        s = entry["over_seeds"]
        cells = [_cell(s[f"sensitivity_{k}"], 2) for k, _, _, _ in all_bins]
        lines.append(f"| {variant} | {' | '.join(cells)} | {_cell(s['fp_per_tumour_free_liver'], 2)} | "
                     f"{_cell(s['tlvr_rmse'], 4)} |")
    lines += ["", "Reference lesions per seed: " + ", ".join(
        f"{label} {n_cases[f'n_lesions_{k}']}" for k, label, _, _ in all_bins) + ".", ""]
    points = settings.get("operating_points") or {}
    if points:
        lines += ["## Operating points per seed and fold (voxel threshold, lesion confidence, minimum volume ml)", "",
                  "| variant | " + " | ".join(f"seed {seed}" for seed in seeds) + " |",
                  "|---|" + "---|" * len(seeds)]
        for variant, per_seed in points.items():
            cells = [", ".join(f"f{fold}: {p['key'].replace('|', ' / ')}"
                               for fold, p in sorted(per_seed.get(seed, {}).items()))
                     for seed in seeds]
            lines.append(f"| {variant} | " + " | ".join(cells) + " |")
        in_sample = len(folds) == 1
        lines += ["", "Each fold's operating point is chosen on the other ablated folds' cases (cross-fitted)." if not
                  in_sample else "One fold: the operating point is chosen on the same cases it is scored on "
                  "(in-sample, optimistic for every variant but argmax_operating_point); ablate several folds for a "
                  "cross-fitted choice.", ""]
    return "\n".join(lines)


def reliability_diagram(summary: dict[str, Any], path: Path, variants: Sequence[str] = ("full", "no_tlvr")) -> Path:
    """The pooled reliability curves of ``variants`` (observed tumour fraction against mean P(tumour) per bin)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.5, 4.5), dpi=110)
    ax.plot([0, 1], [0, 1], color="0.6", linestyle="--", linewidth=1, label="perfect calibration")
    for variant in variants:
        if variant not in summary:
            continue
        curve = summary[variant]["reliability"]
        conf, freq = np.array(curve["confidence"], float), np.array(curve["frequency"], float)
        keep = np.isfinite(conf) & np.isfinite(freq)
        ax.plot(conf[keep], freq[keep], marker="o", label=f"{variant} (ECE {curve['ece']:.4f})")
    ax.set_xlabel("mean P(tumour) in bin")
    ax.set_ylabel("observed tumour fraction")
    ax.set_title("Tumour probability in the liver region", fontsize=10)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


# ------------------------------------------------------------------------------------------------------------------
# Entry point
# ------------------------------------------------------------------------------------------------------------------

def run_ablation(settings: AblationSettings) -> Path:
    """Train what the variants need, predict the folds' validation cases, write ``ablation.json`` / ``.md`` and the
    reliability diagram; returns the ablation folder. Safe to call again: finished models and scored predictions
    are reused. A training arm (``settings.arm``: label noise, fewer cases) has its own folder,
    ``ablation/arms/<arm>/``, scored against the same clean references."""
    preprocessed = find_dataset(settings.dataset, preprocessed_root())
    raw = RawDataset.find(settings.dataset)
    base = results_root() / preprocessed.name / "ablation"
    folder = base if settings.arm.is_default else base / ARMS / settings.arm.key
    folder.mkdir(parents=True, exist_ok=True)
    single_root: dict[str, Path] = {}
    arm_roots: dict[int, Path] = {}

    def arm_root(seed: int) -> Path | None:
        if settings.arm.is_default:
            return None
        if seed not in arm_roots:
            arm_roots[seed] = arm_preprocessed(preprocessed, raw, settings.arm, seed, folder / "preprocessed",
                                               settings.num_processes)
        return arm_roots[seed]

    def single() -> Path:
        if "root" not in single_root:
            single_root["root"] = _single_stage_preprocessed(preprocessed, raw, folder / "single_stage_preprocessed",
                                                             settings.num_processes)
        return single_root["root"]

    contours = active_contour_plan(Plans.load(preprocessed / "plans.json")["tumor"])
    groups: dict[tuple[ModelSpec, ...], list[str]] = {}
    for variant in settings.variants:
        groups.setdefault(VARIANT_MODELS[variant], []).append(variant)
    results: dict[str, dict[int, dict[str, dict[str, Any]]]] = {v: {} for v in settings.variants}
    points: dict[str, dict[int, dict[str, Any]]] = {v: {} for v in settings.variants}
    for seed in settings.seeds:
        for specs, variants in groups.items():
            name = "+".join(s.key for s in specs)
            rows: dict[str, dict[str, dict[str, Any]]] = {}
            for fold in settings.folds:  # first pass: the networks, once per case
                cache = folder / "cases" / f"{name}_seed{seed}_fold{fold}.json"
                maps = folder / "cases" / "maps" / f"{name}_seed{seed}_fold{fold}"
                rows[fold] = load_cache(cache)
                if rows[fold] is None:
                    checkpoints: dict[str, Path] = {}
                    for s in specs:  # the liver model first: it crops the tumour model's unlabelled cases
                        checkpoints[s.task] = _train(s, seed, fold, settings, folder, single, arm_root,
                                                     checkpoints.get("liver"))
                    rows[fold] = _predict_group(lambda c=checkpoints: _Pair(c, settings, contours), raw, fold,
                                                settings, maps)
                    _write_cache(rows[fold], cache)
            for variant in variants:  # second pass: each variant at its operating point
                for fold in settings.folds:
                    point, chosen_on = _operating_point(variant, fold, rows)
                    # named by the models too: a variant whose models changed (a default that changed) is scored again
                    cache = folder / "cases" / \
                        f"{variant}_{name}_seed{seed}_fold{fold}_{point.key.replace('|', '_')}.json"
                    scored = load_cache(cache)
                    if scored is None:
                        maps = folder / "cases" / "maps" / f"{name}_seed{seed}_fold{fold}"
                        scored = _score_variant(variant, point, raw, fold, settings, maps, rows[fold], contours)
                        _write_cache(scored, cache)
                    results[variant].setdefault(seed, {}).update(scored)
                    points[variant].setdefault(seed, {})[fold] = {"key": point.key, "chosen_on": chosen_on}
    summary = summarise(results)
    recorded = {"dataset": preprocessed.name, "folds": list(settings.folds), "seeds": list(settings.seeds),
                "variants": list(settings.variants), "liver_epochs": settings.liver_epochs,
                "tumor_epochs": settings.tumor_epochs, "iters_per_epoch": settings.iters_per_epoch,
                "val_iters": settings.val_iters, "device": str(settings.device), "precision": settings.precision,
                "step_size": settings.step_size, "active_contours": contours.to_dict(), **settings.arm.to_dict(),
                "operating_points": points}
    write_json(json_safe({"settings": recorded, "summary": summary, "cases": results}), folder / "ablation.json")
    write_text(ablation_markdown(summary, recorded), folder / "ablation.md")
    reliability_diagram(summary, folder / "reliability.png")
    logger.info("ablation written to %s", folder)
    return folder


def _base_folder(folder: Path) -> Path:
    """The clean run's ablation folder of an arm's folder (``ablation/arms/<arm>`` -> ``ablation``)."""
    return folder.parent.parent if folder.parent.name == ARMS else folder


#: The format of the per-case caches under ``ablation/cases/``; caches of another format are computed again.
CACHE_FORMAT = 3


def load_cache(path: Path) -> dict[str, Any] | None:
    """The per-case entries of one ``ablation/cases/`` file; None when it is missing or of another format."""
    if not path.exists():
        return None
    data = json.loads(path.read_text())
    return data["cases"] if isinstance(data, dict) and data.get("format") == CACHE_FORMAT else None


def _write_cache(cases: dict[str, Any], path: Path) -> None:
    write_json(json_safe({"format": CACHE_FORMAT, "cases": cases}), path)

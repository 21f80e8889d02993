"""The liver -> tumour inference cascade for one image in memory (:class:`CascadePredictor`); cohorts are
:mod:`smoothseg.inference.cohort`.

One case goes through these steps:

1. liver stage on the whole volume (:class:`~smoothseg.inference.predictor.StagePredictor` of the ``liver``
   configuration), probabilities reverted to the original grid, argmax;
2. largest connected component and 3D hole filling of the liver region, on the original grid;
3. tumour stage on the crop around the *predicted* liver, with intensities outside the predicted liver masked as in
   training (steps 3 and 4 of the method); skipped when no liver was found. The tumour is the argmax of its classes
   or, at the operating point chosen on the fold validation (:mod:`smoothseg.inference.operating_point`), every voxel
   of the liver with P(tumour) at or above a threshold; lesions whose highest P(tumour) is below the operating
   point's minimum confidence are dropped whole;
4. the liver refined at the tumour stage's fine spacing: inside the crop, the liver region is what both stages call
   liver (liver-stage mask and the tumour model's liver or tumour classes), again reduced to its largest component
   with holes filled; the tumour is kept inside it. The liver model sees the whole CT at a coarse spacing (4-6 mm on
   typical plans), where the liver boundary is blurred by a voxel or more; the tumour model was trained to delineate
   liver and tumour inside a perturbed liver mask at the fine spacing, so it can trim the coarse boundary (it cannot
   grow the liver beyond the mask it is given). ``refine_liver=False`` keeps the liver stage's mask;
5. local active contours per lesion (:func:`~smoothseg.inference.active_contour.refine_tumours`) with the tumour
   configuration's :class:`~smoothseg.planning.plans.ActiveContourPlan` (from the plans inside the checkpoint, the
   one source of truth at inference); can be switched off;
6. tumour components under the minimum lesion volume chosen on the validation fold (with the threshold) become liver
   (:mod:`smoothseg.inference.lesion_filter`; none without a full validation, or with ``min_lesion_volume_ml=0``);
7. the label map: 0 background, 1 liver, 2 tumour, written with the input's exact geometry (spacing, origin and any
   direction matrix), atomically, plus the per-case tumour report (:mod:`smoothseg.inference.report`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from smoothseg.dataset.io import Geometry
from smoothseg.device import precision_name, resolve_device
from smoothseg.errors import SmoothSegError
from smoothseg.inference.contour_choice import choice_from_folders
from smoothseg.inference.engines import ENGINE_CHOICES, engine_dtype, resolve_engine
from smoothseg.inference.lesion_filter import remove_small_lesions
from smoothseg.inference.operating_point import (
    ARGMAX,
    operating_point_from_folders,
    remove_doubtful_lesions,
    threshold_value,
)
from smoothseg.inference.postprocessing import compose_labels, postprocess_liver, refine_and_compose
from smoothseg.inference.predictor import StagePredictor
from smoothseg.labels import TUMOR
from smoothseg.masks.components import keep_inside
from smoothseg.models.checkpoint import update_with_file
from smoothseg.models.store import ModelPair
from smoothseg.planning.plans import ActiveContourPlan, ConfigurationPlan, default_active_contour

__all__ = ["CascadePredictor", "CascadeResult", "ModelOptions", "NetworkOutputs", "Predictor", "active_contour_plan",
           "describe_models", "model_id"]

logger = logging.getLogger(__name__)

ACTIVE_CONTOUR_MODES = ("auto", "on", "off")
#: The tumour stage's liver refinement is used only when it keeps at least this fraction of the liver stage's mask.
MIN_REFINED_LIVER_FRACTION = 0.5


@dataclass
class ModelOptions:
    """How the models predict (``smoothseg_predict``'s model flags); cohort settings are
    :class:`~smoothseg.inference.cohort.CohortOptions`.

    ``device`` None: resolved from ``auto`` once, when the models are loaded. ``tta`` None: on for CUDA only.
    ``active_contour``: ``auto`` runs what the fold validation chose (:mod:`smoothseg.inference.contour_choice`;
    none without a validation), ``on`` the plan's settings, ``off`` none (``True``/``False`` mean on/off).
    ``min_lesion_volume_ml`` None: the volume chosen on the models' validation (``postprocessing.json``).
    ``tumor_threshold`` None: the threshold chosen on the models' validation with that volume (argmax without one);
    ``"argmax"``: the argmax of the tumour stage's classes; a number in (0, 1): P(tumour) >= it inside the liver.
    ``min_lesion_confidence`` None: the one chosen on the validation (0, every lesion, without one); a number in
    [0, 1): lesions whose highest P(tumour) is below it are dropped.
    ``precision``: the networks' arithmetic (:func:`smoothseg.device.autocast_dtype`; ``auto``: fp16 on CUDA, bf16 on
    a CPU with bfloat16 units, else fp32). ``engine``: what runs the networks (:mod:`smoothseg.inference.engines`;
    ``auto``: OpenVINO for the large networks of GPU-sized plans on a CPU where it is installed, else torch).
    """

    device: torch.device | None = None
    step_size: float = 0.5
    tta: bool | None = None
    precision: str = "auto"
    engine: str = "auto"
    save_probabilities: bool = False  # also write <case>.npz with the tumour probability map
    active_contour: str | bool = "auto"
    min_lesion_volume_ml: float | None = None
    tumor_threshold: float | str | None = None
    min_lesion_confidence: float | None = None
    progress: bool = False  # a progress bar over the sliding-window tiles

    def __post_init__(self) -> None:
        mode = {True: "on", False: "off"}.get(self.active_contour, self.active_contour)
        if mode not in ACTIVE_CONTOUR_MODES:
            raise SmoothSegError(f"active contours: choose {', '.join(ACTIVE_CONTOUR_MODES)}, "
                                 f"got {self.active_contour!r}")
        self.active_contour = mode
        threshold_value(self.tumor_threshold)  # refuses anything but None, "argmax" or a number in (0, 1)
        if self.engine not in ENGINE_CHOICES:
            raise SmoothSegError(f"unknown engine '{self.engine}'; use {', '.join(ENGINE_CHOICES)}")
        if self.min_lesion_confidence is not None and not 0.0 <= self.min_lesion_confidence < 1.0:
            raise SmoothSegError(f"a minimum lesion confidence lies in [0, 1), got {self.min_lesion_confidence}")


def model_id(checkpoints: list[Path], settings: dict[str, Any]) -> str:
    """What made an output: a short hash of the checkpoint files' bytes and of the prediction settings, so a retrained
    model or other settings give another id (``smoothseg_predict --continue`` redoes their outputs)."""
    digest = hashlib.sha256()
    for path in checkpoints:
        update_with_file(digest, path)
    # The engine is recorded beside the id but not hashed: engines differ by floating-point rounding (as two CPUs do),
    # which changes a label only at a tie; precision changes the arithmetic itself and is hashed.
    relevant = {k: settings.get(k) for k in ("active_contour", "active_contour_settings", "tta", "step_size",
                                             "min_lesion_volume_ml", "precision", "tumor_threshold",
                                             "min_lesion_confidence")}
    digest.update(json.dumps(relevant, sort_keys=True).encode())
    return digest.hexdigest()[:16]


def describe_models(pair: ModelPair, options: ModelOptions) -> dict[str, Any]:
    """What prediction with ``pair`` and ``options`` will be, without loading a network: the pair, the settings that
    change the output (active contours, TTA, step, minimum lesion volume and where it came from) and their
    :func:`model_id`. Recorded in every report and summary; ``--continue`` compares the ids."""
    device = options.device if options.device is not None else resolve_device("auto")
    point, source = operating_point_from_folders(p.parent for p in pair.checkpoints("tumor"))
    threshold, confidence, min_ml = point.threshold, point.confidence, point.min_volume_ml
    threshold_source = confidence_source = source
    if options.min_lesion_volume_ml is not None:
        min_ml, source = options.min_lesion_volume_ml, "given"
    if options.tumor_threshold is not None:
        threshold, threshold_source = threshold_value(options.tumor_threshold), "given"
    if options.min_lesion_confidence is not None:
        confidence, confidence_source = float(options.min_lesion_confidence), "given"
    chosen, why = _chosen_contours(pair, options.active_contour)
    engine = resolve_engine(options.engine, device)  # an explicit engine that cannot run here fails now
    info = {**pair.to_dict(), "active_contour": options.active_contour != "off" and chosen != "none",
            "active_contour_mode": options.active_contour, "active_contour_settings": chosen,
            "active_contour_source": why,
            "tta": bool(options.tta) if options.tta is not None else device.type == "cuda",
            "step_size": options.step_size, "engine": options.engine,
            "precision": precision_name(engine_dtype(engine, device, options.precision)),
            "min_lesion_volume_ml": min_ml, "min_lesion_volume_source": source,
            "tumor_threshold": ARGMAX if threshold is None else threshold, "tumor_threshold_source": threshold_source,
            "min_lesion_confidence": confidence, "min_lesion_confidence_source": confidence_source}
    info["model_id"] = model_id([*pair.checkpoints("liver"), *pair.checkpoints("tumor")], info)
    return info


def _chosen_contours(pair: ModelPair, mode: str) -> tuple[dict[str, Any] | str, str]:
    """``(settings, why)``: the validation's chosen settings as a dict (``auto``), ``"plan"`` (``on``) or ``"none"``."""
    if mode == "off":
        return "none", "switched off"
    if mode == "on":
        return "plan", "switched on: the plan's settings"
    settings, why, _ = choice_from_folders(p.parent for p in pair.checkpoints("tumor"))
    return ("none" if settings is None else settings.to_dict()), why


def active_contour_plan(plan: ConfigurationPlan) -> ActiveContourPlan:
    """The tumour configuration's active-contour settings (the defaults in its window for plans that have none)."""
    return plan.active_contour if plan.active_contour is not None else default_active_contour(plan.window)


@dataclass
class CascadeResult:
    """One predicted case: the final label map, whether a liver was found, and seconds per stage."""

    labels: np.ndarray
    liver_found: bool
    timings: dict[str, float] = field(default_factory=dict)


@dataclass
class NetworkOutputs:
    """The networks' part of one case (steps 1-4): the label map before post-processing, seconds per stage and, on
    request, the tumour probability on the original grid: the tumour stage's softmax, reverted from its grid with
    linear interpolation, inside the (refined) liver region, 0 elsewhere (float32)."""

    labels: np.ndarray
    timings: dict[str, float]
    tumour_probability: np.ndarray | None = None


class CascadePredictor:
    """Liver stage -> tumour stage on the predicted liver crop -> active contours, for images in memory.

    ``active_contour_params`` None switches the active contours off; ``min_lesion_volume_ml`` 0 keeps every lesion.
    """

    def __init__(self, liver: StagePredictor, tumor: StagePredictor,
                 active_contour_params: ActiveContourPlan | None = None, model_info: dict[str, Any] | None = None,
                 refine_liver: bool = True, min_lesion_volume_ml: float = 0.0, save_probabilities: bool = False,
                 tumor_threshold: float | None = None, min_lesion_confidence: float = 0.0):
        if liver.task != "liver" or tumor.task != "tumor":
            raise SmoothSegError(f"a cascade needs a liver and a tumor stage, got {liver.task} and {tumor.task}")
        self.liver = liver
        self.tumor = tumor
        self.active_contour_params = active_contour_params
        self.refine_liver = refine_liver
        #: Cohort runs also write each case's tumour probability map (``smoothseg_predict --save_probabilities``).
        self.save_probabilities = save_probabilities
        if not (math.isfinite(min_lesion_volume_ml) and min_lesion_volume_ml >= 0):
            raise SmoothSegError(f"the minimum lesion volume must be a non-negative number of ml, got "
                                 f"{min_lesion_volume_ml}")
        self.min_lesion_volume_ml = float(min_lesion_volume_ml)
        #: P(tumour) at or above which a liver voxel is tumour; None: the argmax of the tumour stage's classes.
        self.tumor_threshold = threshold_value(tumor_threshold)
        #: Lesions whose highest P(tumour) is below this are dropped (0: none).
        self.min_lesion_confidence = float(min_lesion_confidence)
        self.model_info = model_info or {"dataset": liver.dataset, "trainer": liver.trainer,
                                         "folds": {"liver": liver.folds, "tumor": tumor.folds}}

    @classmethod
    def from_models(cls, pair: ModelPair, options: ModelOptions | None = None) -> CascadePredictor:
        """Load the liver and tumour checkpoints of ``pair`` (see :func:`~smoothseg.models.store.select_models`)."""
        options = options or ModelOptions()
        device = options.device if options.device is not None else resolve_device("auto")
        info = describe_models(pair, replace(options, device=device))
        stages = {task: StagePredictor(pair.checkpoints(task), device=device, step_size=options.step_size,
                                       tta=options.tta, precision=options.precision, engine=options.engine,
                                       progress=options.progress)
                  for task in ("liver", "tumor")}
        info["engines"] = {task: stage.engine for task, stage in stages.items()}  # what "auto" chose per stage
        chosen = info["active_contour_settings"]
        params = None if chosen == "none" else active_contour_plan(stages["tumor"].plan) if chosen == "plan" else \
            ActiveContourPlan.from_dict(chosen)
        logger.info("active contours %s (%s)", "on: " + json.dumps(params.to_dict()) if params else "off",
                    info["active_contour_source"])
        logger.info("tumour operating point: voxels %s (%s), lesions of confidence >= %g (%s) and >= %g ml (%s)",
                    info["tumor_threshold"], info["tumor_threshold_source"], info["min_lesion_confidence"],
                    info["min_lesion_confidence_source"], info["min_lesion_volume_ml"],
                    info["min_lesion_volume_source"])
        return cls(stages["liver"], stages["tumor"], params, info, min_lesion_volume_ml=info["min_lesion_volume_ml"],
                   save_probabilities=options.save_probabilities,
                   tumor_threshold=threshold_value(info["tumor_threshold"]),
                   min_lesion_confidence=info["min_lesion_confidence"])

    # -- stages ------------------------------------------------------------------------------------------------------
    def liver_stage(self, image: np.ndarray, geometry: Geometry,
                    prepared: tuple[np.ndarray, dict[str, Any]] | None = None) -> np.ndarray:
        """Steps 1-2: the post-processed liver-region mask on the original grid.

        ``prepared`` is the liver stage's ``preprocess(image, geometry)`` output when it was computed elsewhere.
        """
        data, properties = prepared if prepared is not None else self.liver.preprocess(image, geometry)
        probabilities = self.liver.predict_preprocessed(data)
        del data
        return postprocess_liver(self.liver.revert_labels(probabilities, properties) > 0)

    def tumour_stage(self, image: np.ndarray, geometry: Geometry,
                     liver: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Steps 3-4: the ``(liver, tumour)`` masks on the original grid, given the liver stage's mask ``liver``.

        The liver is ``liver`` refined by the tumour model (see the module docstring; never larger than ``liver``,
        and ``liver`` itself when ``refine_liver`` is off or the refinement would keep less than
        ``MIN_REFINED_LIVER_FRACTION`` of it); the tumour lies inside it. Both are empty when ``liver`` is.
        """
        liver, tumour, _ = self._tumour_stage(image, geometry, liver, with_probability=False)
        return liver, tumour

    def _tumour_stage(self, image: np.ndarray, geometry: Geometry, liver: np.ndarray,
                      with_probability: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        tumour = np.zeros(liver.shape, dtype=bool)
        with_probability = with_probability or self.tumor_threshold is not None or self.min_lesion_confidence > 0
        probability = np.zeros(liver.shape, dtype=np.float32) if with_probability else None
        if not liver.any():
            return liver, tumour, probability
        data, properties = self.tumor.preprocess(image, geometry, liver)
        # tiles of the crop box that hold no liver are not run (their voxels are background, the others unchanged)
        probabilities = self.tumor.predict_preprocessed(data, properties.get("network_region"))
        del data
        cropped, region = self.tumor.revert_labels_to_crop(probabilities, properties)
        if probability is not None:
            probability[region] = self.tumor.preprocessor.revert_class_map(probabilities[TUMOR], properties)
        del probabilities
        # at a threshold: every voxel of the final liver region (below) with P(tumour) >= it, as the validation scored
        tumour[region] = cropped == TUMOR if self.tumor_threshold is None else \
            probability[region] >= self.tumor_threshold
        if self.refine_liver:
            refined = np.zeros(liver.shape, dtype=bool)
            refined[region] = cropped > 0  # the tumour model's liver region: liver or tumour
            refined = postprocess_liver(refined & liver)
            # A boundary correction trims a few percent; a tumour model that removes most of the liver disagrees
            # wholesale with the liver model (e.g. it is barely trained), and the liver stage's mask is kept.
            if np.count_nonzero(refined) >= MIN_REFINED_LIVER_FRACTION * np.count_nonzero(liver):
                liver = refined
        if probability is not None:
            probability[~liver] = 0.0  # as the label map: tumour only inside the liver
        tumour, _ = remove_doubtful_lesions(keep_inside(tumour, liver), probability, self.min_lesion_confidence)
        return liver, tumour, probability

    def network_stages(self, image: np.ndarray, geometry: Geometry, prepared: tuple[np.ndarray, dict[str, Any]]
                       | None = None) -> tuple[np.ndarray, dict[str, float]]:
        """Steps 1-4: the label map before active contours, and seconds per stage."""
        outputs = self.network_outputs(image, geometry, prepared)
        return outputs.labels, outputs.timings

    def network_outputs(self, image: np.ndarray, geometry: Geometry,
                        prepared: tuple[np.ndarray, dict[str, Any]] | None = None, *,
                        tumour_probability: bool = False) -> NetworkOutputs:
        """Steps 1-4 with, on request, the tumour probability map (see :class:`NetworkOutputs`)."""
        t0 = time.perf_counter()
        liver = self.liver_stage(image, geometry, prepared)
        t1 = time.perf_counter()
        liver, tumour, probability = self._tumour_stage(image, geometry, liver, tumour_probability)
        t2 = time.perf_counter()
        return NetworkOutputs(compose_labels(liver, tumour), {"liver_stage": t1 - t0, "tumour_stage": t2 - t1},
                              probability)

    def predict(self, image: np.ndarray, geometry: Geometry) -> CascadeResult:
        """The whole cascade for one image in memory (HU, ``(z, y, x)``) with its geometry."""
        t0 = time.perf_counter()
        prepared = self.liver.preprocess(image, geometry)
        timings = {"preprocess": time.perf_counter() - t0}
        labels, stage_times = self.network_stages(image, geometry, prepared)
        timings.update(stage_times)
        t1 = time.perf_counter()
        labels = refine_and_compose(image, geometry, labels, self.active_contour_params)
        labels, _ = remove_small_lesions(labels, geometry.spacing_zyx, self.min_lesion_volume_ml)
        timings["active_contour"] = time.perf_counter() - t1
        return CascadeResult(labels, bool(labels.any()), timings)


#: ``from smoothseg.inference import Predictor``: the cascade is what users predict with.
Predictor = CascadePredictor

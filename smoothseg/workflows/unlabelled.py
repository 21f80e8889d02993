"""Prepare a fold's unlabelled cases for the tumour model: the fold's liver model crops them as at inference.

The workflow half of :mod:`smoothseg.training.unlabelled` (the trainer trains and calls no inference): each
unlabelled CT is read, its liver predicted by the fold's liver model (liver stage + post-processing, as the cascade
does for a new patient), and cropped and resampled for the tumour plan with the intensities outside that liver filled
(:func:`smoothseg.inference.predictor.crop_to_liver`). Stored once per liver model; a case that cannot be prepared
(unreadable image, no liver found) is recorded with its reason, reported, and left out; the others go on.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import torch

from smoothseg.atomic import write_json
from smoothseg.dataset.io import read_image
from smoothseg.dataset.raw_dataset import RawDataset
from smoothseg.errors import SmoothSegError
from smoothseg.inference.postprocessing import postprocess_liver
from smoothseg.inference.predictor import StagePredictor, crop_to_liver
from smoothseg.knowledge.tlvr import describe_availability
from smoothseg.paths import find_dataset, preprocessed_root
from smoothseg.planning.plans import Plans
from smoothseg.training.config import TrainingConfig
from smoothseg.training.distributed import from_environment
from smoothseg.training.fold_guard import FINAL
from smoothseg.training.trainer import get_trainer_class
from smoothseg.training.unlabelled import SOURCES, cache_folder, fold_unlabelled, save_prepared

__all__ = ["prepare_unlabelled"]

logger = logging.getLogger(__name__)


def _images(raw: RawDataset, cases: dict[str, str]) -> dict[str, Path | None]:
    """The image (channel 0) of each unlabelled case by its source; None when it has none."""
    pools = {SOURCES[0]: raw.unlabelled_cases, SOURCES[1]: raw.training_cases}
    found = {source: {c.case_id: c.images.get(0) for c in pool} for source, pool in pools.items()}
    return {case_id: found[source].get(case_id) for case_id, source in cases.items()}


def _prepared(meta: Path) -> bool:
    """Whether a case was prepared (a case that failed is tried again)."""
    return meta.is_file() and not json.loads(meta.read_text()).get("error")


def prepare_unlabelled(config: TrainingConfig, device: torch.device) -> Path | None:
    """Prepare ``config``'s unlabelled cases (tumour task) with its fold's liver model; returns the cache folder,
    or None when there is nothing to prepare (another task, none listed, the option off, no liver model yet: the
    trainer then says what is missing)."""
    trainer = get_trainer_class(config.trainer)
    if config.task != "tumor" or config.unlabelled_every <= 0 or config.tlvr_weight == 0 or not trainer.uses_tlvr \
            or from_environment().enabled:  # under torchrun the trainer leaves them out (it says so)
        return None
    preprocessed = find_dataset(config.dataset, preprocessed_root())
    plans = Plans.load(preprocessed / "plans.json")
    raw = RawDataset.find(plans.dataset)
    cases = fold_unlabelled(preprocessed / "splits.json", config.fold, raw.spec.unlabelled)
    finished = (trainer.output_folder(config) / FINAL).exists()
    if not cases or not describe_availability(raw.spec, config.tlvr_weight)[0] or \
            (finished and not (config.continue_training or config.overwrite)):
        return None  # nothing to use them for, or a finished fold the trainer refuses to start over
    liver = trainer.liver_checkpoint(config)
    if not liver.is_file():
        return None
    folder = cache_folder(preprocessed, liver, plans["tumor"].content_hash())
    todo = {c: s for c, s in cases.items() if not _prepared(folder / f"{c}.json")}
    if not todo:
        return folder
    logger.info("preparing %d unlabelled case(s) with the liver model %s -> %s", len(todo), liver, folder)
    predictor = StagePredictor([liver], device=device, tta=False)  # the cascade's liver stage, without mirroring
    plan = plans["tumor"]
    for case_id, path in _images(raw, todo).items():
        meta = {"case_id": case_id, "source": todo[case_id], "liver_model": str(liver), "image": str(path)}
        try:
            if path is None:
                where = "imagesUnlabelled" if todo[case_id] == SOURCES[0] else "imagesTr"
                raise SmoothSegError(f"[{case_id}] has no image in {raw.folder / where}")
            image, geometry = read_image(path)
            data, properties = predictor.preprocess(image, geometry)
            probabilities = predictor.predict_preprocessed(data)
            mask = postprocess_liver(predictor.revert_labels(probabilities, properties) > 0)
            if not mask.any():
                raise SmoothSegError(f"{path}: the liver model found no liver in this image")
            cropped, properties = crop_to_liver(plan, image, geometry, mask)
        except SmoothSegError as exc:
            logger.error("unlabelled case %s left out: %s", case_id, exc)
            folder.mkdir(parents=True, exist_ok=True)
            write_json({**meta, "error": str(exc)}, folder / f"{case_id}.json")
            continue
        save_prepared(folder, case_id, cropped, properties["network_region"],
                      {**meta, "shape": list(cropped.shape[1:]),
                       "liver_voxels": int(np.count_nonzero(properties["network_region"]))})
    return folder

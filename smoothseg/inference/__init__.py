"""Inference: from a trained model pair and a new CT to a label map and a tumour report.

* :mod:`~smoothseg.inference.sliding_window` — Gaussian-weighted sliding-window prediction with mirroring
  test-time augmentation (nnU-Net style), for any network that maps a patch to logits;
* :mod:`~smoothseg.inference.predictor` — :class:`StagePredictor`: one configuration (liver or tumour), one or several
  folds, from an image to probabilities on its original grid, with the training preprocessor;
* :mod:`~smoothseg.inference.cascade` — :class:`CascadePredictor` (alias ``Predictor``): liver stage -> tumour stage
  on the predicted liver -> active contours -> label map, for one image in memory;
* :mod:`~smoothseg.inference.cohort` — :func:`predict` / :func:`run_cohort`: many cases, process pools
  (:mod:`~smoothseg.inference.cohort_workers`), parts, ``summary.json``; :mod:`~smoothseg.inference.inputs` finds
  the cases;
* :mod:`~smoothseg.inference.postprocessing`, :mod:`~smoothseg.inference.active_contour`,
  :mod:`~smoothseg.inference.lesion_filter` — the cascade's post-processing;
* :mod:`~smoothseg.inference.report` — the per-case tumour report and the cohort ``report.csv``.

Nothing is imported eagerly: the names below resolve on first access (PEP 562), so importing one submodule does not
pull in torch or scikit-image needlessly, while ``from smoothseg.inference import Predictor`` still works.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "StagePredictor": "smoothseg.inference.predictor",
    "CascadePredictor": "smoothseg.inference.cascade",
    "Predictor": "smoothseg.inference.cascade",
    "ModelOptions": "smoothseg.inference.cascade",
    "CohortOptions": "smoothseg.inference.cohort",
    "predict": "smoothseg.inference.cohort",
    "run_cohort": "smoothseg.inference.cohort",
    "select_models": "smoothseg.models.store",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

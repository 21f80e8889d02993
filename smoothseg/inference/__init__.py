"""Inference: from a trained model and a new CT to a label map.

This sub-package owns everything that happens after training:

* :mod:`smoothseg.inference.sliding_window` — Gaussian-weighted sliding-window prediction with mirroring
  test-time augmentation (nnU-Net style), for any network that maps a patch to logits;
* :mod:`smoothseg.inference.postprocessing` — pure NumPy/SciPy mask helpers: largest connected component, hole
  filling, bounding boxes with millimetre margins, crop/paste;
* :mod:`smoothseg.inference.active_contour` — local, per-lesion morphological Chan-Vese refinement of tumour
  boundaries, with safety checks that never delete a lesion;
* :mod:`smoothseg.inference.predictor` — :class:`StagePredictor`: one configuration (liver or tumour), one or several
  folds, from an image to probabilities on its original grid, with the training preprocessor;
* :mod:`smoothseg.inference.cascade` — :class:`CascadePredictor` (alias ``Predictor``): liver stage -> tumour stage on
  the predicted liver -> active contours -> label map, and :func:`predict` for a folder of cases;
* :mod:`smoothseg.inference.report` — the per-case tumour report and the cohort ``report.csv``;
* :mod:`smoothseg.inference.model_store` — choosing the trained model pair, exporting and installing it as a zip;
* :mod:`smoothseg.inference.validation` — :func:`validate_fold`: the full cascade on a fold's validation cases.

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
    "PredictOptions": "smoothseg.inference.cascade",
    "predict": "smoothseg.inference.cascade",
    "select_models": "smoothseg.inference.model_store",
    "export_models": "smoothseg.inference.model_store",
    "install_models": "smoothseg.inference.model_store",
    "validate_fold": "smoothseg.inference.validation",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

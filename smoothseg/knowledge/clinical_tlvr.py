"""The clinical TLVR prediction of new cases: a tumour model's fitted TLVR regression(s) applied to a clinical table.

Used by prediction (``smoothseg_predict --clinical``) and the fold validation to put ``clinical_tlvr_prediction``
into the tumour reports.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from smoothseg.dataset.clinical import read_table
from smoothseg.errors import SmoothSegError
from smoothseg.knowledge.tlvr import TLVRRegressor

__all__ = ["ClinicalTLVR"]

logger = logging.getLogger(__name__)


class ClinicalTLVR:
    """The clinical TLVR prediction for cases: the tumour model's fitted TLVR regression(s) applied to a table.

    ``table`` is a DataFrame indexed by case id, or a CSV/TSV path whose ``case_id`` column (else its first column)
    holds the case ids. ``models`` are serialised :class:`~smoothseg.knowledge.tlvr.TLVRRegressor` dicts (one per
    fold); the prediction is their mean.
    """

    def __init__(self, table: pd.DataFrame | str | Path, models: Sequence[dict[str, Any]]) -> None:
        self.table = table if isinstance(table, pd.DataFrame) else self._read(Path(table))
        self.models = []
        for data in models:
            try:
                self.models.append(TLVRRegressor.from_dict(data))
            except ValueError as exc:
                logger.warning("ignoring an invalid TLVR regression in the tumour checkpoint (%s)", exc)
        if not self.models:
            logger.warning("the tumour model has no fitted TLVR regression; no clinical TLVR predictions")

    @staticmethod
    def _read(path: Path) -> pd.DataFrame:
        if not path.is_file():
            raise SmoothSegError(f"{path}: clinical table not found")
        table = read_table(path)
        if table.empty:
            raise SmoothSegError(f"{path}: clinical table has no rows")
        id_column = "case_id" if "case_id" in table.columns else table.columns[0]
        table.index = pd.Index(table.pop(id_column).astype(str).str.strip(), name="case_id")
        return table

    def predict(self, case_id: str) -> float | None:
        """The predicted TLVR of ``case_id``, or None without a row or a model."""
        if not self.models or case_id not in self.table.index:
            return None
        row = self.table.loc[[case_id]]
        features = [c for m in self.models for c in (*m.numeric_features_, *m.categorical_features_)]
        if row.reindex(columns=sorted(set(features))).isna().all(axis=None):
            return None  # a row without any feature value is no clinical data
        try:
            values = [float(model.predict(row)[0]) for model in self.models]
        except ValueError as exc:
            logger.warning("%s: no clinical TLVR prediction (%s)", case_id, exc)
            return None
        return float(np.mean(values))

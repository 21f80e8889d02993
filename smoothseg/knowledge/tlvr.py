"""The clinical TLVR regression: a patient's tumour-to-liver volume ratio predicted from clinical variables.

TLVR = tumour volume / liver-region volume, a number in [0, 1]. SmoothSegNet uses a clinical prediction
of it as a weak, patient-level label for the tumour model (see ``smoothseg.training.losses.TLVRLoss``
and ``documentation/method.md``).

The model
    logit(clip(TLVR, eps, 1 - eps)) ~ Ridge(alpha) on the preprocessed features, and
    prediction = sigmoid(ridge output), so every prediction lies in [0, 1].
Preprocessing lives inside one scikit-learn ``Pipeline``/``ColumnTransformer`` and is fitted on the
training rows only:
    numeric:      median imputation (+ a missing-value indicator per column that had gaps) -> standard scaling
    categorical:  missing -> the category "missing" -> one-hot encoding (unseen categories -> all zeros)

Contract with the trainer (no leakage):
    * For fold k, fit (or cross-fit) on the clinical rows of fold k's TRAINING cases only. Validation
      cases never enter ``fit`` or ``cross_fit``.
    * The weak label of a training case is its out-of-fold prediction from :meth:`TLVRRegressor.cross_fit`,
      made by a model that never saw that case (and hence never saw its true TLVR). In-sample
      predictions would leak the segmentation-derived TLVR back into the "clinical" label and make it
      look better than it can be on a new patient.
    * A validation or test case is predicted by a model fitted on all training cases:
      ``TLVRRegressor(...).fit(train_df, train_tlvr).predict(val_df)``.

A fitted regressor serialises to a JSON-able dict (:meth:`TLVRRegressor.to_dict`) that holds only
numbers, strings and lists, so it can live in a checkpoint loaded with ``torch.load(weights_only=True)``;
:meth:`TLVRRegressor.from_dict` rebuilds a predictor (numpy only, no refit, no pickle).

This module does no I/O; the clinical table is read by ``smoothseg.dataset.clinical``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import pandas as pd
from scipy.special import expit, logit
from sklearn.base import BaseEstimator, RegressorMixin, clone
from sklearn.compose import ColumnTransformer
from sklearn.impute import SimpleImputer
from sklearn.linear_model import Ridge
from sklearn.metrics import mean_absolute_error, r2_score
from sklearn.model_selection import KFold, LeaveOneOut, cross_val_predict
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler

from smoothseg.atomic import json_safe

FORMAT = "smoothseg.tlvr_regressor/1"
#: The category that stands in for a missing categorical value.
MISSING_CATEGORY = "missing"
MIN_CASES_FOR_CROSS_FIT = 3


class TLVRRegressor(RegressorMixin, BaseEstimator):
    """Ridge regression of logit(TLVR) on clinical variables; predictions bounded to [0, 1].

    Parameters
    ----------
    numeric_features, categorical_features
        Column names of the clinical DataFrame. ``numeric_features=None`` means "every column that is
        not categorical" (resolved at ``fit``). At least one feature is required.
    alpha
        Ridge (L2) regularisation strength on the standardised features.
    eps
        TLVR targets are clipped to [eps, 1 - eps] before the logit (tumour-free patients have TLVR 0).
        The default 0.01 keeps tumour-free and tiny-tumour cases from dominating the logit-scale fit;
        on synthetic data it gave lower out-of-fold MAE on the TLVR scale than 0.001 or 0.03.
    add_missing_indicator
        Add a 0/1 column per numeric feature that had missing values in the training rows.

    Fitted attributes: ``pipeline_`` (the scikit-learn Pipeline; absent after :meth:`from_dict`),
    ``params_`` (the JSON-able parameters), ``numeric_features_``, ``categorical_features_``, ``n_train_``.

    Rows are patients indexed by case id (the DataFrame index); ``tlvr`` may be a Series aligned by
    index or an array in row order. See the module docstring for the fold contract (fit on training
    cases only; training cases get out-of-fold predictions from :meth:`cross_fit`).
    """

    def __init__(self, numeric_features: Sequence[str] | None = None, categorical_features: Sequence[str] = (),
                 alpha: float = 1.0, eps: float = 1e-2, add_missing_indicator: bool = True):
        self.numeric_features = numeric_features
        self.categorical_features = categorical_features
        self.alpha = alpha
        self.eps = eps
        self.add_missing_indicator = add_missing_indicator

    @classmethod
    def from_spec(cls, spec: Any, **kwargs: Any) -> TLVRRegressor:
        """A regressor for the features declared in a ``ClinicalSpec`` (or a ``DatasetSpec`` holding one)."""
        spec = getattr(spec, "clinical", spec)
        if spec is None:
            raise ValueError("the dataset declares no clinical table, so there is no TLVR regression to build")
        return cls(numeric_features=tuple(spec.numeric), categorical_features=tuple(spec.categorical), **kwargs)

    # ------------------------------------------------------------------ fitting and prediction

    def fit(self, clinical_df: pd.DataFrame, tlvr: pd.Series | Sequence[float] | np.ndarray) -> TLVRRegressor:
        """Fit on the rows of ``clinical_df`` (training cases only) and their reference TLVRs."""
        if not 0 < self.eps < 0.5:
            raise ValueError(f"eps must lie in (0, 0.5), got {self.eps}")
        if self.alpha < 0:
            raise ValueError(f"alpha must be >= 0, got {self.alpha}")
        numeric, categorical = self._resolve_features(clinical_df)
        y = _aligned_target(clinical_df, tlvr)
        if len(y) == 0:
            raise ValueError("cannot fit the TLVR regression on zero cases")
        frame = _prepare(clinical_df, numeric, categorical)

        transformers = []
        if numeric:
            transformers.append(("num", Pipeline([
                ("impute", SimpleImputer(strategy="median", add_indicator=self.add_missing_indicator,
                                         keep_empty_features=True)),
                ("scale", StandardScaler()),
            ]), list(numeric)))
        if categorical:
            transformers.append(("cat", Pipeline([
                ("impute", SimpleImputer(strategy="constant", fill_value=MISSING_CATEGORY)),
                ("onehot", OneHotEncoder(handle_unknown="ignore", sparse_output=False)),
            ]), list(categorical)))
        pipeline = Pipeline([
            ("features", ColumnTransformer(transformers, remainder="drop", sparse_threshold=0.0)),
            ("ridge", Ridge(alpha=float(self.alpha))),
        ])
        target = logit(np.clip(y, self.eps, 1.0 - self.eps))
        pipeline.fit(frame, target)

        self.pipeline_ = pipeline
        self.numeric_features_ = tuple(numeric)
        self.categorical_features_ = tuple(categorical)
        self.n_train_ = int(len(y))
        self.params_ = self._extract_params()
        return self

    def predict(self, clinical_df: pd.DataFrame) -> np.ndarray:
        """Predicted TLVR per row, in [0, 1]. Missing values are imputed; unseen categories are ignored.

        The model is fitted on targets clipped to [eps, 1 - eps], so a prediction at or beyond a clip bound says
        "tumour-free" (or "all tumour"): it is returned as exactly 0 (or 1), not as eps.
        """
        self._check_fitted()
        missing = [c for c in (*self.numeric_features_, *self.categorical_features_) if c not in clinical_df.columns]
        if missing:
            raise ValueError(f"clinical table lacks the feature column(s) {missing} the TLVR model was fitted on")
        if len(clinical_df) == 0:
            return np.zeros(0)
        frame = _prepare(clinical_df, self.numeric_features_, self.categorical_features_)
        if getattr(self, "pipeline_", None) is not None:
            eta = self.pipeline_.predict(frame)
        else:
            eta = _linear_predictor(self.params_, frame)
        prediction = expit(np.asarray(eta, dtype=float))
        bound = self.eps * (1.0 + 1e-6)  # the clip bound itself, up to floating-point rounding of expit(logit(eps))
        prediction[prediction <= bound] = 0.0
        prediction[prediction >= 1.0 - bound] = 1.0
        return prediction

    def predict_series(self, clinical_df: pd.DataFrame) -> pd.Series:
        """:meth:`predict` as a Series indexed like ``clinical_df`` (by case id)."""
        return pd.Series(self.predict(clinical_df), index=clinical_df.index, name="tlvr_pred")

    # ------------------------------------------------------------------ cross-fitting

    def cross_fit(self, clinical_df: pd.DataFrame, tlvr: pd.Series | Sequence[float] | np.ndarray,
                  n_splits: int = 5, random_state: int | None = 0) -> pd.Series:
        """Out-of-fold predictions: each case is predicted by a clone fitted on the other folds only.

        Uses shuffled K-fold with ``n_splits`` folds, or leave-one-out when there are fewer cases than
        folds; fewer than 3 cases raise ``ValueError``. ``self`` is not modified (call :meth:`fit`
        for the model of all rows). Returns a Series indexed like ``clinical_df``.
        """
        y = _aligned_target(clinical_df, tlvr)
        n = len(y)
        if n < MIN_CASES_FOR_CROSS_FIT:
            raise ValueError(f"cross-fitting the TLVR regression needs at least {MIN_CASES_FOR_CROSS_FIT} cases "
                             f"with clinical data, got {n}")
        if n_splits < 2:
            raise ValueError(f"n_splits must be >= 2, got {n_splits}")
        splitter = LeaveOneOut() if n < n_splits else KFold(n_splits, shuffle=True, random_state=random_state)
        oof = cross_val_predict(clone(self), clinical_df, y, cv=splitter)
        return pd.Series(oof, index=clinical_df.index, name="tlvr_oof")

    def cross_validated_scores(self, clinical_df: pd.DataFrame, tlvr: pd.Series | Sequence[float] | np.ndarray,
                               n_splits: int = 5, random_state: int | None = 0) -> dict[str, float]:
        """:meth:`cross_fit` followed by :func:`tlvr_scores` (out-of-fold R² and MAE on the TLVR scale)."""
        oof = self.cross_fit(clinical_df, tlvr, n_splits=n_splits, random_state=random_state)
        return tlvr_scores(_aligned_target(clinical_df, tlvr), oof.to_numpy())

    # ------------------------------------------------------------------ serialisation

    def to_dict(self) -> dict[str, Any]:
        """The fitted model as a JSON-able dict (lists, str, float, int, bool only; no NaN)."""
        self._check_fitted()
        return json_safe(self.params_, strict=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TLVRRegressor:
        """Rebuild a fitted predictor from :meth:`to_dict` output, without refitting or pickle."""
        params = _validate_params(data)
        model = cls(numeric_features=tuple(params["numeric_features"]),
                    categorical_features=tuple(params["categorical_features"]),
                    alpha=params["alpha"], eps=params["eps"], add_missing_indicator=params["add_missing_indicator"])
        model.pipeline_ = None
        model.numeric_features_ = tuple(params["numeric_features"])
        model.categorical_features_ = tuple(params["categorical_features"])
        model.n_train_ = int(params["n_train"])
        model.params_ = params
        return model

    # ------------------------------------------------------------------ internals

    def _resolve_features(self, clinical_df: pd.DataFrame) -> tuple[tuple[str, ...], tuple[str, ...]]:
        categorical = tuple(self.categorical_features or ())
        if self.numeric_features is None:
            numeric = tuple(str(c) for c in clinical_df.columns if c not in categorical)
        else:
            numeric = tuple(self.numeric_features)
        overlap = sorted(set(numeric) & set(categorical))
        if overlap:
            raise ValueError(f"features {overlap} are listed as both numeric and categorical")
        if not numeric and not categorical:
            raise ValueError("the TLVR regression needs at least one clinical feature")
        missing = [c for c in (*numeric, *categorical) if c not in clinical_df.columns]
        if missing:
            raise ValueError(f"clinical table lacks the feature column(s) {missing}")
        return numeric, categorical

    def _check_fitted(self) -> None:
        if getattr(self, "params_", None) is None:
            raise ValueError("this TLVRRegressor is not fitted yet; call fit() or from_dict() first")

    def _extract_params(self) -> dict[str, Any]:
        features: ColumnTransformer = self.pipeline_.named_steps["features"]
        ridge: Ridge = self.pipeline_.named_steps["ridge"]
        params: dict[str, Any] = {
            "format": FORMAT,
            "numeric_features": list(self.numeric_features_),
            "categorical_features": list(self.categorical_features_),
            "alpha": float(self.alpha),
            "eps": float(self.eps),
            "add_missing_indicator": bool(self.add_missing_indicator),
            "n_train": self.n_train_,
            "numeric": None,
            "categorical": None,
            "coef": [float(v) for v in np.ravel(ridge.coef_)],
            "intercept": float(np.ravel(ridge.intercept_)[0]),
        }
        if self.numeric_features_:
            num = features.named_transformers_["num"]
            imputer: SimpleImputer = num.named_steps["impute"]
            scaler: StandardScaler = num.named_steps["scale"]
            indicator = [] if imputer.indicator_ is None else [int(i) for i in imputer.indicator_.features_]
            params["numeric"] = {
                "impute_median": [float(v) for v in np.nan_to_num(imputer.statistics_.astype(float), nan=0.0)],
                "missing_indicator_columns": indicator,
                "mean": [float(v) for v in scaler.mean_],
                "scale": [float(v) for v in scaler.scale_],
            }
        if self.categorical_features_:
            encoder: OneHotEncoder = features.named_transformers_["cat"].named_steps["onehot"]
            params["categorical"] = {
                "fill_value": MISSING_CATEGORY,
                "categories": [[str(c) for c in cats] for cats in encoder.categories_],
            }
        return _validate_params(params)


def tlvr_scores(tlvr_true: Sequence[float] | np.ndarray | pd.Series,
                tlvr_pred: Sequence[float] | np.ndarray | pd.Series) -> dict[str, float]:
    """R², MAE and the MAE of always predicting the mean reference TLVR, all on the TLVR scale.

    Pass out-of-fold predictions (:meth:`TLVRRegressor.cross_fit`) for honest numbers. Series are
    aligned by index. ``mae_mean_baseline`` uses the mean of ``tlvr_true`` itself, which favours the
    baseline slightly.
    """
    if isinstance(tlvr_true, pd.Series) and isinstance(tlvr_pred, pd.Series):
        tlvr_pred = tlvr_pred.reindex(tlvr_true.index)
    y = np.asarray(tlvr_true, dtype=float)
    p = np.asarray(tlvr_pred, dtype=float)
    if y.shape != p.shape or y.ndim != 1:
        raise ValueError(f"tlvr_true and tlvr_pred must be 1-D and the same length, got {y.shape} and {p.shape}")
    if len(y) < 2 or not np.all(np.isfinite(y)) or not np.all(np.isfinite(p)):
        raise ValueError("need at least 2 cases with finite reference and predicted TLVRs to score")
    return {
        "r2": float(r2_score(y, p)) if np.ptp(y) > 0 else float("nan"),
        "mae": float(mean_absolute_error(y, p)),
        "mae_mean_baseline": float(np.mean(np.abs(y - y.mean()))),
        "n_cases": int(len(y)),
    }


def tlvr_from_labels(label_array: np.ndarray, liver_labels: Iterable[int], tumour_labels: Iterable[int]) -> float:
    """Reference TLVR of a label map: (# tumour voxels) / (# liver-region voxels).

    The liver region is the union of ``liver_labels`` and ``tumour_labels`` (tumour is part of the
    liver region). Voxel counts suffice because all voxels of one image have the same volume.
    Returns 0.0 when there is no liver region.
    """
    tumour_labels = list(tumour_labels)
    labels = np.asarray(label_array)
    region = np.count_nonzero(np.isin(labels, list(liver_labels) + tumour_labels))
    if region == 0:
        return 0.0
    return float(np.count_nonzero(np.isin(labels, tumour_labels)) / region)


def describe_availability(spec: Any, tlvr_weight: float | None = None) -> tuple[bool, str]:
    """Whether the TLVR term can be on, and one log line saying why (not).

    ``spec`` is a ``DatasetSpec``, a ``ClinicalSpec`` or ``None``. ``tlvr_weight`` (the loss weight λ),
    when given, switches the term off at 0.
    """
    clinical = getattr(spec, "clinical", spec)
    if tlvr_weight is not None and tlvr_weight == 0:
        return False, "TLVR term off: its loss weight is 0"
    if clinical is None:
        return False, ("TLVR term off: dataset.json declares no 'clinical' table, so there is no clinical TLVR "
                       "prediction; training uses the segmentation (and VAE) loss only")
    features = tuple(getattr(clinical, "features", ()))
    if not features:
        return False, f"TLVR term off: the clinical table '{clinical.file}' declares no feature columns"
    categorical = tuple(getattr(clinical, "categorical", ()))
    numeric = tuple(f for f in features if f not in categorical)
    return True, (f"TLVR term on: clinical table '{clinical.file}' with {len(features)} feature(s) "
                  f"(numeric: {', '.join(numeric) or '-'}; categorical: {', '.join(categorical) or '-'})")


# ---------------------------------------------------------------------- helpers


def _aligned_target(clinical_df: pd.DataFrame, tlvr: pd.Series | Sequence[float] | np.ndarray) -> np.ndarray:
    """The TLVR targets in the row order of ``clinical_df``, validated to be finite and in [0, 1]."""
    if isinstance(tlvr, pd.Series):
        if clinical_df.index.has_duplicates:
            raise ValueError("clinical table has duplicate case ids; cannot align the TLVR targets by index")
        missing = clinical_df.index.difference(tlvr.index)
        if len(missing):
            raise ValueError(f"no TLVR target for case(s) {list(missing[:10])}")
        y = tlvr.reindex(clinical_df.index).to_numpy(dtype=float)
    else:
        y = np.asarray(tlvr, dtype=float).reshape(-1)
        if len(y) != len(clinical_df):
            raise ValueError(f"got {len(y)} TLVR targets for {len(clinical_df)} clinical rows")
    if not np.all(np.isfinite(y)):
        raise ValueError("TLVR targets must be finite")
    if np.any((y < 0) | (y > 1)):
        raise ValueError(f"TLVR targets must lie in [0, 1], got min {y.min():.4g}, max {y.max():.4g}")
    return y


def _as_category(value: Any) -> Any:
    """One categorical cell as a string; missing -> NaN. Integral floats print as ints (2.0 -> "2")."""
    if value is None or (np.ndim(value) == 0 and pd.isna(value)):
        return np.nan
    if isinstance(value, (bool, np.bool_)):
        return str(bool(value))
    if isinstance(value, (float, np.floating)) and float(value).is_integer():
        return str(int(value))
    text = str(value).strip()
    return text if text else np.nan


def _prepare(clinical_df: pd.DataFrame, numeric: Sequence[str], categorical: Sequence[str]) -> pd.DataFrame:
    """The feature columns with numeric ones as float64 (NaN = missing), categorical ones as str/NaN."""
    out: dict[str, Any] = {}
    for col in numeric:
        raw = clinical_df[col]
        if raw.dtype == object or pd.api.types.is_string_dtype(raw.dtype):
            raw = raw.map(lambda v: np.nan if isinstance(v, str) and not v.strip() else v)
        values = pd.to_numeric(raw, errors="coerce")
        bad = raw.notna() & values.isna()
        if bad.any():
            example = raw[bad].iloc[0]
            raise ValueError(f"numeric clinical feature '{col}' has non-numeric value {example!r}; "
                             "declare it categorical or fix the cell")
        values = values.astype(float)
        if np.isinf(values.to_numpy()).any():
            raise ValueError(f"numeric clinical feature '{col}' holds an infinite value")
        out[col] = values.to_numpy()
    for col in categorical:
        out[col] = np.array([_as_category(v) for v in clinical_df[col].tolist()], dtype=object)
    return pd.DataFrame(out, index=clinical_df.index, columns=[*numeric, *categorical])


def _linear_predictor(params: dict[str, Any], frame: pd.DataFrame) -> np.ndarray:
    """The ridge output (logit scale) computed with numpy from the serialised parameters."""
    blocks = []
    num = params["numeric"]
    if num is not None:
        x = frame[params["numeric_features"]].to_numpy(dtype=float)
        missing = np.isnan(x)
        x = np.where(missing, np.asarray(num["impute_median"], dtype=float), x)
        if num["missing_indicator_columns"]:
            x = np.concatenate([x, missing[:, num["missing_indicator_columns"]].astype(float)], axis=1)
        x = (x - np.asarray(num["mean"], dtype=float)) / np.asarray(num["scale"], dtype=float)
        blocks.append(x)
    cat = params["categorical"]
    if cat is not None:
        for col, categories in zip(params["categorical_features"], cat["categories"], strict=True):
            values = frame[col].to_numpy(dtype=object)
            values = np.array([cat["fill_value"] if isinstance(v, float) and math.isnan(v) else v for v in values],
                              dtype=object)
            blocks.append((values[:, None] == np.asarray(categories, dtype=object)[None, :]).astype(float))
    design = np.concatenate(blocks, axis=1) if blocks else np.zeros((len(frame), 0))
    return design @ np.asarray(params["coef"], dtype=float) + float(params["intercept"])


def _validate_params(data: Any) -> dict[str, Any]:
    """Check a serialised regressor for completeness and consistent sizes; return a clean copy."""
    if not isinstance(data, dict):
        raise ValueError("a serialised TLVRRegressor must be a dict")
    if data.get("format") != FORMAT:
        raise ValueError(f"not a serialised TLVRRegressor (format {data.get('format')!r}, expected {FORMAT!r})")
    required = ("numeric_features", "categorical_features", "alpha", "eps", "add_missing_indicator", "n_train",
                "numeric", "categorical", "coef", "intercept")
    absent = [k for k in required if k not in data]
    if absent:
        raise ValueError(f"serialised TLVRRegressor lacks the key(s) {absent}")
    params = json_safe(data, strict=True)
    n_num, n_cat = len(params["numeric_features"]), len(params["categorical_features"])
    width = 0
    num = params["numeric"]
    if (num is None) != (n_num == 0):
        raise ValueError("serialised TLVRRegressor: numeric parameters do not match the numeric features")
    if num is not None:
        indicator = num["missing_indicator_columns"]
        if len(num["impute_median"]) != n_num or any(not 0 <= i < n_num for i in indicator):
            raise ValueError("serialised TLVRRegressor: numeric imputation parameters have the wrong size")
        width = n_num + len(indicator)
        if len(num["mean"]) != width or len(num["scale"]) != width:
            raise ValueError("serialised TLVRRegressor: scaler parameters have the wrong size")
    cat = params["categorical"]
    if (cat is None) != (n_cat == 0):
        raise ValueError("serialised TLVRRegressor: categorical parameters do not match the categorical features")
    if cat is not None:
        if len(cat["categories"]) != n_cat:
            raise ValueError("serialised TLVRRegressor: one category list per categorical feature is required")
        width += sum(len(c) for c in cat["categories"])
    if len(params["coef"]) != width:
        raise ValueError(f"serialised TLVRRegressor: {len(params['coef'])} coefficients for {width} features")
    numbers = [params["intercept"], *params["coef"]]
    if num is not None:
        numbers += [*num["impute_median"], *num["mean"], *num["scale"]]
    if not all(isinstance(v, (int, float)) and math.isfinite(v) for v in numbers):
        raise ValueError("serialised TLVRRegressor holds non-finite or non-numeric parameters")
    return params

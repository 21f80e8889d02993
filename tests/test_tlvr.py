"""The clinical TLVR regressor: bounded predictions, honest cross-fitting, imputation, signal, serialisation."""

from __future__ import annotations

import io
import json

import numpy as np
import pandas as pd
import pytest
import torch

from smoothseg.dataset.dataset_json import ClinicalSpec
from smoothseg.knowledge.tlvr import TLVRRegressor, describe_availability, tlvr_from_labels, tlvr_scores
from smoothseg.synthetic.clinical import CATEGORICAL, FEATURES, clinical_row

NUMERIC = tuple(f for f in FEATURES if f not in CATEGORICAL)


def synthetic_cohort(n: int, seed: int) -> tuple[pd.DataFrame, pd.Series]:
    """Clinical rows from the project's generator, for TLVRs drawn like the phantoms' (1 in 5 tumour-free)."""
    rng = np.random.default_rng(seed)
    rows, ratios = [], []
    for _ in range(n):
        if rng.uniform() < 0.2:
            tlvr, diameter = 0.0, 0.0
        else:
            diameter = rng.uniform(100, 140) if rng.uniform() < 0.3 else rng.uniform(12, 90)
            tumour_ml = np.pi / 6 * diameter ** 3 / 1000
            tlvr = tumour_ml / (rng.uniform(1200, 1900) + 0.5 * tumour_ml)
        ratios.append(tlvr)
        rows.append(clinical_row(rng, tlvr, diameter))
    index = pd.Index([f"case_{i:03d}" for i in range(n)], name="case_id")
    return pd.DataFrame(rows, index=index), pd.Series(ratios, index=index, name="tlvr")


@pytest.fixture(scope="module")
def cohort() -> tuple[pd.DataFrame, pd.Series]:
    return synthetic_cohort(150, seed=0)


def make_model(**kwargs) -> TLVRRegressor:
    return TLVRRegressor(numeric_features=NUMERIC, categorical_features=CATEGORICAL, **kwargs)


def odd_rows(columns) -> pd.DataFrame:
    """Extreme values, all-missing rows, unseen categories and blank strings."""
    rows = [
        {"Age": 1e9, "Sex": "M", "AFP": 1e15, "Tr_Size": 1e6, "T_involvment": 99, "CLIP_Score": 1e4, "BCLC": "D",
         "Okuda": 50, "Evidence_of_cirh": 1},
        {"Age": -1e9, "Sex": "F", "AFP": -1e15, "Tr_Size": -1e6, "T_involvment": -99, "CLIP_Score": -1e4,
         "BCLC": "A", "Okuda": -50, "Evidence_of_cirh": 0},
        dict.fromkeys(columns),
        {"Age": 60, "Sex": "X", "AFP": np.nan, "Tr_Size": 3.0, "T_involvment": 1, "CLIP_Score": 2, "BCLC": "Z",
         "Okuda": None, "Evidence_of_cirh": 1},
        {"Age": "", "Sex": "", "AFP": "12.5", "Tr_Size": " ", "T_involvment": "2", "CLIP_Score": 3, "BCLC": "B",
         "Okuda": 2, "Evidence_of_cirh": 0},
    ]
    return pd.DataFrame(rows, columns=list(columns), index=[f"odd_{i}" for i in range(len(rows))])


# ---------------------------------------------------------------------- bounded predictions


def test_predictions_bounded_for_extreme_and_missing_inputs(cohort):
    df, y = cohort
    model = make_model().fit(df, y)
    pred = model.predict(odd_rows(df.columns))
    assert pred.shape == (5,)
    assert np.all(np.isfinite(pred)) and np.all((pred >= 0) & (pred <= 1))
    # Huge burden markers push towards 1, huge negative ones towards 0.
    assert pred[0] > 0.9 and pred[1] < 0.1


@pytest.mark.parametrize("value", [0.0, 1.0])
def test_bounded_when_all_targets_sit_on_the_boundary(cohort, value):
    df, _ = cohort
    model = make_model(alpha=1e-6).fit(df, np.full(len(df), value))
    pred = model.predict(pd.concat([df, odd_rows(df.columns)]))
    assert np.all((pred >= 0) & (pred <= 1))
    # a prediction at the clip bound of the fit means "tumour-free" (or "all tumour"): exactly 0 (or 1), not eps
    np.testing.assert_array_equal(pred[: len(df)], np.full(len(df), value))


def test_a_tumour_free_prediction_is_zero_and_others_are_untouched(cohort):
    df, y = cohort
    model = make_model().fit(df, y)
    pred = model.predict(df)
    assert np.all((pred == 0) | (pred > model.eps)) and np.all((pred == 1) | (pred < 1 - model.eps))
    inside = (pred > 0) & (pred < 1)
    assert inside.any()
    rebuilt = TLVRRegressor.from_dict(model.to_dict()).predict(df)  # the serialised model agrees
    np.testing.assert_allclose(rebuilt, pred, rtol=1e-9, atol=1e-12)


def test_in_sample_fit_is_reasonable_and_series_is_aligned_by_index(cohort):
    df, y = cohort
    shuffled = y.sample(frac=1.0, random_state=3)  # same values, another order: must align by case id
    a = make_model().fit(df, y).predict(df)
    b = make_model().fit(df, shuffled).predict(df)
    c = make_model().fit(df, y.to_numpy()).predict(df)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(a, c)
    series = make_model().fit(df, y).predict_series(df)
    assert series.index.equals(df.index)


# ---------------------------------------------------------------------- cross-fitting


def test_cross_fit_prediction_of_a_case_ignores_that_cases_target(cohort):
    """The defining property of out-of-fold predictions: changing case i's TLVR cannot change its prediction.

    In-sample (or any leaking) predictions fail this: the model fitted with the altered target would
    predict case i differently.
    """
    df, y = cohort
    df, y = df.iloc[:60], y.iloc[:60]
    model = make_model(alpha=0.1)
    base = model.cross_fit(df, y, n_splits=5, random_state=7)
    assert base.index.equals(df.index) and base.notna().all()
    for i in (0, 17, 42):
        altered = y.copy()
        altered.iloc[i] = 0.99 if y.iloc[i] < 0.5 else 0.0
        oof = model.cross_fit(df, altered, n_splits=5, random_state=7)
        assert oof.iloc[i] == pytest.approx(base.iloc[i], abs=1e-12)
        # ...while cases in other folds, whose models did see the change, move.
        assert (oof - base).abs().max() > 1e-4
    # An in-sample fit does move: the check above would catch a leaking implementation.
    altered = y.copy()
    altered.iloc[0] = 0.99 if y.iloc[0] < 0.5 else 0.0
    assert abs(model.fit(df, altered).predict(df)[0] - model.fit(df, y).predict(df)[0]) > 1e-4


def test_outlier_with_unique_category_is_not_memorised(cohort):
    df, y = cohort
    df, y = df.iloc[:40].copy(), y.iloc[:40].copy()
    df.iloc[5, df.columns.get_loc("BCLC")] = "Unique"
    y.iloc[5] = 0.97
    in_sample = make_model(alpha=1e-3).fit(df, y).predict(df)[5]
    oof = make_model(alpha=1e-3).cross_fit(df, y, n_splits=5).iloc[5]
    assert in_sample > 0.8  # the one-hot column of "Unique" memorises the case in-sample
    assert oof < 0.5  # out of fold, "Unique" is an unseen category and carries nothing


def test_cross_fit_does_not_modify_the_estimator(cohort):
    df, y = cohort
    model = make_model()
    model.cross_fit(df.iloc[:20], y.iloc[:20])
    assert not hasattr(model, "params_")


def test_few_cases_use_leave_one_out_and_too_few_raise(cohort):
    df, y = cohort
    small_df, small_y = df.iloc[:4], y.iloc[:4]
    base = make_model().cross_fit(small_df, small_y, n_splits=5)
    assert base.notna().all()
    for i in range(4):  # leave-one-out: each case's own target never matters to its prediction
        altered = small_y.copy()
        altered.iloc[i] = 1.0 - altered.iloc[i]
        assert make_model().cross_fit(small_df, altered, n_splits=5).iloc[i] == pytest.approx(base.iloc[i],
                                                                                               abs=1e-12)
    with pytest.raises(ValueError, match="at least 3 cases"):
        make_model().cross_fit(df.iloc[:2], y.iloc[:2])


# ---------------------------------------------------------------------- learning signal


def test_learns_signal_out_of_fold(cohort):
    df, y = cohort
    scores = make_model().cross_validated_scores(df, y, n_splits=5, random_state=0)
    assert scores["n_cases"] == 150
    assert scores["r2"] > 0.3
    assert scores["mae"] < scores["mae_mean_baseline"]


def test_tlvr_scores_aligns_series_and_reports_baseline():
    true = pd.Series([0.0, 0.2, 0.4], index=["a", "b", "c"])
    pred = pd.Series([0.4, 0.0, 0.2], index=["c", "a", "b"])
    scores = tlvr_scores(true, pred)
    assert scores["r2"] == pytest.approx(1.0) and scores["mae"] == pytest.approx(0.0)
    assert scores["mae_mean_baseline"] == pytest.approx(0.4 / 3)


# ---------------------------------------------------------------------- missing values, categories, validation


def test_missing_values_and_unseen_categories(cohort):
    df, y = cohort
    df = df.copy()
    df["Age"] = np.nan  # a feature with no observed value at all in training
    df.iloc[:10, df.columns.get_loc("Sex")] = None
    model = make_model().fit(df, y)
    pred = model.predict(odd_rows(df.columns))
    assert np.all(np.isfinite(pred)) and np.all((pred >= 0) & (pred <= 1))
    # An unseen category contributes nothing: any two unseen values give the same finite prediction.
    first, second = df.iloc[[20]].copy(), df.iloc[[20]].copy()
    first["BCLC"], second["BCLC"] = "never seen", "unheard of"
    assert np.isfinite(model.predict(first)[0])
    assert model.predict(first)[0] == model.predict(second)[0]


def test_numeric_features_default_to_non_categorical_columns(cohort):
    df, y = cohort
    model = TLVRRegressor(categorical_features=CATEGORICAL).fit(df, y)
    assert model.numeric_features_ == NUMERIC
    spec = ClinicalSpec("clinical.csv", "case_id", FEATURES, CATEGORICAL)
    from_spec = TLVRRegressor.from_spec(spec).fit(df, y)
    np.testing.assert_allclose(from_spec.predict(df), model.predict(df), rtol=0, atol=1e-12)


def test_invalid_inputs_raise_clear_errors(cohort):
    df, y = cohort
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        make_model().fit(df, y * 3)
    with pytest.raises(ValueError, match="no TLVR target"):
        make_model().fit(df, y.iloc[:-1])
    with pytest.raises(ValueError, match="targets for"):
        make_model().fit(df, y.to_numpy()[:-1])
    bad = df.copy()
    bad["AFP"] = bad["AFP"].astype(object)
    bad.iloc[0, bad.columns.get_loc("AFP")] = "high"
    with pytest.raises(ValueError, match="AFP"):
        make_model().fit(bad, y)
    with pytest.raises(ValueError, match="lacks"):
        make_model().fit(df, y).predict(df.drop(columns=["BCLC"]))
    with pytest.raises(ValueError, match="not fitted"):
        make_model().predict(df)
    with pytest.raises(ValueError, match="at least one"):
        TLVRRegressor(numeric_features=()).fit(df, y)


# ---------------------------------------------------------------------- serialisation


def test_to_dict_round_trip_is_exact_json_and_weights_only_loadable(cohort):
    df, y = cohort
    model = make_model().fit(df, y)
    data = model.to_dict()
    text = json.dumps(data, allow_nan=False)  # plain JSON, no NaN
    restored = TLVRRegressor.from_dict(json.loads(text))
    assert restored.pipeline_ is None  # rebuilt from numbers, not from a pickled pipeline
    query = pd.concat([df, odd_rows(df.columns)])
    np.testing.assert_allclose(restored.predict(query), model.predict(query), rtol=0, atol=1e-9)

    buffer = io.BytesIO()
    torch.save({"tlvr_model": data, "state_dict": {"w": torch.zeros(2)}}, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=True)
    from_checkpoint = TLVRRegressor.from_dict(loaded["tlvr_model"])
    np.testing.assert_allclose(from_checkpoint.predict(query), model.predict(query), rtol=0, atol=1e-9)
    assert from_checkpoint.to_dict() == data


@pytest.mark.parametrize("numeric, categorical", [(NUMERIC, ()), ((), CATEGORICAL)])
def test_round_trip_with_only_one_kind_of_feature(cohort, numeric, categorical):
    df, y = cohort
    model = TLVRRegressor(numeric_features=numeric, categorical_features=categorical).fit(df, y)
    restored = TLVRRegressor.from_dict(json.loads(json.dumps(model.to_dict())))
    query = pd.concat([df, odd_rows(df.columns)])
    np.testing.assert_allclose(restored.predict(query), model.predict(query), rtol=0, atol=1e-9)


def test_from_dict_rejects_inconsistent_parameters(cohort):
    df, y = cohort
    data = make_model().fit(df, y).to_dict()
    with pytest.raises(ValueError, match="format"):
        TLVRRegressor.from_dict({**data, "format": "something else"})
    with pytest.raises(ValueError, match="coefficients"):
        TLVRRegressor.from_dict({**data, "coef": data["coef"][:-1]})
    with pytest.raises(ValueError, match="lacks"):
        TLVRRegressor.from_dict({k: v for k, v in data.items() if k != "intercept"})


# ---------------------------------------------------------------------- helpers


def test_tlvr_from_labels():
    labels = np.zeros((4, 4, 4), dtype=np.uint8)
    labels[0] = 1  # 16 liver
    labels[1, :2] = 2  # 8 tumour
    labels[2, 0, 0] = 3  # 1 portal vein, part of the liver region
    assert tlvr_from_labels(labels, liver_labels=(1, 2, 3), tumour_labels=(2,)) == pytest.approx(8 / 25)
    assert tlvr_from_labels(labels, liver_labels=(1,), tumour_labels=(2,)) == pytest.approx(8 / 24)
    assert tlvr_from_labels(np.zeros((2, 2, 2)), (1, 2), (2,)) == 0.0


def test_describe_availability():
    on, reason = describe_availability(None)
    assert not on and "no 'clinical' table" in reason
    spec = ClinicalSpec("clinical.csv", "case_id", FEATURES, CATEGORICAL)
    on, reason = describe_availability(spec)
    assert on and "clinical.csv" in reason and "9 feature" in reason

    class DatasetLike:
        clinical = spec

    assert describe_availability(DatasetLike())[0]
    assert describe_availability(DatasetLike(), tlvr_weight=0.0) == (False, "TLVR term off: its loss weight is 0")
    on, reason = describe_availability(ClinicalSpec("c.csv"))
    assert not on and "no feature" in reason


# ---------------------------------------------------------------------- no clinical data, no target


def test_cases_without_clinical_data_get_no_weak_label(demo_dataset):
    from smoothseg.dataset.raw_dataset import RawDataset
    from smoothseg.knowledge.clinical_tlvr import ClinicalTLVR
    from smoothseg.knowledge.weak_labels import fold_weak_labels

    table = pd.read_csv(demo_dataset / "clinical.csv", dtype=str)
    ids = sorted(table["case_id"])
    blank, dropped = ids[0], ids[1]
    features = [c for c in table.columns if c != "case_id"]
    table.loc[table["case_id"] == blank, features] = ""  # a row without any feature value
    table = table[table["case_id"] != dropped]  # no row at all
    table.to_csv(demo_dataset / "clinical.csv", index=False)
    raw = RawDataset(demo_dataset)
    truth = {c: 0.1 for c in ids}
    labels = fold_weak_labels(raw, truth, ids[:5], ids[5:], weight=0.5, seed=0)
    assert labels.off_reason is None and set(labels.train) == set(ids[2:5])  # neither imputed nor guessed
    assert labels.model["n_train"] == 3
    clinical = ClinicalTLVR(demo_dataset / "clinical.csv", [labels.model])
    assert clinical.predict(blank) is None and clinical.predict(dropped) is None
    assert 0.0 <= clinical.predict(ids[2]) <= 1.0

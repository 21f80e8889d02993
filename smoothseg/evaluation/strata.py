"""The paper's size strata, how per-case numbers are aggregated, and the paper-style markdown table.

This module owns three things that :mod:`smoothseg.evaluation.evaluate` and :mod:`smoothseg.evaluation.replication`
share:

* **Aggregation of per-case values** (:func:`per_case_aggregate`): mean, standard deviation (population, ``ddof=0``),
  median, min and max over the cases whose value is *finite*. Undefined values (NaN, e.g. tumour Dice when reference
  and prediction are both empty) and infinite ones (e.g. HD95 when exactly one mask is empty) are left out of the
  statistics but counted in ``n_nan`` / ``n_inf``, so nothing drops out silently.
* **The strata of the SmoothSegNet table** (:data:`STRATA`): ``All`` holds every evaluated case; the size strata
  hold the cases whose *reference* has tumour, split at a maximal tumour diameter of 10 cm and at a tumour volume
  of 500 cm³ (= 500 ml). The diameter is the largest per-lesion 3D diameter of the reference (in mm, from the real
  spacing), unless a clinical table gives the case's ``Tr_Size`` in cm (HCC-TACE-Seg's column), which then wins.
  Cases without reference tumour enter ``All`` only: they have no tumour size.
* **The markdown table** laid out like the paper's (:func:`paper_table_markdown`): rows All, ≥10 cm, <10 cm,
  ≥500 cm³, <500 cm³; columns n, Dice, IoU, Sensitivity, Accuracy as mean ± std.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from smoothseg.dataset.clinical import read_table
from smoothseg.errors import SmoothSegError

logger = logging.getLogger(__name__)

__all__ = [
    "DIAMETER_THRESHOLD_CM", "PAPER_METRICS", "STRATA", "Stratum", "VOLUME_THRESHOLD_ML", "assign_strata",
    "format_mean_std", "load_clinical_sizes", "paper_table_markdown", "per_case_aggregate", "stratum_case_ids",
]

#: Diameter threshold of the paper's table: tumours >= 10 cm versus < 10 cm.
DIAMETER_THRESHOLD_CM: float = 10.0
#: Volume threshold: reference tumour volume >= 500 cm³ (ml) versus < 500 cm³.
VOLUME_THRESHOLD_ML: float = 500.0
#: The tumour metrics of the paper's table, in its column order, with their column titles.
PAPER_METRICS: dict[str, str] = {
    "tumor_dice": "Dice", "tumor_iou": "IoU", "tumor_sensitivity": "Sensitivity", "tumor_accuracy": "Accuracy",
}
#: Name of the clinical column holding the maximal tumour diameter in cm (HCC-TACE-Seg).
CLINICAL_SIZE_COLUMN: str = "Tr_Size"

#: Per-case CSV columns this module adds.
DIAMETER_COLUMN = "stratum_tumor_diameter_cm"
DIAMETER_SOURCE_COLUMN = "stratum_tumor_diameter_source"
DIAMETER_STRATUM_COLUMN = "stratum_diameter"
VOLUME_STRATUM_COLUMN = "stratum_volume"
NO_STRATUM = "none"


@dataclass(frozen=True)
class Stratum:
    """One row of the paper's table: its key in JSON, its row label and the rule that selects its cases."""

    key: str
    label: str
    rule: str


STRATA: tuple[Stratum, ...] = (
    Stratum("all", "All", "every evaluated case (cases without reference tumour included)"),
    Stratum("diameter_ge_10cm", "≥10 cm", "reference has tumour and maximal tumour diameter >= 10 cm"),
    Stratum("diameter_lt_10cm", "<10 cm", "reference has tumour and maximal tumour diameter < 10 cm"),
    Stratum("volume_ge_500ml", "≥500 cm³", "reference tumour volume >= 500 cm³"),
    Stratum("volume_lt_500ml", "<500 cm³", "reference has tumour and reference tumour volume < 500 cm³"),
)


# ----------------------------------------------------------------------------------------------------------------
# Aggregation
# ----------------------------------------------------------------------------------------------------------------

def _finite_stats(values: Iterable[float], ddof: int) -> tuple[dict[str, float | None], int, int, int]:
    """(mean/std/median/min/max of the finite values, n total, n NaN, n inf); statistics are None without data."""
    array = np.asarray([math.nan if v is None else float(v) for v in values], dtype=np.float64)
    finite = array[np.isfinite(array)]
    n_nan = int(np.isnan(array).sum())
    n_inf = int(np.isinf(array).sum())
    if finite.size == 0:
        stats = dict.fromkeys(("mean", "std", "median", "min", "max"))
    else:
        std = float(finite.std(ddof=ddof)) if finite.size > ddof else None
        stats = {"mean": float(finite.mean()), "std": std, "median": float(np.median(finite)),
                 "min": float(finite.min()), "max": float(finite.max())}
    return stats, int(array.size), n_nan, n_inf


def per_case_aggregate(values: Iterable[float]) -> dict[str, float | int | None]:
    """Mean, std (``ddof=0``), median, min, max over the cases with a finite value, and how many there were.

    Keys: ``mean_per_case``, ``std_per_case``, ``median_per_case``, ``min_per_case``, ``max_per_case``,
    ``n_cases`` (all cases offered), ``n_finite`` (cases in the statistics), ``n_nan`` (undefined, left out) and
    ``n_inf`` (infinite, e.g. HD95 with one empty mask, left out). Statistics are None when no value is finite.
    """
    stats, n, n_nan, n_inf = _finite_stats(values, ddof=0)
    out: dict[str, float | int | None] = {f"{k}_per_case": v for k, v in stats.items()}
    out.update({"n_cases": n, "n_finite": n - n_nan - n_inf, "n_nan": n_nan, "n_inf": n_inf})
    return out


def format_mean_std(mean: float | None, std: float | None, digits: int = 3) -> str:
    """``"0.552 ± 0.301"``; ``"–"`` when there is no mean; the mean alone when there is no std."""
    if mean is None or not math.isfinite(mean):
        return "–"
    if std is None or not math.isfinite(std):
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


# ----------------------------------------------------------------------------------------------------------------
# Clinical sizes and strata assignment
# ----------------------------------------------------------------------------------------------------------------

def load_clinical_sizes(csv_path: str | Path, column: str = CLINICAL_SIZE_COLUMN) -> dict[str, float]:
    """Maximal tumour diameters in cm from a clinical table: ``{case_id: Tr_Size}`` for non-blank cells.

    The case id column is ``case_id`` when present, otherwise the first column. Blank cells are left out (those
    cases fall back to the reference diameter). Raises :class:`SmoothSegError` when the file or the column is
    missing, or when cells are not numbers (naming up to five of them).
    """
    path = Path(csv_path)
    if not path.is_file():
        raise SmoothSegError(f"{path}: clinical table not found")
    table = read_table(path)
    if table.shape[1] == 0:
        raise SmoothSegError(f"{path}: clinical table has no columns")
    id_column = "case_id" if "case_id" in table.columns else str(table.columns[0])
    if column not in table.columns:
        raise SmoothSegError(f"{path}: no '{column}' column (maximal tumour diameter in cm); columns are "
                             f"{list(table.columns)}")
    ids = table[id_column].astype(str).str.strip()
    values = pd.to_numeric(table[column], errors="coerce")
    bad = table[column].notna() & values.isna()
    if bad.any():
        examples = ", ".join(f"{ids[i]}={table.at[i, column]!r}" for i in list(table.index[bad])[:5])
        raise SmoothSegError(f"{path}: column '{column}' must hold numbers (cm); not numbers: {examples}")
    dupes = sorted(ids[ids.duplicated()].unique())
    if dupes:
        raise SmoothSegError(f"{path}: duplicate case ids in column '{id_column}': {dupes[:10]}")
    return {cid: float(v) for cid, v in zip(ids, values, strict=True) if cid and not math.isnan(float(v))}


def _diameter_stratum(diameter_cm: float) -> str:
    return "diameter_ge_10cm" if diameter_cm >= DIAMETER_THRESHOLD_CM else "diameter_lt_10cm"


def _volume_stratum(volume_ml: float) -> str:
    return "volume_ge_500ml" if volume_ml >= VOLUME_THRESHOLD_ML else "volume_lt_500ml"


def assign_strata(rows: Sequence[dict], clinical_sizes: Mapping[str, float] | None = None) -> list[dict]:
    """Add the strata columns to per-case rows from :func:`evaluate_case` (each with a ``case_id``), in place.

    Columns added: ``stratum_tumor_diameter_cm`` (the diameter used), ``stratum_tumor_diameter_source``
    (``reference`` or ``clinical Tr_Size``; ``none`` without reference tumour), ``stratum_diameter``
    (``diameter_ge_10cm``/``diameter_lt_10cm``/``none``) and ``stratum_volume`` (``volume_ge_500ml``/
    ``volume_lt_500ml``/``none``). A case has tumour when its reference tumour volume is > 0.
    """
    clinical_sizes = clinical_sizes or {}
    for row in rows:
        has_tumor = float(row["tumor_volume_ref_ml"]) > 0
        if not has_tumor:
            row.update({DIAMETER_COLUMN: math.nan, DIAMETER_SOURCE_COLUMN: NO_STRATUM,
                        DIAMETER_STRATUM_COLUMN: NO_STRATUM, VOLUME_STRATUM_COLUMN: NO_STRATUM})
            continue
        if row["case_id"] in clinical_sizes:
            diameter_cm, source = float(clinical_sizes[row["case_id"]]), f"clinical {CLINICAL_SIZE_COLUMN}"
        else:
            diameter_cm, source = float(row["tumor_max_diameter_ref_mm"]) / 10.0, "reference"
        row.update({DIAMETER_COLUMN: diameter_cm, DIAMETER_SOURCE_COLUMN: source,
                    DIAMETER_STRATUM_COLUMN: _diameter_stratum(diameter_cm),
                    VOLUME_STRATUM_COLUMN: _volume_stratum(float(row["tumor_volume_ref_ml"]))})
    return list(rows)


def stratum_case_ids(rows: Sequence[dict], key: str) -> list[str]:
    """Case ids in stratum ``key`` (rows must have passed through :func:`assign_strata`)."""
    if key == "all":
        return [r["case_id"] for r in rows]
    column = DIAMETER_STRATUM_COLUMN if key.startswith("diameter") else VOLUME_STRATUM_COLUMN
    return [r["case_id"] for r in rows if r[column] == key]


# ----------------------------------------------------------------------------------------------------------------
# Markdown
# ----------------------------------------------------------------------------------------------------------------

def _cell(aggregate: Mapping, mean_key: str, std_key: str, n_key: str, n_total: int | None) -> str:
    text = format_mean_std(aggregate.get(mean_key), aggregate.get(std_key))
    n = aggregate.get(n_key)
    if text != "–" and n_total is not None and n is not None and n < n_total:
        text += f" (n={n})"
    return text


def paper_table_markdown(strata: Mapping[str, Mapping], *, mean_key: str = "mean_per_case",
                         std_key: str = "std_per_case", n_key: str = "n_finite", total_key: str = "n_cases",
                         n_column: str = "n") -> str:
    """The paper-style table: one row per stratum of :data:`STRATA`, columns n and the :data:`PAPER_METRICS`.

    ``strata`` maps stratum keys to dicts holding ``total_key`` (the stratum's size; a preformatted ``n_text`` wins
    for the n column) and one aggregate dict per metric. A cell reads ``mean ± std`` (``aggregate[mean_key]``,
    ``aggregate[std_key]``); it gets ``(n=k)`` when only ``k = aggregate[n_key]`` of the stratum's members entered.
    """
    header = f"| Stratum | {n_column} | " + " | ".join(PAPER_METRICS.values()) + " |"
    lines = [header, "|" + "---|" * (2 + len(PAPER_METRICS))]
    for stratum in STRATA:
        entry = strata.get(stratum.key, {})
        n_total = entry.get(total_key)
        n_text = entry.get("n_text", str(n_total) if n_total is not None else "0")
        cells = [_cell(entry.get(metric, {}), mean_key, std_key, n_key, n_total) for metric in PAPER_METRICS]
        lines.append(f"| {stratum.label} | {n_text} | " + " | ".join(cells) + " |")
    lines.append("")
    lines.append("Tumour metrics, per case (mean ± std). Accuracy is kept for the paper's layout only: it counts every "
                 "voxel of the image, so with a tumour of under 1 % of them it stays near 1 whatever the segmentation.")
    return "\n".join(lines)

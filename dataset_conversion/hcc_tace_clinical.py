"""The HCC-TACE-Seg clinical spreadsheet turned into the dataset's ``clinical.csv``.

TCIA ships the clinical data as an Excel file (``HCC-TACE-Seg_clinical_data-V2.xlsx``) with one row per patient,
keyed by ``TCIA_ID`` (``HCC_001``), which is also the DICOM PatientID and therefore the case id of the images.
This module reads it, gives known columns their canonical name (:data:`COLUMN_ALIASES`, matched ignoring case,
spaces, ``_`` and ``-``), encodes ordinal and yes/no columns as documented numbers (:data:`ENCODINGS`), and writes
``clinical.csv`` with a ``case_id`` column first. Columns it does not know are passed through unchanged.

Ordinal encodings (a value is matched ignoring case, spaces, ``_``, ``-`` and a leading "Stage"/"Class"/"Child"):

==================================  ==========================================================
column                              codes
==================================  ==========================================================
Sex                                 female 0, male 1 (TCIA's numeric codes: 1 = male, 2 = female)
yes/no columns (:data:`BINARY_COLUMNS`)   no 0, yes 1
tumor_nodul                         uninodular 0, multinodular 1
T_involvment (liver involvement)    <= 50 % 0, > 50 % 1
AFP_group                           < 400 ng/ml 0, >= 400 ng/ml 1
CPS (Child-Pugh class)              A 1, B 2, C 3
BCLC                                0 0, A 1, B 2, C 3, D 4
TNM                                 I 1, II 2, III (a/b/c) 3, IV (a/b) 4
Okuda                               I 1, II 2, III 3
CLIP_Score                          0 .. 6 (the CLIP points)
PS (ECOG performance status)        0 .. 4
==================================  ==========================================================

``hepatitis`` is nominal and stays a category: ``none``, ``HBV``, ``HCV``, ``HBV+HCV``. ``age`` (years), ``AFP``
(ng/ml) and ``Tr_Size`` (cm) are numeric; a censored value such as ``>1000`` is read as its bound. A blank cell, or
one saying "unknown"/"not stated", becomes a blank (NaN); any other value the encoding does not know becomes a
blank too, with one warning per column naming the values.

**Default features** (:data:`DEFAULT_FEATURES`) are what is known about a patient at diagnosis, before treatment:
demographics, risk factors, tumour burden and the staging scores. Outcomes and anything measured after TACE
(``TTP``, ``OS``, the follow-up intervals, death/censoring flags, RECIST/mRECIST/EASL responses, the chemotherapy
given) are kept in ``clinical.csv`` for analysis but never default features: they are not known when a new scan is
segmented, and they were recorded after the imaging, so a model using them would learn from the future (leakage)
and could not be applied to a new patient.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from smoothseg.atomic import write_text
from smoothseg.errors import SmoothSegError

logger = logging.getLogger("smoothseg.conversion.clinical")

CASE_ID_COLUMN = "case_id"
#: The id column of the TCIA spreadsheet, and other spellings accepted for it.
ID_COLUMN_ALIASES: tuple[str, ...] = ("TCIA_ID", "TCIA ID", "PatientID", "Patient_ID", "case_id")

#: Canonical column name -> other spellings (matched ignoring case, spaces, ``_`` and ``-``).
COLUMN_ALIASES: dict[str, tuple[str, ...]] = {
    "age": ("Age", "age_years"),
    "Sex": ("Gender",),
    "Smoking": ("Smoker",),
    "Alcohol": ("Alcohol_use",),
    "Diabetes": ("DM",),
    "fhx_can": ("Cancer_family_history", "Family_history_of_cancer"),
    "fhx_livc": ("Liver_cancer_family_history", "Family_history_of_liver_cancer"),
    "Personal history of cancer": ("Personal_history_of_cancer",),
    "Evidence_of_cirh": ("Cirrhosis", "Evidence_of_cirrhosis"),
    "hepatitis": ("Hepatitis", "Viral_hepatitis"),
    "AFP": ("Alpha_fetoprotein",),
    "AFP_group": (),
    "Tr_Size": ("Tumor_size", "Tumour_size"),
    "tumor_nodul": ("Tumor_nodularity", "Nodularity"),
    "T_involvment": ("T_involvement", "Liver_involvement"),
    "Vascular invasion": ("Vascular_invasion",),
    "Portal Vein Thrombosis": ("Portal_vein_thrombosis", "PVT"),
    "Metastasis": ("Metastases",),
    "Lymphnodes": ("Lymph_nodes", "Lymphnode"),
    "PS": ("ECOG", "Performance_status"),
    "CPS": ("Child_Pugh", "Child_Pugh_score", "Child_Pugh_class"),
    "CLIP_Score": ("CLIP_points",),
    "Okuda": (),
    "TNM": ("TNM_stage",),
    "BCLC": ("BCLC_stage",),
}

BINARY: dict[str, int] = {"no": 0, "n": 0, "0": 0, "false": 0, "absent": 0,
                          "yes": 1, "y": 1, "1": 1, "true": 1, "present": 1}
#: Yes/no columns of the TCIA spreadsheet, coded no 0, yes 1.
BINARY_COLUMNS: tuple[str, ...] = ("Smoking", "Alcohol", "Diabetes", "fhx_can", "fhx_livc",
                                   "Personal history of cancer", "Evidence_of_cirh", "Vascular invasion",
                                   "Portal Vein Thrombosis", "Metastasis", "Lymphnodes")

#: Column -> {raw value: code}. Raw values are matched after :func:`normalise_value` on both sides.
ENCODINGS: dict[str, dict[str, int]] = {
    "Sex": {"female": 0, "f": 0, "2": 0, "male": 1, "m": 1, "1": 1},
    **{col: dict(BINARY) for col in BINARY_COLUMNS},
    "tumor_nodul": {"uninodular": 0, "solitary": 0, "single": 0, "multinodular": 1, "multiple": 1},
    "T_involvment": {"< or = 50%": 0, "<=50%": 0, "≤50%": 0, "<50%": 0, ">50%": 1},
    "AFP_group": {"<400": 0, ">=400": 1, "≥400": 1, ">400": 1},
    "CPS": {"A": 1, "B": 2, "C": 3},
    "BCLC": {"0": 0, "A": 1, "B": 2, "C": 3, "D": 4},
    "TNM": {"I": 1, "II": 2, "III": 3, "IIIA": 3, "IIIB": 3, "IIIC": 3, "IV": 4, "IVA": 4, "IVB": 4},
    "Okuda": {"I": 1, "II": 2, "III": 3},
    "CLIP_Score": {str(i): i for i in range(7)},
    "PS": {str(i): i for i in range(5)},
}

#: Nominal columns kept as text categories: column -> {raw value: category}.
CATEGORIES: dict[str, dict[str, str]] = {
    "hepatitis": {"no virus": "none", "none": "none", "no": "none", "hbv only": "HBV", "hbv": "HBV",
                  "hcv only": "HCV", "hcv": "HCV", "hcv and hbv": "HBV+HCV", "hbv and hcv": "HBV+HCV",
                  "hbv+hcv": "HBV+HCV", "hcv+hbv": "HBV+HCV", "both": "HBV+HCV"},
}

#: Numeric columns (a censored ``<x``/``>x`` is read as x).
NUMERIC_COLUMNS: tuple[str, ...] = ("age", "AFP", "Tr_Size")

#: Pre-treatment features for the TLVR regression (those present in the spreadsheet are used).
DEFAULT_FEATURES: tuple[str, ...] = (
    "age", "Sex", "Smoking", "Alcohol", "Diabetes", "fhx_can", "fhx_livc", "Personal history of cancer",
    "Evidence_of_cirh", "hepatitis", "AFP", "Tr_Size", "tumor_nodul", "T_involvment", "Vascular invasion",
    "Portal Vein Thrombosis", "Metastasis", "Lymphnodes", "PS", "CPS", "CLIP_Score", "Okuda", "TNM", "BCLC",
)
#: Default features that are text categories.
CATEGORICAL_FEATURES: tuple[str, ...] = ("hepatitis",)

#: Outcome / post-treatment columns of the TCIA spreadsheet, never default features (see the module docstring).
OUTCOME_COLUMNS: tuple[str, ...] = ("TTP", "OS", "Interval_BL", "Interval_FU", "Death_1_StillAliveorLostToFU_0",
                                   "Censored_0_progressed_1", "chemotherapy")

_MISSING = {"", "nan", "na", "n/a", "none given", "unknown", "unk", "notstated", "notavailable", "missing", "?",
            ".", "nat"}
_PREFIX = re.compile(r"^(childpugh|child|stage|class|grade)")
_NUMBER = re.compile(r"^[<>≤≥=]*\s*([-+]?(?:\d+\.?\d*|\.\d+)(?:e[-+]?\d+)?)$", re.IGNORECASE)


def column_key(name: object) -> str:
    return re.sub(r"[^a-z0-9]", "", str(name).lower())


def normalise_value(value: object) -> str:
    """A cell as a comparison token: lower case, no spaces/``_``/``-``, no leading "stage"/"class"/"child"."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    token = re.sub(r"[\s_\-]+", "", str(value).strip().lower())
    return _PREFIX.sub("", token) or token


def _is_missing(value: object) -> bool:
    token = normalise_value(value)
    return token in _MISSING or re.sub(r"[\s_\-]+", "", str(value).strip().lower()) in _MISSING


@dataclass
class ClinicalTable:
    """The encoded table (``case_id`` first), the features it offers and what was odd about it."""

    table: pd.DataFrame
    features: list[str]
    categorical: list[str]
    warnings: list[str] = field(default_factory=list)
    source: Path | None = None

    def warn(self, message: str) -> None:
        self.warnings.append(message)
        logger.warning("%s", message)


def read_clinical_xlsx(path: str | Path) -> pd.DataFrame:
    """The first sheet of ``path`` that has a patient id column, all cells as Python objects."""
    path = Path(path)
    if not path.is_file():
        raise SmoothSegError(f"{path}: clinical spreadsheet does not exist")
    try:
        sheets = pd.read_excel(path, sheet_name=None, dtype=object)
    except Exception as exc:  # noqa: BLE001 - openpyxl/xlrd raise many types for a bad workbook
        raise SmoothSegError(f"{path}: unreadable spreadsheet ({type(exc).__name__}: {exc})") from None
    id_keys = {column_key(a) for a in ID_COLUMN_ALIASES}
    for name, sheet in sheets.items():
        if any(column_key(c) in id_keys for c in sheet.columns):
            logger.info("clinical data: sheet '%s' of %s (%d rows, %d columns)", name, path, *sheet.shape)
            return sheet
    raise SmoothSegError(f"{path}: no sheet has a patient id column ({', '.join(ID_COLUMN_ALIASES)})")


def _canonical_names(columns: Iterable[object]) -> dict[object, str]:
    lookup = {column_key(c): c for c in COLUMN_ALIASES}
    lookup.update({column_key(a): c for c, aliases in COLUMN_ALIASES.items() for a in aliases})
    out: dict[object, str] = {}
    taken: set[str] = set()
    for col in columns:
        canonical = lookup.get(column_key(col))
        if canonical is not None and canonical not in taken:
            out[col] = canonical
            taken.add(canonical)
        else:
            out[col] = str(col)
    return out


def _encode_with(values: pd.Series, column: str, lookup: dict[str, Any], dtype: str,
                 fallback: Callable[[str], Any] | None = None) -> tuple[pd.Series, list[str]]:
    """Each value's normalised token through ``lookup`` (then ``fallback``); missing: NA; unknown: NA, and listed."""
    out, unknown = [], []
    for v in values:
        if _is_missing(v):
            out.append(pd.NA)
            continue
        token = normalise_value(v)
        encoded = lookup.get(token)
        if encoded is None and fallback is not None:
            encoded = fallback(token)
        if encoded is None:
            unknown.append(str(v))
            encoded = pd.NA
        out.append(encoded)
    return pd.Series(out, index=values.index, dtype=dtype, name=column), unknown


def _encode_codes(values: pd.Series, column: str, encoding: dict[str, int]) -> tuple[pd.Series, list[str]]:
    codes = set(encoding.values())

    def already_encoded(token: str) -> int | None:
        return int(token) if token.isdigit() and int(token) in codes else None

    return _encode_with(values, column, {normalise_value(k): v for k, v in encoding.items()}, "Int64",
                        already_encoded)


def _encode_categories(values: pd.Series, column: str, mapping: dict[str, str]) -> tuple[pd.Series, list[str]]:
    lookup = {normalise_value(k): v for k, v in mapping.items()}
    lookup.update({normalise_value(v): v for v in mapping.values()})
    return _encode_with(values, column, lookup, "string")


def _encode_numbers(values: pd.Series, column: str) -> tuple[pd.Series, list[str]]:
    out, unknown = [], []
    for v in values:
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            out.append(float(v))
            continue
        if _is_missing(v):
            out.append(math.nan)
            continue
        m = _NUMBER.match(str(v).strip().replace(",", ""))
        if m:
            out.append(float(m.group(1)))
        else:
            out.append(math.nan)
            unknown.append(str(v))
    return pd.Series(out, index=values.index, dtype=float, name=column), unknown


def encode_column(values: pd.Series, column: str) -> tuple[pd.Series, list[str]]:
    """Encode one canonical column; returns the new values and the raw values it did not know."""
    if column in ENCODINGS:
        return _encode_codes(values, column, ENCODINGS[column])
    if column in CATEGORIES:
        return _encode_categories(values, column, CATEGORIES[column])
    if column in NUMERIC_COLUMNS:
        return _encode_numbers(values, column)
    return values, []


def sanitise_case_id(value: object) -> str:
    """A case id usable in file names: characters other than letters, digits, ``_``, ``-`` and ``.`` become ``_``."""
    return re.sub(r"[^A-Za-z0-9_.\-]", "_", str(value).strip())


def encode_clinical(raw: pd.DataFrame, source: Path | None = None) -> ClinicalTable:
    """Encode a raw clinical sheet: canonical names, documented codes, ``case_id`` first, one row per patient."""
    id_keys = {column_key(a) for a in ID_COLUMN_ALIASES}
    id_col = next(c for c in raw.columns if column_key(c) in id_keys)
    raw = raw[raw[id_col].map(lambda v: not _is_missing(v))]
    ids = raw[id_col].map(sanitise_case_id)
    result = ClinicalTable(pd.DataFrame(), [], [], source=source)
    where = f"{source}: " if source else ""
    dupes = sorted(set(ids[ids.duplicated()]))
    if dupes:
        result.warn(f"{where}patients listed more than once, first row kept: {', '.join(dupes)}")
    keep = ~ids.duplicated()
    raw, ids = raw[keep], ids[keep]
    names = _canonical_names(c for c in raw.columns if c != id_col)
    columns: dict[str, pd.Series] = {CASE_ID_COLUMN: ids.rename(CASE_ID_COLUMN)}
    for col, canonical in names.items():
        if canonical == CASE_ID_COLUMN:
            continue
        encoded, unknown = encode_column(raw[col], canonical)
        if unknown:
            shown = ", ".join(repr(v) for v in sorted(set(unknown))[:8])
            result.warn(f"{where}column '{col}': {len(unknown)} value(s) not in the documented encoding left blank "
                        f"({shown})")
        columns[canonical] = encoded
    table = pd.DataFrame(columns).reset_index(drop=True)
    result.table = table
    for feature in DEFAULT_FEATURES:
        if feature not in table.columns:
            logger.info("clinical column '%s' is not in the spreadsheet; left out of the features", feature)
        elif table[feature].isna().all():
            result.warn(f"{where}column '{feature}' is blank for every patient; left out of the features")
        else:
            result.features.append(feature)
    result.categorical = [f for f in CATEGORICAL_FEATURES if f in result.features]
    return result


def add_missing_cases(clinical: ClinicalTable, case_ids: Sequence[str]) -> list[str]:
    """Give converted cases that the spreadsheet lacks a blank row (imputed later); returns their ids.

    Raises :class:`SmoothSegError` when none of ``case_ids`` is in the spreadsheet: the ids do not match at all.
    """
    present = set(clinical.table[CASE_ID_COLUMN])
    missing = [c for c in case_ids if c not in present]
    if case_ids and len(missing) == len(case_ids):
        raise SmoothSegError(f"{clinical.source}: none of the {len(case_ids)} converted case ids "
                             f"({', '.join(list(case_ids)[:3])}, ...) is in the spreadsheet, whose ids look like "
                             f"{', '.join(list(present)[:3]) or 'nothing'}")
    if missing:
        clinical.warn(f"{clinical.source}: no clinical row for {len(missing)} converted case(s), left blank: "
                      f"{', '.join(missing)}")
        blank = pd.DataFrame({CASE_ID_COLUMN: missing})
        clinical.table = pd.concat([clinical.table, blank], ignore_index=True)
    clinical.table = clinical.table.sort_values(CASE_ID_COLUMN, kind="stable").reset_index(drop=True)
    return missing


def write_clinical_csv(clinical: ClinicalTable, path: str | Path) -> Path:
    """Write the table as CSV (blank cells for missing values), atomically."""
    return write_text(clinical.table.to_csv(index=False), path)


def build_clinical(xlsx: str | Path, case_ids: Sequence[str]) -> ClinicalTable:
    """Read, encode and complete the clinical table for the converted ``case_ids``."""
    xlsx = Path(xlsx)
    clinical = encode_clinical(read_clinical_xlsx(xlsx), xlsx)
    add_missing_cases(clinical, case_ids)
    return clinical

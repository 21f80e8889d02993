"""Loading the clinical table declared under ``dataset.json``'s ``clinical`` key.

The table is a CSV (or TSV) file in the dataset folder. It is returned as a pandas DataFrame indexed
by case id (as strings), holding exactly the declared feature columns; categorical features are
kept as strings, numeric features as floats (blank cells become NaN for the regression's imputer).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from smoothseg.dataset.dataset_json import ClinicalSpec
from smoothseg.errors import DatasetSchemaError


def read_table(path: Path) -> pd.DataFrame:
    """Read a CSV/TSV file with every column as text, so ids like ``007`` survive."""
    sep = "\t" if path.suffix.lower() in (".tsv", ".tab") else ","
    try:
        return pd.read_csv(path, sep=sep, dtype=str, keep_default_na=False, na_values=[""])
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise DatasetSchemaError(path, None, f"unreadable table ({exc})") from None


def load_clinical_table(dataset_dir: str | Path, spec: ClinicalSpec) -> pd.DataFrame:
    """The clinical table of a dataset, indexed by case id, with the declared feature columns."""
    path = Path(dataset_dir) / spec.file
    if not path.is_file():
        raise DatasetSchemaError(path, None, "clinical table declared in dataset.json does not exist")
    table = read_table(path)
    if spec.case_id_column not in table.columns:
        raise DatasetSchemaError(path, spec.case_id_column,
                                 f"case id column missing; columns are {list(table.columns)}")
    missing = [c for c in spec.features if c not in table.columns]
    if missing:
        raise DatasetSchemaError(path, ", ".join(missing), "feature column(s) declared in dataset.json are missing")
    ids = table[spec.case_id_column].astype(str).str.strip()
    if ids.isna().any() or (ids == "").any():
        raise DatasetSchemaError(path, spec.case_id_column, "some rows have no case id")
    dupes = sorted(ids[ids.duplicated()].unique())
    if dupes:
        raise DatasetSchemaError(path, spec.case_id_column, f"duplicate case ids {dupes[:10]}")
    out = table[list(spec.features)].copy()
    out.index = pd.Index(ids, name="case_id")
    for col in spec.numeric:
        converted = pd.to_numeric(out[col], errors="coerce")
        bad = out[col].notna() & converted.isna()
        if bad.any():
            examples = ", ".join(f"{i}={out.at[i, col]!r}" for i in list(out.index[bad])[:3])
            raise DatasetSchemaError(path, col, f"numeric feature has non-numeric values ({examples}); "
                                                 "declare it under 'categorical' or fix the cells")
        out[col] = converted.astype(float)
    return out

"""Cross-validation splits of the training cases, written to ``splits.json``.

``kfold``: 5 folds, shuffled with a fixed seed (nnU-Net's default). ``holdout``: the paper's
protocol, 3 replications of a random 80/20 split, each with its own seed. Either way a split is
``{"train": [...], "val": [...]}`` and ``smoothseg_train DATASET TASK k`` uses split ``k``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from sklearn.model_selection import KFold, train_test_split

from smoothseg.atomic import write_json
from smoothseg.errors import SmoothSegError

SCHEMES = ("kfold", "holdout")


def make_splits(case_ids: list[str], scheme: str = "kfold", seed: int = 12345, n_folds: int = 5,
                n_replications: int = 3, val_fraction: float = 0.2) -> dict[str, Any]:
    ids = sorted(case_ids)
    if len(ids) < 2:
        raise ValueError(f"need at least 2 training cases to split, got {len(ids)}")
    splits = []
    if scheme == "kfold":
        k = min(n_folds, len(ids))
        for train_idx, val_idx in KFold(k, shuffle=True, random_state=seed).split(ids):
            splits.append({"train": [ids[i] for i in train_idx], "val": [ids[i] for i in val_idx]})
    elif scheme == "holdout":
        for r in range(n_replications):
            train, val = train_test_split(ids, test_size=val_fraction, random_state=seed + r)
            splits.append({"train": sorted(train), "val": sorted(val)})
    else:
        raise ValueError(f"split scheme must be one of {SCHEMES}, got {scheme!r}")
    return {"scheme": scheme, "seed": seed, "splits": splits}


def save_splits(splits: dict[str, Any], path: Path) -> Path:
    return write_json(splits, path)


def split_summary(splits: dict[str, Any]) -> str:
    sizes = ", ".join(f"{len(s['train'])}/{len(s['val'])}" for s in splits["splits"])
    return f"{splits['scheme']} splits (train/val): {sizes}"


def load_fold(splits_path: Path, fold: str | int) -> tuple[list[str], list[str]]:
    """The ``(train, val)`` case ids of ``fold`` in ``splits.json``; fold ``all``: every case, in both lists."""
    splits_path = Path(splits_path)
    if not splits_path.is_file():
        raise SmoothSegError(f"{splits_path} not found; run smoothseg_plan_and_preprocess first")
    try:
        splits = json.loads(splits_path.read_text())["splits"]
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise SmoothSegError(f"{splits_path}: not a splits file ({type(exc).__name__}: {exc})") from None
    fold = str(fold)
    if fold == "all":
        ids = sorted({c for s in splits for c in s["train"] + s["val"]})
        return ids, list(ids)
    if not fold.isdigit() or int(fold) >= len(splits):
        raise SmoothSegError(f"fold {fold} does not exist in {splits_path}; available: "
                             f"{', '.join(str(i) for i in range(len(splits)))} or all")
    split = splits[int(fold)]
    return list(split["train"]), list(split["val"])


__all__ = ["SCHEMES", "load_fold", "make_splits", "save_splits", "split_summary"]

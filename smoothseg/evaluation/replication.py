"""The replication protocol: several evaluated runs (splits or folds) summarised as mean ± std across runs.

The paper reports its table from three replications of a random 80/20 split. Each replication is evaluated on its
own (:func:`smoothseg.evaluation.evaluate.evaluate_folders` writes one ``summary.json`` per run); this module reads
those summaries and, per stratum and metric, takes the **per-run mean** (``mean_per_case`` of that run) and reports
its mean and standard deviation **across runs** (sample std, ``ddof=1``, because three runs are a small sample of
possible splits; None with a single run). Runs whose per-run mean is undefined for a metric are left out of that
metric and counted. Pooled (global) metrics and lesion detection are treated the same way: one value per run.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from smoothseg.atomic import write_json, write_text
from smoothseg.errors import SmoothSegError
from smoothseg.evaluation.evaluate import SUMMARY_SCHEMA
from smoothseg.evaluation.strata import PAPER_METRICS, STRATA, format_mean_std, paper_table_markdown

logger = logging.getLogger(__name__)

__all__ = ["REPLICATION_SCHEMA", "across_runs", "replication_markdown", "summarize_replications",
           "write_replication_summary"]

REPLICATION_SCHEMA = "smoothseg-replication-summary/1"
#: Per-case metrics (besides the paper's) whose per-run means are summarised across runs.
_EXTRA_METRICS = ("liver_dice", "liver_iou", "liver_hd95_mm", "tumor_precision", "tumor_hd95_mm", "tumor_assd_mm")


def across_runs(values: Iterable[float | None]) -> dict[str, Any]:
    """``mean_across_runs``, ``std_across_runs`` (``ddof=1``), ``n_runs`` (with a value), ``n_missing``, and
    ``per_run`` (the values, None where undefined)."""
    per_run = [None if v is None or not math.isfinite(float(v)) else float(v) for v in values]
    finite = [v for v in per_run if v is not None]
    mean = sum(finite) / len(finite) if finite else None
    std = math.sqrt(sum((v - mean) ** 2 for v in finite) / (len(finite) - 1)) if len(finite) > 1 else None
    return {"mean_across_runs": mean, "std_across_runs": std, "n_runs": len(finite),
            "n_missing": len(per_run) - len(finite), "per_run": per_run}


#: File names a folder given as a replication is searched for, in order. Training's final validation writes its
#: evaluation as ``metrics.json`` (its ``summary.json`` there is the prediction report).
SUMMARY_NAMES: tuple[str, ...] = ("summary.json", "metrics.json")


def _is_evaluation_summary(path: Path) -> bool:
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return False
    return isinstance(data, dict) and data.get("schema") == SUMMARY_SCHEMA


def _resolve(path: str | Path) -> Path:
    """A summary file as given, or the first of :data:`SUMMARY_NAMES` in a folder that is an evaluation summary."""
    path = Path(path)
    if not path.is_dir():
        return path
    return next((path / name for name in SUMMARY_NAMES if _is_evaluation_summary(path / name)),
                path / SUMMARY_NAMES[0])


def _load(paths: Sequence[Path]) -> list[dict]:
    """Read every summary; refuse with one error listing all unreadable or foreign files and mismatched strata."""
    problems, summaries = [], []
    for path in paths:
        try:
            data = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
            problems.append(f"{path}: cannot read ({exc})")
            continue
        if not isinstance(data, dict) or data.get("schema") != SUMMARY_SCHEMA:
            problems.append(f"{path}: not a smoothseg_evaluate summary (schema {SUMMARY_SCHEMA!r} expected)")
            continue
        summaries.append(data)
    thresholds = {(s["size_strata"]["diameter_threshold_cm"], s["size_strata"]["volume_threshold_ml"])
                  for s in summaries}
    if len(thresholds) > 1:
        problems.append(f"runs use different size thresholds (diameter cm, volume ml): {sorted(thresholds)}")
    if problems:
        raise SmoothSegError(f"cannot summarise {len(paths)} replication(s); {len(problems)} problem(s):\n"
                             + "\n".join(f"  - {p}" for p in problems))
    return summaries


def _stratum_entry(summaries: Sequence[dict], key: str) -> dict[str, Any]:
    entries = [s["strata"].get(key, {}) for s in summaries]
    n_per_run = [int(e.get("n_cases", 0)) for e in entries]
    out: dict[str, Any] = {"n_cases_per_run": n_per_run, "n_text": "/".join(map(str, n_per_run))}
    for metric in PAPER_METRICS:
        out[metric] = across_runs(e.get(metric, {}).get("mean_per_case") for e in entries)
    out["tumor_dice_global"] = across_runs(e.get("tumor_dice_global") for e in entries)
    return out


def summarize_replications(summary_jsons: list[Path]) -> dict:
    """Mean ± std across runs of each run's per-case mean, per stratum of the paper's table, and more.

    ``summary_jsons`` are summary files written by ``smoothseg_evaluate`` / :func:`evaluate_folders`; a folder
    stands for its ``summary.json`` or ``metrics.json``, whichever is an evaluation summary.

    Returns ``{"schema", "runs", "n_runs", "std_ddof": 1, "strata": {key: {"label", "n_cases_per_run",
    <paper metric>: across_runs(...), "tumor_dice_global": across_runs(...)}}, "metrics": {<metric>:
    across_runs(per-run mean_per_case)}, "global": {<metric>_global: across_runs(...)}, "lesion_detection":
    {"precision"|"recall"|"f1": across_runs(...)}}``. Raises :class:`SmoothSegError` when a file is unreadable or
    not an evaluation summary, or the runs used different size thresholds.
    """
    paths = [_resolve(p) for p in summary_jsons]
    if not paths:
        raise SmoothSegError("no replication summaries given")
    summaries = _load(paths)
    strata = {}
    for stratum in STRATA:
        strata[stratum.key] = {"label": stratum.label, "rule": stratum.rule, "n_runs_total": len(summaries),
                               **_stratum_entry(summaries, stratum.key)}
    metrics = {m: across_runs(s["metrics"].get(m, {}).get("mean_per_case") for s in summaries)
               for m in (*PAPER_METRICS, *_EXTRA_METRICS)}
    global_keys = sorted(summaries[0]["global"])
    return {
        "schema": REPLICATION_SCHEMA,
        "runs": [str(p) for p in paths],
        "n_runs": len(paths),
        "n_cases_per_run": [int(s["n_cases"]) for s in summaries],
        "std_ddof": 1,
        "aggregation": "per run: the run's per-case mean (or pooled value); across runs: mean and sample std "
                       "(ddof=1) of those per-run values; runs where a value is undefined are left out and counted "
                       "in n_missing",
        "strata": strata,
        "metrics": metrics,
        "global": {k: across_runs(s["global"].get(k) for s in summaries) for k in global_keys},
        "lesion_detection": {k: across_runs(s["lesion_detection"].get(k) for s in summaries)
                             for k in ("precision", "recall", "f1")},
    }


def replication_markdown(replicated: dict) -> str:
    """The paper-style table of across-run mean ± std, plus the other metrics, as markdown."""
    lines = ["# Replication summary", "",
             f"{replicated['n_runs']} run(s): " + ", ".join(f"`{r}`" for r in replicated["runs"]), "",
             "## Tumour segmentation by size (mean ± std across runs of each run's per-case mean)", "",
             paper_table_markdown(replicated["strata"], mean_key="mean_across_runs", std_key="std_across_runs",
                                  n_key="n_runs", total_key="n_runs_total", n_column="n per run"), "",
             "Std is the sample standard deviation across runs (ddof=1). `(n=k)`: only k runs had a defined value.",
             "", "## Other metrics (mean ± std across runs)", "", "| Metric | mean ± std | runs |", "|---|---|---|"]
    rows = [*replicated["metrics"].items(), *replicated["global"].items(),
            *((f"lesion_{k}_pooled", v) for k, v in replicated["lesion_detection"].items())]
    for name, agg in rows:
        lines.append(f"| {name} | {format_mean_std(agg['mean_across_runs'], agg['std_across_runs'])} | "
                     f"{agg['n_runs']} |")
    return "\n".join(lines) + "\n"


def write_replication_summary(summary_jsons: list[Path], output_json: Path | None = None) -> dict:
    """:func:`summarize_replications`, written to ``output_json`` and ``<stem>.md`` beside it when given."""
    replicated = summarize_replications(summary_jsons)
    if output_json is not None:
        output_json = Path(output_json)
        stem = output_json.name[:-5] if output_json.name.lower().endswith(".json") else output_json.name
        write_json(replicated, output_json)
        write_text(replication_markdown(replicated), output_json.parent / f"{stem}.md")
        logger.info("wrote %s", output_json)
    return replicated

"""The end-to-end demo: synthetic data -> plans -> liver and tumour models -> cascade prediction -> evaluation.

:func:`run_demo` chains the same public functions a user runs one by one (``make_demo_dataset``,
``plan_and_preprocess``, the registered trainer, ``predict``, ``evaluate``); nothing here is specific to the demo
except the choice of settings (:func:`demo_settings`): how many phantoms, the planner's memory budget and how long
to train, sized to the device.

Layout under the work folder::

    raw/ preprocessed/                 the synthetic dataset and its plans (shared by every mode)
    <mode>/results/                    trained models (fold 0), progress.png, training logs
    <mode>/predictions/                label maps and tumour reports of the test cases
    <mode>/evaluation/                 summary.json, per-case CSV, paper-style table, overlays/
    <mode>/review.html                 the review page of the test cases (smoothseg_review)
    <mode>/demo.json                   settings, timings and headline metrics of the last run

``<mode>`` is ``cpu``, ``cpu-quick``, ``cuda`` or ``cuda-quick``. A re-run reuses the dataset and the preprocessed
data, and a model whose final checkpoint was trained with the same settings; everything else is redone.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from smoothseg.atomic import write_json
from smoothseg.errors import SmoothSegError
from smoothseg.evaluation.evaluate import evaluate, output_paths
from smoothseg.evaluation.review import write_review
from smoothseg.evaluation.strata import paper_table_markdown
from smoothseg.inference.cascade import ModelOptions
from smoothseg.inference.cohort import CohortOptions, predict
from smoothseg.paths import using_roots
from smoothseg.synthetic.demo_dataset import DEMO_DATASET_ID, make_demo_dataset
from smoothseg.training.config import TrainingConfig
from smoothseg.training.trainer import TRAINERS
from smoothseg.workflows.plan_and_preprocess import plan_and_preprocess
from smoothseg.workflows.training import fold_validation

__all__ = ["DemoResult", "DemoSettings", "QUALITY_BAR", "demo_settings", "run_demo"]

logger = logging.getLogger(__name__)

#: The demo's quality bar on the synthetic test cases: per-case mean Dice of the liver region and of the tumour.
QUALITY_BAR = {"liver_dice": 0.90, "tumor_dice": 0.50}
TRAINER = "SmoothSegTrainer"
FOLD = "0"


@dataclass(frozen=True)
class DemoSettings:
    """What the demo runs. Every field maps onto a public option of the underlying commands.

    Attributes
    ----------
    n_cases:
        Synthetic phantoms (``smoothseg_make_demo_dataset -n``); the last quarter are the test cases.
    gpu_memory_target_gb:
        Planner budget (``smoothseg_plan_and_preprocess -gpu_memory_target``). On a CPU, compute time rather than
        memory is the limit, so the demo plans small patches there: 1.25 GB gives 16-filter networks (the planner's
        floor) on 32 x 48 x 48 patches; ``--quick`` plans at 1 GB, 16 filters on 16 x 32 x 32-sized patches.
    liver_epochs, tumor_epochs, iters_per_epoch, val_iters:
        Training length per task (``smoothseg_train --epochs --iters-per-epoch --val-iters``).
    """

    n_cases: int
    gpu_memory_target_gb: float
    liver_epochs: int
    tumor_epochs: int
    iters_per_epoch: int
    val_iters: int

    def epochs(self, task: str) -> int:
        return self.liver_epochs if task == "liver" else self.tumor_epochs

    def iterations(self, task: str) -> int:
        return self.epochs(task) * self.iters_per_epoch


# Sized on a 2-core CPU (see documentation/benchmarks.md): the default run takes 12.3-12.8 of its 15 min (~14 from a
# fresh clone; the tumour model's 40 epochs take the time the prediction and loader speed-ups freed), ~3 for --quick.
_CPU = DemoSettings(n_cases=32, gpu_memory_target_gb=1.25, liver_epochs=12, tumor_epochs=40, iters_per_epoch=25,
                    val_iters=3)
_CPU_QUICK = DemoSettings(n_cases=32, gpu_memory_target_gb=1.0, liver_epochs=6, tumor_epochs=6, iters_per_epoch=20,
                          val_iters=2)
_CUDA = DemoSettings(n_cases=32, gpu_memory_target_gb=8.0, liver_epochs=40, tumor_epochs=80, iters_per_epoch=50,
                     val_iters=10)
_CUDA_QUICK = DemoSettings(n_cases=32, gpu_memory_target_gb=8.0, liver_epochs=6, tumor_epochs=6,
                           iters_per_epoch=25, val_iters=4)


def demo_settings(device_type: str, quick: bool = False) -> DemoSettings:
    """The built-in settings for a device type (``cpu``, ``cuda``, ``mps``: like ``cpu``) and mode."""
    if device_type == "cuda":
        return _CUDA_QUICK if quick else _CUDA
    return _CPU_QUICK if quick else _CPU


@dataclass
class DemoResult:
    """Where everything went, how long each step took, and the headline metrics."""

    workdir: Path
    mode: str
    device: str
    settings: DemoSettings
    seed: int = 0
    seconds: dict[str, float] = field(default_factory=dict)
    paths: dict[str, str] = field(default_factory=dict)
    metrics: dict[str, float | None] = field(default_factory=dict)
    table: str = ""
    #: The data-root variables under which other commands and the Python API find this run's data and models.
    roots: dict[str, str] = field(default_factory=dict)

    @property
    def meets_quality_bar(self) -> bool:
        return all(self.metrics.get(k) is not None and self.metrics[k] >= v for k, v in QUALITY_BAR.items())

    def to_dict(self) -> dict[str, Any]:
        return {"workdir": str(self.workdir), "mode": self.mode, "device": self.device, "seed": self.seed,
                "settings": asdict(self.settings), "seconds": self.seconds, "paths": self.paths,
                "metrics": self.metrics, "quality_bar": QUALITY_BAR, "meets_quality_bar": self.meets_quality_bar,
                "roots": self.roots}


def _trained_with(final: Path, config: TrainingConfig) -> bool:
    """Whether ``final`` (a run_config.json's sibling checkpoint) was trained with exactly ``config``."""
    run_config = final.parent / "run_config.json"
    if not final.exists() or not run_config.exists():
        return False
    try:
        return json.loads(run_config.read_text()).get("config") == json.loads(json.dumps(asdict(config)))
    except (OSError, json.JSONDecodeError):
        return False


def _train(task: str, settings: DemoSettings, device: torch.device, num_workers: int | None,
           say: Callable[[str], None], seed: int) -> Path:
    config = TrainingConfig(dataset=str(DEMO_DATASET_ID), task=task, fold=FOLD, trainer=TRAINER, device=device.type,
                            epochs=settings.epochs(task), seed=seed,
                            iters_per_epoch=settings.iters_per_epoch, val_iters=settings.val_iters,
                            num_workers=num_workers, validate=task == "tumor", overwrite=True)
    trainer = TRAINERS[TRAINER](config, device)
    final = trainer.output / "checkpoint_final.pth"
    if _trained_with(final, config):
        say(f"    {task} model already trained with these settings: {final}")
        return trainer.output
    trainer.run()
    if config.validate:
        fold_validation(config, trainer.output, device)
    return trainer.output


def run_demo(workdir: str | Path, device: torch.device, quick: bool = False, *,
             settings: DemoSettings | None = None, num_workers: int | None = None, num_processes: int = 2,
             say: Callable[[str], None] | None = None, seed: int = 0) -> DemoResult:
    """Run the whole pipeline on the synthetic dataset; see the module docstring for what lands where.

    ``settings`` replaces the built-in ones (:func:`demo_settings`); ``num_workers`` is the number of augmentation
    workers per training run (default: the trainer's choice), ``num_processes`` the worker processes of the data
    steps (generation, preprocessing, prediction, evaluation). ``say`` receives the narration (default: the log).
    ``seed`` is the training seed of both models (initial weights and patch sampling).
    The three data roots point into ``workdir`` while the demo runs (:func:`smoothseg.paths.using_roots`) and are
    restored afterwards.
    """
    workdir = Path(workdir).expanduser().resolve()
    mode = device.type + ("-quick" if quick else "")
    with using_roots(raw=workdir / "raw", preprocessed=workdir / "preprocessed",
                     results=workdir / mode / "results"):
        return _run(workdir, mode, device, quick, settings, num_workers, num_processes, say or logger.info, seed)


def _run(workdir: Path, mode: str, resolved: torch.device, quick: bool, settings: DemoSettings | None,
         num_workers: int | None, num_processes: int, say: Callable[[str], None], seed: int) -> DemoResult:
    start = time.perf_counter()
    settings = settings or demo_settings(resolved.type, quick)
    if settings.n_cases < 8:
        raise SmoothSegError(f"the demo needs at least 8 synthetic cases (fold 0 must hold training and validation "
                             f"cases), got {settings.n_cases}")
    run_dir = workdir / mode
    result = DemoResult(workdir=workdir, mode=mode, device=str(resolved), settings=settings, seed=seed)
    say(f"smoothseg demo ({mode}) in {workdir}\n    device {resolved}; {settings.n_cases} synthetic cases; "
        f"training {settings.iterations('liver')} liver + {settings.iterations('tumor')} tumour iterations")

    def announce(step: int, total: int, text: str) -> None:
        say(f"\n[{step}/{total}] {text}")

    def timed(name: str, t0: float) -> None:
        result.seconds[name] = round(time.perf_counter() - t0, 1)

    total_steps = 6
    t0 = time.perf_counter()
    announce(1, total_steps, "synthetic dataset")
    raw = make_demo_dataset(n_cases=settings.n_cases, num_processes=num_processes)
    timed("dataset", t0)

    t0 = time.perf_counter()
    announce(2, total_steps, f"plan and preprocess (GPU memory target {settings.gpu_memory_target_gb:g} GB)")
    planned = plan_and_preprocess(DEMO_DATASET_ID, num_processes=num_processes,
                                  gpu_memory_target_gb=settings.gpu_memory_target_gb, overwrite_plans=True)
    timed("plan_and_preprocess", t0)

    for step, task in ((3, "liver"), (4, "tumor")):
        t0 = time.perf_counter()
        plan = planned.plans[task]
        announce(step, total_steps, f"train the {task} model, fold {FOLD}: {settings.iterations(task)} iterations, "
                  f"patch {'x'.join(map(str, plan.patch_size))}, {plan.network.init_filters} filters")
        result.paths[f"{task}_model"] = str(_train(task, settings, resolved, num_workers, say, seed))
        timed(f"train_{task}", t0)
        if task == "liver" and result.seconds["train_liver"] > 30:  # trained now, not reused: its speed is known
            per_iteration = result.seconds["train_liver"] / settings.iterations("liver")
            left = per_iteration * settings.iterations("tumor") * 1.15 + 90  # + validation, prediction, evaluation
            say(f"    {(time.perf_counter() - start) / 60:.1f} min so far; about {left / 60:.0f} min left "
                "(estimated from the liver model's speed)")

    t0 = time.perf_counter()
    predictions = run_dir / "predictions"
    announce(5, total_steps, f"predict the test cases with the cascade -> {predictions}")
    options = CohortOptions(clinical_csv=raw / "clinical.csv",
                            num_processes_preprocessing=num_processes, num_processes_postprocessing=num_processes)
    summary = predict(raw / "imagesTs", predictions, dataset=str(DEMO_DATASET_ID), folds=[FOLD], trainer=TRAINER,
                      models=ModelOptions(device=resolved), options=options)
    if summary.failed:
        raise SmoothSegError(f"{len(summary.failed)} test case(s) failed; see {predictions / 'summary.json'}")
    timed("predict", t0)

    t0 = time.perf_counter()
    evaluation = run_dir / "evaluation" / "summary.json"
    announce(6, total_steps, f"evaluate against the reference labels -> {evaluation.parent}")
    metrics = evaluate(raw / "labelsTs", predictions, evaluation, dataset=str(DEMO_DATASET_ID),
                       num_processes=num_processes, png=True, images_dir=raw / "imagesTs")
    review = write_review(raw / "imagesTs", predictions, run_dir / "review.html", references_dir=raw / "labelsTs",
                          dataset=str(DEMO_DATASET_ID), title=f"smoothseg demo ({mode}): test cases")
    timed("evaluate", t0)
    result.seconds["total"] = round(time.perf_counter() - start, 1)

    result.table = paper_table_markdown(metrics["strata"])
    result.metrics = {
        "liver_dice": _mean(metrics, "liver_dice"), "tumor_dice": _mean(metrics, "tumor_dice"),
        "liver_dice_global": metrics["global"].get("liver_dice_global"),
        "tumor_dice_global": metrics["global"].get("tumor_dice_global"),
        "n_test_cases": metrics["n_cases"],
        "lesions_found": {entry["label"]: [entry["n_detected"], entry["n_reference"]]
                          for entry in metrics["lesion_detection"]["by_size"].values()},
        "fp_lesions_per_tumour_free_liver": metrics["lesion_detection"]["fp_lesions_per_tumour_free_case"],
    }
    paths = output_paths(evaluation)
    result.roots = {"SMOOTHSEG_RAW": str(workdir / "raw"), "SMOOTHSEG_PREPROCESSED": str(workdir / "preprocessed"),
                    "SMOOTHSEG_RESULTS": str(run_dir / "results")}
    result.paths.update({
        "dataset": str(raw), "plans": str(planned.folder / "plans.json"), "predictions": str(predictions),
        "evaluation": str(paths.summary_json), "table": str(paths.markdown), "per_case": str(paths.cases_csv),
        "overlays": str(paths.overlays), "review": str(review),
        "progress_plots": " ".join(str(Path(result.paths[f"{t}_model"]) / "progress.png") for t in ("liver", "tumor")),
    })
    write_json(result.to_dict(), run_dir / "demo.json")
    return result


def _mean(summary: dict[str, Any], key: str) -> float | None:
    value = summary["metrics"].get(key, {}).get("mean_per_case")
    return None if value is None or not math.isfinite(value) else float(value)


def with_overrides(settings: DemoSettings, **overrides: int | float | None) -> DemoSettings:
    """``settings`` with the given fields replaced (``None`` values are ignored)."""
    return replace(settings, **{k: v for k, v in overrides.items() if v is not None})

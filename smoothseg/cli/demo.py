"""``smoothseg_demo [--device auto|cpu|cuda] [--quick] [--workdir DIR]``: the whole pipeline on synthetic data."""

from __future__ import annotations

import argparse
import math
import shlex
from collections.abc import Sequence

from smoothseg.cli.common import make_parser, run
from smoothseg.device import resolve_device
from smoothseg.workflows.demo import QUALITY_BAR, DemoResult, demo_settings, run_demo, with_overrides


def _fmt(value: float | None) -> str:
    return "–" if value is None else f"{value:.3f}"


def _report(result: DemoResult, quick: bool) -> None:
    m = result.metrics
    print(f"\n{result.table}\n")
    print(f"{m['n_test_cases']} test case(s). Dice per case (mean): liver {_fmt(m['liver_dice'])}, tumour "
          f"{_fmt(m['tumor_dice'])}; pooled over all voxels: liver {_fmt(m['liver_dice_global'])}, tumour "
          f"{_fmt(m['tumor_dice_global'])}")
    found = m.get("lesions_found") or {}
    if found:
        fp = m.get("fp_lesions_per_tumour_free_liver")
        fp_text = "–" if fp is None or not math.isfinite(fp) else f"{fp:.2f}"
        print("Lesions found, by reference volume: " +
              ", ".join(f"{label} {n}/{total}" for label, (n, total) in found.items()) +
              f"; false-positive lesions per tumour-free liver: {fp_text}")
    bar = ", ".join(f"{k.replace('_dice', '')} >= {v:.2f}" for k, v in QUALITY_BAR.items())
    if result.meets_quality_bar:
        print(f"Quality bar ({bar}, per-case mean): met.")
    elif quick:
        print(f"Quality bar ({bar}): not expected from a --quick run (it trains far less); run without --quick.")
    else:
        print(f"Quality bar ({bar}, per-case mean): NOT met.")
    seconds = result.seconds
    steps = ", ".join(f"{k} {v:.0f} s" for k, v in seconds.items() if k != "total")
    print(f"\nDone in {seconds['total'] / 60:.1f} min ({steps}).\nEverything is under {result.workdir}:")
    labels = {"dataset": "synthetic dataset", "plans": "plans", "liver_model": "liver model",
              "tumor_model": "tumour model", "progress_plots": "progress plots", "predictions": "label maps + reports",
              "evaluation": "metrics (summary.json)", "table": "paper-style table", "per_case": "per-case metrics",
              "overlays": "overlays (best/worst case)", "review": "review page (open in a browser)"}
    for key, label in labels.items():
        for path in result.paths.get(key, "").split():
            print(f"  {label:27s} {path}")
    print("\nTo use these data and models with the other commands or the Python API (README), set the data roots:")
    for variable, folder in result.roots.items():
        print(f"export {variable}={shlex.quote(folder)}")


def _body(args: argparse.Namespace) -> int:
    device = resolve_device(args.device)
    settings = with_overrides(demo_settings(device.type, args.quick), n_cases=args.cases,
                              liver_epochs=args.liver_epochs, tumor_epochs=args.tumor_epochs,
                              iters_per_epoch=args.iters_per_epoch, val_iters=args.val_iters)
    result = run_demo(args.workdir, device, args.quick, settings=settings, num_workers=args.num_workers,
                      num_processes=args.np, say=lambda text: print(text, flush=True), seed=args.seed)
    _report(result, args.quick)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = make_parser("smoothseg_demo", "Run smoothseg end to end on a synthetic dataset: generate it, plan and "
                         "preprocess, train the liver and tumour models, predict the test cases with the cascade, "
                         "evaluate, and print the paper-style table.")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda (auto: cuda when available)")
    parser.add_argument("--quick", action="store_true",
                        help="a short run (about 3 min on 2 CPU cores) that shows every step; far below the quality "
                             "of the default run")
    parser.add_argument("--workdir", default="smoothseg_demo",
                        help="folder for the dataset, models, predictions and evaluation (reused by later runs)")
    advanced = parser.add_argument_group("advanced (override the built-in settings for the device)")
    advanced.add_argument("--cases", type=int, help="number of synthetic cases")
    advanced.add_argument("--liver-epochs", dest="liver_epochs", type=int, help="liver training epochs")
    advanced.add_argument("--tumor-epochs", dest="tumor_epochs", type=int, help="tumour training epochs")
    advanced.add_argument("--iters-per-epoch", dest="iters_per_epoch", type=int, help="iterations per epoch")
    advanced.add_argument("--val-iters", dest="val_iters", type=int, help="validation batches per epoch")
    advanced.add_argument("--num-workers", dest="num_workers", type=int,
                          help="augmentation worker processes per training run (default: the trainer's choice)")
    advanced.add_argument("--seed", type=int, default=0, help="training seed of both models (weights and patches)")
    advanced.add_argument("-np", type=int, default=2, help="worker processes for generation, preprocessing, "
                                                           "prediction and evaluation")
    return run(parser, _body, argv)


if __name__ == "__main__":
    raise SystemExit(main())

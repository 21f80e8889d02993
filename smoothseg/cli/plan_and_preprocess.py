"""``smoothseg_plan_and_preprocess -d 7``: fingerprint, plan both tasks, write splits, preprocess."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from smoothseg.cli.common import make_parser, run
from smoothseg.planning.planner import summarize
from smoothseg.planning.plans import TASKS
from smoothseg.planning.splits import SCHEMES
from smoothseg.workflows.plan_and_preprocess import DatasetIntegrityError, plan_and_preprocess


def _body(args: argparse.Namespace) -> int:
    try:
        result = plan_and_preprocess(args.d, tuple(args.c), args.np, args.verify_dataset_integrity, not args.no_pp,
                                     args.clean, args.gpu_memory_target, args.split_scheme, args.overwrite_plans)
    except DatasetIntegrityError as exc:
        print(exc.report.summary())
        print("dataset has problems; nothing was written")
        return 1
    print(summarize(result.plans))
    print(f"plans, fingerprint and splits: {result.folder}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = make_parser("smoothseg_plan_and_preprocess",
                         "Fingerprint a raw dataset, plan the liver and tumor configurations, and preprocess.")
    parser.add_argument("-d", required=True, help="dataset id or name (7, 007, Dataset007_HCCTACESeg)")
    parser.add_argument("-c", nargs="+", default=list(TASKS), choices=TASKS, help="configurations to preprocess")
    parser.add_argument("-np", type=int, default=2, help="worker processes for fingerprint and preprocessing")
    parser.add_argument("--verify_dataset_integrity", action="store_true",
                        help="verify the raw dataset first; write nothing if it is broken")
    parser.add_argument("--no_pp", action="store_true", help="plan only, do not preprocess")
    parser.add_argument("--clean", action="store_true", help="redo the fingerprint and all preprocessed cases")
    parser.add_argument("-gpu_memory_target", type=float, default=8.0,
                        help="GPU memory budget in GB for patch, batch size and network width")
    parser.add_argument("--split-scheme", dest="split_scheme", choices=SCHEMES, default="kfold",
                        help="kfold: 5 folds; holdout: the paper's 3 replications of a random 80/20 split")
    parser.add_argument("--overwrite_plans", action="store_true",
                        help="replace an existing (possibly hand-edited) plans.json with a fresh plan")
    return run(parser, _body, argv)


if __name__ == "__main__":
    raise SystemExit(main())

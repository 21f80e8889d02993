"""``smoothseg_make_demo_dataset [-d 900] [-n 24] [--seed 0] [--size small|full]``: write the synthetic dataset."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from smoothseg.cli.common import make_parser, run
from smoothseg.synthetic.demo_dataset import DEMO_DATASET_ID, make_demo_dataset


def _body(args: argparse.Namespace) -> int:
    folder = make_demo_dataset(Path(args.o) if args.o else None, args.d, args.n, args.seed, args.size, args.np,
                               args.overwrite, clinical_signal=args.clinical_signal)
    print(f"synthetic dataset: {folder}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = make_parser("smoothseg_make_demo_dataset",
                         "Write the synthetic liver-tumour CT dataset (phantoms in HU, labels, clinical table).")
    parser.add_argument("-d", type=int, default=DEMO_DATASET_ID, help="dataset id")
    parser.add_argument("-n", type=int, default=24, help="number of cases (the last quarter become test cases)")
    parser.add_argument("--seed", type=int, default=0, help="random seed; the same seed gives identical files")
    parser.add_argument("--size", choices=("small", "full"), default="small",
                        help="small: ~128x128x48 voxels (tests, CPU demo); full: ~512x512x100 (benchmarks)")
    parser.add_argument("-np", type=int, default=1, help="number of worker processes")
    parser.add_argument("-o", help="raw root to write into (default: the raw root, $SMOOTHSEG_RAW)")
    parser.add_argument("--overwrite", action="store_true", help="replace a dataset made with other settings")
    parser.add_argument("--clinical-signal", dest="clinical_signal", type=float, default=1.0,
                        help="how much the clinical variables know about the tumour burden: 0 nothing, 1 the "
                             "demo's data, 2 less noise (out-of-fold R² about 0, 0.8, 0.86 on simulated patients)")
    return run(parser, _body, argv)


if __name__ == "__main__":
    raise SystemExit(main())

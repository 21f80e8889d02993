"""``smoothseg_verify_dataset -d 900``: report every problem of a raw dataset; exit 1 when there are any."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from smoothseg.cli.common import make_parser, run
from smoothseg.dataset.verify import verify_dataset


def _body(args: argparse.Namespace) -> int:
    target = Path(args.folder) if args.folder else args.d
    report = verify_dataset(target, num_processes=args.np)
    print(report.summary())
    print("dataset is clean" if report.ok else "dataset has problems")
    return 0 if report.ok else 1


def main(argv: Sequence[str] | None = None) -> int:
    parser = make_parser("smoothseg_verify_dataset", "Check a raw dataset and report all problems at once.")
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("-d", help="dataset id or name under the raw root (7, 007, Dataset007_HCCTACESeg)")
    where.add_argument("--folder", help="a dataset folder anywhere on disk")
    parser.add_argument("-np", type=int, default=1, help="number of worker processes")
    return run(parser, _body, argv)


if __name__ == "__main__":
    raise SystemExit(main())

"""``smoothseg_export_model -d DATASET -o model.zip``: pack a trained liver + tumour model pair into one zip."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from smoothseg.cli.common import make_parser, run
from smoothseg.models.archive import export_models


def _body(args: argparse.Namespace) -> int:
    path = export_models(args.d, args.o, folds=args.f, trainer=args.tr, checkpoint=args.chk)
    print(f"exported model: {path}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = make_parser("smoothseg_export_model", "Write the trained liver and tumor models of a dataset "
                                                   "(checkpoints, plans.json, manifest) as one zip.")
    parser.add_argument("-d", default=None, help="dataset id or name; None: the only dataset with trained liver "
                                                 "and tumor models")
    parser.add_argument("-o", required=True, type=Path, help="output zip file")
    parser.add_argument("-f", nargs="+", default=None, help="folds to export; None: every fold with the checkpoint")
    parser.add_argument("-tr", default="SmoothSegTrainer", help="trainer whose models to export")
    parser.add_argument("-chk", default="checkpoint_final.pth", help="checkpoint file name in each fold folder")
    return run(parser, _body, argv)


if __name__ == "__main__":
    raise SystemExit(main())

"""``smoothseg_install_model model.zip``: validate and install an exported model pair under the results root."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from smoothseg.cli.common import make_parser, run
from smoothseg.models.archive import install_models


def _body(args: argparse.Namespace) -> int:
    pair = install_models(args.zip, overwrite=args.overwrite)
    print(f"installed model: {pair.describe()} in {pair.dataset_folder}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = make_parser("smoothseg_install_model", "Install a model zip written by smoothseg_export_model into "
                                                    "the results root ($SMOOTHSEG_RESULTS).")
    parser.add_argument("zip", type=Path, help="the model zip")
    parser.add_argument("--overwrite", action="store_true", help="replace the fold folders the zip holds")
    return run(parser, _body, argv)


if __name__ == "__main__":
    raise SystemExit(main())

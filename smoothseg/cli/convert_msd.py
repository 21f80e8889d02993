"""``smoothseg_convert_msd -i Task03_Liver``: build Dataset003_MSDLiver from MSD Task03_Liver or LiTS files.

Exit codes: 0 when the dataset was written (cases that could not be converted are listed, see
``conversion_report.json``), 2 on an input error or when no training case could be converted.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from dataset_conversion.msd_liver import DATASET_ID, DATASET_NAME, convert_msd_liver
from smoothseg.cli.common import make_parser, run


def _body(args: argparse.Namespace) -> int:
    result = convert_msd_liver(Path(args.i), dataset_id=args.d, name=args.name,
                               output_root=Path(args.o) if args.o else None, overwrite=args.overwrite,
                               progress=not args.quiet)
    print(result.report.summary())
    print(f"dataset written to {result.folder}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = make_parser("smoothseg_convert_msd",
                         "Convert MSD Task03_Liver (imagesTr/labelsTr) or LiTS (volume-N/segmentation-N) files "
                         "to a raw dataset.")
    parser.add_argument("-i", required=True, metavar="DIR",
                        help="the Task03_Liver folder, or a folder holding the LiTS files")
    parser.add_argument("-d", type=int, default=DATASET_ID, metavar="ID", help="dataset id")
    parser.add_argument("--name", default=DATASET_NAME, help="dataset name (DatasetXXX_<name>)")
    parser.add_argument("-o", metavar="DIR",
                        help="raw root to write into; when not given, the raw root ($SMOOTHSEG_RAW or its default)")
    parser.add_argument("--overwrite", action="store_true", help="replace an earlier conversion in the target folder")
    return run(parser, _body, argv)


if __name__ == "__main__":
    raise SystemExit(main())

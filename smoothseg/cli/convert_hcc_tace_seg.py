"""``smoothseg_convert_hcc_tace_seg -i <TCIA download> -c <clinical.xlsx>``: build Dataset007_HCCTACESeg.

Exit codes: 0 when the dataset was written (patients that could not be converted are listed, see
``conversion_report.json``), 1 when the clinical spreadsheet could not be used, 2 on an input error or when no
patient could be converted.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from dataset_conversion.hcc_tace_seg import convert_hcc_tace_seg
from smoothseg.cli.common import make_parser, run


def _body(args: argparse.Namespace) -> int:
    result = convert_hcc_tace_seg(
        Path(args.i), Path(args.c) if args.c else None, dataset_id=args.d,
        output_root=Path(args.o) if args.o else None, overwrite=args.overwrite, keep_necrosis=args.keep_necrosis,
        complete_phase=args.complete_phase, progress=not args.quiet,
    )
    print(result.report.summary())
    print(f"dataset written to {result.folder}")
    if result.clinical_error:
        print(f"clinical table not written: {result.clinical_error}")
        return 1
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = make_parser("smoothseg_convert_hcc_tace_seg",
                         "Convert the TCIA HCC-TACE-Seg collection (CT + DICOM SEG + clinical xlsx) to a raw dataset.")
    parser.add_argument("-i", required=True, metavar="DIR",
                        help="folder downloaded with the NBIA Data Retriever (any layout)")
    parser.add_argument("-c", metavar="XLSX",
                        help="clinical spreadsheet (HCC-TACE-Seg_clinical_data-V2.xlsx); without it the dataset has no "
                             "clinical table and the TLVR term is off")
    parser.add_argument("-d", type=int, default=7, metavar="ID", help="dataset id")
    parser.add_argument("-o", metavar="DIR",
                        help="raw root to write into; when not given, the raw root ($SMOOTHSEG_RAW or its default)")
    parser.add_argument("--overwrite", action="store_true", help="replace an earlier conversion in the target folder")
    parser.add_argument("--keep-necrosis", action="store_true",
                        help="keep the Necrosis segment as label 5 instead of merging it into the tumour (2)")
    parser.add_argument("--complete-phase", action="store_true",
                        help="when the SEG references only part of a contrast phase, convert the whole phase")
    return run(parser, _body, argv)


if __name__ == "__main__":
    raise SystemExit(main())

"""``smoothseg_review -i IMAGES -p PREDICTIONS [-r REFERENCES] -o review.html``: one self-contained review page."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from smoothseg.cli.common import make_parser, run
from smoothseg.evaluation.review import write_review


def _body(args: argparse.Namespace) -> int:
    path = write_review(args.i, args.p, args.o, references_dir=args.r, dataset=args.d, title=args.title,
                        max_slices=args.slices, max_size=args.size)
    print(f"review page: {path} ({path.stat().st_size / 1e6:.1f} MB); open it in any browser")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = make_parser("smoothseg_review", "Write one self-contained HTML page to review a cohort's predictions: "
                         "a sortable case table and, per case, a slice scroller with liver and tumour outlines "
                         "(prediction and reference side by side).")
    parser.add_argument("-i", required=True, type=Path, help="the CT images, as smoothseg_predict -i takes them "
                                                             "(<case>_0000<ending>, <case><ending>, or DICOM series "
                                                             "sub-folders)")
    parser.add_argument("-p", required=True, type=Path, help="folder of the predicted label maps (0/1/2)")
    parser.add_argument("-r", type=Path, default=None, help="folder of reference label maps (adds Dice and a "
                                                            "reference view)")
    parser.add_argument("-d", default=None, help="dataset whose task_regions map the reference labels")
    parser.add_argument("-o", required=True, type=Path, help="the HTML file to write")
    parser.add_argument("--title", default=None, help="page title (default: the predictions folder's name)")
    parser.add_argument("--slices", type=int, default=16, help="axial slices per case, through the liver")
    parser.add_argument("--size", type=int, default=192, help="largest side of a slice picture in pixels")
    return run(parser, _body, argv)


if __name__ == "__main__":
    raise SystemExit(main())

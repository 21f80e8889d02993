"""``smoothseg_plot_overlay -i IMAGE -s SEG [-r REF] -o out.png``: axial, coronal and sagittal contour overlay."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from smoothseg.cli.common import make_parser, run
from smoothseg.evaluation.overlay import DEFAULT_WINDOW
from smoothseg.evaluation.overlay_files import plot_overlay_files


def _body(args: argparse.Namespace) -> int:
    path = plot_overlay_files(Path(args.i), Path(args.s), Path(args.o), reference=Path(args.r) if args.r else None,
                              window=tuple(args.window), dataset=args.d, title=args.title)
    print(f"overlay: {path}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = make_parser("smoothseg_plot_overlay", "Draw a CT with segmentation contours in three planes through "
                         "the largest lesion (or the liver centre).")
    parser.add_argument("-i", required=True, help="CT image")
    parser.add_argument("-s", required=True, help="segmentation (0 background, 1 liver, 2 tumour)")
    parser.add_argument("-r", help="reference label map, drawn dashed")
    parser.add_argument("-o", required=True, help="PNG to write")
    parser.add_argument("--window", nargs=2, type=float, default=list(DEFAULT_WINDOW), metavar=("LO", "HI"),
                        help="intensity window")
    parser.add_argument("-d", help="dataset whose task_regions map the reference's raw labels (default liver "
                                   "{1, 2}, tumour {2})")
    parser.add_argument("--title", help="title (default: the case id from the image file name)")
    return run(parser, _body, argv)


if __name__ == "__main__":
    raise SystemExit(main())

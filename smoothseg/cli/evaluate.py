"""``smoothseg_evaluate -ref LABELS -pred PREDICTIONS``: metrics, size strata and overlays; or ``--replications``."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from smoothseg.cli.common import make_parser, nnunet_only, run
from smoothseg.errors import SmoothSegError
from smoothseg.evaluation.evaluate import evaluate, output_paths
from smoothseg.evaluation.replication import replication_markdown, write_replication_summary
from smoothseg.evaluation.strata import paper_table_markdown


def _replications(args: argparse.Namespace) -> int:
    output = Path(args.o) if args.o else None
    replicated = write_replication_summary([Path(p) for p in args.replications], output)
    print(replication_markdown(replicated))
    if output is not None:
        print(f"replication summary: {output}")
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    missing = [flag for flag, value in (("-ref", args.ref), ("-pred", args.pred)) if not value]
    if missing:
        raise SmoothSegError(f"{' and '.join(missing)} required (or use --replications SUMMARY.json ...)")
    output = Path(args.o) if args.o else Path(args.pred) / "summary.json"
    summary = evaluate(Path(args.ref), Path(args.pred), output, dataset=args.d,
                       clinical_csv=Path(args.clinical) if args.clinical else None, num_processes=args.np,
                       png=args.png, images_dir=Path(args.img) if args.img else None)
    print(paper_table_markdown(summary["strata"]))
    if args.d is None:
        regions = summary["regions"]
        print(f"\nReference labels assumed without -d: liver region {regions['reference_liver_labels']}, tumour "
              f"{regions['reference_tumor_labels']}; other values count as background. Pass -d DATASET to use its "
              "dataset.json task_regions (e.g. a vessel label inside the liver).")
    glob = summary["global"]
    print(f"\n{summary['n_cases']} case(s); global (pooled) Dice: liver {_fmt(glob['liver_dice_global'])}, "
          f"tumour {_fmt(glob['tumor_dice_global'])}")
    paths = output_paths(output)
    print(f"summary: {paths.summary_json}\nper case: {paths.cases_csv}\ntable: {paths.markdown}")
    for overlay in summary["overlays"]:
        print(f"overlay ({overlay['role']}): {overlay['file']}")
    return 0


def _fmt(value: float | None) -> str:
    return "–" if value is None else f"{value:.3f}"


def _body(args: argparse.Namespace) -> int:
    if args.folders:
        if len(args.folders) != 2 or args.ref or args.pred:
            raise SmoothSegError("give the folders either as two positional arguments REF PRED or as -ref/-pred, "
                                 f"got {args.folders}")
        args.ref, args.pred = args.folders
    if args.replications:
        if args.ref or args.pred:
            raise SmoothSegError("--replications summarises finished evaluations; do not combine it with -ref/-pred")
        return _replications(args)
    return _evaluate(args)


def main(argv: Sequence[str] | None = None) -> int:
    parser = make_parser("smoothseg_evaluate", "Evaluate predicted label maps against references: per-case and "
                         "pooled metrics, the paper's size strata, overlays; or summarise replications.")
    parser.add_argument("folders", nargs="*", metavar="REF PRED",
                        help="the reference and prediction folders, positional as for nnUNetv2_evaluate_folder "
                             "(same as -ref REF -pred PRED)")
    parser.add_argument("-ref", help="folder of reference label maps (<case><ending>)")
    parser.add_argument("-pred", help="folder of predicted label maps (0 background, 1 liver, 2 tumour)")
    parser.add_argument("-d", help="dataset id or name whose dataset.json task_regions map the reference labels "
                                   "(default: liver region {1, 2}, tumour {2})")
    parser.add_argument("-clinical", help="clinical CSV whose Tr_Size column (cm) gives the maximal tumour diameter "
                                          "for the strata (case id column: case_id, else the first)")
    parser.add_argument("-o", help="summary JSON to write (default: PRED/summary.json; with --replications: "
                                   "none, print only)")
    parser.add_argument("--png", action="store_true", help="write overlays of the best and worst case to overlays/")
    parser.add_argument("-img", help="folder of CT images for --png (<case>_0000<ending> or <case><ending>)")
    parser.add_argument("-np", type=int, default=1, help="number of worker processes")
    parser.add_argument("--replications", nargs="+", metavar="SUMMARY_JSON",
                        help="summary.json files (or folders holding one) of several runs: report mean ± std "
                             "across runs")
    nnunet_only(parser, {
        "-djfile": "give the dataset with -d DATASET; its dataset.json maps the reference labels",
        "-pfile": "evaluation needs no plans",
        "-l": "the labels are fixed: liver region and tumour (from -d DATASET's task_regions)",
    })
    return run(parser, _body, argv)


if __name__ == "__main__":
    raise SystemExit(main())

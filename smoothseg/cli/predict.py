"""``smoothseg_predict -i IN -o OUT``: liver + tumour segmentation of new CTs with the trained cascade."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from smoothseg.cli.common import make_parser, nnunet_only, run
from smoothseg.device import PRECISION_CHOICES, resolve_device
from smoothseg.errors import SmoothSegError
from smoothseg.inference.cascade import ModelOptions
from smoothseg.inference.cohort import CohortOptions, predict
from smoothseg.inference.dask_cohort import DaskSettings, predict_on_dask
from smoothseg.inference.engines import ENGINE_CHOICES
from smoothseg.inference.operating_point import ARGMAX, threshold_value


def _non_negative(text: str) -> float:
    value = float(text)
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be a non-negative number of ml, got {text}")
    return value


def _threshold(text: str) -> str | float:
    if text == ARGMAX:
        return text
    try:
        return threshold_value(float(text))
    except (ValueError, SmoothSegError) as exc:
        raise argparse.ArgumentTypeError(f"must be 'argmax' or a probability between 0 and 1, got {text}") from exc


def _confidence(text: str) -> float:
    value = float(text)
    if not 0.0 <= value < 1.0:
        raise argparse.ArgumentTypeError(f"must be a probability in [0, 1), got {text}")
    return value


def _body(args: argparse.Namespace) -> int:
    models = ModelOptions(
        device=resolve_device(args.device), step_size=args.step_size,
        tta=False if args.disable_tta else (True if args.tta else None), precision=args.precision, engine=args.engine,
        save_probabilities=args.save_probabilities,
        active_contour="off" if args.no_active_contour else args.active_contour,
        min_lesion_volume_ml=args.min_lesion_ml, tumor_threshold=args.tumor_threshold,
        min_lesion_confidence=args.min_lesion_confidence)
    options = CohortOptions(
        output_format=args.output_format, continue_prediction=args.continue_prediction,
        num_processes_preprocessing=args.npp,
        num_processes_postprocessing=args.nps, num_parts=args.num_parts, part_id=args.part_id,
        clinical_csv=args.clinical, progress=not args.quiet, allow_non_ct=args.allow_non_ct,
        resample_irregular=args.resample_irregular)
    if args.dask_workers is not None or args.dask_scheduler is not None:
        summary = predict_on_dask(args.i, args.o, DaskSettings(args.dask_workers, args.dask_scheduler), dataset=args.d,
                                  folds=args.f, checkpoint=args.chk, trainer=args.tr, models=models, options=options)
    else:
        summary = predict(args.i, args.o, dataset=args.d, folds=args.f, checkpoint=args.chk, trainer=args.tr,
                          models=models, options=options)
    print(summary.text(), file=sys.stderr if summary.failed else sys.stdout)
    return 0 if summary.ok else 1


def main(argv: Sequence[str] | None = None) -> int:
    parser = make_parser("smoothseg_predict", "Segment liver (label 1) and liver tumours (label 2) in CT images with "
                                              "the trained liver -> tumour cascade, and write a tumour report.")
    parser.add_argument("-i", required=True, type=Path,
                        help="input folder of <case>_0000<ending> (nnU-Net naming) or <case><ending> images or of "
                             "DICOM series sub-folders, "
                             "or one image file")
    parser.add_argument("-o", required=True, type=Path, help="output folder")
    parser.add_argument("-d", default=None, help="dataset id or name of the models; None: the only dataset under "
                                                 "the results root with trained liver and tumor models")
    parser.add_argument("-f", nargs="+", default=None, help="folds to ensemble; None: every fold with the checkpoint")
    parser.add_argument("-chk", default="checkpoint_final.pth", help="checkpoint file name in each fold folder")
    parser.add_argument("-tr", default="SmoothSegTrainer", help="trainer whose models to use")
    parser.add_argument("-device", default="auto", help="auto, cuda, cpu or mps")
    parser.add_argument("--step-size", "--step_size", "-step_size", dest="step_size", type=float, default=0.5,
                        help="sliding-window step as a fraction of the patch size")
    parser.add_argument("--save_probabilities", "--save-probabilities", dest="save_probabilities",
                        action="store_true",
                        help="also write <case>.npz with the tumour probability map (float16; for calibration)")
    parser.add_argument("--precision", choices=PRECISION_CHOICES, default="auto",
                        help="network arithmetic: auto = fp16 on CUDA, bf16 on a CPU with bfloat16 units, else fp32")
    parser.add_argument("--engine", choices=ENGINE_CHOICES, default="auto",
                        help="what runs the networks: auto = openvino on a CPU where it is installed "
                             "(pip install \"smoothseg[cpu-fast]\"), else torch; onnxruntime (float32) for comparison")
    tta = parser.add_mutually_exclusive_group()
    tta.add_argument("--disable_tta", "--disable-tta", dest="disable_tta", action="store_true",
                     help="no mirroring test-time augmentation (the default on CPU)")
    tta.add_argument("--tta", action="store_true", help="mirroring test-time augmentation also on CPU (8x slower)")
    parser.add_argument("--active-contour", "--active_contour", dest="active_contour", choices=("auto", "on", "off"),
                        default="auto", help="per-lesion active contours: auto runs what the fold validation chose "
                                             "(postprocessing.json; none without a validation), on the plan's "
                                             "settings, off none")
    parser.add_argument("--no-active-contour", "--no_active_contour", dest="no_active_contour", action="store_true",
                        help="the same as --active-contour off")
    parser.add_argument("--min-lesion-ml", "--min_lesion_ml", dest="min_lesion_ml", type=_non_negative, default=None,
                        help="tumour components below this volume (ml) become liver; default: the volume chosen on "
                             "the models' validation folds (postprocessing.json), none without one; 0: keep all")
    parser.add_argument("--tumor-threshold", "--tumor_threshold", dest="tumor_threshold", type=_threshold,
                        default=None,
                        help="a liver voxel is tumour when its tumour probability is at least this (0-1), or "
                             "'argmax' for the network's own decision; default: the operating point chosen on the "
                             "models' validation folds (postprocessing.json), argmax without one")
    parser.add_argument("--min-lesion-confidence", dest="min_lesion_confidence", type=_confidence, default=None,
                        help="drop lesions whose highest tumour probability is below this (0-1; 0 keeps all); "
                             "default: the one chosen on the models' validation folds (postprocessing.json)")
    parser.add_argument("--resample-irregular", dest="resample_irregular", action="store_true",
                        help="resample DICOM series with missing slices or a sheared (tilted-gantry) stack onto a "
                             "regular orthogonal grid instead of refusing them; the label map lies on that grid and "
                             "the report says so")
    parser.add_argument("--allow-non-ct", dest="allow_non_ct", action="store_true",
                        help="read DICOM series whose Modality is not CT (refused by default: the models are CT "
                             "models); for users who know what they do")
    parser.add_argument("--output-format", "--output_format", dest="output_format", default=None,
                        help="file ending of the label maps (.nii.gz, .nii, .nrrd, .mha, ...), seg.nrrd (3D Slicer "
                             "segmentation) or dcm (DICOM SEG, for DICOM inputs); default: the input's (.nii.gz for "
                             "DICOM)")
    parser.add_argument("--continue", "--continue_prediction", dest="continue_prediction", action="store_true",
                        help="skip cases whose outputs this same model already wrote (outputs of another model are "
                             "redone); without it every case is predicted, replacing existing outputs, as in nnU-Net")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace existing outputs: the default, accepted for older scripts")
    parser.add_argument("-npp", type=int, default=2, help="processes reading and preprocessing the next cases "
                                                          "(0: in the main process)")
    parser.add_argument("-nps", type=int, default=2, help="processes refining and writing finished cases "
                                                          "(0: in the main process)")
    parser.add_argument("--num-parts", "--num_parts", "-num_parts", dest="num_parts", type=int, default=1,
                        help="split the cohort into this many parts (run one process per part)")
    parser.add_argument("--part-id", "--part_id", "-part_id", dest="part_id", type=int, default=0,
                        help="which part this process predicts (0 .. num-parts - 1)")
    cluster = parser.add_mutually_exclusive_group()
    cluster.add_argument("--dask-workers", dest="dask_workers", type=int, default=None,
                         help="predict the cases as tasks on a local Dask cluster of N worker processes "
                              "(pip install -e '.[cluster]')")
    cluster.add_argument("--dask-scheduler", dest="dask_scheduler", default=None,
                         help="predict the cases on the Dask cluster behind this scheduler address (e.g. from "
                              "dask-jobqueue on SLURM; see documentation/scaling.md)")
    parser.add_argument("--clinical", type=Path, default=None,
                        help="CSV of clinical variables (case_id column) for the clinical TLVR prediction")
    nnunet_only(parser, {
        "-c": "there are no configurations to choose; the cascade always runs its liver and tumour models",
        "-p": "each dataset has one plans.json, stored inside its checkpoints",
        "-pretrained_weights": "prediction uses the trained checkpoints (-chk)",
    })
    return run(parser, _body, argv)


if __name__ == "__main__":
    raise SystemExit(main())

"""``smoothseg_ablate -d ID -f FOLDS --seeds N``: train and compare the method with each component taken away."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from smoothseg.cli.common import make_parser, run
from smoothseg.device import PRECISION_CHOICES, resolve_device
from smoothseg.masks.label_noise import LabelNoise
from smoothseg.workflows.ablation import VARIANTS, AblationSettings, run_ablation
from smoothseg.workflows.training_arms import TrainingArm


def _noise(text: str) -> LabelNoise:
    try:
        return LabelNoise.parse(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _body(args: argparse.Namespace) -> int:
    settings = AblationSettings(
        dataset=args.d, folds=tuple(args.f), seeds=tuple(range(args.seeds)), variants=tuple(args.variants),
        liver_epochs=args.liver_epochs, tumor_epochs=args.tumor_epochs, iters_per_epoch=args.iters_per_epoch,
        val_iters=args.val_iters, device=resolve_device(args.device), precision=args.precision,
        num_workers=args.num_workers, num_processes=args.np, step_size=args.step_size,
        arm=TrainingArm(noise=args.label_noise, fraction=args.train_fraction, unlabelled_rest=args.unlabelled_rest))
    folder = run_ablation(settings)
    print((folder / "ablation.md").read_text())
    print(f"ablation: {folder / 'ablation.json'}, {folder / 'ablation.md'}, {folder / 'reliability.png'}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = make_parser("smoothseg_ablate", "Train each variant of the method with one component taken away, "
                                             "predict the folds' validation cases and compare them with the full "
                                             "method (tables in <results>/<dataset>/ablation/).")
    parser.add_argument("-d", required=True, help="dataset id or name")
    parser.add_argument("-f", nargs="+", default=["0"], help="folds whose validation cases are compared")
    parser.add_argument("--seeds", type=int, default=3, help="training seeds 0..N-1 per variant")
    parser.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS),
                        help="variants to run (full is always included)")
    parser.add_argument("--liver-epochs", dest="liver_epochs", type=int, default=1000)
    parser.add_argument("--tumor-epochs", dest="tumor_epochs", type=int, default=1000)
    parser.add_argument("--iters-per-epoch", dest="iters_per_epoch", type=int, default=250)
    parser.add_argument("--val-iters", dest="val_iters", type=int, default=50)
    parser.add_argument("-device", default="auto", help="auto, cuda, cpu or mps")
    parser.add_argument("--precision", choices=PRECISION_CHOICES, default="auto",
                        help="autocast in training and prediction (see smoothseg_train)")
    parser.add_argument("--step-size", dest="step_size", type=float, default=0.5, help="sliding-window step")
    parser.add_argument("--num-workers", dest="num_workers", type=int, default=None,
                        help="augmentation worker processes per training run")
    parser.add_argument("-np", type=int, default=1, help="processes for the single-stage model's and the label-noise "
                                                         "arm's preprocessing")
    parser.add_argument("--label-noise", dest="label_noise", type=_noise, default=None, metavar="KIND:LEVEL",
                        help="train on corrupted tumour labels (boundary:MM, bias:MM, drop:ML, miss:P); validation "
                             "references stay clean; results under ablation/arms/")
    parser.add_argument("--train-fraction", dest="train_fraction", type=float, default=1.0,
                        help="train on a seeded subset of this share of each fold's training cases")
    parser.add_argument("--unlabelled-rest", dest="unlabelled_rest", action="store_true",
                        help="with --train-fraction: the cases left out stay as unlabelled cases (image + clinical "
                             "row; the tumour model learns from them through the knowledge term only)")
    return run(parser, _body, argv)


if __name__ == "__main__":
    raise SystemExit(main())

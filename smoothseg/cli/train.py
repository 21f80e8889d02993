"""``smoothseg_train DATASET {liver,tumor} FOLD``: train one configuration on one fold (also as ``torchrun
--nproc_per_node N --no-python smoothseg_train ...``, one process per GPU)."""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence

from smoothseg.cli.common import make_parser, nnunet_only, run
from smoothseg.device import PRECISION_CHOICES, resolve_device
from smoothseg.inference.operating_point import OBJECTIVES
from smoothseg.planning.plans import TASKS
from smoothseg.training.config import DEFAULT_LR, TrainingConfig
from smoothseg.training.distributed import from_environment
from smoothseg.training.trainer import TRAINERS
from smoothseg.workflows.training import train_and_validate, validate_only


def _body(args: argparse.Namespace) -> int:
    config = TrainingConfig(
        dataset=args.dataset, task=args.configuration, fold=args.fold, trainer=args.tr, device=args.device,
        epochs=args.epochs, iters_per_epoch=args.iters_per_epoch, val_iters=args.val_iters, optimizer=args.optimizer,
        initial_lr=args.lr, batch_dice=not args.sample_dice, tlvr_weight=args.tlvr_weight, vae=not args.no_vae,
        deep_supervision=args.deep_supervision, mask_leak_mm=args.mask_leak_mm, patience=args.patience,
        lesion_sampling=args.lesion_sampling, lesion_alpha=args.lesion_alpha, clean_liver=args.clean_liver,
        lesion_synthesis=args.lesion_synthesis, compile=args.compile,
        precision=args.precision, num_workers=args.num_workers, gpu_augmentation=args.gpu_augmentation,
        seed=args.seed, continue_training=args.c,
        overwrite=args.overwrite, validate=not args.no_val, pp_objective=args.pp_objective,
        unlabelled_every=args.unlabelled_every, liver_model=args.liver_model)
    device = resolve_device(args.device)
    ctx = from_environment()
    if not ctx.is_main:  # in a torchrun job rank 0 speaks for all
        logging.getLogger("smoothseg").setLevel(logging.WARNING)
    if args.val:
        print(f"validation: {validate_only(config, device)}")
        return 0
    output = train_and_validate(config, device)
    if ctx.is_main:
        print(f"trained model: {output}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = make_parser("smoothseg_train", "Train the liver or tumor configuration of a dataset on one fold.")
    parser.add_argument("dataset", help="dataset id or name (7, 007, Dataset007_HCCTACESeg)")
    parser.add_argument("configuration", choices=TASKS, help="liver (global view) or tumor (local view)")
    parser.add_argument("fold", help="fold number from splits.json, or 'all'")
    parser.add_argument("-tr", default="SmoothSegTrainer", help=f"trainer class ({', '.join(sorted(TRAINERS))})")
    parser.add_argument("-device", default="auto", help="auto, cuda, cpu or mps")
    parser.add_argument("--epochs", type=int, default=1000, help="number of epochs (may be raised with --c)")
    parser.add_argument("--iters-per-epoch", dest="iters_per_epoch", type=int, default=250)
    parser.add_argument("--val-iters", dest="val_iters", type=int, default=50, help="validation batches per epoch")
    parser.add_argument("--optimizer", choices=tuple(DEFAULT_LR), default="adamw",
                        help="adamw (SegResNetVAE's recipe) or sgd (nnU-Net's: Nesterov, momentum 0.99)")
    parser.add_argument("--lr", type=float, default=None,
                        help="initial learning rate, poly decay (default: " +
                             ", ".join(f"{k} {v:g}" for k, v in DEFAULT_LR.items()) + ")")
    parser.add_argument("--sample-dice", dest="sample_dice", action="store_true",
                        help="Dice per sample instead of over the batch")
    parser.add_argument("--c", action="store_true", help="continue from the last checkpoint")
    parser.add_argument("--overwrite", action="store_true",
                        help="train a fold that already holds a finished model again from scratch (deletes it)")
    parser.add_argument("--tlvr-weight", dest="tlvr_weight", type=float, default=0.5,
                        help="weight of the TLVR term (tumor task); 0 ablates it")
    parser.add_argument("--no-vae", dest="no_vae", action="store_true",
                        help="train the network without its VAE branch (ablation)")
    parser.add_argument("--deep-supervision", dest="deep_supervision", action=argparse.BooleanOptionalAction,
                        default=None,
                        help="also supervise the coarser decoder stages (a head on each, targets downsampled, weights "
                             "halving per scale; nnU-Net's scheme). Default: on for the tumor task (the ablation: "
                             "documentation/benchmarks.md), off for the liver task")
    parser.add_argument("--mask-leak-mm", dest="mask_leak_mm", type=float, default=15.0,
                        help="tumor task: a quarter of the training liver masks are dilated by 5 mm to this many mm, "
                             "as by a liver stage leaking into neighbouring tissue (default 15; 0 switches it off)")
    parser.add_argument("--lesion-sampling", dest="lesion_sampling", type=float,
                        default=TrainingConfig.lesion_sampling,
                        help="tumor task: share of the foreground patches centred on a reference lesion drawn per "
                             "lesion, so small lesions are seen as often as large ones (default %(default)s; 0: per "
                             "tumour voxel only)")
    parser.add_argument("--lesion-alpha", dest="lesion_alpha", type=float, default=TrainingConfig.lesion_alpha,
                        help="a lesion's weight in that draw: voxels ** -alpha (default %(default)s: uniform)")
    parser.add_argument("--clean-liver", dest="clean_liver", type=float, default=TrainingConfig.clean_liver,
                        help="tumor task: share of the non-foreground patches centred in reference liver with no "
                             "tumour in the patch, from tumour-free cases when there are any (default %(default)s; "
                             "0: off)")
    parser.add_argument("--lesion-synthesis", dest="lesion_synthesis", type=float,
                        default=TrainingConfig.lesion_synthesis,
                        help="tumor task: share of the training patches that get 1-3 small (3-15 mm) synthetic "
                             "lesions painted into their liver, with the contrast of the dataset's real lesions "
                             "(default %(default)s: off)")
    parser.add_argument("--patience", type=int, default=None, help="stop after N epochs without EMA improvement")
    parser.add_argument("--compile", action="store_true", help="torch.compile the network")
    parser.add_argument("--precision", choices=PRECISION_CHOICES, default="auto",
                        help="autocast: auto = fp16 on CUDA, fp32 elsewhere; bf16 on capable CPUs on request")
    parser.add_argument("--num-workers", dest="num_workers", type=int, default=None,
                        help="augmentation worker processes (default: CPU count - 1, or $SMOOTHSEG_NUM_WORKERS)")
    parser.add_argument("--gpu-augmentation", dest="gpu_augmentation", choices=("auto", "on", "off"), default="auto",
                        help="rotate, scale and the intensity transforms on the training device, batched, while the "
                             "workers only cut patches: auto = on CUDA; on = also on a CPU; off = batchgenerators "
                             "in the workers")
    parser.add_argument("--unlabelled-every", dest="unlabelled_every", type=int,
                        default=TrainingConfig.unlabelled_every,
                        help="tumor task, when dataset.json lists imagesUnlabelled cases (image + clinical row, no "
                             "label): one whole-liver knowledge-term step on one of them every N iterations, on the "
                             "liver the fold's liver model predicts (default %(default)s; 0 leaves them out)")
    parser.add_argument("--liver-model", dest="liver_model", default=None,
                        help="the liver checkpoint that crops the unlabelled cases (default: this fold's)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--val", action="store_true",
                        help="only run the full validation of a finished fold (cascade on its validation cases)")
    parser.add_argument("--no-val", dest="no_val", action="store_true",
                        help="skip the full validation at the end of training")
    parser.add_argument("--pp-objective", dest="pp_objective", choices=OBJECTIVES, default="f1",
                        help="what the full validation chooses the tumour operating point (voxel threshold, lesion "
                             "confidence, minimum lesion volume) for: f1 = lesion-level F1 with at most 0.5 "
                             "false-positive lesions per tumour-free liver (default), dice = mean per-case tumour Dice")
    nnunet_only(parser, {
        "-p": "each dataset has one plans.json (smoothseg_plan_and_preprocess)",
        "-pretrained_weights": "training starts from --seed's initialisation, or continues a fold with --c",
        "-num_gpus": "run smoothseg_train under torchrun for several GPUs",
    })
    return run(parser, _body, argv)


if __name__ == "__main__":
    raise SystemExit(main())

"""The run settings of a training (the ``smoothseg_train`` flags). Plans hold everything about data and network."""

from __future__ import annotations

from dataclasses import dataclass

#: Initial learning rate of each optimizer when none is given (poly decay to 0 over the run).
DEFAULT_LR = {"adamw": 1e-3, "sgd": 1e-2}

#: Settings a continued (``--c``) tumour run must keep, with the value of runs from before each option.
RESUME_KEPT = {"mask_leak_mm": 0.0, "lesion_sampling": 0.0, "lesion_alpha": 0.0, "clean_liver": 0.0,
               "lesion_synthesis": 0.0, "deep_supervision": 0.0}
#: Of those, the ones that concern both tasks (the others only the tumour task's sampling).
RESUME_KEPT_ANY_TASK = ("deep_supervision",)


@dataclass
class TrainingConfig:
    """Run settings (CLI flags); every field is JSON-able, as it is stored in ``run_config.json`` and checkpoints."""

    dataset: str
    task: str
    fold: str  # "0".."k-1" or "all"
    trainer: str = "SmoothSegTrainer"
    device: str = "auto"
    epochs: int = 1000
    iters_per_epoch: int = 250
    val_iters: int = 50
    optimizer: str = "adamw"  # "adamw" (SegResNetVAE's recipe) or "sgd" (nnU-Net's)
    initial_lr: float | None = None  # None: DEFAULT_LR[optimizer]
    weight_decay: float = 3e-5
    momentum: float = 0.99  # SGD only
    batch_dice: bool = True
    grad_clip: float = 12.0
    vae_weight: float = 0.1
    vae: bool = True  # False: the network without its VAE branch (the ablation's no_vae)
    # A loss on every coarser decoder stage too (nnU-Net's weights). None: the measured default, on for the tumour
    # task (the ablation, benchmarks.md), off for the liver task (not measured there); resolved at construction.
    deep_supervision: bool | None = None
    tlvr_weight: float = 0.5
    oversample_foreground: float = 0.33
    mask_jitter_mm: float = 5.0
    mask_leak_mm: float = 15.0  # tumour task: a quarter of the liver masks dilated 5-15 mm (0: off)
    lesion_sampling: float = 0.5  # tumour task: share of foreground patches centred on a lesion drawn per lesion
    lesion_alpha: float = 0.0  # a lesion's draw weight is voxels ** -lesion_alpha (0: uniform over lesions)
    clean_liver: float = 0.25  # tumour task: share of the other patches centred in tumour-free reference liver
    lesion_synthesis: float = 0.0  # tumour task: share of patches with 1-3 small synthetic lesions painted in (0: off)
    patience: int | None = None
    compile: bool = False
    precision: str = "auto"  # autocast dtype (smoothseg.device.autocast_dtype): fp16 on CUDA, bf16 on capable CPUs
    num_workers: int | None = None
    gpu_augmentation: str = "auto"  # augment on the training device: auto (on CUDA), on, off (batchgenerators on CPU)
    seed: int = 0
    continue_training: bool = False
    overwrite: bool = False  # train a finished fold again from scratch (its previous outputs are removed)
    validate: bool = True  # run the cascade on the fold's validation cases once both tasks are trained
    pp_objective: str = "f1"  # what the validation chooses the tumour operating point for: "f1" or "dice"
    # Tumour task, unlabelled cases (dataset.json's imagesUnlabelled, a fold's "unlabelled" in splits.json): one
    # whole-liver knowledge-term step every this many iterations (0: off); smoothseg.training.unlabelled.
    unlabelled_every: int = 10
    liver_model: str | None = None  # the liver checkpoint that crops them (None: this fold's, same results root)

    def __post_init__(self) -> None:
        if self.deep_supervision is None:
            self.deep_supervision = self.task == "tumor"

"""Inference cascade: seconds per stage and peak memory for one phantom, with and without mirroring TTA.

Self-contained: writes a synthetic dataset of ``--size`` (``full``: 512 x 512 x ~100 at clinical spacing; ``small``:
128 x 128 x ~48) into a scratch folder, plans it with the real planner (``plan_and_preprocess`` without
preprocessing, so the network widths and patch sizes are those a user would get for such data under
``--gpu-memory-target``), writes freshly initialised (untrained) liver and tumour checkpoints, and then, in a fresh
child process per setting, times on the test case:

* read + preprocess: ``read_image`` and the liver stage's preprocessing;
* liver stage: sliding window on the whole volume, revert, argmax, largest component + hole filling;
* tumour stage: preprocessing of the liver crop (masked), sliding window, revert on the crop;
* active contours: ``refine_tumours`` on every lesion;
* write: the label map (atomic) and the report.

An untrained liver model predicts nonsense, so the tumour stage and the active contours run on the phantom's
reference liver and tumours (their work depends on the liver crop and the lesions, which are then realistic).
Peak memory is the child's peak RSS. The budget is "the model" plus 4x the float32 input volume (the input, its
preprocessed copy and two class maps on the original grid); "the model" is measured as the peak RSS after loading the
networks and predicting one patch-sized zero image through each stage (weights plus one tile's working set: the
activations of its forward pass, its softmax and, with TTA, the flipped copy and the running sum over the flips; they
depend on the plan's patch size, width and TTA but not on the input).

With ``--nnunet-venv`` (a virtual environment with nnunetv2 installed; never a dependency of smoothseg), the same
test image is also predicted by nnU-Net v2, side by side in the same run: the dataset is copied into nnU-Net's raw
folder, planned and preprocessed by ``nnUNetv2_plan_and_preprocess`` (``3d_fullres`` only, the same
``--gpu-memory-target``), and an untrained fold-0 model is saved by nnU-Net's own ``nnUNetTrainer``
(``initialize()`` + ``save_checkpoint``; prediction time and memory do not depend on the weights). Then, after each
smoothseg setting, ``nnUNetv2_predict -c 3d_fullres -f 0 -device cpu -npp 1 -nps 1`` (``--disable_tta`` for TTA off)
runs as a child process with the same number of torch threads as smoothseg (``--threads``, else torch's default as
reported by the smoothseg child; passed as ``nnUNet_def_n_proc``, which caps nnU-Net's network threads). The
comparison is end to end, process start to exit on both sides: nnU-Net's wall time and the largest resident set of
its process tree (main process, one preprocessing and one export worker) against the smoothseg child's wall time
less its warm-up pass and the reading of the reference label (work ``smoothseg_predict`` would not do) and the
child's peak RSS. Both include interpreter start-up, imports and model loading. nnU-Net's plan is printed (spacing,
patch size) so that it is clear what was compared: one full-resolution network against smoothseg's two-stage cascade.

``--precision`` and ``--engine`` are ``smoothseg_predict``'s (``--engine openvino`` needs ``pip install -e
".[cpu-fast]"``); the report names the engine and arithmetic each stage used, how many of the tumour crop's tiles
held liver and ran, and the warm-up time, which includes converting the networks for OpenVINO (cached on disk after
the first run). ``--reuse`` with ``--workdir`` times again on the dataset and models made by an earlier run.

Usage (``--device cuda`` runs the smoothseg networks on a GPU):
``python bench/bench_predict.py --size small`` (about a minute) or ``--size full`` (minutes per setting on a
2-core CPU; ``--tta off`` skips the 8x slower TTA run); add ``--nnunet-venv /path/to/nnunet-venv`` for the nnU-Net v2
yardstick (``--workdir DIR`` keeps the scratch folder, with nnU-Net's logs under ``DIR/nnunet/logs``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from nnunet_yardstick import NnUNetWorkspace

DATASET_ID = 900
DATASET = "Dataset900_SyntheticLiver"


def _prepare(work: Path, size: str, memory_gb: float) -> tuple[Path, Path]:
    """Dataset (3 phantoms: 2 training, 1 test), plans and untrained models; returns (test image, test label)."""
    from smoothseg.models.build import write_untrained_models
    from smoothseg.paths import results_root
    from smoothseg.synthetic.demo_dataset import make_demo_dataset
    from smoothseg.workflows.plan_and_preprocess import plan_and_preprocess

    t0 = time.perf_counter()
    raw = make_demo_dataset(n_cases=3, seed=7, size=size, num_processes=2)
    print(f"dataset: 3 '{size}' phantoms in {time.perf_counter() - t0:.0f} s")
    plans = plan_and_preprocess(900, preprocess=False, gpu_memory_target_gb=memory_gb, overwrite_plans=True).plans
    for task in ("liver", "tumor"):
        cfg = plans[task]
        print(f"plan {task:5s}: spacing {cfg.spacing}, patch {cfg.patch_size}, batch {cfg.batch_size}, "
              f"init_filters {cfg.network.init_filters} (GPU budget {memory_gb} GB)")
    write_untrained_models(plans, results_root() / DATASET)
    image = sorted((raw / "imagesTs").glob("*_0000.nii.gz"))[0]
    return image, raw / "labelsTs" / image.name.replace("_0000", "")


def _prepare_nnunet(venv: Path, work: Path, image: Path, memory_gb: float) -> NnUNetWorkspace:
    """nnU-Net v2's copy of the dataset, its 3d_fullres plans and preprocessed data, and an untrained fold-0 model."""
    nnunet = NnUNetWorkspace(venv, work / "nnunet", dict(os.environ))
    nnunet.import_raw(image.parent.parent)
    seconds, _ = nnunet.plan_and_preprocess(DATASET_ID, processes=2, gpu_memory_target_gb=memory_gb)
    t0 = time.perf_counter()
    model = nnunet.write_untrained_model(DATASET_ID)
    print(f"nnU-Net v2 plan 3d_fullres: {nnunet.describe_plan(DATASET)} (GPU budget {memory_gb} GB; planned and "
          f"preprocessed in {seconds:.0f} s, untrained model written in {time.perf_counter() - t0:.0f} s to {model})")
    return nnunet


def _compare(nnunet: NnUNetWorkspace, image: Path, tta: str, wall: float, result: dict) -> None:
    """Time nnUNetv2_predict on the same image with the same torch threads; print both and the ratios."""
    ours = wall - sum(result["aside"].values())
    nn_t, nn_mem = nnunet.predict(image, DATASET_ID, tta == "on", result["threads"], tag=f"tta_{tta}")
    print(f"  smoothseg end to end (TTA {tta}): {ours:.1f} s (child process {wall:.1f} s less "
          f"{' and '.join(f'{k} {v:.1f} s' for k, v in result['aside'].items())}), peak {result['peak_mb']:.0f} MB")
    print(f"  nnU-Net v2 3d_fullres predict (TTA {tta}): {nn_t:.1f} s, peak {nn_mem:.0f} MB "
          f"({result['threads']} torch thread(s), -npp 1 -nps 1)")
    print(f"  ratio smoothseg / nnU-Net (TTA {tta}): time {ours / nn_t:.2f}, "
          f"peak memory {result['peak_mb'] / nn_mem:.2f}")


def _child(image_path: Path, label_path: Path, tta: bool, threads: int | None, out_dir: Path,
           device: str = "cpu", precision: str = "auto", engine: str = "auto") -> dict:
    """Run in a fresh process: load the models, time every stage of one case, report peak RSS."""
    import numpy as np
    import torch

    from smoothseg.dataset.io import read_image
    from smoothseg.device import precision_name
    from smoothseg.inference.cascade import CascadePredictor, ModelOptions
    from smoothseg.inference.postprocessing import compose_labels, refine_and_compose
    from smoothseg.inference.report import case_report, write_case_report
    from smoothseg.models.store import select_models

    if threads:
        torch.set_num_threads(threads)
    times: dict[str, float] = {}
    peaks: dict[str, float] = {}
    cascade = CascadePredictor.from_models(select_models("900"), ModelOptions(
        device=torch.device(device), tta=tta, active_contour="on", precision=precision, engine=engine))
    t0 = time.perf_counter()
    model_mb = sum(p.numel() * p.element_size() for stage in (cascade.liver, cascade.tumor)
                   for net in stage.networks for p in net.parameters()) / 2**20
    rss_loaded_mb = _rss_now_mb()
    # "The model" in the memory budget: its weights plus the working set of one tile (the activations of its forward
    # pass, its softmax and, with TTA, the flipped copy and the running sum over the flips), which depend on the
    # plan's patch size and width and on TTA, not on the input volume. Measured by predicting one patch-sized zero
    # image through each stage, which is one batch of one tile (the CPU's tile batch size for these patches).
    for stage in (cascade.liver, cascade.tumor):
        for patch in stage.patch_sizes:
            stage.predict_preprocessed(np.zeros((1, *patch), dtype=np.float32))
    peak_model_mb = _peak_mb()
    aside = {"warm-up pass": time.perf_counter() - t0}  # not part of a prediction: left out of the end-to-end time

    t0 = time.perf_counter()
    image, geometry = read_image(image_path)
    prepared = cascade.liver.preprocess(image, geometry)
    times["read + preprocess"] = time.perf_counter() - t0
    peaks["read + preprocess"] = _peak_mb()

    t0 = time.perf_counter()
    predicted_liver = cascade.liver_stage(image, geometry, prepared)
    times["liver stage"] = time.perf_counter() - t0
    peaks["liver stage"] = _peak_mb()
    del prepared

    t0 = time.perf_counter()
    reference, _ = read_image(label_path)
    liver = np.isin(reference, (1, 2, 3))
    aside["reference label"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    cascade.tumour_stage(image, geometry, liver)
    times["tumour stage"] = time.perf_counter() - t0
    peaks["tumour stage"] = _peak_mb()

    t0 = time.perf_counter()
    tiles = _tumour_tiles(cascade, image, geometry, liver)
    aside["tile count"] = time.perf_counter() - t0

    tumour = (reference == 2) & liver
    t0 = time.perf_counter()
    labels = refine_and_compose(image, geometry, compose_labels(liver, tumour), cascade.active_contour_params)
    times["active contours"] = time.perf_counter() - t0
    peaks["active contours"] = _peak_mb()

    from smoothseg.dataset.io import write_image

    t0 = time.perf_counter()
    write_image(labels, geometry, out_dir / "case.nii.gz")
    write_case_report(case_report("case", image, labels, geometry), out_dir / "case_report.json")
    times["write"] = time.perf_counter() - t0
    peaks["write"] = _peak_mb()
    return {"times": times, "peaks": peaks, "peak_mb": _peak_mb(), "rss_loaded_mb": rss_loaded_mb, "model_mb": model_mb,
            "peak_model_mb": peak_model_mb,
            "input_mb": image.size * 4 / 2**20, "shape": list(image.shape), "lesions": int(_count_lesions(tumour)),
            "predicted_liver_ml_fraction": float(predicted_liver.mean()), "threads": torch.get_num_threads(),
            "aside": aside, "tumour_tiles": tiles, "engines": cascade.model_info["engines"],
            "precision": {s.task: precision_name(s.dtype) for s in (cascade.liver, cascade.tumor)}}


def _tumour_tiles(cascade, image, geometry, liver) -> list[int]:
    """``[tiles run, tiles of the crop box]`` of the tumour stage's sliding window on this case."""
    import torch

    from smoothseg.inference.sliding_window import _pad_to_patch, tile_regions, tiles_to_run

    data, properties = cascade.tumor.preprocess(image, geometry, liver)
    patch = cascade.tumor.patch_sizes[0]
    region, _ = _pad_to_patch(torch.from_numpy(properties["network_region"][None].astype("uint8")), patch, 0)
    tiles = tile_regions(region.shape[1:], patch, cascade.tumor.step_size)
    return [len(tiles_to_run(tiles, region[0].bool())), len(tiles)]


def _count_lesions(mask) -> int:
    from scipy import ndimage

    return ndimage.label(mask, structure=ndimage.generate_binary_structure(3, 3))[1]


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _rss_now_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _report(name: str, result: dict) -> None:
    times = result["times"]
    total = sum(times.values())
    print(f"\n{name}: image {result['shape']} (z, y, x), {result['lesions']} lesion(s), "
          f"{result['threads']} torch thread(s); engines {result['engines']}, precision {result['precision']}; "
          f"tumour tiles run {result['tumour_tiles'][0]} of {result['tumour_tiles'][1]}; warm-up (incl. any engine "
          f"conversion) {result['aside']['warm-up pass']:.1f} s")
    for stage, seconds in times.items():
        print(f"  {stage:18s} {seconds:8.2f} s  ({100 * seconds / total:5.1f} %)   peak RSS so far "
              f"{result['peaks'][stage]:6.0f} MB")
    print(f"  {'total':18s} {total:8.2f} s; active contours {100 * times['active contours'] / total:.1f} % of it")
    budget = result["peak_model_mb"] + 4 * result["input_mb"]
    print(f"  peak RSS {result['peak_mb']:.0f} MB; after loading the models {result['rss_loaded_mb']:.0f} MB "
          f"(weights {result['model_mb']:.1f} MB), peak after one tile through each stage "
          f"{result['peak_model_mb']:.0f} MB")
    print(f"  budget = that + 4 x float32 input ({4 * result['input_mb']:.0f} MB) = {budget:.0f} MB -> "
          f"peak / budget {result['peak_mb'] / budget:.2f}; above the loaded models: "
          f"{result['peak_mb'] - result['rss_loaded_mb']:.0f} MB = "
          f"{(result['peak_mb'] - result['rss_loaded_mb']) / result['input_mb']:.1f} x the float32 input")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="small", choices=("small", "full"))
    parser.add_argument("--tta", default="both", choices=("both", "on", "off"), help="which TTA settings to time")
    parser.add_argument("--gpu-memory-target", type=float, default=8.0, help="planner budget (GB) for the networks")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--workdir", help="scratch folder (default: a temporary folder)")
    parser.add_argument("--nnunet-venv", help="virtual environment with nnunetv2, for the side-by-side yardstick")
    parser.add_argument("--device", default="cpu", help="cpu or cuda: where the networks run (smoothseg side)")
    parser.add_argument("--precision", default="auto", help="smoothseg_predict's --precision (auto, fp32, bf16)")
    parser.add_argument("--engine", default="auto", help="smoothseg_predict's --engine (auto, torch, openvino, "
                                                         "onnxruntime)")
    parser.add_argument("--reuse", action="store_true", help="reuse the dataset and models already in --workdir")
    parser.add_argument("--child", nargs=3, metavar=("IMAGE", "LABEL", "TTA"), help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child:
        image, label, tta = args.child
        print(json.dumps(_child(Path(image), Path(label), tta == "on", args.threads, Path(args.workdir),
                                args.device, args.precision, args.engine)))
        return

    work = Path(args.workdir or tempfile.mkdtemp(prefix="smoothseg-bench-predict-"))
    os.environ.update(SMOOTHSEG_HOME=str(work / "home"))
    for var in ("SMOOTHSEG_RAW", "SMOOTHSEG_PREPROCESSED", "SMOOTHSEG_RESULTS"):
        os.environ.pop(var, None)
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, python {platform.python_version()}")
    if args.reuse and not args.workdir:
        raise SystemExit("--reuse needs --workdir")
    raw = work / "home" / "raw" / DATASET
    if args.reuse and (work / "home" / "results" / DATASET).is_dir():
        image = sorted((raw / "imagesTs").glob("*_0000.nii.gz"))[0]
        label = raw / "labelsTs" / image.name.replace("_0000", "")
        print(f"reusing the dataset and untrained models in {work}")
    else:
        image, label = _prepare(work, args.size, args.gpu_memory_target)
    nnunet = _prepare_nnunet(Path(args.nnunet_venv), work, image, args.gpu_memory_target) if args.nnunet_venv else None
    settings = {"both": ("off", "on"), "on": ("on",), "off": ("off",)}[args.tta]
    for tta in settings:
        cmd = [sys.executable, __file__, "--child", str(image), str(label), tta, "--workdir", str(work),
               "--device", args.device, "--precision", args.precision, "--engine", args.engine]
        if args.threads:
            cmd += ["--threads", str(args.threads)]
        t0 = time.perf_counter()
        out = subprocess.run(cmd, capture_output=True, text=True)
        wall = time.perf_counter() - t0
        if out.returncode:
            raise SystemExit(f"child failed:\n{out.stderr[-4000:]}")
        result = json.loads(out.stdout.strip().splitlines()[-1])
        _report(f"TTA {tta}", result)
        if nnunet is not None:
            _compare(nnunet, image, tta, wall, result)
    if nnunet is None:
        print("\nnnU-Net yardstick skipped (pass --nnunet-venv)")


if __name__ == "__main__":
    main()

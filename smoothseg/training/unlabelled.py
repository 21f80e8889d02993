"""Unlabelled CTs with clinical data: the tumour model learns from them through the knowledge term only.

Which cases: those ``dataset.json`` lists under ``imagesUnlabelled`` (images in ``imagesUnlabelled/``), and a fold's
``"unlabelled"`` list in ``splits.json`` (training cases whose labels an ablation arm hides; images in ``imagesTr/``,
labels never read). An unlabelled case is in neither the fold's training nor its validation cases, so it never
reaches the patch loader and never contributes a segmentation loss.

Data flow:

1. Before the tumour model trains (:mod:`smoothseg.workflows.unlabelled`), each unlabelled CT goes through the
   fold's *liver model* as at inference (liver stage, post-processed liver mask), then through the tumour plan's crop
   and resampling with the intensities outside that liver filled, exactly as the tumour stage sees a new patient.
   The result is stored per liver model and tumour plan:
   ``<preprocessed>/<dataset>/tumor_unlabelled/<liver sha256[:16]>_<plan hash>/<case>.npy`` (network input) and
   ``<case>_liver.npy`` (the predicted liver on that grid); a case that failed is tried again by the next run.
2. The fold's TLVR regression (fitted on its labelled training cases only) predicts each unlabelled case's TLVR
   ``t``; the tolerance is the regression's out-of-fold RMSE ``e`` on those cases: the band is
   ``[max(0, t - e), min(1, t + e)]``.
3. Every ``unlabelled_every`` training iterations (counted over the run), one unlabelled case (drawn from a seeded
   generator per epoch) adds a *whole-liver* constraint to that iteration's loss (Kervadec et al. 2019's inequality
   form)::

       T       = sum_{v in liver} P_tumour(v) / |liver|                   (soft TLVR of the whole predicted liver)
       penalty = (max(0, lo - T) + max(0, T - hi))^2                      (0 inside the band)
       loss    = weight * penalty                                        (weight: the TLVR term's)

   ``T`` comes from a no-gradient pass over the crop cut into patch-sized tiles without overlap (each voxel
   belongs to one tile). Outside the band, the exact gradient of ``loss`` is
   ``weight * penalty'(T) / |liver| * sum_tiles sum_{v in tile} dP_tumour(v)/dtheta``, computed tile by tile (the
   memory of one training patch, not of the whole liver) as the gradient of the surrogate
   ``weight * penalty'(T) / |liver| * sum_{v in tile} P_tumour(v)``; with more than ``max_tiles`` tiles a seeded
   random subset is used, scaled by (tiles / subset), an unbiased estimate. The gradient joins the iteration's own
   (labelled) gradient before the one optimiser step, so clipping, the non-finite check, momentum and weight decay
   apply once. The network runs in evaluation mode (no VAE branch; its GroupNorm has no batch statistics).

Off under ``torchrun`` (each rank would update its replica alone); off when the TLVR term is off.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from smoothseg.atomic import atomic_path, write_json
from smoothseg.errors import SmoothSegError
from smoothseg.labels import TUMOR
from smoothseg.models.checkpoint import file_sha256

__all__ = ["ConstraintStep", "UnlabelledCase", "band", "cache_folder", "constraint_penalty", "fold_unlabelled",
           "load_prepared", "save_prepared", "tlvr_band_width"]

logger = logging.getLogger(__name__)

CACHE = "tumor_unlabelled"
#: Where an unlabelled case's image comes from: listed in dataset.json, or a training case whose labels are hidden.
SOURCES = ("imagesUnlabelled", "imagesTr")


def fold_unlabelled(splits_path: Path, fold: str, listed: tuple[str, ...]) -> dict[str, str]:
    """The unlabelled cases of ``fold``: case id -> source (:data:`SOURCES`), those of ``dataset.json`` first."""
    cases = dict.fromkeys(listed, SOURCES[0])
    if str(fold) != "all" and Path(splits_path).is_file():
        splits = json.loads(Path(splits_path).read_text()).get("splits", [])
        if str(fold).isdigit() and int(fold) < len(splits):
            for case_id in splits[int(fold)].get("unlabelled", []):
                cases.setdefault(case_id, SOURCES[1])
    return cases


def cache_folder(dataset_folder: Path, liver_checkpoint: Path, plan_hash: str) -> Path:
    """``<preprocessed dataset>/tumor_unlabelled/<liver model's sha>_<plan hash>``: the unlabelled cases as that
    liver model crops them for that tumour plan (a new liver model or a re-planned tumour task: prepared again)."""
    return Path(dataset_folder) / CACHE / f"{file_sha256(liver_checkpoint)[:16]}_{plan_hash[:12]}"


def save_prepared(folder: Path, case_id: str, data: np.ndarray, liver: np.ndarray, meta: dict[str, Any]) -> None:
    """Store one prepared case (atomic writes; the JSON last, so a case with a JSON is complete)."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, array in ((f"{case_id}.npy", np.asarray(data, np.float32)),
                        (f"{case_id}_liver.npy", np.asarray(liver, bool))):
        with atomic_path(folder / name) as tmp, open(tmp, "wb") as handle:
            np.save(handle, array)
    write_json(meta, folder / f"{case_id}.json")


@dataclass
class UnlabelledCase:
    """One prepared unlabelled case: network input ``(1, z, y, x)`` (memory-mapped), predicted liver on that grid,
    and the band its whole-liver TLVR should lie in."""

    case_id: str
    source: str
    data: np.ndarray
    liver: np.ndarray
    clinical_tlvr: float = float("nan")
    low: float = 0.0
    high: float = 1.0

    @property
    def liver_voxels(self) -> int:
        return int(np.count_nonzero(self.liver))


def load_prepared(folder: Path, cases: dict[str, str]) -> list[UnlabelledCase]:
    """The prepared cases ``cases`` (id -> source) from ``folder``; a clear error names those not prepared."""
    missing = [c for c in cases if not (Path(folder) / f"{c}.json").is_file()]
    if missing:
        raise SmoothSegError(f"{folder}: {len(missing)} unlabelled case(s) not prepared ({', '.join(missing[:5])}); "
                             "smoothseg_train prepares them with the fold's liver model before the tumour model "
                             "trains (smoothseg.workflows.unlabelled.prepare_unlabelled)")
    out = []
    for case_id, source in cases.items():
        meta = json.loads((Path(folder) / f"{case_id}.json").read_text())
        if meta.get("error"):
            logger.warning("unlabelled case %s not used: %s (the next run tries it again)", case_id, meta["error"])
            continue
        data = np.load(Path(folder) / f"{case_id}.npy", mmap_mode="r")
        liver = np.load(Path(folder) / f"{case_id}_liver.npy")
        if data.ndim != 4 or data.shape[1:] != liver.shape:
            raise SmoothSegError(f"{folder / (case_id + '.npy')}: shape {data.shape} does not match its liver mask "
                                 f"{liver.shape}; delete {folder} to prepare the cases again")
        out.append(UnlabelledCase(case_id, source, data, liver))
    return out


def tlvr_band_width(reference: dict[str, float], out_of_fold: dict[str, float]) -> float:
    """The regression's out-of-fold RMSE on the cases both give (the half-width of the tolerance band)."""
    ids = [c for c in out_of_fold if c in reference]
    if not ids:
        raise SmoothSegError("no out-of-fold TLVR predictions to size the unlabelled cases' tolerance band")
    residuals = np.array([out_of_fold[c] - reference[c] for c in ids], dtype=float)
    return float(np.sqrt(np.mean(residuals ** 2)))


def band(prediction: float, width: float) -> tuple[float, float]:
    """``[max(0, t - e), min(1, t + e)]``: where a whole-liver TLVR costs nothing."""
    return max(0.0, prediction - width), min(1.0, prediction + width)


def constraint_penalty(tlvr: torch.Tensor | float, low: float, high: float) -> torch.Tensor:
    """``(max(0, low - T) + max(0, T - high))^2``: zero inside the band, squared outside (Kervadec's form)."""
    tlvr = torch.as_tensor(tlvr, dtype=torch.float64)
    return (torch.clamp(low - tlvr, min=0) + torch.clamp(tlvr - high, min=0)) ** 2


def _starts(size: int, patch: int) -> list[int]:
    """Tile starts along one axis without overlap, the last tile flush with the end (it may overlap its
    neighbour; :func:`_tiles` gives each voxel to one tile)."""
    if size <= patch:
        return [0]
    return [*range(0, size - patch, patch), size - patch]


def _tiles(liver: np.ndarray, patch: tuple[int, ...]) -> list[tuple[tuple[slice, ...], np.ndarray]]:
    """Tiles of ``patch`` over ``liver``'s grid (padded to at least ``patch``) with the liver voxels each one
    *owns* (every liver voxel owned by exactly one tile); tiles that own none are left out."""
    claimed = np.zeros(liver.shape, dtype=bool)
    tiles = []
    axes = [_starts(s, p) for s, p in zip(liver.shape, patch, strict=True)]
    for corner in np.stack(np.meshgrid(*axes, indexing="ij"), -1).reshape(-1, len(patch)):
        box = tuple(slice(int(c), int(c) + int(p)) for c, p in zip(corner, patch, strict=True))
        owned = liver[box] & ~claimed[box]
        if owned.any():
            claimed[box] |= owned
            tiles.append((box, owned))
    return tiles


@dataclass
class ConstraintStep:
    """The whole-liver constraint step of one unlabelled case (see the module docstring).

    ``forward`` maps a network input batch ``(1, 1, *patch)`` to class logits; ``backward`` runs a surrogate's
    backward pass (the trainer's: through its gradient scaler); ``autocast`` is the trainer's mixed-precision
    context."""

    network: torch.nn.Module
    patch_size: tuple[int, ...]
    fill_value: float
    device: torch.device
    memory_format: torch.memory_format
    autocast: Callable[[], Any]
    max_tiles: int = 4

    def _input(self, case: UnlabelledCase, box: tuple[slice, ...]) -> torch.Tensor:
        """One tile of the case's input, padded with the fill value where the crop is smaller than the patch."""
        crop = np.asarray(case.data[(slice(None), *box)], dtype=np.float32)
        tile = np.full((1, *self.patch_size), self.fill_value, dtype=np.float32)
        tile[(slice(None), *(slice(0, s) for s in crop.shape[1:]))] = crop
        return torch.from_numpy(tile)[None].to(self.device).contiguous(memory_format=self.memory_format)

    def _tumour_sum(self, case: UnlabelledCase, box: tuple[slice, ...], owned: np.ndarray) -> torch.Tensor:
        """Sum of P(tumour) over the voxels ``owned`` of one tile."""
        with self.autocast():
            logits = self.network(self._input(case, box))
        probability = torch.softmax(logits.float(), dim=1)[0, TUMOR]
        mask = torch.zeros(self.patch_size, dtype=torch.bool, device=self.device)
        mask[tuple(slice(0, s) for s in owned.shape)] = torch.from_numpy(owned).to(self.device)
        return probability[mask].sum()

    def tlvr(self, case: UnlabelledCase, tiles=None) -> float:
        """The soft whole-liver TLVR of ``case`` under the current network (no gradient)."""
        tiles = tiles if tiles is not None else _tiles(case.liver, self.patch_size)
        with torch.no_grad():
            total = sum(float(self._tumour_sum(case, box, owned)) for box, owned in tiles)
        return total / max(case.liver_voxels, 1)

    def __call__(self, case: UnlabelledCase, weight: float, rng: np.random.Generator,
                 backward: Callable[[torch.Tensor], None]) -> dict[str, float]:
        """Accumulate the gradient of ``weight * penalty`` of ``case`` (nothing inside the band); the caller zeroes
        the gradients before and steps the optimiser after. Returns ``tlvr``, ``penalty`` and ``tiles`` run with
        gradient."""
        was_training = self.network.training
        self.network.eval()
        try:
            tiles = _tiles(case.liver, self.patch_size)
            if not tiles:  # no liver on the tumour grid: nothing to constrain
                return {"tlvr": float("nan"), "penalty": 0.0, "tiles": 0}
            value = self.tlvr(case, tiles)
            tlvr = torch.tensor(value, dtype=torch.float64, requires_grad=True)
            penalty = constraint_penalty(tlvr, case.low, case.high)
            if float(penalty.detach()) == 0.0:
                return {"tlvr": value, "penalty": 0.0, "tiles": 0}
            (slope,) = torch.autograd.grad(penalty, tlvr)
            chosen = sorted(rng.choice(len(tiles), min(self.max_tiles, len(tiles)), replace=False).tolist())
            scale = weight * float(slope) / max(case.liver_voxels, 1) * len(tiles) / len(chosen)
            for index in chosen:
                box, owned = tiles[index]
                backward(scale * self._tumour_sum(case, box, owned))
            return {"tlvr": value, "penalty": float(penalty.detach()), "tiles": len(chosen)}
        finally:
            self.network.train(was_training)

"""The stage predictor: one trained configuration (liver or tumour), one or several folds, from image to probabilities.

:class:`StagePredictor` loads the checkpoints of one configuration, rebuilds each SegResNetVAE from the
checkpoint's ``network_kwargs`` and puts it in eval mode on the compute device. Prediction of a case is:

1. **preprocessing** with :class:`~smoothseg.preprocessing.preprocessor.TaskPreprocessor` built from the plans stored
   in the checkpoint, i.e. the very code and plans that preprocessed the training data. For the tumour configuration
   the crop comes from a (predicted) liver mask, and intensities outside that mask (resampled to the tumour grid the
   way training resamples label maps) are set to
   :func:`~smoothseg.preprocessing.normalization.outside_fill_value`, as the training data loader does;
2. **sliding-window inference** (:func:`~smoothseg.inference.sliding_window.sliding_window_predict`): Gaussian
   weighting, ``step_size`` overlap, batched tiles, mirroring test-time augmentation over the plan's ``mirror_axes``
   (the axes the network was trained to be mirror-invariant in: none for the liver's global view, all three for the
   tumour; on by default on a GPU, off on a CPU, where it costs 8x the time), accumulation on the device with a CPU
   fallback. Images smaller than a patch are padded with the fill value, as the training loader pads patches.
   Several folds are ensembled by averaging their probabilities;
3. **reverting** the probabilities to the original grid with
   :meth:`~smoothseg.preprocessing.preprocessor.TaskPreprocessor.revert_probabilities`, or straight to the argmax
   label map (on the original grid or the crop only) with
   :meth:`~smoothseg.preprocessing.preprocessor.TaskPreprocessor.revert_argmax`, one class map at a time, which is
   what the cascade uses to keep its memory bounded.

All folds of a stage must share the preprocessing part of their plans (spacing, window, crop...); patch sizes may
differ.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from smoothseg.dataset.io import Geometry
from smoothseg.device import precision_name, resolve_device
from smoothseg.errors import SmoothSegError
from smoothseg.inference.engines import compile_network, engine_dtype, file_key, resolve_engine
from smoothseg.inference.sliding_window import sliding_window_predict
from smoothseg.models.build import network_from_checkpoint
from smoothseg.models.checkpoint import load_checkpoint
from smoothseg.network.segresnet_vae import SegResNetVAE
from smoothseg.planning.plans import ConfigurationPlan, Plans
from smoothseg.preprocessing.normalization import outside_fill_value
from smoothseg.preprocessing.preprocessor import TaskPreprocessor, stored_box

__all__ = ["StagePredictor"]

logger = logging.getLogger(__name__)

#: Tiles with at most this many voxels x first-stage filters are batched on the CPU too (see
#: ``StagePredictor._default_tile_batch_size``).
SMALL_TILE_ELEMENTS = 4_000_000


def crop_to_liver(plan: ConfigurationPlan, image: np.ndarray, geometry: Geometry,
                  liver_mask: np.ndarray) -> tuple[np.ndarray, dict[str, Any]]:
    """The network input ``(1, z, y, x)`` of a configuration that crops to the liver, given the liver mask on the
    original grid, and the properties to revert it; they hold that mask on the network's grid as
    ``"network_region"``. Intensities outside the mask become the fill value, as the training loader masks."""
    # The mask travels through the preprocessor as a {0, 1} label map, so it is cropped and resampled exactly as
    # training resampled the reference liver region that the loader masks with.
    masker = TaskPreprocessor(plan, liver_labels=(1,), tumor_labels=())
    mask = np.asarray(liver_mask, dtype=np.uint8)
    data, seg, properties = masker.preprocess(image, geometry, liver_mask=mask.astype(bool), label=mask)
    data[0][seg == 0] = outside_fill_value(plan)
    properties["network_region"] = seg > 0
    return data, properties


class StagePredictor:
    """Predict one configuration (``liver`` or ``tumor``) with one or several fold checkpoints.

    Parameters
    ----------
    checkpoints:
        Checkpoint files of the same configuration (one per fold); their probabilities are averaged.
    device:
        ``"auto"``, ``"cuda"``, ``"cpu"``, ``"mps"`` or a ``torch.device``.
    step_size:
        Sliding-window step as a fraction of the patch size (0.5: tiles overlap by half).
    tta:
        Mirroring test-time augmentation along the plan's ``mirror_axes``; ``None``: on for CUDA, off otherwise.
    tile_batch_size:
        Tiles per forward pass; default: the plan's training batch size on CUDA and, elsewhere, for small tiles
        (patch voxels x width up to ``SMALL_TILE_ELEMENTS``), else 1.
    precision:
        Arithmetic of the networks (:func:`smoothseg.device.autocast_dtype`): ``auto`` is fp16 on CUDA, bf16 on a CPU
        with bfloat16 units (about 2x faster per tile, documentation/benchmarks.md), else fp32. On a CPU the
        networks also run channels-last (a further ~1.4x, same arithmetic).
    engine:
        What runs the networks (:mod:`smoothseg.inference.engines`): ``auto`` (OpenVINO on a CPU where it is
        installed and the tiles are large, else torch), ``torch``, ``openvino`` or ``onnxruntime``.
    progress:
        Show a progress bar over the tiles.
    """

    def __init__(self, checkpoints: Sequence[str | Path], *, device: str | torch.device = "auto",
                 step_size: float = 0.5, tta: bool | None = None, tile_batch_size: int | None = None,
                 precision: str = "auto", engine: str = "auto", progress: bool = False) -> None:
        if not checkpoints:
            raise SmoothSegError("StagePredictor needs at least one checkpoint")
        self.device = resolve_device(device)
        self.step_size = float(step_size)
        self.tta = bool(tta) if tta is not None else self.device.type == "cuda"
        self.progress = progress
        self.checkpoints = [Path(p) for p in checkpoints]
        payloads = [load_checkpoint(p, "cpu") for p in self.checkpoints]
        self.task = self._common(payloads, "task")
        self.trainer = self._common(payloads, "trainer")
        self.dataset = str(payloads[0].get("dataset"))
        self.folds = [str(p.get("fold")) for p in payloads]
        plans = [self._plans(p, path) for p, path in zip(payloads, self.checkpoints, strict=True)]
        self.plans = plans[0]
        self.plan = self.plans[self.task]
        for other, path in zip(plans[1:], self.checkpoints[1:], strict=True):
            if other[self.task].content_hash() != self.plan.content_hash():
                raise SmoothSegError(f"{path}: its '{self.task}' preprocessing plan differs from that of "
                                     f"{self.checkpoints[0]}; folds with different preprocessing cannot be ensembled")
        self.patch_sizes = [tuple(p[self.task].patch_size) for p in plans]
        self.engine = resolve_engine(engine, self.device, self._tile_elements())
        #: The networks' arithmetic (None: float32), whichever engine computes it.
        self.dtype = engine_dtype(self.engine, self.device, precision)
        # torch applies autocast and channels-last itself; another engine was compiled for its arithmetic.
        self.autocast_dtype = self.dtype if self.engine == "torch" else None
        self.channels_last = self.device.type == "cpu" and self.engine == "torch"
        self.tile_batch_size = int(tile_batch_size or self._default_tile_batch_size())
        self.preprocessor = TaskPreprocessor.from_plans(self.plans, self.task)
        self.fill_value = outside_fill_value(self.plan)
        self.mirror_axes = tuple(self.plan.mirror_axes) if self.tta else ()
        self.tlvr_models: list[dict[str, Any]] = [p["tlvr_model"] for p in payloads if p.get("tlvr_model")]
        self.networks = [self._network(p, path) for p, path in zip(payloads, self.checkpoints, strict=True)]
        self.num_parameters = sum(p.numel() for net in self.networks for p in net.parameters())
        #: What the sliding window calls: the modules (torch) or their compiled counterparts.
        self.runners = [compile_network(net, self.engine, self.dtype,
                                        cache_key=file_key(path) if self.engine == "openvino" else None)
                        for net, path in zip(self.networks, self.checkpoints, strict=True)]
        tta_text = (f"on (axes {self.mirror_axes})" if self.mirror_axes
                    else "off (the plan mirrors no axis)" if self.tta else "off")
        logger.info("%s stage: %d fold(s) (%s) of %s, device %s, %s engine, %s, TTA %s, step %.2f", self.task,
                    len(self.networks), ", ".join(self.folds), self.dataset, self.device, self.engine,
                    precision_name(self.dtype), tta_text, self.step_size)

    def _tile_elements(self) -> int:
        """Voxels of a tile x the network's first-stage filters (the plan's), the measure of a tile's cost."""
        return math.prod(self.plan.patch_size) * self.plan.network.init_filters

    def _default_tile_batch_size(self) -> int:
        """On a GPU the training batch size fits and keeps the device busy. On a CPU, single small tiles run
        pathologically slowly (measured with torch 2.13's oneDNN convolutions, 8 filters, patch 32 x 48 x 48:
        0.29 s per tile alone, 0.036 s per tile in pairs), while for large tiles batching gains nothing
        (80 x 96 x 96 x 32 filters: 3.6 vs 3.2 s per tile) and multiplies the activation memory."""
        small = self._tile_elements() <= SMALL_TILE_ELEMENTS
        return self.plan.batch_size if self.device.type == "cuda" or small else 1

    @staticmethod
    def _common(payloads: list[dict[str, Any]], key: str) -> str:
        values = {str(p.get(key)) for p in payloads}
        if len(values) != 1:
            raise SmoothSegError(f"the checkpoints disagree on '{key}': {', '.join(sorted(values))}")
        return values.pop()

    def _plans(self, payload: dict[str, Any], path: Path) -> Plans:
        if "plans" not in payload:
            raise SmoothSegError(f"{path}: checkpoint holds no plans")
        plans = Plans.from_dict(payload["plans"], path)
        if self.task not in plans.configurations:
            raise SmoothSegError(f"{path}: plans have no '{self.task}' configuration")
        return plans

    def _network(self, payload: dict[str, Any], path: Path) -> SegResNetVAE:
        network = network_from_checkpoint(payload, path)
        if network.out_channels != self.plan.num_classes:
            raise SmoothSegError(f"{path}: network has {network.out_channels} outputs, the plan "
                                 f"{self.plan.num_classes} classes")
        network = network.to(self.device).eval()
        return network.to(memory_format=torch.channels_last_3d) if self.channels_last else network

    # -- preprocessing ----------------------------------------------------------------------------------------------
    @property
    def needs_liver_mask(self) -> bool:
        return self.plan.crop == "liver"

    def preprocess(self, image: np.ndarray, geometry: Geometry,
                   liver_mask: np.ndarray | None = None) -> tuple[np.ndarray, dict[str, Any]]:
        """Original image -> network input ``(1, z, y, x)`` and the properties needed to revert.

        For a configuration that crops to the liver, ``liver_mask`` (on the original grid) gives the crop, and the
        intensities outside it are set to the fill value, exactly as the training loader masks its patches; the
        properties then also hold that mask on the network's grid as ``"network_region"`` (for
        :meth:`predict_preprocessed`, which need not run tiles without liver).
        """
        if not self.needs_liver_mask:
            data, _, properties = self.preprocessor.preprocess(image, geometry)
            return data, properties
        if liver_mask is None or not np.any(liver_mask):
            raise SmoothSegError(f"the {self.task} stage needs a non-empty liver mask to crop to")
        return crop_to_liver(self.plan, image, geometry, liver_mask)

    # -- network -------------------------------------------------------------------------------------------------------
    def predict_preprocessed(self, data: np.ndarray, region: np.ndarray | None = None) -> np.ndarray:
        """Fold-averaged class probabilities ``(C, z, y, x)`` (float32) on the preprocessed grid.

        ``region`` (a mask on that grid, e.g. the liver the tumour stage crops to; the ``"network_region"`` of
        :meth:`preprocess`'s properties): tiles that hold none of it, with a margin, are not run (background there).
        """
        image = torch.from_numpy(np.ascontiguousarray(data, dtype=np.float32))
        total: torch.Tensor | None = None
        for runner, patch_size in zip(self.runners, self.patch_sizes, strict=True):
            probabilities = sliding_window_predict(
                runner, image, patch_size, self.plan.num_classes, step_size=self.step_size,
                batch_size=self.tile_batch_size, mirror_axes=self.mirror_axes, device=self.device,
                gaussian=True, progress=self.progress, pad_value=self.fill_value, autocast_dtype=self.autocast_dtype,
                channels_last=self.channels_last, region=region)
            total = probabilities if total is None else total.add_(probabilities)
        assert total is not None
        if len(self.networks) > 1:
            total.div_(len(self.networks))
        return total.numpy()

    # -- back to the original grid ---------------------------------------------------------------------------------
    def revert(self, probabilities: np.ndarray, properties: dict[str, Any]) -> np.ndarray:
        """Probabilities on the preprocessed grid -> on the original grid (background outside the crop)."""
        return self.preprocessor.revert_probabilities(probabilities, properties)

    def revert_labels(self, probabilities: np.ndarray, properties: dict[str, Any]) -> np.ndarray:
        """Argmax label map (uint8) on the original grid, one class map at a time (see ``revert_argmax``)."""
        return self.preprocessor.revert_argmax(probabilities, properties)

    def revert_labels_to_crop(self, probabilities: np.ndarray,
                              properties: dict[str, Any]) -> tuple[np.ndarray, tuple[slice, ...]]:
        """Argmax label map (uint8) on the crop box of the original grid, and that box's slices."""
        return (self.preprocessor.revert_argmax(probabilities, properties, crop_only=True),
                stored_box(properties))

    def predict_probabilities(self, image: np.ndarray, geometry: Geometry,
                              liver_mask: np.ndarray | None = None) -> np.ndarray:
        """Class probabilities ``(C, z, y, x)`` on the original grid of ``image``."""
        data, properties = self.preprocess(image, geometry, liver_mask)
        return self.revert(self.predict_preprocessed(data), properties)

    def predict_labels(self, image: np.ndarray, geometry: Geometry,
                       liver_mask: np.ndarray | None = None) -> np.ndarray:
        """Task label map (argmax, uint8) on the original grid of ``image``."""
        data, properties = self.preprocess(image, geometry, liver_mask)
        return self.revert_labels(self.predict_preprocessed(data), properties)

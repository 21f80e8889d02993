"""Inference engines: what runs a trained network's forward pass on the tiles of the sliding window.

* ``torch`` — the ``nn.Module`` itself (any device; on a CPU in channels-last order, under bf16 autocast where
  ``--precision`` asks for it);
* ``openvino`` — Intel's OpenVINO runtime on the CPU (``pip install "smoothseg[cpu-fast]"``): the network converted
  from the module in eval mode, which computes the logits only, so the VAE branch is not part of it; compiled once per
  tile shape, float32 or bfloat16 as ``--precision`` resolves. Converting takes seconds, so the converted model (IR,
  float32 weights) is kept under ``<SMOOTHSEG_HOME>/cache/openvino/`` keyed by the checkpoint's bytes, the tile shape
  and the OpenVINO version, and read from there the next time;
* ``onnxruntime`` — ONNX Runtime's CPU provider on an ONNX export (legacy TorchScript exporter, in memory), float32
  only (kept for comparison: it measured slower than torch on the planned tumour network; documentation/
  benchmarks.md).

``auto`` is ``openvino`` on a CPU where it is installed and the stage's tiles are large (patch voxels x first-stage
filters of at least ``LARGE_TILE_ELEMENTS``, where it measured faster per tile than torch in float32 and in
bfloat16 and the conversion is paid back within a case), and ``torch`` everywhere else (small demo networks run a
tile in tens of milliseconds; a first conversion would cost more than it saves). Every engine is a callable
``(B, C, *patch)`` float tensor -> ``(B, classes, *patch)`` float tensor that owns its memory (the sliding window
softmaxes it in place).
"""

from __future__ import annotations

import importlib.util
import io
import logging
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from smoothseg.atomic import atomic_path
from smoothseg.device import autocast_dtype
from smoothseg.errors import SmoothSegError
from smoothseg.models.checkpoint import file_sha256
from smoothseg.paths import base_folder

__all__ = ["ENGINE_CHOICES", "LARGE_TILE_ELEMENTS", "OnnxRuntimeNetwork", "OpenVinoNetwork", "compile_network",
           "engine_dtype", "engine_installed", "file_key", "resolve_engine"]

logger = logging.getLogger(__name__)

ENGINE_CHOICES = ("auto", "torch", "openvino", "onnxruntime")
#: Engines that run outside torch, on the CPU only, and the package each needs.
_CPU_ENGINES = {"openvino": "openvino", "onnxruntime": "onnxruntime"}
INSTALL_HINT = 'pip install "smoothseg[cpu-fast]"'
#: ``auto`` picks OpenVINO for tiles of at least this many voxels x first-stage filters (the 8 GB plans' tiles have
#: ~24 M; the CPU demo's ~1 M).
LARGE_TILE_ELEMENTS = 4_000_000


def engine_installed(engine: str) -> bool:
    """Whether the package of ``engine`` can be imported (torch always can)."""
    if engine == "torch":
        return True
    package = _CPU_ENGINES.get(engine)
    if package is None:
        raise SmoothSegError(f"unknown engine '{engine}'; use {', '.join(ENGINE_CHOICES)}")
    return importlib.util.find_spec(package) is not None


def resolve_engine(engine: str, device: torch.device, tile_elements: int | None = None) -> str:
    """``auto`` -> ``openvino`` on a CPU where it is installed and tiles are large (``tile_elements``: patch voxels x
    first-stage filters; None counts as large), else ``torch``; an explicit engine that cannot run here is a clear
    error (another device, package missing)."""
    if engine not in ENGINE_CHOICES:
        raise SmoothSegError(f"unknown engine '{engine}'; use {', '.join(ENGINE_CHOICES)}")
    if engine == "auto":
        large = tile_elements is None or tile_elements >= LARGE_TILE_ELEMENTS
        return "openvino" if device.type == "cpu" and large and engine_installed("openvino") else "torch"
    if engine != "torch":
        if device.type != "cpu":
            raise SmoothSegError(f"--engine {engine} runs on the CPU; use -device cpu, or --engine torch on "
                                 f"{device.type}")
        if not engine_installed(engine):
            raise SmoothSegError(f"--engine {engine} needs the '{_CPU_ENGINES[engine]}' package: {INSTALL_HINT}")
    return engine


def engine_dtype(engine: str, device: torch.device, precision: str) -> torch.dtype | None:
    """The arithmetic ``engine`` will use for ``precision`` (None: float32), the rule of
    :func:`smoothseg.device.autocast_dtype` for torch and OpenVINO; ONNX Runtime computes float32 only."""
    dtype = autocast_dtype(device, precision)
    if engine == "onnxruntime" and dtype is not None:
        if precision != "auto":
            raise SmoothSegError(f"--engine onnxruntime computes in float32 only; use --precision fp32 or auto, or "
                                 f"--engine openvino/torch for {precision}")
        return None
    return dtype


def file_key(path: str | Path) -> str:
    """A short hash of a file's bytes (the cache key of a checkpoint's converted networks)."""
    return file_sha256(path)[:20]


class OpenVinoNetwork:
    """A SegResNetVAE's eval-mode forward pass compiled by OpenVINO for the CPU, once per input shape.

    ``dtype`` None runs float32 (the ``INFERENCE_PRECISION_HINT`` is set explicitly: OpenVINO would otherwise pick
    bfloat16 on CPUs that have it); ``torch.bfloat16`` runs bfloat16. ``cache_key`` (e.g. :func:`file_key` of the
    checkpoint) keeps the converted model on disk (module docstring); None converts every time.
    """

    def __init__(self, network: torch.nn.Module, dtype: torch.dtype | None = None, threads: int | None = None,
                 cache_key: str | None = None):
        import openvino

        self._openvino = openvino
        self._network = network.eval()
        self._cache_key = cache_key
        self._config = {"INFERENCE_PRECISION_HINT": "bf16" if dtype == torch.bfloat16 else "f32",
                        "INFERENCE_NUM_THREADS": int(threads or torch.get_num_threads()),
                        "NUM_STREAMS": 1, "PERFORMANCE_HINT": "LATENCY"}
        self._compiled: dict[tuple[int, ...], Callable] = {}

    def cache_path(self, shape: tuple[int, ...]) -> Path | None:
        """Where the converted model for tiles of ``shape`` is kept (None without a cache key)."""
        if self._cache_key is None:
            return None
        version = "".join(c if c.isalnum() or c in ".-" else "_" for c in self._openvino.__version__)[:40]
        return base_folder() / "cache" / "openvino" / f"{self._cache_key}_{'x'.join(map(str, shape))}_{version}.xml"

    def _convert(self, shape: tuple[int, ...]):
        # Tracing needs ordinary tensors: the sliding window calls us under torch.inference_mode.
        with torch.inference_mode(False), torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore", torch.jit.TracerWarning)  # the shape checks of forward(), constant here
            warnings.simplefilter("ignore", DeprecationWarning)  # torch.jit.trace, which OpenVINO's converter uses
            return self._openvino.convert_model(self._network, example_input=torch.zeros(shape), input=[list(shape)])

    def _model(self, shape: tuple[int, ...]):
        path = self.cache_path(shape)
        core = self._openvino.Core()
        if path is not None and path.is_file():
            try:
                return core.read_model(str(path))
            except RuntimeError as exc:  # a damaged cache entry is converted again
                logger.warning("OpenVINO cache %s unreadable (%s); converting the network again", path, exc)
        model = self._convert(shape)
        if path is not None:
            try:
                with atomic_path(path) as tmp:  # the .bin beside it moves first, the .xml last
                    self._openvino.save_model(model, str(tmp), compress_to_fp16=False)
            except OSError as exc:
                logger.debug("OpenVINO cache not written (%s): %s", path, exc)
        return model

    def _compile(self, shape: tuple[int, ...]) -> Callable:
        compiled = self._openvino.Core().compile_model(self._model(shape), "CPU", self._config)
        logger.debug("OpenVINO: compiled the network for tiles %s (%s)", shape, self._config)
        request = compiled.create_infer_request()

        def run(batch: np.ndarray) -> np.ndarray:
            request.infer({0: batch})
            return np.array(request.get_output_tensor(0).data, dtype=np.float32, copy=True)

        return run

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        shape = tuple(int(s) for s in batch.shape)
        run = self._compiled.get(shape)
        if run is None:
            run = self._compiled[shape] = self._compile(shape)
        return torch.from_numpy(run(np.ascontiguousarray(batch.detach().cpu().numpy(), dtype=np.float32)))


class OnnxRuntimeNetwork:
    """A SegResNetVAE's eval-mode forward pass exported to ONNX (in memory) and run by ONNX Runtime's CPU provider,
    float32; one session per input shape."""

    def __init__(self, network: torch.nn.Module, threads: int | None = None):
        import onnxruntime

        self._onnxruntime = onnxruntime
        self._network = network.eval()
        self._threads = int(threads or torch.get_num_threads())
        self._sessions: dict[tuple[int, ...], object] = {}

    def _session(self, shape: tuple[int, ...]):
        buffer = io.BytesIO()
        with torch.inference_mode(False), torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            warnings.simplefilter("ignore", DeprecationWarning)  # the TorchScript exporter: fine for this network
            torch.onnx.export(self._network, (torch.zeros(shape),), buffer, input_names=["tiles"],
                              output_names=["logits"], dynamo=False, opset_version=17)
        options = self._onnxruntime.SessionOptions()
        options.intra_op_num_threads = self._threads
        options.inter_op_num_threads = 1
        return self._onnxruntime.InferenceSession(buffer.getvalue(), options, providers=["CPUExecutionProvider"])

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        shape = tuple(int(s) for s in batch.shape)
        session = self._sessions.get(shape)
        if session is None:
            session = self._sessions[shape] = self._session(shape)
        (logits,) = session.run(None, {"tiles": np.ascontiguousarray(batch.detach().cpu().numpy(), dtype=np.float32)})
        return torch.from_numpy(np.array(logits, dtype=np.float32, copy=True))


def compile_network(network: torch.nn.Module, engine: str, dtype: torch.dtype | None, threads: int | None = None,
                    cache_key: str | None = None) -> Callable[[torch.Tensor], torch.Tensor] | torch.nn.Module:
    """``network`` ready for ``engine`` (a resolved engine name): the module itself for torch (the sliding window
    applies autocast and channels-last), an OpenVINO or ONNX Runtime runner otherwise (``cache_key``: see
    :class:`OpenVinoNetwork`)."""
    if engine == "torch":
        return network
    if engine == "openvino":
        return OpenVinoNetwork(network, dtype, threads, cache_key)
    if engine == "onnxruntime":
        if dtype is not None:
            raise SmoothSegError("ONNX Runtime computes in float32 only")
        return OnnxRuntimeNetwork(network, threads)
    raise SmoothSegError(f"unknown engine '{engine}'; use {', '.join(ENGINE_CHOICES[1:])}")

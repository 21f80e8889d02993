"""Helpers for the ``smoothseg_serve`` tests: a real server process on a free loopback port, tiny models, phantoms."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
from cli_helpers import cli_env
from inference_helpers import TINY_DATASET, make_model_pair

from smoothseg.dataset.io import Geometry, write_image
from smoothseg.knowledge.tlvr import TLVRRegressor
from smoothseg.models.checkpoint import load_checkpoint, save_checkpoint
from smoothseg.synthetic.phantom import make_phantom


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tiny_results(folder: Path) -> Path:
    """A results root with untrained tiny liver + tumour models (``Dataset950_TinyModels``); the tumour model carries
    a fitted TLVR regression on ``AFP``, ``Age`` (numeric) and ``Sex`` (categorical), as a trained one does."""
    pair = make_model_pair(folder)
    rng = np.random.default_rng(0)
    clinical = pd.DataFrame({"AFP": rng.uniform(1, 400, 16), "Age": rng.uniform(40, 80, 16),
                             "Sex": ["M", "F"] * 8})
    regression = TLVRRegressor(numeric_features=["AFP", "Age"], categorical_features=["Sex"])
    regression.fit(clinical, np.clip(clinical["AFP"] / 2000 + rng.normal(0, 0.01, 16), 0, 1))
    for checkpoint in pair.checkpoints("tumor"):
        payload = load_checkpoint(checkpoint)
        payload["tlvr_model"] = regression.to_dict()
        save_checkpoint(payload, checkpoint)
    return folder


def clinical_prediction(results: Path, row: dict[str, object]) -> float:
    """What the tiny tumour model's TLVR regression predicts for one clinical row."""
    (checkpoint,) = results.glob("*/*__tumor/fold_0/checkpoint_final.pth")
    regression = TLVRRegressor.from_dict(load_checkpoint(checkpoint)["tlvr_model"])
    return float(regression.predict(pd.DataFrame([row]))[0])


def phantom_file(path: Path, seed: int = 3, shape: tuple[int, int, int] = (24, 64, 64)) -> Path:
    """The central ``shape`` (z, y, x) of a small phantom, with its geometry (a few tiles per stage: fast jobs)."""
    phantom = make_phantom(np.random.default_rng(seed), "small")
    start = [(n - m) // 2 for n, m in zip(phantom.image.shape, shape, strict=True)]
    crop = tuple(slice(a, a + m) for a, m in zip(start, shape, strict=True))
    origin = phantom.geometry.index_to_physical(np.array(start[::-1], dtype=float))
    geometry = Geometry(phantom.geometry.spacing, tuple(float(v) for v in origin), phantom.geometry.direction)
    return write_image(phantom.image[crop], geometry, path)


@dataclass
class Server:
    process: subprocess.Popen
    url: str
    log: Path
    token: str | None = None

    def client(self, **kwargs) -> httpx.Client:
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=60.0, **kwargs)

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)


def start_server(results: Path, data: Path, home: Path, *args: str, token: str | None = None,
                 timeout: float = 180.0) -> Server:
    """``smoothseg_serve`` as a real process (its own worker process), answering ``/api/health``."""
    port = free_port()
    env = cli_env(home, {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"})
    if token:
        env["SMOOTHSEG_SERVE_TOKEN"] = token
    log = data.parent / f"serve_{port}.log"
    data.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as handle:
        process = subprocess.Popen([sys.executable, "-m", "smoothseg.cli.serve", "--models", str(results), "-d",
                                    TINY_DATASET, "--data", str(data), "--port", str(port), "-device", "cpu", *args],
                                   stdout=handle, stderr=subprocess.STDOUT, env=env)
    server = Server(process, f"http://127.0.0.1:{port}", log, token)
    deadline = time.monotonic() + timeout
    with server.client() as client:
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise RuntimeError(f"smoothseg_serve exited ({process.returncode}):\n{log.read_text()}")
            try:
                if client.get("/api/health").status_code == 200:
                    return server
            except httpx.TransportError:
                pass
            time.sleep(0.2)
    server.stop()
    raise RuntimeError(f"smoothseg_serve did not answer within {timeout} s:\n{log.read_text()}")


def submit(client: httpx.Client, path: Path, name: str | None = None, **fields: str) -> httpx.Response:
    with open(path, "rb") as handle:
        return client.post("/api/jobs", files={"file": (name or path.name, handle)}, data=fields)


def wait_for(client: httpx.Client, job_id: str, states: tuple[str, ...] = ("done", "failed"),
             timeout: float = 180.0, interval: float = 0.1) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.get(f"/api/jobs/{job_id}").json()
        if job["state"] in states:
            return job
        time.sleep(interval)
    raise AssertionError(f"job {job_id} did not reach {states} within {timeout} s: {job}")


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024.0
    raise AssertionError(f"no VmRSS for {pid}")

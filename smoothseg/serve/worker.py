"""The worker process of ``smoothseg_serve``: loads the model pair once, then runs queued jobs one at a time.

Each job goes through the same per-case function as ``smoothseg_predict`` (read with the checked reader, liver and
tumour networks, post-processing, atomic writes), so a served label map equals the command line's. Then the worker
adds the downloads (Slicer ``.seg.nrrd``, DICOM SEG for a DICOM upload, the report with the model's validation
figures, the findings text) and the viewer's volumes. A failing job is marked ``failed`` with a message that names
the upload (never a server path) and the problem; the worker goes on with the next job.
"""

from __future__ import annotations

import contextlib
import json
import logging
import multiprocessing
import os
import signal
import threading
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from smoothseg.atomic import write_json, write_text
from smoothseg.dataset.io import read_image
from smoothseg.device import resolve_device
from smoothseg.errors import SmoothSegError
from smoothseg.inference.cascade import CascadePredictor, ModelOptions
from smoothseg.inference.cohort import predict_case_files
from smoothseg.inference.inputs import InputCase
from smoothseg.inference.writers import write_dicom_seg, write_slicer_segmentation
from smoothseg.knowledge.clinical_tlvr import ClinicalTLVR
from smoothseg.models.store import select_models
from smoothseg.paths import using_roots
from smoothseg.serve.findings import findings_text, model_validation
from smoothseg.serve.jobs import Job, JobStore
from smoothseg.serve.uploads import check_header, job_input, unpack_dicom_zip
from smoothseg.serve.viewer import write_view

__all__ = ["DOWNLOADS", "ServeSettings", "clinical_features", "job_folder", "run_job", "worker_main"]

logger = logging.getLogger(__name__)

#: The downloadable files of a job, by the name the API uses (the only names it serves).
DOWNLOADS = {"labels.nii.gz": "application/gzip", "labels.seg.nrrd": "application/octet-stream",
             "seg.dcm": "application/dicom", "report.json": "application/json",
             "findings.txt": "text/plain; charset=utf-8"}
POLL_SECONDS = 0.25


@dataclass(frozen=True)
class ServeSettings:
    """What the server and its worker share (``smoothseg_serve``'s flags)."""

    data: Path
    dataset: str | None = None
    models: Path | None = None  # a results root holding the trained models; None: $SMOOTHSEG_RESULTS
    folds: tuple[str, ...] | None = None
    device: str = "auto"
    max_upload_bytes: int = 2 * 1024 ** 3
    keep_days: float = 7.0

    @property
    def database(self) -> Path:
        return self.data / "jobs.sqlite"

    @property
    def model_file(self) -> Path:
        return self.data / "model.json"

    @property
    def max_unpacked_bytes(self) -> int:
        return 4 * self.max_upload_bytes


def job_folder(data: Path, job_id: str) -> Path:
    return data / "jobs" / job_id


def clinical_features(tlvr_models: list[dict[str, Any]]) -> list[dict[str, str]]:
    """The clinical features the model's TLVR regression reads (``name``, ``kind``: numeric or categorical)."""
    if not tlvr_models:
        return []
    features: dict[str, str] = {}
    for model in ClinicalTLVR(pd.DataFrame(), tlvr_models).models:
        features.update(dict.fromkeys(model.numeric_features_, "numeric"))
        features.update(dict.fromkeys(model.categorical_features_, "categorical"))
    return [{"name": name, "kind": kind} for name, kind in features.items()]


def _clinical(job: Job, cascade: CascadePredictor, features: list[dict[str, str]]) -> ClinicalTLVR | None:
    if not job.clinical:
        return None
    kinds = {f["name"]: f["kind"] for f in features}
    row = {name: (float(value) if kinds.get(name) == "numeric" else value) for name, value in job.clinical.items()}
    return ClinicalTLVR(pd.DataFrame([row], index=pd.Index([job.id], name="case_id")), cascade.tumor.tlvr_models)


def _public(message: str, folder: Path, upload_name: str) -> str:
    """A failure message with the job's server paths replaced by the upload's name."""
    for path in sorted({str(folder / "input"), str(folder)}, key=len, reverse=True):
        message = message.replace(path, f"upload {upload_name!r}")
    return message


def run_job(job: Job, store: JobStore, cascade: CascadePredictor, model: dict[str, Any], settings: ServeSettings
            ) -> None:
    """Run one claimed job to ``done`` or ``failed``."""
    folder = job_folder(settings.data, job.id)
    out = folder / "out"
    pid = os.getpid()
    try:
        source = job_input(folder, job.input_kind)
        check_header(source, job.input_kind)
        is_dicom = job.input_kind == "dicom-zip"
        if is_dicom:
            store.progress(job.id, "unpacking the DICOM zip", 0.01, pid)
            source = unpack_dicom_zip(source, folder / "input" / "dicom", settings.max_unpacked_bytes)
        case = InputCase(job.id, source, ".nii.gz")
        def on_stage(stage: str, fraction: float) -> None:
            store.progress(job.id, stage, fraction, pid)

        clinical = _clinical(job, cascade, model["clinical_features"])
        outcome = predict_case_files(cascade, clinical, case, out, ".nii.gz", on_stage=on_stage)
        if outcome.status != "ok":
            raise SmoothSegError(outcome.message)
        store.progress(job.id, "writing the downloads and the viewer", 0.9, pid)
        labels_path = out / "labels.nii.gz"
        (out / f"{job.id}.nii.gz").replace(labels_path)
        case_report = out / f"{job.id}_report.json"
        report = json.loads(case_report.read_text())
        report.update(input=job.upload_name, output="labels.nii.gz", model_validation=model["validation"])
        image, geometry = read_image(source)
        labels, _ = read_image(labels_path, check_finite=False)
        write_slicer_segmentation(labels, geometry, out / "labels.seg.nrrd")
        if is_dicom:
            write_dicom_seg(labels, geometry, source, out / "seg.dcm")
        write_text(findings_text(report), out / "findings.txt")
        write_view(image, geometry, labels, report, folder / "view")
        write_json(report, out / "report.json")  # last: the job's files are complete
        case_report.unlink()
        if store.finish(job.id, pid):
            logger.info("job %s done (%s)", job.id, job.upload_name)
    except Exception as exc:  # noqa: BLE001 - the job fails, the worker goes on
        logger.warning("job %s failed: %s\n%s", job.id, exc, traceback.format_exc())
        store.fail(job.id, _public(str(exc), folder, job.upload_name), pid)


def load_model(settings: ServeSettings) -> tuple[CascadePredictor, dict[str, Any]]:
    """The cascade and what the server shows of it (``model.json``): model info, validation, clinical features."""
    roots = using_roots(results=settings.models) if settings.models is not None else contextlib.nullcontext()
    with roots:
        pair = select_models(settings.dataset, list(settings.folds) if settings.folds else None)
    cascade = CascadePredictor.from_models(pair, ModelOptions(device=resolve_device(settings.device)))
    model = {"model": cascade.model_info,
             "validation": model_validation(p.parent for p in pair.checkpoints("tumor")),
             "clinical_features": clinical_features(cascade.tumor.tlvr_models)}
    return cascade, model


def _exit_with(server: multiprocessing.process.BaseProcess) -> None:
    """Watchdog: end this worker at once when its server is gone (even mid-job), so that no orphan keeps writing
    into jobs that the next server queues again."""
    while server.is_alive():
        time.sleep(0.5)
    os._exit(0)


def worker_main(settings: ServeSettings, messages: Any) -> None:
    """The worker process: load the models, say ``("ready", pid)`` (or ``("error", message)``) on ``messages``, then
    claim and run jobs until the process is stopped or its server is gone."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)-7s worker: %(message)s",
                        datefmt="%H:%M:%S")
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl+C stops the server, which stops its worker
    server = multiprocessing.parent_process()
    if server is not None:
        threading.Thread(target=_exit_with, args=(server,), name="smoothseg-watchdog", daemon=True).start()
    try:
        cascade, model = load_model(settings)
        write_json(model, settings.model_file)
    except Exception as exc:  # noqa: BLE001 - the server reports it and stops
        messages.put(("error", f"the models could not be loaded: {exc}"))
        return
    store = JobStore(settings.database)
    messages.put(("ready", os.getpid()))
    while True:
        job = store.claim(os.getpid())
        if job is None:
            time.sleep(POLL_SECONDS)
            continue
        run_job(job, store, cascade, model, settings)

"""``smoothseg_serve``'s web application: a FastAPI app over the job queue, and the supervisor of its worker process.

REST API (``documentation/serve.md`` has curl examples):

* ``POST /api/jobs`` (multipart: the image in field ``file``, clinical values as further fields) -> 201
  ``{"id", "state": "queued"}``; 400 for an upload refused before queueing (kind, zip-slip, empty, clinical field),
  413 over the size limit.
* ``GET /api/jobs/{id}`` -> ``{"id", "state", "stage", "progress", "error", "files", ...}``;
  ``DELETE /api/jobs/{id}`` removes a finished job and its files.
* ``GET /api/jobs/{id}/files/{name}`` -> one of :data:`~smoothseg.serve.worker.DOWNLOADS` (no other name is served).
* ``GET /api/jobs/{id}/view`` and ``/view/{plane}/{index}`` -> the viewer's metadata and one slice.
* ``GET /api/health``, ``GET /api/model``.

With a token every ``/api`` call needs ``Authorization: Bearer <token>`` (or the session cookie the page's login
sets), and so does the page. Uploads stream to disk (Starlette spools a multipart file to a temporary file; the body
is counted as it arrives and cut off at the limit). Every HTML response carries a Content-Security-Policy that allows
only the page's own script and style files; the page writes every value from an upload or a report as text.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import math
import multiprocessing
import os
import queue
import secrets
import shutil
import threading
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.staticfiles import StaticFiles

from smoothseg.atomic import atomic_path
from smoothseg.errors import SmoothSegError
from smoothseg.serve.jobs import JOB_ID, Job, JobStore, new_job_id
from smoothseg.serve.uploads import UploadError, check_header, check_zip, input_kind, job_input
from smoothseg.serve.viewer import PLANES, read_meta, slice_bytes
from smoothseg.serve.worker import DOWNLOADS, ServeSettings, job_folder, worker_main

__all__ = ["LOOPBACK_HOSTS", "Supervisor", "create_app"]

logger = logging.getLogger(__name__)

COOKIE = "smoothseg_session"
STATIC = resources.files("smoothseg.serve") / "static"
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; connect-src 'self'; "
       "form-action 'self'; base-uri 'none'; frame-ancestors 'none'")
MAX_CLINICAL_FIELDS = 64
CLEANUP_SECONDS = 3600.0
SESSION_SECONDS = 12 * 3600
#: Host names a loopback-bound server answers to (a page on another site that rebinds its DNS name to 127.0.0.1
#: sends its own name and is refused).
LOOPBACK_HOSTS = ["127.0.0.1", "localhost", "::1", "[::1]"]


class Supervisor:
    """Starts the worker process, waits until its models are loaded, and restarts it when it dies, queueing again
    the job it was running (:meth:`JobStore.requeue_running`). Also deletes jobs older than the retention time."""

    def __init__(self, settings: ServeSettings, ready_timeout: float = 900.0) -> None:
        self.settings = settings
        self.ready_timeout = ready_timeout
        self.context = multiprocessing.get_context("spawn")
        self.process: multiprocessing.process.BaseProcess | None = None
        self.pid: int | None = None
        self.restarts = 0
        self.error: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._messages: Any = None

    def start(self) -> None:
        """Queue again the jobs a previous server left running, start the worker, wait for its models (raises
        :class:`SmoothSegError` with the worker's reason when they do not load), then watch it. One server per data
        folder: a second one is refused (it would queue again the first one's running job)."""
        self._lock_data_folder()
        store = JobStore(self.settings.database)
        deadline = time.monotonic() + 10.0  # a worker of a server that was killed ends itself within a second
        while any(_alive(pid) for pid in store.running_pids()) and time.monotonic() < deadline:
            time.sleep(0.2)
        requeued, failed = store.requeue_running(reason="the server stopped while running this job", count_try=False)
        if requeued or failed:
            logger.info("%d job(s) left running by the last server queued again, %d given up", len(requeued),
                        len(failed))
        store.close()
        self._spawn()
        self._thread = threading.Thread(target=self._watch, name="smoothseg-supervisor", daemon=True)
        self._thread.start()

    def _lock_data_folder(self) -> None:
        self.settings.data.mkdir(parents=True, exist_ok=True)
        self._lock_file = open(self.settings.data / "server.lock", "a+")  # noqa: SIM115 - held while serving
        try:
            fcntl.flock(self._lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self._lock_file.close()
            raise SmoothSegError(f"{self.settings.data}: another smoothseg_serve is using this data folder; stop it "
                                 "or give another --data") from None

    def _spawn(self) -> None:
        if self._messages is not None:
            self._messages.close()
        messages = self._messages = self.context.Queue()
        self.process = self.context.Process(target=worker_main, args=(self.settings, messages),
                                            name="smoothseg-worker", daemon=True)
        self.process.start()
        self.pid = self.process.pid  # known at once: a job it claims before saying ready is still its own
        deadline = time.monotonic() + self.ready_timeout
        while time.monotonic() < deadline and not self._stop.is_set():
            try:
                kind, value = messages.get(timeout=0.5)
            except queue.Empty:
                if not self.process.is_alive():
                    raise SmoothSegError(f"the worker process exited (code {self.process.exitcode}) before its "
                                         "models were loaded") from None
                continue
            if kind == "error":
                self.process.join(10)
                raise SmoothSegError(value)
            self.error = None
            logger.info("worker process %d ready", self.pid)
            return
        self.process.kill()
        if self._stop.is_set():
            raise SmoothSegError("the server is stopping")
        raise SmoothSegError(f"the worker process did not load its models within {self.ready_timeout:.0f} s")

    def _watch(self) -> None:
        store = JobStore(self.settings.database)
        last_cleanup = 0.0
        while not self._stop.wait(0.5):
            if self.process is not None and not self.process.is_alive() and not self._stop.is_set():
                code = self.process.exitcode
                reason = f"the worker process stopped (exit code {code}; out of memory?) while running this job"
                requeued, failed = store.requeue_running(self.pid, reason)
                logger.warning("worker process %s stopped (exit code %s); %d job(s) queued again, %d given up",
                               self.pid, code, len(requeued), len(failed))
                self.restarts += 1
                try:
                    self._spawn()
                except SmoothSegError as exc:
                    self.error = str(exc)
                    logger.error("the worker could not be restarted: %s (retrying in 10 s)", exc)
                    self._stop.wait(10)
            if time.monotonic() - last_cleanup > CLEANUP_SECONDS:
                remove_expired(store, self.settings)
                last_cleanup = time.monotonic()
        store.close()

    def health(self) -> dict[str, Any]:
        alive = self.process is not None and self.process.is_alive()
        return {"pid": self.pid, "alive": alive, "restarts": self.restarts, "error": self.error}

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
        if self.process is not None and self.process.is_alive():
            self.process.terminate()
            self.process.join(10)
            if self.process.is_alive():
                self.process.kill()
        if self._messages is not None:
            self._messages.close()
            self._messages.join_thread()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_expired(store: JobStore, settings: ServeSettings, now: float | None = None) -> list[str]:
    """Delete the jobs (files and rows) finished more than ``settings.keep_days`` ago, and job folders without a
    job (an upload cut off by a server that was killed) older than a day."""
    now = time.time() if now is None else now
    removed = store.finished_before(now - settings.keep_days * 86400.0)
    for job_id in removed:
        shutil.rmtree(job_folder(settings.data, job_id), ignore_errors=True)
        store.delete(job_id)
    jobs = settings.data / "jobs"
    for folder in sorted(jobs.iterdir()) if jobs.is_dir() else []:
        if store.get(folder.name) is None and folder.stat().st_mtime < now - 86400.0:
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder.name)
    if removed:
        logger.info("retention: %d job(s) older than %g days deleted", len(removed), settings.keep_days)
    return removed


def session_value(token: str) -> str:
    """The login cookie's value: derived from the token, so the cookie never holds the token itself."""
    return hashlib.sha256(f"smoothseg-serve-session:{token}".encode()).hexdigest()


class _TooLarge(Exception):
    pass


def _caused_by_limit(exc: BaseException) -> bool:
    """Whether ``exc`` is, wraps (exception groups of task groups) or was caused by :class:`_TooLarge`."""
    if isinstance(exc, _TooLarge):
        return True
    inner = [*getattr(exc, "exceptions", ()), exc.__cause__, exc.__context__]
    return any(e is not None and e is not exc and _caused_by_limit(e) for e in inner)


class BodyLimit:
    """ASGI middleware: a request body over ``limit`` bytes gets 413, by its Content-Length at once or while it
    streams (chunked uploads), before it fills the disk."""

    def __init__(self, app: Any, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["method"] not in ("POST", "PUT"):
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            await self._refuse(scope, receive, send)
            return
        received, started = 0, False

        async def counted() -> dict:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    raise _TooLarge
            return message

        async def watched(message: dict) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted, watched)
        except Exception as exc:  # noqa: BLE001 - only the limit's own exception is answered here
            if not _caused_by_limit(exc):
                raise
            if not started:
                await self._refuse(scope, receive, send)

    async def _refuse(self, scope: dict, receive: Any, send: Any) -> None:
        detail = (f"the upload is larger than the limit of {self.limit / 1024 ** 3:.2f} GB "
                  "(smoothseg_serve --max-upload-gb)")
        await JSONResponse({"detail": detail}, status_code=413)(scope, receive, send)


def _clinical_fields(form: Any, features: list[dict[str, str]]) -> dict[str, str]:
    """The form's clinical values (every field but ``file``; blank ones dropped), checked against the model's
    clinical features."""
    kinds = {f["name"]: f["kind"] for f in features}
    values = {}
    for name, value in form.multi_items():
        if name == "file":
            continue
        if not isinstance(value, str):
            raise UploadError(f"form field {name!r} holds a file; only 'file' may")
        if not value.strip():
            continue
        if name not in kinds:
            known = ", ".join(kinds) or "none"
            raise UploadError(f"unknown clinical field {name!r}; this model's clinical features are: {known}")
        if kinds[name] == "numeric":
            try:
                number = float(value)
            except ValueError:
                number = math.nan
            if not math.isfinite(number):
                raise UploadError(f"clinical field {name!r} must be a number, got {value!r}")
        values[name] = value.strip()
    return values


def _copy(upload: UploadFile, destination: Path) -> int:
    with atomic_path(destination) as partial, open(partial, "wb") as target:
        upload.file.seek(0)
        shutil.copyfileobj(upload.file, target, 1024 * 1024)
        size = target.tell()
    return size


def create_app(settings: ServeSettings, supervisor: Supervisor | None, token: str | None = None,
               model: dict[str, Any] | None = None, allowed_hosts: list[str] | None = None) -> FastAPI:
    """The application. ``supervisor`` (started) runs the worker; ``model`` is what the worker wrote to
    ``model.json`` (read from there when None); ``allowed_hosts`` (e.g. :data:`LOOPBACK_HOSTS`) are the only Host
    headers answered."""
    store = JobStore(settings.database)
    if model is None:
        model = json.loads(settings.model_file.read_text()) if settings.model_file.is_file() else {}
    features = model.get("clinical_features", [])

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        if supervisor is not None:
            supervisor.stop()
        store.close()

    app = FastAPI(title="smoothseg", summary="Liver and liver-tumour segmentation of CT (SmoothSegNet cascade)",
                  lifespan=lifespan, docs_url=None, redoc_url=None)

    session = None if token is None else session_value(token)

    def authorised(request: Request) -> bool:
        if token is None:
            return True
        header = request.headers.get("authorization", "")
        if header.lower().startswith("bearer "):
            return secrets.compare_digest(header[7:].strip().encode(), token.encode())
        return secrets.compare_digest(request.cookies.get(COOKIE, "").encode(), session.encode())

    def require_token(request: Request) -> None:
        if not authorised(request):
            raise HTTPException(401, "a valid token is required (Authorization: Bearer <token>)",
                                headers={"WWW-Authenticate": "Bearer"})

    def job_or_404(job_id: str) -> Job:
        job = store.get(job_id) if JOB_ID.fullmatch(job_id) else None
        if job is None:
            raise HTTPException(404, "no such job")
        return job

    def files_of(job: Job) -> list[str]:
        out = job_folder(settings.data, job.id) / "out"
        return [name for name in DOWNLOADS if (out / name).is_file()] if job.state == "done" else []

    @app.middleware("http")
    async def headers(request: Request, call_next: Any) -> Response:
        origin = request.headers.get("origin")
        if request.method not in ("GET", "HEAD", "OPTIONS") and origin is not None:
            if urlsplit(origin).netloc != request.headers.get("host", ""):
                return JSONResponse({"detail": "cross-origin request refused"}, status_code=403)
        response = await call_next(request)
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("Referrer-Policy", "no-referrer")
        if response.headers.get("content-type", "").startswith("text/html"):
            response.headers["Content-Security-Policy"] = CSP
        return response

    def page(name: str, status: int = 200) -> HTMLResponse:
        return HTMLResponse((STATIC / name).read_text(encoding="utf-8"), status_code=status,
                            headers={"Cache-Control": "no-store"})

    @app.get("/", include_in_schema=False)
    def index(request: Request) -> HTMLResponse:
        return page("index.html") if authorised(request) else page("login.html", 401)

    @app.post("/login", include_in_schema=False)
    async def login(request: Request) -> Response:
        form = await request.form(max_files=0, max_fields=4, max_part_size=4096)
        given = str(form.get("token", ""))
        if token is None or secrets.compare_digest(given.encode(), token.encode()):
            response = RedirectResponse("/", status_code=303)
            if token is not None:
                response.set_cookie(COOKIE, session_value(token), httponly=True, samesite="strict", path="/",
                                    max_age=SESSION_SECONDS)
            return response
        return page("login.html", 401)

    api = [Depends(require_token)]

    @app.get("/api/health", dependencies=api)
    def health() -> dict[str, Any]:
        worker = supervisor.health() if supervisor is not None else {"alive": False}
        return {"status": "ok" if worker.get("alive") else "degraded", "worker": worker, "jobs": store.counts()}

    @app.get("/api/model", dependencies=api)
    def model_info() -> dict[str, Any]:
        return {"model": model.get("model"), "validation": model.get("validation"), "clinical_features": features,
                "max_upload_bytes": settings.max_upload_bytes, "keep_days": settings.keep_days}

    @app.post("/api/jobs", dependencies=api, status_code=201)
    async def submit(request: Request) -> dict[str, Any]:
        form = await request.form(max_files=1, max_fields=MAX_CLINICAL_FIELDS, max_part_size=64 * 1024)
        folder: Path | None = None
        try:
            upload = form.get("file")
            if not isinstance(upload, UploadFile):
                raise UploadError("send the image in the multipart form field 'file'")
            name = (upload.filename or "").replace("\\", "/").rsplit("/", 1)[-1]
            kind = input_kind(name)
            clinical = _clinical_fields(form, features)
            job_id = new_job_id()
            folder = job_folder(settings.data, job_id)
            destination = job_input(folder, kind)
            destination.parent.mkdir(parents=True)
            size = await run_in_threadpool(_copy, upload, destination)
            if size == 0:
                raise UploadError(f"{name!r}: the upload is empty")
            if kind == "dicom-zip":
                await run_in_threadpool(check_zip, destination, settings.max_unpacked_bytes)
            else:
                await run_in_threadpool(check_header, destination, kind)
            job = store.create(job_id, name, kind, clinical)
        except UploadError as exc:
            if folder is not None:
                shutil.rmtree(folder, ignore_errors=True)
            raise HTTPException(400, str(exc)) from None
        except BaseException:
            if folder is not None:
                shutil.rmtree(folder, ignore_errors=True)
            raise
        finally:
            await form.close()
        logger.info("job %s queued (%s, %d bytes)", job.id, name, size)
        return {"id": job.id, "state": job.state}

    @app.get("/api/jobs/{job_id}", dependencies=api)
    def status(job_id: str) -> dict[str, Any]:
        job = job_or_404(job_id)
        return {**job.public(), "files": files_of(job)}

    @app.delete("/api/jobs/{job_id}", dependencies=api)
    def delete(job_id: str) -> dict[str, Any]:
        job = job_or_404(job_id)
        if job.state in ("queued", "running"):
            raise HTTPException(409, f"the job is {job.state}; delete it when it has ended")
        shutil.rmtree(job_folder(settings.data, job.id), ignore_errors=True)
        store.delete(job.id)
        return {"id": job.id, "deleted": True}

    @app.get("/api/jobs/{job_id}/files/{name}", dependencies=api)
    def download(job_id: str, name: str) -> FileResponse:
        job = job_or_404(job_id)
        if name not in files_of(job):
            raise HTTPException(404, f"no file {name!r} for this job; it has: {', '.join(files_of(job)) or 'none yet'}")
        return FileResponse(job_folder(settings.data, job.id) / "out" / name, media_type=DOWNLOADS[name],
                            filename=f"smoothseg_{job.id[:8]}_{name}")

    @app.get("/api/jobs/{job_id}/view", dependencies=api)
    def view(job_id: str) -> dict[str, Any]:
        job = job_or_404(job_id)
        meta = read_meta(job_folder(settings.data, job.id) / "view") if job.state == "done" else None
        if meta is None:
            raise HTTPException(404, "the viewer's data exist once the job is done")
        return meta

    @app.get("/api/jobs/{job_id}/view/{plane}/{index}", dependencies=api)
    def view_slice(job_id: str, plane: str, index: int) -> Response:
        job = job_or_404(job_id)
        if plane not in PLANES or job.state != "done":
            raise HTTPException(404, "no such slice")
        try:
            data = slice_bytes(job_folder(settings.data, job.id) / "view", plane, index)
        except (IndexError, FileNotFoundError) as exc:
            raise HTTPException(404, str(exc)) from None
        return Response(data, media_type="application/octet-stream", headers={"Cache-Control": "private, max-age=3600"})

    app.mount("/static", StaticFiles(directory=str(STATIC)), name="static")
    app.add_middleware(BodyLimit, limit=settings.max_upload_bytes)
    if allowed_hosts:
        app.add_middleware(TrustedHostMiddleware, allowed_hosts=allowed_hosts)
    return app



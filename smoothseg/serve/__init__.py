"""``smoothseg_serve``: the web app and REST API (FastAPI + uvicorn) over a persistent job queue (SQLite) served by
one worker process that keeps the models loaded. Needs ``pip install -e ".[serve]"``.

:mod:`~smoothseg.serve.jobs` (queue), :mod:`~smoothseg.serve.uploads` (accepted uploads, zip checks),
:mod:`~smoothseg.serve.worker` (the worker process), :mod:`~smoothseg.serve.viewer` (slices for the page),
:mod:`~smoothseg.serve.findings` (the findings text), :mod:`~smoothseg.serve.app` (the application, the supervisor).
"""

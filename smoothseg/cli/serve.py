"""``smoothseg_serve``: the clinician's web app and REST API over the trained cascade (see documentation/serve.md)."""

from __future__ import annotations

import argparse
import ipaddress
import logging
import os
from collections.abc import Sequence
from pathlib import Path

from smoothseg.cli.common import make_parser, run
from smoothseg.errors import SmoothSegError
from smoothseg.paths import base_folder

try:
    import uvicorn

    from smoothseg.serve.app import LOOPBACK_HOSTS, Supervisor, create_app
    from smoothseg.serve.worker import ServeSettings
except ImportError as missing:  # the optional extra is not installed
    MISSING: ImportError | None = missing
else:
    MISSING = None

logger = logging.getLogger("smoothseg.cli")

TOKEN_VARIABLE = "SMOOTHSEG_SERVE_TOKEN"


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _body(args: argparse.Namespace) -> int:
    if MISSING is not None:
        raise SmoothSegError(f'smoothseg_serve needs its extra: pip install -e ".[serve]" ({MISSING})')
    token = args.token or os.environ.get(TOKEN_VARIABLE) or None
    if not is_loopback(args.host) and token is None:
        raise SmoothSegError(f"--host {args.host} would expose the service beyond this machine without "
                             f"authentication; give --token TOKEN (or set ${TOKEN_VARIABLE}), or bind to 127.0.0.1")
    if token is not None and len(token) < 16:
        raise SmoothSegError("--token must have at least 16 characters (e.g. python -c 'import secrets; "
                             "print(secrets.token_urlsafe(24))')")
    if args.max_upload_gb <= 0 or args.keep_days <= 0:
        raise SmoothSegError("--max-upload-gb and --keep-days must be positive")
    settings = ServeSettings(data=args.data.resolve(), dataset=args.d, models=args.models, folds=tuple(args.f or ()),
                             device=args.device, max_upload_bytes=int(args.max_upload_gb * 1024 ** 3),
                             keep_days=args.keep_days)
    settings.data.mkdir(parents=True, exist_ok=True)
    supervisor = Supervisor(settings)
    supervisor.start()  # loads the models in the worker; a model that cannot load stops here with its reason
    app = create_app(settings, supervisor, token=token,
                     allowed_hosts=[*LOOPBACK_HOSTS, args.host] if is_loopback(args.host) else None)
    print(f"smoothseg_serve: http://{args.host}:{args.port}/ (data in {settings.data}"
          f"{', token required' if token else ''}); Ctrl+C stops it", flush=True)
    try:
        uvicorn.run(app, host=args.host, port=args.port, log_level="warning" if args.quiet else "info")
    finally:
        supervisor.stop()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = make_parser("smoothseg_serve", "Serve the trained cascade as a web app and REST API: upload a CT, follow "
                                            "the job, look at the slices with overlays, download the masks, the "
                                            "report and the findings text.")
    parser.add_argument("-d", default=None, help="dataset id or name of the models (default: the only dataset with "
                                                 "trained liver and tumour models)")
    parser.add_argument("--models", type=Path, default=None,
                        help="a results folder holding the trained models (default: $SMOOTHSEG_RESULTS)")
    parser.add_argument("-f", nargs="+", default=None, help="folds to ensemble (default: every trained fold)")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind; anything but loopback needs --token")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--data", type=Path, default=base_folder() / "serve",
                        help="folder for the job queue, uploads and results")
    parser.add_argument("--token", default=None, help=f"access token for the page and every API call (or "
                                                      f"${TOKEN_VARIABLE}, which keeps it out of the process list)")
    parser.add_argument("--keep-days", dest="keep_days", type=float, default=7.0,
                        help="delete jobs (uploads and results) this many days after they ended")
    parser.add_argument("--max-upload-gb", dest="max_upload_gb", type=float, default=2.0, help="upload size limit")
    parser.add_argument("-device", default="auto", help="auto, cuda, cpu or mps")
    return run(parser, _body, argv)


if __name__ == "__main__":
    raise SystemExit(main())

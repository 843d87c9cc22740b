"""``python -m upload_service``: the upload service under uvicorn, with its logging set up first.

Configuring logging before uvicorn starts makes every line of the process (uvicorn's own
start-up lines too) one format: with ``QA_LOG_FORMAT=json``, one Cloud Logging JSON object each.
On Cloud Run (``K_SERVICE`` set) it listens on ``0.0.0.0:$PORT`` and trusts the front end's
``X-Forwarded-*`` headers, so the URLs it returns are https.
"""

from __future__ import annotations

import argparse
import os
import sys

import uvicorn
from pydantic import ValidationError

from upload_service.core.auth import auth_refusal
from upload_service.core.config import get_settings, on_cloud_run
from upload_service.core.logs import configure_logging


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m upload_service", description="The beam-qa upload service (settings: QA_* variables, "
        "README \"Upload service\").")
    parser.add_argument("--host", default=os.environ.get("QA_UPLOAD_HOST") or ("0.0.0.0" if on_cloud_run() else
                                                                               "127.0.0.1"),
                        help="address to listen on (default: $QA_UPLOAD_HOST, else 127.0.0.1; 0.0.0.0 on Cloud Run)")
    parser.add_argument("--port", type=int, default=int(os.environ.get("PORT") or os.environ.get("QA_UPLOAD_PORT")
                                                        or 8000),
                        help="port (default: $PORT as Cloud Run sets it, else $QA_UPLOAD_PORT, else 8000)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = get_settings()
    except ValidationError as exc:
        problems = "; ".join((f"QA_{'_'.join(str(p) for p in e['loc']).upper()}: " if e["loc"] else "") + e["msg"]
                             for e in exc.errors())
        print(f"error: invalid settings: {problems}", file=sys.stderr)
        return 2
    refusal = auth_refusal(settings, args.host)
    if refusal:
        print(f"error: {refusal}", file=sys.stderr)
        return 2
    configure_logging(settings.log_format, settings.log_level)
    uvicorn.run("upload_service.main:app", host=args.host, port=args.port, log_config=None, access_log=False,
                forwarded_allow_ips="*" if on_cloud_run() else None)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""`lumbarclip serve`: the diagnosis web service and its page."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "serve",
        help="web service and page: upload scans, get the diagnosis",
        description="Serve a model folder over HTTP (FastAPI + uvicorn). The model is loaded once. "
        "GET / is a page to drop image files or a zipped DICOM series on; POST /predict (multipart "
        "field `files`: one or more DICOM/PNG/JPEG/TIFF/NIfTI files or a .zip of a DICOM series; "
        "query `saliency=1` adds overlays, `top_k=N`) answers predict's JSON; GET /health; GET /model "
        "(the model card). Uploads over --max-upload-mb are answered 413, unsupported types 415, "
        "unreadable files 422, uploads beyond --max-concurrent 503 (Retry-After), each with the reason; "
        "nearest reports only from a bank of synthetic notes unless --show-reports; uploads are kept "
        "in memory or a temporary folder deleted after the answer, and logs carry no file names or header values. Binds to "
        "localhost by default: put it behind an authenticating proxy before exposing it.",
    )
    p.add_argument("--model", required=True, help="model folder (written by train, then evaluate --split test)")
    p.add_argument("--host", default="127.0.0.1", help="interface to bind (default: 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000, help="port (default: 8000)")
    p.add_argument("--runtime", default="torch", choices=("torch", "onnx"), help="image scorer runtime (default: torch)")
    p.add_argument("--max-upload-mb", type=float, default=50.0, help="largest request body in MB (default: 50)")
    p.add_argument(
        "--max-concurrent", type=_positive_int, default=2,
        help="uploads analysed at once; further uploads are answered 503 with Retry-After at once (default: 2)",
    )
    p.add_argument(
        "--show-reports", action="store_true",
        help="show the nearest training reports even when the model folder's report bank was built from "
        "user reports (they may hold names or dates); without it only a bank of the built-in synthetic "
        "notes is shown",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import logging

    import uvicorn

    from lumbarclip.serve import create_app

    logging.getLogger("lumbarclip.serve").setLevel(logging.INFO)  # one line per request: counts, no names
    app = create_app(
        args.model, max_upload_mb=args.max_upload_mb, runtime=args.runtime,
        max_concurrent=args.max_concurrent, show_reports=args.show_reports,
    )
    print(f"serving {args.model} on http://{args.host}:{args.port}/ (Ctrl-C stops)")
    uvicorn.run(app, host=args.host, port=args.port, log_level="info")
    return 0


def _positive_int(text: str) -> int:
    """argparse type: an integer of at least 1 (0 uploads at once would refuse every upload)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value

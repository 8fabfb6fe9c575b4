"""The diagnosis web service: `create_app(model_dir)` loads the model once and serves

- `POST /predict`: multipart field `files` (one or more image files, or a zip of a DICOM
  series); query `saliency=1` adds overlay PNGs and `previews=1` the slices themselves, both as
  data URLs; `top_k` (0-10) findings and nearest reports. The answer is predict's result
  (`ServedResult`: `images`, `studies`, `skipped`, the models of `inference.results`, so the
  OpenAPI schema describes every field) with each path replaced by the name the client sent.
  Nearest reports are shown only when the model folder's report bank holds the built-in
  synthetic notes, or the server was started with `show_reports`: a bank built from user
  reports may hold names or dates, so by default no report text leaves the server.
- `GET /health`, `GET /model` (the model card), `GET /` the page (`static/index.html`).

Refusals, each a JSON `{"detail": reason}` after which the server serves on: 413 for a body
over `max_upload_mb` (checked on Content-Length and again while reading) or a zip expanding
too far, 415 for a type no reader takes, 422 when no uploaded file could be read, 503 with
`Retry-After` (at once, nothing queued) while `max_concurrent` uploads are being processed.
Uploads live in a temporary folder deleted when the answer is sent. The model runs one request
at a time (two shared cores gain nothing from more). Logs hold counts and timings only: no file
names, no DICOM header values.
"""

from __future__ import annotations

import base64
import io
import logging
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import FastAPI, HTTPException, Query, Request
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from pydantic import Field
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from lumbarclip.errors import InputError
from lumbarclip.bundle.reportbank import SYNTHETIC_REPORTS
from lumbarclip.inference.results import ImageResult, Line, Skipped, StudyResult
from lumbarclip.serve.uploads import SavedUploads, UploadError, UploadLimits, display_name, save_uploads

STATIC = Path(__file__).parent / "static"
log = logging.getLogger("lumbarclip.serve")


class BodyLimit:
    """ASGI middleware: 413 for a request body over `max_bytes`, by its Content-Length up front
    and by counting what arrives (chunked uploads state no length)."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await JSONResponse(self._reason(), status_code=413)(scope, receive, send)
            return
        seen = 0

        async def counted() -> Message:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.max_bytes:
                raise HTTPException(413, self._reason()["detail"])
            return message

        await self.app(scope, counted, send)

    def _reason(self) -> dict[str, str]:
        return {"detail": f"upload larger than the limit of {self.max_bytes / 2**20:g} MB"}


class ServedImage(ImageResult):
    """An image line as `POST /predict` answers it: with the slice itself, when asked for."""

    preview: str | None = Field(None, description="the slice as a PNG data URL (at most 256 px), when asked for")


class ServedResult(Line):
    """`POST /predict`'s answer: predict's result with each path the name the client sent."""

    images: list[ServedImage] = Field(description="one verdict per image scored")
    studies: list[StudyResult] = Field(description="one verdict per study")
    skipped: list[Skipped] = Field(description="inputs left out, each with the reason")


#: The refusals of `POST /predict`, each a JSON {"detail": reason}, for the OpenAPI schema.
REFUSALS: dict[int | str, dict[str, Any]] = {
    413: {"description": "upload over the size limit, or a zip expanding too far"},
    415: {"description": "a file type no reader takes"},
    422: {"description": "no uploaded file could be read (with `skipped`), or bad query values"},
    503: {"description": "every upload slot is taken; retry after Retry-After seconds"},
}

#: Seconds a client is asked to wait (Retry-After) when every upload slot is taken.
RETRY_AFTER_S = 5


def create_app(
    model_dir: str | Path,
    max_upload_mb: float = 50,
    runtime: str = "torch",
    predictor: Any = None,
    max_concurrent: int = 2,
    show_reports: bool = False,
) -> FastAPI:
    """The service for one model folder; the model is loaded here, once (or `predictor` given).
    At most `max_concurrent` uploads are held in memory and on disk at a time, so a burst cannot
    exhaust the server; `show_reports` shows nearest reports even from a bank of user reports."""
    if max_concurrent < 1:
        raise ValueError(f"max_concurrent must be at least 1, got {max_concurrent}")
    if predictor is None:
        from lumbarclip.inference.predict import Predictor

        predictor = Predictor.load(model_dir, runtime=runtime)
        predictor.findings()  # built now (text prompts embedded once), not on the first request
    max_bytes = int(max_upload_mb * 2**20)
    limits = UploadLimits(max_upload_bytes=max_bytes, max_unzipped_bytes=10 * max_bytes)
    model_lock = threading.Lock()
    slots = threading.BoundedSemaphore(max_concurrent)
    bank = predictor.bank
    reports = bank is not None and (show_reports or bank.source == SYNTHETIC_REPORTS)
    card = predictor.card
    app = FastAPI(title="LumbarCLIP", summary="Image-only diagnosis of lumbar spine MRI (the plane the model learnt: GET /model)", version="1")
    app.add_middleware(BodyLimit, max_bytes=max_bytes)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    app.state.predictor = predictor

    @app.get("/", include_in_schema=False)
    def page() -> FileResponse:
        return FileResponse(STATIC / "index.html", media_type="text/html")

    @app.get("/health")
    def health() -> dict[str, Any]:
        return {
            "status": "ok", "runtime": runtime, "max_upload_mb": max_upload_mb,
            "max_concurrent": max_concurrent, "nearest_reports": reports,
        }

    @app.get("/model")
    def model_card() -> dict[str, Any]:
        return card

    @app.post("/predict", response_model=ServedResult, response_model_exclude_unset=True, responses=REFUSALS)
    async def predict(
        request: Request,
        saliency: bool = Query(False, description="add saliency overlays as PNG data URLs"),
        previews: bool = Query(False, description="add each slice as a PNG data URL"),
        top_k: int = Query(3, ge=0, le=10, description="findings and nearest reports per image (0: none)"),
    ) -> ServedResult | JSONResponse:
        if not slots.acquire(blocking=False):
            log.info("predict refused: 503 (%d uploads in progress)", max_concurrent)
            return JSONResponse(
                {"detail": f"busy: {max_concurrent} uploads are being analysed; retry in {RETRY_AFTER_S} s"},
                status_code=503, headers={"Retry-After": str(RETRY_AFTER_S)},
            )
        try:
            return await _handle(request, saliency, previews, top_k)
        finally:
            slots.release()

    async def _handle(request: Request, saliency: bool, previews: bool, top_k: int) -> ServedResult | JSONResponse:
        started = time.perf_counter()
        async with request.form(max_files=limits.max_files + 1) as form:
            uploads = [f for f in form.getlist("files") if isinstance(f, UploadFile)]
            study_field = form.get("study")
            study = study_field.strip()[:64] if isinstance(study_field, str) and study_field.strip() else None
            files = [(display_name(f.filename, f"file{i}"), await f.read()) for i, f in enumerate(uploads)]
        n_bytes = sum(len(d) for _, d in files)
        try:
            with tempfile.TemporaryDirectory(prefix="lumbarclip-upload-") as tmp:
                saved = await run_in_threadpool(save_uploads, files, Path(tmp), limits)  # unzipping blocks
                del files
                body = await run_in_threadpool(
                    _run_predictor, predictor, model_lock, saved, Path(tmp), saliency, previews, top_k, study,
                    reports,
                )
        except UploadError as err:
            log.info("predict refused: %d (%d files, %d bytes)", err.status, len(uploads), n_bytes)
            return JSONResponse({"detail": err.reason}, status_code=err.status)
        log.info(
            "predict %d: %d files, %d bytes -> %d images, %d studies, %d skipped in %.0f ms",
            200 if body.images else 422, len(uploads), n_bytes, len(body.images), len(body.studies),
            len(body.skipped), 1000 * (time.perf_counter() - started),
        )
        if not body.images:
            detail = "no uploaded file could be read: " + "; ".join(f"{s.input}: {s.reason}" for s in body.skipped)
            return JSONResponse({"detail": detail, "skipped": [s.dump() for s in body.skipped]}, status_code=422)
        return body

    return app


def _run_predictor(
    predictor: Any,
    lock: threading.Lock,
    saved: SavedUploads,
    tmp: Path,
    saliency: bool,
    previews: bool,
    top_k: int,
    study: str | None = None,
    reports: bool = False,
) -> ServedResult:
    """predict's answer for the stored uploads, paths turned back into the client's names. One
    upload is not one study: files are grouped by their identity unless `study` names one.
    Nearest reports are dropped from each image unless `reports`."""
    saliency_dir = tmp / "saliency" if saliency else None
    if saliency_dir:
        saliency_dir.mkdir()
    try:
        with lock:
            result = predictor.predict(saved.inputs, top_k=top_k, saliency_dir=saliency_dir, progress=False, study=study)
    except InputError as err:  # nothing readable at all
        raise UploadError(422, _strip_paths(str(err), saved)) from None
    hidden = set() if reports else {"nearest_reports"}
    images = []
    for row in result.images:
        shown: dict[str, Any] = {"path": saved.display(row.path)}
        if row.saliency:
            shown["saliency"] = _data_url(Path(row.saliency).read_bytes())
        if previews:
            shown["preview"] = _preview(row.path)
        images.append(ServedImage.model_validate(row.model_dump(exclude_unset=True, exclude=hidden) | shown))
    studies = [_rename(s, saved) for s in result.studies]
    skipped = saved.skipped + [
        Skipped(input=saved.display(s.input), reason=_strip_paths(s.reason, saved)) for s in result.skipped
    ]
    return ServedResult(images=images, studies=studies, skipped=skipped)


def _rename(study: StudyResult, saved: SavedUploads) -> StudyResult:
    """Stored paths inside a study's selection and reason become the client's names."""
    update: dict[str, Any] = {}
    if study.selection:
        update["selection"] = [_strip_paths(line, saved) for line in study.selection]
    if study.reason:
        update["reason"] = _strip_paths(study.reason, saved)
    return study.model_copy(update=update)


def _strip_paths(reason: str, saved: SavedUploads) -> str:
    for stored, shown in sorted(saved.names.items(), key=lambda kv: -len(kv[0])):
        reason = reason.replace(stored, shown)
    return reason


def _data_url(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _preview(path: str, side: int = 256) -> str | None:
    """The slice as the reader sees it (8-bit PNG, at most `side` pixels), or None if unreadable."""
    from PIL import Image

    from lumbarclip.data.imageio import load_image

    try:
        pixels = load_image(path)
    except InputError:
        return None
    image = Image.fromarray((pixels * 255).round().astype(np.uint8))
    image.thumbnail((side, side))
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return _data_url(buf.getvalue())


"""The HTTP segmentation service: FastAPI over the one inference path.

``POST /predict`` takes an image (a multipart upload, or the raw bytes with an ``image/*`` or
``application/octet-stream`` content type) and returns the class-index PNG with the palette;
``?format=json`` returns the image size, each class's share of the pixels and the timing;
``?overlay=1`` returns the overlay PNG. ``GET /health``, ``GET /info`` (model, classes, palette,
normalisation, runtime, limits) and ``GET /metrics`` (Prometheus text: requests by endpoint and
status, a latency histogram).

**Limits.** Every bad request is a JSON ``{"error": ...}`` with its status, never a crash, and
the service goes on answering: a body over ``max_upload_mb`` (413, counted while it streams in,
whatever ``Content-Length`` claims), an image whose header claims more than ``max_pixels``
(413, refused before decoding: a decompression bomb costs nothing), an empty, truncated or
non-image body (400), a wrong content type (415), more requests waiting than ``max_queue``
(503 with ``Retry-After``). Images above ``tile_threshold_pixels`` go through tiled prediction
(:func:`~pixelwise.engine.inference.predict_large_image`), so memory stays bounded.

**The page** at ``/`` (files under ``static/``, inside the package) uploads images, overlays
their masks with an opacity slider, lists the classes with their shares (each can be hidden),
offers the mask PNG, and on a click asks ``POST /explain?x=&y=`` for the pixel's top classes and
the receptive field of that output pixel, from pixelwise's own geometry
(:func:`pixelwise.analysis.trace`), drawn on the image.

**Concurrency.** The network runs one request at a time in a worker thread (PyTorch and ONNX
Runtime already use every core for one image); requests beyond it wait, up to ``max_queue``.
"""
from __future__ import annotations

import asyncio
import io
import time
from dataclasses import asdict, dataclass
from importlib.metadata import version
from pathlib import Path
from typing import Any, AsyncGenerator, Callable, Mapping

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from PIL import Image
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser
from torch import nn

from pixelwise.data.io import DataError, decode_image_bytes
from pixelwise.engine.checkpoint import LoadedModel
from pixelwise.engine.inference import InferenceOptions, predict_large_image
from pixelwise.engine.predict import label_image, overlay as overlay_image, predict_whole


STATIC = Path(__file__).resolve().parent / "static"
"""The page's files, shipped inside the package: nothing is fetched from elsewhere."""


@dataclass(frozen=True)
class ServiceLimits:
    """What the service accepts.

    Attributes:
        max_upload_mb: the largest request body, in MiB.
        max_pixels: the most pixels an image may have (checked on its header, before decoding).
        tile_threshold_pixels: images with more pixels go through tiled prediction.
        max_queue: requests that may wait while one runs; beyond, 503.
    """

    max_upload_mb: float = 20.0
    max_pixels: int = 100_000_000
    tile_threshold_pixels: int = 4096 * 4096
    max_queue: int = 16

    def __post_init__(self) -> None:
        if self.max_upload_mb <= 0 or self.max_pixels < 1 or self.tile_threshold_pixels < 1 or self.max_queue < 0:
            raise ValueError(f"service limits must be positive (max_queue may be 0), got {self}")


class ServiceError(Exception):
    """A request the service refuses: HTTP status and a message saying what to do."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers or {}


class _Metrics:
    """Prometheus counters on a registry of the app's own (several apps in one process stay apart)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("pixelwise_requests", "HTTP requests by endpoint and status",
                                ["endpoint", "status"], registry=self.registry)
        self.latency = Histogram("pixelwise_request_seconds", "Request latency by endpoint", ["endpoint"],
                                 registry=self.registry,
                                 buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60))


class _Model:
    """The loaded model, run one request at a time off the event loop, with a bounded wait."""

    def __init__(self, loaded: LoadedModel, options: InferenceOptions, limits: ServiceLimits,
                 geometry: nn.Module | None) -> None:
        self.loaded, self.options, self.limits, self.geometry = loaded, options, limits, geometry
        self.lock = asyncio.Lock()
        self.waiting = 0
        self.fields: dict[tuple[int, int], tuple[tuple[float, float], tuple[float, float]]] = {}

    async def run(self, work: Callable[[np.ndarray], Any], pixels: np.ndarray) -> Any:
        """``work(pixels)`` in the worker thread, one request at a time; 503 when too many wait."""
        if self.waiting >= self.limits.max_queue and self.lock.locked():
            raise ServiceError(503, f"busy: {self.waiting} requests are already waiting (max_queue "
                                    f"{self.limits.max_queue}); retry shortly", {"Retry-After": "1"})
        self.waiting += 1
        running = False
        try:
            async with self.lock:
                self.waiting, running = self.waiting - 1, True
                return await asyncio.to_thread(work, pixels)
        finally:
            if not running:  # the client went away while waiting
                self.waiting -= 1

    def labels(self, pixels: np.ndarray) -> tuple[np.ndarray, bool]:
        """Class indices, and whether they were predicted tile by tile."""
        height, width = pixels.shape[:2]
        if height * width > self.limits.tile_threshold_pixels:
            return predict_large_image(self.loaded.model, pixels, self.loaded.classes.num_classes, self.options,
                                       self.loaded.normalization), True
        return predict_whole(self.loaded, pixels, self.options)[0], False

    def explain(self, pixels: np.ndarray, y: int, x: int, top: int) -> dict[str, Any]:
        """The ``top`` classes at pixel ``(y, x)`` with their probabilities, and the receptive
        field of that output pixel in image coordinates (from :func:`pixelwise.analysis.trace`)."""
        probabilities = predict_whole(self.loaded, pixels, self.options)[1][:, y, x]
        best = probabilities.topk(min(top, probabilities.numel()))
        names = self.loaded.classes.names
        result: dict[str, Any] = {"x": x, "y": y, "top": [
            {"index": int(i), "name": names[int(i)], "probability": float(p)} for p, i in zip(*best)]}
        if self.geometry is not None:
            result["receptive_field"] = self._field(pixels.shape[:2], y, x)
        return result

    def _field(self, size: tuple[int, int], y: int, x: int) -> dict[str, Any]:
        if size not in self.fields:  # the geometry depends on the size only: traced once per size
            from pixelwise.analysis import trace

            last = trace(self.geometry, size).rows[-1]
            self.fields[size] = (tuple(map(float, last.center)), tuple(map(float, last.rf)))
            while len(self.fields) > 64:
                self.fields.pop(next(iter(self.fields)))
        (center_y, center_x), (rf_h, rf_w) = self.fields[size]
        cy, cx = center_y + y, center_x + x  # logits come back at the input's size: stride 1
        height, width = size
        return {"size": [rf_h, rf_w], "center": [cy, cx],
                "top": max(0.0, cy - rf_h / 2), "left": max(0.0, cx - rf_w / 2),
                "bottom": min(float(height), cy + rf_h / 2), "right": min(float(width), cx + rf_w / 2)}


# Reading uploads -------------------------------------------------------------------------------

RAW_TYPES = ("application/octet-stream",)


async def _bounded_body(request: Request, limit: int) -> bytes:
    """The request body, refused with 413 as soon as it passes ``limit`` bytes."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise ServiceError(413, f"the upload is {int(declared)} bytes, more than the {limit} accepted "
                                f"(--max-upload-mb); send a smaller image")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ServiceError(413, f"the upload passed the {limit} bytes accepted (--max-upload-mb); "
                                    f"send a smaller image")
        chunks.append(chunk)
    return b"".join(chunks)


async def _once(body: bytes) -> AsyncGenerator[bytes, None]:
    yield body


async def read_upload(request: Request, limit: int) -> tuple[bytes, str]:
    """The image bytes and a name for messages, from a multipart upload or a raw body."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type != "multipart/form-data" and not content_type.startswith("image/") \
            and content_type not in RAW_TYPES:
        raise ServiceError(415, f"content type {content_type or '(none)'!r} is not accepted; send a multipart "
                                f"upload (field 'file') or the image bytes as image/* or application/octet-stream")
    body = await _bounded_body(request, limit)
    if content_type != "multipart/form-data":
        return body, "upload"
    try:
        form = await MultiPartParser(request.headers, _once(body), max_files=1, max_fields=8).parse()
    except MultiPartException as error:
        raise ServiceError(400, f"malformed multipart upload ({error.message}); send one file in a field "
                                f"named 'file'") from error
    files = [value for _, value in form.multi_items() if isinstance(value, UploadFile)]
    if not files:
        raise ServiceError(400, "the multipart upload holds no file; send the image in a field named 'file'")
    return await files[0].read(), files[0].filename or "upload"


# The app ---------------------------------------------------------------------------------------

def app_for_file(source: str, runtime: str | None = None, precision: str | None = None, device: str = "cpu",
                 options: InferenceOptions | Mapping[str, Any] | None = None,
                 limits: ServiceLimits | None = None) -> FastAPI:
    """The service for a checkpoint or an exported ONNX file (what ``pixelwise serve`` runs).

    ``options`` are the inference options, or keyword arguments of
    :meth:`~pixelwise.engine.inference.InferenceOptions.create` whose ``scales`` and ``flip``,
    when absent or ``None``, are the file's recorded ones (see :func:`create_app`)."""
    from pixelwise.engine.loading import is_onnx, load_predictor
    from pixelwise.export import read_metadata
    from pixelwise.models import create_model, saved_options

    loaded = load_predictor(source, runtime, precision, device)
    if isinstance(options, Mapping):
        options = InferenceOptions.following(loaded.inference, **options)
    geometry = None
    if is_onnx(source):  # the receptive fields of /explain need the architecture, not the weights
        spec = read_metadata(source)["model_spec"]
        geometry = create_model(spec["name"], num_classes=spec["num_classes"],
                                **saved_options(spec["name"], spec["options"]))
    return create_app(loaded, options, limits, source, geometry)


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _shares(labels: np.ndarray, loaded: LoadedModel) -> list[dict]:
    counts = np.bincount(labels.ravel(), minlength=loaded.classes.num_classes)
    total = max(1, labels.size)
    return [{"index": index, "name": name, "color": list(loaded.classes.palette[index]),
             "share": counts[index] / total} for index, name in enumerate(loaded.classes.names)]


def create_app(loaded: LoadedModel, options: InferenceOptions | None = None, limits: ServiceLimits | None = None,
               source: str = "model", geometry: nn.Module | None = None) -> FastAPI:
    """The service for one loaded model (see the module docstring).

    Args:
        loaded: the model (any runtime), its classes and normalisation
            (:func:`~pixelwise.engine.loading.load_predictor`).
        options: how logits are computed (default: whole image, 512 windows for tiled images,
            and the test-time scales and flip the model records, those of its recipe).
        limits: what requests may be.
        source: the model's file, for ``/info``.
        geometry: the network's architecture (weights do not matter), for the receptive fields of
            ``/explain``; default: the loaded module itself when it is a PyTorch one.
    """
    options = options or InferenceOptions.following(loaded.inference)
    limits = limits or ServiceLimits()
    geometry = geometry or getattr(loaded.model, "model", None)
    model, metrics = _Model(loaded, options, limits, geometry), _Metrics()
    app = FastAPI(title="pixelwise", version=version("pixelwise"), docs_url=None, redoc_url=None)

    @app.middleware("http")
    async def count(request: Request, call_next):
        start = time.perf_counter()
        response = await call_next(request)
        endpoint = request.url.path if request.url.path in _ENDPOINTS else "other"
        metrics.requests.labels(endpoint, str(response.status_code)).inc()
        metrics.latency.labels(endpoint).observe(time.perf_counter() - start)
        return response

    @app.exception_handler(ServiceError)
    async def refuse(request: Request, error: ServiceError) -> JSONResponse:
        return JSONResponse({"error": error.message}, status_code=error.status, headers=error.headers)

    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(STATIC / "index.html")

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok"}

    @app.get("/info")
    async def info() -> dict:
        runtime = loaded.model
        return {"model": source, "version": version("pixelwise"),
                "runtime": {"name": getattr(runtime, "name", "torch"),
                            "precision": getattr(runtime, "precision", options.precision or "fp32")},
                "classes": list(loaded.classes.names), "palette": [list(c) for c in loaded.classes.palette],
                "normalization": loaded.normalization, "inference": options.to_dict(), "limits": asdict(limits)}

    @app.get("/metrics")
    async def prometheus() -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.post("/predict")
    async def predict(request: Request, format: str = "png", overlay: int = 0) -> Response:  # noqa: A002
        start = time.perf_counter()
        if format not in ("png", "json"):
            raise ServiceError(400, f"format must be 'png' or 'json', got {format!r}")
        data, name = await read_upload(request, int(limits.max_upload_mb * 2**20))
        try:
            pixels = await asyncio.to_thread(decode_image_bytes, data, name, limits.max_pixels)
        except DataError as error:
            raise ServiceError(413 if error.kind == "too-large" else 400, str(error)) from error
        decoded = time.perf_counter()
        labels, tiled = await model.run(model.labels, pixels)
        done = time.perf_counter()
        timing = {"decode_ms": 1e3 * (decoded - start), "inference_ms": 1e3 * (done - decoded),
                  "total_ms": 1e3 * (done - start)}
        headers = {"X-Inference-Ms": f"{timing['inference_ms']:.1f}", "X-Tiled": str(tiled).lower()}
        if format == "json":
            return JSONResponse({"width": int(pixels.shape[1]), "height": int(pixels.shape[0]), "tiled": tiled,
                                 "classes": _shares(labels, loaded), "timing": timing}, headers=headers)
        image = Image.fromarray(overlay_image(pixels, labels, loaded.classes)) if overlay else \
            label_image(labels, loaded.classes)
        return Response(await asyncio.to_thread(_png, image), media_type="image/png", headers=headers)

    @app.post("/explain")
    async def explain(request: Request, x: int, y: int, top: int = 3) -> dict:
        data, name = await read_upload(request, int(limits.max_upload_mb * 2**20))
        try:
            pixels = await asyncio.to_thread(decode_image_bytes, data, name, limits.tile_threshold_pixels)
        except DataError as error:
            raise ServiceError(413 if error.kind == "too-large" else 400, str(error)) from error
        height, width = pixels.shape[:2]
        if not (0 <= x < width and 0 <= y < height) or top < 1:
            raise ServiceError(400, f"pixel ({x}, {y}) is outside the {width}×{height} image (or top < 1)")
        return await model.run(lambda image: model.explain(image, y, x, top), pixels)

    return app


_ENDPOINTS = ("/", "/health", "/info", "/metrics", "/predict", "/explain")

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
(503 with ``Retry-After``), a wrong query parameter (400), an unknown path (404). An image is
judged by the work it causes, before it is decoded: the area the network computes on (its
padding to the model's grid and the test-time scales included, see
:meth:`~pixelwise.inference.logits.InferenceOptions.pass_areas`), not its pixel count, so a
1×60000 strip is not a cheap request. Sides further apart than ``max_aspect_ratio`` are refused
(422); a pass larger than ``tile_threshold_pixels`` goes through tiled prediction
(:func:`~pixelwise.inference.logits.predict_large_image`), so memory stays bounded; ``/explain``,
which needs the whole image's probabilities, refuses passes above ``explain_max_pixels`` (413).
A request whose client has gone while it waited is dropped before it takes the model. An
unexpected failure is a JSON 500 (its traceback in the server's log), counted like the rest.

**Browsers.** Every response carries a Content-Security-Policy (``default-src 'self'``, no inline
script), ``X-Content-Type-Options: nosniff`` and ``X-Frame-Options: DENY``; a request whose
``Host`` is not one of ``allowed_hosts`` (the address served, and loopback names) is refused, so
a web page cannot reach the service through a domain name of its own (DNS rebinding). The page
shows every string from the model (class names) and from uploads as text, never as markup, and
``/info`` names the model's file, not its path on the server.

**The page** at ``/`` (files under ``static/``, inside the package) uploads images, overlays
their masks with an opacity slider, lists the classes with their shares (each can be hidden),
offers the mask PNG, and on a click asks ``POST /explain?x=&y=`` for the pixel's top classes and
the receptive field of that output pixel, from pixelwise's own geometry
(:func:`pixelwise.geometry.trace`), drawn on the image.

**Concurrency.** The network runs one request at a time in a worker thread (PyTorch and ONNX
Runtime already use every core for one image); requests beyond it wait, up to ``max_queue``,
holding only their upload's bytes: the next one is decoded while the network runs, the rest
when their turn nears, so at most two decoded images exist at once.
"""
from __future__ import annotations

import asyncio
import io
import time
from dataclasses import asdict, dataclass
from importlib.metadata import version
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from PIL import Image
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from torch import nn

from pixelwise.data.io import DataError, upload_size
from pixelwise.errors import InputError
from pixelwise.geometry import trace
from pixelwise.inference.loading import LoadedModel, architecture, load_predictor
from pixelwise.inference.logits import InferenceOptions, predict_large_image
from pixelwise.inference.predict import label_image, overlay as overlay_image, predict_whole
from pixelwise.serve.http import (LOOPBACK_HOSTS, Guard, ServiceError, ServiceMetrics, Upload, answer_errors_in_json,
                                  check_connected, read_upload, refusal)

STATIC = Path(__file__).resolve().parent / "static"
"""The page's files, shipped inside the package: nothing is fetched from elsewhere."""


@dataclass(frozen=True)
class ServiceLimits:
    """What the service accepts, bounded by the work a request causes.

    Attributes:
        max_upload_mb: the largest request body, in MiB.
        max_pixels: the most pixels an image may have (checked on its header, before decoding),
            and the largest area (padding included) a tiled prediction may compute on.
        tile_threshold_pixels: the largest area one whole-image forward pass may compute on
            (padding and test-time scales included); above it, tiled prediction.
        explain_max_pixels: the same for ``/explain``, which holds every class's probability
            at every pixel and traces the network at the image's size; above it, 413.
        max_aspect_ratio: the most the longer side may be of the shorter; beyond, 422.
        max_queue: requests that may wait while one runs; beyond, 503.
    """

    max_upload_mb: float = 20.0
    max_pixels: int = 100_000_000
    tile_threshold_pixels: int = 2048 * 2048
    explain_max_pixels: int = 1024 * 1024
    max_aspect_ratio: float = 20.0
    max_queue: int = 16

    def __post_init__(self) -> None:
        if min(self.max_upload_mb, self.max_pixels, self.tile_threshold_pixels, self.explain_max_pixels) <= 0 \
                or self.max_aspect_ratio < 1 or self.max_queue < 0:
            raise InputError(f"service limits must be positive, max_aspect_ratio at least 1 and max_queue at least "
                             f"0, got {self}")


class _Model:
    """The loaded model, run one request at a time off the event loop, with a bounded wait."""

    def __init__(self, loaded: LoadedModel, options: InferenceOptions, limits: ServiceLimits,
                 geometry: nn.Module | None) -> None:
        self.loaded, self.options, self.limits, self.geometry = loaded, options, limits, geometry
        self.lock = asyncio.Lock()
        self.decoded = asyncio.Semaphore(2)
        self.waiting = 0
        self.fields: dict[tuple[int, int], tuple[tuple[float, float], tuple[float, float]]] = {}

    async def run(self, request: Request, upload: Upload, work: Callable[[np.ndarray], Any]) -> Any:
        """``work(pixels)`` of the upload in the worker thread, one request at a time; 503 when
        too many wait, and nothing done for a client that went away while it waited.

        Waiting requests hold their upload's bytes only: an image is decoded when the request
        before it is running, so at most two decoded images exist at once (the running one and
        the next, whose decoding overlaps the network)."""
        if self.waiting >= self.limits.max_queue and self.lock.locked():
            raise ServiceError(503, f"busy: {self.waiting} requests are already waiting (max_queue "
                                    f"{self.limits.max_queue}); retry shortly", {"Retry-After": "1"})
        self.waiting += 1
        running = False
        try:
            async with self.decoded:
                await check_connected(request)
                pixels = await asyncio.to_thread(upload.decode)
                async with self.lock:
                    self.waiting, running = self.waiting - 1, True
                    await check_connected(request)
                    return await asyncio.to_thread(work, pixels)
        finally:
            if not running:  # refused, or cancelled, while waiting
                self.waiting -= 1

    def plan(self, height: int, width: int, explain: bool = False) -> bool:
        """Whether an image of this size is predicted tile by tile; raises :class:`ServiceError`
        when the work it would cause is beyond the limits."""
        limits = self.limits
        if max(height, width) > limits.max_aspect_ratio * min(height, width):
            raise ServiceError(422, f"the image is {width}×{height}: its sides are more than "
                                    f"{limits.max_aspect_ratio:g} times apart (max_aspect_ratio), which costs the "
                                    f"network far more than its pixels; crop it into pieces of a more usual shape")
        largest = max(self.options.pass_areas((height, width), self.geometry))
        if explain and largest > limits.explain_max_pixels:
            raise ServiceError(413, f"the image is {width}×{height}: /explain would compute on {largest} pixels "
                                    f"(the network's padding and test-time scales included), more than the "
                                    f"{limits.explain_max_pixels} it accepts (--explain-max-pixels); explain a "
                                    f"crop or a downscaled copy")
        if explain or largest <= limits.tile_threshold_pixels:
            return False
        tiled = InferenceOptions.create().pass_areas((height, width), self.geometry)[0]
        if tiled > limits.max_pixels:
            raise ServiceError(413, f"the image is {width}×{height}: the network would compute on {tiled} pixels "
                                    f"(its padding included), more than the {limits.max_pixels} accepted "
                                    f"(--max-pixels); downscale or crop it")
        return True

    def labels(self, pixels: np.ndarray) -> tuple[np.ndarray, bool]:
        """Class indices, and whether they were predicted tile by tile."""
        if self.plan(*pixels.shape[:2]):
            return predict_large_image(self.loaded.model, pixels, self.loaded.classes.num_classes, self.options,
                                       self.loaded.normalization), True
        return predict_whole(self.loaded, pixels, self.options)[0], False

    def explain(self, pixels: np.ndarray, y: int, x: int, top: int) -> dict[str, Any]:
        """The ``top`` classes at pixel ``(y, x)`` with their probabilities, and the receptive
        field of that output pixel in image coordinates (from :func:`pixelwise.geometry.trace`)."""
        self.plan(*pixels.shape[:2], explain=True)
        _check_pixel(x, y, pixels.shape[:2])  # again: the header's size is before EXIF orientation
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


# The app ---------------------------------------------------------------------------------------

def app_for_file(source: str, runtime: str | None = None, precision: str | None = None, device: str = "cpu",
                 options: InferenceOptions | Mapping[str, Any] | None = None,
                 limits: ServiceLimits | None = None, allowed_hosts: Sequence[str] = LOOPBACK_HOSTS) -> FastAPI:
    """The service for a checkpoint or an exported ONNX file (what ``pixelwise serve`` runs).

    ``options`` are the inference options, or keyword arguments of
    :meth:`~pixelwise.inference.logits.InferenceOptions.create` whose ``scales`` and ``flip``,
    when absent or ``None``, are the file's recorded ones; ``allowed_hosts`` as in
    :func:`create_app`."""
    loaded = load_predictor(source, runtime, precision, device)
    if isinstance(options, Mapping):
        options = InferenceOptions.following(loaded.inference, **options)
    # The receptive fields of /explain need the architecture, not the weights: where an ONNX
    # graph runs it, the network is rebuilt from the file's record.
    geometry = getattr(loaded.model, "model", None)
    if geometry is None:
        geometry = architecture(loaded.model_spec, repr(source))
    return create_app(loaded, options, limits, source, geometry, allowed_hosts)


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
               source: str = "model", geometry: nn.Module | None = None,
               allowed_hosts: Sequence[str] = LOOPBACK_HOSTS) -> FastAPI:
    """The service for one loaded model (see the module docstring).

    Args:
        loaded: the model (any runtime), its classes and normalisation
            (:func:`~pixelwise.inference.loading.load_predictor`).
        options: how logits are computed (default: whole image, 512 windows for tiled images,
            and the test-time scales and flip the model records, those of its recipe).
        limits: what requests may be.
        source: the model's file; ``/info`` shows its name only, never the server's folders.
        geometry: the network's architecture (weights do not matter), for the receptive fields of
            ``/explain`` and the padded size a request computes on; default: the loaded module
            itself when it is a PyTorch one.
        allowed_hosts: the host names and addresses requests may name in their ``Host`` header
            (the port aside): the address served and the names it is known by. A wildcard
            address (``0.0.0.0``, ``::``) admits every address but no name; ``"*"`` admits any
            host (DNS rebinding then reaches the service).
    """
    options = options or InferenceOptions.following(loaded.inference)
    limits = limits or ServiceLimits()
    geometry = geometry or getattr(loaded.model, "model", None)
    model, metrics = _Model(loaded, options, limits, geometry), ServiceMetrics()
    app = FastAPI(title="pixelwise", version=version("pixelwise"), docs_url=None, redoc_url=None)
    app.add_middleware(Guard, metrics=metrics, allowed_hosts=tuple(allowed_hosts))

    answer_errors_in_json(app)
    _add_status_routes(app, loaded, options, limits, source, metrics)
    _add_model_routes(app, model)
    return app


def _add_status_routes(app: FastAPI, loaded: LoadedModel, options: InferenceOptions, limits: ServiceLimits,
                       source: str, metrics: ServiceMetrics) -> None:
    """The page, ``/health``, ``/info`` and ``/metrics``."""
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
        return {"model": Path(source).name, "version": version("pixelwise"),
                "runtime": {"name": getattr(runtime, "name", "torch"),
                            "precision": getattr(runtime, "precision", options.precision or "fp32")},
                "classes": list(loaded.classes.names), "palette": [list(c) for c in loaded.classes.palette],
                "normalization": loaded.normalization, "inference": options.to_dict(), "limits": asdict(limits)}

    @app.get("/metrics")
    async def prometheus() -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)


def _add_model_routes(app: FastAPI, model: _Model) -> None:
    """``/predict`` and ``/explain``: the routes that run the network."""
    loaded, limits = model.loaded, model.limits

    @app.post("/predict")
    async def predict(request: Request, format: str = "png", overlay: int = 0) -> Response:  # noqa: A002
        start = time.perf_counter()
        if format not in ("png", "json"):
            raise ServiceError(400, f"format must be 'png' or 'json', got {format!r}")
        upload = await _upload(request, limits, model.plan)

        def segment(image: np.ndarray) -> tuple[np.ndarray, np.ndarray, bool, float]:
            begun = time.perf_counter()
            return (image, *model.labels(image), 1e3 * (time.perf_counter() - begun))

        pixels, labels, tiled, inference_ms = await model.run(request, upload, segment)
        timing = {"decode_ms": 1e3 * upload.decode_seconds, "inference_ms": inference_ms,
                  "total_ms": 1e3 * (time.perf_counter() - start)}
        headers = {"X-Inference-Ms": f"{timing['inference_ms']:.1f}", "X-Tiled": str(tiled).lower()}
        if format == "json":
            return JSONResponse({"width": int(pixels.shape[1]), "height": int(pixels.shape[0]), "tiled": tiled,
                                 "classes": _shares(labels, loaded), "timing": timing}, headers=headers)
        image = Image.fromarray(overlay_image(pixels, labels, loaded.classes)) if overlay else \
            label_image(labels, loaded.classes)
        return Response(await asyncio.to_thread(_png, image), media_type="image/png", headers=headers)

    @app.post("/explain")
    async def explain(request: Request, x: int, y: int, top: int = 3) -> dict:
        if top < 1:
            raise ServiceError(400, f"top must be at least 1 (how many classes to list), got {top}")
        upload = await _upload(request, limits, lambda height, width: model.plan(height, width, explain=True))
        _check_pixel(x, y, upload.size)
        return await model.run(request, upload, lambda image: model.explain(image, y, x, top))


def _check_pixel(x: int, y: int, size: tuple[int, int]) -> None:
    height, width = size
    if not (0 <= x < width and 0 <= y < height):
        raise ServiceError(400, f"pixel ({x}, {y}) is outside the {width}×{height} image; x must be in "
                                f"0..{width - 1} and y in 0..{height - 1}")


async def _upload(request: Request, limits: ServiceLimits, plan: Callable[[int, int], Any]) -> Upload:
    """The uploaded image, refused by its header or by ``plan(height, width)`` before decoding."""
    data, name = await read_upload(request, int(limits.max_upload_mb * 2**20))
    try:
        height, width = await asyncio.to_thread(upload_size, data, name, limits.max_pixels)
    except DataError as error:
        raise refusal(error) from error
    plan(height, width)
    return Upload(data, name, (height, width), limits.max_pixels)



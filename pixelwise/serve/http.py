"""HTTP around the model: the service's errors and their one JSON shape, reading uploads within
their limits, and the guard every request passes (the ``Host`` check against DNS rebinding,
security headers, a JSON 500 for an unexpected failure, counting in ``/metrics``)."""
from __future__ import annotations

import ipaddress
import logging
import time
from typing import AsyncGenerator

import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from prometheus_client import CollectorRegistry, Counter, Histogram
from starlette.datastructures import Headers, MutableHeaders, UploadFile
from starlette.exceptions import HTTPException
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from pixelwise.data.io import DataError, decode_image_bytes

LOG = logging.getLogger("pixelwise.serve")

SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' blob: "
                               "data:; object-src 'none'; base-uri 'none'; form-action 'self'; "
                               "frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Resource-Policy": "same-origin",
}
"""Sent with every response: the page runs only its own script, and is never framed."""


LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")
"""The names and addresses of this machine alone."""
WILDCARD_ADDRESSES = {"0.0.0.0", "::"}
"""Addresses that serve on every interface."""

CLIENT_GONE = 499
"""The status counted for a request dropped because its client went away (nginx's convention)."""


class ServiceError(Exception):
    """A request the service refuses: HTTP status and a message saying what to do."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers or {}


class ServiceMetrics:
    """Prometheus counters on a registry of the app's own (several apps in one process stay apart)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("pixelwise_requests", "HTTP requests by endpoint and status",
                                ["endpoint", "status"], registry=self.registry)
        self.latency = Histogram("pixelwise_request_seconds", "Request latency by endpoint", ["endpoint"],
                                 registry=self.registry,
                                 buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60))


async def check_connected(request: Request) -> None:
    """Refuse (status 499, for ``/metrics``) a request whose client has hung up."""
    if await request.is_disconnected():
        raise ServiceError(CLIENT_GONE, "the client went away before its turn; nothing was computed")


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


class Upload:
    """An uploaded image's bytes, judged by its header; decoded only when its turn comes."""

    def __init__(self, data: bytes, name: str, size: tuple[int, int], max_pixels: int) -> None:
        self.data, self.name, self.size, self.max_pixels = data, name, size, max_pixels
        self.decode_seconds = 0.0

    def decode(self) -> np.ndarray:
        """The pixels (the bytes are let go); :class:`ServiceError` when they do not decode."""
        start = time.perf_counter()
        try:
            pixels = decode_image_bytes(self.data, self.name, self.max_pixels)
        except DataError as error:
            raise refusal(error) from error
        self.data, self.decode_seconds = b"", time.perf_counter() - start
        return pixels


def refusal(error: DataError) -> ServiceError:
    return ServiceError(413 if error.kind == "too-large" else 400, str(error))


def validation_message(error: RequestValidationError) -> str:
    """FastAPI's validation errors as one sentence: which parameter, what was wrong."""
    problems = []
    for problem in error.errors():
        where = ".".join(str(part) for part in problem.get("loc", ())[1:]) or "the request"
        given = f", got {problem['input']!r}" if problem.get("input") is not None else ""
        problems.append(f"{problem.get('loc', ('query',))[0]} parameter {where!r}: {problem.get('msg', 'invalid')}"
                        f"{given}")
    return "; ".join(problems)


def is_address(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


class Guard:
    """Around every request: the ``Host`` check, the security headers, a JSON 500 for an
    unexpected failure (its traceback logged), and the count and latency in ``/metrics``."""

    def __init__(self, app: ASGIApp, metrics: ServiceMetrics, allowed_hosts: tuple[str, ...]) -> None:
        self.app, self.metrics = app, metrics
        self.allowed_hosts = {host.lower().strip("[]") for host in allowed_hosts}

    def _host_allowed(self, scope: Scope) -> bool:
        if "*" in self.allowed_hosts:
            return True
        host = Headers(scope=scope).get("host", "")
        name = (host[1:host.index("]")] if host.startswith("[") and "]" in host else host.rsplit(":", 1)[0]).lower()
        if name in self.allowed_hosts:
            return True
        # Served on every address (0.0.0.0, ::): any address is the one served; a name still is not.
        return bool(self.allowed_hosts & WILDCARD_ADDRESSES) and is_address(name)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start, status, started = time.perf_counter(), 500, False

        async def send_secured(message: Message) -> None:
            nonlocal status, started
            if message["type"] == "http.response.start":
                status, started = message["status"], True
                MutableHeaders(scope=message).update(SECURITY_HEADERS)
            await send(message)

        try:
            if not self._host_allowed(scope):
                host = Headers(scope=scope).get("host", "(none)")
                await JSONResponse({"error": f"host {host!r} is not served here; address the service by "
                                             f"{' or '.join(sorted(self.allowed_hosts))} (pixelwise serve "
                                             f"--allow-host adds a name)"}, status_code=400)(scope, receive,
                                                                                              send_secured)
            else:
                await self.app(scope, receive, send_secured)
        except Exception as error:  # the service's last line: logged with its traceback, answered in JSON
            LOG.exception("unexpected error answering %s %s", scope.get("method"), scope.get("path"))
            if started:  # nothing more can be sent
                raise
            await JSONResponse({"error": f"internal error ({type(error).__name__}); the server's log has the "
                                         f"details"}, status_code=500)(scope, receive, send_secured)
        finally:
            endpoint = scope["path"] if scope["path"] in ENDPOINTS else "other"
            self.metrics.requests.labels(endpoint, str(status)).inc()
            self.metrics.latency.labels(endpoint).observe(time.perf_counter() - start)


def answer_errors_in_json(app: FastAPI) -> None:
    """Every refusal, wrong parameter, unknown path and wrong method as ``{"error": ...}``."""

    @app.exception_handler(ServiceError)
    async def refuse(request: Request, error: ServiceError) -> JSONResponse:
        return JSONResponse({"error": error.message}, status_code=error.status, headers=error.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, error: RequestValidationError) -> JSONResponse:
        return JSONResponse({"error": validation_message(error)}, status_code=400)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, error: HTTPException) -> JSONResponse:
        message = {404: f"no such path {request.url.path!r}; the service answers {', '.join(ENDPOINTS)}",
                   405: f"{request.method} is not accepted at {request.url.path}"}.get(error.status_code,
                                                                                      str(error.detail))
        return JSONResponse({"error": message}, status_code=error.status_code, headers=error.headers)


ENDPOINTS = ("/", "/health", "/info", "/metrics", "/predict", "/explain")

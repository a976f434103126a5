"""The service against a hostile client, started for real on 127.0.0.1: requests whose work is
far beyond their bytes, clients that go away, foreign Host headers, errors of every kind — each
answered in one JSON shape, counted, and followed by a good request that is served."""
from __future__ import annotations

import io
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from PIL import Image
from servers import running
from torch import nn

from pixelwise.data.synthetic import SyntheticShapes
from pixelwise.inference.loading import LoadedModel
from pixelwise.inference.logits import InferenceOptions
from pixelwise.inference.loading import load_predictor
from pixelwise.serve import ServiceLimits, create_app

OPTIONS = InferenceOptions.create(window=64)
LIMITS = ServiceLimits(max_upload_mb=0.25, max_pixels=200_000, tile_threshold_pixels=100 * 100,
                       explain_max_pixels=5_000, max_aspect_ratio=20, max_queue=8)
PNG = {"content-type": "image/png"}


@pytest.fixture(scope="module")
def loaded(tiny_checkpoint: Path) -> LoadedModel:
    return load_predictor(tiny_checkpoint)


@pytest.fixture(scope="module")
def url(loaded: LoadedModel, tiny_checkpoint: Path):
    with running(create_app(loaded, OPTIONS, LIMITS, str(tiny_checkpoint))) as base:
        yield base


def _png(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


GOOD = _png(SyntheticShapes("test", size=(40, 50), length=1).load(0)[0].permute(1, 2, 0).numpy())


def _served_after(url: str, case: str) -> None:
    response = httpx.post(f"{url}/predict", content=GOOD, headers=PNG, timeout=60)
    assert response.status_code == 200, f"the service did not answer a good request after: {case}"


def _error(response: httpx.Response, status: int, *words: str) -> str:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"}, body
    assert all(word in body["error"] for word in words), body["error"]
    return body["error"]


def _metric(url: str, endpoint: str, status: int) -> float:
    for line in httpx.get(f"{url}/metrics").text.splitlines():
        if line.startswith(f'pixelwise_requests_total{{endpoint="{endpoint}",status="{status}"}}'):
            return float(line.split()[-1])
    return 0.0


def test_security_headers_on_every_response_and_no_server_path(url: str, tiny_checkpoint: Path) -> None:
    responses = [httpx.get(f"{url}/"), httpx.get(f"{url}/static/app.js"), httpx.get(f"{url}/info"),
                 httpx.get(f"{url}/nowhere"), httpx.post(f"{url}/predict", content=b"x", headers=PNG),
                 httpx.post(f"{url}/predict", content=GOOD, headers=PNG)]
    for response in responses:
        policy = response.headers["content-security-policy"]
        assert "default-src 'self'" in policy and "script-src 'self'" in policy and "unsafe-inline" not in policy
        assert "frame-ancestors 'none'" in policy, response.url
        assert response.headers["x-content-type-options"] == "nosniff"
        assert response.headers["x-frame-options"] == "DENY"
    info = httpx.get(f"{url}/info").json()
    assert info["model"] == "best.pt" and str(tiny_checkpoint.parent) not in httpx.get(f"{url}/info").text


def test_a_foreign_host_is_refused_against_dns_rebinding(loaded: LoadedModel) -> None:
    app = create_app(loaded, OPTIONS, LIMITS, allowed_hosts=("127.0.0.1", "localhost", "pixelwise.lan"))
    with running(app) as base:
        port = base.rsplit(":", 1)[1]
        refused = httpx.get(f"{base}/info", headers={"host": f"attacker.example:{port}"})
        _error(refused, 400, "attacker.example", "--allow-host")
        assert refused.headers["x-frame-options"] == "DENY"
        for host in (f"localhost:{port}", f"pixelwise.lan:{port}", "PIXELWISE.LAN"):
            assert httpx.get(f"{base}/info", headers={"host": host}).status_code == 200, host
        assert _metric(base, "/info", 400) == 1
    with running(create_app(loaded, OPTIONS, LIMITS, allowed_hosts=("0.0.0.0",))) as base:
        assert httpx.get(f"{base}/health", headers={"host": "10.1.2.3:8000"}).status_code == 200
        assert httpx.get(f"{base}/health", headers={"host": "[::1]:8000"}).status_code == 200
        _error(httpx.get(f"{base}/health", headers={"host": "rebound.example"}), 400, "rebound.example")


def test_work_is_judged_by_the_padded_area_not_the_pixel_count(url: str, loaded: LoadedModel) -> None:
    divisor = loaded.model.model.size_divisor
    assert divisor > 1  # the tiny U-Net pads to its grid: a thin image computes on far more than its pixels
    strip = np.zeros((1, 60_000, 3), dtype=np.uint8)
    _error(httpx.post(f"{url}/predict", content=_png(strip), headers=PNG), 422, "1", "60000", "max_aspect_ratio")
    _served_after(url, "a 1×60000 strip")

    lenient = ServiceLimits(max_upload_mb=0.25, max_pixels=200_000, tile_threshold_pixels=100 * 100,
                            max_aspect_ratio=1e9)
    with running(create_app(loaded, OPTIONS, lenient)) as base:
        # 60000 pixels are within max_pixels; the 32×60000 the network would compute on are not.
        _error(httpx.post(f"{base}/predict", content=_png(strip), headers=PNG), 413,
               f"{divisor * 60_000} pixels", "--max-pixels")
        # 3×1000 is under the 10000-pixel threshold by its pixels, above it by its padded area: tiled.
        thin = httpx.post(f"{base}/predict", content=_png(np.full((3, 1000, 3), 90, dtype=np.uint8)), headers=PNG)
        assert thin.status_code == 200 and thin.headers["x-tiled"] == "true"
        _served_after(base, "a 1×60000 strip, with no aspect bound")


def test_test_time_views_count_in_the_whole_image_decision(loaded: LoadedModel) -> None:
    pixels = SyntheticShapes("test", size=(64, 64), length=1).load(0)[0].permute(1, 2, 0).numpy()
    views = InferenceOptions.create(window=64, scales=(1.0, 2.0))
    assert max(views.pass_areas((64, 64), loaded.model.model)) == 128 * 128
    with running(create_app(loaded, views, ServiceLimits(tile_threshold_pixels=100 * 100))) as base:
        assert httpx.post(f"{base}/predict", content=_png(pixels), headers=PNG).headers["x-tiled"] == "true"
    with running(create_app(loaded, views, ServiceLimits(tile_threshold_pixels=128 * 128))) as base:
        assert httpx.post(f"{base}/predict", content=_png(pixels), headers=PNG).headers["x-tiled"] == "false"


def test_explain_has_its_own_smaller_limit(url: str) -> None:
    pixels = np.full((61, 83, 3), 120, dtype=np.uint8)  # 64×96 = 6144 padded pixels: whole for /predict
    assert httpx.post(f"{url}/predict", content=_png(pixels), headers=PNG).headers["x-tiled"] == "false"
    _error(httpx.post(f"{url}/explain", params={"x": 1, "y": 1}, content=_png(pixels), headers=PNG), 413,
           "/explain", "6144", "--explain-max-pixels")
    small = httpx.post(f"{url}/explain", params={"x": 1, "y": 1}, content=GOOD, headers=PNG)
    assert small.status_code == 200 and len(small.json()["top"]) == 3


def _abandoned_request(url: str, body: bytes) -> None:
    """Send a whole /predict request, then hang up without reading the answer."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port))) as connection:
        connection.sendall(b"POST /predict HTTP/1.1\r\nHost: " + f"{host}:{port}".encode() +
                           b"\r\nContent-Type: image/png\r\nContent-Length: " + str(len(body)).encode() +
                           b"\r\n\r\n" + body)


def test_requests_whose_client_went_away_are_dropped_before_they_take_the_model(loaded: LoadedModel) -> None:
    slow = InferenceOptions.create(window=16, stride=4)  # many small windows: a request that holds the model
    limits = ServiceLimits(tile_threshold_pixels=32 * 32, max_queue=8)
    busy = _png(np.random.default_rng(0).integers(0, 255, (160, 160, 3), dtype=np.uint8))
    with running(create_app(loaded, slow, limits)) as base, ThreadPoolExecutor(1) as pool:
        first = pool.submit(httpx.post, f"{base}/predict", content=busy, headers=PNG, timeout=120)
        time.sleep(0.3)
        for _ in range(4):
            _abandoned_request(base, busy)
        assert first.result().status_code == 200
        deadline = time.monotonic() + 60
        while _metric(base, "/predict", 499) < 4 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert _metric(base, "/predict", 499) == 4  # none of the four was computed for nobody
        assert _metric(base, "/predict", 200) == 1
        _served_after(base, "four abandoned requests")


class _Broken(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("a runtime failure nobody planned for")


def test_every_error_is_one_json_shape_and_counted(url: str, loaded: LoadedModel) -> None:
    _error(httpx.get(f"{url}/nowhere"), 404, "/nowhere", "/predict")
    _error(httpx.get(f"{url}/predict"), 405, "GET", "/predict")
    _error(httpx.post(f"{url}/explain", params={"x": "abc", "y": 1}, content=GOOD, headers=PNG), 400, "'x'", "abc")
    _error(httpx.post(f"{url}/explain", params={"y": 1}, content=GOOD, headers=PNG), 400, "'x'")
    _error(httpx.post(f"{url}/explain", params={"x": 1, "y": 1, "top": 0}, content=GOOD, headers=PNG), 400,
           "top must be at least 1")
    outside = _error(httpx.post(f"{url}/explain", params={"x": 50, "y": 0}, content=GOOD, headers=PNG), 400,
                     "outside", "0..49")
    assert "top" not in outside
    assert _metric(url, "other", 404) >= 1 and _metric(url, "/explain", 400) >= 4
    _served_after(url, "bad query parameters")

    broken = loaded._replace(model=_Broken())
    with running(create_app(broken, OPTIONS, LIMITS, geometry=loaded.model.model)) as base:
        failed = httpx.post(f"{base}/predict", content=GOOD, headers=PNG)
        _error(failed, 500, "internal error", "RuntimeError")
        assert "nobody planned" not in failed.text  # the details go to the server's log, not the client
        assert failed.headers["x-content-type-options"] == "nosniff"
        assert _metric(base, "/predict", 500) == 1
        assert httpx.get(f"{base}/health").json() == {"status": "ok"}


def test_the_cli_serves_the_address_given_and_the_names_allowed(tiny_checkpoint: Path) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    service = subprocess.Popen([sys.executable, "-m", "pixelwise", "serve", "--checkpoint", str(tiny_checkpoint),
                                "--port", str(port), "--allow-host", "pixelwise.lan", "--max-aspect-ratio", "4"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert service.poll() is None and time.monotonic() < deadline, "the service did not start"
            try:
                if httpx.get(f"{base}/health").status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.2)
        assert httpx.get(f"{base}/health", headers={"host": f"localhost:{port}"}).status_code == 200
        assert httpx.get(f"{base}/health", headers={"host": "pixelwise.lan"}).status_code == 200
        _error(httpx.get(f"{base}/info", headers={"host": f"attacker.example:{port}"}), 400, "attacker.example")
        strip = np.zeros((10, 50, 3), dtype=np.uint8)
        _error(httpx.post(f"{base}/predict", content=_png(strip), headers=PNG), 422, "50×10", "4 times")
        info = httpx.get(f"{base}/info").json()
        assert info["model"] == "best.pt" and info["limits"]["max_aspect_ratio"] == 4
        assert "content-security-policy" in httpx.get(base).headers
    finally:
        service.terminate()
        service.wait(timeout=30)

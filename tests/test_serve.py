"""The HTTP service, started for real on 127.0.0.1 and spoken to with a real HTTP client: every
endpoint, every bad input (each followed by a good request), concurrency."""
from __future__ import annotations

import io
import struct
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image
from servers import running

from pixelwise.data.synthetic import SyntheticShapes
from pixelwise.inference.logits import InferenceOptions, predict_large_image
from pixelwise.inference.loading import load_predictor
from pixelwise.inference.predict import predict_whole
from pixelwise.serve import ServiceLimits, create_app

LIMITS = ServiceLimits(max_upload_mb=0.25, max_pixels=1_000_000, tile_threshold_pixels=100 * 100, max_queue=1)
OPTIONS = InferenceOptions.create(window=64)


@pytest.fixture(scope="module")
def loaded(tiny_checkpoint: Path):
    return load_predictor(tiny_checkpoint)


@pytest.fixture(scope="module")
def url(loaded, tiny_checkpoint: Path):
    with running(create_app(loaded, OPTIONS, LIMITS, str(tiny_checkpoint))) as base:
        yield base


def _scene(size: tuple[int, int], index: int = 0) -> np.ndarray:
    image, _ = SyntheticShapes("test", size=size, length=index + 1).load(index)
    return image.permute(1, 2, 0).numpy()


def _png(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def _labels(response: httpx.Response) -> np.ndarray:
    assert response.status_code == 200, response.text
    with Image.open(io.BytesIO(response.content)) as image:
        assert image.mode == "P"
        return np.asarray(image)


def test_health_info_and_metrics(url: str, loaded) -> None:
    assert httpx.get(f"{url}/health").json() == {"status": "ok"}
    info = httpx.get(f"{url}/info").json()
    assert info["classes"] == list(loaded.classes.names) and len(info["palette"]) == loaded.classes.num_classes
    assert info["normalization"] == loaded.normalization and info["runtime"] == {"name": "torch", "precision": "fp32"}
    assert info["limits"]["max_pixels"] == LIMITS.max_pixels and info["model"].endswith("best.pt")
    metrics = httpx.get(f"{url}/metrics")
    assert metrics.headers["content-type"].startswith("text/plain")
    assert 'pixelwise_requests_total{endpoint="/health",status="200"}' in metrics.text
    assert "pixelwise_request_seconds_bucket" in metrics.text


def test_predict_returns_what_the_inference_path_computes(url: str, loaded) -> None:
    pixels = _scene((61, 83))
    expected = predict_whole(loaded, pixels, OPTIONS)[0]
    assert len(np.unique(expected)) > 1
    multipart = httpx.post(f"{url}/predict", files={"file": ("scene.png", _png(pixels), "image/png")})
    raw = httpx.post(f"{url}/predict", content=_png(pixels), headers={"content-type": "image/png"})
    assert np.array_equal(_labels(multipart), expected) and np.array_equal(_labels(raw), expected)
    assert float(multipart.headers["x-inference-ms"]) > 0

    shares = httpx.post(f"{url}/predict?format=json", content=_png(pixels), headers={"content-type": "image/png"})
    body = shares.json()
    assert (body["width"], body["height"], body["tiled"]) == (83, 61, False)
    assert abs(sum(c["share"] for c in body["classes"]) - 1) < 1e-9
    assert [c["name"] for c in body["classes"]] == list(loaded.classes.names)
    counts = np.bincount(expected.ravel(), minlength=loaded.classes.num_classes) / expected.size
    assert np.allclose([c["share"] for c in body["classes"]], counts)
    assert body["timing"]["total_ms"] >= body["timing"]["inference_ms"] > 0

    blended = httpx.post(f"{url}/predict?overlay=1", content=_png(pixels), headers={"content-type": "image/png"})
    with Image.open(io.BytesIO(blended.content)) as image:
        assert image.mode == "RGB" and image.size == (83, 61)


def test_images_above_the_whole_image_limit_are_tiled(url: str, loaded) -> None:
    pixels = _scene((120, 131), 1)
    response = httpx.post(f"{url}/predict", content=_png(pixels), headers={"content-type": "image/png"})
    expected = predict_large_image(loaded.model, pixels, loaded.classes.num_classes, OPTIONS, loaded.normalization)
    assert response.headers["x-tiled"] == "true" and np.array_equal(_labels(response), expected)


def _bomb() -> bytes:
    """A valid 1×1 PNG whose header claims 100000×100000 pixels (a decompression bomb's header)."""
    png = bytearray(_png(np.zeros((1, 1, 3), dtype=np.uint8)))
    ihdr = png.index(b"IHDR")
    png[ihdr + 4:ihdr + 12] = struct.pack(">II", 100_000, 100_000)
    png[ihdr + 17:ihdr + 21] = struct.pack(">I", zlib.crc32(bytes(png[ihdr:ihdr + 17])))
    return bytes(png)


FIELD_ONLY = b'--b\r\nContent-Disposition: form-data; name="note"\r\n\r\nx\r\n--b--\r\n'


def test_every_bad_request_is_a_clear_json_error_and_the_service_goes_on(url: str, loaded) -> None:
    good = _png(_scene((40, 50)))
    cases = [
        ("not an image", {"content": b"hello, I am text", "headers": {"content-type": "image/png"}}, 400,
         "cannot decode"),
        ("truncated", {"content": good[:len(good) // 2], "headers": {"content-type": "image/png"}}, 400,
         "truncated"),
        ("empty", {"content": b"", "headers": {"content-type": "image/png"}}, 400, "empty"),
        ("bomb", {"content": _bomb(), "headers": {"content-type": "image/png"}}, 413, "decompression bomb"),
        ("too many bytes", {"content": b"\0" * 300_000, "headers": {"content-type": "image/png"}}, 413,
         "max-upload-mb"),
        ("too many pixels", {"content": _png(np.zeros((1100, 1000, 3), dtype=np.uint8)),
                             "headers": {"content-type": "image/png"}}, 413, "1100000 pixels"),
        ("wrong type", {"content": good, "headers": {"content-type": "text/plain"}}, 415, "content type"),
        ("multipart without a file", {"content": FIELD_ONLY, "headers": {"content-type": "multipart/form-data; "
                                                                                  "boundary=b"}}, 400, "no file"),
        ("bad format", {"content": good, "headers": {"content-type": "image/png"}, "params": {"format": "gif"}}, 400,
         "format must be"),
    ]
    for name, request, status, message in cases:
        response = httpx.post(f"{url}/predict", **request)
        assert response.status_code == status, (name, response.text)
        assert message in response.json()["error"], (name, response.json())
        assert _labels(httpx.post(f"{url}/predict", content=good, headers={"content-type": "image/png"})).shape == \
            (40, 50), f"the service did not answer a good request after: {name}"
    metrics = httpx.get(f"{url}/metrics").text
    for status in ("400", "413", "415"):
        assert f'pixelwise_requests_total{{endpoint="/predict",status="{status}"}}' in metrics


def test_concurrent_requests_beyond_the_queue_get_503_and_the_rest_are_answered(url: str) -> None:
    # Tiled in 64-pixel windows, 100 of them: long enough (about a second) that the eight requests
    # pile up behind the first even on a busy machine.
    pixels = np.full((400, 400, 3), 40, dtype=np.uint8)
    pixels[100:300, 150:350] = (200, 60, 30)  # flat areas: a small upload, the same work as any other
    image = _png(pixels)
    assert len(image) < LIMITS.max_upload_mb * 2**20

    def post(_: int) -> httpx.Response:
        return httpx.post(f"{url}/predict", content=image, headers={"content-type": "image/png"}, timeout=60)

    with ThreadPoolExecutor(8) as pool:
        responses = list(pool.map(post, range(8)))
    statuses = sorted(response.status_code for response in responses)
    assert set(statuses) <= {200, 503} and statuses.count(200) >= 2 and 503 in statuses, statuses
    busy = next(response for response in responses if response.status_code == 503)
    assert busy.headers["retry-after"] == "1" and "busy" in busy.json()["error"]
    assert httpx.post(f"{url}/predict", content=image, headers={"content-type": "image/png"}).status_code == 200


def test_explain_gives_the_top_classes_and_the_receptive_field(url: str, loaded) -> None:
    pixels = _scene((61, 83))
    response = httpx.post(f"{url}/explain", params={"x": 10, "y": 20, "top": 3}, content=_png(pixels),
                          headers={"content-type": "image/png"})
    body = response.json()
    probabilities = predict_whole(loaded, pixels, OPTIONS)[1][:, 20, 10]
    assert [entry["index"] for entry in body["top"]] == probabilities.topk(3).indices.tolist()
    assert np.allclose([entry["probability"] for entry in body["top"]], probabilities.topk(3).values.numpy())
    field = body["receptive_field"]
    assert field["size"][0] > 1
    assert 0 <= field["left"] < field["right"] <= 83 and 0 <= field["top"] < field["bottom"] <= 61
    outside = httpx.post(f"{url}/explain", params={"x": 83, "y": 0}, content=_png(pixels),
                         headers={"content-type": "image/png"})
    assert outside.status_code == 400 and "outside" in outside.json()["error"]


def test_an_onnx_file_is_served_with_its_geometry(tiny_checkpoint: Path, tmp_path: Path) -> None:
    from pixelwise.export import export_checkpoint
    from pixelwise.serve import app_for_file

    model = tmp_path / "model.onnx"
    export_checkpoint(tiny_checkpoint, model, parity=False)
    with running(app_for_file(str(model), options=OPTIONS, limits=LIMITS)) as base:
        assert httpx.get(f"{base}/info").json()["runtime"] == {"name": "onnxruntime", "precision": "fp32"}
        body = httpx.post(f"{base}/explain", params={"x": 5, "y": 5}, content=_png(_scene((40, 50))),
                          headers={"content-type": "image/png"}).json()
        assert len(body["top"]) == 3 and body["receptive_field"]["size"][0] > 1

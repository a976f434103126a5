"""What the HTTP service costs: requests/s and latency percentiles at 1, 4 and 16 concurrent
clients on loopback, beside the same model's in-process prediction time.

The service runs in a subprocess (``pixelwise serve``, its own interpreter, as users run it) on
127.0.0.1; clients are threads of this process posting one 480×360 PNG (a CamVid-sized image)
to ``/predict`` and reading the mask PNG back. In-process time is
:func:`pixelwise.engine.predict.predict_whole` on the same decoded image, plus encoding the mask
PNG: what ``/predict`` does for a request besides HTTP and decoding, measured before and after
the service runs (the median of both, so a machine that drifts shows in neither alone). Each
phase follows a warm-up; the overhead is (median latency at 1 client − in-process median) / in-process median.

    python benchmarks/serve.py [--checkpoint C | --model F.onnx] [--requests 24] [--threads 2]

Without a model file, a U-Net-ResNet18 (11 classes, random weights) is saved as a checkpoint
first. Prints a table and writes ``benchmarks/results/serve.json``.
"""
from __future__ import annotations

import argparse
import io
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import torch
from PIL import Image

from pixelwise.engine.inference import InferenceOptions
from pixelwise.engine.loading import load_predictor
from pixelwise.engine.predict import label_image, predict_whole
from pixelwise.models.zoo import smooth_test_image
from report import write_report  # benchmarks/report.py: run as scripts, this folder is on sys.path

RESULTS = Path(__file__).resolve().parent / "results" / "serve.json"


def random_checkpoint(folder: Path) -> Path:
    """A U-Net-ResNet18 with random weights, saved as a checkpoint predict and serve accept."""
    import pixelwise
    from pixelwise.data.classes import ClassInfo
    from pixelwise.data.transforms import IMAGENET_MEAN, IMAGENET_STD

    model = pixelwise.create_model("unet", num_classes=11, encoder="resnet18")
    state = {"model": model.state_dict(), "classes": ClassInfo(tuple(f"class{i}" for i in range(11))).to_dict(),
             "model_spec": {"name": "unet", "num_classes": 11, "options": {"encoder": "resnet18"}},
             "normalization": {"mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD)}}
    torch.save(state, folder / "unet.pt")
    return folder / "unet.pt"


def image_png() -> tuple[bytes, np.ndarray]:
    pixels = (smooth_test_image(360, 480)[0].permute(1, 2, 0).clamp(0, 1) * 255).round().to(torch.uint8).numpy()
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue(), pixels


def in_process(source: Path, pixels: np.ndarray, repeats: int) -> list[float]:
    """Milliseconds of prediction plus mask encoding, in this process."""
    loaded = load_predictor(source)
    options = InferenceOptions.create()
    times = []
    for repeat in range(repeats + 1):
        start = time.perf_counter()
        labels = predict_whole(loaded, pixels, options)[0]
        label_image(labels, loaded.classes).save(io.BytesIO(), format="PNG")
        if repeat:  # the first is the warm-up
            times.append(1e3 * (time.perf_counter() - start))
    return times


@torch.inference_mode()
def batching_gain(source: Path, pixels: np.ndarray, batch: int = 4, repeats: int = 3) -> dict:
    """Seconds for ``batch`` images in one forward pass against one at a time: whether batching
    concurrent requests would raise throughput (it decides the service's design)."""
    from pixelwise.engine.inference import normalize_image

    loaded = load_predictor(source)
    image = normalize_image(pixels, loaded.normalization)[None]
    stacked = image.repeat(batch, 1, 1, 1)
    loaded.model(image), loaded.model(stacked)  # warm-up at both shapes
    singles, together = [], []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(batch):
            loaded.model(image)
        singles.append(time.perf_counter() - start)
        start = time.perf_counter()
        loaded.model(stacked)
        together.append(time.perf_counter() - start)
    return {"batch": batch, "singles_s": statistics.median(singles), "batched_s": statistics.median(together),
            "speedup": statistics.median(singles) / statistics.median(together)}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_service(source: Path, port: int, threads: int) -> subprocess.Popen:
    flag = "--model" if source.suffix == ".onnx" else "--checkpoint"
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    service = subprocess.Popen([sys.executable, "-m", "pixelwise.cli", "serve", flag, str(source), "--port", str(port),
                                "--max-queue", "64"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health").status_code == 200:
                return service
        except httpx.TransportError:
            time.sleep(0.2)
    service.kill()
    raise RuntimeError("the service did not start within 120 s")


def load(url: str, body: bytes, clients: int, requests: int) -> dict:
    """``requests`` posts from ``clients`` threads, each with its own keep-alive connection (as
    a real client holds one: ``httpx.post`` alone would build a client, TLS context included,
    for every request); throughput and latency percentiles."""
    local = threading.local()

    def post(_: int) -> float:
        if not hasattr(local, "client"):
            local.client = httpx.Client(timeout=600)
        start = time.perf_counter()
        response = local.client.post(f"{url}/predict", content=body, headers={"content-type": "image/png"})
        response.raise_for_status()
        return 1e3 * (time.perf_counter() - start)

    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(post, range(clients)))  # warm-up: every thread connects
        start = time.perf_counter()
        latencies = sorted(pool.map(post, range(requests)))
    seconds = time.perf_counter() - start
    percentile = lambda q: float(np.percentile(latencies, q))  # noqa: E731
    return {"clients": clients, "requests": requests, "requests_per_s": requests / seconds,
            "p50_ms": percentile(50), "p95_ms": percentile(95), "p99_ms": percentile(99)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--checkpoint", type=Path)
    group.add_argument("--model", type=Path, help="an exported .onnx file")
    parser.add_argument("--requests", type=int, default=24, help="requests per concurrency level")
    parser.add_argument("--threads", type=int, default=2, help="threads of the network, in-process and served")
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    body, pixels = image_png()
    with tempfile.TemporaryDirectory(prefix="pixelwise-serve-") as folder:
        source = args.checkpoint or args.model or random_checkpoint(Path(folder))
        local = in_process(source, pixels, max(6, args.requests // 4))
        batching = batching_gain(source, pixels)
        port = free_port()
        service = start_service(source, port, args.threads)
        try:
            rows = [load(f"http://127.0.0.1:{port}", body, clients, args.requests) for clients in (1, 4, 16)]
        finally:
            service.terminate()
            service.wait(timeout=30)
        local += in_process(source, pixels, max(6, args.requests // 4))  # before and after: drift shows
    local_ms = statistics.median(local)
    print(f"in-process: {local_ms:.1f} ms per image ({1e3 / local_ms:.2f} images/s)")
    print(f"{'clients':>7} {'req/s':>7} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8} {'vs in-process':>14}")
    for row in rows:
        row["throughput_vs_in_process"] = row["requests_per_s"] * local_ms / 1e3
        print(f"{row['clients']:>7} {row['requests_per_s']:>7.2f} {row['p50_ms']:>8.1f} {row['p95_ms']:>8.1f} "
              f"{row['p99_ms']:>8.1f} {row['throughput_vs_in_process']:>13.2f}x")
    overhead = (rows[0]["p50_ms"] - local_ms) / local_ms
    print(f"batching: {batching['batch']} images in one pass {batching['batched_s']:.2f} s, one at a time "
          f"{batching['singles_s']:.2f} s ({batching['speedup']:.2f}x): "
          f"{'worth' if batching['speedup'] > 1.05 else 'not worth'} batching concurrent requests")
    print(f"service overhead at 1 client: {overhead:+.1%} of in-process latency (target <= 10%); throughput at 4 "
          f"clients: {rows[1]['throughput_vs_in_process']:.2f}x the in-process rate (target >= 1)")
    write_report({"question": "HTTP service throughput and latency vs in-process prediction",
                  "model": str(args.checkpoint or args.model or "unet resnet18, random weights"),
                  "image": "480x360 PNG",
                  "threads": args.threads, "in_process_ms": local, "in_process_median_ms": local_ms,
                  "overhead_at_1_client": overhead, "batching": batching,
                  "results": rows}, args.output)


if __name__ == "__main__":
    main()

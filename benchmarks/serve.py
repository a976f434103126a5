"""What the HTTP service costs: requests/s and latency percentiles at 1, 4 and 16 concurrent
clients on loopback, beside the same model's in-process prediction time.

The service runs in a subprocess (``pixelwise serve``, its own interpreter, as users run it) on
127.0.0.1; clients are threads of this process posting one 480×360 PNG (a CamVid-sized image)
to ``/predict`` and reading the mask PNG back. In-process time is
:func:`pixelwise.inference.predict.predict_whole` on the same decoded image, plus encoding the mask
PNG: what ``/predict`` does for a request besides HTTP and decoding, measured before and after
the service runs (the median of both, so a machine that drifts shows in neither alone). Each
phase follows a warm-up; the overhead is (median latency at 1 client − in-process median) / in-process median.

    python benchmarks/serve.py [--checkpoint C | --model F.onnx] [--requests 24] [--threads 2]

With ``--hostile``, the service's defaults meet uploads whose work is far beyond their bytes
instead: a 1×60000 strip (and a 245×245 image of the same pixel count), a 1×16,000,000 strip, a
4096×4096 image of zeros, and five 2048×2048 requests abandoned by their clients. For each: the
answer, its latency, the service's resident memory after it and its peak so far (``VmRSS``,
``VmHWM`` of the process), and the latency of a normal 480×360 request sent right after, as a
ratio to the same request before any hostile one (``benchmarks/results/serve_hostile.json``).

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

from pixelwise.inference.logits import InferenceOptions
from pixelwise.inference.loading import load_predictor
from pixelwise.inference.predict import label_image, predict_whole
from pixelwise.models.zoo import smooth_test_image
from report import write_report  # benchmarks/report.py: run as scripts, this folder is on sys.path

RESULTS = Path(__file__).resolve().parent / "results" / "serve.json"


def random_checkpoint(folder: Path) -> Path:
    """A U-Net-ResNet18 with random weights, saved as a checkpoint predict and serve accept."""
    import pixelwise
    from pixelwise.data.classes import ClassInfo
    from pixelwise.data.transforms import IMAGENET_MEAN, IMAGENET_STD
    from pixelwise.models.registry import spec_options

    model = pixelwise.create_model("unet", num_classes=11, encoder="resnet18")
    state = {"model": model.state_dict(), "classes": ClassInfo(tuple(f"class{i}" for i in range(11))).to_dict(),
             "model_spec": {"name": "unet", "num_classes": 11,
                            "options": spec_options("unet", {"encoder": "resnet18"})},
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
    from pixelwise.inference.logits import normalize_image

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


def png_of(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


def memory_mb(pid: int) -> tuple[float, float]:
    """The process's resident memory now and at its peak, in MiB (Linux ``/proc``)."""
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    return int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024


def abandon(url: str, body: bytes) -> None:
    """A whole /predict request sent, then the connection closed without reading the answer."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port))) as connection:
        connection.sendall(f"POST /predict HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: image/png\r\n"
                           f"Content-Length: {len(body)}\r\n\r\n".encode() + body)


def timed_post(client: httpx.Client, url: str, body: bytes) -> tuple[int, float, str]:
    start = time.perf_counter()
    response = client.post(f"{url}/predict?format=json", content=body, headers={"content-type": "image/png"})
    detail = response.json().get("error", "") if response.status_code != 200 else \
        f"tiled={response.json()['tiled']}"
    return response.status_code, time.perf_counter() - start, detail


def hostile(url: str, pid: int, normal: bytes) -> dict:
    """Each hostile upload, then a normal request: status, seconds, memory."""
    cases = {"1x60000 strip": png_of(np.zeros((1, 60_000, 3), np.uint8)),
             "245x245, same pixels": png_of(np.full((245, 245, 3), 128, np.uint8)),
             "1x16000000 strip": png_of(np.zeros((1, 16_000_000, 3), np.uint8)),
             "4096x4096 zeros": png_of(np.zeros((4096, 4096, 3), np.uint8))}
    with httpx.Client(timeout=1200) as client:
        baseline = statistics.median(timed_post(client, url, normal)[1] for _ in range(3))
        rows = []
        for name, body in [*cases.items(), ("5 abandoned 2048x2048", png_of(np.zeros((2048, 2048, 3), np.uint8)))]:
            if name.startswith("5 abandoned"):
                start = time.perf_counter()
                for _ in range(5):
                    abandon(url, body)
                status, seconds, detail = 0, time.perf_counter() - start, "sent, then hung up"
            else:
                status, seconds, detail = timed_post(client, url, body)
            rss, peak = memory_mb(pid)
            after = timed_post(client, url, normal)[1]
            rows.append({"case": name, "bytes": len(body), "status": status, "seconds": seconds, "detail": detail,
                         "rss_mb": rss, "peak_rss_mb": peak, "normal_after_s": after,
                         "normal_after_vs_before": after / baseline})
    print(f"normal 480x360 request before any hostile one: {baseline:.3f} s")
    print(f"{'case':<22} {'bytes':>8} {'status':>6} {'seconds':>8} {'RSS MB':>7} {'peak MB':>8} {'normal after':>13}")
    for row in rows:
        print(f"{row['case']:<22} {row['bytes']:>8} {row['status'] or '-':>6} {row['seconds']:>8.2f} "
              f"{row['rss_mb']:>7.0f} {row['peak_rss_mb']:>8.0f} {row['normal_after_vs_before']:>12.2f}x  "
              f"{row['detail'][:70]}")
    return {"normal_before_s": baseline, "results": rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--checkpoint", type=Path)
    group.add_argument("--model", type=Path, help="an exported .onnx file")
    parser.add_argument("--requests", type=int, default=24, help="requests per concurrency level")
    parser.add_argument("--threads", type=int, default=2, help="threads of the network, in-process and served")
    parser.add_argument("--output", type=Path, default=RESULTS)
    parser.add_argument("--hostile", action="store_true", help="uploads whose work is far beyond their bytes")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    body, pixels = image_png()
    if args.hostile:
        with tempfile.TemporaryDirectory(prefix="pixelwise-serve-") as folder:
            source = args.checkpoint or args.model or random_checkpoint(Path(folder))
            port = free_port()
            service = start_service(source, port, args.threads)
            try:
                report = hostile(f"http://127.0.0.1:{port}", service.pid, body)
            finally:
                service.terminate()
                service.wait(timeout=30)
        write_report({"question": "does serve stay bounded whatever the upload?", "threads": args.threads,
                      "model": str(args.checkpoint or args.model or "unet resnet18, random weights"), **report},
                     args.output.with_name("serve_hostile.json"))
        return
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

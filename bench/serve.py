"""`chex serve` under load on loopback: latency, throughput and replica memory, with dynamic batching on and off.

    python bench/serve.py                          # tiny random model, 1/4/16 clients, ~3 min on 2 cores
    python bench/serve.py --compare-cli            # also time a one-shot `chex query` process (median of 3)
    python bench/serve.py --train-steps 300        # a tiny model fitted to a phantom batch: sentences hold words
    python bench/serve.py --model models:/chex-demo@champion --clients 1,16 --requests 96
    python bench/serve.py --preset paper           # paper-size random weights (~1 B params): slow to build and run

For each server (``--max-batch 8``, the default, then ``--max-batch 1``: a separate `chex serve` start) and each
workload (``query``: ``POST /v1/query`` with one text prompt, "Pleural effusion"; ``report``: ``POST /v1/report``,
the built-in report prompt set), N client threads (httpx) send multipart requests back to back until ``--requests``
requests of the row are answered, after 2 sequential warm-up requests. A row gives the p50 / p95 latency of one
request as the client sees it, the throughput (answered requests / wall time of the row), and the peak RSS of the
model replica(s) during the row (the processes whose cmdline holds ``ServeReplica:chex`` under this server's
process). The last lines give the batching speed-up at the largest client count (throughput batched / unbatched).
With random weights (the default model) every sentence ends at its first token and a report has no sentences, so
rows measure image decoding, encoding, detection and the HTTP / batching path; ``--train-steps 300`` first fits the
tiny model to a phantom batch (~30 s) so that answers generate words. ``--compare-cli`` times
`chex query IMAGE --model DIR --prompt "Pleural effusion"` end to end as a subprocess: the per-process start-up
(imports, model load) the server pays once.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

import httpx  # noqa: E402
import psutil  # noqa: E402

from bench.machine import describe_cpu  # noqa: E402
from serve_support import running_server  # noqa: E402

PROMPT = "Pleural effusion"
ROUTES = {"query": ("/v1/query", {"prompts": [PROMPT]}), "report": ("/v1/report", {"prompt_set": "report"})}
REPLICA_TAG = "ServeReplica:chex"


@dataclass
class Row:
    batch: int
    workload: str
    clients: int
    p50_ms: float
    p95_ms: float
    rps: float
    rss_mb: float


def build_model(preset_name: str, out: Path, train_steps: int = 0) -> Path:
    """A random-weight model of the preset saved as a folder (seeded: the same weights every run). With
    ``train_steps``, first trained that many steps on the tests' fixed phantom batch (as the tests' served model is):
    random weights end every sentence at once, so only a trained model makes a report generate text."""
    import torch

    from chex_model.chex import ChEX
    from chex_model.config import preset

    torch.manual_seed(0)
    cfg = preset(preset_name)
    if train_steps:  # the tests' tiny_config: no dropout, so 300 steps learn the batch
        cfg.detector.dropout = cfg.dropout = cfg.generator.prefix_dropout = 0.0
    model = ChEX.build(cfg)
    if train_steps:
        import dataclasses

        from model_support import phantom_batch, train

        batch = dataclasses.replace(phantom_batch(), pathology=None, sentences=None)
        model, _ = train(model, batch, steps=train_steps)
    model.save_pretrained(out)
    return out


def sample_image(out: Path) -> Path:
    """The page's synthetic 'right pleural effusion' X-ray (448 x 512 PNG)."""
    from pipelines.serving.samples import sample_png

    out.write_bytes(sample_png("right pleural effusion"))
    return out


def replica_rss_mb(port: int) -> float:
    """Summed RSS of the `ServeReplica:chex` processes under the `chex serve --port PORT` process (other servers on
    this machine are left out); all such processes on the machine when that server is not found."""
    roots = []
    for p in psutil.process_iter(["cmdline"]):
        cmd = p.info["cmdline"] or []
        if "serve" in cmd and "--port" in cmd and str(port) in cmd:
            roots.append(p)
    procs: list[psutil.Process] = []
    for root in roots:
        with contextlib.suppress(psutil.Error):
            procs += root.children(recursive=True)
    if not roots:
        procs = list(psutil.process_iter())
    total = 0
    for p in procs:
        with contextlib.suppress(psutil.Error):
            if any(REPLICA_TAG in part for part in p.cmdline()):
                total += p.memory_info().rss
    return total / 2**20


@contextlib.contextmanager
def peak_rss(port: int, every_s: float = 0.25) -> Iterator[list[float]]:
    """Samples the replica RSS in a thread while the block runs; the list's one value is the peak (MB)."""
    peak, stop = [replica_rss_mb(port)], threading.Event()

    def sample() -> None:
        while not stop.wait(every_s):
            peak[0] = max(peak[0], replica_rss_mb(port))

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        yield peak
    finally:
        stop.set()
        thread.join()
        peak[0] = max(peak[0], replica_rss_mb(port))


def post(client: httpx.Client, url: str, workload: str, image: bytes) -> float:
    """One request; its latency in ms (an error status raises)."""
    path, fields = ROUTES[workload]
    t = time.perf_counter()
    r = client.post(f"{url}{path}", files={"image": ("xray.png", image, "image/png")},
                    data={"request": json.dumps(fields)})
    r.raise_for_status()
    return (time.perf_counter() - t) * 1000


def load_row(url: str, workload: str, image: bytes, clients: int, requests: int) -> tuple[list[float], float]:
    """``clients`` threads sending back to back until ``requests`` are answered: (latencies ms, wall seconds)."""
    left, lock, latencies = [requests], threading.Lock(), []

    def client_loop() -> None:
        with httpx.Client(timeout=600) as client:
            while True:
                with lock:
                    if left[0] <= 0:
                        return
                    left[0] -= 1
                ms = post(client, url, workload, image)
                with lock:
                    latencies.append(ms)

    t = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        for f in [pool.submit(client_loop) for _ in range(clients)]:
            f.result()
    return latencies, time.perf_counter() - t


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank-interpolated percentile (q in 0..100)."""
    ordered = sorted(values)
    k = (len(ordered) - 1) * q / 100
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def measure(url: str, port: int, batch: int, workload: str, clients: int, image: bytes, requests: int) -> Row:
    """One table row: 2 warm-up requests, then the timed load with the replica's RSS sampled."""
    with httpx.Client(timeout=600) as client:
        for _ in range(2):
            post(client, url, workload, image)
    with peak_rss(port) as peak:
        latencies, wall = load_row(url, workload, image, clients, requests)
    return Row(batch, workload, clients, percentile(latencies, 50), percentile(latencies, 95),
               len(latencies) / wall, peak[0])


def print_row(row: Row) -> None:
    print(f"{'on (8)' if row.batch > 1 else 'off (1)':<10} {row.workload:<8} {row.clients:>7} {row.p50_ms:>9.0f} "
          f"{row.p95_ms:>9.0f} {row.rps:>8.2f} {row.rss_mb:>9.0f}", flush=True)


def serve_rows(model: str, image_path: Path, args: argparse.Namespace, batch: int, logdir: Path) -> list[Row]:
    """Every (workload, clients) row against one `chex serve --max-batch BATCH` start."""
    image = image_path.read_bytes()
    rows = []
    log = logdir / f"serve-batch{batch}.log"
    with running_server(model, log, "--max-batch", str(batch), "--precision", args.precision, timeout=600) as server:
        port = int(server.url.rsplit(":", 1)[1])
        for workload in args.workloads:
            for clients in args.clients:
                row = measure(server.url, port, batch, workload, clients, image, args.requests)
                print_row(row)
                rows.append(row)
    return rows


def cli_seconds(model: str, image_path: Path, precision: str, repeats: int = 3) -> float:
    """Median wall seconds of a one-shot `chex query IMAGE --model MODEL --prompt PROMPT` process."""
    chex = str(Path(sys.executable).parent / "chex")
    cmd = [chex, "query", str(image_path), "--model", model, "--prompt", PROMPT, "--precision", precision]
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        subprocess.run(cmd, cwd=ROOT, check=True, capture_output=True, timeout=1200)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def speedups(rows: list[Row], clients: int) -> None:
    """Throughput with batching over throughput without, at ``clients`` clients, per workload."""
    by = {(r.batch > 1, r.workload, r.clients): r.rps for r in rows}
    parts = []
    for workload in dict.fromkeys(r.workload for r in rows):
        on, off = by.get((True, workload, clients)), by.get((False, workload, clients))
        if on and off:
            parts.append(f"{workload} {on / off:.2f}x ({on:.2f} vs {off:.2f} req/s)")
    print(f"batching speed-up at {clients} clients (throughput batched / unbatched): " + "; ".join(parts))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default=None, help="model folder or models:/ URI (default: a random --preset model)")
    p.add_argument("--preset", choices=("tiny", "paper"), default="tiny", help="random model to build (default tiny)")
    p.add_argument("--train-steps", type=int, default=0,
                   help="train the built model this many steps on a phantom batch first (300: ~30 s for tiny), so "
                        "answers hold words; default 0: random weights, whose sentences are empty")
    p.add_argument("--clients", type=lambda s: [int(v) for v in s.split(",")], default=[1, 4, 16],
                   help="concurrent clients per row, comma-separated (default 1,4,16)")
    p.add_argument("--requests", type=int, default=96, help="timed requests per row, all clients together (default 96)")
    p.add_argument("--precision", choices=("auto", "fp32", "bf16", "int8"), default="auto",
                   help="passed to chex serve (and chex query with --compare-cli)")
    p.add_argument("--workloads", type=lambda s: [w for w in s.split(",") if w], default=["query", "report"],
                   help="comma-separated subset of query,report (default both)")
    p.add_argument("--compare-cli", action="store_true", help="also time a one-shot `chex query` process (median of 3)")
    args = p.parse_args(argv)
    if bad := [w for w in args.workloads if w not in ROUTES]:
        p.error(f"unknown workload(s) {', '.join(bad)}; choose from {', '.join(ROUTES)}")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    import torch

    print(f"machine: {describe_cpu()}; torch {torch.__version__}", flush=True)
    with tempfile.TemporaryDirectory(prefix="bench_serve_") as tmp:
        tmpdir = Path(tmp)
        model = args.model or str(build_model(args.preset, tmpdir / f"model_{args.preset}", args.train_steps))
        image_path = sample_image(tmpdir / "xray.png")
        trained = f", trained {args.train_steps} steps on a phantom batch" if args.train_steps else ", random weights"
        what = args.model or f"{args.preset} preset{trained}"
        print(f"model: {what}; precision {args.precision}; {args.requests} timed requests per row after 2 warm-up; "
              f"batch wait 10 ms", flush=True)
        print(f"{'batching':<10} {'workload':<8} {'clients':>7} {'p50 ms':>9} {'p95 ms':>9} {'req/s':>8} {'RSS MB':>9}")
        rows = []
        for batch in (8, 1):
            rows += serve_rows(model, image_path, args, batch, tmpdir)
        speedups(rows, max(args.clients))
        if args.compare_cli:
            cli_ms = cli_seconds(model, image_path, args.precision) * 1000
            served = {r.batch: r.p50_ms for r in rows if r.workload == "query" and r.clients == 1}
            beside = ", ".join(f"server p50 {ms:.0f} ms (batching {'on' if b > 1 else 'off'})" for b, ms in served.items())
            print(f"one-shot `chex query` process (1 prompt, median of 3): {cli_ms:.0f} ms; "
                  f"{beside or 'no 1-client query row'}")


if __name__ == "__main__":
    main()

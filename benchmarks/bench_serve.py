"""Serving the compact network: in process, our LitServe server, a plain FastAPI endpoint.

The compact chart+indicator network (the CPU model kind, default 132×64 charts of 64 bars) is
trained tiny (one epoch, narrow layers) on the embedded sample (``load_sample()``, EUR/USD
hourly bars of 2017) and saved. Then, in one run on 127.0.0.1:

* in process: ``predict_proba`` of one sample at a time, and of batches of 32;
* ours: ``python -m aiopt_lib.serve MODEL_DIR`` with its defaults (dynamic batching, one
  inference worker);
* peer: the same model behind a plain FastAPI endpoint under uvicorn (one process, a ``def``
  endpoint as FastAPI documents for blocking code: each request predicted on its own, no
  batching), reading the request with the same schema and input functions as ours.

Both servers get the same requests (one item each: the sample's 64 features and its chart as a
base64 PNG, answered by the three probabilities), from an asyncio client with 1 and with 32
requests in flight: requests per second and p50/p99 latency. The goal of issue 17: 250 req/s and
a p50 under 10 ms at concurrency 1.

Prints a table, then one JSON object as the last line (ours and the peer in req/s at
concurrency 1; speedup = ours / peer).

    .venv/bin/python benchmarks/bench_serve.py [--requests 500] [--requests-c32 2000]
"""

# No `from __future__ import annotations`: FastAPI reads the peer endpoint's annotations.

import argparse
import asyncio
import base64
import contextlib
import io
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from aiopt_lib.core.net import free_port

ROOT = Path(__file__).resolve().parent.parent
GOAL_REQ_S = 250.0
GOAL_P50_MS = 10.0
BARS = 1500  # of the embedded sample: ~1,400 samples of 64-bar windows


def train(folder: Path) -> tuple[Any, Any]:
    """A tiny compact network saved in ``folder``; the model and its sample set."""
    from aiopt_lib.data.sources import load_sample
    from aiopt_lib.features.dataset import DatasetConfig, build_dataset
    from aiopt_lib.features.splits import purged_split
    from aiopt_lib.models.base import load_sample_set
    from aiopt_lib.models.networks import CompactChartNet, CompactConfig

    dataset = folder.parent / "dataset"
    build_dataset(load_sample().head(BARS), dataset, DatasetConfig())
    model = CompactChartNet(
        CompactConfig(channels=(8, 16, 16), hidden=32, epochs=1, batch_size=128), progress=False
    )
    data = load_sample_set(dataset, spec=model.spec)
    split = purged_split(data.samples)
    model.fit(data.take(split.train), data.take(split.validation))
    model.save(folder)
    return model, data


def request_bodies(model: Any, data: Any, n: int) -> list[bytes]:
    """``n`` request bodies (cycling over the last samples): features and the chart as PNG."""
    from PIL import Image

    names = list(model.feature_names)
    rows = data.samples.select(names).cast({name: float for name in names}).rows()
    bodies = []
    for i in range(n):
        row = len(rows) - 1 - (i % 200)
        buffer = io.BytesIO()
        Image.fromarray(data.images[row]).save(buffer, format="PNG")
        item = {
            "features": dict(zip(names, rows[row], strict=True)),
            "image": base64.b64encode(buffer.getvalue()).decode(),
        }
        bodies.append(json.dumps(item).encode())
    return bodies


def in_process(model: Any, data: Any, n: int) -> tuple[float, float]:
    """Samples per second of ``predict_proba`` one sample at a time and 32 at a time."""
    last = len(data) - 1
    singles = [data.take([last - i % 200]) for i in range(n)]
    model.predict_proba(singles[0])
    started = time.perf_counter()
    for one in singles:
        model.predict_proba(one)
    single_rate = n / (time.perf_counter() - started)
    batches = [
        data.take(np.arange(last - 31 - i % 100, last + 1 - i % 100)) for i in range(n // 32)
    ]
    started = time.perf_counter()
    for batch in batches:
        model.predict_proba(batch)
    batch_rate = 32 * len(batches) / (time.perf_counter() - started)
    return single_rate, batch_rate


# -- the peer: a plain FastAPI endpoint ---------------------------------------------------------


def peer_app(folder: str) -> Any:
    """The FastAPI app of the peer: the same model, schema and input functions as ours, one
    ``predict_proba`` per request."""
    from fastapi import FastAPI

    from aiopt_lib.features.labels import CLASSES
    from aiopt_lib.models import load_model
    from aiopt_lib.serve.catalog import open_models
    from aiopt_lib.serve.inputs import prepare_item, sample_set
    from aiopt_lib.serve.schemas import PredictRequest

    (entry,) = open_models([folder])
    model = load_model(folder)
    app = FastAPI()

    @app.get("/health")
    def health() -> str:
        return "ok"

    @app.post("/predict")
    def predict(request: PredictRequest) -> dict[str, Any]:
        item = prepare_item(entry, request.items[0], explain=False)
        proba = model.predict_proba(sample_set(entry, [item]))[0]
        best = int(np.argmax(proba))
        return {
            "model": entry.id,
            "version": entry.version,
            "label": CLASSES[best],
            "confidence": float(proba[best]),
            "probabilities": {c: float(p) for c, p in zip(CLASSES, proba, strict=True)},
        }

    return app


def run_peer(folder: str, port: int) -> None:
    import uvicorn

    uvicorn.run(peer_app(folder), host="127.0.0.1", port=port, log_level="warning")


# -- load ----------------------------------------------------------------------------------------


@contextlib.contextmanager
def started(command: list[str], port: int, log: Path) -> Iterator[str]:
    """A server process in its own process group, healthy; stopped (group killed) after."""
    with log.open("wb") as sink:
        process = subprocess.Popen(
            command, cwd=ROOT, stdout=sink, stderr=subprocess.STDOUT, start_new_session=True
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"{command[:4]} exited: {log.read_text()[-2000:]}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError(f"{command[:4]} did not become healthy")
            time.sleep(0.3)
        yield url
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=15)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)


async def _load(url: str, bodies: list[bytes], concurrency: int) -> tuple[float, np.ndarray]:
    latencies = np.empty(len(bodies))
    next_index = 0
    headers = {"content-type": "application/json"}
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as client:

        async def one(body: bytes) -> None:
            response = await client.post("/predict", content=body, headers=headers)
            if response.status_code != 200:
                raise RuntimeError(f"HTTP {response.status_code}: {response.text[:300]}")

        for body in bodies[: 2 * concurrency]:  # warm-up: connections, first batches
            await one(body)

        async def worker() -> None:
            nonlocal next_index
            while next_index < len(bodies):
                index = next_index
                next_index += 1
                begin = time.perf_counter()
                await one(bodies[index])
                latencies[index] = time.perf_counter() - begin

        begin = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        seconds = time.perf_counter() - begin
    return len(bodies) / seconds, latencies * 1e3


def measure(url: str, bodies: list[bytes], concurrency: int) -> dict[str, float]:
    rate, ms = asyncio.run(_load(url, bodies, concurrency))
    return {
        "req_s": round(rate, 1),
        "p50_ms": round(float(np.percentile(ms, 50)), 2),
        "p99_ms": round(float(np.percentile(ms, 99)), 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=500, help="requests at concurrency 1")
    parser.add_argument("--requests-c32", type=int, default=2000, help="at concurrency 32")
    parser.add_argument("--peer-server", metavar="MODEL_DIR", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.peer_server:  # the peer's own process
        run_peer(args.peer_server, args.port)
        return

    with tempfile.TemporaryDirectory(prefix="bench_serve_") as tmp:
        folder = Path(tmp) / "compact"
        print("training the compact network on the embedded sample ...", flush=True)
        model, data = train(folder)
        bodies = request_bodies(model, data, max(args.requests, args.requests_c32))
        single_rate, batch_rate = in_process(model, data, args.requests)

        results: dict[str, dict[str, dict[str, float]]] = {}
        servers = {
            "ours": [sys.executable, "-m", "aiopt_lib.serve", str(folder)],
            "ours_fast_queue": [
                sys.executable,
                "-m",
                "aiopt_lib.serve",
                str(folder),
                "--fast-queue",
            ],
            "fastapi": [sys.executable, __file__, "--peer-server", str(folder)],
        }
        for name, command in servers.items():
            port = free_port()
            with started([*command, "--port", str(port)], port, Path(tmp) / f"{name}.log") as url:
                results[name] = {
                    "c1": measure(url, bodies[: args.requests], 1),
                    "c32": measure(url, bodies[: args.requests_c32], 32),
                }

    ours, peer = results["ours"], results["fastapi"]
    print(f"\n{'':26}{'req/s':>10}{'p50 ms':>10}{'p99 ms':>10}")
    for name, result in results.items():
        for level, row in result.items():
            shown = {"ours": "ours (LitServe)", "ours_fast_queue": "ours, --fast-queue"}
            label = f"{shown.get(name, 'FastAPI')} {level}"
            print(f"{label:26}{row['req_s']:>10.1f}{row['p50_ms']:>10.2f}{row['p99_ms']:>10.2f}")
    print(f"{'in process, 1 sample':24}{single_rate:>10.1f}  samples/s")
    print(f"{'in process, 32 samples':24}{batch_rate:>10.1f}  samples/s")
    meets = ours["c1"]["req_s"] >= GOAL_REQ_S and ours["c1"]["p50_ms"] < GOAL_P50_MS
    print(
        f"goal {GOAL_REQ_S:g} req/s and p50 < {GOAL_P50_MS:g} ms at c=1: {'met' if meets else 'NOT met'}"
    )
    result = {
        "benchmark": "serve",
        "ours": ours["c1"]["req_s"],
        "peer": "fastapi",
        "peer_value": peer["c1"]["req_s"],
        "unit": "req/s",
        "speedup": round(ours["c1"]["req_s"] / peer["c1"]["req_s"], 3),
        "ours_c1_p50_ms": ours["c1"]["p50_ms"],
        "ours_c1_p99_ms": ours["c1"]["p99_ms"],
        "ours_c32_req_s": ours["c32"]["req_s"],
        "ours_c32_p50_ms": ours["c32"]["p50_ms"],
        "ours_c32_p99_ms": ours["c32"]["p99_ms"],
        "peer_c1_p50_ms": peer["c1"]["p50_ms"],
        "peer_c1_p99_ms": peer["c1"]["p99_ms"],
        "peer_c32_req_s": peer["c32"]["req_s"],
        "peer_c32_p50_ms": peer["c32"]["p50_ms"],
        "peer_c32_p99_ms": peer["c32"]["p99_ms"],
        "speedup_c32": round(ours["c32"]["req_s"] / peer["c32"]["req_s"], 3),
        "fast_queue_c1_req_s": results["ours_fast_queue"]["c1"]["req_s"],
        "fast_queue_c32_req_s": results["ours_fast_queue"]["c32"]["req_s"],
        "fast_queue_c32_p99_ms": results["ours_fast_queue"]["c32"]["p99_ms"],
        "inprocess_samples_s": round(single_rate, 1),
        "inprocess_batch32_samples_s": round(batch_rate, 1),
        "goal_req_s": GOAL_REQ_S,
        "goal_p50_ms": GOAL_P50_MS,
        "meets_goal": meets,
        "requests": args.requests + args.requests_c32,
        "cores": len(os.sched_getaffinity(0)),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()

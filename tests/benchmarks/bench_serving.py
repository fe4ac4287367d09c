"""Load test of `tauforge serve` on loopback: single-row V1 requests at a steady rate.

    .venv/bin/python tests/benchmarks/bench_serving.py [--rate 100] [--seconds 60] [--trees 500]
                                                       [--event-log s3|local]

Publishes a 500-tree model (grf's `simple` design, 5,000 rows, 10 covariates) to a temporary
store, starts the real server in its own process on 127.0.0.1 with its event log on object
storage (moto's S3 server on 127.0.0.1, as the tests use it; `--event-log local`: a folder),
times the first request once the server says ready, then sends requests open-loop (each at its
scheduled time, whether or not earlier ones have returned) from this process. Prints the first
request's latency, p50 / p90 / p99 / max latency, errors, the achieved rate, and how many rows
the event log holds after the server is stopped with SIGTERM.
"""

import argparse
import asyncio
import os
import socket
import subprocess
import sys
import tempfile
import time

import httpx
import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "tests"))  # servers.py: moto's S3 server


def publish(store: str, trees: int) -> None:
    from tauforge.components.registry import ModelStore
    from tauforge.kernels import CausalForestDML
    from tauforge.kernels.datasets import make_causal_data

    d = make_causal_data("simple", n=5000, p=10, seed=0)
    est = CausalForestDML(n_estimators=trees, random_state=0).fit(d.Y, d.T, X=d.X)
    with tempfile.TemporaryDirectory() as src:
        est.forest_.save(os.path.join(src, "forest"))
        card = {"spec": {"covariates": [f"x{j}" for j in range(10)], "outcome": "Y", "treatment": "T"},
                "effect": {"ate": est.ate_, "ate_lower": est.ate_interval()[0], "ate_upper": est.ate_interval()[1]},
                "data": {"rows": 5000}}
        ModelStore(store).publish("bench", src, card)


async def load(url: str, rate: float, seconds: float, rows: np.ndarray) -> tuple[list[float], int]:
    latencies, errors = [], 0
    limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
    async with httpx.AsyncClient(limits=limits, timeout=10.0) as client:
        async def one(i: int) -> None:
            nonlocal errors
            body = {"instances": [rows[i % len(rows)].tolist()]}
            start = time.perf_counter()
            try:
                r = await client.post(url, json=body)
                ok = r.status_code == 200
            except httpx.HTTPError:
                ok = False
            latencies.append(time.perf_counter() - start)
            errors += not ok

        await one(0)  # the first request after the server said ready
        first = latencies[0]
        for i in range(20):  # warm the connections
            await one(i)
        latencies.clear()
        errors = 0
        t0, tasks = time.perf_counter(), []
        for i in range(int(rate * seconds)):
            delay = t0 + i / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(i)))
        await asyncio.gather(*tasks)
        elapsed = time.perf_counter() - t0
    return first, latencies, errors, elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", type=float, default=100.0)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--trees", type=int, default=500)
    parser.add_argument("--event-log", choices=("s3", "local"), default="s3")
    args = parser.parse_args()
    import contextlib

    from servers import s3_server

    with tempfile.TemporaryDirectory() as tmp, (s3_server() if args.event_log == "s3"
                                                 else contextlib.nullcontext()) as s3:
        events = s3.uri("bench-events") if s3 else os.path.join(tmp, "events")
        store = os.path.join(tmp, "store")
        publish(store, args.trees)
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        server = subprocess.Popen([sys.executable, "-m", "tauforge.pipelines.cli", "serve", "--grpc-port", "0",
                                   "--store", store, "--model", "bench",
                                   "--port", str(port), "--log-dir", events],
                                  cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            for _ in range(300):
                try:
                    if httpx.get(f"http://127.0.0.1:{port}/v2/health/ready").status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                time.sleep(0.2)
            from tauforge.kernels.datasets import make_causal_data

            rows = make_causal_data("simple", n=1000, p=10, seed=1).X
            url = f"http://127.0.0.1:{port}/v1/models/bench:predict"
            first, latencies, errors, elapsed = asyncio.run(load(url, args.rate, args.seconds, rows))
        finally:
            server.terminate()  # SIGTERM: the server writes what its event log still holds
            server.wait(timeout=60)
        from tauforge.components.events import read_events

        logged = len(read_events(events, model="bench"))
    ms = 1000 * np.array(latencies)
    print(f"first request after ready: {1000 * first:.1f} ms; event log ({args.event_log}): {logged} rows for "
          f"{1 + 20 + len(ms)} answered")
    print(f"| {args.trees} trees | {args.rate:g} req/s for {args.seconds:g} s | {len(ms)} requests "
          f"({len(ms) / elapsed:.1f}/s achieved) | p50 {np.percentile(ms, 50):.2f} ms | "
          f"p90 {np.percentile(ms, 90):.2f} ms | p99 {np.percentile(ms, 99):.2f} ms | max {ms.max():.1f} ms | "
          f"errors {errors} |")


if __name__ == "__main__":
    main()

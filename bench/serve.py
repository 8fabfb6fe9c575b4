"""Bounded load test of `lumbarclip serve` on localhost: N concurrent POST /predict requests,
every answer checked against `Predictor.predict` on the same files, p50/p95 latency.

The server runs in its own process (`python -m lumbarclip.cli serve`, as a user starts it) on a
free port and is stopped at the end. Each request sends the files of one test patient
(--per-request 1: one slice; 6: the patient's six images, a study). All N requests are sent
at once (bounded by --concurrency); the server runs the model one request at a time, so the
latency under this burst is mostly queueing: throughput is reported beside it.

    python bench/serve.py --model MODEL --data COHORT/manifest.csv [--requests 50] [--per-request 1]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(url: str, proc: subprocess.Popen, timeout: float) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the server exited with {proc.returncode}")
        try:
            if httpx.get(url + "/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise SystemExit(f"the server was not ready after {timeout:.0f} s")


async def burst(url: str, bodies: list[list[Path]], concurrency: int, timeout: float) -> list[tuple[float, int, dict]]:
    import httpx

    limit = asyncio.Semaphore(concurrency)

    async def one(client: httpx.AsyncClient, paths: list[Path]) -> tuple[float, int, dict]:
        files = [("files", (p.name, p.read_bytes(), "application/octet-stream")) for p in paths]
        async with limit:
            t = time.perf_counter()
            res = await client.post(url + "/predict", files=files)
            return time.perf_counter() - t, res.status_code, res.json()

    async with httpx.AsyncClient(timeout=timeout, limits=httpx.Limits(max_connections=concurrency)) as client:
        return await asyncio.gather(*(one(client, paths) for paths in bodies))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="model folder with the operating point")
    parser.add_argument("--data", required=True, help="cohort manifest.csv (test patients are sent)")
    parser.add_argument("--requests", type=int, default=50, help="requests in the burst (default 50)")
    parser.add_argument("--concurrency", type=int, default=50, help="requests in flight at once (default 50)")
    parser.add_argument("--per-request", type=int, default=1, choices=(1, 6), help="files per request (default 1)")
    parser.add_argument("--runtime", default="torch", choices=("torch", "onnx"))
    parser.add_argument("--timeout", type=float, default=300.0, help="per-request timeout in s (default 300)")
    parser.add_argument("--out", help="write the figures as JSON here too")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

    from lumbarclip.data.manifest import read_manifest
    from lumbarclip.inference.predict import Predictor

    by_patient: dict[str, list[Path]] = defaultdict(list)
    for rec in read_manifest(args.data).split("test"):
        by_patient[rec.patient_id].append(Path(rec.image_path))
    patients = [paths for paths in by_patient.values() if len(paths) >= args.per_request]
    bodies = [patients[i % len(patients)][: args.per_request] for i in range(args.requests)]

    # the expected answers, from the library in this process
    predictor = Predictor.load(args.model, runtime=args.runtime)
    expected = {}
    for paths in {tuple(b) for b in bodies}:
        res = predictor.predict(list(paths), top_k=0)  # findings/reports do not change the numbers
        expected[paths] = (
            {Path(r.path).name: (r.p_abnormal, r.label) for r in res.images},
            sorted((s.p_abnormal, s.label) for s in res.studies),
        )
    del predictor

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    cmd = [sys.executable, "-m", "lumbarclip.cli", "serve", "--model", args.model, "--port", str(port),
           "--runtime", args.runtime]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_ready(url, proc, timeout=900)  # startup builds the findings classifier (text tower)
        load_before = os.getloadavg()[0]
        t0 = time.perf_counter()
        results = asyncio.run(burst(url, bodies, args.concurrency, args.timeout))
        wall = time.perf_counter() - t0
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()

    wrong = []
    for i, ((_, status, body), paths) in enumerate(zip(results, bodies, strict=True)):
        images, studies = expected[tuple(paths)]
        got = {r["path"]: (r["p_abnormal"], r["label"]) for r in body.get("images", [])}
        got_studies = sorted((s["p_abnormal"], s["label"]) for s in body.get("studies", []))
        ok = (
            status == 200
            and got.keys() == images.keys()
            and all(abs(got[k][0] - images[k][0]) <= 1e-6 and got[k][1] == images[k][1] for k in images)
            and len(got_studies) == len(studies)
            and all(abs(a[0] - b[0]) <= 1e-6 and a[1] == b[1] for a, b in zip(got_studies, studies, strict=True))
        )
        if not ok:
            wrong.append({"request": i, "status": status})
    latency_ms = [1000 * r[0] for r in results]
    report = {
        "requests": args.requests,
        "concurrency": args.concurrency,
        "files_per_request": args.per_request,
        "runtime": args.runtime,
        "correct": args.requests - len(wrong),
        "wrong": wrong[:10],
        "latency_p50_ms": round(float(np.percentile(latency_ms, 50)), 1),
        "latency_p95_ms": round(float(np.percentile(latency_ms, 95)), 1),
        "latency_max_ms": round(max(latency_ms), 1),
        "wall_s": round(wall, 2),
        "throughput_rps": round(args.requests / wall, 2),
        "cpus_online": os.cpu_count(),
        "load_average_1m_before_after": [round(load_before, 2), round(os.getloadavg()[0], 2)],
    }
    print(json.dumps(report, indent=2))
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    return 0 if not wrong else 1


if __name__ == "__main__":
    sys.exit(main())

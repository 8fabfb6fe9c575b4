"""Latency of diagnosis after load, PyTorch vs onnxruntime, and cold start.

Per image: `Predictor.predict([one file])` end to end (read, preprocess, image scorer,
calibration, findings, nearest reports; no saliency). Per study: `predict` on the 6 images of
one test patient. Both runtimes are timed in one process, interleaved, with the same thread
count, so the machine's load hits them alike; the scorer's forward alone is timed too. Cold
start: a fresh interpreter importing the package and `Predictor.load` (median of --cold runs).
Targets (2 cores, demo model): <= 300 ms per image, <= 1 s per 6-image study.

    python bench/predict.py --model MODEL --data COHORT/manifest.csv [--threads 2] [--repeats 20]

MODEL needs the operating point (`lumbarclip evaluate`); without MODEL/onnx the scorer is
exported to a temporary folder first.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

COLD = """
import json, sys, time
t0 = time.perf_counter()
import torch; torch.set_num_threads({threads})
from lumbarclip.inference.predict import Predictor
t1 = time.perf_counter()
p = Predictor.load({model!r}, runtime={runtime!r})
t2 = time.perf_counter()
p.predict([{image!r}])
t3 = time.perf_counter()
print(json.dumps({{"import_s": t1 - t0, "load_s": t2 - t1, "first_predict_s": t3 - t2}}))
"""


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q))


def summary(values: list[float]) -> dict[str, float]:
    ms = [1000 * v for v in values]
    return {"median_ms": round(statistics.median(ms), 1), "p95_ms": round(pct(ms, 95), 1), "n": len(ms)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="model folder with the operating point")
    parser.add_argument("--data", required=True, help="cohort manifest.csv (test patients are used)")
    parser.add_argument("--threads", type=int, default=2, help="intra-op threads for both runtimes (default 2)")
    parser.add_argument("--repeats", type=int, default=20, help="timed calls per measurement (default 20)")
    parser.add_argument("--cold", type=int, default=3, help="cold starts per runtime (default 3; 0 skips them)")
    parser.add_argument("--out", help="write the figures as JSON here too")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

    import torch

    from lumbarclip.bundle import ModelFolder
    from lumbarclip.data.manifest import read_manifest
    from lumbarclip.inference import load_images
    from lumbarclip.inference.onnx import export_onnx
    from lumbarclip.inference.predict import Predictor

    torch.set_num_threads(args.threads)
    manifest = read_manifest(args.data)
    by_patient: dict[str, list[Path]] = defaultdict(list)
    for rec in manifest.split("test"):
        by_patient[rec.patient_id].append(Path(rec.image_path))
    studies = [paths for paths in by_patient.values() if len(paths) == 6][: args.repeats]
    images = [paths[0] for paths in studies]
    if len(studies) < args.repeats:
        raise SystemExit(f"{args.data}: only {len(studies)} test patients with 6 images")

    model = Path(args.model)
    tmp = tempfile.TemporaryDirectory(prefix="bench-onnx-")
    onnx_model = model
    if ModelFolder.load(model).export is None:
        export_onnx(model, Path(tmp.name) / "onnx")
        onnx_model = Path(tmp.name) / "onnx"
    predictors = {"torch": Predictor.load(model, runtime="torch"), "onnx": Predictor.load(onnx_model, runtime="onnx")}
    for p in predictors.values():  # warm-up: first calls allocate
        p.predict(studies[0])
        p.predict(images[:1])

    load_before = os.getloadavg()[0]
    times: dict[str, dict[str, list[float]]] = {r: defaultdict(list) for r in predictors}
    answers: dict[str, list[float]] = defaultdict(list)
    for i in range(args.repeats):
        for runtime, p in predictors.items():  # interleaved: load changes hit both alike
            t = time.perf_counter()
            res = p.predict([images[i]])
            times[runtime]["image"].append(time.perf_counter() - t)
            t = time.perf_counter()
            res_s = p.predict(studies[i])
            times[runtime]["study"].append(time.perf_counter() - t)
            answers[runtime] += [r.p_abnormal for r in res.images] + [s.p_abnormal for s in res_s.studies]

    # the scorer's forward alone, on the 6 preprocessed images of one study
    from lumbarclip.inference.onnx import OnnxImageScorer
    from lumbarclip.inference.scorer import ImageScorer

    folder = ModelFolder.load(model)
    lumbar = folder.model()
    scorer = ImageScorer(lumbar, folder.operating_point).eval()
    ort_scorer = OnnxImageScorer(ModelFolder.load(onnx_model).export_file(), threads=args.threads)
    batch = load_images(studies[0], folder.preprocess, progress=False)
    forward: dict[str, list[float]] = defaultdict(list)
    with torch.no_grad():
        for _ in range(args.repeats):
            t = time.perf_counter()
            scorer(batch)
            forward["torch"].append(time.perf_counter() - t)
            t = time.perf_counter()
            ort_scorer(batch.numpy())
            forward["onnx"].append(time.perf_counter() - t)

    warm = {
        "per_image": {r: summary(t["image"]) for r, t in times.items()},
        "per_study_6_images": {r: summary(t["study"]) for r, t in times.items()},
        "scorer_forward_6_images": {r: summary(v) for r, v in forward.items()},
    }
    print("after load:", json.dumps(warm), flush=True)  # kept even if the cold starts are cut short

    cold: dict[str, list[dict[str, float]]] = defaultdict(list)
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    for _ in range(args.cold):
        for runtime in predictors:
            code = COLD.format(
                threads=args.threads, model=str(model if runtime == "torch" else onnx_model), runtime=runtime,
                image=str(images[0]),
            )
            out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
            cold[runtime].append(json.loads(out.stdout.strip().splitlines()[-1]))
    tmp.cleanup()

    diff = float(np.abs(np.array(answers["torch"]) - np.array(answers["onnx"])).max())
    report = {
        "threads": args.threads,
        "cpus_online": os.cpu_count(),
        "load_average_1m_before_after": [round(load_before, 2), round(os.getloadavg()[0], 2)],
        **warm,
        "cold_start_median_s": {
            r: {k: round(statistics.median(run[k] for run in runs), 2) for k in runs[0]} for r, runs in cold.items() if runs
        },
        "max_abs_diff_p_abnormal_torch_vs_onnx": diff,
        "targets": {
            r: {
                "per_image_<=300ms": summary(t["image"])["median_ms"] <= 300,
                "per_study_<=1s": summary(t["study"])["median_ms"] <= 1000,
            }
            for r, t in times.items()
        },
    }
    print(json.dumps(report, indent=2))
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

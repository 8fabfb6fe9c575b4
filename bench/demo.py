"""Benchmark of the README's main job: wall time, peak memory and the headline figures of
`lumbarclip demo`, checked against the walking-skeleton targets.

    .venv/bin/python bench/demo.py --out NEW_FOLDER [--patients 500] [--seed 0]
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from lumbarclip.evaluation.metrics_file import MetricsFile, read_metrics

TARGETS: dict[str, tuple[Callable[[MetricsFile], float | None], str, float]] = {  # (figure, comparison, bound)
    "linear probe, image balanced accuracy": (lambda m: m.image.balanced_accuracy, ">=", 0.85),
    "linear probe, patient balanced accuracy": (lambda m: m.patient.balanced_accuracy, ">=", 0.95),
    "zero-shot, image balanced accuracy": (lambda m: m.zero_shot.image.balanced_accuracy, ">=", 0.80),
    "raw-pixel baseline, image balanced accuracy": (lambda m: m.baselines["raw_pixels"].image.balanced_accuracy, "<=", 0.65),
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="a new folder for the demo's outputs")
    parser.add_argument("--patients", type=int, default=500)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    command = [sys.executable, "-m", "lumbarclip.cli", "demo", "--out", args.out,
               "--patients", str(args.patients), "--seed", str(args.seed)]
    load_before = os.getloadavg()
    started = time.perf_counter()
    subprocess.run(command, check=True)
    wall = time.perf_counter() - started
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    peak_gib = usage.ru_maxrss / 2**20  # KiB on Linux
    cpu_min = (usage.ru_utime + usage.ru_stime) / 60  # not inflated by other processes' load
    metrics = read_metrics(Path(args.out) / "run" / "eval-test" / "metrics.json")
    print(f"\nwall time  {wall / 60:.1f} min (target <= 5)\npeak RSS   {peak_gib:.2f} GiB (target < 4)")
    print(f"load avg   {load_before[0]:.1f} before, {os.getloadavg()[0]:.1f} after (1-min), "
          f"{os.cpu_count()} cores: a loaded machine makes the wall time longer")
    print(f"CPU time   {cpu_min:.1f} min (user + sys of the demo and its render workers)")
    ok = wall <= 300 and peak_gib < 4
    for name, (figure, op, bound) in TARGETS.items():
        value = figure(metrics)
        passed = value >= bound if op == ">=" else value <= bound
        ok &= passed
        print(f"{name:45s} {value:.3f} ({op} {bound}) {'ok' if passed else 'MISSED'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

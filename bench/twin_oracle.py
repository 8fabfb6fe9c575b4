"""The ceiling of a findings-mode twin: an oracle that knows what the phantom drew.

In `lumbarclip twin --render findings` the images show exactly the parsed note's per-level
findings at the three imaged discs, while the label is the radiologist's `lbp`. Findings outside
the disc model (a fracture, spondylolisthesis) and findings at other levels are not drawn, and
some notes' labels disagree with what they report; no image model can recover those. The oracle
calls a patient abnormal when any imaged disc was drawn abnormal; its patient accuracy, macro-F1
and balanced accuracy on a split are the most an image-only model can reach on that twin.

    python bench/twin_oracle.py --data TWIN/manifest.csv [--split test] [--metrics RUN/eval/metrics.json]

With --metrics (a `lumbarclip evaluate` output on the same twin) the probe's patient figures
are printed beside the oracle's, with their ratio.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from sklearn.metrics import accuracy_score, balanced_accuracy_score, f1_score

from lumbarclip.data.manifest import read_manifest
from lumbarclip.evaluation.metrics_file import read_metrics
from lumbarclip.findings import IMAGED_LEVELS, Findings


def oracle(manifest_path: Path, split: str) -> dict[str, float]:
    """Patient-level figures of the drawn-findings oracle on one split."""
    truth, called = {}, {}
    for record in read_manifest(manifest_path).split(split):
        drawn = Findings.from_json(record.findings)
        truth[record.patient_id] = record.label
        called[record.patient_id] = int(any(drawn.level(lv).abnormal for lv in IMAGED_LEVELS))
    y = np.array([truth[p] for p in sorted(truth)])
    pred = np.array([called[p] for p in sorted(truth)])
    return {
        "patients": len(y),
        "accuracy": float(accuracy_score(y, pred)),
        "macro_f1": float(f1_score(y, pred, average="macro")),
        "balanced_accuracy": float(balanced_accuracy_score(y, pred)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="the twin's manifest.csv (rendered findings)")
    parser.add_argument("--split", default="test", help="split to score (default test)")
    parser.add_argument("--metrics", type=Path, help="metrics.json of `lumbarclip evaluate` on this twin")
    args = parser.parse_args()
    result = {"oracle": oracle(args.data, args.split)}
    if args.metrics:
        patient = read_metrics(args.metrics).patient  # the probe's patient figures
        result["probe"] = {
            "accuracy": patient.accuracy, "macro_f1": patient.f1_macro, "balanced_accuracy": patient.balanced_accuracy,
        }
        result["probe_over_oracle"] = {k: v / result["oracle"][k] for k, v in result["probe"].items()}
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()

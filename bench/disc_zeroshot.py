"""Per-level zero-shot from the report text and nearest-report search at level granularity, on
the disc crops of the paper's cohort (mid-sagittal slices) and, for comparison, the whole slices:
both views compared on valid, the better one (macro AUROC) scored once on test.

    python bench/disc_zeroshot.py --data real-out/cohort/manifest.csv --model real-out/run/model --out disc-zeroshot.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from lumbarclip.bundle import load_model
from lumbarclip.data.manifest import read_manifest
from lumbarclip.evaluation.disc_zeroshot import VIEWS, level_embeddings, level_retrieval, zero_shot_auroc
from lumbarclip.inference.findings import FindingClassifier
from lumbarclip.models import LumbarCLIP


def score(model: LumbarCLIP, classifier: FindingClassifier, records: list, view: str) -> dict[str, object]:
    emb, keys, findings = level_embeddings(model, records, view)
    reports = {r.patient_id: r.report for r in records}
    return {"zero_shot": zero_shot_auroc(classifier, emb, keys, findings), "retrieval": level_retrieval(model, emb, keys, reports)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", required=True, help="manifest with discs and findings columns")
    ap.add_argument("--model", required=True, help="the CLIP model folder")
    ap.add_argument("--out", help="write the figures as JSON here")
    args = ap.parse_args(argv)
    model = load_model(args.model).eval()
    records = read_manifest(args.data).records
    classifier = FindingClassifier.build(model)
    valid = {view: score(model, classifier, [r for r in records if r.split == "valid"], view) for view in VIEWS}
    chosen = max(VIEWS, key=lambda v: valid[v]["zero_shot"]["macro"]["auroc"] or 0.0)  # type: ignore[index]
    test = score(model, classifier, [r for r in records if r.split == "test"], chosen)
    figures = {"valid": valid, "chosen": chosen, "test": test}
    print(json.dumps({"valid_macro": {v: valid[v]["zero_shot"]["macro"] for v in VIEWS}, "chosen": chosen, "test": test["zero_shot"]}, indent=1))  # type: ignore[index]
    if args.out:
        Path(args.out).write_text(json.dumps(figures, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

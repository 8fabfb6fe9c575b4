"""Per-level zero-shot from the report text and nearest-report search at level granularity, on
the paper's cohort (mid-sagittal slices), for three images of a level: the disc's crop through
the CLIP model, the whole slice, and the disc's grader features through a projection aligned on
train with the sentences that name the disc's level (`lumbarclip.training.crop_text`). The
views are compared on valid (macro AUROC), the best one scored once on test.

    python bench/disc_zeroshot.py --data real-out/cohort/manifest.csv --model real-out/run/model --out disc-zeroshot.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", required=True, help="manifest with discs and findings columns")
    ap.add_argument("--model", required=True, help="a model folder with its disc grader (make real)")
    ap.add_argument("--steps", type=int, default=300, help="full-batch steps of the aligned projection (default 300)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", help="write the figures as JSON here")
    args = ap.parse_args(argv)

    from lumbarclip.bundle import ModelFolder
    from lumbarclip.data.manifest import read_manifest
    from lumbarclip.errors import InputError
    from lumbarclip.findings import LEVEL_KINDS
    from lumbarclip.evaluation.disc_zeroshot import (
        ALIGNED, VIEWS, aligned_embeddings, level_discs, level_embeddings, level_retrieval, zero_shot_auroc,
    )  # fmt: skip
    from lumbarclip.inference import embed_texts
    from lumbarclip.inference.findings import FindingClassifier
    from lumbarclip.training.crop_text import fit_crop_projection

    try:
        folder = ModelFolder.load(args.model, require=("grader",))
        records = read_manifest(args.data).records
    except InputError as err:
        print(f"bench/disc_zeroshot.py: {err}", file=sys.stderr)
        return 2
    model = folder.model().eval()
    grader = folder.grader
    extractor = grader.network if grader.source == "cnn" else model
    size = grader.input_size
    split = {s: [r for r in records if r.split == s] for s in ("train", "valid", "test")}
    classifier = FindingClassifier.build(model)
    reports = {r.patient_id: r.report for r in records}

    train = level_discs(grader, extractor, split["train"], size)
    said = [i for i, text in enumerate(train.sentences) if text]
    projection = fit_crop_projection(
        train.features[said], embed_texts(model, [train.sentences[i] for i in said]), train.labels()[said],
        float(model.logit_scale.detach()), steps=args.steps, seed=args.seed,
    )  # fmt: skip

    def score(records: list, view: str) -> dict[str, object]:
        if view == ALIGNED:
            discs = level_discs(grader, extractor, records, size)
            emb, keys, findings = aligned_embeddings(projection, discs), discs.keys, discs.findings
        else:
            emb, keys, findings = level_embeddings(model, records, view)
        return {"zero_shot": zero_shot_auroc(classifier, emb, keys, findings), "retrieval": level_retrieval(model, emb, keys, reports)}

    views = (*VIEWS, ALIGNED)
    valid = {view: score(split["valid"], view) for view in views}
    chosen = max(views, key=lambda v: valid[v]["zero_shot"]["macro"]["auroc"] or 0.0)  # type: ignore[index]
    test = score(split["test"], chosen)
    figures = {
        "valid": valid, "chosen": chosen, "test": test, "grader_source": grader.source,
        "aligned_pairs_train": len(said), "aligned_steps": args.steps, "seed": args.seed,
        "train_level_positives": dict(zip(LEVEL_KINDS, np.asarray(train.labels()[said].sum(0), dtype=int).tolist())),
    }  # fmt: skip
    print(json.dumps({"valid_macro": {v: valid[v]["zero_shot"]["macro"] for v in views}, "chosen": chosen, "test": test["zero_shot"]}, indent=1))  # type: ignore[index]
    if args.out:
        Path(args.out).write_text(json.dumps(figures, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

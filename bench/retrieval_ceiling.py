"""How far same-patient retrieval can go when the only thing a model recognises is the findings.

An oracle ranks the split's reports for each query by the Jaccard similarity of the true
findings (ties broken at random, averaged over 20 draws): the Recall@K it reaches is what a model
that read every finding perfectly, and nothing else, would score. Two queries: the whole study
(all levels known) and one slice (only its own level's findings known, as one axial image shows).

    python bench/retrieval_ceiling.py --data MANIFEST [--split test]
"""

from __future__ import annotations

import argparse

import numpy as np

from lumbarclip.data.manifest import read_manifest
from lumbarclip.evaluation.retrieval import KS, recall_at_k
from lumbarclip.findings import Findings, findings_vector, jaccard


def slots(findings: Findings, level: str | None = None) -> frozenset[int]:
    """The set slots of the findings vector, of one level only when `level` is given."""
    if level is not None:
        findings = Findings(levels={level: findings.level(level)})
    return frozenset(i for i, v in enumerate(findings_vector(findings)) if v)


def oracle_recall(similarity: np.ndarray, queries: np.ndarray, items: np.ndarray, draws: int = 20) -> dict[int, float]:
    rng = np.random.default_rng(0)
    runs = [recall_at_k(similarity + 1e-6 * rng.random(similarity.shape), queries, items, KS) for _ in range(draws)]
    return {k: float(np.mean([r[k] for r in runs])) for k in KS}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="manifest with a findings column")
    parser.add_argument("--split", default="test")
    args = parser.parse_args()
    records = read_manifest(args.data, check_files=False).split(args.split)
    findings = {r.patient_id: Findings.from_json(r.findings) for r in records}
    patients = np.array(sorted(findings))
    study = np.array([[jaccard(slots(findings[a]), slots(findings[b])) for b in patients] for a in patients])
    per_slice = np.array(
        [[jaccard(slots(findings[r.patient_id], r.level), slots(findings[b], r.level)) for b in patients] for r in records]
    )
    slice_patients = np.array([r.patient_id for r in records])
    print(f"{len(patients)} patients, {len(records)} images ({args.split})")
    for name, sim, queries in (("study", study, patients), ("slice", per_slice, slice_patients)):
        recall = oracle_recall(sim, queries, patients)
        print(f"oracle {name:5} -> report R@" + " / ".join(f"{k}: {v:.3f}" for k, v in recall.items()))


if __name__ == "__main__":
    main()

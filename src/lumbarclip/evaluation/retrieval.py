"""Cross-modal retrieval on one split: image -> report and report -> image Recall@K.

A hit is a retrieved item of the query's patient: a patient's six slices share one report, so
"the right report" for an image is its patient's report, and any of the patient's slices is a
right image for a report. Chance levels are returned next to the recalls so a number can be
read against them.

`study_embeddings` gives the study-level view: a patient's slices averaged into one query, the
way a radiologist reads the study against a report (a single axial slice shows one disc level,
while the report covers all of them).

Same-patient hits are strict: two patients with the same findings have interchangeable
reports. `findings_match_metrics` counts a retrieved report as right when its findings match
the truth (Jaccard of the "level:kind" sets >= 0.5, `lumbarclip.findings.finding_set`), scored
as mean average precision over queries and Recall@K, with the base rate of relevant items.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy.stats import hypergeom
from sklearn.metrics import average_precision_score

from lumbarclip.findings import jaccard

#: Jaccard of the findings sets at or above which a retrieved report counts as a match.
MATCH_THRESHOLD = 0.5
KS: tuple[int, ...] = (1, 5, 10)


def recall_at_k(
    similarity: np.ndarray, query_ids: np.ndarray, item_ids: np.ndarray, ks: tuple[int, ...]
) -> dict[int, float]:
    """Fraction of queries (rows) with an item of their own id among the k most similar columns."""
    order = np.argsort(-similarity, axis=1, kind="stable")
    hits = np.asarray(item_ids)[order] == np.asarray(query_ids)[:, None]
    return {k: float(hits[:, :k].any(axis=1).mean()) for k in ks}


def retrieval_metrics(
    image_emb: np.ndarray,
    image_patients: np.ndarray,
    text_emb: np.ndarray,
    text_patients: np.ndarray,
    ks: tuple[int, ...] = KS,
) -> dict[str, float | int]:
    """`i2t_r@K` and `t2i_r@K` for unit-norm embeddings (cosine = dot product), plus the
    counts and chance rates (a random ranking's recall) for each direction."""
    image_patients, text_patients = (
        np.asarray(image_patients).astype(str),
        np.asarray(text_patients).astype(str),
    )
    sim = np.asarray(image_emb, dtype=np.float64) @ np.asarray(text_emb, dtype=np.float64).T
    i2t = recall_at_k(sim, image_patients, text_patients, ks)
    t2i = recall_at_k(sim.T, text_patients, image_patients, ks)
    out: dict[str, float | int] = {}
    out.update({f"i2t_r@{k}": v for k, v in i2t.items()})
    out.update({f"t2i_r@{k}": v for k, v in t2i.items()})
    out.update({"n_images": int(len(image_patients)), "n_texts": int(len(text_patients))})
    out.update({f"chance_i2t_r@{k}": _chance(image_patients, text_patients, k) for k in ks})
    out.update({f"chance_t2i_r@{k}": _chance(text_patients, image_patients, k) for k in ks})
    return out


def study_embeddings(image_emb: np.ndarray, patients: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(patient ids sorted, [P, D] unit-norm mean of each patient's image embeddings)."""
    ids, inverse = np.unique(np.asarray(patients).astype(str), return_inverse=True)
    sums = np.zeros((len(ids), image_emb.shape[1]))
    np.add.at(sums, inverse, np.asarray(image_emb, dtype=np.float64))
    return ids, sums / np.linalg.norm(sums, axis=1, keepdims=True).clip(min=1e-12)


def findings_relevance(
    query_sets: Sequence[frozenset[str]], item_sets: Sequence[frozenset[str]], threshold: float = MATCH_THRESHOLD
) -> np.ndarray:
    """[Q, I] bool: item findings match the query's (Jaccard >= threshold)."""
    return np.array([[jaccard(q, i) >= threshold for i in item_sets] for q in query_sets], dtype=bool).reshape(
        len(query_sets), len(item_sets)
    )


def ranked_relevance_metrics(
    similarity: np.ndarray, relevant: np.ndarray, ks: tuple[int, ...]
) -> dict[str, float | int | None]:
    """mAP (sklearn's average precision per query, over queries with at least one relevant
    item), Recall@K (a relevant item among the top K) and chance levels: the mean fraction of
    relevant items (a random ranking's expected precision) and a random ranking's Recall@K.
    Scores are None when no query has a relevant item."""
    has = relevant.any(axis=1)
    out: dict[str, float | int | None] = {"n_queries": int(has.sum()), "n_queries_without_match": int((~has).sum())}
    if not has.any():
        return {**out, "map": None, "chance_map": None, **{f"r@{k}": None for k in ks}, **{f"chance_r@{k}": None for k in ks}}
    sim, rel = similarity[has], relevant[has]
    hits = np.take_along_axis(rel, np.argsort(-sim, axis=1, kind="stable"), axis=1)
    n = rel.shape[1]
    out["map"] = float(np.mean([average_precision_score(r, s) for r, s in zip(rel, sim)]))
    out["chance_map"] = float(rel.mean(axis=1).mean())
    for k in ks:
        out[f"r@{k}"] = float(hits[:, :k].any(axis=1).mean())
        out[f"chance_r@{k}"] = float(np.mean(1 - _miss(n, rel.sum(axis=1), k)))
    return out


def findings_match_metrics(
    image_emb: np.ndarray,
    image_findings: Sequence[frozenset[str]],
    text_emb: np.ndarray,
    text_findings: Sequence[frozenset[str]],
    ks: tuple[int, ...] = KS,
    threshold: float = MATCH_THRESHOLD,
) -> dict[str, object]:
    """Findings-match retrieval both ways: {"i2t": {...}, "t2i": {...}, "threshold": t}, each
    direction as in `ranked_relevance_metrics`."""
    sim = np.asarray(image_emb, dtype=np.float64) @ np.asarray(text_emb, dtype=np.float64).T
    relevant = findings_relevance(image_findings, text_findings, threshold)
    return {
        "i2t": ranked_relevance_metrics(sim, relevant, ks),
        "t2i": ranked_relevance_metrics(sim.T, relevant.T, ks),
        "threshold": threshold,
    }


def _miss(n: int, m: np.ndarray, k: int) -> np.ndarray:
    """Per count in `m`: the probability that a random top-k of n items holds none of the m
    relevant ones, C(n - m, k) / C(n, k) (hypergeometric, no successes in min(k, n) draws)."""
    return hypergeom.pmf(0, n, np.asarray(m, dtype=int), min(k, n))


def _chance(query_ids: np.ndarray, item_ids: np.ndarray, k: int) -> float:
    """Expected Recall@k of a uniformly random ranking: 1 - C(n - m, k) / C(n, k) per query,
    where m of the n items belong to the query's patient."""
    n = len(item_ids)
    if n == 0 or len(query_ids) == 0:
        return 0.0
    ids, counts = np.unique(item_ids, return_counts=True)
    per_id = dict(zip(ids, counts, strict=True))
    return float(1 - np.mean(_miss(n, np.array([per_id.get(q, 0) for q in query_ids]), k)))

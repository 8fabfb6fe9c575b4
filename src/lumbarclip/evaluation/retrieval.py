"""Cross-modal retrieval on one split: image -> report and report -> image Recall@K.

A hit is a retrieved item of the query's patient: a patient's six slices share one report, so
"the right report" for an image is its patient's report, and any of the patient's slices is a
right image for a report. Chance levels are returned next to the recalls so a number can be
read against them.
"""

from __future__ import annotations

import numpy as np

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


def _chance(query_ids: np.ndarray, item_ids: np.ndarray, k: int) -> float:
    """Expected Recall@k of a uniformly random ranking: 1 - C(n - m, k) / C(n, k) per query,
    where m of the n items belong to the query's patient."""
    n = len(item_ids)
    if n == 0 or len(query_ids) == 0:
        return 0.0
    ids, counts = np.unique(item_ids, return_counts=True)
    per_id = dict(zip(ids, counts, strict=True))
    k = min(k, n)
    misses = []
    for q in query_ids:
        m = per_id.get(q, 0)
        miss = 1.0
        for j in range(k):  # product form of C(n - m, k) / C(n, k), exact and overflow-free
            miss *= max(n - m - j, 0) / (n - j)
        misses.append(miss)
    return float(1 - np.mean(misses))

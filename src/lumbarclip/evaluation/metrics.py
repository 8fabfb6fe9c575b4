"""Binary classification metrics of the metrics.json contract, calibration, validation-chosen
thresholds and patient-level bootstrap confidence intervals.

Probabilities are P(abnormal). Degenerate inputs never crash: a ranking metric (AUROC, AUPRC)
is `None` when `y_true` holds one class only, and a bootstrap resample without both classes
is left out of that metric's interval.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve

LABELS: tuple[int, int] = (0, 1)
#: Metrics that are numbers (the ones a confidence interval is computed for).
SCALAR_METRICS: tuple[str, ...] = (
    "accuracy",
    "balanced_accuracy",
    "f1_macro",
    "f1_weighted",
    "precision_macro",
    "recall_macro",
    "auroc",
    "auprc",
    "ece",
    "brier",
)
METRIC_KEYS: tuple[str, ...] = (*SCALAR_METRICS, "confusion_matrix", "n")


def reliability_bins(y_true: np.ndarray, prob: np.ndarray, n_bins: int = 10) -> dict[str, np.ndarray]:
    """Equal-width bins of P(abnormal): mean predicted probability, observed abnormal rate and
    count per bin (empty bins have count 0 and NaN means). Shared by ECE and the diagram."""
    y_true, prob = np.asarray(y_true, dtype=float), np.asarray(prob, dtype=float)
    index = np.clip((prob * n_bins).astype(int), 0, n_bins - 1)
    count = np.bincount(index, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_prob = np.bincount(index, weights=prob, minlength=n_bins) / count
        frac_pos = np.bincount(index, weights=y_true, minlength=n_bins) / count
    return {"mean_prob": mean_prob, "frac_pos": frac_pos, "count": count}


def expected_calibration_error(y_true: np.ndarray, prob: np.ndarray, n_bins: int = 10) -> float:
    """ECE of P(abnormal): the count-weighted mean |observed rate - mean probability| over bins."""
    bins = reliability_bins(y_true, prob, n_bins)
    filled = bins["count"] > 0
    gaps = np.abs(bins["frac_pos"][filled] - bins["mean_prob"][filled])
    return float(np.sum(gaps * bins["count"][filled]) / max(len(prob), 1))


def classification_metrics(y_true: np.ndarray, prob: np.ndarray, threshold: float = 0.5) -> dict[str, object]:
    """Every metric of a contract block; a case is called abnormal when `prob >= threshold`.

    Threshold metrics come from the 2x2 confusion matrix (scikit-learn's definitions with
    `labels=[0, 1]`, `zero_division=0`; the bootstrap calls this thousands of times, so they are
    not re-derived by a validating call each): macro averages run over both classes, balanced
    accuracy over the classes present in `y_true`. Ranking metrics are scikit-learn's.
    """
    y_true = np.asarray(y_true, dtype=int)
    prob = np.asarray(prob, dtype=float)
    if len(y_true) == 0:
        return {**{k: None for k in SCALAR_METRICS}, "confusion_matrix": [[0, 0], [0, 0]], "n": 0}
    if not np.isin(y_true, LABELS).all():
        raise ValueError("labels must be 0 (normal) or 1 (abnormal)")
    y_pred = (prob >= threshold).astype(int)
    matrix = np.bincount(2 * y_true + y_pred, minlength=4).reshape(2, 2)  # rows: true, columns: predicted
    hits, support, called = np.diag(matrix), matrix.sum(axis=1), matrix.sum(axis=0)
    recall = np.divide(hits, support, out=np.zeros(2), where=support > 0)
    precision = np.divide(hits, called, out=np.zeros(2), where=called > 0)
    f1 = np.divide(2 * hits, support + called, out=np.zeros(2), where=support + called > 0)
    both = bool((support > 0).all())
    return {
        "accuracy": float(hits.sum() / len(y_true)),
        "balanced_accuracy": float(recall[support > 0].mean()),
        "f1_macro": float(f1.mean()),
        "f1_weighted": float(np.average(f1, weights=support)),
        "precision_macro": float(precision.mean()),
        "recall_macro": float(recall.mean()),
        "auroc": float(roc_auc_score(y_true, prob)) if both else None,
        "auprc": float(average_precision_score(y_true, prob)) if both else None,
        "confusion_matrix": matrix.tolist(),
        "n": int(len(y_true)),
        "ece": expected_calibration_error(y_true, prob),
        "brier": float(np.mean((prob - y_true) ** 2)),
    }


def choose_threshold(y_true: np.ndarray, prob: np.ndarray) -> float:
    """The threshold that maximises balanced accuracy (Youden's J) on validation data.

    It sits half-way between the chosen score and the next lower one, so that test scores near
    the boundary are not decided by one validation case. 0.5 when validation has one class.
    """
    y_true, prob = np.asarray(y_true, dtype=int), np.asarray(prob, dtype=float)
    if len(np.unique(y_true)) < 2:
        return 0.5
    fpr, tpr, thresholds = roc_curve(y_true, prob, drop_intermediate=False)
    best = int(np.argmax(tpr - fpr))
    if not math.isfinite(thresholds[best]):  # the "predict nothing abnormal" point
        return float(np.nextafter(prob.max(), np.inf))
    lower = thresholds[best + 1] if best + 1 < len(thresholds) else prob.min()
    return float((thresholds[best] + lower) / 2) if lower < thresholds[best] else float(thresholds[best])


def bootstrap_ci(
    statistic: Callable[[np.ndarray], dict[str, float | None]],
    n_groups: int,
    n_resamples: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> dict[str, list[float] | None]:
    """Percentile interval of every number `statistic` returns, over resamples of groups.

    `statistic(indices)` scores a resample given as group indices drawn with replacement
    (patients, so that a patient's correlated images stay together). A metric that is `None` in
    a resample (one class drawn) is left out of that resample; `None` when no resample had it.
    An interval is widened to take in the full-sample estimate when resampling bias puts that
    outside (ECE is biased upwards on resamples, visibly so with few patients): conservative,
    and never an interval that excludes the number it is printed next to.
    """
    rng = np.random.default_rng(seed)
    draws: dict[str, list[float]] = {}
    for _ in range(n_resamples):
        for key, value in statistic(rng.integers(0, n_groups, n_groups)).items():
            draws.setdefault(key, [])
            if value is not None:
                draws[key].append(value)
    estimate = statistic(np.arange(n_groups))
    tail = (1 - level) / 2 * 100
    out: dict[str, list[float] | None] = {}
    for key, values in draws.items():
        if not values:
            out[key] = None
            continue
        lo, hi = float(np.percentile(values, tail)), float(np.percentile(values, 100 - tail))
        point = estimate.get(key)
        out[key] = [lo, hi] if point is None else [min(lo, float(point)), max(hi, float(point))]
    return out

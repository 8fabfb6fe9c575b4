"""Binary classification metrics of the metrics.json contract, calibration and patient-level
bootstrap confidence intervals (the validation-chosen threshold is `lumbarclip.decision`'s).

Probabilities are P(abnormal). Degenerate inputs never crash: a ranking metric (AUROC, AUPRC)
is `None` when `y_true` holds one class only, and so is an interval scipy cannot compute.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence

import numpy as np
from scipy import stats
from sklearn.calibration import calibration_curve
from sklearn.metrics import average_precision_score, roc_auc_score

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
#: How the intervals in metrics.json `ci95` are made (written to its `meta`).
CI_METHOD: str = (
    "scipy.stats.bootstrap BCa 95% interval; patients resampled with replacement within each "
    "class (normal, abnormal), an image-level resample takes every image of its drawn patients"
)


def reliability_bins(y_true: np.ndarray, prob: np.ndarray, n_bins: int = 10) -> dict[str, np.ndarray]:
    """Non-empty equal-width bins of P(abnormal): mean predicted probability and observed
    abnormal rate (scikit-learn's `calibration_curve`) and the count of each bin (the same bin
    assignment, which `calibration_curve` does not return). Shared by ECE and the diagram."""
    y_true, prob = np.asarray(y_true, dtype=int), np.asarray(prob, dtype=float)
    frac_pos, mean_prob = calibration_curve(y_true, prob, n_bins=n_bins, strategy="uniform")
    count = np.bincount(np.searchsorted(np.linspace(0.0, 1.0, n_bins + 1)[1:-1], prob), minlength=n_bins)
    return {"mean_prob": mean_prob, "frac_pos": frac_pos, "count": count[count > 0]}


def expected_calibration_error(y_true: np.ndarray, prob: np.ndarray, n_bins: int = 10) -> float:
    """ECE of P(abnormal): the count-weighted mean |observed rate - mean probability| over 10
    equal-width bins. The one ECE of the project (before and after calibration alike)."""
    if len(prob) == 0:
        return float("nan")
    bins = reliability_bins(y_true, prob, n_bins)
    gaps = np.abs(bins["frac_pos"] - bins["mean_prob"])
    return float(np.sum(gaps * bins["count"]) / len(prob))


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


def bootstrap_ci(
    statistic: Callable[[np.ndarray], dict[str, float | None]],
    groups: int | Sequence[Sequence[int]],
    n_resamples: int = 1000,
    seed: int = 0,
    level: float = 0.95,
    method: str = "BCa",
) -> dict[str, list[float] | None]:
    """`scipy.stats.bootstrap` interval (BCa by default, or "percentile") of every number
    `statistic` returns, over resamples of groups.

    `statistic(indices)` scores a resample given as group indices drawn with replacement
    (patients, so that a patient's correlated images stay together). `groups` is the number of
    groups, or strata of group indices each resampled on its own (normal and abnormal patients:
    every resample then has both classes, so AUROC is defined in each). A stratum of one group
    cannot be resampled by scipy; the strata are then pooled. An interval is `None` where scipy
    gives none (a metric undefined on the data); a metric equal in every resample (accuracy 1.0)
    gets the point interval [v, v] that BCa cannot compute.
    """
    strata = [np.arange(groups)] if isinstance(groups, int) else [np.asarray(s, dtype=int) for s in groups if len(s)]
    if any(len(s) < 2 for s in strata):
        strata = [np.concatenate(strata)] if strata else [np.arange(0)]
    keys = list(statistic(np.concatenate(strata)))
    out: dict[str, list[float] | None] = dict.fromkeys(keys)
    if len(strata[0]) < 2:
        return out

    def vector(*samples: np.ndarray) -> np.ndarray:
        values = statistic(np.concatenate(samples).astype(int))
        return np.array([np.nan if values[k] is None else values[k] for k in keys], dtype=float)

    with warnings.catch_warnings():  # degenerate distributions are handled below
        warnings.simplefilter("ignore", stats.DegenerateDataWarning)
        warnings.simplefilter("ignore", RuntimeWarning)
        result = stats.bootstrap(
            tuple(strata),
            vector,
            n_resamples=n_resamples,
            confidence_level=level,
            method=method,
            vectorized=False,
            rng=np.random.default_rng(seed),
        )
    lows, highs = result.confidence_interval
    for i, key in enumerate(keys):
        draws = result.bootstrap_distribution[i]
        if np.isfinite(lows[i]) and np.isfinite(highs[i]):
            out[key] = [float(lows[i]), float(highs[i])]
        elif np.isfinite(draws).all() and np.ptp(draws) == 0:
            out[key] = [float(draws[0]), float(draws[0])]
    return out

"""Decision rules shared by evaluation and prediction: the patient rule, the validation-chosen
threshold, Platt calibration and its maps, the input guard (is an image like the ones the model
was evaluated on?) and the study unit (is a group of images shaped like the patients the
study-level map and threshold were fitted on?).

Nothing here knows about models or files: embeddings, logits and labels in, decisions out.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
from scipy.special import expit
from scipy.special import logit as _logit

from lumbarclip.errors import InputError

#: Inverse L2 strength of the Platt fit. Finite, so a small separable valid set cannot drive the
#: slope to infinity (sklearn's default; the slope is on the logit scale, about 1 for a sane probe).
PLATT_C = 1.0
#: Share of valid images the input guard accepts: its threshold is this quantile of their scores.
GUARD_IN_RATE = 0.99


def aggregate_patients(
    patient_ids: np.ndarray, y_true: np.ndarray, prob: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(patient ids sorted, patient labels, patient probabilities). The patient rule: a patient's
    probability is the MEAN of its images' P(abnormal) (each slice votes with its confidence; one
    odd slice cannot flip a patient alone), and a patient is abnormal when any of its images is
    labelled abnormal (labels are per patient in practice, so this only matters for hand-made
    manifests)."""
    ids, inverse = np.unique(np.asarray(patient_ids).astype(str), return_inverse=True)
    counts = np.bincount(inverse, minlength=len(ids))
    mean_prob = np.bincount(inverse, weights=np.asarray(prob, dtype=float), minlength=len(ids)) / counts
    labels = np.zeros(len(ids), dtype=int)
    np.maximum.at(labels, inverse, np.asarray(y_true, dtype=int))
    return ids, labels, mean_prob


def choose_threshold(y_true: np.ndarray, prob: np.ndarray) -> float:
    """The threshold that maximises balanced accuracy (Youden's J) on validation data.

    It sits half-way between the chosen score and the next lower one, so that test scores near
    the boundary are not decided by one validation case. 0.5 when validation has one class.
    """
    from sklearn.metrics import roc_curve

    y_true, prob = np.asarray(y_true, dtype=int), np.asarray(prob, dtype=float)
    if len(np.unique(y_true)) < 2:
        return 0.5
    fpr, tpr, thresholds = roc_curve(y_true, prob, drop_intermediate=False)
    best = int(np.argmax(tpr - fpr))
    if not math.isfinite(thresholds[best]):  # the "predict nothing abnormal" point
        return float(np.nextafter(prob.max(), np.inf))
    lower = thresholds[best + 1] if best + 1 < len(thresholds) else prob.min()
    return float((thresholds[best] + lower) / 2) if lower < thresholds[best] else float(thresholds[best])


def choose_f1_threshold(y_true: np.ndarray, prob: np.ndarray) -> float:
    """The threshold that maximises F1 on validation data (scikit-learn's precision-recall
    curve), half-way to the next lower score as `choose_threshold`; for a finding reported by
    its F1, where balanced accuracy would flag too many of a rare class. 0.5 when validation
    has one class."""
    from sklearn.metrics import precision_recall_curve

    y_true, prob = np.asarray(y_true, dtype=int), np.asarray(prob, dtype=float)
    if len(np.unique(y_true)) < 2:
        return 0.5
    precision, recall, thresholds = precision_recall_curve(y_true, prob)
    f1 = np.where(precision + recall > 0, 2 * precision * recall / np.maximum(precision + recall, 1e-12), 0.0)[:-1]
    best = float(thresholds[int(np.argmax(f1))])
    lower = prob[prob < best]
    return float((best + lower.max()) / 2) if len(lower) else best


def sigmoid(z: np.ndarray) -> np.ndarray:
    """P(abnormal) of logits, in float64."""
    return expit(np.asarray(z, dtype=np.float64))


def to_logit(p: np.ndarray | float) -> np.ndarray:
    """Logits of probabilities, clipped away from 0 and 1 so that a certain mean stays finite."""
    return _logit(np.clip(np.asarray(p, dtype=np.float64), 1e-12, 1 - 1e-12))


def platt_map(params: dict[str, float], z: np.ndarray) -> np.ndarray:
    """A Platt map ({"a", "b"} from `fit_platt`) applied to logits: sigmoid(a * z + b)."""
    return sigmoid(params["a"] * np.asarray(z, dtype=np.float64) + params["b"])


def fit_platt(logit: np.ndarray, y_true: np.ndarray, C: float = PLATT_C) -> dict[str, float]:
    """Platt scaling: L2-penalised 1-D logistic regression of the labels on the logit; the
    identity map (a=1, b=0) when the labels hold one class (nothing to fit)."""
    from sklearn.linear_model import LogisticRegression

    y_true = np.asarray(y_true, dtype=int)
    if len(np.unique(y_true)) < 2:
        return {"a": 1.0, "b": 0.0}
    lr = LogisticRegression(C=C, max_iter=1000).fit(np.asarray(logit, dtype=float).reshape(-1, 1), y_true)
    return {"a": float(lr.coef_[0, 0]), "b": float(lr.intercept_[0])}


@dataclass
class Mahalanobis:
    """Distance to a Gaussian fitted with Ledoit-Wolf shrinkage; `threshold` on valid."""

    mean: np.ndarray  # [D]
    precision: np.ndarray  # [D, D]
    threshold: float

    @classmethod
    def fit(cls, train: np.ndarray, valid: np.ndarray, quantile: float) -> Mahalanobis:
        from sklearn.covariance import LedoitWolf

        est = LedoitWolf().fit(np.asarray(train, dtype=np.float64))
        view = cls(est.location_, est.precision_, 0.0)
        view.threshold = float(np.quantile(view.score(valid), quantile))
        return view

    def score(self, x: np.ndarray) -> np.ndarray:
        """[N] distances of [N, D] rows (larger = less like the training rows)."""
        diff = np.asarray(x, dtype=np.float64) - self.mean
        return np.sqrt(np.maximum(np.einsum("nd,de,ne->n", diff, self.precision, diff), 0.0))


#: The guard's views of an image: its unit embedding, its model input pooled to a `POOL` x `POOL`
#: grid (layout), the histogram of its model input values in `BINS` bins (contrast) and the
#: histogram of its absolute Laplacian (fine texture: noise, edges, trabecular and muscle
#: grain). The embedding alone accepts a small axial head MR; embedding and layout together
#: still accept pure noise and flat images, whose intensity histograms are unlike any phantom's;
#: the texture view does not depend on the layout (what each view refuses: `bench/ood.py`).
VIEWS: tuple[str, ...] = ("embedding", "pixels", "histogram", "texture")
#: The texture histogram spans |Laplacian| up to this fraction of the input's value range.
TEXTURE_SPAN = 0.75
POOL = 16
BINS = 16


def pooled_pixels(images: np.ndarray, side: int = POOL) -> np.ndarray:
    """[N, side*side] area means of [N, 1, S, S] model inputs (S >= side)."""
    arr = np.asarray(images, dtype=np.float64).reshape(len(images), images.shape[-2], images.shape[-1])
    rows = np.linspace(0, arr.shape[1], side + 1).astype(int)
    cols = np.linspace(0, arr.shape[2], side + 1).astype(int)
    pooled = np.add.reduceat(np.add.reduceat(arr, rows[:-1], axis=1), cols[:-1], axis=2)
    area = np.outer(np.diff(rows), np.diff(cols))
    return (pooled / area).reshape(len(arr), -1)


def intensity_histogram(images: np.ndarray, value_range: tuple[float, float], bins: int = BINS) -> np.ndarray:
    """[N, bins] share of each image's model-input values per bin over `value_range` (the
    normalised image of [0, 1] windowed intensities)."""
    lo, hi = value_range
    flat = np.clip(np.asarray(images, dtype=np.float64).reshape(len(images), -1), lo, hi)
    return np.stack([np.histogram(row, bins=bins, range=(lo, hi))[0] / row.size for row in flat]) if len(flat) else np.zeros((0, bins))


def laplacian_histogram(images: np.ndarray, value_range: tuple[float, float], bins: int = BINS) -> np.ndarray:
    """[N, bins] share of each image's interior pixels per bin of |4-neighbour Laplacian|, over
    [0, TEXTURE_SPAN x the value range's width] (larger values land in the last bin)."""
    arr = np.asarray(images, dtype=np.float64).reshape(len(images), images.shape[-2], images.shape[-1])
    lap = np.abs(4 * arr[:, 1:-1, 1:-1] - arr[:, :-2, 1:-1] - arr[:, 2:, 1:-1] - arr[:, 1:-1, :-2] - arr[:, 1:-1, 2:])
    hi = TEXTURE_SPAN * (value_range[1] - value_range[0])
    flat = np.minimum(lap.reshape(len(arr), -1), hi)
    return np.stack([np.histogram(row, bins=bins, range=(0.0, hi))[0] / row.size for row in flat]) if len(flat) else np.zeros((0, bins))


def guard_views(
    embeddings: np.ndarray, images: np.ndarray, value_range: tuple[float, float], views: Sequence[str] = VIEWS
) -> dict[str, np.ndarray]:
    """The input guard's features (`views` of them): unit embeddings [N, D], model inputs
    [N, 1, S, S] and the range their values can take (from the preprocessing spec)."""
    make = {
        "embedding": lambda: np.asarray(embeddings),
        "pixels": lambda: pooled_pixels(images),
        "histogram": lambda: intensity_histogram(images, value_range),
        "texture": lambda: laplacian_histogram(images, value_range),
    }
    return {name: make[name]() for name in views}


@dataclass
class InputGuard:
    """An image is in distribution when every view's Mahalanobis distance to the training images
    is at most that view's threshold, put on the valid images so that about `in_rate` of them
    pass all views. `score` is the largest distance / threshold ratio: above 1 is outside."""

    views: dict[str, Mahalanobis]
    in_rate: float = GUARD_IN_RATE
    n_fit: int = 0
    method: str = (
        "Mahalanobis (Ledoit-Wolf) to the train images, on the unit embedding, the model input "
        f"pooled to {POOL}x{POOL}, its {BINS}-bin intensity histogram and its {BINS}-bin |Laplacian| "
        "histogram; per-view thresholds on valid"
    )

    @classmethod
    def fit(cls, train: dict[str, np.ndarray], valid: dict[str, np.ndarray], in_rate: float = GUARD_IN_RATE) -> InputGuard:
        """Fit each view (name -> [N, D] features) on `train` and put its threshold on `valid`
        at the quantile that leaves `1 - in_rate` of valid out across the views together."""
        if not 0.0 < in_rate <= 1.0:
            raise InputError(f"input guard: in-distribution rate must be in (0, 1], got {in_rate}")
        q = 1.0 - (1.0 - in_rate) / len(train)
        views = {name: Mahalanobis.fit(train[name], valid[name], q) for name in train}
        return cls(views, in_rate, len(next(iter(train.values()))))

    def ratios(self, features: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Per view, [N] distance / threshold."""
        return {name: view.score(features[name]) / view.threshold for name, view in self.views.items()}

    def score(self, features: dict[str, np.ndarray]) -> np.ndarray:
        """[N] the largest distance / threshold over the views (1 = on the threshold)."""
        return np.max(np.stack(list(self.ratios(features).values())), axis=0)

    def accepts(self, scores: np.ndarray) -> np.ndarray:
        return np.asarray(scores) <= 1.0

    def to_state(self) -> tuple[dict[str, object], dict[str, np.ndarray]]:
        """(JSON document, arrays) as the model folder stores them."""
        arrays = {}
        for name, view in self.views.items():
            arrays[f"{name}.mean"] = view.mean.astype(np.float64)
            arrays[f"{name}.precision"] = view.precision.astype(np.float64)
        doc = {
            "method": self.method,
            "thresholds": {name: view.threshold for name, view in self.views.items()},
            "in_rate": self.in_rate,
            "n_fit": self.n_fit,
            "pool": POOL,
            "bins": BINS,
        }
        return doc, arrays

    @classmethod
    def from_state(cls, doc: dict, arrays: dict[str, np.ndarray]) -> InputGuard:
        """Inverse of `to_state`; KeyError / ValueError / TypeError when it is malformed or
        uses views, pooling or bins this version does not compute."""
        views = {
            name: Mahalanobis(arrays[f"{name}.mean"], arrays[f"{name}.precision"], float(t))
            for name, t in doc["thresholds"].items()
        }
        if not set(views) <= set(VIEWS) or int(doc.get("pool", POOL)) != POOL or int(doc.get("bins", BINS)) != BINS:
            raise ValueError(f"views {sorted(views)}, pool {doc.get('pool')}, bins {doc.get('bins')} unknown to this version")
        return cls(views, float(doc["in_rate"]), int(doc["n_fit"]), doc["method"])


def slot(sequence: str | None, level: str | None) -> str:
    """One image's place in a study: 'T2 L4-L5'; '?' where unknown."""
    return f"{sequence or '?'} {level or '?'}"


def study_unit(patients: Sequence[str], slots: Sequence[str]) -> list[str]:
    """The commonest set of slots of one patient in a split: the shape the patient-level map and
    threshold were fitted on (e.g. T1 and T2 at three discs)."""
    per_patient: dict[str, list[str]] = {}
    for pid, s in zip(patients, slots):
        per_patient.setdefault(str(pid), []).append(s)
    shapes = Counter(tuple(sorted(v)) for v in per_patient.values())
    return list(shapes.most_common(1)[0][0]) if shapes else []


def unit_mismatch(unit: Sequence[str], slots: Iterable[str]) -> str | None:
    """None when `slots` (a study's in-distribution images) have exactly the evaluated unit's
    shape, else a one-line reason."""
    got = sorted(slots)
    if not unit:
        return "the model folder records no evaluated study shape"
    if got == sorted(unit):
        return None
    return (
        f"{len(got)} in-distribution image(s) [{', '.join(got) or 'none'}] are not the evaluated study unit "
        f"[{', '.join(sorted(unit))}]"
    )

"""Decision rules shared by evaluation and prediction: Platt calibration, the input guard (is an
image like the ones the model was evaluated on?) and the study unit (is a group of images shaped
like the patients the study-level map and threshold were fitted on?).

Nothing here knows about models or files: embeddings, logits and labels in, decisions out.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file, save_file

from lumbarclip.errors import InputError

#: Inverse L2 strength of the Platt fit. Finite, so a small separable valid set cannot drive the
#: slope to infinity (sklearn's default; the slope is on the logit scale, about 1 for a sane probe).
PLATT_C = 1.0
#: Share of valid images the input guard accepts: its threshold is this quantile of their scores.
GUARD_IN_RATE = 0.99
GUARD_FILE = "input_guard.json"
GUARD_ARRAYS = "input_guard.safetensors"
GUARD_WRITER = "lumbarclip evaluate --run MODEL --data MANIFEST --overwrite"


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
class InputGuard:
    """Mahalanobis distance of a unit image embedding to the training embeddings (Ledoit-Wolf
    shrunk covariance); an image is in distribution when its distance is at most `threshold`,
    the `in_rate` quantile of the valid images' distances."""

    mean: np.ndarray  # [D]
    precision: np.ndarray  # [D, D]
    threshold: float
    in_rate: float = GUARD_IN_RATE
    n_fit: int = 0
    method: str = "mahalanobis (Ledoit-Wolf) to the train image embeddings; threshold on valid"

    @classmethod
    def fit(cls, train: np.ndarray, valid: np.ndarray, in_rate: float = GUARD_IN_RATE) -> InputGuard:
        """Fit the distance on `train` embeddings and put the threshold on `valid`'s."""
        from sklearn.covariance import LedoitWolf

        if not 0.0 < in_rate <= 1.0:
            raise InputError(f"input guard: in-distribution rate must be in (0, 1], got {in_rate}")
        est = LedoitWolf().fit(np.asarray(train, dtype=np.float64))
        guard = cls(est.location_, est.precision_, 0.0, in_rate, len(train))
        guard.threshold = float(np.quantile(guard.score(valid), in_rate))
        return guard

    def score(self, embeddings: np.ndarray) -> np.ndarray:
        """[N] distances of [N, D] embeddings (larger = less like the training images)."""
        diff = np.asarray(embeddings, dtype=np.float64) - self.mean
        return np.sqrt(np.maximum(np.einsum("nd,de,ne->n", diff, self.precision, diff), 0.0))

    def accepts(self, scores: np.ndarray) -> np.ndarray:
        return np.asarray(scores) <= self.threshold

    def save(self, model_dir: str | Path) -> None:
        model_dir = Path(model_dir)
        save_file({"mean": self.mean.astype(np.float64), "precision": self.precision.astype(np.float64)}, str(model_dir / GUARD_ARRAYS))
        doc = {"method": self.method, "threshold": self.threshold, "in_rate": self.in_rate, "n_fit": self.n_fit, "arrays": GUARD_ARRAYS}
        (model_dir / GUARD_FILE).write_text(json.dumps(doc, indent=2) + "\n")

    @classmethod
    def load(cls, model_dir: str | Path) -> InputGuard:
        model_dir = Path(model_dir)
        paths = (model_dir / GUARD_FILE, model_dir / GUARD_ARRAYS)
        for path in paths:
            if not path.is_file():
                raise InputError(f"{path}: missing (no input guard); write it with {GUARD_WRITER}")
        try:
            doc = json.loads(paths[0].read_text())
            arrays = load_file(str(paths[1]))
            return cls(arrays["mean"], arrays["precision"], float(doc["threshold"]), float(doc["in_rate"]), int(doc["n_fit"]), doc["method"])
        except (json.JSONDecodeError, KeyError, ValueError, TypeError) as err:
            raise InputError(f"{paths[0]}: unreadable input guard ({err}); re-write it with {GUARD_WRITER}") from None


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

"""Linear probe: logistic regression on frozen features (image embeddings or raw pixels).

C is chosen on the validation split by balanced accuracy (scikit-learn's grid search over the
predefined train/valid split); the classes are weighted by their
inverse frequency, so 85% abnormal does not turn the probe into the majority rule.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV, PredefinedSplit
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler

from lumbarclip.errors import InputError

DEFAULT_CS: tuple[float, ...] = (1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0)


@dataclass
class LinearProbe:
    pipeline: Pipeline
    C: float

    def predict_proba(self, features: np.ndarray) -> np.ndarray:
        """P(abnormal) for each row of `features`."""
        return self.pipeline.predict_proba(features)[:, 1]


def fit_probe(
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_valid: np.ndarray,
    y_valid: np.ndarray,
    cs: tuple[float, ...] = DEFAULT_CS,
    seed: int = 0,
) -> LinearProbe:
    """Choose C with `GridSearchCV` over one predefined train/valid split (fit on train, scored
    on valid: balanced accuracy at 0.5, then AUROC, then the smaller C on ties) and return the
    probe fitted on train alone: valid stays unseen by the weights, since thresholds and
    calibration are fitted on it afterwards."""
    if len(np.unique(y_train)) < 2:
        raise InputError("the training split needs normal and abnormal cases for a linear probe")
    cs = tuple(sorted(cs))

    def pipeline(c: float = 1.0) -> Pipeline:
        return make_pipeline(
            StandardScaler(),
            LogisticRegression(C=c, class_weight="balanced", max_iter=5000, random_state=seed),
        )

    scoring = {"balanced_accuracy": "balanced_accuracy"}
    if len(np.unique(y_valid)) == 2:
        scoring["roc_auc"] = "roc_auc"
    search = GridSearchCV(
        pipeline(),
        {"logisticregression__C": list(cs)},
        scoring=scoring,
        cv=PredefinedSplit(np.r_[np.full(len(y_train), -1), np.zeros(len(y_valid), dtype=int)]),
        refit=False,
    ).fit(np.concatenate([x_train, x_valid]), np.concatenate([y_train, y_valid]))
    results = search.cv_results_
    auroc = results.get("mean_test_roc_auc", np.zeros(len(cs)))
    best = max(range(len(cs)), key=lambda i: (results["mean_test_balanced_accuracy"][i], auroc[i], -cs[i]))
    return LinearProbe(pipeline(cs[best]).fit(x_train, y_train), cs[best])


def subsample_patients(
    patient_ids: np.ndarray, labels: np.ndarray, fraction: float, seed: int = 0
) -> np.ndarray:
    """Boolean mask over images keeping a seeded, class-stratified `fraction` of the PATIENTS
    (all images of a kept patient), at least one patient of each class present."""
    patient_ids = np.asarray(patient_ids).astype(str)
    labels = np.asarray(labels, dtype=int)
    rng = np.random.default_rng(seed)
    keep: list[str] = []
    patient_label = {pid: max(labels[patient_ids == pid]) for pid in np.unique(patient_ids)}
    for cls in sorted(set(patient_label.values())):
        group = sorted(pid for pid, lab in patient_label.items() if lab == cls)
        n = min(len(group), max(1, round(fraction * len(group))))
        keep.extend(rng.choice(group, size=n, replace=False).tolist())
    return np.isin(patient_ids, keep)

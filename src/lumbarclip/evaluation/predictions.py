"""A classifier's predictions on one split, their patient-level aggregate (the patient rule of
`lumbarclip.decision.aggregate_patients`) and their scores."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

from lumbarclip.decision import aggregate_patients, choose_threshold
from lumbarclip.evaluation.metrics import SCALAR_METRICS, bootstrap_ci, classification_metrics

#: The units a classifier is scored on: each image, and each patient (its images aggregated).
AGGREGATION_LEVELS: tuple[str, str] = ("image", "patient")


@dataclass
class Predictions:
    """P(abnormal) of one classifier for the images of one split, plus its decision thresholds
    (one per level, chosen on validation data by `tuned_on`)."""

    y_true: np.ndarray
    prob: np.ndarray
    patient_ids: np.ndarray
    thresholds: dict[str, float] = field(default_factory=lambda: {"image": 0.5, "patient": 0.5})

    def __post_init__(self) -> None:
        self.y_true = np.asarray(self.y_true, dtype=int)
        self.prob = np.asarray(self.prob, dtype=float)
        self.patient_ids = np.asarray(self.patient_ids).astype(str)
        if not (len(self.y_true) == len(self.prob) == len(self.patient_ids)):
            raise ValueError("y_true, prob and patient_ids must have the same length")

    def by_patient(self) -> Predictions:
        """One row per patient, aggregated by the patient rule."""
        ids, labels, prob = aggregate_patients(self.patient_ids, self.y_true, self.prob)
        return Predictions(labels, prob, ids, dict(self.thresholds))

    def level(self, name: str) -> Predictions:
        return self if name == "image" else self.by_patient()

    def tuned_on(self, valid: Predictions) -> Predictions:
        """A copy whose thresholds maximise balanced accuracy on `valid` at each level."""
        chosen = {lv: choose_threshold(valid.level(lv).y_true, valid.level(lv).prob) for lv in AGGREGATION_LEVELS}
        return replace(self, thresholds=chosen)

    def metrics(self) -> dict[str, dict[str, object]]:
        """The contract's {"image": {...}, "patient": {...}} blocks, with the thresholds used."""
        out = {}
        for lv in AGGREGATION_LEVELS:
            pred = self.level(lv)
            out[lv] = {
                **classification_metrics(pred.y_true, pred.prob, self.thresholds[lv]),
                "threshold": self.thresholds[lv],
            }
        return out

    def bootstrap(
        self, n_resamples: int = 1000, seed: int = 0, prefix: str = ""
    ) -> dict[str, list[float] | None]:
        """95% BCa intervals keyed "PREFIXimage.accuracy" ... (`metrics.CI_METHOD`): patients
        resampled with replacement within each class (a drawn patient brings all its images to
        the image-level resample)."""
        patients = self.by_patient()
        rows = [np.flatnonzero(self.patient_ids == pid) for pid in patients.patient_ids]

        def statistic(idx: np.ndarray) -> dict[str, float | None]:
            image_rows = np.concatenate([rows[i] for i in idx])
            scores = {}
            for lv, y, p in (
                ("image", self.y_true[image_rows], self.prob[image_rows]),
                ("patient", patients.y_true[idx], patients.prob[idx]),
            ):
                block = classification_metrics(y, p, self.thresholds[lv])
                scores.update({f"{prefix}{lv}.{k}": block[k] for k in SCALAR_METRICS})
            return scores

        strata = [np.flatnonzero(patients.y_true == label) for label in (0, 1)]
        return bootstrap_ci(statistic, strata, n_resamples=n_resamples, seed=seed)

"""Fitting the operating point (`lumbarclip.bundle.OperatingPoint`) of a trained probe on the
valid split: its weights folded over the embedding, Platt maps per image and per study, and
thresholds (`lumbarclip.evaluation.card` builds the model card from it).
"""

from __future__ import annotations


import numpy as np

from lumbarclip.bundle.operating_point import OperatingPoint
from lumbarclip.data.transforms import PreprocessSpec
from lumbarclip.decision import aggregate_patients, choose_threshold, fit_platt, sigmoid, to_logit


def probe_weights(pipeline: object) -> tuple[np.ndarray, float]:
    """(weights [D], bias) of a StandardScaler + LogisticRegression pipeline folded into one
    linear map over the raw features, so the logit is features @ w + b with no scaler."""
    scaler, logreg = pipeline[0], pipeline[-1]  # type: ignore[index]
    coef = logreg.coef_.reshape(-1) / scaler.scale_
    bias = float(logreg.intercept_[0] - np.dot(coef, scaler.mean_))
    return coef.astype(np.float32), bias


def fit_operating_point(
    pipeline: object,
    valid_embeddings: np.ndarray,
    valid_labels: np.ndarray,
    valid_patients: np.ndarray,
    class_embeddings: np.ndarray,
    preprocess: PreprocessSpec,
    meta: dict[str, object] | None = None,
    raw_thresholds: dict[str, float] | None = None,
) -> OperatingPoint:
    """The operating point of a fitted probe (StandardScaler + LogisticRegression pipeline):
    its weights folded over the embedding and Platt maps fitted on valid, per image and per
    patient (evaluation's patient rule). `raw_thresholds` are the probe's thresholds on its own
    probabilities (evaluation's, chosen on valid); mapped through the monotone calibration they
    give identical decisions. Without them (or if a map is not increasing) the thresholds
    maximise balanced accuracy on valid's calibrated probabilities."""
    weights, bias = probe_weights(pipeline)
    logit = np.asarray(valid_embeddings, dtype=np.float64) @ weights.astype(np.float64) + bias
    _, patient_labels, patient_mean = aggregate_patients(valid_patients, valid_labels, sigmoid(logit))
    op = OperatingPoint(
        weights, bias, fit_platt(logit, valid_labels), {}, class_embeddings, preprocess,
        patient_calibration=fit_platt(to_logit(patient_mean), patient_labels), meta=meta or {},
    )  # fmt: skip
    raw = raw_thresholds or {}
    image_prob, patient_prob = op.calibrate(logit), op.calibrate_patient(patient_mean)
    op.thresholds = {
        "image": float(op.calibrate(to_logit(raw["image"]))[()])
        if "image" in raw and op.calibration["a"] > 0
        else choose_threshold(valid_labels, image_prob),
        "patient": float(op.calibrate_patient(raw["patient"])[()])
        if "patient" in raw and op.patient_calibration["a"] > 0
        else choose_threshold(patient_labels, patient_prob),
    }
    return op

"""Fitting the operating point (`lumbarclip.bundle.OperatingPoint`) of a trained probe on the
valid split: its weights folded over the embedding, Platt maps per image and per study, and
thresholds; plus the model card built from the evaluation's figures.
"""

from __future__ import annotations

from dataclasses import asdict

import numpy as np

from lumbarclip.bundle.operating_point import OperatingPoint
from lumbarclip.data.transforms import PreprocessSpec
from lumbarclip.decision import aggregate_patients, choose_threshold, fit_platt, sigmoid, to_logit
from lumbarclip.findings import PLANES


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


HEADLINE_METRICS: tuple[str, ...] = ("accuracy", "balanced_accuracy", "auroc", "f1_macro")


def build_card(
    config: dict[str, object],
    metrics: dict[str, object],
    op: OperatingPoint,
    report_bank: int | None = None,
    guard: dict[str, object] | None = None,
) -> dict[str, object]:
    """A model card in the spirit of MONAI bundle metadata: use, input spec, versions, the
    operating point, and the headline metrics with their 95% CIs copied from metrics.json."""
    from importlib.metadata import PackageNotFoundError, version

    def _version(name: str) -> str | None:
        try:
            return version(name)
        except PackageNotFoundError:
            return None

    ci = metrics.get("ci95", {}) or {}
    meta = metrics.get("meta", {}) or {}
    planes = " and ".join(op.preprocess.planes)
    headline = {
        lv: {
            m: {"value": metrics[lv].get(m), "ci95": ci.get(f"{lv}.{m}")}  # type: ignore[index,union-attr]
            for m in HEADLINE_METRICS
        }
        for lv in ("image", "patient")
    }
    return {
        "name": "LumbarCLIP image-only classifier",
        "task": f"normal vs abnormal (degenerative findings) on {planes} lumbar spine MRI",
        "intended_use": "research on CLIP-style pre-training and its image-only diagnosis; "
        "a second reader's aid to be checked against the images by a radiologist",
        "not_intended_use": [
            "clinical diagnosis or triage without a radiologist",
            f"{' or '.join(p for p in PLANES if p not in op.preprocess.planes)} or non-spine images, CT or radiographs",
            "sequences other than T1/T2 (e.g. STIR, proton density)",
            "populations or scanners unlike the training data without re-validation",
        ],
        "input": {
            "modality": "MR",
            "plane": planes,
            "planes": list(op.preprocess.planes),
            "sequences": list(op.preprocess.sequences),
            "levels": ["L3-L4", "L4-L5", "L5-S1"] if "axial" in op.preprocess.planes else "the lumbar discs in view",
            "formats": ["DICOM", "PNG (8/16-bit gray)", "NIfTI (middle slice)"],
            "value_range": "any; each image is windowed to [0, 1] by its 0.5-99.5 percentiles",
            "preprocess": asdict(op.preprocess),
        },
        "output": {
            "p_abnormal": "image: calibrated probability (penalised Platt scaling fitted on the valid split); "
            "study: the patient-level Platt map applied to the mean of its in-distribution images' "
            "UNCALIBRATED probabilities (the raw mean is given beside it as p_abnormal_mean_raw)",
            "label": "abnormal when p_abnormal >= the level's threshold; null when not assessed",
            "thresholds": op.thresholds,
            "study_unit": op.study_unit,
            "study_rule": "a study verdict only for one study (DICOM StudyInstanceUID, the dataset's file "
            "naming, or a name the user gives) whose in-distribution images have exactly the study_unit's "
            "shape; otherwise image verdicts only, with the reason",
        },
        "input_guard": guard,
        "findings": _card_findings(op, metrics),
        "model": {k: config.get(k) for k in ("vision", "head", "embed_dim", "image_size", "text")},
        "evaluation": {
            "split": meta.get("split"),
            "n_images": metrics.get("image", {}).get("n"),  # type: ignore[union-attr]
            "n_patients": metrics.get("patient", {}).get("n"),  # type: ignore[union-attr]
            "classifier": metrics.get("classifier"),
            "ci_method": meta.get("ci_method"),
            "headline": headline,
            "calibration": metrics.get("calibration"),
            "report_bank": metrics.get("report_bank"),
        },
        "report_bank": {"reports": report_bank, "note": "texts stored as given (opt-in)"} if report_bank else None,
        "versions": {
            name: _version(name) for name in ("lumbarclip", "torch", "timm", "transformers", "scikit-learn", "onnxruntime")
        },
        "source": "arXiv 2509.20813 (LumbarCLIP)",
    }


def _card_findings(op: OperatingPoint, metrics: dict[str, object]) -> dict[str, object]:
    """The card's per-finding section: the valid AUROC that gates each kind, which kinds are
    shown, and the test figures (zero-shot, pixel ceiling, prompt-pair cosine) beside them."""
    fz = metrics.get("finding_zero_shot") or {}
    ceiling = fz.get("pixel_ceiling") or {}  # type: ignore[union-attr]
    return {
        "valid_auroc": op.findings.valid_auroc,
        "min_valid_auroc": op.findings.min_valid_auroc,
        "validated": op.validated_findings,
        "not_validated": op.findings.not_validated,
        "scorer": op.findings.scorer,
        "rule": "a finding kind's score is shown only when its AUROC on the valid split reaches min_valid_auroc, "
        "scored by `scorer` (prompts: zero-shot; head: the finding head); the others are listed once as not "
        "validated for this model",
        "test_zero_shot_macro_auroc": fz.get("macro_auroc"),  # type: ignore[union-attr]
        "test_zero_shot_auroc": {k: v.get("auroc") for k, v in (fz.get("per_kind") or {}).items()},  # type: ignore[union-attr]
        "pixel_ceiling_macro_auroc": ceiling.get("macro_auroc"),
        "test_finding_head_macro_auroc": (fz.get("finding_head") or {}).get("macro_auroc"),  # type: ignore[union-attr]
        "prompt_pair_cosine": fz.get("prompt_pair_cosine"),  # type: ignore[union-attr]
    }

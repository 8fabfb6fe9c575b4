"""The model card of a model folder, built by `lumbarclip evaluate` from the test
split's metrics and the operating point it fitted: use, input spec, versions, the operating
point, and the headline figures with their 95% CIs. `lumbarclip.bundle.ModelFolder`
writes it."""

from __future__ import annotations

from dataclasses import asdict
from importlib.metadata import PackageNotFoundError, version

from lumbarclip.evaluation.metrics_file import MetricsFile, PerFinding
from lumbarclip.findings import PLANES
from lumbarclip.bundle.operating_point import OperatingPoint

#: The figures of each level the card repeats from metrics.json.
HEADLINE_METRICS: tuple[str, ...] = ("accuracy", "balanced_accuracy", "auroc", "f1_macro")
#: The packages whose versions the card records.
VERSIONED: tuple[str, ...] = ("lumbarclip", "torch", "timm", "transformers", "scikit-learn", "onnxruntime")


def build_card(
    config: dict[str, object], metrics: MetricsFile, op: OperatingPoint, report_bank: int | None = None
) -> dict[str, object]:
    """A model card in the spirit of MONAI bundle metadata; `report_bank` is the number of
    reports in the folder's bank (None: no bank)."""
    planes = " and ".join(op.preprocess.planes)
    headline = {
        lv: {m: {"value": getattr(metrics.level(lv), m), "ci95": metrics.interval(f"{lv}.{m}")} for m in HEADLINE_METRICS}
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
        "input_guard": metrics.input_guard.dump() if metrics.input_guard else None,
        "findings": _card_findings(op, metrics.per_finding),
        "model": {k: config.get(k) for k in ("vision", "head", "embed_dim", "image_size", "text")},
        "evaluation": {
            "split": metrics.meta.split,
            "n_images": metrics.image.n,
            "n_patients": metrics.patient.n,
            "classifier": metrics.classifier,
            "ci_method": metrics.meta.ci_method,
            "headline": headline,
            "calibration": metrics.calibration.dump() if metrics.calibration else None,
            "report_bank": metrics.report_bank.dump() if metrics.report_bank else None,
        },
        "report_bank": {"reports": report_bank, "note": "texts stored as given (opt-in)"} if report_bank else None,
        "versions": {name: _version(name) for name in VERSIONED},
        "source": "arXiv 2509.20813 (LumbarCLIP)",
    }


def _version(name: str) -> str | None:
    try:
        return version(name)
    except PackageNotFoundError:
        return None


def _card_findings(op: OperatingPoint, scores: PerFinding | None) -> dict[str, object]:
    """The card's per-finding section: the valid AUROC that gates each kind, which kinds are
    shown, and the test figures (zero-shot, pixel ceiling, finding head, prompt-pair cosine)
    beside them; the test figures are null where the manifest had no findings."""
    head, ceiling = (scores.finding_head, scores.pixel_ceiling) if scores else (None, None)
    return {
        "valid_auroc": op.findings.valid_auroc,
        "min_valid_auroc": op.findings.min_valid_auroc,
        "validated": op.validated_findings,
        "not_validated": op.findings.not_validated,
        "scorer": op.findings.scorer,
        "rule": "a finding kind's score is shown only when its AUROC on the valid split reaches min_valid_auroc, "
        "scored by `scorer` (prompts: zero-shot; head: the finding head); the others are listed once as not "
        "validated for this model",
        "test_zero_shot_macro_auroc": scores.macro_auroc if scores else None,
        "test_zero_shot_auroc": {k: v.auroc for k, v in scores.per_kind.items()} if scores else {},
        "pixel_ceiling_macro_auroc": ceiling.macro_auroc if ceiling else None,
        "test_finding_head_macro_auroc": head.macro_auroc if head else None,
        "prompt_pair_cosine": scores.prompt_pair_cosine.dump() if scores and scores.prompt_pair_cosine else None,
    }

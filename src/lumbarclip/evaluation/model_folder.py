"""What `lumbarclip evaluate` adds to a model folder so it can diagnose by itself: the operating
point (probe + Platt calibration + thresholds + the per-finding gate, all fitted on valid), the
input guard, the model card and, when asked, the report bank; plus the figures that go into
metrics.json (ECE before/after calibration on the evaluated split, the bank's top-1 label
agreement). The parts are typed (`lumbarclip.bundle`) and written by `ModelFolder.write` in one call.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from lumbarclip.bundle import FindingGate, ModelFolder, OperatingPoint, ReportBank
from lumbarclip.bundle.reportbank import USER_REPORTS
from lumbarclip.data.transforms import PreprocessSpec
from lumbarclip.decision import InputGuard, guard_views, sigmoid, slot, study_unit
from lumbarclip.errors import InputError
from lumbarclip.evaluation.card import build_card
from lumbarclip.evaluation.metrics import classification_metrics
from lumbarclip.evaluation.metrics_file import parse_metrics
from lumbarclip.evaluation.predictions import Predictions
from lumbarclip.inference.operating_point import fit_operating_point
from lumbarclip.inference.reportbank import build_report_bank, reports_source

#: What evaluate writes into the model folder.
PARTS: tuple[str, ...] = ("operating_point", "guard", "card", "bank")


class Split(Protocol):
    """What is needed of one evaluation split (`evaluation.evaluate.SplitData`)."""

    records: Sequence
    embeddings: np.ndarray
    images: Any  # [N, 1, S, S] model inputs

    @property
    def labels(self) -> np.ndarray: ...

    @property
    def patients(self) -> np.ndarray: ...


@dataclass
class ModelFolderUpdate:
    """The parts to add to a model folder and the figures measured with them."""

    folder: ModelFolder
    operating_point: OperatingPoint
    bank: ReportBank | None
    guard: InputGuard
    metrics: dict[str, object] = field(default_factory=dict)

    def write(self, metrics: dict[str, object], config: dict[str, object], overwrite: bool) -> list[str]:
        """Write the operating point, input guard, card (headline metrics from `metrics`) and the
        bank (removed when there is none: a stale bank must not outlive a re-evaluation), plus the
        preprocessing spec when the folder has none yet; an existing operating point is kept
        unless `overwrite`. Returns notes for the user (empty when everything was written)."""
        folder = self.folder
        card = build_card(config, parse_metrics(metrics), self.operating_point, len(self.bank) if self.bank else None)
        if folder.card and "discs" in folder.card and folder.detector is not None:
            card["discs"] = folder.card["discs"]  # the disc layer's own section outlives a re-evaluation
        parts = PARTS if folder.preprocess is not None else ("preprocess", *PARTS)
        folder.preprocess = self.operating_point.preprocess
        folder.operating_point, folder.guard, folder.bank, folder.card = self.operating_point, self.guard, self.bank, card
        try:
            folder.write(parts, overwrite)
        except InputError as err:
            return [f"{err}; model folder kept as it was"]
        return []


def prepare_model_folder(
    model: object,
    folder: ModelFolder,
    preprocess: PreprocessSpec,
    gate: FindingGate,
    probe_pipeline: object,
    train: Split,
    valid: Split,
    test: Split,
    class_embeddings: np.ndarray,
    probe_thresholds: dict[str, float],
    report_bank: bool,
    meta: dict[str, object],
    batch_size: int = 64,
    manifest_path: Path | None = None,
) -> ModelFolderUpdate:
    """Fit the operating point on valid (with the per-finding `gate`, for inputs as
    `preprocess` says), measure calibration on `test` before (the probe's own
    probability at the probe's thresholds) and after Platt scaling (same decisions), and build the report bank
    from the TRAINING reports when `report_bank`, its source found from `manifest_path`
    (`reports_source`; user reports when not given)."""
    op = fit_operating_point(
        probe_pipeline, valid.embeddings, valid.labels, valid.patients, class_embeddings, preprocess, meta, probe_thresholds,
    )  # fmt: skip
    op.study_unit = study_unit(valid.patients, [slot(r.sequence, r.level) for r in valid.records])
    op.findings = gate
    value_range = op.preprocess.input_range
    guard = InputGuard.fit(guard_features(train, value_range), guard_features(valid, value_range))
    test_in = guard.accepts(guard.score(guard_features(test, value_range)))
    logit = op.logit(test.embeddings)
    before = Predictions(test.labels, sigmoid(logit), test.patients, dict(probe_thresholds))
    keys = ("ece", "brier", "balanced_accuracy", "accuracy")
    patients = before.by_patient()
    after = {
        "image": classification_metrics(test.labels, op.calibrate(logit), op.thresholds["image"]),
        "patient": classification_metrics(
            patients.y_true, op.calibrate_patient(patients.prob), op.thresholds["patient"]
        ),
    }
    calibration: dict[str, object] = {
        "method": "platt",
        "fitted_on": "valid",
        "image_map": op.calibration,
        "patient_map": op.patient_calibration,
        "rule": "image: sigmoid(a*logit + b); patient: sigmoid(a_p*log(m/(1-m)) + b_p), m = mean of the "
        "patient's images' sigmoid(logit); thresholds = the probe's valid-chosen thresholds mapped alike",
        "thresholds": op.thresholds,
        "before": {lv: {k: block[k] for k in keys} for lv, block in before.metrics().items()},
        "after": {lv: {k: block[k] for k in keys} for lv, block in after.items()},
    }
    figures: dict[str, object] = {
        "calibration": calibration,
        "input_guard": {
            "method": guard.method,
            "thresholds": {name: view.threshold for name, view in guard.views.items()},
            "in_rate_valid": guard.in_rate,
            "fitted_on": f"{guard.n_fit} train images; thresholds on valid so that {guard.in_rate:.0%} pass",
            "flagged_test_fraction": float(1.0 - test_in.mean()),
            "header_checks": f"DICOM: Modality MR, {' or '.join(op.preprocess.planes)} plane from "
            "ImageOrientationPatient, BodyPartExamined (when present) a lumbar/spine term",
        },
    }
    bank = None
    if report_bank:
        texts = sorted({(r.patient_id, r.report): r.label for r in train.records}.items())
        source = reports_source(manifest_path, [pair for pair, _ in texts]) if manifest_path else USER_REPORTS
        bank = build_report_bank(model, [t for (_, t), _ in texts], [lab for _, lab in texts], batch_size, source)
        top1 = bank.top1_labels(test.embeddings).astype(float)
        nearest = Predictions(test.labels, top1, test.patients, {"image": 0.5, "patient": 0.5}).metrics()
        figures["report_bank"] = {
            "reports": len(bank),
            "source": "unique (patient, report) pairs of the train split",
            "texts": source,
            "rule": "image: label of the most similar report; patient: mean of its images' top-1 labels >= 0.5",
            "top1_label_agreement": {lv: {k: nearest[lv][k] for k in ("accuracy", "balanced_accuracy")} for lv in ("image", "patient")},
            "probe": {lv: {k: after[lv][k] for k in ("accuracy", "balanced_accuracy")} for lv in ("image", "patient")},
        }
    return ModelFolderUpdate(folder, op, bank, guard, figures)


def guard_features(split: Split, value_range: tuple[float, float]) -> dict[str, np.ndarray]:
    """The input guard's views of a split (`lumbarclip.decision.guard_views`)."""
    return guard_views(split.embeddings, np.asarray(split.images), value_range)

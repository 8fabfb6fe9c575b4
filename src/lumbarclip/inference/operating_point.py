"""The operating point a model folder diagnoses with: linear classifier over the unit image
embedding, calibration map and thresholds (all chosen on the valid split), zero-shot class
embeddings and the preprocessing spec; plus reading and writing the model card
(`lumbarclip.evaluation.card` builds it).

Files beside `config.json`: `operating_point.json` (scalars, calibration, thresholds, provenance)
with its arrays in `operating_point.safetensors`, `preprocess.json` and `card.json`. They are
written by `lumbarclip evaluate`; a model folder without them still
loads with `LumbarCLIP.from_pretrained`, only diagnosis needs them.

Calibration is Platt scaling of the classifier's logit: p = sigmoid(a * logit + b), fitted on
valid by L2-penalised logistic regression (`lumbarclip.decision.fit_platt`; unpenalised, a
small separable valid set sends the slope to infinity). The probe is trained with balanced
class weights, so its raw probabilities are shifted towards 0.5 against the 85% abnormal prior;
the intercept `b` corrects that, which temperature scaling (b = 0) cannot.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file, save_file

from lumbarclip.data.transforms import PREPROCESS_FILE, PreprocessSpec
from lumbarclip.decision import aggregate_patients, choose_threshold, fit_platt, platt_map, sigmoid, to_logit
from lumbarclip.errors import InputError

OPERATING_POINT_FILE = "operating_point.json"
OPERATING_POINT_ARRAYS = "operating_point.safetensors"
CARD_FILE = "card.json"
#: The command that writes the operating point, named in every "missing" message.
WRITER_COMMAND = "lumbarclip evaluate --run MODEL --data MANIFEST"
CLASS_NAMES: tuple[str, str] = ("normal", "abnormal")


@dataclass
class OperatingPoint:
    """logit = embedding @ weights + bias; p_abnormal = sigmoid(a * logit + b); abnormal when
    p_abnormal >= thresholds["image"]. A study: the mean of its images' UNCALIBRATED
    probabilities sigmoid(logit) (evaluation's patient rule, on the probe's own probabilities),
    mapped by the patient-level Platt map `patient_calibration`, abnormal at thresholds["patient"].
    Both maps are monotone, so the labels are exactly the evaluation's decisions."""

    weights: np.ndarray  # [D]
    bias: float
    calibration: dict[str, float]  # {"a": ..., "b": ...}
    thresholds: dict[str, float]  # {"image": ..., "patient": ...} on the calibrated probability
    class_embeddings: np.ndarray  # [2, D] zero-shot normal / abnormal, unit rows
    preprocess: PreprocessSpec
    patient_calibration: dict[str, float] = field(default_factory=lambda: {"a": 1.0, "b": 0.0})
    classifier: str = "linear_probe"
    meta: dict[str, object] = field(default_factory=dict)  # provenance: manifest, C, fitted on
    #: The slots ('T2 L4-L5', ...) of the patients the study map and threshold were fitted on;
    #: a study of another shape gets no study verdict (`lumbarclip.decision.unit_mismatch`).
    study_unit: list[str] = field(default_factory=list)
    #: Per-finding gate fitted on valid (`lumbarclip.evaluation.findings.valid_gate`): predict
    #: shows a finding kind's score only when it is in findings["validated"].
    findings: dict[str, object] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.weights = np.asarray(self.weights, dtype=np.float32).reshape(-1)
        self.class_embeddings = np.asarray(self.class_embeddings, dtype=np.float32)

    @property
    def validated_findings(self) -> list[str]:
        """The finding kinds whose scores may be shown (none for a folder without the gate)."""
        return list(self.findings.get("validated", []))  # type: ignore[arg-type]

    @property
    def abnormal_embedding(self) -> np.ndarray:
        """[D] the abnormal class embedding."""
        return self.class_embeddings[CLASS_NAMES.index("abnormal")]

    @property
    def saliency_direction(self) -> np.ndarray:
        """[D] abnormal minus normal class embedding: the zero-shot classifier's direction, the
        saliency target that points at lesions best on the demo (bench/saliency.py, H2)."""
        return self.abnormal_embedding - self.class_embeddings[CLASS_NAMES.index("normal")]

    def logit(self, embeddings: np.ndarray) -> np.ndarray:
        """[N] uncalibrated logits of [N, D] unit embeddings (what `ImageScorer` computes)."""
        return np.asarray(embeddings, dtype=np.float64) @ self.weights.astype(np.float64) + self.bias

    def calibrate(self, logit: np.ndarray) -> np.ndarray:
        """[N] calibrated P(abnormal) of uncalibrated logits; the one function both runtimes use."""
        return platt_map(self.calibration, logit)

    def calibrate_patient(self, mean_prob: np.ndarray) -> np.ndarray:
        """[P] calibrated P(abnormal) of studies from the mean of their images' sigmoid(logit)."""
        return platt_map(self.patient_calibration, to_logit(mean_prob))

    def label(self, prob: np.ndarray | float, level: str = "image") -> np.ndarray:
        """1 (abnormal) where the calibrated probability reaches the level's threshold."""
        return (np.asarray(prob) >= self.thresholds[level]).astype(int)

    def save(self, model_dir: str | Path) -> Path:
        """Write operating_point.json + .safetensors and preprocess.json into `model_dir`."""
        model_dir = Path(model_dir)
        save_file(
            {
                "weights": self.weights,
                "bias": np.array([self.bias], dtype=np.float32),
                "class_embeddings": self.class_embeddings,
            },
            str(model_dir / OPERATING_POINT_ARRAYS),
        )
        doc = {
            "classifier": self.classifier,
            "bias": float(self.bias),
            "calibration": {"method": "platt", **{k: float(self.calibration[k]) for k in ("a", "b")}},
            "patient_calibration": {
                "method": "platt on logit(mean of the study's sigmoid(logit))",
                **{k: float(self.patient_calibration[k]) for k in ("a", "b")},
            },
            "thresholds": {k: float(v) for k, v in self.thresholds.items()},
            "classes": list(CLASS_NAMES),
            "rule": "image: logit = unit image embedding . weights + bias, p_abnormal = sigmoid(a*logit + b); "
            "study: m = mean of its images' sigmoid(logit), p_abnormal = sigmoid(a_p*log(m/(1-m)) + b_p); "
            "abnormal when p_abnormal >= the level's threshold",
            "arrays": OPERATING_POINT_ARRAYS,
            "study_unit": list(self.study_unit),
            "findings": self.findings,
            "meta": self.meta,
        }
        (model_dir / OPERATING_POINT_FILE).write_text(json.dumps(doc, indent=2) + "\n")
        self.preprocess.save(model_dir)
        return model_dir / OPERATING_POINT_FILE

    @classmethod
    def load(cls, model_dir: str | Path) -> OperatingPoint:
        model_dir = Path(model_dir)
        doc = _read_json(model_dir / OPERATING_POINT_FILE)
        arrays_path = model_dir / OPERATING_POINT_ARRAYS
        if not arrays_path.is_file():
            raise InputError(f"{arrays_path}: missing; write it with {WRITER_COMMAND}")
        arrays = load_file(str(arrays_path))
        calibration = {k: float(v) for k, v in doc["calibration"].items() if k in ("a", "b")}
        return cls(
            weights=arrays["weights"],
            bias=float(arrays["bias"][0]),
            calibration=calibration,
            thresholds={k: float(v) for k, v in doc["thresholds"].items()},
            patient_calibration={k: float(doc.get("patient_calibration", {}).get(k, d)) for k, d in (("a", 1.0), ("b", 0.0))},
            class_embeddings=arrays["class_embeddings"],
            preprocess=PreprocessSpec.load(model_dir),
            classifier=doc.get("classifier", "linear_probe"),
            meta=doc.get("meta", {}),
            study_unit=list(doc.get("study_unit", [])),
            findings=dict(doc.get("findings") or {}),
        )


def load_operating_point(model_dir: str | Path) -> OperatingPoint:
    """The folder's operating point; InputError naming the missing file and its writer command."""
    return OperatingPoint.load(model_dir)


def probe_weights(pipeline: object) -> tuple[np.ndarray, float]:
    """(weights [D], bias) of a StandardScaler + LogisticRegression pipeline folded into one
    linear map over the raw features, so the logit is features @ w + b with no scaler."""
    scaler, logreg = pipeline[0], pipeline[-1]  # type: ignore[index]
    coef = logreg.coef_.reshape(-1) / scaler.scale_
    bias = float(logreg.intercept_[0] - np.dot(coef, scaler.mean_))
    return coef.astype(np.float32), bias


def write_card(model_dir: str | Path, card: dict[str, object]) -> Path:
    path = Path(model_dir) / CARD_FILE
    path.write_text(json.dumps(card, indent=2, allow_nan=False) + "\n")
    return path


def read_card(model_dir: str | Path) -> dict[str, object]:
    return _read_json(Path(model_dir) / CARD_FILE)


def _read_json(path: Path) -> dict:
    if not path.is_file():
        raise InputError(f"{path}: missing; write it with {WRITER_COMMAND}")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise InputError(f"{path}: not valid JSON ({err})") from None


def fit_operating_point(
    pipeline: object,
    valid_embeddings: np.ndarray,
    valid_labels: np.ndarray,
    valid_patients: np.ndarray,
    class_embeddings: np.ndarray,
    image_size: int,
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
        weights, bias, fit_platt(logit, valid_labels), {}, class_embeddings, PreprocessSpec.of_model(image_size),
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


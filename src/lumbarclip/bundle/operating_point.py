"""The operating point a model folder diagnoses with: linear classifier over the unit image
embedding, calibration map and thresholds (all chosen on the valid split), zero-shot class
embeddings, the preprocessing spec and the per-finding gate. Fitted by
`lumbarclip.inference.operating_point.fit_operating_point`; stored by `lumbarclip.bundle`.

Calibration is Platt scaling of the classifier's logit: p = sigmoid(a * logit + b), fitted on
valid by L2-penalised logistic regression (`lumbarclip.decision.fit_platt`; unpenalised, a
small separable valid set sends the slope to infinity). The probe is trained with balanced
class weights, so its raw probabilities are shifted towards 0.5 against the 85% abnormal prior;
the intercept `b` corrects that, which temperature scaling (b = 0) cannot.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields

import numpy as np

from lumbarclip.data.transforms import PreprocessSpec
from lumbarclip.decision import platt_map, to_logit

CLASS_NAMES: tuple[str, str] = ("normal", "abnormal")
SCORERS: tuple[str, ...] = ("prompts", "head")


@dataclass
class FindingGate:
    """Which finding kinds predict may show: each kind's AUROC on the valid split against
    `min_valid_auroc` (None where valid has fewer than `min_valid_positives` positives), and the
    scorer that produced them: "prompts" (zero-shot, with `contrast`) or "head" (the finding head)."""

    scorer: str = "prompts"
    contrast: str = "negative"
    valid_auroc: dict[str, float | None] = field(default_factory=dict)
    valid_positives: dict[str, int] = field(default_factory=dict)
    validated: list[str] = field(default_factory=list)
    not_validated: list[str] = field(default_factory=list)
    min_valid_auroc: float | None = None
    min_valid_positives: int | None = None

    def __post_init__(self) -> None:
        if self.scorer not in SCORERS:
            raise ValueError(f"finding gate: scorer must be one of {', '.join(SCORERS)}, got {self.scorer!r}")

    @classmethod
    def from_dict(cls, doc: dict[str, object]) -> FindingGate:
        """The gate of a JSON object; keys this version does not know are ignored."""
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in doc.items() if k in known})  # type: ignore[arg-type]

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


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
    #: Per-finding gate fitted on valid: predict shows a finding kind's score only when validated.
    findings: FindingGate = field(default_factory=lambda: FindingGate())

    def __post_init__(self) -> None:
        self.weights = np.asarray(self.weights, dtype=np.float32).reshape(-1)
        self.class_embeddings = np.asarray(self.class_embeddings, dtype=np.float32)

    @property
    def validated_findings(self) -> list[str]:
        """The finding kinds whose scores may be shown (none for a folder without the gate)."""
        return list(self.findings.validated)

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

    def to_state(self) -> tuple[dict[str, object], dict[str, np.ndarray]]:
        """(JSON document, arrays) as the model folder stores them; the preprocessing spec is
        stored apart (`preprocess.json`)."""
        arrays = {
            "weights": self.weights,
            "bias": np.array([self.bias], dtype=np.float32),
            "class_embeddings": self.class_embeddings,
        }
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
            "study_unit": list(self.study_unit),
            "findings": self.findings.to_dict(),
            "meta": self.meta,
        }
        return doc, arrays

    @classmethod
    def from_state(cls, doc: dict, arrays: dict[str, np.ndarray], preprocess: PreprocessSpec) -> OperatingPoint:
        """Inverse of `to_state`; KeyError / ValueError / TypeError on a malformed document."""
        return cls(
            weights=arrays["weights"],
            bias=float(arrays["bias"][0]),
            calibration={k: float(v) for k, v in doc["calibration"].items() if k in ("a", "b")},
            thresholds={k: float(v) for k, v in doc["thresholds"].items()},
            patient_calibration={k: float(doc.get("patient_calibration", {}).get(k, d)) for k, d in (("a", 1.0), ("b", 0.0))},
            class_embeddings=arrays["class_embeddings"],
            preprocess=preprocess,
            classifier=doc.get("classifier", "linear_probe"),
            meta=doc.get("meta", {}),
            study_unit=list(doc.get("study_unit", [])),
            findings=FindingGate.from_dict(dict(doc.get("findings") or {})),
        )

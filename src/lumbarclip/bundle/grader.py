"""The disc grader a model folder stores: linear models over a disc box's features
(`lumbarclip.inference.grades.disc_features`) giving the Pfirrmann grade (1-5) and the disc
classes a reader boxed (degenerated, bulge, stenosis, spondylolisthesis; none of them is a
normal disc), with each level's and class's valid figure and whether it passed the gate: only
validated ones are shown. Fitted by `lumbarclip.evaluation.grades`. For source "cnn" the
features are those of a CNN trained on the crops (`lumbarclip.models.disc_cnn`), whose weights
travel in the same file, and the linear models are its own heads. The Pfirrmann model of every
source is divided by a temperature fitted on valid, so its probabilities are calibrated."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy.special import softmax

import torch

from lumbarclip.decision import sigmoid
from lumbarclip.models.disc_cnn import DiscCNN

PFIRRMANN: tuple[int, ...] = (1, 2, 3, 4, 5)
DISC_CLASSES: tuple[str, ...] = ("DDD", "bulge", "stenosis", "spondylolisthesis")
SOURCES: tuple[str, ...] = ("clip", "crop", "cnn")
#: Box margin (fraction of its size on each side) for the crop and the pooled region.
MARGIN = 0.25
_ARRAYS = ("mean", "scale", "pfirrmann_coef", "pfirrmann_intercept", "class_coef", "class_intercept")
_NETWORK = "network."  # prefix of the CNN's weights among the arrays


@dataclass
class DiscGrader:
    source: str
    mean: np.ndarray
    scale: np.ndarray
    pfirrmann_coef: np.ndarray  # [5, D]
    pfirrmann_intercept: np.ndarray  # [5]
    class_coef: np.ndarray  # [C, D]
    class_intercept: np.ndarray  # [C]
    class_thresholds: dict[str, float]
    input_size: int  # side of the model input the boxes were read on (the CLIP model's image_size)
    #: valid figures and the gate: {"pfirrmann": {level: {"kappa", "accuracy", "validated"}},
    #: "classes": {name: {"auroc", "validated"}}}
    gate: dict[str, dict[str, dict[str, object]]] = field(default_factory=dict)
    network: DiscCNN | None = None  # source "cnn": the network whose features the linear models read
    temperature: float = 1.0  # fitted on valid, already divided into the Pfirrmann model; recorded

    def standardise(self, x: np.ndarray) -> np.ndarray:
        """Features as the linear models read them (the train mean and spread removed)."""
        return (np.asarray(x, dtype=np.float64) - self.mean) / self.scale

    def pfirrmann_proba(self, x: np.ndarray) -> np.ndarray:
        """[K, 5] P(grade 1..5)."""
        return softmax(self.standardise(x) @ self.pfirrmann_coef.T + self.pfirrmann_intercept, axis=1)

    def class_proba(self, x: np.ndarray) -> np.ndarray:
        """[K, C] P(class) for each of `DISC_CLASSES`, independently."""
        return sigmoid(self.standardise(x) @ self.class_coef.T + self.class_intercept)

    def validated_level(self, level: str) -> bool:
        return bool(self.gate.get("pfirrmann", {}).get(level, {}).get("validated", False))

    def validated_class(self, name: str) -> bool:
        return bool(self.gate.get("classes", {}).get(name, {}).get("validated", False))

    def to_state(self) -> tuple[dict[str, object], dict[str, np.ndarray]]:
        """(JSON document, arrays) as the model folder stores them."""
        arrays = {k: np.asarray(getattr(self, k), dtype=np.float64) for k in _ARRAYS}
        doc = {"source": self.source, "pfirrmann": list(PFIRRMANN), "classes": list(DISC_CLASSES),
               "class_thresholds": self.class_thresholds, "input_size": self.input_size, "gate": self.gate,
               "margin": MARGIN, "temperature": self.temperature}  # fmt: skip
        if self.network is not None:
            config, weights = self.network.to_state()
            doc["network"] = config
            arrays |= {_NETWORK + k: v.numpy() for k, v in weights.items()}
        return doc, arrays

    @classmethod
    def from_state(cls, doc: dict, arrays: dict[str, np.ndarray]) -> DiscGrader:
        """Inverse of `to_state`; KeyError / TypeError / ValueError on a malformed document."""
        if doc["source"] not in SOURCES:
            raise ValueError(f"source {doc['source']!r} is not one of {', '.join(SOURCES)}")
        network = None
        if doc["source"] == "cnn":
            weights = {k[len(_NETWORK) :]: torch.from_numpy(np.ascontiguousarray(v)) for k, v in arrays.items() if k.startswith(_NETWORK)}
            network = DiscCNN.from_state(doc["network"], weights)
        return cls(doc["source"], **{k: arrays[k] for k in _ARRAYS}, class_thresholds=doc["class_thresholds"],
                   input_size=int(doc["input_size"]), gate=doc["gate"], network=network,
                   temperature=float(doc.get("temperature", 1.0)))  # fmt: skip

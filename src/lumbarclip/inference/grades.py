"""Grades of one disc from its box: the Pfirrmann grade (1-5) and the disc classes a reader
boxed (degenerated, bulge, stenosis, spondylolisthesis; none of them is a normal disc).

Features of a box (`disc_features`), one of two sources chosen on valid:
  * "clip": the CLIP vision tower's stride-16 feature map under the box (torchvision's
    `roi_align`, 2 x 4 cells), beside the slice's pooled embedding;
  * "crop": the box's pixels (with a margin), resized to 16 x 32.
Linear models over standardised features (fitted by `lumbarclip.evaluation.grades`) give the
probabilities; a patient's grade at a level averages its slices' probabilities. Saved as
`grader.json` + `grader.safetensors` in the model folder (no pickle). Each level and class
carries its valid figure and whether it passed the gate: only validated ones are shown.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.numpy import load_file, save_file
from scipy.special import softmax
from torchvision.ops import roi_align

from lumbarclip.decision import sigmoid
from lumbarclip.errors import InputError

GRADER_FILE = "grader.json"
GRADER_ARRAYS = "grader.safetensors"
PFIRRMANN: tuple[int, ...] = (1, 2, 3, 4, 5)
DISC_CLASSES: tuple[str, ...] = ("DDD", "bulge", "stenosis", "spondylolisthesis")
SOURCES: tuple[str, ...] = ("clip", "crop")
#: Box margin (fraction of its size on each side) for the crop and the pooled region.
MARGIN = 0.25
CROP = (16, 32)  # rows x columns of a resized crop
ROI = (2, 4)  # cells of the pooled region on the stride-16 map


def _widen(boxes: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4).copy()
    dx, dy = (b[:, 2] - b[:, 0]) * MARGIN, (b[:, 3] - b[:, 1]) * MARGIN
    b[:, 0], b[:, 2] = b[:, 0] - dx, b[:, 2] + dx
    b[:, 1], b[:, 3] = b[:, 1] - dy, b[:, 3] + dy
    return np.clip(b, 0.0, [shape[1], shape[0], shape[1], shape[0]])


@torch.no_grad()
def disc_features(source: str, model: object | None, model_input: torch.Tensor, boxes_input: np.ndarray) -> np.ndarray:
    """[K, D] features of K boxes (pixels of the model input [1, S, S]) of one slice."""
    boxes = _widen(boxes_input, tuple(model_input.shape[-2:]))
    if len(boxes) == 0:
        return np.zeros((0, 0), dtype=np.float32)
    rois = torch.as_tensor(boxes, dtype=torch.float32)
    if source == "crop":
        crops = roi_align(model_input[None].float(), [rois], output_size=CROP, spatial_scale=1.0, aligned=True)
        return crops.reshape(len(boxes), -1).numpy()
    if source != "clip" or model is None:
        raise InputError(f"grader source must be one of {', '.join(SOURCES)} (clip needs the model)")
    visual = model.visual  # type: ignore[attr-defined]
    maps = visual.forward_intermediates(model_input[None].float(), indices=[len(visual.feature_info) - 2], intermediates_only=True)
    fmap = maps[0]
    scale = fmap.shape[-1] / model_input.shape[-1]
    pooled = roi_align(fmap, [rois], output_size=ROI, spatial_scale=scale, aligned=True).reshape(len(boxes), -1)
    image = F.normalize(model.encode_image(model_input[None].float()), dim=-1)  # type: ignore[attr-defined]
    return torch.cat([pooled, image.expand(len(boxes), -1)], dim=1).numpy()


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

    def _z(self, x: np.ndarray) -> np.ndarray:
        return (np.asarray(x, dtype=np.float64) - self.mean) / self.scale

    def pfirrmann_proba(self, x: np.ndarray) -> np.ndarray:
        """[K, 5] P(grade 1..5)."""
        return softmax(self._z(x) @ self.pfirrmann_coef.T + self.pfirrmann_intercept, axis=1)

    def class_proba(self, x: np.ndarray) -> np.ndarray:
        """[K, C] P(class) for each of `DISC_CLASSES`, independently."""
        return sigmoid(self._z(x) @ self.class_coef.T + self.class_intercept)

    def validated_level(self, level: str) -> bool:
        return bool(self.gate.get("pfirrmann", {}).get(level, {}).get("validated", False))

    def validated_class(self, name: str) -> bool:
        return bool(self.gate.get("classes", {}).get(name, {}).get("validated", False))

    def save(self, model_dir: str | Path) -> None:
        model_dir = Path(model_dir)
        arrays = {k: np.asarray(getattr(self, k), dtype=np.float64) for k in
                  ("mean", "scale", "pfirrmann_coef", "pfirrmann_intercept", "class_coef", "class_intercept")}  # fmt: skip
        save_file(arrays, str(model_dir / GRADER_ARRAYS))
        doc = {"source": self.source, "pfirrmann": list(PFIRRMANN), "classes": list(DISC_CLASSES),
               "class_thresholds": self.class_thresholds, "input_size": self.input_size, "gate": self.gate,
               "margin": MARGIN}  # fmt: skip
        (model_dir / GRADER_FILE).write_text(json.dumps(doc, indent=2) + "\n")

    @classmethod
    def load(cls, model_dir: str | Path) -> DiscGrader | None:
        """The folder's grader, or None when it has none."""
        model_dir = Path(model_dir)
        if not (model_dir / GRADER_FILE).is_file():
            return None
        try:
            doc = json.loads((model_dir / GRADER_FILE).read_text())
            arrays = load_file(str(model_dir / GRADER_ARRAYS))
            return cls(doc["source"], **arrays, class_thresholds=doc["class_thresholds"], input_size=int(doc["input_size"]), gate=doc["gate"])
        except (OSError, json.JSONDecodeError, KeyError, TypeError) as err:
            raise InputError(f"{model_dir / GRADER_FILE}: unreadable disc grader ({err})") from None

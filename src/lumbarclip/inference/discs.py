"""Discs of a mid-sagittal slice for `predict`: the model folder's detector finds them, they are
named by order from the sacrum (`lumbarclip.data.discs`), and its grader (when the folder has
one) gives each the Pfirrmann grade and disc classes with their probabilities. Boxes are in
pixels of the image as read. A grade is shown only for the levels, and a class only for the
classes, that passed the grader's valid gate (`validated`); a slice the detector cannot use
(outside the input guard, not sagittal, no disc found) gets one "not assessed" entry with the
reason instead of a guess."""

from __future__ import annotations


import numpy as np
import torch

from lumbarclip.data.discs import LUMBAR_FROM_SACRUM, level_name
from lumbarclip.data.transforms import MEAN, STD, image_boxes, square_boxes, to_square_tensor
from lumbarclip.bundle.grader import DISC_CLASSES, PFIRRMANN, DiscGrader
from lumbarclip.inference.grades import disc_features
from lumbarclip.inference.results import Disc
from lumbarclip.models.detector import DiscDetector, column_of_discs

NOT_GRADED = "no disc grader in this model folder"


@torch.no_grad()
def find_discs(
    detector: DiscDetector,
    pixels: np.ndarray,
    grader: DiscGrader | None = None,
    model: object | None = None,
    model_input: torch.Tensor | None = None,
) -> list[Disc]:
    """Named (and, with a grader, graded) discs of one [H, W] image in [0, 1], from the sacrum
    up; [] when none is found. `model` is the CLIP model, for a grader of source "clip";
    `model_input` the image already preprocessed for it, reused when its size fits."""
    size = detector.config.image_size
    image = (to_square_tensor(pixels, size) - MEAN) / STD
    found = detector.eval()(image[None])[0]
    h, w = pixels.shape[:2]
    boxes = np.clip(image_boxes(found["boxes"].numpy(), (h, w), size), 0.0, [w, h, w, h])  # padding is not image
    keep = (boxes[:, 2] - boxes[:, 0] >= 1.0) & (boxes[:, 3] - boxes[:, 1] >= 1.0)
    boxes, scores, ranks = column_of_discs(boxes[keep], found["scores"].numpy().astype(np.float64)[keep], detector.config)
    grades = _grades(grader, model, pixels, boxes, model_input) if grader is not None and len(boxes) else None
    out = []
    for i, rank in enumerate(int(r) for r in ranks):
        disc: dict[str, object] = {
            "level": level_name(rank),
            "box_xyxy": [round(float(v), 1) for v in boxes[i]],
            "score": round(float(scores[i]), 4),
            "thoracic": rank >= len(LUMBAR_FROM_SACRUM),
            "pfirrmann": None,
            "validated": False,
        }
        if grades is None:
            disc["reason"] = NOT_GRADED
        else:
            disc |= _shown(grader, str(disc["level"]), grades[0][i], grades[1][i])  # type: ignore[arg-type]
        out.append(Disc(**disc))  # type: ignore[arg-type]
    return out


def _grades(
    grader: DiscGrader, model: object | None, pixels: np.ndarray, boxes: np.ndarray, model_input: torch.Tensor | None
) -> tuple[np.ndarray, np.ndarray]:
    """[K, 5] Pfirrmann and [K, C] class probabilities of boxes (pixels of the image), read on
    the model input at the size the grader was fitted on (`model_input` when it has that size)."""
    size = grader.input_size
    if model_input is None or model_input.shape[-1] != size:
        model_input = (to_square_tensor(pixels, size) - MEAN) / STD
    extractor = grader.network if grader.source == "cnn" else model
    feats = disc_features(grader.source, extractor, model_input, square_boxes(boxes, pixels.shape[:2], size))
    return grader.pfirrmann_proba(feats), grader.class_proba(feats)


def _shown(grader: DiscGrader, level: str, pfirrmann: np.ndarray, classes: np.ndarray) -> dict[str, object]:
    """What a disc shows of its grades (`Disc` fields): only the validated level's grade and
    validated classes."""
    out: dict[str, object] = {}
    if grader.validated_level(level):
        out["pfirrmann"] = PFIRRMANN[int(np.argmax(pfirrmann))]
        out["pfirrmann_probabilities"] = {str(g): round(float(p), 4) for g, p in zip(PFIRRMANN, pfirrmann)}
        out["validated"] = True
    elif level in grader.gate.get("pfirrmann", {}):
        out["reason"] = f"Pfirrmann grade at {level} not validated on valid"
    else:
        graded = ", ".join(grader.gate.get("pfirrmann", {})) or "no level"
        out["reason"] = f"no Pfirrmann grade at {level}: the grader learnt {graded} only"
    shown = {c: round(float(p), 4) for c, p in zip(DISC_CLASSES, classes) if grader.validated_class(c)}
    out["classes"] = shown
    out["classes_present"] = [c for c in shown if shown[c] >= grader.class_thresholds[c]]
    return out


def not_assessed(reason: str) -> list[Disc]:
    """The `discs` entry of a slice whose discs were not looked for, and why."""
    return [Disc(level=None, box_xyxy=None, validated=False, reason=f"not assessed: {reason}")]

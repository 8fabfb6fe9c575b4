"""Discs of a mid-sagittal slice for `predict`: the model folder's detector finds them, and they
are named by order from the sacrum (`lumbarclip.data.discs`). Boxes are given in pixels of the
image as read. Grades are not assessed yet: each disc says so, and a slice the detector cannot
use (outside the input guard, not sagittal, no disc found) gets one "not assessed" entry with
the reason instead of a guess."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from lumbarclip.data.discs import LUMBAR_FROM_SACRUM, level_name
from lumbarclip.data.transforms import MEAN, STD, image_boxes, to_square_tensor
from lumbarclip.models.detector import DiscDetector

DETECTOR_FOLDER = "detector"
NOT_GRADED = "no disc grader in this model folder"


def load_detector(model_dir: str | Path) -> DiscDetector | None:
    """The model folder's disc detector, or None when it has none."""
    folder = Path(model_dir) / DETECTOR_FOLDER
    return DiscDetector.load(folder) if folder.is_dir() else None


@torch.no_grad()
def find_discs(detector: DiscDetector, pixels: np.ndarray) -> list[dict[str, object]]:
    """Named discs of one [H, W] image in [0, 1], from the sacrum up; [] when none is found."""
    size = detector.config.image_size
    image = (to_square_tensor(pixels, size) - MEAN) / STD
    found = detector.eval()(image[None])[0]
    h, w = pixels.shape[:2]
    boxes = np.clip(image_boxes(found["boxes"].numpy(), (h, w), size), 0.0, [w, h, w, h])  # padding is not image
    keep = (boxes[:, 2] - boxes[:, 0] >= 1.0) & (boxes[:, 3] - boxes[:, 1] >= 1.0)
    boxes, scores = boxes[keep], found["scores"].numpy()[keep]
    order = np.argsort(-(boxes[:, 1] + boxes[:, 3]) / 2, kind="stable")
    out = []
    for rank, i in enumerate(order):
        out.append({
            "level": level_name(rank),
            "box_xyxy": [round(float(v), 1) for v in boxes[i]],
            "score": round(float(scores[i]), 4),
            "thoracic": rank >= len(LUMBAR_FROM_SACRUM),
            "pfirrmann": None,
            "validated": False,
            "reason": NOT_GRADED,
        })  # fmt: skip
    return out


def not_assessed(reason: str) -> list[dict[str, object]]:
    """The `discs` entry of a slice whose discs were not looked for, and why."""
    return [{"level": None, "box_xyxy": None, "validated": False, "reason": f"not assessed: {reason}"}]

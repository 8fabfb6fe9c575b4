"""Features of one disc box for the grader (`lumbarclip.bundle.DiscGrader`), one of three
sources chosen on valid:
  * "clip": the CLIP vision tower's stride-16 feature map under the box (torchvision's
    `roi_align`, 2 x 4 cells), beside the slice's pooled embedding;
  * "crop": the box's pixels (with a margin), resized to 16 x 32;
  * "cnn": the pooled features of a CNN trained on the crops (`models.disc_cnn`), read at its
    own crop size.
A patient's grade at a level averages its slices' probabilities.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torchvision.ops import roi_align

from lumbarclip.bundle.grader import MARGIN, SOURCES
from lumbarclip.errors import InputError
from lumbarclip.models.disc_cnn import DiscCNN

CROP = (16, 32)  # rows x columns of a resized crop
ROI = (2, 4)  # cells of the pooled region on the stride-16 map


def _widen(boxes: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4).copy()
    dx, dy = (b[:, 2] - b[:, 0]) * MARGIN, (b[:, 3] - b[:, 1]) * MARGIN
    b[:, 0], b[:, 2] = b[:, 0] - dx, b[:, 2] + dx
    b[:, 1], b[:, 3] = b[:, 1] - dy, b[:, 3] + dy
    return np.clip(b, 0.0, [shape[1], shape[0], shape[1], shape[0]])


def disc_crops(model_input: torch.Tensor, boxes_input: np.ndarray, size: tuple[int, int]) -> torch.Tensor:
    """[K, 1, rows, cols] crops of K boxes (widened by the grader's margin) of a model input [1, S, S]."""
    boxes = _widen(boxes_input, tuple(model_input.shape[-2:]))
    rois = torch.as_tensor(boxes, dtype=torch.float32)
    return roi_align(model_input[None].float(), [rois], output_size=size, spatial_scale=1.0, aligned=True)


@torch.no_grad()
def disc_features(source: str, model: object | None, model_input: torch.Tensor, boxes_input: np.ndarray) -> np.ndarray:
    """[K, D] features of K boxes (pixels of the model input [1, S, S]) of one slice."""
    boxes = _widen(boxes_input, tuple(model_input.shape[-2:]))
    if len(boxes) == 0:
        return np.zeros((0, 0), dtype=np.float32)
    rois = torch.as_tensor(boxes, dtype=torch.float32)
    if source == "crop":
        return disc_crops(model_input, boxes_input, CROP).reshape(len(boxes), -1).numpy()
    if source == "cnn" and isinstance(model, DiscCNN):
        return model.eval().features(disc_crops(model_input, boxes_input, model.config.crop)).numpy()
    if source != "clip" or model is None:
        raise InputError(f"grader source must be one of {', '.join(SOURCES)} (clip needs the CLIP model, cnn the disc CNN)")
    visual = model.visual  # type: ignore[attr-defined]
    maps = visual.forward_intermediates(model_input[None].float(), indices=[len(visual.feature_info) - 2], intermediates_only=True)
    fmap = maps[0]
    scale = fmap.shape[-1] / model_input.shape[-1]
    pooled = roi_align(fmap, [rois], output_size=ROI, spatial_scale=scale, aligned=True).reshape(len(boxes), -1)
    image = F.normalize(model.encode_image(model_input[None].float()), dim=-1)  # type: ignore[attr-defined]
    return torch.cat([pooled, image.expand(len(boxes), -1)], dim=1).numpy()

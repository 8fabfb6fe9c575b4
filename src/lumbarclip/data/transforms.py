"""Image tensors for the towers: pad to square, resize, normalise; train-time augmentation.

Input is what `imageio.load_image` returns: a float32 2-D array in [0, 1]. Horizontal flips are
off by default because reports name sides (Rt/Lt) and a flip would contradict the text.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torchvision.transforms import v2

MEAN, STD = 0.5, 0.25


def to_square_tensor(pixels: np.ndarray, size: int) -> torch.Tensor:
    """[H, W] in [0, 1] -> [1, size, size]: zero-pad the short side, then resize (antialiased)."""
    t = torch.as_tensor(np.ascontiguousarray(pixels), dtype=torch.float32)[None]
    h, w = t.shape[-2:]
    side = max(h, w)
    top, left = (side - h) // 2, (side - w) // 2
    t = F.pad(t, (left, side - w - left, top, side - h - top))
    if side != size:
        t = F.interpolate(t[None], size=(size, size), mode="bilinear", antialias=True, align_corners=False)[0]
    return t


def eval_transform(image_size: int) -> Callable[[np.ndarray], torch.Tensor]:
    """Deterministic preprocessing used for validation, evaluation and inference."""
    normalize = v2.Normalize([MEAN], [STD])
    return lambda pixels: normalize(to_square_tensor(pixels, image_size))


def train_transform(image_size: int, flip: bool = False) -> Callable[[np.ndarray], torch.Tensor]:
    """Small affine jitter, contrast/brightness jitter, optional flip - the paper's recipe, in 1 channel."""
    steps: list[Callable] = [
        v2.RandomAffine(degrees=8, translate=(0.05, 0.05), scale=(0.92, 1.08)),
        v2.ColorJitter(brightness=0.2, contrast=0.2),
    ]
    if flip:
        steps.append(v2.RandomHorizontalFlip())
    augment = v2.Compose([*steps, v2.Normalize([MEAN], [STD])])
    return lambda pixels: augment(to_square_tensor(pixels, image_size))

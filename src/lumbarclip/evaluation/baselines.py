"""Reference classifiers every LumbarCLIP score is read against: the majority class and a
logistic regression on downsampled raw pixels (if it does well, the task is too easy)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from lumbarclip.data.imageio import load_image
from lumbarclip.data.transforms import eval_transform

RAW_PIXEL_SIZE = 32


def load_image_tensors(paths: Sequence[Path], image_size: int, progress: bool = True) -> torch.Tensor:
    """[N, 1, S, S] images preprocessed exactly as the model sees them at evaluation."""
    transform = eval_transform(image_size)
    images = [
        transform(load_image(p)) for p in tqdm(paths, desc="load images", disable=not progress, leave=False)
    ]
    return torch.stack(images) if images else torch.zeros(0, 1, image_size, image_size)


def raw_pixel_features(images: torch.Tensor, size: int = RAW_PIXEL_SIZE) -> np.ndarray:
    """[N, size*size] features: each image area-averaged down to size x size pixels."""
    return F.adaptive_avg_pool2d(images.float(), size).flatten(1).numpy()


def majority_proba(y_train: np.ndarray, n: int) -> np.ndarray:
    """The training split's abnormal rate for every case: with a 0.5 threshold it calls every
    case the majority class, and its AUROC is 0.5 by construction."""
    return np.full(n, float(np.mean(y_train)))

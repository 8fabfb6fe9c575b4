"""Reference classifiers every LumbarCLIP score is read against: the majority class and a
logistic regression on downsampled raw pixels (if it does well, the task is too easy)."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

RAW_PIXEL_SIZE = 32


def raw_pixel_features(images: torch.Tensor, size: int = RAW_PIXEL_SIZE) -> np.ndarray:
    """[N, size*size] features: each image area-averaged down to size x size pixels."""
    return F.adaptive_avg_pool2d(images.float(), size).flatten(1).numpy()


def majority_proba(y_train: np.ndarray, n: int) -> np.ndarray:
    """The training split's abnormal rate for every case: with a 0.5 threshold it calls every
    case the majority class, and its AUROC is 0.5 by construction."""
    return np.full(n, float(np.mean(y_train)))

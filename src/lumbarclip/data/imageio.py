"""Image I/O: every format becomes a float32 2-D array in [0, 1] by the same normalisation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from lumbarclip.errors import InputError


def normalise(pixels: np.ndarray, low: float = 0.5, high: float = 99.5) -> np.ndarray:
    """Robust per-image scaling: percentiles `low`..`high` map to 0..1, then clip."""
    arr = np.asarray(pixels, dtype=np.float32)
    if not np.isfinite(arr).all():
        raise InputError("image has NaN or infinite pixel values")
    lo, hi = np.percentile(arr, [low, high])
    if hi <= lo:
        return np.zeros_like(arr)
    return np.clip((arr - lo) / (hi - lo), 0.0, 1.0)


def load_image(path: str | Path) -> np.ndarray:
    """Read one 2-D grayscale image (PNG 8/16-bit for now) as float32 in [0, 1]."""
    path = Path(path)
    try:
        with Image.open(path) as im:
            arr = np.asarray(im)
    except (OSError, ValueError) as err:
        raise InputError(f"{path}: cannot read image ({err})") from None
    if arr.ndim == 3:
        arr = arr[..., :3].mean(axis=-1)
    if arr.ndim != 2:
        raise InputError(f"{path}: expected a 2-D image, got shape {arr.shape}")
    return normalise(arr)

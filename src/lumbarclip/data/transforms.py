"""Image tensors for the towers: the one preprocessing of evaluation and prediction, and
train-time augmentation.

Input is what `imageio.load_image` returns: a float32 2-D array in [0, 1]. `preprocess` turns it
into the model input exactly as the model folder's preprocessing spec (`PreprocessSpec`) says; evaluation (the
datamodule's and `inference.embed.load_images`' eval transform), `Predictor.predict` (hence
`predict`, `serve` and `pacs`) and the ONNX runtime, which is fed by `Predictor.predict`, all call
it, so a model is served on the very tensors it was evaluated on. Horizontal flips are off by
default because reports name sides (Rt/Lt) and a flip would contradict the text.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torchvision.transforms import v2

from lumbarclip.data.imageio import LoadedImage, read_image
from lumbarclip.errors import InputError

MEAN, STD = 0.5, 0.25


@dataclass
class PreprocessSpec:
    """How an image file becomes the model's input, and which files it refuses; the fields
    `preprocess` runs on (`size_refusal` says what the limits mean)."""

    image_size: int
    mean: float
    std: float
    channels: int = 1
    value_range: tuple[float, float] = (0.0, 1.0)
    intensity: str = "percentile 0.5-99.5 window to [0, 1] (lumbarclip.data.imageio.normalise)"
    padding: str = "zero-pad the short side to a centred square"
    resize: str = "bilinear, antialiased"
    stack: str = "a volume or multi-frame file gives its middle slice"
    max_upscale: float = 4.0  # the resize enlarges an image at most this much
    max_aspect: float = 2.0  # long side / short side
    max_pixel_aspect: float = 1.1  # larger / smaller pixel spacing, where the file states it
    #: What the model learnt from: DICOM headers of another plane are refused, and every output
    #: names the plane it assessed (the training manifest's planes and sequences).
    planes: tuple[str, ...] = ("axial",)
    sequences: tuple[str, ...] = ("T1", "T2")

    @property
    def input_range(self) -> tuple[float, float]:
        """The values a model input can take: `value_range` normalised by mean and std."""
        lo, hi = self.value_range
        return ((lo - self.mean) / self.std, (hi - self.mean) / self.std)

    @classmethod
    def of_model(
        cls, image_size: int, planes: tuple[str, ...] = ("axial",), sequences: tuple[str, ...] = ("T1", "T2")
    ) -> PreprocessSpec:
        """The spec of the package's evaluation transform at `image_size`."""
        return cls(image_size=image_size, mean=MEAN, std=STD, planes=tuple(planes), sequences=tuple(sequences))

    @classmethod
    def of_split(cls, image_size: int, records: Iterable) -> PreprocessSpec:
        """The spec a model trained on `records` (manifest rows with `plane` and `sequence`)
        takes: `of_model` with their planes and sequences (axial T1/T2 where none is known)."""
        records = list(records)
        planes = tuple(sorted({r.plane for r in records if r.plane})) or ("axial",)
        return cls.of_model(image_size, planes, tuple(sorted({r.sequence for r in records if r.sequence})) or ("T1", "T2"))

    def to_dict(self) -> dict[str, object]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> PreprocessSpec:
        """Inverse of `to_dict`; a spec without planes and sequences is axial T1/T2."""
        data = dict(data)
        data["value_range"] = tuple(data.get("value_range", (0.0, 1.0)))
        for key in ("planes", "sequences"):
            if key in data:
                data[key] = tuple(data[key])
        return cls(**data)


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


def _square_frame(shape: tuple[int, int]) -> tuple[np.ndarray, int]:
    """The corner offsets `to_square_tensor`'s centred padding adds, and the padded side."""
    h, w = shape
    side = max(h, w)
    return np.array([(side - w) // 2, (side - h) // 2] * 2, dtype=np.float64), side


def square_boxes(boxes: np.ndarray, shape: tuple[int, int], size: int) -> np.ndarray:
    """Boxes [N, 4] in pixels of an image of `shape` -> pixels of its `to_square_tensor` input (padding, then resize)."""
    offset, side = _square_frame(shape)
    return (np.asarray(boxes, dtype=np.float64).reshape(-1, 4) + offset) * (size / side)


def image_boxes(boxes: np.ndarray, shape: tuple[int, int], size: int) -> np.ndarray:
    """The inverse of `square_boxes`: model-input pixels -> pixels of the original image."""
    offset, side = _square_frame(shape)
    return np.asarray(boxes, dtype=np.float64).reshape(-1, 4) * (side / size) - offset


def size_refusal(
    shape: tuple[int, int], spec: PreprocessSpec, spacing_mm: tuple[float, float] | None = None
) -> str | None:
    """Why an image of `shape` (rows, columns) is not a model input under `spec`, or None.

    Every image is zero-padded to a centred square and resized to `spec.image_size`, so any size
    becomes the input size the model was evaluated at; what preprocessing cannot undo is refused:
    - too small: the resize would enlarge the image more than `spec.max_upscale` times (its long
      side is under image_size / max_upscale), and the model would grade interpolation;
    - too elongated: long side / short side over `spec.max_aspect`; padding keeps the aspect, so
      such a scan fills under 1/max_aspect of the input, unlike the square scans evaluated;
    - non-square pixels: row / column pixel spacing (when the file states it) differ by more than
      the factor `spec.max_pixel_aspect`; preprocessing treats pixels as square, so the anatomy
      would be stretched by that factor.
    """
    rows, cols = shape
    long, short = max(rows, cols), min(rows, cols)
    if long * spec.max_upscale < spec.image_size:
        return (
            f"image is {cols} x {rows} pixels; the model takes {spec.image_size} px and its preprocessing "
            f"allows enlarging at most {spec.max_upscale:g}x (long side >= {spec.image_size / spec.max_upscale:g} px)"
        )
    if long > spec.max_aspect * short:
        return (
            f"image is {cols} x {rows} pixels, aspect {long / short:.2f}:1; the model's preprocessing allows at most "
            f"{spec.max_aspect:g}:1 (it pads to a square, the scan would fill too little of it)"
        )
    if spacing_mm is not None and min(spacing_mm) > 0:
        stretch = max(spacing_mm) / min(spacing_mm)
        if stretch > spec.max_pixel_aspect:
            return (
                f"pixels are {spacing_mm[0]:g} x {spacing_mm[1]:g} mm (rows x columns), stretch {stretch:.2f}; "
                f"the model's preprocessing treats pixels as square and allows at most {spec.max_pixel_aspect:g}"
            )
    return None


def preprocess(pixels: np.ndarray, spec: PreprocessSpec, spacing_mm: tuple[float, float] | None = None) -> torch.Tensor:
    """[channels, S, S] model input of a [0, 1] image, exactly as the preprocessing spec says: the
    size check (`size_refusal`), centred zero-padding to a square, antialiased bilinear resize to
    `spec.image_size`, then (x - mean) / std. InputError with the one-line reason when refused."""
    reason = size_refusal((int(pixels.shape[0]), int(pixels.shape[1])), spec, spacing_mm)
    if reason:
        raise InputError(reason)
    tensor = (to_square_tensor(pixels, spec.image_size) - spec.mean) / spec.std
    expected = (spec.channels, spec.image_size, spec.image_size)
    if tuple(tensor.shape) != expected:
        raise InputError(
            f"preprocessing spec: the model takes {list(expected)} inputs, preprocessing makes {list(tensor.shape)}"
        )
    return tensor


def load_model_input(path: str | Path, spec: PreprocessSpec) -> tuple[torch.Tensor, LoadedImage]:
    """An image file read and preprocessed (`preprocess`, with the file's pixel spacing), and
    what was read; InputError naming the file when it is unreadable or refused."""
    image = read_image(path)
    try:
        return preprocess(image.pixels, spec, image.spacing_mm), image
    except InputError as err:
        raise InputError(f"{path}: {err}") from None


def eval_transform(image_size: int) -> Callable[[np.ndarray], torch.Tensor]:
    """`preprocess` with the spec training writes into the model folder (`PreprocessSpec.of_model`):
    the deterministic transform of validation and evaluation."""
    return partial(preprocess, spec=PreprocessSpec.of_model(image_size))


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

"""`ImageScorer`: the image tower, projection head and linear classifier as one module.

`forward(image[N, 1, S, S] float32, preprocessed) -> (embedding[N, D] unit-norm, logit[N])`.
The logit is the classifier's UNCALIBRATED output; `OperatingPoint.calibrate` turns it into
P(abnormal) in numpy, so the PyTorch and ONNX runtimes share the calibration code. This is the
module `lumbarclip export --format onnx` exports.
"""

from __future__ import annotations

import torch
from torch import nn

from lumbarclip.inference.operating_point import OperatingPoint
from lumbarclip.models import LumbarCLIP


class ImageScorer(nn.Module):
    """Vision tower + head of a LumbarCLIP, and the operating point's linear classifier."""

    def __init__(self, model: LumbarCLIP, operating_point: OperatingPoint) -> None:
        super().__init__()
        self.visual = model.visual
        self.visual_head = model.visual_head
        weights = torch.as_tensor(operating_point.weights, dtype=torch.float32)
        if weights.numel() != model.config.embed_dim:
            raise ValueError(
                f"operating point has {weights.numel()} weights, the model embeds in {model.config.embed_dim} dims"
            )
        self.register_buffer("weights", weights)
        self.register_buffer("bias", torch.tensor(float(operating_point.bias), dtype=torch.float32))
        self.image_size = model.config.image_size

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        embedding = nn.functional.normalize(self.visual_head(self.visual(image)), dim=-1)
        return embedding, embedding @ self.weights + self.bias

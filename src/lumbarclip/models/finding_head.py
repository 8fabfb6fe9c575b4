"""A MedKLIP-style finding head: one learned query per finding kind over the image's spatial features.

Contrastive targets leave negation and location to the text tower. This head takes them out of
its hands: each kind of `lumbarclip.findings.LEVEL_KINDS` has a query that attends over the
vision tower's last feature map (timm's `forward_intermediates`, the same for CNNs, ViTs and
Swin) and is trained, beside the CLIP loss, on what the report states at the image's level. Its
attention over the feature map is where the query looked: a saliency map for that finding.
The keys carry each cell's position (sines and cosines of its normalised coordinates, for any
grid size), so a query can look for "a dark root on the left" and not just "a dark root".
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


_FREQUENCIES = (1.0, 2.0, 4.0)


def _grid_code(h: int, w: int, like: torch.Tensor) -> torch.Tensor:
    """[h*w, 4F] sines and cosines of each cell's coordinates in [-1, 1], row-major."""
    ys = torch.linspace(-1.0, 1.0, h, device=like.device, dtype=like.dtype)
    xs = torch.linspace(-1.0, 1.0, w, device=like.device, dtype=like.dtype)
    y, x = torch.meshgrid(ys, xs, indexing="ij")
    angles = [math.pi / 2 * f * c.reshape(-1) for f in _FREQUENCIES for c in (x, y)]
    return torch.stack([fn(a) for a in angles for fn in (torch.sin, torch.cos)], dim=-1)


class FindingHead(nn.Module):
    """[B, C, h, w] features -> ([B, K] logits, [B, K, h, w] attention)."""

    def __init__(self, in_features: int, kinds: int, dim: int = 64) -> None:
        super().__init__()
        self.keys = nn.Linear(in_features, dim)
        self.position = nn.Linear(4 * len(_FREQUENCIES), dim)
        self.values = nn.Linear(in_features, dim)
        self.queries = nn.Parameter(torch.randn(kinds, dim) / math.sqrt(dim))
        self.weight = nn.Parameter(torch.randn(kinds, dim) / math.sqrt(dim))  # one readout per kind
        self.bias = nn.Parameter(torch.zeros(kinds))

    def forward(self, feature_map: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b, _, h, w = feature_map.shape
        tokens = feature_map.flatten(2).transpose(1, 2)  # [B, hw, C]
        keys = self.keys(tokens) + self.position(_grid_code(h, w, tokens))
        values = self.values(tokens)
        scores = torch.einsum("kd,bnd->bkn", self.queries, keys) / math.sqrt(keys.shape[-1])
        attention = scores.softmax(dim=-1)
        attended = torch.einsum("bkn,bnd->bkd", attention, values)
        logits = (F.gelu(attended) * self.weight).sum(-1) + self.bias
        return logits, attention.reshape(b, -1, h, w)

"""Projection heads into the shared embedding space (the paper's linear vs non-linear ablation)."""

from __future__ import annotations

from torch import nn


def create_head(kind: str, in_dim: int, embed_dim: int) -> nn.Module:
    """`linear`: one Linear. `mlp`: Linear-GELU-Linear with a hidden width of `in_dim`."""
    if kind == "linear":
        return nn.Linear(in_dim, embed_dim)
    if kind == "mlp":
        return nn.Sequential(nn.Linear(in_dim, in_dim), nn.GELU(), nn.Linear(in_dim, embed_dim))
    raise ValueError(f"unknown head {kind!r}; use linear or mlp")

"""`fit_crop_projection()`: disc crops aligned with the report sentences that name their level.

The CLIP model learnt whole slices against whole reports, so a disc's crop is an image unlike
any it saw (its crop view scores at chance). This maps a disc's features (the disc grader's,
`lumbarclip.inference.grades.disc_features`) into the CLIP embedding space with one linear
layer, trained with the soft CLIP loss (`lumbarclip.losses.soft_clip_loss`) against the frozen
text embeddings of the sentences of its patient's report that name its level (a level no
sentence names is normal by the reports' convention, and is paired with a sentence saying so), the per-sentence
targets being the Jaccard similarity of the levels' findings (multi-hot over `LEVEL_KINDS`; two
normal levels match). The text side stays as it is, so the model's prompts
(`inference.findings.FindingClassifier`) and sentence search read the projected crops with no
other change. Full-batch AdamW over a few hundred pairs: seconds on a CPU.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from lumbarclip.losses import soft_clip_loss


def fit_crop_projection(
    features: np.ndarray,
    text_embeddings: np.ndarray,
    labels: np.ndarray,
    logit_scale: float,
    steps: int = 300,
    lr: float = 1e-3,
    weight_decay: float = 1e-2,
    seed: int = 0,
) -> nn.Module:
    """A projection [F] -> [D] of disc features such that the i-th disc's unit embedding meets
    the i-th text embedding ([N, D], unit) under soft targets from `labels` [N, K]. The
    features are standardised inside the projection (their train mean and spread)."""
    x = torch.as_tensor(np.asarray(features, dtype=np.float32))
    t = F.normalize(torch.as_tensor(np.asarray(text_embeddings, dtype=np.float32)), dim=-1)
    y = torch.as_tensor(np.asarray(labels, dtype=np.float32))
    if not (len(x) == len(t) == len(y)) or len(x) < 2:
        raise ValueError(f"need matching features, texts and labels for at least 2 discs, got {len(x)}, {len(t)}, {len(y)}")
    torch.manual_seed(seed)
    mean, std = x.mean(0), x.std(0).clamp_min(1e-6)
    projection = nn.Sequential(_Standardise(mean, std), nn.Linear(x.shape[1], t.shape[1]))
    optimiser = torch.optim.AdamW(projection.parameters(), lr=lr, weight_decay=weight_decay)
    scale = torch.tensor(float(logit_scale))
    for _ in range(steps):
        optimiser.zero_grad()
        loss = soft_clip_loss(F.normalize(projection(x), dim=-1), t, scale, y, y, form="normalized", kernel="jaccard")
        loss.backward()
        optimiser.step()
    return projection.eval()


class _Standardise(nn.Module):
    def __init__(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("mean", mean)
        self.register_buffer("std", std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std

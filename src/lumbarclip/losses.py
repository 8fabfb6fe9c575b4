"""Contrastive losses: hard symmetric InfoNCE and the soft (label-similarity) CLIP loss.

Soft targets (MedCLIP's semantic matching, the paper's objective): with label vectors Y_img and
Y_txt, S = Y_img @ Y_txt.T. The paper's form uses targets softmax(S) row-wise (and softmax(S.T)
for the text side). Note that with 0/1 similarities softmax still gives every different-class
pair weight 1/e of a same-class pair; the `normalized` form, S / row sums, gives them exactly
zero and equals InfoNCE when every pair has its own label.

Findings-level labels (`Findings` multi-hot vectors, `lumbarclip.findings.findings_vector`) share
slots partially, so the similarity `kernel` matters: `dot` (the paper: S = Y_img Y_txtᵀ, which
favours patients with many findings), `cosine` or `jaccard` (1 for identical findings, in
[0, 1] otherwise). `identity_weight` w mixes the InfoNCE target in: T = (1 - w) T(S) + w I, so a
pair's own report stays the most likely one even among patients with the same findings.

Per-sentence targets (`loss.labels=sentence`) give the two sides different vectors: the image's
0/1 findings at its level, and what the sampled sentence states (+1 present, -1 denied, 0 not
stated). Their `agreement` kernel is the fraction of the sentence's statements the image bears
out, so "No disc bulge at L3/L4" targets the images without a bulge there; a sentence that
states nothing about the level's findings is 0.5 for every image (it cannot tell them apart).

Features from other ranks are gathered (open_clip's scheme) so the loss sees the global batch
under DDP; on one process the gather is a no-op.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn


def gather_features(
    *tensors: torch.Tensor, gather_with_grad: bool = False
) -> tuple[torch.Tensor, ...]:
    """Concatenate each tensor across ranks (rank order). Without `gather_with_grad` only the
    local slice keeps its gradient, as in open_clip; with it, gradients flow to every rank."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return tensors
    from torch.distributed.nn.functional import all_gather as all_gather_with_grad

    out = []
    for t in tensors:
        if gather_with_grad:
            parts = list(all_gather_with_grad(t))
        else:
            parts = [torch.zeros_like(t) for _ in range(dist.get_world_size())]
            dist.all_gather(parts, t)
            parts[dist.get_rank()] = t
        out.append(torch.cat(parts, dim=0))
    return tuple(out)


KERNELS: tuple[str, ...] = ("dot", "cosine", "jaccard", "agreement")
#: Agreement of an image with a text that states nothing: neither a match nor a contradiction.
UNSTATED_AGREEMENT = 0.5
FORMS: tuple[str, ...] = ("softmax", "normalized")


def label_similarity(image_labels: torch.Tensor, text_labels: torch.Tensor, kernel: str = "dot") -> torch.Tensor:
    """[N, M] similarity of label vectors: `dot` (the paper), `cosine`, `jaccard` (for
    0/1 vectors: shared slots over slots set in either; two all-zero vectors count as 1) or
    `agreement` (0/1 image vectors against ternary text vectors, see the module docstring)."""
    if kernel == "agreement":
        stated = text_labels.abs().sum(1)
        agree = image_labels @ (text_labels > 0).to(image_labels.dtype).T
        agree = agree + (1 - image_labels) @ (text_labels < 0).to(image_labels.dtype).T
        unstated = torch.full_like(agree, UNSTATED_AGREEMENT)
        return torch.where(stated > 0, agree / stated.clamp(min=1), unstated)
    dot = image_labels @ text_labels.T
    if kernel == "dot":
        return dot
    if kernel == "cosine":
        norms = image_labels.norm(dim=1, keepdim=True) * text_labels.norm(dim=1, keepdim=True).T
        return dot / norms.clamp(min=1e-12)
    if kernel == "jaccard":
        union = image_labels.sum(1, keepdim=True) + text_labels.sum(1, keepdim=True).T - dot
        return torch.where(union > 0, dot / union.clamp(min=1e-12), torch.ones_like(dot))
    raise ValueError(f"unknown label kernel {kernel!r}; use {', '.join(KERNELS)}")


def soft_targets(sim: torch.Tensor, form: str = "softmax", identity_weight: float = 0.0) -> torch.Tensor:
    """Row-wise target distributions from a label-similarity matrix, optionally mixed with the
    identity (each row's own column), which needs a square matrix."""
    if form == "softmax":
        targets = sim.softmax(dim=1)
    elif form == "normalized":
        targets = sim / sim.sum(dim=1, keepdim=True).clamp(min=1e-12)
    else:
        raise ValueError(f"unknown soft-target form {form!r}; use {' or '.join(FORMS)}")
    if not 0.0 <= identity_weight <= 1.0:
        raise ValueError(f"identity_weight must be in [0, 1]; got {identity_weight}")
    if identity_weight:
        eye = torch.eye(sim.shape[0], sim.shape[1], dtype=targets.dtype, device=targets.device)
        targets = (1.0 - identity_weight) * targets + identity_weight * eye
    return targets


def hard_clip_loss(
    image_features: torch.Tensor, text_features: torch.Tensor, logit_scale: torch.Tensor
) -> torch.Tensor:
    """Symmetric InfoNCE: pair i is the only positive of row i and of column i."""
    logits = logit_scale * image_features @ text_features.T
    target = torch.arange(logits.shape[0], device=logits.device)
    return (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2


def soft_clip_loss(
    image_features: torch.Tensor,
    text_features: torch.Tensor,
    logit_scale: torch.Tensor,
    image_labels: torch.Tensor,
    text_labels: torch.Tensor,
    form: str = "softmax",
    kernel: str = "dot",
    identity_weight: float = 0.0,
) -> torch.Tensor:
    """Soft-target CLIP loss: ½ [CE(logits, T(S)) + CE(logitsᵀ, T(Sᵀ))] with S = k(Y_img, Y_txt)."""
    logits = logit_scale * image_features @ text_features.T
    sim = label_similarity(image_labels.to(logits.dtype), text_labels.to(logits.dtype), kernel)
    i2t = F.cross_entropy(logits, soft_targets(sim, form, identity_weight))
    t2i = F.cross_entropy(logits.T, soft_targets(sim.T, form, identity_weight))
    return (i2t + t2i) / 2


class ClipLoss(nn.Module):
    """The training loss: `kind` soft (needs label vectors) or hard, over the gathered batch."""

    def __init__(
        self,
        kind: str = "soft",
        form: str = "softmax",
        gather_with_grad: bool = False,
        kernel: str = "dot",
        identity_weight: float = 0.0,
    ) -> None:
        super().__init__()
        if kind not in ("soft", "hard"):
            raise ValueError(f"loss.kind must be soft or hard, got {kind!r}")
        if form not in FORMS or kernel not in KERNELS:
            raise ValueError(f"loss.form must be one of {FORMS} and loss.kernel one of {KERNELS}")
        self.kind, self.form, self.gather_with_grad = kind, form, gather_with_grad
        self.kernel, self.identity_weight = kernel, identity_weight

    def forward(
        self,
        image_features: torch.Tensor,
        text_features: torch.Tensor,
        logit_scale: torch.Tensor,
        labels: torch.Tensor | None = None,
        text_labels: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """`labels` label the images and, unless `text_labels` are given, the texts too."""
        if self.kind == "hard" or labels is None:
            img, txt = gather_features(image_features, text_features, gather_with_grad=self.gather_with_grad)
            return hard_clip_loss(img, txt, logit_scale)
        text_labels = labels if text_labels is None else text_labels
        img, txt, lab, txt_lab = gather_features(
            image_features, text_features, labels, text_labels, gather_with_grad=self.gather_with_grad
        )
        return soft_clip_loss(img, txt, logit_scale, lab, txt_lab, self.form, self.kernel, self.identity_weight)

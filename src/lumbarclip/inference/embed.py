"""Embeddings of images and texts by a trained model, and the zero-shot classifier."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from lumbarclip.data.transforms import PreprocessSpec, load_model_input
from lumbarclip.models import LumbarCLIP


def load_images(paths: Sequence[str | Path], spec: PreprocessSpec, progress: bool = True) -> torch.Tensor:
    """[N, 1, S, S] images preprocessed as the model folder's spec says, as `predict` reads
    them; InputError naming the first file preprocessing refuses."""
    bar = tqdm(paths, desc="load images", disable=not progress, leave=False)
    images = [load_model_input(p, spec)[0] for p in bar]
    return torch.stack(images) if images else torch.zeros(0, spec.channels, spec.image_size, spec.image_size)


@torch.no_grad()
def encode_images(model: LumbarCLIP, images: torch.Tensor, batch_size: int = 64) -> np.ndarray:
    """[N, D] unit image embeddings of preprocessed images (see `load_images`)."""
    model.eval()
    out = [
        model.encode_image(images[i : i + batch_size].to(model.device)).float().cpu()
        for i in range(0, len(images), batch_size)
    ]
    return torch.cat(out).numpy() if out else np.zeros((0, model.config.embed_dim), np.float32)


def embed_images(
    model: LumbarCLIP, paths: Sequence[str | Path], spec: PreprocessSpec, batch_size: int = 64, progress: bool = True
) -> np.ndarray:
    """[N, D] unit image embeddings of image files preprocessed as `spec` says."""
    return encode_images(model, load_images(paths, spec, progress), batch_size)


@torch.no_grad()
def embed_texts(model: LumbarCLIP, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
    """[N, D] unit text embeddings."""
    model.eval()
    out = [model.encode_text(list(texts[i : i + batch_size])).float().cpu() for i in range(0, len(texts), batch_size)]
    return torch.cat(out).numpy() if out else np.zeros((0, model.config.embed_dim), np.float32)


@torch.no_grad()
def class_embeddings(model: LumbarCLIP, prompts: dict[int, list[str]]) -> torch.Tensor:
    """[C, D] zero-shot classifier: per class, the normalised mean of its prompts' embeddings
    (CLIP's prompt ensemble), rows ordered by class index."""
    rows = []
    for cls in sorted(prompts):
        if not prompts[cls]:
            raise ValueError(f"class {cls} has no prompts")
        emb = model.encode_text(list(prompts[cls])).float()
        rows.append(torch.nn.functional.normalize(emb.mean(0), dim=-1))
    return torch.stack(rows)


def zero_shot_probs(image_features: torch.Tensor, classes: torch.Tensor, logit_scale: torch.Tensor) -> torch.Tensor:
    """[N, C] class probabilities: softmax over scaled cosine similarities."""
    return (logit_scale.float() * image_features.float() @ classes.float().T).softmax(dim=-1)

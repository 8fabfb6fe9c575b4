"""Zero-shot classification with prompt ensembles: no label of the training split is used.

A class embedding is the normalised mean of its normalised prompt embeddings (CLIP's
ensembling); P(class) is the softmax over classes of logit_scale * cosine. An image is called
abnormal when P(abnormal) >= 0.5, i.e. the nearer class wins: a threshold tuned on labelled
validation data would make it no longer zero-shot.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import yaml
from scipy.special import softmax

from lumbarclip.errors import InputError

CLASS_NAMES: dict[str, int] = {"normal": 0, "abnormal": 1, "0": 0, "1": 1}


def load_prompts(path: str | Path) -> dict[int, list[str]]:
    """Read class prompts from YAML or JSON: {normal: [...], abnormal: [...]} (or keys 0 and 1)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: prompts file not found")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))  # YAML is a superset of JSON
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        raise InputError(f"{path}: cannot parse prompts ({err})") from None
    if not isinstance(data, dict):
        raise InputError(f"{path}: prompts must map normal/abnormal to lists of sentences")
    prompts: dict[int, list[str]] = {}
    for key, value in data.items():
        cls = CLASS_NAMES.get(str(key).strip().lower())
        if cls is None:
            raise InputError(f"{path}: unknown class {key!r}; use normal/abnormal or 0/1")
        items = [value] if isinstance(value, str) else value
        if not isinstance(items, list) or not items or not all(isinstance(p, str) and p.strip() for p in items):
            raise InputError(f"{path}: class {key!r} needs a non-empty list of sentences")
        prompts[cls] = [p.strip() for p in items]
    if set(prompts) != {0, 1}:
        raise InputError(f"{path}: prompts are needed for both normal and abnormal")
    return prompts


def default_prompts() -> dict[int, list[str]]:
    """The packaged prompt ensemble, written in the style of the report writer."""
    from lumbarclip.reports import class_prompts

    return class_prompts()


def class_embeddings(embed_texts: Callable[[list[str]], np.ndarray], prompts: dict[int, list[str]]) -> np.ndarray:
    """[n_classes, D] unit vectors, row c = normalised mean of class c's normalised prompts."""
    rows = []
    for cls in sorted(prompts):
        emb = np.asarray(embed_texts(prompts[cls]), dtype=np.float64)
        mean = (emb / np.linalg.norm(emb, axis=1, keepdims=True)).mean(axis=0)
        rows.append(mean / np.linalg.norm(mean))
    return np.stack(rows)


def zero_shot_proba(image_emb: np.ndarray, class_emb: np.ndarray, logit_scale: float) -> np.ndarray:
    """[N, n_classes] class probabilities: softmax of logit_scale * cosine similarity."""
    image_emb = np.asarray(image_emb, dtype=np.float64)
    image_emb = image_emb / np.linalg.norm(image_emb, axis=1, keepdims=True)
    return softmax(logit_scale * image_emb @ class_emb.T, axis=1)

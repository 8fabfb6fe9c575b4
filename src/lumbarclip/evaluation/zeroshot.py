"""Zero-shot classification with prompt ensembles: no label of the training split is used.

A class embedding is the normalised mean of its normalised prompt embeddings (CLIP's
ensembling); P(class) is the softmax over classes of logit_scale * cosine. An image is called
abnormal when P(abnormal) >= 0.5, i.e. the nearer class wins: a threshold tuned on labelled
validation data would make it no longer zero-shot.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import yaml

from lumbarclip.errors import InputError
from lumbarclip.inference import zero_shot_probs
from lumbarclip.models import LumbarCLIP

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
        if (
            not isinstance(items, list)
            or not items
            or not all(isinstance(p, str) and p.strip() for p in items)
        ):
            raise InputError(f"{path}: class {key!r} needs a non-empty list of sentences")
        prompts[cls] = [p.strip() for p in items]
    if set(prompts) != {0, 1}:
        raise InputError(f"{path}: prompts are needed for both normal and abnormal")
    return prompts


def default_prompts() -> dict[int, list[str]]:
    """The packaged prompt ensemble, written in the style of the report writer."""
    from lumbarclip.reports import class_prompts

    return class_prompts()


def zero_shot_abnormal_proba(model: LumbarCLIP, image_emb: np.ndarray, classes: torch.Tensor) -> np.ndarray:
    """P(abnormal) per image given the prompt-ensemble class embeddings (`class_embeddings`)."""
    with torch.no_grad():
        probs = zero_shot_probs(torch.as_tensor(image_emb), classes, model.logit_scale.detach().cpu())
    return probs[:, 1].numpy()

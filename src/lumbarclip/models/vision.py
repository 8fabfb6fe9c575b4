"""Vision towers: any timm model, one input channel, pooled features."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import timm
from torch import nn

from lumbarclip.errors import InputError


def create_vision_tower(
    name: str, pretrained: str | bool = False, in_chans: int = 1, img_size: int | None = None, **kwargs: Any
) -> nn.Module:
    """A timm backbone returning pooled features (`num_classes=0`); `.num_features` is its width.

    `pretrained`: False/"" trains from scratch, True/"timm" takes timm's weights by name (needs
    the network or a filled cache), a path loads a local weights file (.safetensors, .pth, .bin)
    through timm's `pretrained_cfg_overlay`, which adapts the first conv to `in_chans`.
    `img_size` reaches the models that take it (ViT, Swin), so position embeddings and windows
    fit the input; pretrained position embeddings are resampled by timm.
    """
    if name not in timm.list_models() and name not in timm.list_models(pretrained=True):
        raise InputError(f"unknown timm model {name!r}")
    overlay = None
    if isinstance(pretrained, str) and pretrained not in ("", "timm"):
        path = Path(pretrained)
        if not path.is_file():
            raise InputError(f"{path}: vision weights file not found")
        overlay = {"file": str(path)}
    build = dict(pretrained=bool(pretrained), pretrained_cfg_overlay=overlay, in_chans=in_chans, num_classes=0)
    try:
        return _create(name, img_size, build, kwargs)
    except RuntimeError as err:  # torch's load_state_dict: size mismatch, missing or unexpected keys
        if overlay is None:
            raise
        raise InputError(f"{pretrained}: these weights do not fit timm model {name!r} ({_mismatch(err)})") from None


def _mismatch(err: RuntimeError) -> str:
    """The first problem torch's `load_state_dict` lists, and how many there are."""
    problems = [line.strip() for line in str(err).splitlines()[1:] if line.strip()]
    if not problems:
        return str(err).splitlines()[0]
    first = re.sub(r"copying a param with shape torch.Size\((.*?)\) from checkpoint, the shape in current model is "
                   r"torch.Size\((.*?)\)", r"\1 in the file, \2 in the model", problems[0])
    return f"{len(problems)} problem(s), e.g. {first[:300]}"


def _create(name: str, img_size: int | None, build: dict, kwargs: dict) -> nn.Module:
    if img_size is not None and "img_size" not in kwargs:
        try:  # transformers (ViT, Swin...) are built for the input size; CNNs take any size
            return timm.create_model(name, img_size=img_size, **build, **kwargs)
        except TypeError as err:
            if "img_size" not in str(err):
                raise
    return timm.create_model(name, **build, **kwargs)

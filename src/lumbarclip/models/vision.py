"""Vision towers: any timm model, one input channel, pooled features."""

from __future__ import annotations

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
    if img_size is not None and "img_size" not in kwargs:
        try:  # transformers (ViT, Swin...) are built for the input size; CNNs take any size
            return timm.create_model(name, img_size=img_size, **build, **kwargs)
        except TypeError as err:
            if "img_size" not in str(err):
                raise
    return timm.create_model(name, **build, **kwargs)

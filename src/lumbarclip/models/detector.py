"""Disc detector for mid-sagittal slices: torchvision's anchor-free FCOS over a timm backbone
with a small feature pyramid, sized for a CPU.

One class (a disc, whatever its grade or level: levels are named afterwards by order from the
sacrum, `lumbarclip.data.discs`). The backbone is any timm model with `forward_intermediates`;
its stride-8/16/32 maps feed torchvision's `FeaturePyramidNetwork`, and FCOS's head (fewer
convolutions than its default four) predicts a box and a centre-ness at every cell. Boxes,
losses, matching and NMS are torchvision's. Input: the model input of `lumbarclip.data.transforms`
(one channel, mean 0.5 / std 0.25 already applied), so the detector shares the CLIP model's
preprocessing. Stored in the model folder by `lumbarclip.bundle` (JSON config and safetensors
weights, never pickle).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from torch import nn
from torchvision.models.detection import FCOS
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.fcos import FCOSHead
from torchvision.ops import FeaturePyramidNetwork

from lumbarclip.data.discs import in_column, order_from_the_sacrum, ranks_from_the_sacrum
from lumbarclip.models.vision import create_vision_tower



@dataclass
class DetectorConfig:
    backbone: str = "efficientnet_lite0"
    pretrained: str = "package"  # as model.vision_pretrained: "", "timm", "package" or a file
    backbone_kwargs: dict[str, object] = field(default_factory=dict)
    image_size: int = 256
    levels: tuple[int, ...] = (2, 3, 4)  # feature stages used (timm indices: strides 8, 16, 32)
    fpn_channels: int = 64
    head_convs: int = 2
    score_thresh: float = 0.3
    nms_thresh: float = 0.5
    max_discs: int = 12
    # the column rule (`lumbarclip.data.discs`), chosen on valid by `training.detector.choose_column_rule`;
    # 0 turns each off (folders written before it read as off)
    min_score: float = 0.0  # boxes scoring below are dropped (above score_thresh)
    column_tolerance: float = 0.0  # median box widths a centre may lie off the column (`in_column`)
    gap_ratio: float = 0.0  # a spacing this many times the median counts missed discs (`ranks_from_the_sacrum`)

    def __post_init__(self) -> None:
        self.levels = tuple(self.levels)
        if self.image_size < 32 or self.fpn_channels % 32 or self.head_convs < 1:
            raise ValueError("detector: image_size >= 32, fpn_channels a multiple of 32 (FCOS's group norm), head_convs >= 1")


class TimmPyramid(nn.Module):
    """timm backbone -> FPN: an `OrderedDict` of `fpn_channels`-wide maps, as torchvision's
    detection models take (`out_channels` says their width)."""

    def __init__(self, config: DetectorConfig) -> None:
        super().__init__()
        self.body = create_vision_tower(config.backbone, config.pretrained, in_chans=1, **config.backbone_kwargs)
        self.indices = list(config.levels)
        info = self.body.feature_info
        channels = [info[i]["num_chs"] for i in self.indices]
        self.fpn = FeaturePyramidNetwork(channels, config.fpn_channels)
        self.out_channels = config.fpn_channels

    def forward(self, x: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        maps = self.body.forward_intermediates(x, indices=self.indices, intermediates_only=True)
        return self.fpn(OrderedDict((str(i), m) for i, m in enumerate(maps)))


class DiscDetector(nn.Module):
    """FCOS over `TimmPyramid`; `forward(images)` in eval mode gives torchvision's detections
    ([{"boxes", "scores", "labels"}] in pixels of the model input), in train mode with targets
    its losses."""

    def __init__(self, config: DetectorConfig, pretrained: bool = True) -> None:
        super().__init__()
        self.config = config
        build = config if pretrained else DetectorConfig(**{**asdict(config), "pretrained": ""})
        backbone = TimmPyramid(build)
        # one anchor point per cell, as wide as the level's stride: FCOS sends a box to the level
        # whose band (4 to 8 strides) holds its longer side
        sizes = tuple((int(backbone.body.feature_info[i]["reduction"]),) for i in config.levels)
        anchors = AnchorGenerator(sizes, ((1.0,),) * len(sizes))
        head = FCOSHead(config.fpn_channels, 1, 2, num_convs=config.head_convs)
        self.fcos = FCOS(
            backbone, num_classes=2, min_size=config.image_size, max_size=config.image_size,
            image_mean=[0.0], image_std=[1.0],  # inputs arrive normalised by the shared preprocessing
            anchor_generator=anchors, head=head, score_thresh=config.score_thresh,
            nms_thresh=config.nms_thresh, detections_per_img=config.max_discs,
        )  # fmt: skip

    def forward(
        self, images: torch.Tensor, targets: list[dict[str, torch.Tensor]] | None = None
    ) -> dict[str, torch.Tensor] | list[dict[str, torch.Tensor]]:
        return self.fcos(list(images), targets)

    def set_config(self, config: DetectorConfig) -> None:
        """Take a config that differs in its post-processing only (thresholds, the column rule)."""
        self.config = config
        self.fcos.score_thresh, self.fcos.nms_thresh, self.fcos.detections_per_img = config.score_thresh, config.nms_thresh, config.max_discs

    def to_state(self) -> tuple[dict[str, object], dict[str, torch.Tensor]]:
        """(config document, weights) as the model folder stores them."""
        return asdict(self.config), {k: v.contiguous() for k, v in self.state_dict().items()}

    @classmethod
    def from_state(cls, config: dict, weights: dict[str, torch.Tensor]) -> DiscDetector:
        """Inverse of `to_state`; TypeError / ValueError / RuntimeError when they do not fit."""
        model = cls(DetectorConfig(**config), pretrained=False)
        model.load_state_dict(weights)
        return model.eval()


def column_of_discs(boxes: np.ndarray, scores: np.ndarray, config: DetectorConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A detector's raw boxes and scores under the config's column rule: (boxes, scores, ranks
    from the sacrum), lowest disc first."""
    keep = scores >= config.min_score
    boxes, scores = boxes[keep], scores[keep]
    keep = in_column(boxes, scores, config.column_tolerance)
    boxes, scores = boxes[keep], scores[keep]
    order = order_from_the_sacrum(boxes)
    boxes, scores = boxes[order], scores[order]
    return boxes, scores, ranks_from_the_sacrum(boxes, config.gap_ratio)

"""Saliency maps: which parts of an image move its embedding towards a direction in the shared
space (e.g. the abnormal-class text embedding), by class activation mapping (grad-cam library).

The CAM target is the cosine similarity between the image embedding and the direction. The
default is LayerCAM, and the target layer depends on the tower: a CNN's finest feature map (its
stem, timm `feature_info[0]`: at the demo's 64 px input the last stage is 2x2, too coarse to
point at a lesion; see bench/saliency.py and the README for every variant measured), a ViT's
last block input (its CLS token sees the patches only through that block's attention) and a
Swin's last stage, whose tokens are reshaped to a channels-first grid. Maps come back at the
model's input size, each scaled to [0, 1] by the library; a map with no positive evidence is
all 0.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from pytorch_grad_cam import (
    EigenGradCAM,
    GradCAM,
    GradCAMPlusPlus,
    HiResCAM,
    LayerCAM,
    XGradCAM,
)
from torch import nn

from lumbarclip.models import LumbarCLIP

#: CAM methods by name; all use the gradient of the target, so they follow the direction.
METHODS: dict[str, type] = {
    "gradcam": GradCAM,
    "gradcam++": GradCAMPlusPlus,
    "hirescam": HiResCAM,
    "xgradcam": XGradCAM,
    "layercam": LayerCAM,
    "eigengradcam": EigenGradCAM,
}
#: The default method, chosen by the pointing game on the demo model (bench/saliency.py; the
#: figures are in the README), and layers: () = the tower's default (`target_layers`).
DEFAULT_METHOD = "layercam"
DEFAULT_LAYERS: tuple[str, ...] = ()


class CosineTarget:
    """CAM target: cosine similarity of the model's output embedding to a fixed direction."""

    def __init__(self, direction: torch.Tensor) -> None:
        self.direction = direction

    def __call__(self, output: torch.Tensor) -> torch.Tensor:
        return F.cosine_similarity(output, self.direction.to(output), dim=-1)


class _ImageEmbedder(nn.Module):
    """Image -> unit embedding: the image side of LumbarCLIP as one module for the CAM hooks."""

    def __init__(self, model: LumbarCLIP) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model.encode_image(images)


def target_layers(visual: nn.Module, layers: Sequence[str] = ()) -> list[nn.Module]:
    """The modules whose activations the CAM weighs: named ones, or the tower's default."""
    if layers:
        return [visual.get_submodule(name) for name in layers]
    if _is_vit(visual):
        return [visual.blocks[-1].norm1]
    if getattr(visual, "output_fmt", "NCHW") == "NHWC":  # Swin: the last stage
        return [visual.get_submodule(visual.feature_info[-1]["module"])]
    return [visual.get_submodule(visual.feature_info[0]["module"])]  # CNN: the finest map


def _is_vit(visual: nn.Module) -> bool:
    return hasattr(visual, "blocks") and hasattr(visual, "num_prefix_tokens") and hasattr(visual, "patch_embed")


def reshape_transform(visual: nn.Module) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """Activations as [N, C, H, W]: ViT tokens drop their prefix (CLS) tokens and fold into the
    patch grid; Swin's channels-last maps are permuted; CNN maps pass as they are."""
    if _is_vit(visual):
        prefix = int(visual.num_prefix_tokens)
        height, width = visual.patch_embed.grid_size

        def tokens_to_grid(x: torch.Tensor) -> torch.Tensor:
            return x[:, prefix:, :].reshape(x.size(0), height, width, x.size(-1)).permute(0, 3, 1, 2)

        return tokens_to_grid
    if getattr(visual, "output_fmt", "NCHW") == "NHWC":
        return lambda x: x.permute(0, 3, 1, 2) if x.ndim == 4 else x
    return None


def saliency_maps(
    model: LumbarCLIP,
    images: torch.Tensor,
    target: torch.Tensor | np.ndarray,
    method: str = DEFAULT_METHOD,
    layers: Sequence[str] = DEFAULT_LAYERS,
    batch_size: int = 32,
) -> np.ndarray:
    """[N, S, S] maps in [0, 1] of where preprocessed images (`load_images`) [N, 1, S, S] raise
    the cosine similarity of their embedding to `target` [D] (e.g. the abnormal-class
    embedding from `class_embeddings`). Works under `torch.no_grad()` callers too; the weights
    get no gradient (the library clears any they held)."""
    if method not in METHODS:
        raise ValueError(f"unknown saliency method {method!r}; use one of {', '.join(METHODS)}")
    direction = torch.as_tensor(np.asarray(target, dtype=np.float32)).reshape(-1)
    if direction.numel() != model.config.embed_dim:
        raise ValueError(f"target has {direction.numel()} values; the model embeds in {model.config.embed_dim}")
    size = images.shape[-1]
    if len(images) == 0:
        return np.zeros((0, size, size), np.float32)
    model.eval()
    cam = METHODS[method](
        model=_ImageEmbedder(model),
        target_layers=target_layers(model.visual, layers),
        reshape_transform=reshape_transform(model.visual),
    )
    maps = []
    # gradients flow from the input, not into the weights: nothing accumulates on the model
    trainable = [p for p in model.parameters() if p.requires_grad]
    try:
        for p in trainable:
            p.requires_grad_(False)
        with torch.enable_grad():
            for start in range(0, len(images), batch_size):
                batch = images[start : start + batch_size].to(model.device, torch.float32)
                maps.append(cam(batch.requires_grad_(True), targets=[CosineTarget(direction)] * len(batch)))
    finally:
        cam.activations_and_grads.release()
        for p in trainable:
            p.requires_grad_(True)
    return np.clip(np.concatenate(maps).astype(np.float32), 0.0, 1.0)


def overlay(
    image: np.ndarray,
    cam: np.ndarray,
    boxes: Sequence[Sequence[float]] = (),
    region: np.ndarray | None = None,
    alpha: float = 0.45,
) -> np.ndarray:
    """[H, W, 3] uint8: the image in grey under the map in the jet colormap (resized to the
    image), with lesion boxes [x0, y0, x1, y1] and the outline of a lesion region in white."""
    from matplotlib import colormaps
    from scipy import ndimage

    image = np.asarray(image, dtype=np.float32)
    lo, hi = np.percentile(image, (1, 99))
    grey = np.clip((image - lo) / (hi - lo + 1e-6), 0, 1)[..., None].repeat(3, axis=-1)
    cam_t = torch.as_tensor(np.asarray(cam, np.float32))[None, None]
    side = max(image.shape)
    cam_t = F.interpolate(cam_t, size=(side, side), mode="bilinear", align_corners=False)[0, 0].numpy()
    top, left = (side - image.shape[0]) // 2, (side - image.shape[1]) // 2
    cam_img = cam_t[top : top + image.shape[0], left : left + image.shape[1]]
    heat = colormaps["jet"](np.clip(cam_img, 0, 1))[..., :3]
    rgb = (1 - alpha) * grey + alpha * heat
    for x0, y0, x1, y1 in boxes:
        x0, y0 = max(int(x0), 0), max(int(y0), 0)
        x1, y1 = min(int(x1), image.shape[1] - 1), min(int(y1), image.shape[0] - 1)
        rgb[y0 : y1 + 1, [x0, x1]] = 1.0
        rgb[[y0, y1], x0 : x1 + 1] = 1.0
    if region is not None:
        rgb[region & ~ndimage.binary_erosion(region)] = 1.0
    return np.rint(rgb * 255).astype(np.uint8)


def overlay_png(
    image: np.ndarray, cam: np.ndarray, boxes: Sequence[Sequence[float]] = (), region: np.ndarray | None = None
) -> bytes:
    """`overlay` encoded as PNG bytes (for pages that inline images)."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(overlay(image, cam, boxes, region)).save(buf, format="PNG")
    return buf.getvalue()


def save_overlay(
    image: np.ndarray, cam: np.ndarray, path: str | Path, boxes: Sequence[Sequence[float]] = ()
) -> Path:
    """Write `overlay` as a PNG file; returns its path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(overlay_png(image, cam, boxes))
    return path

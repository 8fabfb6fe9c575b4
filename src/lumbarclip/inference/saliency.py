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
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

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

from lumbarclip.errors import InputError
from lumbarclip.models import LumbarCLIP

if TYPE_CHECKING:
    from lumbarclip.data.manifest import ImageRecord
    from lumbarclip.evaluation.report import SaliencyGallery

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


# --- measuring saliency where the truth is known ----------------------------------------------


def peak(cam: np.ndarray, image_shape: tuple[int, int]) -> tuple[float, float]:
    """(x, y) of a map's maximum (the mean position of tied maxima) in the pixel coordinates of
    an image of `image_shape` (H, W), which the model saw padded to a square and resized (see
    `data.transforms.to_square_tensor`)."""
    rows, cols = np.nonzero(cam >= cam.max() - 1e-6)
    height, width = image_shape
    side = max(height, width)
    scale = side / cam.shape[0]
    x = (cols.mean() + 0.5) * scale - 0.5 - (side - width) // 2
    y = (rows.mean() + 0.5) * scale - 0.5 - (side - height) // 2
    return float(x), float(y)


def read_lesions(manifest: str | Path) -> dict[Path, dict[str, object]]:
    """Lesions of a synthetic cohort (`findings.jsonl` beside its manifest, written by
    `lumbarclip synth`): resolved image path -> `{"boxes": [{"kind", "box"}], "runs": [...]}`
    (see `synth.phantom.Lesions`), images with a visible lesion only. Raises InputError when
    the cohort has none (rendered before lesions were written)."""
    root = Path(manifest).parent
    path = root / "findings.jsonl"
    if not path.is_file():
        raise InputError(f"{path}: not found; lesions come with synthetic cohorts (lumbarclip synth)")
    lesions: dict[Path, dict[str, object]] = {}
    seen = False
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise InputError(f"{path}: line {number}: not JSON ({err.msg})") from None
        if "lesions" in record:
            seen = True
            for image, found in record["lesions"].items():
                if not isinstance(found, dict) or "boxes" not in found or "runs" not in found:
                    raise InputError(f"{path}: line {number}: lesions of {image} need boxes and runs")
                lesions[(root / image).resolve()] = found
    if not seen:
        raise InputError(f"{path}: no lesions; re-render the cohort with this version of lumbarclip synth")
    return lesions


def lesion_region(found: Mapping[str, object], shape: tuple[int, int], truth: str = "mask") -> np.ndarray:
    """[H, W] bool region of one image's lesions: the changed pixels (`mask`) or their boxes
    filled (`box`)."""
    from lumbarclip.synth.phantom import Lesions

    if truth == "mask":
        return Lesions.mask_from_runs(found["runs"], shape)
    if truth == "box":
        region = np.zeros(shape, dtype=bool)
        for item in found["boxes"]:
            x0, y0, x1, y1 = item["box"]
            region[y0 : y1 + 1, x0 : x1 + 1] = True
        return region
    raise ValueError(f"truth must be mask or box; got {truth!r}")


@dataclass(frozen=True)
class PointingGame:
    """Hit rates of the pointing game on the same images: the maps', a centre prior's (the
    peak at the image centre) and a random map's (peak at a uniformly random pixel, averaged
    over seeded draws)."""

    n_images: int
    margin: float
    hit_rate: float
    centre: float
    random: float
    hits: np.ndarray  # [N] bool, per image
    centre_hits: np.ndarray  # [N] bool, the centre prior's

    @property
    def best_baseline(self) -> float:
        return max(self.centre, self.random)

    def to_dict(self) -> dict[str, float | int]:
        ratio = self.hit_rate / self.best_baseline if self.best_baseline else float("inf")
        return {
            "n_images": self.n_images,
            "margin_px": self.margin,
            "hit_rate": self.hit_rate,
            "centre_baseline": self.centre,
            "random_baseline": self.random,
            "ratio_to_best_baseline": ratio,
            # the images the centre prior misses: there only a map that looks can hit
            "n_centre_misses": int((~self.centre_hits).sum()),
            "hit_rate_where_centre_misses": float(self.hits[~self.centre_hits].mean()) if (~self.centre_hits).any() else None,
        }


def dilate(region: np.ndarray, margin: float) -> np.ndarray:
    """Pixels within `margin` pixels (Euclidean) of a region."""
    if margin <= 0:
        return region
    from scipy import ndimage

    r = int(np.floor(margin))
    yy, xx = np.mgrid[-r : r + 1, -r : r + 1]
    return ndimage.binary_dilation(region, structure=(yy**2 + xx**2) <= margin**2)


def _hit(region: np.ndarray, point: tuple[float, float]) -> bool:
    row = min(max(int(np.rint(point[1])), 0), region.shape[0] - 1)
    col = min(max(int(np.rint(point[0])), 0), region.shape[1] - 1)
    return bool(region[row, col])


def pointing_game(
    cams: np.ndarray, regions: Sequence[np.ndarray], margin: float = 0.0, seed: int = 0, random_draws: int = 100
) -> PointingGame:
    """Score maps [N, S, S] against each image's lesion region [H, W] (saved-image pixels): a
    hit when the map's peak lies within `margin` pixels of the region."""
    if not len(cams):
        raise ValueError("the pointing game needs at least one image")
    grown = [dilate(r, margin) for r in regions]
    hits = np.array([_hit(g, peak(c, g.shape)) for c, g in zip(cams, grown)])
    centre = np.array([_hit(g, ((g.shape[1] - 1) / 2, (g.shape[0] - 1) / 2)) for g in grown])
    rng = np.random.default_rng(seed)
    random = np.mean([g[rng.integers(0, g.shape[0]), rng.integers(0, g.shape[1])] for _ in range(random_draws) for g in grown])
    return PointingGame(len(cams), margin, float(hits.mean()), float(centre.mean()), float(random), hits, centre)


#: Lesion dilation of the pointing game in saved-image pixels (bench/saliency.py --margin).
DEFAULT_MARGIN_PX = 4.0


def saliency_gallery(
    model: LumbarCLIP,
    records: Sequence[ImageRecord],
    images: torch.Tensor,
    target: torch.Tensor | np.ndarray,
    manifest: str | Path | None = None,
    size: int = 8,
    margin: float = DEFAULT_MARGIN_PX,
    seed: int = 0,
    target_name: str = "the abnormal-minus-normal class embedding",
) -> SaliencyGallery | None:
    """The report's saliency section for a split: overlays of `size` abnormal images spread over
    the split and, when the manifest's cohort has lesions (`read_lesions`), the pointing game on
    every abnormal image with a visible lesion, whose outline the overlays show. None when the
    split has no abnormal image."""
    from lumbarclip.data.imageio import load_image
    from lumbarclip.evaluation.report import SaliencyGallery

    lesions: dict[Path, dict[str, object]] = {}
    if manifest is not None:
        try:
            lesions = read_lesions(manifest)
        except InputError:
            lesions = {}
    chosen = [i for i, r in enumerate(records) if r.label == 1 and (not lesions or r.image_path.resolve() in lesions)]
    if not chosen:
        return None
    shown = sorted({chosen[int(k)] for k in np.linspace(0, len(chosen) - 1, min(size, len(chosen)))})
    scored = chosen if lesions else shown
    cams = dict(zip(scored, saliency_maps(model, images[scored], target)))
    pixels = {i: load_image(records[i].image_path) for i in dict.fromkeys([*scored, *shown])}  # each read once
    regions: dict[int, np.ndarray] = {}
    game = None
    if lesions:
        for i in scored:
            regions[i] = lesion_region(lesions[records[i].image_path.resolve()], pixels[i].shape)
        game = pointing_game(np.stack([cams[i] for i in scored]), [regions[i] for i in scored], margin, seed)
        hit = dict(zip(scored, game.hits))
    overlays = []
    for i in shown:
        rec = records[i]
        where = " ".join(x for x in (rec.level, rec.sequence) if x)
        caption = f"{rec.patient_id} {where}"
        if lesions:
            caption += f": {'hit' if hit[i] else 'miss'}"
        overlays.append((overlay_png(pixels[i], cams[i], region=regions.get(i)), caption))
    description = (
        f"{DEFAULT_METHOD} of each image's embedding towards {target_name}; "
        "warm colours raise the similarity."
        + (" White outline: pixels the synthetic findings visibly change." if lesions else "")
    )
    return SaliencyGallery(overlays, description, game.to_dict() if game else {})

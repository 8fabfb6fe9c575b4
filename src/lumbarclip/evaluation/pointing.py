"""Does a saliency map point at the lesion? The pointing game on synthetic cohorts, whose
`findings.jsonl` records the pixels each visible lesion changes (`data.lesions`), against a
centre prior and a random map, and the report's saliency gallery built with it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from lumbarclip.data.imageio import load_image
from lumbarclip.data.lesions import ImageLesions, read_lesions
from lumbarclip.data.manifest import ImageRecord
from lumbarclip.errors import InputError
from lumbarclip.evaluation.report import SaliencyGallery
from lumbarclip.inference.saliency import DEFAULT_METHOD, overlay_png, saliency_maps
from lumbarclip.models import LumbarCLIP


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
    lesions: dict[Path, ImageLesions] = {}
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
            regions[i] = lesions[records[i].image_path.resolve()].region(pixels[i].shape)
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

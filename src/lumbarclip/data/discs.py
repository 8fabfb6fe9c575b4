"""Disc boxes on a mid-sagittal slice: grouping a slice's boxes into discs and naming each
disc's level by its order from the sacrum up.

The rule: the lowest disc in view is L5-S1, the next L4-L5, and so on to L1-L2; discs above
it are thoracic (T12-L1, T11-T12, ...). Boxes of one disc (a disc may carry several
overlapping class boxes, e.g. degenerated and bulging) are merged when their vertical extents
overlap by more than half the smaller height. A canal box (spinal stenosis sits behind the
disc, not on it) is attached to the disc whose vertical centre is nearest.

What the rule cannot see, it does not guess: a transitional vertebra or a disc missing from
the labels shifts every name above it; a thoracic-class box at a lumbar position is counted
(`DiscSet.thoracic_at_lumbar`) so a user sees where the order and the classes disagree.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # manifest reads the discs column with this module
    import torch

    from lumbarclip.data.manifest import ImageRecord

LUMBAR_FROM_SACRUM: tuple[str, ...] = ("L5-S1", "L4-L5", "L3-L4", "L2-L3", "L1-L2")
THORACIC_FROM_LUMBAR: tuple[str, ...] = tuple(
    ["T12-L1"] + [f"T{n - 1}-T{n}" for n in range(12, 1, -1)]
)
#: The levels the paper's data grades (and the naming target of the disc layer).
NAMED_LEVELS: tuple[str, ...] = ("L3-L4", "L4-L5", "L5-S1")
#: YOLOspine's six box classes (its data.yaml), as short names.
BOX_CLASSES: tuple[str, ...] = ("DDD", "normal", "stenosis", "spondylolisthesis", "bulge", "thoracic_bulge")
#: Classes drawn around the canal behind a disc rather than around the disc itself.
CANAL_CLASSES: frozenset[str] = frozenset({"stenosis"})


@dataclass(frozen=True)
class Box:
    """One labelled box in pixels of the image, corners (x0, y0, x1, y1)."""

    cls: str
    x0: float
    y0: float
    x1: float
    y1: float

    @property
    def yc(self) -> float:
        return (self.y0 + self.y1) / 2

    @property
    def height(self) -> float:
        return self.y1 - self.y0


@dataclass
class Disc:
    """One disc: its level name, the union box of its disc-class boxes, the classes it bears."""

    level: str
    box_xyxy: list[float]
    classes: list[str]
    thoracic: bool
    pfirrmann: int | None = None

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


@dataclass
class DiscSet:
    discs: list[Disc] = field(default_factory=list)  # from the sacrum up
    thoracic_at_lumbar: int = 0  # thoracic-bulge boxes on a disc named lumbar

    def to_json(self) -> str:
        return json.dumps([d.to_dict() for d in self.discs], separators=(",", ":"))


def level_name(rank: int) -> str:
    """Level of the disc `rank` places above the lowest one (0 = L5-S1)."""
    if rank < 0:
        raise ValueError("rank must be >= 0")
    if rank < len(LUMBAR_FROM_SACRUM):
        return LUMBAR_FROM_SACRUM[rank]
    rank -= len(LUMBAR_FROM_SACRUM)
    return THORACIC_FROM_LUMBAR[rank] if rank < len(THORACIC_FROM_LUMBAR) else f"thoracic+{rank}"


def order_from_the_sacrum(boxes: np.ndarray) -> np.ndarray:
    """Indices of boxes [N, 4] (x0, y0, x1, y1) by their vertical centres, lowest in the image
    first (the rank `level_name` reads)."""
    boxes = np.asarray(boxes)
    return np.argsort(-(boxes[:, 1] + boxes[:, 3]) / 2, kind="stable")


def ranks_from_the_sacrum(boxes: np.ndarray, gap_ratio: float = 0.0) -> np.ndarray:
    """Rank of each box [N, 4] (input order) from the lowest disc (0 = L5-S1). With `gap_ratio`
    > 0, a spacing between neighbouring centres above `gap_ratio` times the median spacing
    counts the discs missed inside it (round(spacing / median) - 1), so the names above a
    missed disc stay right; 0 ranks the boxes one after another."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    order = order_from_the_sacrum(boxes)
    steps = np.ones(len(boxes), dtype=np.int64)
    if len(boxes):
        steps[0] = 0
    if gap_ratio > 0 and len(boxes) >= 3:
        yc = (boxes[order, 1] + boxes[order, 3]) / 2
        spacing = yc[:-1] - yc[1:]
        typical = float(np.median(spacing))
        if typical > 0:
            wide = spacing > gap_ratio * typical
            steps[1:] = np.where(wide, np.maximum(1, np.rint(spacing / typical)), 1).astype(np.int64)
    ranks = np.empty(len(boxes), dtype=np.int64)
    ranks[order] = np.cumsum(steps)
    return ranks


def names_from_the_sacrum(boxes: np.ndarray, gap_ratio: float = 0.0) -> list[str]:
    """Level names of boxes [N, 4] by the order of their vertical centres from the bottom
    (`ranks_from_the_sacrum`)."""
    return [level_name(int(r)) for r in ranks_from_the_sacrum(boxes, gap_ratio)]


def in_column(boxes: np.ndarray, scores: np.ndarray, tolerance: float, seed: int = 0) -> np.ndarray:
    """Which of a detector's boxes [N, 4] form the column of discs: centres within `tolerance`
    median box widths of the column, a curve x = f(y) of degree 2 (the lordosis) fitted by
    scikit-learn's RANSAC; then one box per height (of two kept boxes overlapping vertically by
    more than half the smaller height, the higher score stays). A box off the column (posterior
    elements, a vessel) or a second box on one disc would shift every name above it. Fewer than
    4 boxes are too few to tell the column from an outlier and skip the curve. `tolerance` 0
    keeps every box."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    keep = np.ones(len(boxes), dtype=bool)
    if tolerance <= 0 or len(boxes) < 2:
        return keep
    if len(boxes) >= 4:
        from sklearn.linear_model import LinearRegression, RANSACRegressor
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import PolynomialFeatures

        ransac = RANSACRegressor(
            make_pipeline(PolynomialFeatures(2), LinearRegression()), min_samples=3,
            residual_threshold=tolerance * float(np.median(boxes[:, 2] - boxes[:, 0])), max_trials=50, random_state=seed,
        )  # fmt: skip
        try:
            ransac.fit(((boxes[:, 1] + boxes[:, 3]) / 2)[:, None], (boxes[:, 0] + boxes[:, 2]) / 2)
            keep = ransac.inlier_mask_.copy()
        except ValueError:  # no curve found a consensus: keep the boxes rather than guess
            pass
    heights = boxes[:, 3] - boxes[:, 1]
    for i in np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable"):
        if keep[i]:
            inter = np.minimum(boxes[i, 3], boxes[:, 3]) - np.maximum(boxes[i, 1], boxes[:, 1])
            same = inter > 0.5 * np.minimum(heights[i], heights)
            same[i] = False
            keep &= ~same
    return keep


def _overlaps(a: Box, b: Box) -> bool:
    inter = min(a.y1, b.y1) - max(a.y0, b.y0)
    return inter > 0.5 * min(a.height, b.height)


def group_discs(boxes: list[Box]) -> DiscSet:
    """Merge a slice's boxes into discs and name them from the sacrum up (see module doc)."""
    disc_boxes = sorted((b for b in boxes if b.cls not in CANAL_CLASSES), key=lambda b: -b.yc)
    groups: list[list[Box]] = []
    for box in disc_boxes:
        home = next((g for g in groups if any(_overlaps(box, other) for other in g)), None)
        if home is None:
            groups.append([box])
        else:
            home.append(box)
    groups.sort(key=lambda g: -sum(b.yc for b in g) / len(g))
    for canal in (b for b in boxes if b.cls in CANAL_CLASSES):
        if groups:
            nearest = min(groups, key=lambda g: abs(sum(b.yc for b in g) / len(g) - canal.yc))
            nearest.append(canal)
    result = DiscSet()
    for rank, group in enumerate(groups):
        own = [b for b in group if b.cls not in CANAL_CLASSES]
        level = level_name(rank)
        thoracic = rank >= len(LUMBAR_FROM_SACRUM)
        classes = sorted({b.cls for b in group})
        if not thoracic and "thoracic_bulge" in classes:
            result.thoracic_at_lumbar += 1
        box = [
            round(min(b.x0 for b in own), 1), round(min(b.y0 for b in own), 1),
            round(max(b.x1 for b in own), 1), round(max(b.y1 for b in own), 1),
        ]  # fmt: skip
        result.discs.append(Disc(level=level, box_xyxy=box, classes=classes, thoracic=thoracic))
    return result


def discs_from_json(text: str) -> list[Disc]:
    """The `discs` manifest column back as `Disc`s; '' is no discs."""
    if not text:
        return []
    items = json.loads(text)
    if not isinstance(items, list) or not all(isinstance(item, dict) for item in items):
        raise ValueError("expected a JSON list of objects")
    discs = [Disc(**item) for item in items]
    for disc in discs:
        box = disc.box_xyxy
        if (
            not isinstance(box, list) or len(box) != 4
            or not all(isinstance(v, (int, float)) and math.isfinite(v) for v in box)
            or box[2] <= box[0] or box[3] <= box[1]
        ):  # fmt: skip
            raise ValueError(f"disc {disc.level}: box_xyxy must be 4 finite numbers with x1 > x0 and y1 > y0")
        if disc.pfirrmann is not None and disc.pfirrmann not in (1, 2, 3, 4, 5):
            raise ValueError(f"disc {disc.level}: pfirrmann must be 1-5 or null")
    return discs


def labelled_slice(record: ImageRecord, size: int) -> tuple[torch.Tensor, np.ndarray, list[Disc]] | None:
    """A slice with labelled discs as the disc models read it: the model input [1, size, size]
    (the shared preprocessing, normalised), its discs' boxes in model-input pixels [K, 4], and
    the discs; None when the record has no discs (nothing is read)."""
    from lumbarclip.data.imageio import load_image
    from lumbarclip.data.transforms import MEAN, STD, square_boxes, to_square_tensor

    discs = discs_from_json(record.discs)
    if not discs:
        return None
    pixels = load_image(record.image_path)
    boxes = square_boxes(np.array([d.box_xyxy for d in discs]), pixels.shape[:2], size)
    return (to_square_tensor(pixels, size) - MEAN) / STD, boxes, discs

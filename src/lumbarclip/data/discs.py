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

import numpy as np

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


def names_from_the_sacrum(boxes: np.ndarray) -> list[str]:
    """Level names of boxes [N, 4] by the order of their vertical centres from the bottom."""
    names = [""] * len(boxes)
    for rank, i in enumerate(order_from_the_sacrum(boxes)):
        names[int(i)] = level_name(rank)
    return names


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

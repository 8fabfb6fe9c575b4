"""Counting a disc detector's boxes against the labelled ones: one-to-one matches at IoU >= 0.5
(torchvision's IoU, scipy's assignment) and, for matched discs, the level each is named by its
order from the sacrum against its labelled level. Training picks the detector's epoch by the
valid F1 and the disc figures report the same counts."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from torchvision.ops import box_iou

from lumbarclip.data.discs import NAMED_LEVELS, names_from_the_sacrum


def match_boxes(pred: np.ndarray, truth: np.ndarray, iou: float = 0.5) -> list[tuple[int, int]]:
    """One-to-one pairs (pred index, truth index) with IoU >= `iou`, maximising the total IoU."""
    if len(pred) == 0 or len(truth) == 0:
        return []
    overlap = box_iou(torch.as_tensor(pred, dtype=torch.float64), torch.as_tensor(truth, dtype=torch.float64)).numpy()
    rows, cols = linear_sum_assignment(-overlap)
    return [(int(r), int(c)) for r, c in zip(rows, cols) if overlap[r, c] >= iou]


@dataclass
class DetectionScore:
    """Counts over slices; `naming` holds (truth level, predicted level) of matched discs."""

    tp: int = 0
    fp: int = 0
    fn: int = 0
    naming: list[tuple[str, str]] = field(default_factory=list)

    def add(
        self, pred: np.ndarray, truth: np.ndarray, truth_levels: list[str], iou: float = 0.5, names: list[str] | None = None
    ) -> None:
        """Count one slice; `names` are the predicted boxes' levels (default: by order from the sacrum)."""
        pairs = match_boxes(pred, truth, iou)
        self.tp += len(pairs)
        self.fp += len(pred) - len(pairs)
        self.fn += len(truth) - len(pairs)
        names = names if names is not None else names_from_the_sacrum(pred) if len(pred) else []
        self.naming += [(truth_levels[t], names[p]) for p, t in pairs]

    @property
    def recall(self) -> float:
        return self.tp / (self.tp + self.fn) if self.tp + self.fn else float("nan")

    @property
    def precision(self) -> float:
        return self.tp / (self.tp + self.fp) if self.tp + self.fp else float("nan")

    @property
    def f1(self) -> float:
        r, p = self.recall, self.precision
        return 2 * r * p / (r + p) if r + p else 0.0

    def naming_accuracy(self, levels: tuple[str, ...] = NAMED_LEVELS) -> dict[str, float | None]:
        """Per level (and over them all): the share of matched discs of that level named right."""
        out: dict[str, float | None] = {}
        for level in (*levels, "all"):
            pairs = [(t, p) for t, p in self.naming if t == level or (level == "all" and t in levels)]
            out[level] = sum(t == p for t, p in pairs) / len(pairs) if pairs else None
        return out

    def to_dict(self) -> dict[str, object]:
        return {
            "tp": self.tp, "fp": self.fp, "fn": self.fn,
            "recall": self.recall, "precision": self.precision, "f1": self.f1,
            "naming_accuracy": self.naming_accuracy(),
            "naming_n": {lv: sum(t == lv for t, _ in self.naming) for lv in NAMED_LEVELS},
        }  # fmt: skip

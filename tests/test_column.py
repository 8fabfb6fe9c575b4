"""The column rule between a detector's boxes and the level names: boxes off the column of
discs and second boxes on one disc are dropped, wide gaps count missed discs, and the rule is
chosen on valid from the detector's raw boxes. Expected names come from the hand-built column."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from _cohort import slice_row, write_manifest
from PIL import Image

from lumbarclip.data.discs import LUMBAR_FROM_SACRUM, in_column, names_from_the_sacrum, ranks_from_the_sacrum
from lumbarclip.models.detector import DetectorConfig, column_of_discs
from lumbarclip.training.detector import choose_column_rule, score_detector

LEVELS = (*LUMBAR_FROM_SACRUM, "T12-L1")


def _column(n: int = 6, spacing: float = 30.0) -> np.ndarray:
    """n disc boxes from the bottom up along a lordotic curve (x shifts with height squared)."""
    out = []
    for rank in range(n):
        yc = 230.0 - rank * spacing
        xc = 100.0 + 0.002 * (yc - 150.0) ** 2
        out.append([xc - 20, yc - 5, xc + 20, yc + 5])
    return np.array(out)


def test_a_box_off_the_column_is_dropped_and_the_names_stay_right():
    column = _column()
    stray = np.array([[180.0, 170.0, 220.0, 180.0]])  # posterior elements, between two discs' heights
    boxes = np.concatenate([column, stray])
    scores = np.full(len(boxes), 0.9)
    keep = in_column(boxes, scores, tolerance=1.0)
    assert keep.tolist() == [True] * 6 + [False]
    assert names_from_the_sacrum(boxes[keep]) == list(LEVELS)
    # kept, the stray (between L4-L5 and L3-L4) takes L3-L4's name and shifts every name above it
    assert names_from_the_sacrum(boxes) == ["L5-S1", "L4-L5", "L2-L3", "L1-L2", "T12-L1", "T11-T12", "L3-L4"]
    assert in_column(boxes, scores, tolerance=0.0).all()  # 0: off


def test_a_second_box_on_one_disc_keeps_the_higher_score():
    column = _column(5)
    twin = column[2] + np.array([2.0, 3.0, 2.0, 3.0])  # the same disc found twice, higher score than the first
    boxes = np.concatenate([column, twin[None]])
    scores = np.array([0.9, 0.9, 0.6, 0.9, 0.9, 0.8])
    keep = in_column(boxes, scores, tolerance=1.0)
    assert keep.tolist() == [True, True, False, True, True, True]
    assert names_from_the_sacrum(boxes[keep]) == ["L5-S1", "L4-L5", "L2-L3", "L1-L2", "L3-L4"]


def test_few_boxes_skip_the_curve():
    column = _column(3)
    far = np.array([[300.0, 100.0, 340.0, 110.0]])
    boxes = np.concatenate([column, far])[1:]  # three boxes: too few to call one an outlier
    assert in_column(boxes, np.ones(3), tolerance=0.5).all()


def test_a_wide_gap_counts_the_missed_disc():
    column = np.delete(_column(6), 1, axis=0)  # L4-L5 missed
    assert names_from_the_sacrum(column) == ["L5-S1", "L4-L5", "L3-L4", "L2-L3", "L1-L2"]  # every name above shifts
    assert names_from_the_sacrum(column, gap_ratio=1.6) == ["L5-S1", "L3-L4", "L2-L3", "L1-L2", "T12-L1"]
    assert ranks_from_the_sacrum(column[::-1], gap_ratio=1.6).tolist() == [5, 4, 3, 2, 0]  # input order kept
    assert names_from_the_sacrum(_column(6), gap_ratio=1.6) == list(LEVELS)  # no gap: the plain order


def test_column_of_discs_applies_min_score_then_orders_from_the_bottom():
    boxes = _column(5)[::-1].copy()
    scores = np.array([0.9, 0.2, 0.9, 0.9, 0.9])  # the L2-L3 box (second from the top) is weak
    config = DetectorConfig(backbone="test_efficientnet", pretrained="", min_score=0.4)
    kept, kept_scores, ranks = column_of_discs(boxes, scores, config)
    assert len(kept) == 4 and ranks.tolist() == [0, 1, 2, 3]
    assert (kept[:, 1] == np.sort(boxes[[0, 2, 3, 4], 1])[::-1]).all()


class _Fixed(torch.nn.Module):
    """A detector stand-in: the labelled boxes of each valid slice plus one stray box."""

    def __init__(self, boxes: list[np.ndarray], config: DetectorConfig) -> None:
        super().__init__()
        self.boxes, self.config, self.calls = boxes, config, 0
        self.fcos = type("Thresholds", (), {"score_thresh": config.score_thresh})()

    def forward(self, images):
        out = self.boxes[self.calls % len(self.boxes)]
        self.calls += 1
        return [{"boxes": torch.as_tensor(out, dtype=torch.float32), "scores": torch.full((len(out),), 0.9)}]


def _manifest(root, column: np.ndarray, size: int) -> str:
    (root / "img").mkdir(parents=True)
    rows = []
    for p, split in enumerate(["train", "valid", "valid", "test"]):
        path = root / "img" / f"p{p}.png"
        Image.fromarray(np.zeros((size, size), dtype=np.uint8)).save(path)
        discs = [{"level": LEVELS[r], "box_xyxy": [float(v) for v in column[r]], "classes": ["normal"], "thoracic": r > 4,
                  "pfirrmann": None} for r in range(len(column))]  # fmt: skip
        rows.append(slice_row(path, p, split, discs))
    return write_manifest(root / "manifest.csv", rows)


def test_the_rule_is_chosen_on_valid_and_scored_with_it(tmp_path):
    column = _column(6)
    manifest = _manifest(tmp_path, column, 256)
    stray = np.concatenate([column, [[180.0, 170.0, 220.0, 180.0]]])
    config = DetectorConfig(backbone="test_efficientnet", pretrained="", image_size=256)
    chosen, rows = choose_column_rule(_Fixed([stray], config), manifest, grid={"column_tolerance": (0.0, 1.0), "gap_ratio": (0.0,)})
    assert chosen.column_tolerance == 1.0
    off, on = rows
    assert (off["precision"], on["precision"]) == (pytest.approx(6 / 7), 1.0)
    assert on["naming"] == 1.0 and off["naming"] == pytest.approx(2 / 3)  # of the three named levels, L3-L4 is shifted
    score = score_detector(_Fixed([stray], chosen), manifest, "test")
    assert (score.tp, score.fp, score.fn) == (6, 0, 0) and score.naming_accuracy()["all"] == 1.0



def test_a_lower_min_score_lowers_the_detectors_own_threshold():
    from dataclasses import replace

    from lumbarclip.models.detector import DiscDetector

    tiny = DetectorConfig(backbone="test_efficientnet", pretrained="", image_size=64, fpn_channels=32, head_convs=1)
    detector = DiscDetector(tiny)
    detector.set_config(replace(tiny, score_thresh=0.15, min_score=0.15, column_tolerance=1.0))
    assert detector.fcos.score_thresh == 0.15 and detector.config.column_tolerance == 1.0

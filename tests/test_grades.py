"""The disc grader: linear models over disc features, a patient's grade from the mean of its
slices' probabilities, the valid gate, and save/load; figures checked against sklearn directly."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from sklearn.metrics import cohen_kappa_score

from lumbarclip.bundle.grader import DISC_CLASSES, DiscGrader
from lumbarclip.evaluation.grades import (
    DiscTable,
    class_scores,
    fit,
    gate_on_valid,
    patient_grades,
    pfirrmann_scores,
)
from lumbarclip.inference.grades import disc_features


def _table(n_patients: int, seed: int, noise: float = 0.3) -> DiscTable:
    """Two slices (T1, T2) per patient, three graded levels: features carry the grade and the
    'bulge' class, plus noise."""
    rng = np.random.default_rng(seed)
    feats, grades, classes, levels, patients = [], [], [], [], []
    for p in range(n_patients):
        for level in ("L3-L4", "L4-L5", "L5-S1"):
            grade = int(rng.integers(1, 6))
            bulge = float(grade >= 4)
            for _ in range(2):
                feats.append([grade, bulge, *rng.normal(0, 1, 3)] + rng.normal(0, noise, 5))
                grades.append(grade)
                classes.append([0.0, bulge, 0.0, 0.0])
                levels.append(level)
                patients.append(f"{p:04d}")
    return DiscTable(np.array(feats), np.array(grades), np.array(classes), np.array(levels), np.array(patients))


def test_grader_learns_grades_and_gates_on_valid(tmp_path):
    train, valid, test = _table(60, 0), _table(20, 1), _table(20, 2)
    grader = fit(train, "crop", 64)
    gate_on_valid(grader, valid)
    assert all(grader.validated_level(lv) for lv in ("L3-L4", "L4-L5", "L5-S1"))
    assert grader.validated_class("bulge") and not grader.validated_class("stenosis")  # no positives: never shown
    scores = pfirrmann_scores(grader, test)
    truth, pred = patient_grades(grader, test)["L4-L5"]
    assert len(truth) == 20  # one grade per patient, its two slices averaged
    assert scores["L4-L5"]["kappa_linear"] == pytest.approx(cohen_kappa_score(truth, pred, weights="linear", labels=[1, 2, 3, 4, 5]))
    assert scores["all"]["accuracy"] >= 0.75 and scores["all"]["within_one"] == 1.0 and scores["all"]["n"] == 60
    assert sum(map(sum, scores["all"]["confusion_matrix"])) == 60
    assert class_scores(grader, test)["bulge"]["auroc"] >= 0.95
    doc, arrays = grader.to_state()
    again = DiscGrader.from_state(json.loads(json.dumps(doc)), arrays)
    assert np.allclose(again.pfirrmann_proba(test.features), grader.pfirrmann_proba(test.features))
    assert again.gate == grader.gate and again.input_size == 64


def test_crop_features_are_the_box_resampled():
    image = torch.zeros(1, 40, 80)
    image[:, 10:20, 20:60] = 1.0  # a bright disc
    feats = disc_features("crop", None, image, np.array([[20.0, 10.0, 60.0, 20.0], [0.0, 30.0, 10.0, 35.0]]))
    assert feats.shape == (2, 16 * 32)
    inner = feats[0].reshape(16, 32)[5:11, 9:23]  # the box itself inside its 25% margin
    assert inner.min() > 0.9 and feats[1].max() == 0.0
    assert set(DISC_CLASSES) == {"DDD", "bulge", "stenosis", "spondylolisthesis"}

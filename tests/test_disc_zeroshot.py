"""Per-level zero-shot on discs: patient scores averaged over slices, truth from the report's
findings at that level, AUROC against sklearn on the same numbers; crops and level sentences."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from lumbarclip.evaluation.disc_zeroshot import GROUPS, _crop, level_sentences, zero_shot_auroc
from lumbarclip.findings import LEVEL_KINDS, LEVELS
from lumbarclip.inference.findings import FindingClassifier
from lumbarclip.reports import parse_report


def _classifier(dim: int = 4) -> FindingClassifier:
    """Every kind's negative prompt along axis 0 and positive along axis 1, at every level."""
    pair = torch.zeros(len(LEVEL_KINDS), 2, dim)
    pair[:, 0, 0], pair[:, 1, 1] = 1.0, 1.0
    return FindingClassifier(tuple(LEVEL_KINDS), {lv: pair.clone() for lv in (*LEVELS, "")}, 10.0)


def test_patient_auroc_at_each_level_from_the_report():
    reports = {"a": "Disc bulge at L4-L5.", "b": "No disc herniation.", "c": "Diffuse disc bulge at L4/L5 level.", "d": "Normal study."}
    findings = {p: parse_report(t) for p, t in reports.items()}
    rng = np.random.default_rng(0)
    keys, emb, fnd = [], [], []
    for pid in reports:
        for _ in range(2):  # T1 and T2
            lean = rng.random()
            keys.append((pid, "L4-L5"))
            emb.append([1 - lean, lean, 0, 0])
            fnd.append(findings[pid])
    emb = np.array(emb) / np.linalg.norm(emb, axis=1, keepdims=True)
    out = zero_shot_auroc(_classifier(), emb, keys, fnd)
    score = torch.tensor(emb, dtype=torch.float32) @ torch.tensor([[1.0, 0, 0, 0], [0, 1.0, 0, 0]]).T
    p = (10 * score).softmax(-1)[:, 1].numpy()
    patient = [p[[i for i, k in enumerate(keys) if k[0] == pid]].mean() for pid in reports]
    assert out["L4-L5"]["bulge or herniation"] == pytest.approx(roc_auc_score([1, 0, 1, 0], patient))
    assert out["L3-L4"]["bulge or herniation"] is None and out["L4-L5"]["degeneration"] is None  # one class only
    assert set(GROUPS) == set(out["L4-L5"])


def test_crop_keeps_the_canal_and_level_sentences_name_the_level():
    pixels = np.arange(100 * 100, dtype=float).reshape(100, 100)
    crop = _crop(pixels, [40.0, 50.0, 60.0, 56.0])  # 20 x 6 box: half its width and height around it, at least a quarter width high
    assert crop.shape == (6 + 2 * 5 + 1, 20 + 2 * 10 + 1)
    assert level_sentences("Bulge at L4/L5. No stenosis. L5-S1 is normal.", "L4-L5") == ["Bulge at L4/L5"]

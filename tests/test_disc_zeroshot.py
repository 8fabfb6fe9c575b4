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


def test_level_discs_pair_each_disc_with_its_levels_sentences(tmp_path):
    """Every disc at a graded level gets the grader's features of its box, its report's findings
    at that level and the sentences naming it ('' when none does); the aligned view is unit-norm."""
    import csv
    import json

    from PIL import Image

    from lumbarclip.bundle.grader import DiscGrader
    from lumbarclip.data.manifest import read_manifest
    from lumbarclip.data.transforms import MEAN, STD, square_boxes, to_square_tensor
    from lumbarclip.data.imageio import load_image
    from lumbarclip.evaluation.disc_zeroshot import aligned_embeddings, level_discs
    from lumbarclip.inference.grades import disc_features

    (tmp_path / "img").mkdir()
    Image.fromarray((np.random.default_rng(0).random((80, 60)) * 255).astype(np.uint8)).save(tmp_path / "img" / "a.png")
    report = "Disc bulge at L4-L5 indenting the thecal sac. No other finding."
    discs = [{"level": lv, "box_xyxy": box, "classes": ["normal"], "thoracic": False, "pfirrmann": 2}
             for lv, box in (("L5-S1", [20.0, 60.0, 40.0, 66.0]), ("L4-L5", [20.0, 45.0, 40.0, 51.0]), ("L1-L2", [20.0, 5.0, 40.0, 11.0]))]  # fmt: skip
    row = {"image_path": "img/a.png", "patient_id": "0001", "split": "train", "label": 1, "report": report, "plane": "sagittal",
           "findings": parse_report(report).to_json(), "discs": json.dumps(discs)}  # fmt: skip
    with (tmp_path / "m.csv").open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(row))
        writer.writeheader()
        writer.writerow(row)
    records = read_manifest(tmp_path / "m.csv").records
    d = 16 * 32
    grader = DiscGrader("crop", np.zeros(d), np.ones(d), np.zeros((5, d)), np.zeros(5), np.zeros((4, d)), np.zeros(4), {}, 32)
    got = level_discs(grader, None, records, 32)
    assert got.keys == [("0001", "L5-S1"), ("0001", "L4-L5")]  # L1-L2 is not a graded level
    assert got.sentences == ["", "Disc bulge at L4-L5 indenting the thecal sac"]
    labels = got.labels()
    assert labels[0].sum() == 0 and labels[1][LEVEL_KINDS.index("bulge")] == 1
    pixels = load_image(records[0].image_path)
    model_input = (to_square_tensor(pixels, 32) - MEAN) / STD
    boxes = square_boxes(np.array([discs[0]["box_xyxy"], discs[1]["box_xyxy"]]), pixels.shape[:2], 32)
    assert np.allclose(got.features, disc_features("crop", None, model_input, boxes))
    projection = torch.nn.Linear(d, 8)
    emb = aligned_embeddings(projection, got)
    assert emb.shape == (2, 8) and np.allclose(np.linalg.norm(emb, axis=1), 1.0)

"""The CNN disc grader: trained on a look-alike cohort whose disc brightness is the grade, its
heads read as the grader's linear models, the temperature minimises the valid NLL (checked
against a grid), and the grader with its network survives the model folder bit for bit."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from _cohort import slice_row, write_manifest
from PIL import Image
from scipy.special import log_softmax

from lumbarclip.bundle import ModelFolder
from lumbarclip.data.manifest import read_manifest
from lumbarclip.evaluation.grades import calibrate, disc_table, from_network, gate_on_valid, pfirrmann_scores
from lumbarclip.inference.grades import disc_crops, disc_features
from lumbarclip.models.disc_cnn import DiscCNN, DiscCNNConfig
from lumbarclip.training.grader import labelled_discs, train_disc_cnn

TINY = DiscCNNConfig(backbone="test_efficientnet", pretrained="", crop=(16, 32))
LEVELS = ("L5-S1", "L4-L5", "L3-L4", "L2-L3", "L1-L2")


def _cohort(root, n_patients: int = 40, size: int = 96, seed: int = 0) -> str:
    """Slices with five bars stacked like discs; each graded disc's brightness falls with its
    Pfirrmann grade (a degenerated disc is dark on T2), and grade >= 4 carries 'DDD'."""
    rng = np.random.default_rng(seed)
    (root / "img").mkdir(parents=True)
    rows = []
    for p in range(n_patients):
        image = rng.normal(0.2, 0.03, (size, size))
        discs = []
        for rank in range(5):
            grade = int(rng.integers(1, 6))
            y0, x0 = size - 14 - rank * 16, 30 + int(rng.integers(-2, 3))
            image[y0 : y0 + 7, x0 : x0 + 32] = 1.0 - 0.17 * grade
            discs.append({"level": LEVELS[rank], "box_xyxy": [x0, y0, x0 + 32, y0 + 7], "classes": ["DDD"] if grade >= 4 else ["normal"],
                          "thoracic": False, "pfirrmann": grade if rank < 3 else None})  # fmt: skip
        path = root / "img" / f"p{p:02d}.png"
        Image.fromarray((np.clip(image, 0, 1) * 255).astype(np.uint8)).save(path)
        split = "train" if p < 28 else "valid" if p < 34 else "test"
        rows.append(slice_row(path, p, split, discs))
    return write_manifest(root / "manifest.csv", rows)


def test_labelled_discs_keep_grades_only_at_graded_levels(tmp_path):
    records = read_manifest(_cohort(tmp_path, n_patients=3)).records
    discs = labelled_discs(records, 64)
    assert discs.inputs.shape == (3, 1, 64, 64) and len(discs.slice_of) == 15
    assert (discs.pfirrmann.reshape(3, 5)[:, 3:] == 0).all() and (discs.pfirrmann.reshape(3, 5)[:, :3] > 0).all()
    crop = disc_crops(discs.inputs[0], discs.boxes[:1], (16, 32))
    assert crop.shape == (1, 1, 16, 32)


def test_temperature_minimises_the_valid_nll_and_the_folder_keeps_the_network(tmp_path):
    from _model_folder import add_parts, make_model_folder

    manifest = _cohort(tmp_path / "cohort", n_patients=12)
    records = read_manifest(manifest).records
    torch.manual_seed(0)
    network = DiscCNN(TINY).eval()
    valid = disc_table("cnn", network, [r for r in records if r.split in ("train", "valid")], 64)
    grader = from_network(network, 64)
    calibrate(grader, valid)
    graded = valid.pfirrmann > 0
    raw = valid.features[graded] @ network.pfirrmann.weight.detach().double().numpy().T + network.pfirrmann.bias.detach().double().numpy()

    def nll(t: float) -> float:
        return float(-np.mean(log_softmax(raw / t, axis=1)[np.arange(graded.sum()), valid.pfirrmann[graded] - 1]))

    grid = np.linspace(0.05, 20.0, 4000)
    assert nll(grader.temperature) <= min(nll(t) for t in grid) + 1e-6
    assert np.allclose(grader.pfirrmann_proba(valid.features[graded]), np.exp(log_softmax(raw / grader.temperature, axis=1)))
    gate_on_valid(grader, valid)
    folder = make_model_folder(tmp_path / "model")
    add_parts(folder, grader=grader)
    again = ModelFolder.load(folder).grader
    assert again.source == "cnn" and again.temperature == grader.temperature and again.gate == grader.gate
    image = torch.randn(1, 64, 64)
    boxes = np.array([[10.0, 20.0, 50.0, 28.0], [12.0, 36.0, 52.0, 44.0]])
    assert np.array_equal(disc_features("cnn", again.network, image, boxes), disc_features("cnn", network, image, boxes))


@pytest.mark.slow
def test_the_cnn_learns_grades_from_crops(tmp_path):
    manifest = _cohort(tmp_path / "cohort")
    records = read_manifest(manifest).records
    network, summary = train_disc_cnn(records, 96, TINY, epochs=12, batch_size=16, lr=3e-3, progress=False)
    assert summary["train_discs"] == 28 * 5 and summary["valid_discs"] == 6 * 5
    valid = disc_table("cnn", network, [r for r in records if r.split == "valid"], 96)
    grader = from_network(network, 96)
    calibrate(grader, valid)
    test = disc_table("cnn", network, [r for r in records if r.split == "test"], 96)
    scores = pfirrmann_scores(grader, test)
    assert scores["all"]["kappa_linear"] >= 0.7 and scores["all"]["within_one"] >= 0.9, scores["all"]


def test_predict_grades_found_discs_with_the_folder_cnn(tmp_path):
    """A folder whose grader is the CNN: predict reads each found disc's crop through the stored
    network, and a validated level's probabilities are the grader's own on that crop."""
    from dataclasses import replace

    from _model_folder import add_parts, make_model_folder
    from test_detector import FixedDiscs

    from lumbarclip.data.transforms import load_model_input, square_boxes
    from lumbarclip.inference.predict import Predictor

    folder = make_model_folder(tmp_path / "model")
    op = ModelFolder.load(folder).operating_point
    op.preprocess = replace(op.preprocess, planes=("sagittal",))
    add_parts(folder, operating_point=op)
    torch.manual_seed(0)
    grader = from_network(DiscCNN(TINY).eval(), 32)
    grader.gate = {"pfirrmann": {"L5-S1": {"kappa": 0.7, "validated": True}}, "classes": {}}
    add_parts(folder, grader=grader)
    predictor = Predictor.load(folder, salt="s")
    predictor.detector, predictor.grader = FixedDiscs(), ModelFolder.load(folder).grader
    png = tmp_path / "slice.png"
    Image.fromarray((np.random.default_rng(0).random((120, 80)) * 255).astype(np.uint8)).save(png)
    (line,) = predictor.predict([png], top_k=0).images
    low = next(d for d in line.discs if d.level == "L5-S1")
    tensor, _ = load_model_input(png, op.preprocess)
    expected = grader.pfirrmann_proba(disc_features("cnn", grader.network, tensor, square_boxes(np.array([low.box_xyxy]), (120, 80), 32)))[0]
    assert [low.pfirrmann_probabilities[str(g)] for g in range(1, 6)] == pytest.approx(expected.tolist(), abs=1e-3)
    assert low.validated and low.pfirrmann == int(np.argmax(expected)) + 1

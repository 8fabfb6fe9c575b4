"""The disc layer: box bookkeeping against hand computation, matching and naming scores against
hand-made boxes, and the detector trained on a tiny look-alike of the sagittal cohort (bright
bars stacked like discs) learning to find them."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from _cohort import slice_row, write_manifest
from _model_folder import add_parts
from PIL import Image

from lumbarclip.bundle import ModelFolder, layout
from lumbarclip.data.detection import DetectionScore, match_boxes
from lumbarclip.data.discs import names_from_the_sacrum
from lumbarclip.data.transforms import image_boxes, square_boxes
from lumbarclip.models.detector import DetectorConfig, DiscDetector
from lumbarclip.training.detector import score_detector, train_detector

TINY = {"backbone": "test_efficientnet", "pretrained": "", "image_size": 96, "fpn_channels": 32, "head_convs": 1}


def test_square_boxes_follow_padding_and_resize():
    # a 40 x 80 image (rows x cols) is padded by 20 rows above and below, then 80 -> 64 px
    boxes = np.array([[10.0, 5.0, 30.0, 15.0]])
    got = square_boxes(boxes, (40, 80), 64)
    assert got == pytest.approx(np.array([[10, 25, 30, 35]]) * 0.8)
    assert image_boxes(got, (40, 80), 64) == pytest.approx(boxes)


def test_matching_is_one_to_one_at_iou_half():
    truth = np.array([[0, 0, 10, 10], [0, 20, 10, 30]], dtype=float)
    pred = np.array([[0, 1, 10, 11], [0, 2, 10, 12], [50, 50, 60, 60]], dtype=float)  # two on one disc, one stray
    assert match_boxes(pred, truth) == [(0, 0)]  # IoU 0.82 beats 0.67; the second disc is missed
    score = DetectionScore()
    score.add(pred, truth, ["L5-S1", "L4-L5"])
    assert (score.tp, score.fp, score.fn) == (1, 2, 1)
    assert score.recall == 0.5 and score.precision == pytest.approx(1 / 3)


def test_naming_from_the_sacrum_counts_only_matched_discs():
    truth = np.array([[0, 100 - 12 * r, 10, 108 - 12 * r] for r in range(4)], dtype=float)
    levels = ["L5-S1", "L4-L5", "L3-L4", "L2-L3"]
    assert names_from_the_sacrum(truth[::-1]) == levels[::-1]
    score = DetectionScore()
    score.add(truth[1:], truth, levels)  # L5-S1 missed: every name above it shifts down one
    assert score.naming == [("L4-L5", "L5-S1"), ("L3-L4", "L4-L5"), ("L2-L3", "L3-L4")]
    assert score.naming_accuracy() == {"L3-L4": 0.0, "L4-L5": 0.0, "L5-S1": None, "all": 0.0}
    score.add(truth, truth, levels)
    assert score.naming_accuracy()["L5-S1"] == 1.0 and score.naming_accuracy()["all"] == 0.6  # 3 of 5 named-level pairs


def test_detector_saves_and_loads_the_same_outputs(tmp_path):
    import torch
    from _model_folder import make_model_folder

    torch.manual_seed(0)
    detector = DiscDetector(DetectorConfig(**TINY, score_thresh=0.0)).eval()
    folder = make_model_folder(tmp_path / "model")
    add_parts(folder, detector=detector)
    again = ModelFolder.load(folder).detector
    x = torch.randn(1, 1, 64, 64)
    with torch.no_grad():
        a, b = detector(x)[0], again(x)[0]
    assert torch.equal(a["boxes"], b["boxes"]) and torch.equal(a["scores"], b["scores"])
    assert json.loads((folder / layout.DETECTOR / layout.DETECTOR_CONFIG).read_text())["backbone"] == "test_efficientnet"


def _cohort(root, n_patients=24, size=96, seed=0):
    """Noise slices with 5-6 bright horizontal bars stacked from the bottom, as discs are."""
    rng = np.random.default_rng(seed)
    rows = []
    (root / "img").mkdir(parents=True)
    for p in range(n_patients):
        image = rng.normal(0.3, 0.05, (size, size))
        discs = []
        for rank in range(int(rng.integers(5, 7))):
            y0 = size - 12 - rank * 16 + int(rng.integers(-1, 2))
            x0 = 30 + int(rng.integers(-3, 4))
            image[y0 : y0 + 6, x0 : x0 + 30] = 0.9
            discs.append({"level": ["L5-S1", "L4-L5", "L3-L4", "L2-L3", "L1-L2", "T12-L1"][rank], "box_xyxy": [x0, y0, x0 + 30, y0 + 6],
                          "classes": ["normal"], "thoracic": rank > 4, "pfirrmann": None})  # fmt: skip
        path = root / "img" / f"p{p:02d}.png"
        Image.fromarray((np.clip(image, 0, 1) * 255).astype(np.uint8)).save(path)
        split = "train" if p < 16 else "valid" if p < 20 else "test"
        rows.append(slice_row(path, p, split, discs))
    return Path(write_manifest(root / "manifest.csv", rows))


@pytest.mark.slow
def test_detector_learns_to_find_and_name_stacked_bars(tmp_path):
    manifest = _cohort(tmp_path / "cohort")
    detector, summary = train_detector(manifest, DetectorConfig(**TINY), epochs=15, batch_size=4, lr=3e-3, progress=False)
    assert summary["train_slices"] == 16 and summary["valid_slices"] == 4
    score = score_detector(detector, manifest, "test")
    assert score.recall >= 0.8 and score.precision >= 0.8, score.to_dict()
    assert score.naming_accuracy()["all"] >= 0.8


def test_predict_lists_named_discs_or_says_why_not(tmp_path):
    """A sagittal model folder with a detector: every in-distribution sagittal slice gets its
    discs named from the sacrum up in pixels of the image; other slices one reason each."""
    from dataclasses import replace

    import torch
    from _model_folder import make_model_folder

    from lumbarclip.data.imageio import write_dicom
    from lumbarclip.inference.predict import Predictor

    folder = make_model_folder(tmp_path / "model")
    op = ModelFolder.load(folder).operating_point
    op.preprocess = replace(op.preprocess, planes=("sagittal",))
    add_parts(folder, operating_point=op)
    torch.manual_seed(0)
    add_parts(folder, detector=DiscDetector(DetectorConfig(**TINY, score_thresh=0.0, max_discs=5)))  # untrained: boxes anyway
    predictor = Predictor.load(folder, salt="s")
    png = tmp_path / "slice.png"
    Image.fromarray((np.random.default_rng(0).random((120, 80)) * 255).astype(np.uint8)).save(png)  # not square
    (line,) = predictor.predict([png], top_k=0).images
    discs = line.discs
    assert 1 <= len(discs) <= 5 and all(d.reason == "no disc grader in this model folder" for d in discs)
    centres = [(d.box_xyxy[1] + d.box_xyxy[3]) / 2 for d in discs]
    assert centres == sorted(centres, reverse=True)  # from the bottom of the image up
    assert [d.level for d in discs] == ["L5-S1", "L4-L5", "L3-L4", "L2-L3", "L1-L2"][: len(discs)]
    for d in discs:  # pixels of the 80 x 120 image (padding removed and clipped), not of the square input
        x0, y0, x1, y1 = d.box_xyxy
        assert 0 <= x0 < x1 <= 80 and 0 <= y0 < y1 <= 120
    axial = write_dicom(
        tmp_path / "ax.dcm", (np.random.default_rng(1).random((64, 64)) * 4000).astype(np.uint16),
        ImageOrientationPatient=[1, 0, 0, 0, 1, 0], ImagePositionPatient=[0.0, 0.0, 0.0], StudyInstanceUID="1.2.3",
    )  # fmt: skip
    (line,) = predictor.predict([axial], top_k=0).images
    assert [d.dump() for d in line.discs] == [{"level": None, "box_xyxy": None, "validated": False, "reason": "not assessed: the image itself was not assessed"}]


class FixedDiscs(torch.nn.Module):
    """A detector stand-in that finds three fixed boxes (model-input pixels), top one first."""

    BOXES = [[20.0, 40.0, 60.0, 50.0], [20.0, 80.0, 60.0, 90.0], [20.0, 60.0, 60.0, 70.0]]

    def __init__(self) -> None:
        super().__init__()
        self.config = DetectorConfig(**TINY)

    def forward(self, images):
        return [{"boxes": torch.tensor(self.BOXES), "scores": torch.tensor([0.9, 0.8, 0.7])} for _ in images]


def test_predict_shows_only_validated_grades(tmp_path):
    """With a grader: discs named from the bottom up in image pixels; the validated level gets
    its grade (the argmax of probabilities that sum to 1), only validated classes appear, a level
    that failed the gate and one the grader never learnt each say why."""
    from dataclasses import replace

    from _model_folder import make_model_folder

    from lumbarclip.bundle.grader import DiscGrader
    from lumbarclip.inference.grades import disc_features
    from lumbarclip.inference.predict import Predictor

    folder = make_model_folder(tmp_path / "model")
    op = ModelFolder.load(folder).operating_point
    op.preprocess = replace(op.preprocess, planes=("sagittal",))
    add_parts(folder, operating_point=op)
    rng = np.random.default_rng(0)
    d = 16 * 32  # crop features
    grader = DiscGrader(
        "crop", np.zeros(d), np.ones(d), rng.normal(0, 0.1, (5, d)), np.zeros(5), rng.normal(0, 0.1, (4, d)), np.zeros(4),
        {"DDD": 0.5, "bulge": 0.5, "stenosis": 0.5, "spondylolisthesis": 0.5}, 32,
        {"pfirrmann": {"L5-S1": {"kappa": 0.7, "validated": True}, "L4-L5": {"kappa": 0.3, "validated": False}},
         "classes": {"bulge": {"auroc": 0.9, "validated": True}, "DDD": {"auroc": 0.6, "validated": False}}},
    )  # fmt: skip
    add_parts(folder, grader=grader)
    predictor = Predictor.load(folder, salt="s")
    predictor.detector, predictor.grader = FixedDiscs(), ModelFolder.load(folder).grader  # no detector part: set both by hand
    png = tmp_path / "slice.png"
    pixels = np.random.default_rng(0).random((120, 80))
    Image.fromarray((pixels * 255).astype(np.uint8)).save(png)
    (line,) = predictor.predict([png], top_k=0).images
    by_level = {d.level: d for d in line.discs}
    assert list(by_level) == ["L5-S1", "L4-L5", "L3-L4"]
    # 120 x 80 image: padded by 20 columns on the left, 120 -> 96 px (x0.8)
    assert by_level["L5-S1"].box_xyxy == pytest.approx([5.0, 100.0, 55.0, 112.5])
    low = by_level["L5-S1"]
    probs = low.pfirrmann_probabilities
    assert low.validated is True and sum(probs.values()) == pytest.approx(1.0, abs=1e-3)
    assert low.pfirrmann == int(max(probs, key=probs.get))
    from lumbarclip.data.transforms import load_model_input, square_boxes

    tensor, _ = load_model_input(png, op.preprocess)
    feats = disc_features("crop", None, tensor, square_boxes(np.array([low.box_xyxy]), (120, 80), 32))
    assert probs["3"] == pytest.approx(float(grader.pfirrmann_proba(feats)[0, 2]), abs=1e-3)  # read on the 32 px model input
    assert set(low.classes) == {"bulge"}
    assert by_level["L4-L5"].pfirrmann is None and "not validated" in by_level["L4-L5"].reason
    assert "learnt L5-S1, L4-L5 only" in by_level["L3-L4"].reason


def test_node_analyser_reads_the_mid_sagittal_slice_and_reports_its_discs(tmp_path):
    """The DICOM node's analyser on a sagittal T2 series: it picks the middle slice itself, the SR
    says which, names the plane, and carries one group per lumbar disc found."""
    from dataclasses import replace

    import pydicom
    import torch
    from _model_folder import make_model_folder

    from lumbarclip.data.imageio import write_dicom
    from lumbarclip.pacs.analyse import StudyAnalyser
    from lumbarclip.pacs.sr import read_report

    folder = make_model_folder(tmp_path / "model")
    op = ModelFolder.load(folder).operating_point
    op.preprocess = replace(op.preprocess, planes=("sagittal",))
    op.study_unit = ["T2 ?"]
    add_parts(folder, operating_point=op)
    torch.manual_seed(0)
    add_parts(folder, detector=DiscDetector(DetectorConfig(**TINY, score_thresh=0.0, max_discs=5)))
    study = tmp_path / "study"
    pixels = (np.random.default_rng(0).random((120, 80)) * 4000).astype(np.uint16)  # the untrained detector finds boxes here
    for i in range(5):  # x steps along the sagittal normal; file order shuffled by name
        write_dicom(
            study / f"{(i * 3) % 5}.dcm", pixels,
            ImageOrientationPatient=[0, 1, 0, 0, 0, -1], ImagePositionPatient=[-8.0 + 4 * i, -60.0, 60.0],
            SeriesInstanceUID="1.2.3.4.5", StudyInstanceUID="1.2.3.4", SeriesDescription="T2 SAG",
            RepetitionTime=4000.0, EchoTime=100.0, SOPInstanceUID=f"1.2.3.4.5.{i}", SliceThickness=4.0,
        )  # fmt: skip
    (sr,) = StudyAnalyser.load(folder, top_k=0)(study)
    back = read_report(pydicom.dcmread(sr.filename) if hasattr(sr, "filename") and sr.filename else sr)
    assert back["plane"] == "sagittal"
    assert "middle slice (3 of 5 along the slice normal)" in back["slices_used"]
    assert back["images"] == ["1.2.3.4.5.2"]  # the middle slice, whatever the file names
    assert set(back.get("discs", {})) <= {"L5-S1", "L4-L5", "L3-L4", "L2-L3", "L1-L2"} and back.get("discs")


def test_disc_layer_is_described_in_the_card(tmp_path):
    """build_disc_layer writes the card's discs section from the figures it measured."""
    from lumbarclip import disc_layer as module

    figures = {
        "detector_train": {"best_valid_f1": 0.9},
        "detection_valid": {"recall": 0.95},
        "grader": {"source": "crop", "gate": {}},
    }
    discs = module._card_section(DiscDetector(DetectorConfig(**TINY)), figures)
    assert discs["valid_f1"] == 0.9 and discs["grader"]["source"] == "crop" and "FCOS" in discs["detector"]
    assert "test_efficientnet" in discs["detector"] and discs["valid_detection"] == {"recall": 0.95}

"""The typed prediction result (`inference.results`): a JSON line read back dumps to the same
JSON (keys, their order, null against absent); verdicts have one label encoding; and the lines
of a representative prediction are exactly the lines spelled out here, from values computed
apart from Predictor (embed.py, the operating point's arrays, the finding prompts, the bank)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image
from pydantic import ValidationError

from _model_folder import VALIDATED, add_parts, make_model_folder
from lumbarclip.bundle import ModelFolder, ReportBank, load_model
from lumbarclip.data.imageio import write_dicom
from lumbarclip.data.transforms import PreprocessSpec
from lumbarclip.data.study import header_refusal, slice_header
from lumbarclip.decision import unit_mismatch
from lumbarclip.findings import LEVEL_KINDS
from lumbarclip.inference.embed import embed_images
from lumbarclip.inference.findings import FindingClassifier
from lumbarclip.inference.predict import Predictor
from lumbarclip.inference.results import ImageResult, StudyResult

#: A sagittal image line as predict printed it: a graded disc, one whose grade was not
#: validated, no `reason` on the image (it was assessed), `saliency` and `image_size` present.
SAGITTAL = (
    '{"path": "slice.png", "study": "Pab12", "series": null, "sequence": "T2", "level": null, "plane": "sagittal", '
    '"plane_from": "the model\'s plane (the file states no orientation)", "in_distribution": true, '
    '"ood_score": 0.5021, "p_abnormal": 0.985215, "label": "abnormal", "threshold": 0.963554, '
    '"top_findings": [{"finding": "bulge", "level": null, "score": 0.61}], '
    '"nearest_reports": [{"text": "Disc bulge at L4-L5.", "score": 0.83, "label": 1}], "saliency": "sal/Pab12-01.png", '
    '"discs": [{"level": "L5-S1", "box_xyxy": [5.0, 100.0, 55.0, 112.5], "score": 0.8, "thoracic": false, '
    '"pfirrmann": 4, "validated": true, "pfirrmann_probabilities": {"1": 0.0651, "2": 0.3479, "3": 0.0926, '
    '"4": 0.4557, "5": 0.0387}, "classes": {"bulge": 0.9573}, "classes_present": ["bulge"]}, '
    '{"level": "L4-L5", "box_xyxy": [5.0, 75.0, 55.0, 87.5], "score": 0.7, "thoracic": false, "pfirrmann": null, '
    '"validated": false, "reason": "Pfirrmann grade at L4-L5 not validated on valid", "classes": {"bulge": 0.9386}, '
    '"classes_present": ["bulge"]}], "image_size": [80, 120]}'
)
#: An image the input guard refused: null verdict, a reason, no findings, discs not assessed.
REFUSED = (
    '{"path": "ax.dcm", "study": "Pcd34", "series": 2, "sequence": "T1", "level": "L4-L5", "plane": "axial", '
    '"plane_from": "DICOM header", "in_distribution": false, "ood_score": 2.31, "p_abnormal": null, "label": null, '
    '"reason": "not assessed: axial slice", "discs": [{"level": null, "box_xyxy": null, "validated": false, '
    '"reason": "not assessed: the image itself was not assessed"}], "image_size": [64, 64]}'
)
STUDY = (
    '{"study": "ward", "n_images": 6, "n_in_distribution": 6, "p_abnormal_mean_raw": 0.805959, "p_abnormal": 0.946356, '
    '"label": "abnormal", "threshold": 0.821174, "rule": "patient: ...", "selection": ["T1: series 1: used"], '
    '"not_validated": ["extrusion"]}'
)


@pytest.mark.parametrize("text", [SAGITTAL, REFUSED])
def test_image_line_round_trips(text):
    line = ImageResult.model_validate_json(text)
    assert json.dumps(line.dump()) == json.dumps(json.loads(text))  # same keys, same order, same values
    assert ImageResult.model_validate(line.dump()) == line


def test_study_line_round_trips_and_absent_reason_stays_absent():
    study = StudyResult.model_validate_json(STUDY)
    assert json.dumps(study.dump()) == json.dumps(json.loads(STUDY)) and "reason" not in study.dump()
    assert study.label == "abnormal" and study.not_validated == ["extrusion"]


@pytest.mark.parametrize("label", [1, "1", True, "Abnormal"])
def test_one_label_encoding(label):
    doc = json.loads(STUDY) | {"label": label}
    with pytest.raises(ValidationError, match="label"):
        StudyResult.model_validate(doc)


def test_verdict_is_whole_and_unknown_keys_refused():
    with pytest.raises(ValidationError, match="both be null"):
        StudyResult.model_validate(json.loads(STUDY) | {"label": None})
    with pytest.raises(ValidationError, match="kind"):
        ImageResult.model_validate(json.loads(REFUSED) | {"kind": "image"})


def _close(got, want, where="line"):
    """`got == want`, dict keys in the same order, floats within the lines' rounding (scores
    are printed to 4 decimals)."""
    if isinstance(want, dict):
        assert list(got) == list(want), where
        for key in want:
            _close(got[key], want[key], f"{where}.{key}")
    elif isinstance(want, list):
        assert len(got) == len(want), where
        for n, (g, w) in enumerate(zip(got, want)):
            _close(g, w, f"{where}[{n}]")
    elif isinstance(want, float):
        assert got == pytest.approx(want, abs=6e-5), where
    else:
        assert got == want and type(got) is type(want), where


def test_prediction_lines_are_the_documented_json(tmp_path):
    """Two named PNGs of one patient and a CT slice, as one user-named study, with a report bank:
    every key of every line, in order, against values computed here."""
    folder = make_model_folder(tmp_path / "model")
    rng = np.random.default_rng(0)
    bank_emb = rng.normal(size=(3, 16)).astype(np.float32)
    bank_emb /= np.linalg.norm(bank_emb, axis=1, keepdims=True)
    texts = ["Disc bulge at L4-L5.", "Normal lumbar spine.", "Canal stenosis at L3-L4."]
    add_parts(folder, bank=ReportBank(bank_emb, texts, np.array([1, 0, 1])))
    pngs = [tmp_path / "T1_0007_D3.png", tmp_path / "T2_0007_D5.png"]
    for i, path in enumerate(pngs):
        Image.fromarray((np.random.default_rng(i).random((40, 40)) * 4000).astype(np.uint16)).save(path)
    ct = write_dicom(
        tmp_path / "ct.dcm", (rng.random((40, 40)) * 4000).astype(np.uint16), Modality="CT",
        ImageOrientationPatient=[1, 0, 0, 0, 1, 0], ImagePositionPatient=[0.0, 0.0, 0.0], StudyInstanceUID="1.2.3.4.9",
    )  # fmt: skip
    result = Predictor.load(folder, salt="s").predict([*pngs, ct], top_k=2, study="ward")

    op = ModelFolder.load(folder).operating_point
    model = load_model(folder)
    emb = embed_images(model, pngs, PreprocessSpec.of_model(model.config.image_size), progress=False).astype(np.float64)
    logit = emb @ op.weights.astype(np.float64) + op.bias
    prob = 1 / (1 + np.exp(-(op.calibration["a"] * logit + op.calibration["b"])))
    levels = ["L3-L4", "L5-S1"]
    scores = FindingClassifier.build(model).scores(emb, levels)
    sims = emb @ bank_emb.T.astype(np.float64)
    expected = []
    for n, (path, seq) in enumerate(zip(pngs, ("T1", "T2"))):
        ranked = sorted(VALIDATED, key=lambda k: -scores[k][n])[:2]
        near = np.argsort(-sims[n])[:2]
        expected.append({
            "type": "image", "path": str(path), "study": "ward", "series": None, "sequence": seq, "level": levels[n],
            "plane": "axial", "plane_from": "the model's plane (the file states no orientation)",
            "in_distribution": True, "ood_score": 0.0, "p_abnormal": float(prob[n]),
            "label": "abnormal" if prob[n] >= op.thresholds["image"] else "normal", "threshold": 0.5,
            "top_findings": [{"finding": k, "level": levels[n], "score": float(scores[k][n])} for k in ranked],
            "nearest_reports": [{"text": texts[j], "score": float(sims[n, j]), "label": [1, 0, 1][j]} for j in near],
        })  # fmt: skip
    head = slice_header(ct)
    expected.append({
        "type": "image", "path": str(ct), "study": "ward", "series": None, "sequence": head.sequence, "level": None,
        "plane": "axial", "plane_from": "DICOM header", "in_distribution": False, "ood_score": 0.0,
        "p_abnormal": None, "label": None, "reason": "not assessed: " + header_refusal(head, ("axial",)),
    })  # fmt: skip
    raw_mean = float((1 / (1 + np.exp(-logit))).mean())
    mismatch = unit_mismatch(op.study_unit, ["T1 L3-L4", "T2 L5-S1"])
    expected.append({
        "type": "study", "study": "ward", "n_images": 3, "n_in_distribution": 2, "p_abnormal_mean_raw": raw_mean,
        "p_abnormal": None, "label": None, "threshold": 0.5, "rule": None,
        "selection": ["given as a file; sequence and level from the file name", "given as a file"],
        "not_validated": [k for k in LEVEL_KINDS if k not in VALIDATED],
        "reason": f"no study verdict: {mismatch}; see the image verdicts",
    })  # fmt: skip
    _close(list(result.lines()), expected)

"""A model knows its plane: a sagittal model reads sagittal DICOM and refuses axial (the reverse
is in test_guard.py), picks the middle slice of a sagittal stack, and every output line names
the plane it assessed."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
from _model_folder import add_parts, make_model_folder
from PIL import Image

from lumbarclip.bundle import ModelFolder, layout, load_model, save_model
from lumbarclip.data.imageio import write_dicom
from lumbarclip.data.transforms import PreprocessSpec
from lumbarclip.inference.predict import Predictor

SAGITTAL = (0, 1, 0, 0, 0, -1)  # rows along y, columns along -z: the normal is x
AXIAL = (1, 0, 0, 0, 1, 0)


@pytest.fixture(scope="module")
def sagittal_model(tmp_path_factory):
    folder = make_model_folder(tmp_path_factory.mktemp("sagittal-model"))
    op = ModelFolder.load(folder).operating_point
    op.preprocess = replace(op.preprocess, planes=("sagittal",))
    op.study_unit = ["T1 ?", "T2 ?"]  # what evaluate records for whole sagittal slices (slot: no level)
    add_parts(folder, operating_point=op)
    return folder


def _pixels(seed: int) -> np.ndarray:
    return (np.random.default_rng(seed).random((40, 40)) * 4000).astype(np.uint16)


def _stack(folder, sequence, uid, orientation, n=5, seed=0, study="1.2.3.9"):
    """n slices of one series, stepping 4 mm along the slice normal, written in shuffled order."""
    normal = np.cross(orientation[:3], orientation[3:])
    paths = []
    for i in np.random.default_rng(seed).permutation(n):
        position = [-20.0, -20.0, 0.0] + normal * 4.0 * i
        paths.append((int(i), write_dicom(
            folder / f"{sequence}_{uid[-2:]}_{i}.dcm", _pixels(seed + int(i)),
            ImageOrientationPatient=list(orientation), ImagePositionPatient=[float(v) for v in position],
            SeriesInstanceUID=uid, StudyInstanceUID=study, SeriesDescription=f"{sequence} SAG",
            RepetitionTime=550.0 if sequence == "T1" else 4000.0, EchoTime=10.0 if sequence == "T1" else 100.0,
        )))  # fmt: skip
    return dict(paths)


def test_preprocess_spec_keeps_planes_and_reads_a_spec_without_them_as_axial():
    spec = PreprocessSpec.of_model(64, planes=("sagittal",), sequences=("T2",))
    data = json.loads(json.dumps(spec.to_dict()))
    assert PreprocessSpec.from_dict(data) == spec
    assert data["planes"] == ["sagittal"] and data["sequences"] == ["T2"]
    for key in ("planes", "sequences"):
        del data[key]
    assert PreprocessSpec.from_dict(data).planes == ("axial",)


def test_sagittal_model_reads_sagittal_and_refuses_axial(sagittal_model, tmp_path):
    predictor = Predictor.load(sagittal_model, salt="s")
    sag = _stack(tmp_path / "sag", "T2", "1.2.3.4.71", SAGITTAL)
    ax = _stack(tmp_path / "ax", "T2", "1.2.3.4.72", AXIAL)
    (line,) = predictor.predict([sag[2]], top_k=0).images
    assert line.in_distribution is True and line.plane == "sagittal" and line.plane_from == "DICOM header"
    (line,) = predictor.predict([ax[2]], top_k=0).images
    assert line.in_distribution is False and line.label is None
    assert line.reason == "not assessed: axial slice: the model reads sagittal slices only"
    assert line.plane == "axial"
    # a folder with only the axial stack: nothing of the model's plane, said so
    result = predictor.predict([tmp_path / "ax"], top_k=0)
    assert result.images == [] and "no sagittal T1 or T2 series" in result.skipped[0].reason


def test_sagittal_study_folder_takes_the_middle_slice_of_each_sequence(sagittal_model, tmp_path):
    predictor = Predictor.load(sagittal_model, salt="s")
    study = tmp_path / "study"
    t2 = _stack(study / "s1", "T2", "1.2.3.4.81", SAGITTAL, n=5, seed=1)
    t1 = _stack(study / "s2", "T1", "1.2.3.4.82", SAGITTAL, n=4, seed=2)
    _stack(study / "s3", "T2", "1.2.3.4.83", AXIAL, n=6, seed=3)
    result = predictor.predict([study], top_k=0)
    chosen = {line.sequence: line.path for line in result.images}
    # middle by position along the normal, whatever the file order: index n // 2
    assert chosen == {"T2": str(t2[2]), "T1": str(t1[2])}
    assert {line.plane for line in result.images} == {"sagittal"}
    (verdict,) = result.studies
    assert verdict.label is not None  # T1 + T2 is the study unit of this model
    text = " ".join(verdict.selection)
    assert "middle slice (3 of 5" in text and "not sagittal" in text


def test_png_lines_name_the_models_plane(sagittal_model, tmp_path):
    predictor = Predictor.load(sagittal_model, salt="s")
    path = tmp_path / "T1_0254_S8 .png"
    Image.fromarray((np.random.default_rng(0).random((48, 48)) * 255).astype(np.uint8)).save(path)
    (line,) = predictor.predict([path], top_k=0).images
    assert line.plane == "sagittal" and "no orientation" in line.plane_from
    assert line.sequence == "T1"  # from the cohort's file name


def test_evaluate_records_the_training_planes_and_cuts_zero_shot_on_valid(tmp_path):
    """A cohort whose manifest says sagittal: the model folder's preprocess.json and card name
    that plane, and zero-shot's valid-chosen threshold is the one an independent computation
    picks on the valid split."""
    import csv

    from lumbarclip.data.manifest import read_manifest
    from lumbarclip.decision import choose_threshold
    from lumbarclip.evaluation.evaluate import EvalOptions, evaluate_run
    from lumbarclip.evaluation.zeroshot import default_prompts, zero_shot_abnormal_proba
    from lumbarclip.inference import class_embeddings, embed_images
    from lumbarclip.models import ModelConfig, create_model
    from lumbarclip.synth.cohort import CohortConfig, make_cohort

    axial = make_cohort(tmp_path / "cohort", CohortConfig(n_patients=20, size=32, abnormal_rate=0.5), progress=False)
    with axial.open() as fh:
        rows = list(csv.DictReader(fh))
    sagittal = axial.with_name("sagittal.csv")
    with sagittal.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=[*rows[0], "plane"])
        writer.writeheader()
        writer.writerows({**row, "plane": "sagittal"} for row in rows)
    model = create_model(ModelConfig(vision="test_resnet", image_size=32, embed_dim=16, text_unfrozen_layers=0))
    save_model(model, tmp_path / "run" / "model", PreprocessSpec.of_model(32))
    (tmp_path / "run" / "model" / layout.PREPROCESS).unlink()  # a folder without a spec: evaluate takes the train split's planes
    options = EvalOptions(finetune=False, from_scratch=False, label_efficiency=False, pixel_ceiling=False, bootstrap=50, progress=False)
    metrics = evaluate_run(tmp_path / "run", sagittal, options=options)
    model_dir = tmp_path / "run" / "model"
    assert ModelFolder.load(model_dir).preprocess.planes == ("sagittal",)
    card = ModelFolder.load(model_dir, require=()).card
    assert card["input"]["planes"] == ["sagittal"] and "axial" in card["not_intended_use"][1]

    model = load_model(model_dir)
    valid = read_manifest(sagittal).split("valid")
    probs = zero_shot_abnormal_proba(
        model, embed_images(model, [r.image_path for r in valid], PreprocessSpec.of_model(model.config.image_size), progress=False), class_embeddings(model, default_prompts())
    )
    expected = choose_threshold(np.array([r.label for r in valid]), probs)
    assert metrics["zero_shot_valid_threshold"]["image"]["threshold"] == pytest.approx(expected, abs=1e-6)
    assert metrics["zero_shot"]["image"]["threshold"] == 0.5
    assert "zero_shot_valid_threshold.patient.balanced_accuracy" in metrics["ci95"]

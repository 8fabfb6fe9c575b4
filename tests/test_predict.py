"""`lumbarclip predict` / `Predictor` on PNG files, a DICOM file, a DICOM series folder and a
study folder; probabilities checked against an independent computation (embed.py + the
operating point's arrays); bad files skipped; no header value in any output."""

import json
from dataclasses import replace

import numpy as np
import pytest
from _model_folder import add_parts, make_model_folder
from PIL import Image

from lumbarclip.bundle import FindingGate, ModelFolder, layout, load_model, save_model
from lumbarclip.cli import main
from lumbarclip.data.imageio import write_dicom
from lumbarclip.data.transforms import PreprocessSpec
from lumbarclip.errors import InputError
from lumbarclip.inference.embed import embed_images
from lumbarclip.inference.predict import Predictor

LEVEL_Z = {"L5-S1": 0.0, "L4-L5": 35.0, "L3-L4": 70.0}
SECRETS = {
    "PatientName": "Doe^Jane",
    "PatientID": "PID-SECRET-4711",
    "PatientBirthDate": "19450612",
    "StudyDate": "20190317",
    "AccessionNumber": "ACC-998877",
    "StudyInstanceUID": "1.2.826.0.1.3680043.8.498.424242",
    "InstitutionName": "Hospital Of Secrets",
}


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    folder = make_model_folder(tmp_path_factory.mktemp("model"))
    op = ModelFolder.load(folder).operating_point
    op.patient_calibration = {"a": 0.7, "b": 0.3}  # a non-trivial study map as well
    add_parts(folder, operating_point=op)
    return folder


@pytest.fixture(scope="module")
def predictor(model_dir):
    return Predictor.load(model_dir, salt="test-salt")


def _pixels(seed, size=40):
    rng = np.random.default_rng(seed)
    return (rng.random((size, size)) * 4000).astype(np.uint16)


def _logits(model_dir, paths):
    """Probe logits computed apart from Predictor: embed.py's loader and encoder, then the
    operating point's arrays by hand."""
    model = load_model(model_dir)
    op = ModelFolder.load(model_dir).operating_point
    emb = embed_images(model, paths, PreprocessSpec.of_model(model.config.image_size), progress=False).astype(np.float64)
    return emb @ op.weights.astype(np.float64) + op.bias


def _sigmoid(z):
    return 1 / (1 + np.exp(-z))


def _expected(model_dir, paths):
    """Calibrated image P(abnormal): sigmoid(a * logit + b)."""
    op = ModelFolder.load(model_dir).operating_point
    return _sigmoid(op.calibration["a"] * _logits(model_dir, paths) + op.calibration["b"])


def _expected_study(model_dir, paths):
    """Study P(abnormal): mean of the images' sigmoid(logit), then the patient Platt map."""
    op = ModelFolder.load(model_dir).operating_point
    m = _sigmoid(_logits(model_dir, paths)).mean()
    return _sigmoid(op.patient_calibration["a"] * np.log(m / (1 - m)) + op.patient_calibration["b"])


def _series(folder, sequence, series_uid, orientation=(1, 0, 0, 0, 1, 0), z_values=None, seed=0, **extra):
    """A 3-slice DICOM series whose slices sit at the disc levels (L5-S1 inferior)."""
    paths = {}
    for i, (level, z) in enumerate((z_values or LEVEL_Z).items()):
        paths[level] = write_dicom(
            folder / f"{sequence}_{series_uid[-3:]}_{i}.dcm",
            _pixels(seed + i),
            ImageOrientationPatient=list(orientation),
            ImagePositionPatient=[-20.0, -20.0, z],
            SeriesInstanceUID=series_uid,
            SeriesDescription=f"{sequence} AX",
            RepetitionTime=550.0 if sequence == "T1" else 4000.0,
            EchoTime=10.0 if sequence == "T1" else 100.0,
            **{**SECRETS, **extra},
        )
    return paths


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """A study folder: axial T1 and T2 series, a sagittal series and a 1-slice localiser."""
    folder = tmp_path_factory.mktemp("study") / "incoming"
    t1 = _series(folder / "s1", "T1", "1.2.3.4.1001", seed=10)
    t2 = _series(folder / "s2", "T2", "1.2.3.4.1002", seed=20)
    _series(folder / "s3", "T2", "1.2.3.4.1003", orientation=(0, 1, 0, 0, 0, -1), seed=30)
    write_dicom(
        folder / "loc.dcm", _pixels(40), ImageOrientationPatient=[1, 0, 0, 0, 1, 0],
        ImagePositionPatient=[0.0, 0.0, 10.0], SeriesInstanceUID="1.2.3.4.1004", SeriesDescription="T1 loc",
        RepetitionTime=500.0, **SECRETS,
    )  # fmt: skip
    (folder / "notes.txt").write_text("not an image")
    return folder, t1, t2


def test_png_files_match_independent_computation(model_dir, predictor, tmp_path):
    paths = []
    for i, name in enumerate(("T1_0007_D3.png", "T2_0007_D5.png", "other.png")):
        paths.append(tmp_path / name)
        Image.fromarray(_pixels(i).astype(np.uint16)).save(paths[-1])
    result = predictor.predict(paths, top_k=2)
    expected = _expected(model_dir, paths)
    got = np.array([line.p_abnormal for line in result.images])
    np.testing.assert_allclose(got, expected, atol=1e-5)
    first = result.images[0]
    assert (first.sequence, first.level) == ("T1", "L3-L4")  # public dataset naming
    assert result.images[1].level == "L5-S1" and result.images[2].level is None
    op = ModelFolder.load(model_dir).operating_point
    for line, p in zip(result.images, expected):
        assert line.label == ("abnormal" if p >= op.thresholds["image"] else "normal")
        assert len(line.top_findings) == 2 and line.nearest_reports == []  # no bank here
    # two studies: patient 0007 by name, and the unnamed file on its own
    by_study = {s.study: s for s in result.studies}
    assert len(by_study) == 2
    named = by_study[first.study]
    assert named.n_images == 2 and named.n_in_distribution == 2
    # two of the six evaluated slots: no study verdict, the raw mean beside it
    assert named.p_abnormal is None and named.label is None and named.rule is None
    assert "not the evaluated study unit" in named.reason
    raw_mean = _sigmoid(_logits(model_dir, paths[:2])).mean()
    assert named.p_abnormal_mean_raw == pytest.approx(raw_mean, abs=1e-5)
    assert [line["type"] for line in result.lines()] == ["image"] * 3 + ["study"] * 2


def test_unrelated_files_in_one_folder_are_separate_studies(predictor, tmp_path):
    for i in range(4):
        Image.fromarray(_pixels(10 + i).astype(np.uint16)).save(tmp_path / f"scan{i}.png")
    result = predictor.predict([tmp_path], top_k=0)
    assert len(result.images) == 4 and len(result.studies) == 4
    assert all(s.n_images == 1 and s.label is None and s.rule is None for s in result.studies)
    # the user says they belong together: one study, still no patient rule (not the evaluated shape)
    (one,) = predictor.predict([tmp_path], top_k=0, study="ward-7").studies
    assert one.study == "ward-7" and one.n_images == 4 and one.label is None


def test_single_dicom_file_is_scored_as_given(model_dir, predictor, study):
    _, t1, _ = study
    result = predictor.predict([t1["L4-L5"]], top_k=0)
    (line,) = result.images
    assert line.sequence == "T1" and line.level is None  # a lone file has no level
    assert line.p_abnormal == pytest.approx(_expected(model_dir, [t1["L4-L5"]])[0], abs=1e-5)


def test_series_folder_levels_from_slice_positions(predictor, study):
    folder, _, t2 = study
    result = predictor.predict([folder / "s2"], top_k=0)
    got = {line.level: line.path for line in result.images}
    assert got == {level: str(path) for level, path in t2.items()}
    assert all(line.sequence == "T2" for line in result.images)
    assert len(result.studies) == 1 and result.studies[0].n_images == 3


def test_study_folder_picks_axial_t1_t2_and_says_why(model_dir, predictor, study):
    folder, t1, t2 = study
    result = predictor.predict([folder], top_k=1)
    chosen = {(line.sequence, line.level): line.path for line in result.images}
    expected = {("T1", lv): str(p) for lv, p in t1.items()} | {("T2", lv): str(p) for lv, p in t2.items()}
    assert chosen == expected  # sagittal series and localiser left out
    (verdict,) = result.studies
    assert verdict.n_images == 6 and verdict.rule.startswith("patient")
    study_p = _expected_study(model_dir, [line.path for line in result.images])
    assert verdict.p_abnormal == pytest.approx(study_p, abs=1e-5)
    op = ModelFolder.load(model_dir).operating_point
    assert verdict.label == ("abnormal" if study_p >= op.thresholds["patient"] else "normal")
    text = " ".join(verdict.selection)
    assert "not axial" in text and "localiser" in text and "L5-S1 T1" in text
    assert result.skipped == []  # notes.txt is not an image: ignored, not an error


@pytest.mark.slow
def test_cli_no_header_value_in_any_output(model_dir, study, tmp_path, capsys):
    folder, t1, _ = study
    saliency = tmp_path / "sal"
    code = main(["predict", "--model", str(model_dir), str(folder), str(t1["L3-L4"]),
                 "--saliency", str(saliency), "--no-progress"])  # fmt: skip
    assert code == 0
    out, err = capsys.readouterr()
    lines = [json.loads(line) for line in out.splitlines()]
    assert sum(line["type"] == "image" for line in lines) == 7
    names = sorted(p.name for p in saliency.iterdir())
    assert len(names) == 7 and all(line["saliency"].startswith(str(saliency)) for line in lines[:7])
    everything = out + err + " ".join(names)
    for keyword, value in SECRETS.items():
        assert value not in everything, keyword
        assert value.replace("^", " ") not in everything, keyword
    for uid in ("1.2.3.4.1001", "1.2.3.4.1002"):
        assert uid not in everything


def test_bad_files_skipped_and_counted_exit_2_when_nothing_readable(model_dir, tmp_path, capsys):
    good, bad = tmp_path / "good.png", tmp_path / "bad.png"
    Image.fromarray(_pixels(1).astype(np.uint8)).save(good)
    data = bytearray(good.read_bytes())
    data[60] ^= 0xFF  # inside IDAT: the CRC no longer matches
    bad.write_bytes(bytes(data))
    (tmp_path / "empty.dcm").write_bytes(b"")
    assert main(["predict", "--model", str(model_dir), str(tmp_path), "--top-k", "0", "--no-progress"]) == 0
    out, err = capsys.readouterr()
    assert len(out.splitlines()) == 2  # one image, one study
    skipped = [line for line in err.splitlines() if line.startswith("skipped:")]
    assert len(skipped) == 2 and any("bad.png: corrupt PNG" in line for line in skipped)
    assert "1 image(s), 1 study, 2 skipped" in err
    assert main(["predict", "--model", str(model_dir), str(bad), str(tmp_path / "nope.png")]) == 2
    err = capsys.readouterr().err
    assert "nothing readable in 2 input(s) (2 skipped)" in err


def test_missing_operating_point_names_file_and_command(model_dir, tmp_path, capsys):
    bare = tmp_path / "bare"
    save_model(load_model(model_dir), bare, PreprocessSpec.of_model(32))
    assert load_model(bare) is not None  # the model itself still loads
    with pytest.raises(InputError, match=rf"missing {layout.OPERATING_POINT}, .*\(write with `lumbarclip evaluate"):
        Predictor.load(bare)
    assert main(["predict", "--model", str(bare), "x.png"]) == 2
    assert "lumbarclip evaluate" in capsys.readouterr().err


def test_only_validated_findings_are_shown(model_dir, predictor, tmp_path):
    """Scores only for kinds that passed the valid-AUROC gate, in the classifier's own order;
    the other kinds listed once per study as not validated; no gate at all: no findings."""
    import shutil

    from _model_folder import VALIDATED

    from lumbarclip.findings import LEVEL_KINDS
    from lumbarclip.inference.findings import FindingClassifier

    paths = []
    for i, name in enumerate(("T2_0003_D4.png", "T1_0003_D4.png")):
        paths.append(tmp_path / name)
        Image.fromarray(_pixels(i).astype(np.uint16)).save(paths[-1])
    result = predictor.predict(paths, top_k=len(LEVEL_KINDS))
    model = load_model(model_dir)
    scores = FindingClassifier.build(model).scores(embed_images(model, paths, PreprocessSpec.of_model(model.config.image_size), progress=False), ["L4-L5"] * 2)
    for n, line in enumerate(result.images):
        shown = {f.finding: f.score for f in line.top_findings}
        assert set(shown) == set(VALIDATED)
        for kind, score in shown.items():
            assert score == pytest.approx(scores[kind][n], abs=1e-4)
    (study,) = result.studies
    assert study.not_validated == [k for k in LEVEL_KINDS if k not in VALIDATED]
    op = ModelFolder.load(model_dir).operating_point
    op.findings = FindingGate()
    ungated = tmp_path / "ungated"
    shutil.copytree(model_dir, ungated)
    add_parts(ungated, operating_point=op)
    bare = Predictor.load(ungated).predict(paths, top_k=3)  # no gate recorded: nothing is shown
    assert all(line.top_findings == [] for line in bare.images)
    assert bare.studies[0].not_validated == list(LEVEL_KINDS)


def test_head_scorer_shows_the_finding_heads_own_scores(tmp_path):
    """When evaluation chose the finding head on valid, predict shows the head's sigmoid per
    validated kind, computed here apart from Predictor (the eval loader, then the head)."""
    from _model_folder import VALIDATED

    from lumbarclip.inference import load_images
    from lumbarclip.inference.findings import head_outputs

    folder = make_model_folder(tmp_path / "model", finding_head=True)
    op = ModelFolder.load(folder).operating_point
    op.findings = replace(op.findings, scorer="head")
    add_parts(folder, operating_point=op)
    paths = []
    for i, name in enumerate(("T2_0004_D3.png", "T1_0004_D3.png")):
        paths.append(tmp_path / name)
        Image.fromarray(_pixels(10 + i).astype(np.uint16)).save(paths[-1])
    result = Predictor.load(folder, salt="s").predict(paths, top_k=5)
    scores, _ = head_outputs(load_model(folder), load_images(paths, PreprocessSpec.of_model(32), False))
    for n, line in enumerate(result.images):
        shown = {f.finding: f.score for f in line.top_findings}
        assert set(shown) == set(VALIDATED)
        for kind, score in shown.items():
            assert score == pytest.approx(scores[kind][n], abs=1e-4)

"""The SR and Secondary Captures: written with highdicom, read back with highdicom and with
plain pydicom (tags walked by hand), against the values they were built from; the SR's TID 1500
structure and codes, and dciodvfy (dicom3tools) finding no error in any of them."""

from __future__ import annotations

import hashlib
import io

import highdicom as hd
import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.uid import ComprehensiveSRStorage, SecondaryCaptureImageStorage

from lumbarclip.inference.results import Disc, ImageResult, StudyResult
from lumbarclip.pacs.sr import INTENDED_USE, SCHEME, ModelInfo, build_overlays, build_report, level_findings, read_report
from lumbarclip.synth.cohort import CohortConfig, make_cohort


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    out = tmp_path_factory.mktemp("cohort")
    make_cohort(out, CohortConfig(n_patients=1, size=64, fmt="dicom"), progress=False)
    files = sorted((out / "images").glob("*.dcm"))
    return files, [pydicom.dcmread(f) for f in files]


def image_line(**fields) -> ImageResult:
    """An assessed axial image line as Predictor writes it, `fields` over the defaults."""
    base = {"path": "x.dcm", "study": "P1", "series": 1, "sequence": "T2", "level": None, "plane": "axial",
            "plane_from": "DICOM header", "in_distribution": True, "ood_score": 0.5, "p_abnormal": 0.5,
            "label": "normal"}  # fmt: skip
    return ImageResult(**(base | fields))


def study_line(**fields) -> StudyResult:
    """A study line as Predictor writes it (no verdict unless `fields` give one)."""
    base = {"study": "P1", "n_images": 6, "n_in_distribution": 6, "p_abnormal_mean_raw": 0.5, "p_abnormal": None,
            "label": None, "threshold": 0.5, "rule": None, "selection": [], "not_validated": []}  # fmt: skip
    return StudyResult(**(base | fields))


def fake_images(files, assessed=None):
    """Predictor-shaped per-image results: level from the file name, two findings each (a disc
    bulge, private code; a protrusion, SNOMED CT); images not in `assessed` (indices) were
    refused by the input guard: no verdict, no findings, a reason."""
    levels = {"D3": "L3-L4", "D4": "L4-L5", "D5": "L5-S1"}
    out = []
    for i, f in enumerate(files):
        level = levels[f.stem.split("_")[-1]]
        if assessed is not None and i not in assessed:
            out.append(image_line(path=str(f), level=level, in_distribution=False, p_abnormal=None, label=None,
                                  reason="not assessed: unlike the images the model was evaluated on"))  # fmt: skip
            continue
        out.append(image_line(
            path=str(f), level=level, p_abnormal=0.1 * i,
            top_findings=[
                {"finding": "bulge", "level": level, "score": 0.30 + 0.05 * i},
                {"finding": "protrusion", "level": level, "score": 0.2},
            ],
        ))  # fmt: skip
    return out


def roundtrip(ds) -> pydicom.Dataset:
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    buf.seek(0)
    return buf


def test_sr_reads_back_with_highdicom_and_pydicom(study):
    files, sources = study
    images = fake_images(files)
    result = study_line(label="abnormal", p_abnormal=0.8765432101234567, threshold=0.4321)
    sr = build_report(sources, result, images, sources, ModelInfo.from_card({"name": "tiny", "version": "1.2"}))
    buf = roundtrip(sr)

    hsr = hd.sr.srread(buf)  # highdicom parses it as a Comprehensive SR
    assert isinstance(hsr, hd.sr.ComprehensiveSR)
    got = read_report(hsr)
    assert got["verdict"] == "abnormal"
    assert got["p_abnormal"] == result.p_abnormal  # exact: FloatingPointValue
    assert got["threshold"] == result.threshold
    assert (got["model_name"], got["model_version"]) == ("tiny", "1.2")
    assert "Not for diagnostic use" in got["intended_use"] and len(got["intended_use"]) <= 256
    assert got["plane"] == "axial"  # the plane the predict lines assessed
    assert got["levels"] == level_findings(images)
    assert got["levels"]["L4-L5"]["bulge"] == pytest.approx(max(0.30 + 0.05 * i for i, im in enumerate(images) if im.level == "L4-L5"))

    buf.seek(0)
    ds = pydicom.dcmread(buf)  # and plain pydicom, walking the tags
    assert ds.SOPClassUID == ComprehensiveSRStorage and ds.Modality == "SR"
    assert ds.StudyInstanceUID == sources[0].StudyInstanceUID
    assert ds.SeriesInstanceUID not in {s.SeriesInstanceUID for s in sources}
    assert ds.PatientID == sources[0].PatientID
    assert ds.ContentQualification == "RESEARCH" and ds.CompletionFlag == "COMPLETE"
    evidence = {
        sop.ReferencedSOPInstanceUID
        for series in ds.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence
        for sop in series.ReferencedSOPSequence
    }
    assert evidence == {s.SOPInstanceUID for s in sources}
    assert (ds.ContentTemplateSequence[0].TemplateIdentifier, ds.ConceptNameCodeSequence[0].CodeValue) == ("1500", "126000")
    assert [item.CodingSchemeDesignator for item in ds.CodingSchemeIdentificationSequence] == [SCHEME]
    root = {code(i.ConceptNameCodeSequence): i for i in ds.ContentSequence}
    library = [c.ReferencedSOPSequence[0].ReferencedSOPInstanceUID for g in root["DCM", "111028"].ContentSequence for c in g.ContentSequence]
    assert sorted(library) == sorted(s.SOPInstanceUID for s in sources) and got["images"] == library
    study_group, *level_groups = root["DCM", "126010"].ContentSequence  # Imaging Measurements
    items = {code(i.ConceptNameCodeSequence): i for i in study_group.ContentSequence}
    assert items["DCM", "112039"].TextValue == "study"  # Tracking Identifier
    assert code(items["DCM", "121073"].ConceptCodeSequence) == ("SCT", "263654008")  # Impression: Abnormal
    assert float(items["DCM", "122157"].MeasuredValueSequence[0].FloatingPointValue) == result.p_abnormal  # Probability
    assert float(items["DCM", "122411"].MeasuredValueSequence[0].FloatingPointValue) == result.threshold  # Threshold Value
    assert (items["DCM", "111001"].TextValue, items["DCM", "111003"].TextValue) == ("tiny", "1.2")  # Algorithm Name/Version
    assert items[SCHEME, "INTENDED_USE"].TextValue == INTENDED_USE
    assert code(items["SCT", "363698007"].ConceptCodeSequence) == ("SCT", "122496007")  # Finding site: lumbar spine
    coded = [(code(i.ConceptNameCodeSequence), code(i.ConceptCodeSequence)) for g in level_groups for i in g.ContentSequence if i.ValueType == "CODE"]
    sites = {value for name, value in coded if name == ("SCT", "363698007")}  # Finding Site
    assert sites == {("SCT", "62551000"), ("SCT", "84020006"), ("SCT", "715056000")}  # L3/L4, L4/L5, L5/S1 disc
    kinds = {value for name, value in coded if name == ("DCM", "121071")}  # Finding
    assert kinds == {("SCT", "73589001"), (SCHEME, "BULGE")}  # herniation (protrusion); the bulge is private
    assert len(level_groups) == sum(len(scores) for scores in got["levels"].values())
    assert len(hd.sr.srread(roundtrip(sr)).content.get_image_measurement_groups()) == 1 + len(level_groups)


def code(sequence) -> tuple[str, str]:
    return sequence[0].CodingSchemeDesignator, sequence[0].CodeValue


def test_normal_verdict_and_minimal_headers(study):
    files, sources = study
    bare = [pydicom.Dataset(s) for s in sources]
    for ds in bare:  # a minimal sender: no patient/study type-2 attributes at all
        for kw in ("PatientName", "PatientID", "StudyDate", "StudyTime", "AccessionNumber"):
            if kw in ds:
                delattr(ds, kw)
    sr = build_report(bare, study_line(label="normal", p_abnormal=0.1), fake_images(files)[:1], bare[:1], ModelInfo.from_card({}))
    got = read_report(pydicom.dcmread(roundtrip(sr)))
    assert got["verdict"] == "normal" and got["images"] == [bare[0].SOPInstanceUID]


def test_secondary_capture_overlays(study, tmp_path):
    _, sources = study
    rgb = np.zeros((64, 64, 3), np.uint8)
    rgb[..., 0] = np.arange(64)[None, :] * 4
    png = tmp_path / "overlay.png"
    Image.fromarray(rgb).save(png)
    (sc,) = build_overlays(sources[:1], [png])
    ds = pydicom.dcmread(roundtrip(sc))
    assert ds.SOPClassUID == SecondaryCaptureImageStorage
    assert ds.StudyInstanceUID == sources[0].StudyInstanceUID
    np.testing.assert_array_equal(ds.pixel_array, rgb)


def test_model_info_from_card(tmp_path):
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(b"weights")
    card = {"name": "LumbarCLIP image-only classifier", "versions": {"lumbarclip": "0.1.0"}, "intended_use": "research"}
    info = ModelInfo.from_card(card, weights)
    assert info.name == card["name"]
    assert info.version == "lumbarclip 0.1.0 weights sha256:" + hashlib.sha256(b"weights").hexdigest()[:12]
    assert ModelInfo.from_card({"version": "2"}, weights).version == "2"
    assert ModelInfo.from_card({}).version == "unversioned"


def _dciodvfy_errors(path) -> list[str]:
    import shutil
    import subprocess

    if shutil.which("dciodvfy") is None:
        pytest.skip("dciodvfy (Debian dicom3tools) is not installed")
    run = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True)
    return [line for line in (run.stdout + run.stderr).splitlines() if line.startswith("Error")]


def test_not_assessed_sr_gives_reason_and_no_probability(study, tmp_path):
    files, sources = study
    images = fake_images(files, assessed=range(2, len(files)))  # two images refused by the input guard
    result = study_line(threshold=0.43, reason="no study verdict: 4 in-distribution image(s) are not the evaluated study unit")
    sr = build_report(sources, result, images, sources, ModelInfo.from_card({"name": "tiny", "version": "1.2"}))
    back = read_report(pydicom.dcmread(roundtrip(sr)))
    assert back["verdict"] == "not assessed" and "p_abnormal" not in back and "threshold" not in back
    assert "not_validated" not in back
    assert back["reason"] == result.reason
    assert back["images_not_assessed"].startswith("2 of 6: not assessed: unlike the images")
    assert set(back["levels"]) == {"L3-L4", "L4-L5", "L5-S1"}  # the four assessed images' findings
    path = tmp_path / "sr.dcm"
    sr.save_as(path, enforce_file_format=True)
    assert _dciodvfy_errors(path) == []


def test_verdict_sr_validates_with_dciodvfy(study, tmp_path):
    files, sources = study
    result = study_line(label="normal", p_abnormal=0.12, threshold=0.43)
    sr = build_report(sources, result, fake_images(files), sources, ModelInfo.from_card({"name": "tiny", "version": "1.2"}))
    path = tmp_path / "sr.dcm"
    sr.save_as(path, enforce_file_format=True)
    assert _dciodvfy_errors(path) == []


def test_amended_sr_names_its_predecessor_and_validates(study, tmp_path):
    files, sources = study
    model = ModelInfo.from_card({"name": "tiny", "version": "1.2"})
    first = pydicom.dcmread(roundtrip(build_report(sources[:-1], study_line(label="normal", p_abnormal=0.2, threshold=0.4), fake_images(files[:-1]), sources[:-1], model)))
    amended = build_report(
        sources, study_line(label="abnormal", p_abnormal=0.7, threshold=0.4), fake_images(files), sources, model, [first]
    )
    (study_ref,) = amended.PredecessorDocumentsSequence
    assert study_ref.StudyInstanceUID == first.StudyInstanceUID
    (series_ref,) = study_ref.ReferencedSeriesSequence
    assert series_ref.SeriesInstanceUID == first.SeriesInstanceUID
    (sop_ref,) = series_ref.ReferencedSOPSequence
    assert (sop_ref.ReferencedSOPInstanceUID, sop_ref.ReferencedSOPClassUID) == (first.SOPInstanceUID, first.SOPClassUID)
    assert amended.SOPInstanceUID != first.SOPInstanceUID
    path = tmp_path / "amended.dcm"
    amended.save_as(path, enforce_file_format=True)
    assert _dciodvfy_errors(path) == []


def test_kinds_not_validated_get_one_note_and_no_score(study, tmp_path):
    files, sources = study
    images = fake_images(files)  # protrusion scored by the images all the same: left out
    result = study_line(label="abnormal", p_abnormal=0.6, threshold=0.4, not_validated=["extrusion", "protrusion"])
    sr = build_report(sources, result, images, sources, ModelInfo.from_card({"name": "tiny", "version": "1.2"}))
    ds = pydicom.dcmread(roundtrip(sr))
    back = read_report(ds)
    assert back["not_validated"] == ["extrusion", "protrusion"]
    assert back["levels"] == level_findings(images, ["protrusion"]) and all(set(s) == {"bulge"} for s in back["levels"].values())
    study_group = next(i for i in ds.ContentSequence if code(i.ConceptNameCodeSequence) == ("DCM", "126010")).ContentSequence[0]
    notes = [i.TextValue for i in study_group.ContentSequence if i.ValueType == "TEXT" and i.TextValue.startswith("Not validated")]
    assert notes == ["Not validated for this model: extrusion, protrusion"]
    path = tmp_path / "sr.dcm"
    sr.save_as(path, enforce_file_format=True)
    assert _dciodvfy_errors(path) == []


def test_secondary_capture_validates_with_dciodvfy(study, tmp_path):
    _, sources = study
    png = tmp_path / "overlay.png"
    Image.fromarray(np.full((64, 64, 3), 127, np.uint8)).save(png)
    for i, sc in enumerate(build_overlays(sources[:2], [png, png])):
        path = tmp_path / f"sc{i}.dcm"
        sc.save_as(path, enforce_file_format=True)
        assert _dciodvfy_errors(path) == []


def test_level_without_a_snomed_disc_reads_back_by_name(study):
    files, sources = study
    images = [image_line(level="T12-L1", top_findings=[{"finding": "canal_narrowing", "level": None, "score": 0.7}])]
    sr = build_report(sources, study_line(label="abnormal", p_abnormal=0.9), images, sources[:1], ModelInfo("tiny", "1"))
    assert read_report(pydicom.dcmread(roundtrip(sr)))["levels"] == {"T12-L1": {"canal_narrowing": 0.7}}


def test_one_tid1410_group_per_lumbar_disc_with_its_box_and_grade(study, tmp_path):
    """Discs from predict lines: lumbar ones become planar ROI groups (SNOMED CT disc as finding
    site, the box as a closed polyline on its image, Pfirrmann only where validated); thoracic
    and not-assessed entries none; dciodvfy finds no error."""
    files, sources = study
    images = fake_images(files)
    images[0] = images[0].model_copy(update={"discs": [
        Disc(level="L5-S1", box_xyxy=[10.0, 40.0, 30.5, 48.0], score=0.91, pfirrmann=4, validated=True,
             classes={"bulge": 0.8}),
        Disc(level="L4-L5", box_xyxy=[12.0, 28.0, 31.0, 35.0], score=0.88, pfirrmann=None, validated=False,
             reason="Pfirrmann grade at L4-L5 not validated on valid", classes={}),
        Disc(level="T12-L1", box_xyxy=[14.0, 2.0, 30.0, 8.0], score=0.5, pfirrmann=None, validated=False),
    ]})  # fmt: skip
    images[1] = images[1].model_copy(update={"discs": [Disc(level=None, box_xyxy=None, validated=False, reason="not assessed: no disc found")]})
    result = study_line(label="abnormal", p_abnormal=0.8,
                        selection=["series 2: sagittal T2, 15 slices: used", "T2: series 2: middle slice (8 of 15 along the slice normal)"])  # fmt: skip
    sr = build_report(sources, result, images, sources, ModelInfo.from_card({"name": "tiny", "version": "1.2"}))
    path = tmp_path / "sr.dcm"
    sr.save_as(path, enforce_file_format=True)
    back = read_report(pydicom.dcmread(path))
    assert set(back["discs"]) == {"L5-S1", "L4-L5"}
    low = back["discs"]["L5-S1"]
    assert low["pfirrmann"] == 4.0 and low["score"] == pytest.approx(0.91)
    assert low["box_xyxy"] == pytest.approx([10.0, 40.0, 30.5, 48.0])
    assert low["finding_site"] == "715056000"  # SNOMED CT L5/S1 disc
    assert back["discs"]["L4-L5"]["pfirrmann"] is None
    assert back["slices_used"] == "T2: series 2: middle slice (8 of 15 along the slice normal)"
    assert _dciodvfy_errors(path) == []

"""Against a real Orthanc (Debian package, started by the `orthanc` fixture): a study uploaded
to Orthanc is C-STOREd to our node, analysed, and the SR lands back in the same study in
Orthanc; the pull mode does the same over DICOMweb. Verdict and probability in the SR must
equal `Predictor.predict` (what `lumbarclip predict` prints) on the same files."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import highdicom as hd
import pydicom
import pytest
from orthanc import NODE_AET, ORTHANC_AET, orthanc  # noqa: F401  (fixture)

from lumbarclip.inference.predict import Predictor
from lumbarclip.inference.results import StudyResult
from lumbarclip.pacs.analyse import StudyAnalyser
from lumbarclip.pacs.node import Destination, NodeConfig, PacsNode, send_datasets
from lumbarclip.pacs.sr import ModelInfo, build_report, read_report
from lumbarclip.synth.cohort import CohortConfig, make_cohort


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> dict[str, list[Path]]:
    """Two synthetic patients as DICOM, one folder per study: {StudyInstanceUID: files}."""
    out = tmp_path_factory.mktemp("cohort")
    make_cohort(out, CohortConfig(n_patients=2, size=64, fmt="dicom"), progress=False)
    by_study: dict[str, list[Path]] = {}
    for f in sorted((out / "images").glob("*.dcm")):
        uid = str(pydicom.dcmread(f, stop_before_pixels=True).StudyInstanceUID)
        folder = out / "studies" / uid
        folder.mkdir(parents=True, exist_ok=True)
        by_study.setdefault(uid, []).append(Path(shutil.copy(f, folder)))
    return by_study


def start_node(orthanc, process, tmp_path: Path) -> PacsNode:  # noqa: F811
    dest = Destination("127.0.0.1", orthanc.dicom_port, ORTHANC_AET)
    # 2 s quiet: longer than any pause between two of Orthanc's C-STOREs on a loaded machine
    config = NodeConfig(NODE_AET, "127.0.0.1", orthanc.node_port, 2.0, tmp_path / "work", "salt")
    return PacsNode(config, process, lambda ds: send_datasets(ds, dest, NODE_AET)).start()


def stored_reports(orthanc, orthanc_study: str) -> list[pydicom.Dataset]:  # noqa: F811
    out = []
    for series in orthanc.series_of(orthanc_study, "SR"):
        for instance in series["Instances"]:
            out.append(pydicom.dcmread(io.BytesIO(orthanc.instance_bytes(instance))))
    return out


def test_orthanc_to_node_and_back(orthanc, cohort, tmp_path):  # noqa: F811
    """The wiring alone (stand-in diagnosis): Orthanc C-STOREs to the node, the SR returns."""

    def process(folder, previous=()):
        files = sorted(folder.glob("*.dcm"))
        sources = [pydicom.dcmread(f, stop_before_pixels=True) for f in files]
        study = StudyResult(
            study="s", n_images=len(files), n_in_distribution=len(files), p_abnormal_mean_raw=None,
            p_abnormal=len(files) / 100, label="abnormal", threshold=0.5, rule=None, selection=[], not_validated=[],
        )  # fmt: skip
        return [build_report(sources, study, [], sources, ModelInfo("stand-in", "0"))]

    node = start_node(orthanc, process, tmp_path)
    try:
        ids = {uid: orthanc.upload(files) for uid, files in cohort.items()}
        for oid in ids.values():
            assert orthanc.send_to_node(oid)  # synchronous C-STORE job
        assert node.wait_idle(60, n_records=2)
    finally:
        node.stop()
    assert [r.ok for r in node.records] == [True, True], [r.error for r in node.records]
    for uid, oid in ids.items():
        (sr,) = stored_reports(orthanc, oid)
        assert sr.StudyInstanceUID == uid
        assert read_report(sr)["p_abnormal"] == len(cohort[uid]) / 100


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    from _model_folder import make_model_folder

    return make_model_folder(tmp_path_factory.mktemp("model"))


@pytest.fixture(scope="module")
def predictor(model_dir, cohort):
    first = pydicom.dcmread(next(iter(cohort.values()))[0], stop_before_pixels=True)
    assert "ImagePositionPatient" in first  # slice choice needs the slice geometry
    return Predictor.load(model_dir, runtime="torch")


def expected(predictor, files: list[Path]) -> StudyResult:
    """What `lumbarclip predict STUDY_FOLDER` says about the study."""
    (study,) = predictor.predict([files[0].parent], top_k=0).studies
    return study


@pytest.mark.slow
def test_end_to_end_sr_matches_predict(orthanc, cohort, predictor, tmp_path):  # noqa: F811
    # top_k=0: no per-finding zero-shot (building its prompt embeddings takes minutes on a
    # loaded 2-core machine); the SR's findings part is tested in test_pacs_sr.py
    node = start_node(orthanc, StudyAnalyser(predictor, top_k=0, overlays=True), tmp_path)
    try:
        ids = {uid: orthanc.upload(files) for uid, files in cohort.items()}
        for oid in ids.values():
            orthanc.send_to_node(oid)
        assert node.wait_idle(120, n_records=2)
    finally:
        node.stop()
    assert all(r.ok for r in node.records), [r.error for r in node.records]
    for uid, oid in ids.items():
        reports = [r for r in stored_reports(orthanc, oid) if r.ManufacturerModelName != "stand-in"]
        assert len(reports) == 1
        sr = hd.sr.srread(_as_file(reports[0]))  # highdicom parses what Orthanc stored
        got, want = read_report(sr), expected(predictor, cohort[uid])
        assert got["verdict"] == want.label
        assert got["p_abnormal"] == want.p_abnormal
        assert got["threshold"] == want.threshold
        assert got["model_name"] == predictor.card["name"]
        sources = {str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID) for f in cohort[uid]}
        assert got["images"] and set(got["images"]) <= sources
        # the saliency overlays: one Secondary Capture per analysed image, in the same study
        (overlays,) = orthanc.series_of(oid, "OT")
        assert len(overlays["Instances"]) == len(got["images"])


@pytest.mark.slow
def test_dicomweb_pull_stows_sr(orthanc, cohort, predictor, model_dir, capsys):  # noqa: F811
    from lumbarclip.cli import main

    uid, files = next(iter(cohort.items()))
    oid = orthanc.upload(files)
    before = len(stored_reports(orthanc, oid))
    assert main(["pacs", "run", "--model", str(model_dir), "--dicomweb", orthanc.dicomweb, "--study", uid, "--top-k", "0"]) == 0
    line = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    want = expected(predictor, files)
    assert line["p_abnormal"] == want.p_abnormal and line["stored"]
    assert uid not in json.dumps(line)  # the summary names the study by its hash only
    reports = stored_reports(orthanc, oid)
    assert len(reports) == before + 1
    assert any(str(r.SOPInstanceUID) == line["sr"] and read_report(r)["p_abnormal"] == line["p_abnormal"] for r in reports)


def _as_file(ds: pydicom.Dataset) -> io.BytesIO:
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    buf.seek(0)
    return buf

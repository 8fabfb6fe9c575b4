"""Where a report bank's texts came from: recorded in the bank, read back, and worked out from
the manifest's cohort only when every report is a note `lumbarclip synth` wrote; any doubt
means user reports."""

import json

import numpy as np
import pytest
from safetensors.numpy import save_file

from _model_folder import add_parts, make_model_folder
from lumbarclip.bundle import ModelFolder, layout
from lumbarclip.bundle.reportbank import SYNTHETIC_REPORTS, USER_REPORTS, ReportBank
from lumbarclip.data.manifest import read_manifest
from lumbarclip.inference.reportbank import reports_source


def unit_rows(n: int, d: int = 4) -> np.ndarray:
    emb = np.random.default_rng(0).normal(size=(n, d))
    return emb / np.linalg.norm(emb, axis=1, keepdims=True)


@pytest.mark.parametrize("source", [SYNTHETIC_REPORTS, USER_REPORTS])
def test_source_round_trips(tmp_path, source):
    folder = make_model_folder(tmp_path)
    add_parts(folder, bank=ReportBank(unit_rows(3, 16), ["a", "b", "c"], [0, 1, 0], source))
    assert ModelFolder.load(folder).bank.source == source


def test_a_bank_without_a_recorded_source_is_user_reports(tmp_path):
    folder = make_model_folder(tmp_path)
    save_file({"embeddings": unit_rows(2, 16).astype(np.float32), "labels": np.array([0, 1])}, str(folder / layout.BANK_ARRAYS))
    (folder / layout.BANK_TEXTS).write_text('{"text": "a", "label": 0}\n{"text": "b", "label": 1}\n')
    assert ModelFolder.load(folder).bank.source == USER_REPORTS
    assert ReportBank(unit_rows(1), ["a"], [0]).source == USER_REPORTS
    with pytest.raises(ValueError, match="source"):
        ReportBank(unit_rows(1), ["a"], [0], "hospital")


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    from lumbarclip.synth.cohort import CohortConfig, make_cohort

    manifest = make_cohort(
        tmp_path_factory.mktemp("cohort"), CohortConfig(n_patients=6, size=16), progress=False, workers=1
    )
    pairs = sorted({(r.patient_id, r.report) for r in read_manifest(manifest).records})
    return manifest, pairs


def test_the_synthetic_writers_cohort_is_synthetic(cohort):
    manifest, pairs = cohort
    assert len(pairs) == 6
    assert reports_source(manifest, pairs) == SYNTHETIC_REPORTS
    assert reports_source(manifest, pairs[:2]) == SYNTHETIC_REPORTS  # a split's subset


def test_anything_else_is_user_reports(cohort, tmp_path):
    manifest, pairs = cohort
    pid, text = pairs[0]
    assert reports_source(manifest, [(pid, text + " Patient John Smith.")]) == USER_REPORTS  # edited note
    assert reports_source(manifest, [(pairs[1][0], text)]) == USER_REPORTS  # note of another patient
    assert reports_source(manifest, []) == USER_REPORTS
    (tmp_path / "manifest.csv").write_bytes(manifest.read_bytes())  # no findings.jsonl beside it
    assert reports_source(tmp_path / "manifest.csv", pairs) == USER_REPORTS
    # a twin's findings.jsonl: real notes, each record with the parsed findings
    lines = (manifest.parent / "findings.jsonl").read_text().splitlines()
    twin = [json.dumps({**json.loads(line), "parsed": {}}) for line in lines]
    (tmp_path / "findings.jsonl").write_text("\n".join(twin) + "\n")
    assert reports_source(tmp_path / "manifest.csv", pairs) == USER_REPORTS
    (tmp_path / "findings.jsonl").write_text("not json\n")
    assert reports_source(tmp_path / "manifest.csv", pairs) == USER_REPORTS

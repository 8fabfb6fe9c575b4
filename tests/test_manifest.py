"""Manifest contract: reading, row validation with line numbers, `check_manifest`, `data check`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lumbarclip import cli
from lumbarclip.data.manifest import (
    ImageRecord,
    check_manifest,
    read_manifest,
    write_manifest,
)
from lumbarclip.errors import InputError
from lumbarclip.findings import Findings, LevelFindings

HEADER = "image_path,patient_id,split,label,report,sequence,level,findings"


def make_images(root: Path, *names: str) -> None:
    for name in names:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.arange(64, dtype=np.uint8).reshape(8, 8)).save(root / name)


def write_text(path: Path, *lines: str) -> Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def run_cli(monkeypatch: pytest.MonkeyPatch, *argv: str) -> int:
    monkeypatch.setattr(cli, "COMMANDS", ("data",))
    return cli.main(list(argv))


def test_write_then_read_round_trip(tmp_path):
    make_images(tmp_path, "img/a.png", "img/b.png")
    findings = Findings({"L4-L5": LevelFindings("L4-L5", disc="bulge")}).to_json()
    rows = [
        {"image_path": "img/a.png", "patient_id": "0001", "split": "train", "label": 1,
         "report": "Disc bulge at L4-L5.", "sequence": "T2", "level": "L4-L5", "findings": findings},
        {"image_path": "img/b.png", "patient_id": "0002", "split": "test", "label": 0,
         "report": "Normal study, no herniation.", "sequence": "T1", "level": "L3-L4", "findings": ""},
    ]  # fmt: skip
    path = write_manifest(tmp_path / "m.csv", rows)
    manifest = read_manifest(path)
    assert manifest.skipped == [] and len(manifest.records) == 2
    first = manifest.records[0]
    assert first == ImageRecord((tmp_path / "img/a.png").resolve(), "0001", "train", 1,
                                "Disc bulge at L4-L5.", "T2", "L4-L5", findings)  # fmt: skip
    assert Findings.from_json(first.findings).abnormal
    assert [r.patient_id for r in manifest.split("test")] == ["0002"]
    with pytest.raises(InputError, match="already exists"):
        write_manifest(path, rows)


def test_line_numbers_survive_bom_blank_lines_and_multiline_reports(tmp_path):
    make_images(tmp_path, "a.png", "b.png", "c.png")
    text = (
        "\ufeffimage_path,patient_id,split,label,report\n"
        "\n"
        'a.png,1,train,1,"Bulge at L4-L5.\nCompressing the thecal sac."\n'
        "\n"
        "b.png,2,train,7,Normal.\n"
        "c.png,3,valid,0,Normal.\n"
    )
    (tmp_path / "m.csv").write_text(text, encoding="utf-8")
    manifest = read_manifest(tmp_path / "m.csv")
    assert manifest.skipped == [(6, "label must be 0 or 1, got '7'")]
    assert manifest.records[0].report == "Bulge at L4-L5.\nCompressing the thecal sac."
    assert [r.patient_id for r in manifest.records] == ["1", "3"]


def test_column_names_are_case_insensitive_and_extra_columns_ignored(tmp_path):
    make_images(tmp_path, "a.png")
    header = "Image_Path,Patient_ID,Split,Label,Report,Site"
    write_text(tmp_path / "m.csv", header, "a.png,1,test,0,Normal.,X")
    assert read_manifest(tmp_path / "m.csv").records[0].split == "test"


def test_patient_with_two_labels_loses_every_row(tmp_path):
    make_images(tmp_path, "a.png", "b.png", "c.png")
    write_text(tmp_path / "m.csv", HEADER, "a.png,1,train,1,Bulge.,,,", "b.png,1,train,0,Normal.,,,",
               "c.png,2,train,0,Normal.,,,")  # fmt: skip
    manifest = read_manifest(tmp_path / "m.csv")
    assert [r.patient_id for r in manifest.records] == ["2"]
    assert [line for line, _ in manifest.skipped] == [2, 3]
    assert all("patient 1 has rows labelled 0 and 1 (lines 2, 3)" in r for _, r in manifest.skipped)


def _cohort(tmp_path: Path, *extra: str) -> Path:
    make_images(tmp_path, *(f"p{i}_{s}.png" for i in range(1, 5) for s in "ab"))
    lines = [HEADER]
    for i, (split, label) in enumerate([("train", 1), ("train", 0), ("valid", 1), ("test", 1)], 1):
        lines += [f"p{i}_{s}.png,{i},{split},{label},Report {i}.,T2,L4-L5," for s in "ab"]
    return write_text(tmp_path / "m.csv", *lines, *extra)


def test_check_counts_per_split(tmp_path):
    path = _cohort(tmp_path, "gone.png,5,test,0,Normal.,,,")
    report = check_manifest(read_manifest(path))
    assert report.ok and (report.n_images, report.n_patients) == (8, 4)
    counts = ("images", "patients", "patients_normal", "patients_abnormal")
    assert report.splits["train"] == dict(zip(counts, (4, 2, 1, 1)))
    assert report.splits["test"] == dict(zip(counts, (2, 1, 0, 1)))
    assert report.missing_images == [(10, "gone.png")]
    assert report.skipped == [(10, "image not found: gone.png")]


def test_patient_in_two_splits_is_an_error(tmp_path, monkeypatch, capsys):
    make_images(tmp_path, "x.png")
    path = _cohort(tmp_path, "x.png,1,test,1,Report 1.,T1,L4-L5,")
    report = check_manifest(read_manifest(path))
    assert report.split_overlap == {"1": ["train", "test"]} and not report.ok
    assert run_cli(monkeypatch, "data", "check", str(path)) == 2
    err = capsys.readouterr().err
    assert "patient 1 appears in more than one split (train, test)" in err


def test_data_check_cli(tmp_path, monkeypatch, capsys):
    path = _cohort(tmp_path, "gone.png,5,test,0,Normal.,,,")
    assert run_cli(monkeypatch, "data", "check", str(path)) == 0
    out = capsys.readouterr().out
    assert "8 images, 4 patients" in out and "line 10: image not found: gone.png" in out
    assert run_cli(monkeypatch, "data", "check", "--strict", str(path)) == 2
    capsys.readouterr()
    assert run_cli(monkeypatch, "data", "check", "--json", str(path)) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["splits"]["valid"]["patients"] == 1 and summary["missing_images"][0]["line"] == 10


def test_check_load_finds_broken_images(tmp_path, monkeypatch, capsys):
    path = _cohort(tmp_path)
    (tmp_path / "p3_a.png").write_bytes(b"not a png at all")
    assert check_manifest(read_manifest(path)).ok  # the file exists: only loading tells
    report = check_manifest(read_manifest(path), load_images=True)
    assert [Path(p).name for p, _ in report.unreadable_images] == ["p3_a.png"] and not report.ok
    assert run_cli(monkeypatch, "data", "check", "--load", str(path)) == 2
    assert "p3_a.png: cannot read image" in capsys.readouterr().err


def test_no_valid_rows_is_an_error(tmp_path):
    path = write_text(tmp_path / "m.csv", HEADER)
    report = check_manifest(read_manifest(path))
    assert report.errors == ["no valid rows"]

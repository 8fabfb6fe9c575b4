"""Mendeley adapter on generated trees: PNG slices, raw DICOM series, xlsx/csv notes, splits."""

from __future__ import annotations

import csv
from collections import Counter
from pathlib import Path

import numpy as np
import openpyxl
import pydicom
import pytest
from PIL import Image

from lumbarclip import cli
from lumbarclip.data.imageio import load_image, write_dicom
from lumbarclip.data.manifest import read_manifest
from lumbarclip.data.mendeley import build_mendeley_manifest, scan_images
from lumbarclip.data.study import classify_sequence
from lumbarclip.data.notes import patient_key
from lumbarclip.data.privacy import SALT_ENV, pseudonymise
from lumbarclip.data.splits import split_patients

PHI = {"PatientName": "Doe^Jane", "PatientID": "MRN55501", "InstitutionName": "Example Clinic"}


def run_cli(monkeypatch: pytest.MonkeyPatch, *argv: str) -> int:
    monkeypatch.setattr(cli, "COMMANDS", ("data",))
    return cli.main(list(argv))


def png_slices(root: Path, *pids: str) -> None:
    """The pre-selected slices, nested by sequence like some downloads are."""
    for pid in pids:
        for seq in ("T1", "T2"):
            for disc in (3, 4, 5):
                path = root / "images" / seq / f"{seq}_{pid}_D{disc}.png"
                path.parent.mkdir(parents=True, exist_ok=True)
                rng = np.random.default_rng(int(pid) * 10 + disc)
                Image.fromarray(rng.integers(0, 255, (16, 16), dtype=np.uint8)).save(path)


def notes_xlsx(path: Path, rows: list[tuple]) -> Path:
    book = openpyxl.Workbook()
    sheet = book.active
    sheet.append(["Radiologists' notes for the Lumbar Spine MRI Dataset"])  # a title row
    sheet.append([" Patient  ID ", "Clinician's Notes", "LBP"])
    for row in rows:
        sheet.append(list(row))
    book.save(path)
    return path


def write_csv(path: Path, header: list[str], rows: list[tuple]) -> Path:
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def manifest_rows(path: Path) -> list[dict[str, str]]:
    with path.open(encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def test_png_slices_with_xlsx_notes_label_column_and_split_file(tmp_path):
    png_slices(tmp_path, "0002", "0003", "0004", "0005", "0007")
    (tmp_path / "images" / "T1" / "T1_0002_D9.png").write_bytes(b"")  # not a dataset name
    notes = notes_xlsx(tmp_path / "notes.xlsx", [
        (2, "Diffuse disc bulge at L4/L5", 1),
        (2, "compressing the thecal sac.", 1),  # a note continued on a second row
        (3, "No evidence of disc herniation.", 0),
        (4, "Broad based protrusion at L5/S1.", 1),
        ("0005", "No significant thecal sac compression.", 0),
        (6, "Normal study.", 0),  # no images for 0006; no note for 0007
    ])  # fmt: skip
    split_file = write_csv(tmp_path / "split.csv", ["patient_id", "split"],
                           [("2", "train"), ("3", "val"), ("4", "test"), ("5", "train")])  # fmt: skip
    report = build_mendeley_manifest(
        tmp_path / "images", notes, tmp_path / "out" / "manifest.csv",
        split_file=split_file, label_column="lbp",
    )  # fmt: skip
    manifest = read_manifest(tmp_path / "out" / "manifest.csv")
    assert manifest.skipped == [] and len(manifest.records) == 4 * 6
    by_patient = {r.patient_id: r for r in manifest.records}
    assert by_patient["0002"].report == "Diffuse disc bulge at L4/L5 compressing the thecal sac."
    assert {p: (r.label, r.split) for p, r in by_patient.items()} == {
        "0002": (1, "train"), "0003": (0, "valid"), "0004": (1, "test"), "0005": (0, "train"),
    }  # fmt: skip
    d5 = [r for r in manifest.records if (r.patient_id, r.sequence, r.level) == ("0004", "T2", "L5-S1")]
    assert [r.image_path for r in d5] == [(tmp_path / "images/T2/T2_0004_D5.png").resolve()]
    assert report.skipped_patients == {"0006": "no images", "0007": "no note"}
    assert report.ignored_files == {"PNG name not like T1_0002_D3.png": 1}
    assert report.sources == {"png": 4} and report.manifest.ok
    text = report.to_text()
    assert "0006: no images" in text and "0007: no note" in text and "patients skipped: 2" in text


def test_split_of_515_patients_is_360_77_78_stratified_and_reproducible():
    rng = np.random.default_rng(0)
    labels = {f"{i:04d}": int(rng.random() < 0.85) for i in range(1, 516)}
    split = split_patients(labels, seed=3)
    assert split == split_patients(labels, seed=3) and split != split_patients(labels, seed=4)
    assert Counter(split.values()) == {"train": 360, "valid": 77, "test": 78}
    overall = np.mean(list(labels.values()))
    for name in ("train", "valid", "test"):
        rate = np.mean([labels[p] for p, s in split.items() if s == name])
        assert abs(rate - overall) < 0.02


def test_split_of_tiny_cohorts_and_empty_parts():
    # too few patients to hold one out of a part: that part stays empty, nobody is lost
    assert Counter(split_patients({"a": 1, "b": 1, "c": 0}).values()) == {"train": 2, "valid": 1}
    assert set(split_patients({"a": 1}).values()) == {"train"}
    everyone = {f"{i:02d}": i % 2 for i in range(20)}
    assert set(split_patients(everyone, fractions=(1.0, 0.0, 0.0)).values()) == {"train"}
    assert Counter(split_patients(everyone, fractions=(0.5, 0.0, 0.5)).values()) == {"train": 10, "test": 10}


def test_seeded_split_through_the_cli_with_csv_notes(tmp_path, monkeypatch, capsys):
    pids = [f"{i:04d}" for i in range(10, 20)]
    png_slices(tmp_path, *pids)
    notes = write_csv(tmp_path / "notes.csv", ["patient_id", "note", "lbp"],
                      [(p, f"Note of {p}.", i % 2) for i, p in enumerate(pids)])  # fmt: skip
    base = ["data", "mendeley", "--images", str(tmp_path / "images"), "--notes", str(notes),
            "--label-column", "LBP", "--no-progress"]  # fmt: skip
    out = str(tmp_path / "m.csv")
    assert run_cli(monkeypatch, *base, "--out", out, "--seed", "1") == 0
    first = manifest_rows(tmp_path / "m.csv")
    splits = {r["patient_id"]: r["split"] for r in first}
    assert set(splits) == set(pids) and set(splits.values()) == {"train", "valid", "test"}
    assert all(len({r["split"] for r in first if r["patient_id"] == p}) == 1 for p in pids)
    assert run_cli(monkeypatch, *base, "--out", out, "--seed", "1") == 2  # no silent overwrite
    assert "already exists" in capsys.readouterr().err
    assert run_cli(monkeypatch, *base, "--out", out, "--seed", "1", "--overwrite") == 0
    assert manifest_rows(tmp_path / "m.csv") == first
    assert "seeded stratified 70/15/15 split (seed 1)" in capsys.readouterr().out


def test_split_column_of_the_notes_is_used(tmp_path):
    png_slices(tmp_path, "0002", "0010")
    rows = [("0002", "train", 0, "No herniation."), ("0010", "valid", 1, "Bulge at L4-5.")]
    notes = write_csv(tmp_path / "notes.csv", ["patient_id", "split", "lbp", "note"], rows)
    report = build_mendeley_manifest(tmp_path / "images", notes, tmp_path / "m.csv", label_column="lbp")
    assert report.split_source == "notes"
    splits = {r["patient_id"]: r["split"] for r in manifest_rows(tmp_path / "m.csv")}
    assert splits == {"0002": "train", "0010": "valid"}


def axial_series(folder: Path, desc: str, tr: float, te: float, zs: list[float],
                 tilts: list[float] | None = None, axial: bool = True) -> None:  # fmt: skip
    """One series; files are named in reverse z order so that only positions can sort them."""
    uid = pydicom.uid.generate_uid()
    for i, z in enumerate(zs):
        t = np.radians((tilts or [0.0] * len(zs))[i])
        iop = [1, 0, 0, 0, np.cos(t), np.sin(t)] if axial else [0, 1, 0, 0, 0, -1]
        write_dicom(
            folder / f"IM{len(zs) - 1 - i:03d}.ima", np.full((8, 8), 100 + i, np.uint16),
            ImageOrientationPatient=[float(v) for v in iop], ImagePositionPatient=[-4.0, -4.0, float(z)],
            SeriesInstanceUID=uid, SeriesDescription=desc, RepetitionTime=tr, EchoTime=te, **PHI,
        )  # fmt: skip


def _chosen_z(records, pid: str, sequence: str) -> dict[str, float]:
    return {
        r.level: float(pydicom.dcmread(r.image_path).ImagePositionPatient[2])
        for r in records
        if r.patient_id == pid and r.sequence == sequence
    }


def test_raw_dicom_folders(tmp_path, monkeypatch, capsys):
    root = tmp_path / "01_MRI_Data"
    study = root / "0003" / "L-SPINE_LSS_STUDY"
    axial_series(study / "SAG_T2", "t2_tse_sag", 4000, 100, [0, 4, 8, 12, 16], axial=False)
    axial_series(study / "LOC", "localizer", 8, 4, [0, 30])  # too few slices for a stack
    axial_series(study / "AX_T1", "AX SE", 600, 12, [4.0 * k for k in range(9)])  # even stack
    # one slab per disc: sizes 2, 5, 3, tilted -10, 0, +10 degrees, contiguous in z
    axial_series(study / "AX_T2", "t2_tse_tra_384", 4000, 100, [3.0 * k for k in range(10)],
                 tilts=[-10] * 2 + [0] * 5 + [10] * 3)  # fmt: skip
    # parallel slabs with gaps, a fourth one above L3-L4; T2 found from TR/TE alone
    slabs = [30.0 * s + d for s in range(4) for d in (0, 4, 8)]
    axial_series(root / "0004" / "AX FSE", "AX FSE", 4500, 110, slabs)
    axial_series(root / "0005" / "SAG", "t1_tse_sag", 500, 10, [0, 4, 8], axial=False)
    rows = [(3, "Bulge at L4/L5.", 1, "train"), (4, "Normal.", 0, "test"), (5, "Normal.", 0, "valid")]
    notes = write_csv(tmp_path / "notes.csv", ["patient_id", "note", "lbp", "split"], rows)
    out = tmp_path / "m.csv"
    assert run_cli(monkeypatch, "data", "mendeley", "--images", str(root), "--notes", str(notes),
                   "--out", str(out), "--label-column", "lbp", "--no-progress") == 0  # fmt: skip
    stdout = capsys.readouterr().out
    manifest = read_manifest(out)
    assert manifest.skipped == [] and len(manifest.records) == 6 + 3
    assert _chosen_z(manifest.records, "0003", "T1") == {"L5-S1": 4.0, "L4-L5": 16.0, "L3-L4": 28.0}
    assert _chosen_z(manifest.records, "0003", "T2") == {"L5-S1": 3.0, "L4-L5": 12.0, "L3-L4": 24.0}
    assert _chosen_z(manifest.records, "0004", "T2") == {"L5-S1": 4.0, "L4-L5": 34.0, "L3-L4": 64.0}
    assert all(load_image(r.image_path).shape == (8, 8) for r in manifest.records)
    assert "0005: no axial T1 or T2 DICOM series found" in stdout and "dicom 2" in stdout
    written = out.read_text(encoding="utf-8") + stdout
    for value in PHI.values():
        assert value not in written and value.split("^")[0] not in written


def test_scan_prefers_png_slices_over_dicom_of_the_same_patient(tmp_path):
    png_slices(tmp_path, "0002")
    axial_series(tmp_path / "images" / "0002" / "AX", "t1 ax", 500, 10, [0, 4, 8])
    scan = scan_images(tmp_path / "images")
    assert scan.source == {"0002": "png"} and all(r.path.suffix == ".png" for r in scan.slices["0002"])


def test_pseudonymised_ids_are_stable_per_salt_and_hide_the_ids(tmp_path, monkeypatch, capsys):
    png_slices(tmp_path, "0002", "0003", "0004", "0005")
    rows = [(p, "Normal.", 0, "train") for p in ("0002", "0003", "0004", "0005", "0006")]
    notes = write_csv(tmp_path / "notes.csv", ["patient_id", "note", "lbp", "split"], rows)
    base = ["data", "mendeley", "--images", str(tmp_path / "images"), "--notes", str(notes),
            "--label-column", "lbp", "--no-progress", "--pseudonymise"]  # fmt: skip

    def ids(out: str, *extra: str) -> list[str]:
        assert run_cli(monkeypatch, *base, "--out", str(tmp_path / out), *extra) == 0
        return sorted({r["patient_id"] for r in manifest_rows(tmp_path / out)})

    first = ids("a.csv", "--salt", "s3cret")
    stdout = capsys.readouterr().out
    assert first == sorted(pseudonymise(p, "s3cret") for p in ("0002", "0003", "0004", "0005"))
    assert ids("b.csv", "--salt", "s3cret") == first and ids("c.csv", "--salt", "other") != first
    monkeypatch.setenv(SALT_ENV, "s3cret")
    assert ids("d.csv") == first
    assert f"{pseudonymise('0006', 's3cret')}: no images" in stdout
    assert all(len(p) == 13 and p.startswith("P") for p in first)
    assert "0006" not in stdout and "0002" not in stdout
    monkeypatch.delenv(SALT_ENV)
    assert run_cli(monkeypatch, *base, "--out", str(tmp_path / "e.csv")) == 2
    assert "needs a salt" in capsys.readouterr().err


def test_patient_ids_are_zero_padded():
    assert [patient_key(v) for v in (2, "2", "0002", 2.0, "2.0", " 0515 ", 12345)] == [
        "0002", "0002", "0002", "0002", "0002", "0515", "12345"]  # fmt: skip
    assert [patient_key(v) for v in ("", None, "P2", "2.5", "-2")] == [None] * 5


@pytest.mark.parametrize(
    "description, tr, te, expected",
    [
        ("t2_tse_tra_384", None, None, "T2"),
        ("T1 TSE AX", 4000, 100, "T1"),  # the name wins over the timing
        ("AX FSE", 550, 12, "T1"),
        ("AX FSE", 4200, 105, "T2"),
        ("AX PD FSE", 3000, 20, None),  # proton density is neither
        ("T12 level AX", 3500, 90, "T2"),  # a vertebra, not a weighting
        ("t1_t2 merge", None, None, None),
    ],
)
def test_sequence_from_name_or_timing(description, tr, te, expected):
    assert classify_sequence(description, tr, te) == expected


def test_labels_from_the_report_parser(tmp_path):
    png_slices(tmp_path, "0002", "0003")
    notes = write_csv(tmp_path / "notes.csv", ["patient_id", "split", "note"], [
        ("0002", "train", "No evidence of disc herniation. No significant thecal sac compression noted."),
        ("0003", "test", "Diffuse disc bulge at L4/L5 level compressing the thecal sac."),
    ])  # fmt: skip
    build_mendeley_manifest(tmp_path / "images", notes, tmp_path / "m.csv")
    rows = {r["patient_id"]: r for r in manifest_rows(tmp_path / "m.csv")}
    assert (rows["0002"]["label"], rows["0003"]["label"]) == ("0", "1")
    assert '"L4-L5"' in rows["0003"]["findings"]

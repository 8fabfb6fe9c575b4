"""The mid-sagittal adapter on a look-alike of the two public checkouts (generated images, the
odd real name forms), and the disc naming rule against hand-made boxes."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lumbarclip.data.discs import Box, group_discs, level_name
from lumbarclip.data.manifest import read_manifest
from lumbarclip.data.mendeley_sagittal import build_sagittal_manifest, parse_image_name
from lumbarclip.errors import InputError

SIZE = 64


def _disc_lines(n: int, classes: dict[int, int] | None = None, extra: list[str] | None = None) -> str:
    """n disc boxes from the bottom (y 0.9) up, class 1 (normal) unless `classes` says."""
    lines = []
    for rank in range(n):
        cls = (classes or {}).get(rank, 1)
        lines.append(f"{cls} 0.5 {0.9 - rank * 0.12:.3f} 0.2 0.06")
    return "\n".join(lines + (extra or [])) + "\n"


def _image(path: Path, seed: int) -> None:
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (SIZE, SIZE, 3), dtype=np.uint8)).save(path)


def _write(root: Path, folder: str, name: str, seed: int, labels: str | None) -> None:
    (root / folder / "images").mkdir(parents=True, exist_ok=True)
    (root / folder / "labels").mkdir(parents=True, exist_ok=True)
    _image(root / folder / "images" / f"{name}.png", seed)
    if labels is not None:
        (root / folder / "labels" / f"{name}.txt").write_text(labels)


@pytest.fixture
def checkouts(tmp_path: Path) -> tuple[Path, Path]:
    slices, notes = tmp_path / "yolospine", tmp_path / "medclip" / "local_data"
    for split in ("train", "val", "test"):
        (slices / split / "images").mkdir(parents=True)
        (slices / split / "labels").mkdir(parents=True)
    # patient 0001: T2 (running index 0000 differs from the patient field) and T1 "S8 " with a space
    _write(slices, "train", "0000_T2_TSE_SAG_384_0002_0001_008_R", 1, _disc_lines(7, {0: 4, 5: 5}, ["2 0.55 0.9 0.05 0.05"]))
    _write(slices, "val", "T1_0001_S8 ", 2, _disc_lines(6, {1: 0}))
    # the same T1 again under the underscore variant: identical pixels, dropped
    _write(slices, "test", "T1_0001_S8_", 2, _disc_lines(6))
    # patient 0002: X1 name (read as T1), and two distinct T2 series (both kept)
    _write(slices, "train", "X1_0002_S8 ", 3, _disc_lines(6))
    _write(slices, "train", "0003_T2_TSE_SAG_384_0002_0002_008_R", 4, _disc_lines(6))
    _write(slices, "train", "0004_T2_TSE_SAG_320_0003_0002_008_R", 5, _disc_lines(6))
    # patient 0003: T1 without slice number; one box outside the image, one with no area
    _write(slices, "test", "T1_0003_", 6, _disc_lines(5, extra=["1 0.5 0.99 0.2 0.1", "1 0.5 0.3 0.0 0.1", "1 nan 0.5 0.1 0.1", "9 0.5 0.5 0.1 0.1", "garbage"]))
    # an image without labels, an unparseable name, a patient nobody has notes for
    _write(slices, "train", "T1_0004_S8 ", 7, None)
    _write(slices, "train", "scout", 8, _disc_lines(6))
    _write(slices, "train", "T1_0099_S8 ", 9, _disc_lines(6))
    (slices / "PfirrmannGrade.csv").write_text("Patient_ID,D5,D4,D3\n1,4,3,2\n2,2,2,2\n3,5,x,1\n")
    (slices / "data.yaml").write_text("nc: 6\n")
    notes.mkdir(parents=True)
    meta = {
        "train": [("0001", 1, "L4-5: disc bulge compressing thecal sac."), ("0001", 1, "Disc bulge at L4-L5.")],
        "valid": [("0002", 0, "No evidence of disc herniation.")],
        "test": [("0003", 1, "Disc protrusion at L5-S1."), ("0005", 1, "Disc bulge at L3-L4.")],
    }
    for split, rows in meta.items():
        with (notes / f"lbp-{split}-meta.csv").open("w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["", "imgpath", "report", "No Finding", "LBP"])
            for i, (pid, lbp, text) in enumerate(rows):
                w.writerow([i, f"local_data/mendeley/T1_{pid}_D3.png", text, 1 - lbp, lbp])
    return slices, notes


def test_level_names_from_the_sacrum_up() -> None:
    assert [level_name(r) for r in range(8)] == [
        "L5-S1", "L4-L5", "L3-L4", "L2-L3", "L1-L2", "T12-L1", "T11-T12", "T10-T11",
    ]  # fmt: skip


def test_grouping_merges_boxes_of_one_disc_and_attaches_the_canal_box() -> None:
    boxes = [  # given top first, on purpose: naming must sort by position, not by file order
        Box("thoracic_bulge", 10, 0, 30, 8),
        Box("normal", 10, 20, 30, 28),
        Box("DDD", 10, 80, 30, 90),
        Box("bulge", 12, 81, 34, 91),  # same disc as the DDD box
        Box("stenosis", 30, 84, 36, 92),  # the canal behind the lowest disc
        Box("normal", 10, 50, 30, 60),
    ]
    discs = group_discs(boxes).discs
    assert [d.level for d in discs] == ["L5-S1", "L4-L5", "L3-L4", "L2-L3"]
    assert discs[0].classes == ["DDD", "bulge", "stenosis"]
    assert discs[0].box_xyxy == [10, 80, 34, 91]  # union of the disc boxes, not the canal box
    assert discs[3].classes == ["thoracic_bulge"] and not discs[3].thoracic


def test_thoracic_discs_are_named_and_flagged() -> None:
    boxes = [Box("normal", 0, 100 - 10 * r, 10, 106 - 10 * r) for r in range(6)] + [Box("thoracic_bulge", 0, 35, 10, 41)]
    disc_set = group_discs(boxes)
    assert [d.level for d in disc_set.discs][-2:] == ["T12-L1", "T11-T12"]
    assert [d.thoracic for d in disc_set.discs] == [False] * 5 + [True, True]
    assert disc_set.thoracic_at_lumbar == 0


def test_a_missing_disc_shifts_nothing_below_it() -> None:
    """Without L5-S1 in the labels the lowest disc is named L5-S1: the rule names by order and
    says so; nothing below the gap changes."""
    boxes = [Box("normal", 0, 100 - 10 * r, 10, 106 - 10 * r) for r in (0, 1, 3)]
    assert [d.level for d in group_discs(boxes).discs] == ["L5-S1", "L4-L5", "L3-L4"]
    assert group_discs([]).discs == []


@pytest.mark.parametrize(
    ("stem", "expected"),
    [
        ("0000_T2_TSE_SAG_384_0002_0001_008_R", ("0001", "T2")),
        ("0204_T2_TSE_SAG_320_0003_0204_008_R", ("0204", "T2")),
        ("T1_0254_S8 ", ("0254", "T1")),
        ("T1_0204_S8_", ("0204", "T1")),
        ("T1_0116_", ("0116", "T1")),
        ("X1_0468_S8 ", ("0468", "T1")),
        ("T3_0001_S8", None),
        ("0000_T2_TSE_SAG_384_0002_0001_008", None),
    ],
)
def test_image_names(stem: str, expected: tuple[str, str] | None) -> None:
    assert parse_image_name(stem) == expected


def test_adapter_joins_counts_and_lists(checkouts: tuple[Path, Path], tmp_path: Path) -> None:
    slices, notes = checkouts
    report = build_sagittal_manifest(slices, notes.parent, tmp_path / "cohort")
    manifest = read_manifest(tmp_path / "cohort" / "manifest.csv")
    rows = {(r.patient_id, r.image_path.name): r for r in manifest.records}
    assert sorted(rows) == [
        ("0001", "0000_T2_TSE_SAG_384_0002_0001_008_R.png"),
        ("0001", "T1_0001_S8_.png"),  # test/ sorts before val/: the copy in val/ is the duplicate
        ("0002", "0003_T2_TSE_SAG_384_0002_0002_008_R.png"),
        ("0002", "0004_T2_TSE_SAG_320_0003_0002_008_R.png"),
        ("0002", "X1_0002_S8 .png"),
        ("0003", "T1_0003_.png"),
    ]
    assert {r.plane for r in manifest.records} == {"sagittal"}
    t2 = rows[("0001", "0000_T2_TSE_SAG_384_0002_0001_008_R.png")]
    assert (t2.split, t2.label, t2.sequence) == ("train", 1, "T2")
    assert t2.report == "L4-5: disc bulge compressing thecal sac. Disc bulge at L4-L5."  # paraphrases joined
    discs = json.loads(t2.discs)
    assert [d["level"] for d in discs] == ["L5-S1", "L4-L5", "L3-L4", "L2-L3", "L1-L2", "T12-L1", "T11-T12"]
    assert discs[0]["classes"] == ["bulge", "stenosis"] and discs[5]["classes"] == ["thoracic_bulge"]
    assert [d["pfirrmann"] for d in discs[:3]] == [4, 3, 2] and discs[3]["pfirrmann"] is None
    # boxes in pixels of the 64 px image: the lowest disc centred at y 0.9
    assert discs[0]["box_xyxy"] == pytest.approx([0.4 * SIZE, 0.87 * SIZE, 0.6 * SIZE, 0.93 * SIZE], abs=0.1)
    assert rows[("0002", "X1_0002_S8 .png")].sequence == "T1"
    p3 = json.loads(rows[("0003", "T1_0003_.png")].discs)
    assert len(p3) == 5 and [d["pfirrmann"] for d in p3[:3]] == [5, None, 1]

    problems = report.problems
    assert problems["unparseable names"] == ["train/images/scout.png"]
    assert problems["images without labels"] == ["train/images/T1_0004_S8 .png"]
    assert len(problems["identical duplicates dropped"]) == 1 and problems["identical duplicates dropped"][0].startswith("val/images/T1_0001_S8 .png")
    assert problems["distinct images of one patient and sequence (all kept)"] == ["patient 0002 T2: 2"]
    assert problems["patients with images but no note or split"] == ["patient 0099"]
    assert problems["patients with a note but no slice"] == ["patient 0005"]
    assert len(problems["boxes refused"]) == 5
    for why in ("outside the image", "degenerate", "not a finite number", "class 9", "not 'class cx cy w h'"):
        assert any(why in p for p in problems["boxes refused"]), why
    assert any("'x'" in p for p in problems["Pfirrmann rows refused"])
    saved = json.loads((tmp_path / "cohort" / "adapter-report.json").read_text())
    assert saved["images"] == 6 and saved["patients_joined"] == 3


def test_adapter_refuses_the_wrong_commit_and_an_existing_manifest(checkouts: tuple[Path, Path], tmp_path: Path) -> None:
    slices, notes = checkouts
    (slices / "PfirrmannGrade.csv").unlink()
    with pytest.raises(InputError, match="aab0746"):
        build_sagittal_manifest(slices, notes, tmp_path / "a")
    (slices / "PfirrmannGrade.csv").write_text("Patient_ID,D5,D4,D3\n")
    build_sagittal_manifest(slices, notes, tmp_path / "b")
    with pytest.raises(InputError, match="already exists"):
        build_sagittal_manifest(slices, notes, tmp_path / "b")
    with pytest.raises(InputError, match="lbp-train-meta.csv"):
        build_sagittal_manifest(slices, tmp_path, tmp_path / "c")


def test_cli_wrong_commit_is_one_line(checkouts: tuple[Path, Path], tmp_path: Path) -> None:
    slices, notes = checkouts
    (slices / "train" / "images").rename(slices / "train" / "moved")
    result = subprocess.run(
        [sys.executable, "-m", "lumbarclip.cli", "data", "mendeley-sagittal", "--slices", str(slices), "--notes", str(notes),
         "--out", str(tmp_path / "x")],
        capture_output=True, text=True,
    )  # fmt: skip
    assert result.returncode == 2
    assert "aab0746" in result.stderr and len(result.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize(
    ("discs", "why"),
    [
        ('[{"level": "L5-S1", "box_xyxy": [1, 2, 3], "classes": [], "thoracic": false}]', "4 finite numbers"),
        ('[{"level": "L5-S1", "box_xyxy": [5, 2, 3, 4], "classes": [], "thoracic": false}]', "x1 > x0"),
        ('[{"level": "L5-S1", "box_xyxy": [1, 2, 3, 4], "classes": [], "thoracic": false, "pfirrmann": 7}]', "1-5"),
        ('[{"level": "L5-S1", "colour": "red"}]', "discs is not a JSON list of discs"),
        ('{"level": "L5-S1"}', "discs is not a JSON list of discs"),
    ],
)
def test_manifest_rows_with_bad_discs_are_skipped_with_the_reason(tmp_path, discs, why):
    _image(tmp_path / "a.png", 0)
    with (tmp_path / "m.csv").open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["image_path", "patient_id", "split", "label", "report", "plane", "discs"])
        w.writerow(["a.png", "0001", "train", "1", "Disc bulge.", "sagittal", discs])
    manifest = read_manifest(tmp_path / "m.csv")
    assert manifest.records == [] and len(manifest.skipped) == 1
    line, reason = manifest.skipped[0]
    assert line == 2 and why in reason


def test_unreadable_notes_or_grades_are_one_line_errors(checkouts, tmp_path):
    slices, notes = checkouts
    (notes / "lbp-test-meta.csv").write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(InputError, match="lbp-test-meta.csv: not a readable UTF-8 CSV"):
        build_sagittal_manifest(slices, notes, tmp_path / "a")

"""The synthetic cohort: phantom anatomy and pathology, cohort layout, determinism, CLI."""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image

from lumbarclip.cli import main
from lumbarclip.data.manifest import read_manifest
from lumbarclip.errors import InputError
from lumbarclip.findings import IMAGED_LEVELS, LevelFindings
from lumbarclip.synth import (
    Anatomy,
    CohortConfig,
    Nuisance,
    make_cohort,
    render_slice,
    sample_findings,
)
from lumbarclip.synth.phantom import landmarks, pixel_of

SIZE = 128
CLEAN = Nuisance()
ADULT = Anatomy()


def clean(
    level: LevelFindings, sequence: str, anatomy: Anatomy = ADULT, size: int = SIZE
) -> np.ndarray:
    return render_slice(level, sequence, size, np.random.default_rng(0), anatomy, CLEAN)


def value_at(image: np.ndarray, name: str, level: str = "L4-L5", anatomy: Anatomy = ADULT) -> float:
    """Mean of the 3x3 pixels around a named landmark of a clean image."""
    row, col = (
        int(round(v))
        for v in pixel_of(landmarks(anatomy, level)[name], anatomy, CLEAN, image.shape[0])
    )
    return float(image[row - 1 : row + 2, col - 1 : col + 2].mean())


def canal_box(size: int = SIZE, anatomy: Anatomy = ADULT) -> tuple[slice, slice]:
    """Rows and columns around the canal and the back of the disc in a clean image."""
    row, col = pixel_of(landmarks(anatomy, "L4-L5")["sac_centre"], anatomy, CLEAN, size)
    half = int(round(16.0 / (anatomy.fov_mm / size)))
    return slice(int(row) - half, int(row) + half), slice(int(col) - half, int(col) + half + 1)


# --- renderer -------------------------------------------------------------------------------


def test_render_is_deterministic_and_varies_with_the_seed():
    lf = LevelFindings(
        "L4-L5", disc="protrusion", location="paracentral", side="left", severity="moderate"
    )
    a = render_slice(lf, "T2", 64, np.random.default_rng(7))
    b = render_slice(lf, "T2", 64, np.random.default_rng(7))
    c = render_slice(lf, "T2", 64, np.random.default_rng(8))
    assert a.dtype == np.float32 and a.shape == (64, 64)
    assert np.isfinite(a).all() and a.min() >= 0.0 and 0.5 < a.max() < 3.0
    assert np.array_equal(a, b)
    assert np.abs(a - c).mean() > 0.01


def test_tissue_contrast_is_that_of_t1_and_t2():
    t1, t2 = clean(LevelFindings("L4-L5"), "T1"), clean(LevelFindings("L4-L5"), "T2")
    csf, annulus, nucleus = "sac_centre", "annulus_posterior", "nucleus"
    assert value_at(t2, csf) > value_at(t2, annulus) + 0.4  # bright CSF, dark annulus on T2
    assert value_at(t1, csf) < value_at(t1, annulus) - 0.1  # dark CSF on T1
    assert value_at(t2, nucleus) > value_at(t2, annulus) + 0.3  # hydrated nucleus bright on T2
    for image in (t1, t2):  # fat bright on both, muscle dark on both
        assert value_at(image, "fat_posterior") > 0.7
        assert value_at(image, "erector_spinae_left") < 0.35


def test_lower_discs_are_wider_and_anatomy_is_per_patient():
    one, two = Anatomy.sample(np.random.default_rng(1)), Anatomy.sample(np.random.default_rng(2))
    assert one != two
    widths = []
    for level in IMAGED_LEVELS:  # width of the bright T2 nucleus through the disc centre
        image = clean(LevelFindings(level), "T2", one)
        row, col = (
            int(round(v)) for v in pixel_of(landmarks(one, level)["nucleus"], one, CLEAN, SIZE)
        )
        bright = image[row] > 0.5
        left = col - np.argmin(bright[col::-1])
        widths.append(int(np.argmin(bright[col:]) + col - left))
    assert widths[0] < widths[2] and widths[0] > 10


@pytest.mark.parametrize("side, image_half", [("left", 1), ("right", 0)])
def test_protrusion_side_changes_that_side_of_the_canal(side, image_half):
    """Radiological convention: the patient's left is the image's right."""
    rows, cols = canal_box()
    normal = clean(LevelFindings("L4-L5"), "T2")[rows, cols]
    lf = LevelFindings(
        "L4-L5", disc="protrusion", location="paracentral", side=side, severity="moderate"
    )
    diff = np.abs(clean(lf, "T2")[rows, cols] - normal)
    mid = diff.shape[1] // 2
    halves = (diff[:, :mid].sum(), diff[:, mid + 1 :].sum())
    assert halves[image_half] > 3 * halves[1 - image_half]
    assert diff.max() > 0.3


def test_sac_compression_and_stenosis_shrink_the_csf():
    rows, cols = canal_box()

    def csf_pixels(lf: LevelFindings) -> int:
        return int((clean(lf, "T2")[rows, cols] > 0.88).sum())

    normal = csf_pixels(LevelFindings("L4-L5"))
    bulge = csf_pixels(
        LevelFindings("L4-L5", disc="bulge", severity="moderate", thecal_sac="compressed")
    )
    stenosis = csf_pixels(
        LevelFindings(
            "L4-L5",
            disc="bulge",
            severity="severe",
            thecal_sac="compressed",
            canal_narrowing="severe",
        )
    )
    assert normal > bulge > stenosis
    assert stenosis < 0.6 * normal


def test_desiccation_darkens_the_t2_nucleus_only():
    dry = LevelFindings("L4-L5", desiccation=True)
    for sequence, min_drop in (("T2", 0.15), ("T1", -1.0)):
        drop = value_at(clean(LevelFindings("L4-L5"), sequence), "nucleus") - value_at(
            clean(dry, sequence), "nucleus"
        )
        assert drop > min_drop
        if sequence == "T1":
            assert abs(drop) < 0.05


def test_annular_tear_is_a_bright_t2_spot_in_the_posterior_annulus():
    tear = LevelFindings("L4-L5", annular_tear=True)
    rows, cols = canal_box()
    for sequence, should_change in (("T2", True), ("T1", False)):
        diff = (
            clean(tear, sequence)[rows, cols] - clean(LevelFindings("L4-L5"), sequence)[rows, cols]
        )
        assert (diff.max() > 0.2) == should_change
        assert diff.min() > -0.05


def test_ligament_and_facet_hypertrophy_change_the_back_of_the_canal():
    rows, cols = canal_box()
    normal = clean(LevelFindings("L4-L5"), "T1")[rows, cols]
    thick = clean(
        LevelFindings("L4-L5", ligamentum_hypertrophy=True, facet_hypertrophy=True), "T1"
    )[rows, cols]
    diff = np.abs(thick - normal)
    centre = diff.shape[0] // 2
    assert diff[centre:].sum() > 2 * diff[: centre - 4].sum()  # behind the sac centre, not in front


def test_pathology_is_local_and_leaves_global_intensity_alone():
    """The subtlety contract: findings change shapes near the spine, nothing global."""
    rows, cols = np.mgrid[0:SIZE, 0:SIZE]
    row, col = pixel_of(landmarks(ADULT, "L4-L5")["sac_centre"], ADULT, CLEAN, SIZE)
    near = np.hypot(rows - row, cols - col) * ADULT.fov_mm / SIZE < 40.0
    severe = LevelFindings(
        "L4-L5",
        disc="extrusion",
        location="paracentral",
        side="right",
        severity="severe",
        thecal_sac="compressed",
        root_compression="right",
        canal_narrowing="severe",
        foraminal_narrowing="both",
        facet_hypertrophy=True,
        ligamentum_hypertrophy=True,
        desiccation=True,
        annular_tear=True,
    )
    for sequence in ("T1", "T2"):
        diff = clean(severe, sequence) - clean(LevelFindings("L4-L5"), sequence)
        assert np.abs(diff).sum() > 20.0
        assert np.abs(diff[~near]).sum() < 0.01 * np.abs(diff).sum()
        assert abs(diff.mean()) < 0.01


# --- findings sampling ------------------------------------------------------------------------


def test_sampled_findings_look_like_a_degenerative_spine_clinic():
    rng = np.random.default_rng(0)
    abnormal = [sample_findings(rng, abnormal=True) for _ in range(1500)]
    normal = [sample_findings(rng, abnormal=False) for _ in range(300)]
    assert all(f.abnormal for f in abnormal) and not any(f.abnormal for f in normal)
    imaged = [sum(f.level(lv).abnormal for lv in IMAGED_LEVELS) for f in abnormal]
    hidden = sum(n == 0 for n in imaged) / len(imaged)
    assert 0.03 < hidden < 0.1  # some abnormal patients look normal on the imaged discs
    assert sum(n >= 2 for n in imaged) / len(imaged) > 0.75  # degeneration is rarely one disc
    assert (
        0.84 < sum(imaged) / (3 * len(imaged)) < 0.92
    )  # share of abnormal-patient images with a finding
    per_level = Counter(lv for f in abnormal for lv in IMAGED_LEVELS if f.level(lv).abnormal)
    assert per_level["L4-L5"] > per_level["L3-L4"] and per_level["L5-S1"] > per_level["L3-L4"]
    assert any("muscle_spasm" in f.incidental for f in normal)


# --- cohort -----------------------------------------------------------------------------------


def tree_digest(folder: Path) -> str:
    h = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        h.update(path.relative_to(folder).as_posix().encode())
        h.update(path.read_bytes())
    return h.hexdigest()


def test_cohort_layout_manifest_and_findings(tmp_path):
    config = CohortConfig(n_patients=20, seed=3, size=32)
    manifest_path = make_cohort(tmp_path / "c", config, progress=False)
    manifest = read_manifest(manifest_path)
    assert not manifest.skipped
    per_patient = Counter(r.patient_id for r in manifest.records)
    assert len(per_patient) == 20 and set(per_patient.values()) == {6}
    names = {r.image_path.name for r in manifest.records}
    assert "T1_0001_D3.png" in names and "T2_0020_D5.png" in names
    with Image.open(tmp_path / "c" / "images" / "T2_0001_D4.png") as im:
        assert im.mode.startswith("I;16") and im.size == (32, 32)
        assert 0 < np.asarray(im).max() <= 4095
    lines = [json.loads(x) for x in (tmp_path / "c" / "findings.jsonl").read_text().splitlines()]
    assert [x["patient_id"] for x in lines] == sorted(per_patient)
    by_id = {x["patient_id"]: x for x in lines}
    for r in manifest.records:
        patient = by_id[r.patient_id]
        assert (r.label, r.split, r.report) == (
            patient["label"],
            patient["split"],
            patient["report"],
        )
        assert json.loads(r.findings) == patient["findings"]
        assert bool(patient["findings"]["abnormal"]) == bool(r.label)
        assert r.sequence in ("T1", "T2") and r.level in IMAGED_LEVELS
    assert sum(x["label"] for x in lines) == 17  # round(0.85 * 20)


def test_splits_are_patient_disjoint_and_stratified(tmp_path):
    manifest = read_manifest(
        make_cohort(tmp_path / "c", CohortConfig(n_patients=40, seed=1, size=16), progress=False)
    )
    split_of: dict[str, set[str]] = {}
    for r in manifest.records:
        split_of.setdefault(r.patient_id, set()).add(r.split)
    assert all(len(s) == 1 for s in split_of.values())
    labels = {r.patient_id: r.label for r in manifest.records}
    counts = Counter((next(iter(split_of[p])), labels[p]) for p in labels)
    assert counts[("train", 1)] == 24 and counts[("train", 0)] == 4  # 70% of 34 and of 6
    assert counts[("valid", 0)] >= 1 and counts[("test", 0)] >= 1


def test_same_seed_same_bytes(tmp_path):
    config = CohortConfig(n_patients=3, seed=5, size=32)
    a = make_cohort(tmp_path / "a", config, progress=False).parent
    b = make_cohort(tmp_path / "b", config, progress=False).parent
    c = make_cohort(
        tmp_path / "c", CohortConfig(n_patients=3, seed=6, size=32), progress=False
    ).parent
    assert tree_digest(a) == tree_digest(b) != tree_digest(c)


def test_existing_folder_is_refused_unless_overwrite(tmp_path):
    out = tmp_path / "c"
    make_cohort(out, CohortConfig(n_patients=3, size=16), progress=False)
    before = tree_digest(out)
    with pytest.raises(InputError, match="not empty"):
        make_cohort(out, CohortConfig(n_patients=2, size=16), progress=False)
    assert tree_digest(out) == before
    (out / "notes.txt").write_text("mine")
    make_cohort(out, CohortConfig(n_patients=2, size=16), overwrite=True, progress=False)
    assert len(list((out / "images").iterdir())) == 12  # the third patient's images are gone
    assert (out / "notes.txt").read_text() == "mine"


def test_dicom_files_are_valid_mr_images(tmp_path):
    manifest = read_manifest(
        make_cohort(
            tmp_path / "d", CohortConfig(n_patients=2, size=32, fmt="dicom"), progress=False
        )
    )
    assert len(manifest.records) == 12
    ds = pydicom.dcmread(manifest.records[0].image_path)
    assert ds.Modality == "MR" and ds.BitsStored == 12 and ds.BitsAllocated == 16
    assert str(ds.PatientName).startswith("SYNTHETIC")
    assert 0.5 < float(ds.PixelSpacing[0]) < 10.0
    pixels = ds.pixel_array
    assert pixels.shape == (32, 32) and pixels.dtype == np.uint16 and 0 < pixels.max() <= 4095
    uids = {pydicom.dcmread(r.image_path).SOPInstanceUID for r in manifest.records}
    assert len(uids) == 12


# --- command line -----------------------------------------------------------------------------


def test_cli_synth_writes_a_cohort_and_rejects_bad_input(tmp_path, capsys):
    out = tmp_path / "cli"
    args = ["synth", "--out", str(out), "--patients", "2", "--size", "32", "--no-progress"]
    assert main(args) == 0
    assert len(read_manifest(out / "manifest.csv").records) == 12
    assert main(args) == 2  # not empty
    assert "--overwrite" in capsys.readouterr().err
    assert main([*args, "--overwrite", "--seed", "1"]) == 0
    assert main(["synth", "--out", str(tmp_path / "x"), "--patients", "0"]) == 2
    assert main(["synth", "--out", str(tmp_path / "y"), "--abnormal-rate", "1.5"]) == 2
    with pytest.raises(SystemExit) as exc:
        main(["synth", "--out", str(tmp_path / "z"), "--format", "jpeg"])
    assert exc.value.code == 2
    assert not (tmp_path / "x").exists() and not (tmp_path / "z").exists()


# --- twin of real notes -----------------------------------------------------------------------

NOTES = """patient_id,split,lbp,note
101,train,0,"No evidence of disc herniation. No significant thecal sac or nerve root compression."
102,train,1,"Large left paracentral disc extrusion at L5-S1, compressing the left S1 root."
102,train,1,Desiccated L4-L5 disc.
103,valid,1,Grade I anterolisthesis of L4 over L5.
104,test,1,"Mild diffuse disc bulge at L3/L4, abutting the thecal sac."
abc,train,1,Broad based disc bulge at L4-5.
"""


def test_twin_renders_the_parsed_findings_with_the_given_labels(tmp_path):
    from lumbarclip.synth import make_twin

    notes = tmp_path / "notes.csv"
    notes.write_text(NOTES)
    summary = make_twin(notes, tmp_path / "twin", seed=0, size=32, progress=False)
    assert summary.patients == 4 and list(summary.skipped) == ["line 7"]
    manifest = read_manifest(summary.manifest)
    assert Counter(r.patient_id for r in manifest.records) == {
        p: 6 for p in ("0101", "0102", "0103", "0104")
    }
    first = {r.patient_id: r for r in manifest.records}
    assert {p: (r.split, r.label) for p, r in first.items()} == {
        "0101": ("train", 0),
        "0102": ("train", 1),
        "0103": ("valid", 1),
        "0104": ("test", 1),
    }
    assert "Desiccated L4-L5 disc." in first["0102"].report and "extrusion" in first["0102"].report
    rendered = {p: json.loads(r.findings) for p, r in first.items()}
    assert rendered["0101"]["levels"] == {}
    l5 = rendered["0102"]["levels"]["L5-S1"]
    assert (l5["disc"], l5["side"]) == ("extrusion", "left")
    assert rendered["0102"]["levels"]["L4-L5"]["desiccation"]
    assert {"L4-L5", "L5-S1"} <= set(rendered["0103"]["levels"])  # nothing imaged in the note
    assert rendered["0104"]["levels"]["L3-L4"]["disc"] == "bulge"
    lines = {
        x["patient_id"]: x
        for x in map(json.loads, (tmp_path / "twin" / "findings.jsonl").read_text().splitlines())
    }
    assert lines["0103"]["parsed"]["levels"] == {} and lines["0103"]["findings"]["levels"]


def test_twin_render_findings_shows_the_note_whatever_the_label(tmp_path):
    """A note labelled normal that reports a bulge is rendered with the bulge, label kept; a
    note labelled abnormal with nothing at the imaged discs gets no invented degeneration."""
    from lumbarclip.findings import Findings
    from lumbarclip.reports import parse_report
    from lumbarclip.synth import make_twin

    notes = tmp_path / "notes.csv"
    notes.write_text(NOTES + '105,train,0,"Mild diffuse disc bulge at L4-L5, abutting the thecal sac."\n')
    summary = make_twin(notes, tmp_path / "twin", seed=0, size=32, progress=False, render="findings")
    first = {r.patient_id: r for r in read_manifest(summary.manifest).records}
    for pid, record in first.items():
        assert Findings.from_json(record.findings).to_dict() == parse_report(record.report).to_dict()
    assert first["0105"].label == 0 and json.loads(first["0105"].findings)["levels"]["L4-L5"]["disc"] == "bulge"
    assert first["0103"].label == 1 and json.loads(first["0103"].findings)["levels"] == {}
    label_mode = make_twin(notes, tmp_path / "twin_label", seed=0, size=32, progress=False)
    assert json.loads({r.patient_id: r for r in read_manifest(label_mode.manifest).records}["0105"].findings)["levels"] == {}
    with pytest.raises(InputError, match="render"):
        make_twin(notes, tmp_path / "bad", size=32, progress=False, render="truth")


def test_cli_twin_exit_codes(tmp_path):
    notes = tmp_path / "notes.csv"
    notes.write_text(NOTES)
    assert (
        main(
            [
                "twin",
                "--notes",
                str(notes),
                "--out",
                str(tmp_path / "t"),
                "--size",
                "16",
                "--no-progress",
            ]
        )
        == 0
    )
    assert main(["twin", "--notes", str(tmp_path / "none.csv"), "--out", str(tmp_path / "u")]) == 2
    no_split = tmp_path / "nosplit.csv"
    no_split.write_text("patient_id,lbp,note\n1,0,No disc herniation.\n")
    assert main(["twin", "--notes", str(no_split), "--out", str(tmp_path / "v")]) == 2
    assert not (tmp_path / "u").exists() and not (tmp_path / "v").exists()

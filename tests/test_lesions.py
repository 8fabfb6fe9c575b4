"""Lesions of the phantom: boxes inside the image where the geometry puts the finding, a mask
of every pixel the findings visibly change, written per image into the cohort's findings.jsonl."""

from __future__ import annotations

import json
import math
from dataclasses import replace

import numpy as np
import pytest

from lumbarclip.data.lesions import ImageLesions
from lumbarclip.findings import LevelFindings
from lumbarclip.synth import Anatomy, CohortConfig, Nuisance, make_cohort, render_slice
from lumbarclip.synth.phantom import find_lesions, landmarks, pixel_of, render_slice_with_lesions

SIZE = 128
ADULT = Anatomy()
# a clean acquisition: no gain, bias, blur, ghost or noise, so render_slice is the ideal image
CLEAN = Nuisance()
TILTED = Nuisance(rotation_deg=8.0, shift_mm=(6.0, -5.0), scale=1.04)


def boxes_of(lf: LevelFindings, sequence: str = "T2", nuisance: Nuisance = CLEAN) -> list[dict]:
    return find_lesions(lf, sequence, SIZE, ADULT, nuisance).boxes


def inside(point: tuple[float, float], box: list[int], margin: float = 0.5) -> bool:
    row, col = point
    x0, y0, x1, y1 = box
    return x0 - margin <= col <= x1 + margin and y0 - margin <= row <= y1 + margin


def test_normal_level_has_no_lesion():
    assert boxes_of(LevelFindings("L4-L5")) == []


@pytest.mark.parametrize("nuisance", [CLEAN, TILTED], ids=["clean", "rotated"])
@pytest.mark.parametrize("side, sign", [("left", 1), ("right", -1)])
def test_protrusion_box_is_on_the_lesion_side_at_the_herniation(side, sign, nuisance):
    """Patient left is image right: the box lies beside the disc centre on that side and holds
    the point of the disc margin where the phantom puts the paracentral herniation."""
    lf = LevelFindings("L4-L5", disc="protrusion", location="paracentral", side=side, severity="moderate")
    boxes = boxes_of(lf, nuisance=nuisance)
    assert boxes and {b["kind"] for b in boxes} == {"protrusion"}
    for b in boxes:
        x0, y0, x1, y1 = b["box"]
        assert 0 <= x0 <= x1 < SIZE and 0 <= y0 <= y1 < SIZE
    _, centre_col = pixel_of(landmarks(ADULT, "L4-L5")["disc_centre"], ADULT, nuisance, SIZE)
    main = max(boxes, key=lambda b: (b["box"][2] - b["box"][0] + 1) * (b["box"][3] - b["box"][1] + 1))
    box_col = (main["box"][0] + main["box"][2]) / 2
    assert sign * (box_col - centre_col) > 2  # pixels towards the lesion side
    # the herniation's apex: polar angle pi/2 - 0.42 (patient left positive x), beyond the
    # healthy posterior margin (half depth of the L4-L5 disc, about 16.5 mm)
    angle = math.pi / 2 - sign * 0.42
    apex = (17.0 * math.cos(angle), 17.0 * math.sin(angle))
    assert any(inside(pixel_of(apex, ADULT, nuisance, SIZE), b["box"], margin=1.5) for b in boxes)


def test_mask_and_boxes_cover_every_visibly_changed_pixel():
    """Independent check through render_slice (textured, full image): every pixel a severe
    multi-finding level changes by >= 0.2 is in the mask and in some box; the mask stays near
    the changed pixels (the boxes span far more). The lesions come with the render's texture,
    which sets the contrast of enlarged facets over fat-marbled muscle."""
    lf = LevelFindings(
        "L5-S1", disc="extrusion", location="paracentral", side="right", severity="severe",
        thecal_sac="compressed", root_compression="right", canal_narrowing="moderate",
        facet_hypertrophy=True, ligamentum_hypertrophy=True, desiccation=True, annular_tear=True,
    )
    for nuisance in (CLEAN, replace(TILTED, gain=1.0, noise=0.0, blur_px=0.0, ghost=0.0)):
        sick = render_slice(lf, "T2", SIZE, np.random.default_rng(1), ADULT, nuisance)
        healthy = render_slice(LevelFindings("L5-S1"), "T2", SIZE, np.random.default_rng(1), ADULT, nuisance)
        rows, cols = np.nonzero(np.abs(sick - healthy) >= 0.2)
        assert len(rows) > 50
        _, found = render_slice_with_lesions(lf, "T2", SIZE, np.random.default_rng(1), ADULT, nuisance)
        boxes = [b["box"] for b in found.boxes]
        covered = [any(inside((r, c), b) for b in boxes) for r, c in zip(rows, cols)]
        assert all(covered), f"{len(covered) - sum(covered)} changed pixels outside every box"
        assert found.mask[rows, cols].all()
        assert found.mask.sum() < 2 * np.count_nonzero(np.abs(sick - healthy) >= 0.1)
        in_a_box = np.zeros_like(found.mask)
        for x0, y0, x1, y1 in boxes:
            in_a_box[y0 : y1 + 1, x0 : x1 + 1] = True
        assert in_a_box[found.mask].all() and in_a_box.sum() > 1.5 * found.mask.sum()
        assert np.array_equal(ImageLesions.from_dict(found.to_dict()).mask((SIZE, SIZE)), found.mask)
        kinds = {b["kind"] for b in found.boxes}
        assert {"extrusion", "canal_narrowing", "desiccation", "facet_hypertrophy"} <= kinds


def test_a_dry_disc_shows_on_t2_only_over_the_nucleus():
    lf = LevelFindings("L4-L5", desiccation=True)
    assert boxes_of(lf, "T1") == []  # nucleus and annulus are alike on T1
    (box,) = boxes_of(lf, "T2")
    assert box["kind"] == "desiccation"
    assert inside(pixel_of(landmarks(ADULT, "L4-L5")["nucleus"], ADULT, CLEAN, SIZE), box["box"])
    assert not inside(pixel_of(landmarks(ADULT, "L4-L5")["sac_centre"], ADULT, CLEAN, SIZE), box["box"])


def test_cohort_writes_boxes_for_images_with_a_visible_lesion(tmp_path):
    manifest = make_cohort(tmp_path / "c", CohortConfig(n_patients=8, seed=5, size=48), progress=False)
    lines = [json.loads(x) for x in (manifest.parent / "findings.jsonl").read_text().splitlines()]
    images = {p.name for p in (manifest.parent / "images").iterdir()}
    with_boxes = 0
    for patient in lines:
        lesions = patient["lesions"]
        if not patient["label"]:
            assert lesions == {}
        for image, found in lesions.items():
            boxes, mask = found["boxes"], ImageLesions.from_dict(found).mask((48, 48))
            assert mask.any()
            assert image.startswith("images/") and image.removeprefix("images/") in images
            assert image.split("_")[1] == patient["patient_id"]
            level = {"D3": "L3-L4", "D4": "L4-L5", "D5": "L5-S1"}[image.rsplit("_", 1)[1][:2]]
            assert level in patient["findings"]["levels"]  # only abnormal discs have lesions
            for b in boxes:
                x0, y0, x1, y1 = b["box"]
                assert 0 <= x0 <= x1 < 48 and 0 <= y0 <= y1 < 48
            with_boxes += 1
    assert with_boxes > 10

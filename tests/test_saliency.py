"""Saliency maps: shape and range for each tower family, the target direction decides where the
map peaks, peak coordinates, the pointing game and its baselines, overlays."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from lumbarclip.data.lesions import ImageLesions
from lumbarclip.data.transforms import PreprocessSpec
from lumbarclip.evaluation.pointing import dilate, peak, pointing_game
from lumbarclip.inference.saliency import METHODS, overlay, saliency_maps, save_overlay
from lumbarclip.models import LumbarCLIP, ModelConfig, create_model

TOWERS = {
    "resnet18": ({}, 64),
    "vit_tiny_patch16_224": ({"patch_size": 8, "depth": 2}, 32),
    "swin_tiny_patch4_window7_224": (
        {"window_size": 4, "depths": (1, 1), "num_heads": (1, 2), "embed_dim": 32},
        32,
    ),
}


@pytest.fixture(scope="module")
def models() -> dict[str, LumbarCLIP]:
    return {
        name: create_model(ModelConfig(vision=name, vision_kwargs=kw, image_size=size, embed_dim=8, text_unfrozen_layers=0))
        for name, (kw, size) in TOWERS.items()
    }


@pytest.mark.parametrize("name", sorted(TOWERS))
def test_maps_have_the_input_size_and_lie_in_0_1_for_every_tower(models, name):
    model = models[name]
    size = TOWERS[name][1]
    images = torch.randn(3, 1, size, size)
    with torch.no_grad():  # callers may be under no_grad: the maps still need gradients
        maps = saliency_maps(model, images, torch.randn(8))
    assert maps.shape == (3, size, size) and maps.dtype == np.float32
    assert maps.min() >= 0.0 and maps.max() <= 1.0
    assert maps.reshape(3, -1).max(axis=1).max() == pytest.approx(1.0)  # scaled per image
    assert all(p.grad is None for p in model.parameters())  # nothing accumulated on the model
    assert not model.training


def test_bad_target_or_method_is_refused(models):
    model = models["resnet18"]
    with pytest.raises(ValueError, match="embeds in 8"):
        saliency_maps(model, torch.zeros(1, 1, 64, 64), np.zeros(5))
    with pytest.raises(ValueError, match="unknown saliency method"):
        saliency_maps(model, torch.zeros(1, 1, 64, 64), np.zeros(8), method="nope")


class _SquareDetectors(nn.Module):
    """Two feature maps: channel 0 fires on bright 3x3 patches, channel 1 on dark ones."""

    feature_info = [{"module": "detect"}]

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3, padding=1)
        with torch.no_grad():
            self.conv.weight.zero_()
            self.conv.weight[0] = 1.0 / 9
            self.conv.weight[1] = -1.0 / 9
            self.conv.bias.fill_(-0.5)
        self.detect = nn.ReLU()
        self.num_features = 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.detect(self.conv(x)).mean(dim=(2, 3))


@pytest.fixture
def engineered(models) -> LumbarCLIP:
    """The tiny ResNet model with its tower replaced by the square detectors; the head maps
    detector 0 to embedding axis 0 and detector 1 to axis 1."""
    model = models["resnet18"]
    saved = model.visual, model.visual_head
    model.visual = _SquareDetectors()
    model.visual_head = nn.Linear(2, 8)
    with torch.no_grad():
        model.visual_head.weight.zero_()
        model.visual_head.weight[0, 0] = model.visual_head.weight[1, 1] = 1.0
        model.visual_head.bias.fill_(0.01)
    yield model
    model.visual, model.visual_head = saved


@pytest.mark.parametrize("method", ["gradcam", "hirescam", "layercam"])
def test_the_peak_lands_on_the_square_the_target_direction_asks_for(engineered, method):
    rng = np.random.default_rng(0)
    images = torch.as_tensor(rng.normal(0, 0.05, (4, 1, 64, 64)), dtype=torch.float32)
    bright, dark = [(10, 40), (44, 8), (30, 30), (50, 50)], [(44, 44), (8, 12), (5, 55), (12, 20)]
    for img, (br, bc), (dr, dc) in zip(images, bright, dark):
        img[0, br : br + 6, bc : bc + 6] = 2.0
        img[0, dr : dr + 6, dc : dc + 6] = -2.0
    axis = torch.eye(8)
    towards_bright = saliency_maps(engineered, images, axis[0], method=method)
    towards_dark = saliency_maps(engineered, images, axis[1], method=method)
    for i in range(4):
        x, y = peak(towards_bright[i], (64, 64))
        assert bright[i][0] - 1 <= y <= bright[i][0] + 6 and bright[i][1] - 1 <= x <= bright[i][1] + 6
        x, y = peak(towards_dark[i], (64, 64))
        assert dark[i][0] - 1 <= y <= dark[i][0] + 6 and dark[i][1] - 1 <= x <= dark[i][1] + 6


def test_peak_maps_model_pixels_to_saved_image_pixels():
    cam = np.zeros((64, 64), np.float32)
    cam[10, 20] = 1.0
    assert peak(cam, (128, 128)) == (40.5, 20.5)  # pixel 20 spans 40..41 of the 2x image
    assert peak(cam, (64, 64)) == (20.0, 10.0)
    cam[10, 22] = 1.0  # tied maxima: their mean
    assert peak(cam, (64, 64)) == (21.0, 10.0)
    cam[10, 22] = 0.0
    cam[40, 20] = 2.0
    # a 64 x 128 image was zero-padded to 128 x 128 (32 rows on top) before resizing
    assert peak(cam, (64, 128)) == (40.5, 80.5 - 32)


def test_pointing_game_against_its_baselines():
    region = np.zeros((128, 128), bool)
    region[10:20, 100:110] = True  # a corner lesion: the centre prior misses it
    centre = np.zeros((128, 128), bool)
    centre[60:68, 60:68] = True
    cams = np.zeros((2, 64, 64), np.float32)
    cams[0, 7, 52] = 1.0  # saved-image (14.5, 104.5): inside
    cams[1, 7, 52] = 1.0  # misses the centre lesion
    game = pointing_game(cams, [region, centre], margin=0, seed=0, random_draws=400)
    assert game.hits.tolist() == [True, False]
    assert game.hit_rate == 0.5 and game.centre == 0.5
    expected_random = (region.mean() + centre.mean()) / 2
    assert abs(game.random - expected_random) < 0.01
    assert game.to_dict()["ratio_to_best_baseline"] == pytest.approx(1.0)
    assert game.to_dict()["n_centre_misses"] == 1 and game.to_dict()["hit_rate_where_centre_misses"] == 1.0
    near = np.zeros((2, 64, 64), np.float32)
    near[:, 11, 52] = 1.0  # saved row 22.5: 3.5 px below the corner lesion
    assert pointing_game(near[:1], [region], margin=0).hit_rate == 0.0
    assert pointing_game(near[:1], [region], margin=4).hit_rate == 1.0
    assert dilate(region, 2).sum() > region.sum()


def test_lesion_region_from_runs_and_boxes():
    found = {"boxes": [{"kind": "bulge", "box": [2, 3, 5, 4]}], "runs": [[3, 2, 3], [4, 5, 5]]}
    mask = ImageLesions.from_dict(found).region((8, 8), "mask")
    assert mask.sum() == 3 and mask[3, 2] and mask[3, 3] and mask[4, 5]
    box = ImageLesions.from_dict(found).region((8, 8), "box")
    assert box.sum() == 8 and box[3:5, 2:6].all()


def test_overlay_png_has_the_image_size_and_marks_boxes(tmp_path):
    image = np.linspace(0, 1, 128 * 96, dtype=np.float32).reshape(96, 128)
    cam = np.zeros((64, 64), np.float32)
    cam[32, 32] = 1.0
    rgb = overlay(image, cam, boxes=[[10, 20, 30, 40]])
    assert rgb.shape == (96, 128, 3) and rgb.dtype == np.uint8
    assert (rgb[20, 10:31] == 255).all() and (rgb[20:41, 30] == 255).all()
    path = save_overlay(image, cam, tmp_path / "sub" / "o.png")
    with Image.open(path) as im:
        assert im.size == (128, 96) and im.mode == "RGB"


def test_every_listed_method_runs(models):
    model = models["resnet18"]
    for method in METHODS:
        maps = saliency_maps(model, torch.randn(2, 1, 64, 64), torch.randn(8), method=method, layers=("layer3",))
        assert maps.shape == (2, 64, 64) and 0 <= maps.min() and maps.max() <= 1


def test_report_section_on_a_synthetic_cohort(models, tmp_path):
    """The gallery scores every abnormal image with a visible lesion and renders in report.html."""
    from lumbarclip.data.manifest import read_manifest
    from lumbarclip.data.lesions import read_lesions
    from lumbarclip.evaluation.pointing import saliency_gallery
    from lumbarclip.evaluation.predictions import Predictions
    from lumbarclip.evaluation.report import ReportInputs, render_report
    from lumbarclip.inference import load_images
    from lumbarclip.synth import CohortConfig, make_cohort

    manifest = make_cohort(tmp_path / "c", CohortConfig(n_patients=4, seed=1, size=48, abnormal_rate=1.0), progress=False)
    records = read_manifest(manifest).records
    model = models["resnet18"]
    images = load_images([r.image_path for r in records], PreprocessSpec.of_model(64), progress=False)
    gallery = saliency_gallery(model, records, images, torch.randn(8), manifest, size=3)
    n_lesions = sum(r.image_path.resolve() in read_lesions(manifest) for r in records)
    assert gallery.pointing_game["n_images"] == n_lesions > 3
    assert len(gallery.overlays) == 3 and all(png[:4] == b"\x89PNG" for png, _ in gallery.overlays)
    assert all(caption.endswith(("hit", "miss")) for _, caption in gallery.overlays)
    labels = [r.label for r in records]
    page = render_report(ReportInputs({}, {"m": Predictions(labels, labels, [r.patient_id for r in records])}, saliency=gallery))
    section = page[page.index("<h2>Saliency") :]
    assert section.count("data:image/png;base64,") == 3 and "centre prior" in section
    (tmp_path / "c" / "findings.jsonl").unlink()  # real data: no lesions, no pointing game
    plain = saliency_gallery(model, records, images, torch.randn(8), manifest, size=2)
    assert plain.pointing_game == {} and len(plain.overlays) == 2

"""The input guard and the study rule: out-of-distribution images get no verdict, non-axial or
non-MR DICOM is refused with its reason, a study's verdict uses only its in-distribution images
and only for the evaluated unit's shape."""

import json

import numpy as np
import pytest
from _model_folder import add_parts, make_model_folder
from PIL import Image
from sklearn.covariance import LedoitWolf
from test_predict import _pixels, _series

from lumbarclip.bundle import ModelFolder, load_model
from lumbarclip.data.imageio import write_dicom
from lumbarclip.data.transforms import PreprocessSpec
from lumbarclip.decision import (
    InputGuard,
    Mahalanobis,
    intensity_histogram,
    laplacian_histogram,
    pooled_pixels,
    slot,
    study_unit,
    unit_mismatch,
)  # fmt: skip
from lumbarclip.inference.embed import embed_images
from lumbarclip.inference.predict import Predictor

LEVELS = {"D3": "L3-L4", "D4": "L4-L5", "D5": "L5-S1"}


def test_guard_is_ledoit_wolf_mahalanobis_per_view_with_valid_thresholds(tmp_path):
    rng = np.random.default_rng(0)
    train = {"embedding": rng.normal(size=(300, 6)), "pixels": rng.normal(size=(300, 4))}
    valid = {"embedding": rng.normal(size=(400, 6)), "pixels": rng.normal(size=(400, 4))}
    guard = InputGuard.fit(train, valid, in_rate=0.95)
    for name in train:  # each view: sklearn's distance, threshold at valid's 97.5% quantile
        ref = LedoitWolf().fit(train[name])
        dist = np.sqrt(ref.mahalanobis(valid[name]))
        np.testing.assert_allclose(guard.views[name].score(valid[name]), dist, rtol=1e-6)
        assert guard.views[name].threshold == pytest.approx(np.quantile(dist, 0.975))
    assert 0.94 <= guard.accepts(guard.score(valid)).mean() <= 0.975
    far = {name: v[:5] + 8.0 for name, v in valid.items()}
    assert not guard.accepts(guard.score(far)).any()
    doc, arrays = guard.to_state()
    again = InputGuard.from_state(json.loads(json.dumps(doc)), arrays)
    np.testing.assert_allclose(again.score(far), guard.score(far))
    assert again.in_rate == 0.95


def test_pooled_pixels_are_area_means():
    img = np.arange(64 * 64, dtype=float).reshape(1, 1, 64, 64)
    pooled = pooled_pixels(img, side=16)
    assert pooled.shape == (1, 256)
    assert pooled[0, 0] == pytest.approx(img[0, 0, :4, :4].mean())
    assert pooled[0, 17] == pytest.approx(img[0, 0, 4:8, 4:8].mean())


def test_laplacian_histogram_tells_flat_ramp_and_grain_apart():
    flat = np.full((1, 1, 8, 8), 0.3)
    ramp = np.broadcast_to(np.linspace(0.0, 1.0, 8), (1, 1, 8, 8))  # linear: zero Laplacian inside
    checker = (np.indices((8, 8)).sum(0) % 2).astype(float)[None, None]  # |Laplacian| 4 everywhere
    hist = laplacian_histogram(np.concatenate([flat, ramp, checker]), (0.0, 1.0), bins=4)
    assert hist.sum(axis=1) == pytest.approx([1.0, 1.0, 1.0])
    assert hist[0, 0] == 1.0 and hist[1, 0] == pytest.approx(1.0)
    assert hist[2, -1] == 1.0  # beyond the span: clipped into the last bin
    # one interior spike of height 0.3: the pixel itself (|4 x 0.3| = 1.2, last bin) and its four
    # neighbours (0.3, second bin of [0, 0.75] in 4 bins) out of 36 interior pixels
    spike = np.zeros((1, 1, 8, 8))
    spike[0, 0, 4, 4] = 0.3
    h = laplacian_histogram(spike, (0.0, 1.0), bins=4)[0]
    assert h[-1] == pytest.approx(1 / 36) and h[1] == pytest.approx(4 / 36) and h[0] == pytest.approx(31 / 36)


def test_intensity_histogram_shares_per_bin():
    img = np.concatenate([np.zeros(48), np.full(16, 0.99)]).reshape(1, 1, 8, 8)
    hist = intensity_histogram(img, (0.0, 1.0), bins=4)
    np.testing.assert_allclose(hist, [[0.75, 0.0, 0.0, 0.25]])
    noise = np.random.default_rng(0).random((1, 1, 64, 64))
    assert intensity_histogram(noise, (0.0, 1.0), bins=4).min() > 0.2  # flat spread, unlike a phantom's
    assert intensity_histogram(np.full((1, 1, 8, 8), 5.0), (0.0, 1.0), bins=4)[0, -1] == 1.0  # clipped into range


def test_study_unit_is_the_commonest_shape_and_mismatch_says_why():
    patients = ["a"] * 6 + ["b"] * 6 + ["c"] * 2
    slots = [slot(s, lv) for s in ("T1", "T2") for lv in LEVELS.values()] * 2 + ["T1 L3-L4", "T2 L3-L4"]
    unit = study_unit(patients, slots)
    assert len(unit) == 6 and "T2 L5-S1" in unit
    assert unit_mismatch(unit, slots[:6]) is None
    assert "not the evaluated study unit" in unit_mismatch(unit, slots[:5])


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return make_model_folder(tmp_path_factory.mktemp("guarded"))


def _study_pngs(folder, patient="0003"):
    paths = []
    for i, (seq, code) in enumerate((s, c) for s in ("T1", "T2") for c in LEVELS):
        path = folder / f"{seq}_{patient}_{code}.png"
        smooth = np.outer(np.hanning(48), np.hanning(48)) * (2000 + 300 * i)
        Image.fromarray(smooth.astype(np.uint16)).save(path)
        paths.append(path)
    return paths


def _guard_around(model_dir, inside, outside):
    """A guard centred on the `inside` images' embeddings that accepts them and refuses
    `outside` (Euclidean distance: identity precision)."""
    model = load_model(model_dir)
    emb_in = embed_images(model, inside, PreprocessSpec.of_model(model.config.image_size), progress=False).astype(np.float64)
    emb_out = embed_images(model, outside, PreprocessSpec.of_model(model.config.image_size), progress=False).astype(np.float64)
    centre = emb_in.mean(0)
    d_in = np.linalg.norm(emb_in - centre, axis=1).max()
    d_out = np.linalg.norm(emb_out - centre, axis=1)
    assert d_out.min() > d_in, "test inputs: the outside images must lie farther than the inside ones"
    threshold = float((d_in + d_out.min()) / 2)
    guard = InputGuard({"embedding": Mahalanobis(centre, np.eye(len(centre)), threshold)}, n_fit=len(inside))
    add_parts(model_dir, guard=guard)
    return guard, d_out / threshold


def test_ood_image_gets_no_verdict_and_the_study_uses_only_in_distribution_images(model_dir, tmp_path):
    study = _study_pngs(tmp_path)
    noise = tmp_path / "noise.png"
    Image.fromarray((np.random.default_rng(1).random((48, 48)) * 65535).astype(np.uint16)).save(noise)
    guard, d_out = _guard_around(model_dir, study, [noise])
    predictor = Predictor.load(model_dir, salt="s")
    result = predictor.predict([*study, noise], top_k=2, study="ward-7")
    by_path = {line.path: line for line in result.images}
    odd = by_path[str(noise)]
    assert odd.in_distribution is False and odd.label is None and odd.p_abnormal is None
    assert "input guard" in odd.reason and "top_findings" not in odd.dump()
    assert odd.ood_score == pytest.approx(d_out[0], abs=1e-3)
    assert all(by_path[str(p)].in_distribution and by_path[str(p)].label in ("normal", "abnormal") for p in study)

    # one study (named by the user) of 7 images, 6 in distribution: exactly the evaluated unit
    (verdict,) = result.studies
    assert (verdict.study, verdict.n_images, verdict.n_in_distribution) == ("ward-7", 7, 6)
    op = ModelFolder.load(model_dir).operating_point
    model = load_model(model_dir)
    logit = embed_images(model, study, PreprocessSpec.of_model(model.config.image_size), progress=False).astype(np.float64) @ op.weights.astype(np.float64) + op.bias
    m = (1 / (1 + np.exp(-logit))).mean()  # the six in-distribution images only
    expected = 1 / (1 + np.exp(-(op.patient_calibration["a"] * np.log(m / (1 - m)) + op.patient_calibration["b"])))
    assert verdict.p_abnormal_mean_raw == pytest.approx(m, abs=1e-5)
    assert verdict.p_abnormal == pytest.approx(expected, abs=1e-5)
    assert verdict.rule.startswith("patient")

    # nothing in distribution: the study says so and gives no verdict
    (alone,) = predictor.predict([noise], top_k=0).studies
    assert alone.label is None and alone.p_abnormal is None and alone.n_in_distribution == 0
    assert "none of its images is in distribution" in alone.reason


def test_non_axial_or_non_mr_dicom_is_refused_with_its_reason(model_dir, tmp_path):
    add_parts(model_dir, guard=InputGuard({"embedding": Mahalanobis(np.zeros(16), np.eye(16), 1e6)}))  # accept every embedding
    predictor = Predictor.load(model_dir, salt="s")
    sagittal = _series(tmp_path / "sag", "T2", "1.2.3.4.2001", orientation=(0, 1, 0, 0, 0, -1), seed=5)
    (line,) = predictor.predict([sagittal["L4-L5"]], top_k=0).images
    assert line.label is None and line.in_distribution is False and "sagittal" in line.reason
    # a series folder with only a sagittal series: nothing chosen, refused with the reason
    result = predictor.predict([tmp_path / "sag"], top_k=0)
    assert result.images == [] and "no axial T1 or T2 series" in result.skipped[0].reason
    ct = write_dicom(
        tmp_path / "ct.dcm", _pixels(3), Modality="CT", ImageOrientationPatient=[1, 0, 0, 0, 1, 0],
        ImagePositionPatient=[0.0, 0.0, 0.0], StudyInstanceUID="1.2.3.4.9",
    )  # fmt: skip
    (line,) = predictor.predict([ct], top_k=0).images
    assert line.label is None and "not MR" in line.reason
    head = write_dicom(
        tmp_path / "head.dcm", _pixels(4), BodyPartExamined="HEAD", ImageOrientationPatient=[1, 0, 0, 0, 1, 0],
        ImagePositionPatient=[0.0, 0.0, 0.0], StudyInstanceUID="1.2.3.4.10",
    )  # fmt: skip
    (line,) = predictor.predict([head], top_k=0).images
    assert line.label is None and "lumbar spine" in line.reason and "HEAD" not in line.reason

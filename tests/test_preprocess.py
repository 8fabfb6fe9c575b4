"""One preprocessing for evaluation and prediction: the datamodule's eval transform, evaluation's
`load_images`, and the tensors `Predictor` feeds its scorer (PyTorch and ONNX runtimes) are
identical for the same files (PNG and DICOM, 8 and 16 bit, several sizes); and the size rules of
preprocess.json refuse what preprocessing cannot make a faithful model input."""

import json

import numpy as np
import pytest
import torch
from _model_folder import make_model_folder
from PIL import Image

from lumbarclip.bundle import ModelFolder
from lumbarclip.data.config import DataConfig
from lumbarclip.data.datamodule import PairDataModule
from lumbarclip.data.imageio import write_dicom
from lumbarclip.data.transforms import (
    PreprocessSpec,
    eval_transform,
    load_model_input,
    preprocess,
    size_refusal,
)
from lumbarclip.errors import InputError
from lumbarclip.inference.embed import load_images
from lumbarclip.inference.predict import Predictor

SIZE = 32
#: (rows, columns): square, odd, portrait, landscape, smaller than the model (enlarged), larger.
SHAPES = [(40, 40), (37, 53), (64, 48), (61, 90), (20, 24), (128, 128)]


def _pixels(shape, dtype, seed):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    disc = ((yy - shape[0] / 2) ** 2 + (xx - shape[1] / 2) ** 2 < (min(shape) / 4) ** 2) * 0.6
    top = np.iinfo(dtype).max
    return ((disc + rng.random(shape) * 0.4) * top).astype(dtype)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Every shape as PNG and DICOM, 8 and 16 bit."""
    root = tmp_path_factory.mktemp("images")
    out = []
    for n, shape in enumerate(SHAPES):
        for dtype in (np.uint8, np.uint16):
            bits = np.dtype(dtype).itemsize * 8
            pixels = _pixels(shape, dtype, seed=n * 2 + bits)
            png = root / f"img{n}_{bits}.png"
            Image.fromarray(pixels).save(png)
            out += [png, write_dicom(root / f"img{n}_{bits}.dcm", pixels, spacing_mm=(0.8, 0.8))]
    return out


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return make_model_folder(tmp_path_factory.mktemp("model"), image_size=SIZE)


def _datamodule_tensors(files, tmp_path):
    """The evaluation transform as training's validation sees it: a manifest's valid split read
    by the datamodule's dataset."""
    rows = ["image_path,patient_id,split,label,report"]
    rows += [f"{path},v{n},valid,{n % 2},Report {n}." for n, path in enumerate(files)]
    train = tmp_path / "train.png"
    train.write_bytes(files[0].read_bytes())  # the datamodule wants a train split too
    rows.append(f"{train},t0,train,1,Train report.")
    (tmp_path / "m.csv").write_text("\n".join(rows) + "\n")
    dm = PairDataModule(tmp_path / "m.csv", DataConfig(batch_size=4), image_size=SIZE)
    dm.setup()
    return torch.stack([dm.valid_set[i].image for i in range(len(files))])


class _Recorder:
    """Wraps a Predictor's scorer and keeps the model inputs it is given."""

    def __init__(self, scorer):
        self.scorer, self.inputs = scorer, []

    def __call__(self, images):
        self.inputs.append(images.copy())
        return self.scorer(images)


def _predicted_inputs(predictor, files):
    recorder = _Recorder(predictor.scorer)
    predictor.scorer = recorder
    result = predictor.predict(files, top_k=0)
    assert not result.skipped and [line.path for line in result.images] == [str(p) for p in files]
    return torch.from_numpy(np.concatenate(recorder.inputs))


def test_evaluation_and_prediction_make_identical_tensors(files, model_dir, tmp_path):
    from lumbarclip.inference.onnx import export_onnx

    evaluation = load_images(files, PreprocessSpec.of_model(SIZE), progress=False)
    assert evaluation.shape == (len(files), 1, SIZE, SIZE)
    assert torch.equal(_datamodule_tensors(files, tmp_path), evaluation)
    # preprocess.json as evaluation writes it is the spec the evaluation transform uses
    assert ModelFolder.load(model_dir).operating_point.preprocess == PreprocessSpec.of_model(SIZE)
    assert torch.equal(_predicted_inputs(Predictor.load(model_dir, runtime="torch"), files), evaluation)
    export_onnx(model_dir)
    assert torch.equal(_predicted_inputs(Predictor.load(model_dir, runtime="onnx"), files), evaluation)


def test_preprocess_follows_the_spec():
    """mean and std come from preprocess.json, not from constants."""
    pixels = np.random.default_rng(0).random((50, 40)).astype(np.float32)
    spec = PreprocessSpec(image_size=24, mean=0.4, std=0.2)
    plain = eval_transform(24)(pixels)
    assert torch.allclose(preprocess(pixels, spec), (plain * 0.25 + 0.5 - 0.4) / 0.2, atol=1e-6)
    assert preprocess(pixels, spec).shape == (1, 24, 24)
    shapes = r"the model takes \[3, 24, 24\] inputs, preprocessing makes \[1, 24, 24\]"
    with pytest.raises(InputError, match=rf"preprocessing spec: {shapes}"):
        preprocess(pixels, PreprocessSpec(image_size=24, mean=0.5, std=0.25, channels=3))


def test_size_rules():
    spec = PreprocessSpec.of_model(224)  # enlarges at most 4x: the long side must reach 56 px
    assert size_refusal((56, 40), spec) is None
    assert "long side >= 56 px" in size_refusal((55, 40), spec)
    assert "allows enlarging at most 4x" in size_refusal((20, 20), spec)
    assert size_refusal((512, 256), spec) is None  # 2:1 is still a scan on half the input
    assert "aspect 2.01:1" in size_refusal((512, 255), spec)
    assert size_refusal((300, 300), spec, spacing_mm=(0.8, 0.85)) is None
    assert "stretch 2.00" in size_refusal((300, 300), spec, spacing_mm=(0.5, 1.0))


def test_refused_images_are_skipped_with_the_reason(model_dir, tmp_path):
    small, long = tmp_path / "small.png", tmp_path / "long.png"
    Image.fromarray(_pixels((7, 6), np.uint8, 0)).save(small)  # 32 px model: long side < 8
    Image.fromarray(_pixels((30, 90), np.uint8, 1)).save(long)
    stretched = write_dicom(tmp_path / "stretched.dcm", _pixels((64, 64), np.uint16, 2), spacing_mm=(0.5, 1.0))
    good = write_dicom(tmp_path / "good.dcm", _pixels((64, 64), np.uint16, 3))
    result = Predictor.load(model_dir).predict([small, long, stretched, good], top_k=0)
    assert [line.path for line in result.images] == [str(good)]
    reasons = {entry.input: entry.reason for entry in result.skipped}
    assert reasons[str(small)].startswith("image is 6 x 7 pixels; the model takes 32 px")
    assert "aspect 3.00:1" in reasons[str(long)]
    assert "pixels are 0.5 x 1 mm" in reasons[str(stretched)]
    assert all("\n" not in reason for reason in reasons.values())
    # evaluation reads through the same function: a refused file stops it, named
    with pytest.raises(InputError, match=rf"^{small}: image is 6 x 7 pixels"):
        load_images([good, small], PreprocessSpec.of_model(SIZE), progress=False)
    with pytest.raises(InputError, match=rf"^{stretched}: pixels are"):
        load_model_input(stretched, PreprocessSpec.of_model(SIZE))


def test_preprocess_spec_limits_round_trip_and_default():
    spec = PreprocessSpec(image_size=64, mean=0.5, std=0.25, max_upscale=2.0, max_aspect=1.5)
    doc = json.loads(json.dumps(spec.to_dict()))
    assert PreprocessSpec.from_dict(doc) == spec
    # a spec without the limits gets the defaults
    for key in ("max_upscale", "max_aspect", "max_pixel_aspect"):
        del doc[key]
    assert PreprocessSpec.from_dict(doc) == PreprocessSpec.of_model(64)


def test_spec_of_a_training_split_takes_its_planes_and_sequences():
    from types import SimpleNamespace

    rows = [SimpleNamespace(plane="sagittal", sequence="T2"), SimpleNamespace(plane="sagittal", sequence="T1"),
            SimpleNamespace(plane="axial", sequence=None)]  # fmt: skip
    spec = PreprocessSpec.of_split(48, rows)
    assert (spec.image_size, spec.planes, spec.sequences) == (48, ("axial", "sagittal"), ("T1", "T2"))
    assert PreprocessSpec.of_split(48, [SimpleNamespace(plane="", sequence=None)]) == PreprocessSpec.of_model(48)

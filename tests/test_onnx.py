"""ONNX export of the image scorer: parity with PyTorch on 16 images, dynamic batch, stale
exports refused (sha256 of the files the graph bakes in), and the
export folder is a model folder of its own."""

import json
import re
import shutil

import numpy as np
import pytest
import torch
from _model_folder import add_parts, make_model_folder
from PIL import Image

from lumbarclip.bundle import ModelFolder, layout, load_model, save_model
from lumbarclip.data.transforms import PreprocessSpec
from lumbarclip.errors import InputError
from lumbarclip.inference.onnx import OnnxImageScorer, export_onnx
from lumbarclip.inference.scorer import ImageScorer


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    model_dir = make_model_folder(tmp_path_factory.mktemp("model"))
    return model_dir, export_onnx(model_dir)


def test_onnx_matches_pytorch_on_16_images(exported):
    model_dir, path = exported
    scorer = ImageScorer(load_model(model_dir), ModelFolder.load(model_dir).operating_point).eval()
    # images unlike the export's own check: uniform pixels in [0, 1], normalised as at inference
    images = (torch.rand(16, 1, 32, 32, generator=torch.Generator().manual_seed(7)) - 0.5) / 0.25
    with torch.no_grad():
        emb_t, logit_t = scorer(images)
    emb_o, logit_o = OnnxImageScorer(path)(images.numpy())
    assert emb_o.shape == (16, 16) and logit_o.shape == (16,)
    assert np.abs(emb_o - emb_t.numpy()).max() <= 1e-4
    assert np.abs(logit_o - logit_t.numpy()).max() <= 1e-4
    # the logit is the operating point's classifier over the embedding, computed independently
    op = ModelFolder.load(model_dir).operating_point
    np.testing.assert_allclose(logit_o, op.logit(emb_o), atol=1e-4)
    assert np.allclose(np.linalg.norm(emb_o, axis=1), 1.0, atol=1e-5)


def test_dynamic_batch_and_record(exported):
    model_dir, path = exported
    scorer = OnnxImageScorer(path)
    for n in (1, 5):
        emb, logit = scorer(np.zeros((n, 1, 32, 32), np.float32))
        assert emb.shape == (n, 16) and logit.shape == (n,)
    record = json.loads((path.parent / "export.json").read_text())
    assert max(record["parity_max_abs_diff"].values()) <= 1e-4
    assert path == model_dir / layout.ONNX_DIR / layout.ONNX == ModelFolder.load(model_dir).export_file()
    # the export folder holds what predict needs, so it is a model folder itself
    assert ModelFolder.load(path.parent).export_file() == path
    for name in ("config.json", "model.safetensors", "operating_point.json", "preprocess.json", "card.json"):
        assert (path.parent / name).is_file(), name


def test_export_refuses_overwrite_and_missing_operating_point(exported, tmp_path):
    model_dir, _ = exported
    with pytest.raises(InputError, match="--overwrite"):
        export_onnx(model_dir)
    bare = tmp_path / "bare"
    save_model(load_model(model_dir), bare, PreprocessSpec.of_model(32))
    with pytest.raises(InputError, match=f"missing {layout.OPERATING_POINT}"):
        export_onnx(bare)
    with pytest.raises(InputError, match="lumbarclip export"):
        ModelFolder.load(bare, require=()).export_file()


def test_export_cli(exported, tmp_path):
    from lumbarclip.cli import main

    model_dir, _ = exported
    out = tmp_path / "exp"
    assert main(["export", "--model", str(model_dir), "--format", "onnx", "--out", str(out)]) == 0
    assert (out / layout.ONNX).is_file()
    assert main(["export", "--model", str(model_dir), "--format", "onnx", "--out", str(out)]) == 2


def _pngs(folder, n, shape, dtype, seed):
    """`n` random gray PNGs of `shape`, full range of `dtype`."""
    rng = np.random.default_rng(seed)
    files = [folder / f"img{i}.png" for i in range(n)]
    for f in files:
        Image.fromarray((rng.random(shape) * np.iinfo(dtype).max).astype(dtype)).save(f)
    return files


def test_predictor_onnx_runtime_matches_torch(exported, tmp_path):
    from lumbarclip.inference.predict import Predictor

    model_dir, path = exported
    files = _pngs(tmp_path, 4, (40, 52), np.uint16, seed=0)
    torch_res = Predictor.load(model_dir, runtime="torch").predict(files, top_k=0)
    onnx_pred = Predictor.load(model_dir, runtime="onnx")
    assert isinstance(onnx_pred.scorer, OnnxImageScorer)
    onnx_res = onnx_pred.predict(files, top_k=0)
    assert len(onnx_res.images) == 4
    for a, b in zip(torch_res.images, onnx_res.images, strict=True):
        assert a.path == b.path and a.label == b.label
        assert abs(a.p_abnormal - b.p_abnormal) <= 1e-4
    for a, b in zip(torch_res.studies, onnx_res.studies, strict=True):
        assert abs(a.p_abnormal_mean_raw - b.p_abnormal_mean_raw) <= 1e-4


def _retrained_probe(model_dir):
    """The operating point refitted as `evaluate --overwrite` would: new probe weights."""
    op = ModelFolder.load(model_dir).operating_point
    op.weights = -op.weights
    op.bias = 0.7
    add_parts(model_dir, operating_point=op)


def test_stale_export_refused_naming_the_command(exported, tmp_path, capsys):
    from lumbarclip.cli import main
    from lumbarclip.inference.onnx import load_onnx_scorer
    from lumbarclip.inference.predict import Predictor

    source, _ = exported
    model_dir = tmp_path / "model"
    shutil.copytree(source, model_dir)  # the model folder with its export in onnx/
    record = json.loads((model_dir / "onnx" / "export.json").read_text())
    baked = {"config.json", "model.safetensors", "operating_point.safetensors", "preprocess.json"}
    assert set(record["sha256"]) == baked
    assert isinstance(load_onnx_scorer(ModelFolder.load(model_dir)), OnnxImageScorer)
    _retrained_probe(model_dir)
    stale = (
        f"{model_dir / 'onnx' / layout.ONNX} is stale: operating_point.safetensors changed since export; "
        f"re-run `lumbarclip export --model {model_dir} --format onnx --overwrite`"
    )
    with pytest.raises(InputError, match=re.escape(stale)):
        Predictor.load(model_dir, runtime="onnx")
    assert main(["predict", "--model", str(model_dir), "--runtime", "onnx", "x.png"]) == 2
    err = capsys.readouterr().err
    assert "is stale: operating_point.safetensors changed" in err and len(err.strip().splitlines()) == 1
    # the export folder holds copies of the files it was built from, so it is still consistent...
    export_dir = model_dir / "onnx"
    assert isinstance(load_onnx_scorer(ModelFolder.load(export_dir)), OnnxImageScorer)
    # ...until they change there; the command then names the folder it was exported from
    (export_dir / "preprocess.json").write_text((export_dir / "preprocess.json").read_text().replace("0.25", "0.3"))
    command = f"lumbarclip export --model {source.resolve()} --format onnx --out {export_dir} --overwrite"
    with pytest.raises(InputError, match=re.escape(f"preprocess.json changed since export; re-run `{command}`")):
        load_onnx_scorer(ModelFolder.load(export_dir))
    # calibration and thresholds are applied outside the graph: changing them alone is not stale
    op = ModelFolder.load(source).operating_point
    op.calibration = {"a": 2.0, "b": -0.5}
    add_parts(export_dir, operating_point=op)
    (export_dir / "preprocess.json").write_bytes((source / "preprocess.json").read_bytes())
    assert isinstance(load_onnx_scorer(ModelFolder.load(export_dir)), OnnxImageScorer)


def test_export_without_hashes_refused(exported, tmp_path):
    from lumbarclip.inference.onnx import load_onnx_scorer

    source, _ = exported
    model_dir = tmp_path / "model"
    shutil.copytree(source, model_dir)
    record_path = model_dir / "onnx" / "export.json"
    record = json.loads(record_path.read_text())
    del record["sha256"]
    record_path.write_text(json.dumps(record))
    unknown = r"export.json records no sha256 of the files it was exported from"
    with pytest.raises(InputError, match=rf"{unknown}; re-run `lumbarclip export --model .* --overwrite`"):
        load_onnx_scorer(ModelFolder.load(model_dir))


def test_reexport_after_new_probe_matches_torch(exported, tmp_path):
    """The fix the refusal names: export again, and the ONNX runtime agrees with PyTorch on the
    new probe."""
    from lumbarclip.inference.predict import Predictor

    source, _ = exported
    model_dir = tmp_path / "model"
    shutil.copytree(source, model_dir)
    _retrained_probe(model_dir)
    export_onnx(model_dir, overwrite=True)
    files = _pngs(tmp_path, 3, (48, 48), np.uint8, seed=3)
    torch_res = Predictor.load(model_dir, runtime="torch").predict(files, top_k=0)
    onnx_res = Predictor.load(model_dir, runtime="onnx").predict(files, top_k=0)
    for a, b in zip(torch_res.images, onnx_res.images, strict=True):
        assert abs(a.p_abnormal - b.p_abnormal) <= 1e-4

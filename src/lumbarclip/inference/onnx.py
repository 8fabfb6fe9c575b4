"""ONNX export of the image scorer, and an onnxruntime twin of it.

`export_onnx(model_dir, out_dir)` writes the ONNX graph of `ImageScorer` (image tower +
projection head + the operating point's linear classifier) into `out_dir`: input `image`
[N, 1, S, S] float32 preprocessed as the folder's preprocessing spec says, outputs `embedding`
[N, D] (unit rows) and `logit` [N] (uncalibrated; `OperatingPoint.calibrate` maps it to
P(abnormal) in numpy for both runtimes). The batch axis is dynamic. Beside it go copies of the
model folder's other files, so `out_dir` is itself a model folder that
`Predictor.load(out_dir, runtime="onnx")` reads; the default `out_dir` is the folder's own
export place (`lumbarclip.bundle.layout`), where `Predictor.load(MODEL, runtime="onnx")` looks.

The export is checked before it is kept: on 16 seeded random images onnxruntime must match
PyTorch within `PARITY_TOL` on both outputs, and the measured differences go to the export
record. The graph bakes in the weights and the probe, so an export goes stale when they change
(e.g. `evaluate --overwrite` refits the probe): the record holds the sha256 of every file the
graph was built from or depends on, and `ModelFolder.export_file`, which `load_onnx_scorer`
uses, refuses a stale export with a one-line error naming the export command to re-run. The
calibration and thresholds are applied in numpy at prediction, outside the graph, so they may
change without a new export.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np

from lumbarclip.bundle.folder import ModelFolder, baked_hashes, default_export_dir, export_paths
from lumbarclip.bundle.layout import EXPORT_COMMAND
from lumbarclip.errors import InputError
from lumbarclip.extras import require_extra

#: Largest absolute difference allowed between PyTorch and onnxruntime outputs.
PARITY_TOL = 1e-4


def export_onnx(
    model_dir: str | Path, out_dir: str | Path | None = None, overwrite: bool = False, opset: int = 18
) -> Path:
    """Export the model folder's `ImageScorer` into `out_dir` (default: the folder's export
    place), copy the folder's other files beside it, verify parity; returns the .onnx path."""
    import torch

    from lumbarclip.inference.scorer import ImageScorer

    model_dir = Path(model_dir)
    out_dir = Path(out_dir) if out_dir is not None else default_export_dir(model_dir)
    target, record_path = export_paths(out_dir)
    if target.exists() and not overwrite:
        raise InputError(f"{target}: exists; pass --overwrite to replace it")
    if out_dir.resolve() == model_dir.resolve():
        raise InputError(f"{out_dir}: the export folder must differ from the model folder (default MODEL/onnx)")
    sources = baked_hashes(model_dir)  # before loading: a file changed meanwhile reads as stale
    folder = ModelFolder.load(model_dir, require=("preprocess", "operating_point"))
    model = folder.model()
    scorer = ImageScorer(model, folder.operating_point).eval()
    size = scorer.image_size
    out_dir.mkdir(parents=True, exist_ok=True)
    example = torch.zeros(2, 1, size, size)
    batch = torch.export.Dim("batch", min=1, max=4096)
    tmp = target.with_name(target.name + ".tmp")
    with torch.no_grad():
        torch.onnx.export(
            scorer,
            (example,),
            str(tmp),
            input_names=["image"],
            output_names=["embedding", "logit"],
            dynamic_shapes=({0: batch},),
            opset_version=opset,
            dynamo=True,
            external_data=False,  # one self-contained file (the scorer is far below 2 GB)
            verbose=False,
        )
    diffs = parity(scorer, OnnxImageScorer(tmp), n=16)
    if max(diffs.values()) > PARITY_TOL:
        tmp.unlink()
        raise RuntimeError(f"ONNX export differs from PyTorch by {diffs} (> {PARITY_TOL}); not kept")
    tmp.replace(target)
    _copy_model_files(model_dir, out_dir)
    record = {
        "onnx": target.name,
        "inputs": {"image": ["batch", 1, size, size]},
        "outputs": {"embedding": ["batch", int(model.config.embed_dim)], "logit": ["batch"]},
        "opset": opset,
        "torch": torch.__version__,
        "onnxruntime": _ort().__version__,
        "parity_max_abs_diff": diffs,
        "parity_images": 16,
        "model": str(model_dir.resolve()),
        "sha256": sources,
    }
    record_path.write_text(json.dumps(record, indent=2) + "\n")
    return target


def parity(scorer: object, onnx_scorer: OnnxImageScorer, n: int = 16, seed: int = 0) -> dict[str, float]:
    """Max abs difference of embedding and logit between a PyTorch scorer and its ONNX export
    on `n` seeded standard-normal images (the input's scale after normalisation)."""
    import torch

    size = onnx_scorer.image_size
    images = torch.randn(n, 1, size, size, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        emb_t, logit_t = scorer(images)  # type: ignore[operator]
    emb_o, logit_o = onnx_scorer(images.numpy())
    return {
        "embedding": float(np.abs(emb_o - emb_t.numpy()).max()),
        "logit": float(np.abs(logit_o - logit_t.numpy()).max()),
    }


def load_onnx_scorer(folder: ModelFolder) -> OnnxImageScorer:
    """The model folder's exported scorer, refused when missing or stale (`ModelFolder.export_file`)."""
    return OnnxImageScorer(folder.export_file())


class OnnxImageScorer:
    """`ImageScorer` on onnxruntime (CPU): `scorer(images[N,1,S,S]) -> (embedding[N,D], logit[N])`."""

    def __init__(self, path: str | Path, threads: int | None = None) -> None:
        ort = _ort()
        path = Path(path)
        if not path.is_file():
            raise InputError(f"{path}: no such ONNX file; write it with {EXPORT_COMMAND}")
        options = ort.SessionOptions()
        # no busy-waiting between runs: on shared cores spinning threads starve everything else
        # (PyTorch in the same process ran 10x slower beside a spinning session)
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        if threads:
            options.intra_op_num_threads = threads
        try:
            self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as err:  # onnxruntime raises its own exception types for a bad file
            raise InputError(f"{path}: not a loadable ONNX model ({str(err).splitlines()[0][:200]})") from None
        inputs = self.session.get_inputs()
        names = [o.name for o in self.session.get_outputs()]
        if [i.name for i in inputs] != ["image"] or names != ["embedding", "logit"]:
            raise InputError(f"{path}: not an image scorer (inputs {[i.name for i in inputs]}, outputs {names})")
        self.image_size = int(inputs[0].shape[-1])
        self.path = path

    def __call__(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        images = np.ascontiguousarray(images, dtype=np.float32)
        embedding, logit = self.session.run(None, {"image": images})
        return embedding, logit


def _copy_model_files(model_dir: Path, out_dir: Path) -> None:
    """Everything predict reads from a model folder (config, weights, text tower, operating
    point, card, report bank) beside the export, so the export folder is a model folder."""
    skipped = {default_export_dir(model_dir).name, *(p.name for p in export_paths(out_dir))}
    for src in sorted(model_dir.iterdir()):
        if src.name in skipped or src.resolve() == out_dir.resolve():
            continue
        dst = out_dir / src.name
        if src.is_dir():
            shutil.copytree(src, dst, dirs_exist_ok=True)
        else:
            shutil.copy2(src, dst)


def _ort():  # noqa: ANN202 - the module, imported late so importing this file stays light
    require_extra("onnx", "the ONNX runtime")
    import onnxruntime

    return onnxruntime

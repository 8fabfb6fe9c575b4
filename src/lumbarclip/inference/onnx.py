"""ONNX export of the image scorer, and an onnxruntime twin of it.

`export_onnx(model_dir, out_dir)` writes `out_dir/image_scorer.onnx`: `ImageScorer` (image
tower + projection head + the operating point's linear classifier), input `image`
[N, 1, S, S] float32 preprocessed as `preprocess.json` says, outputs `embedding` [N, D] (unit
rows) and `logit` [N] (uncalibrated; `OperatingPoint.calibrate` maps it to P(abnormal) in numpy
for both runtimes). The batch axis is dynamic. Beside it go copies of the model folder's other
files, so `out_dir` is itself a model folder `Predictor.load(out_dir, runtime="onnx")` reads;
the default `out_dir` is `MODEL/onnx`, where `Predictor.load(MODEL, runtime="onnx")` looks.

The export is checked before it is kept: on 16 seeded random images onnxruntime must match
PyTorch within `PARITY_TOL` on both outputs, and the measured differences go to `export.json`.

The graph bakes in the weights and the probe, so an export goes stale when they change (e.g.
`evaluate --overwrite` refits the probe). `export.json` records the sha256 of every file the
graph was built from or depends on (`BAKED_FILES`), and `load_onnx_scorer`, which
`Predictor.load(..., runtime="onnx")` uses, refuses an export whose model folder no longer has
those files with a one-line error naming the export command to re-run. The calibration and
thresholds of `operating_point.json` are applied in numpy at prediction, outside the graph, so
they may change without a new export.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np

from lumbarclip.errors import InputError
from lumbarclip.extras import require_extra

ONNX_FILE = "image_scorer.onnx"
ONNX_SUBDIR = "onnx"
EXPORT_RECORD = "export.json"
#: Largest absolute difference allowed between PyTorch and onnxruntime outputs.
PARITY_TOL = 1e-4
#: Names a model folder's copy leaves out: the export itself and anything already exported.
_NOT_COPIED = {ONNX_SUBDIR, ONNX_FILE, EXPORT_RECORD}
EXPORT_COMMAND = "lumbarclip export --model MODEL --format onnx"
#: The model folder's files the exported graph is built from (architecture, weights, the probe's
#: weights and bias) or depends on (the input it expects): a change to any makes it stale.
BAKED_FILES: tuple[str, ...] = ("config.json", "model.safetensors", "operating_point.safetensors", "preprocess.json")


def onnx_model_path(model_dir: str | Path) -> Path:
    """The exported scorer of a model folder: `MODEL/image_scorer.onnx` (an export folder) or
    `MODEL/onnx/image_scorer.onnx`; InputError naming the command that writes it."""
    model_dir = Path(model_dir)
    for path in (model_dir / ONNX_FILE, model_dir / ONNX_SUBDIR / ONNX_FILE):
        if path.is_file():
            return path
    raise InputError(f"{model_dir / ONNX_SUBDIR / ONNX_FILE}: missing; write it with {EXPORT_COMMAND}")


def export_onnx(
    model_dir: str | Path, out_dir: str | Path | None = None, overwrite: bool = False, opset: int = 18
) -> Path:
    """Export the model folder's `ImageScorer` to `out_dir/image_scorer.onnx` (default
    `MODEL/onnx`), copy the folder's other files beside it, verify parity; returns the .onnx path."""
    import torch

    from lumbarclip.inference.operating_point import load_operating_point
    from lumbarclip.inference.scorer import ImageScorer
    from lumbarclip.models import LumbarCLIP

    model_dir = Path(model_dir)
    out_dir = Path(out_dir) if out_dir is not None else model_dir / ONNX_SUBDIR
    target = out_dir / ONNX_FILE
    if target.exists() and not overwrite:
        raise InputError(f"{target}: exists; pass --overwrite to replace it")
    if out_dir.resolve() == model_dir.resolve():
        raise InputError(f"{out_dir}: the export folder must differ from the model folder (default MODEL/onnx)")
    sources = baked_hashes(model_dir)  # before loading: a file changed meanwhile reads as stale
    model = LumbarCLIP.from_pretrained(model_dir)
    scorer = ImageScorer(model, load_operating_point(model_dir)).eval()
    size = scorer.image_size
    out_dir.mkdir(parents=True, exist_ok=True)
    example = torch.zeros(2, 1, size, size)
    batch = torch.export.Dim("batch", min=1, max=4096)
    tmp = out_dir / (ONNX_FILE + ".tmp")
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
        "onnx": ONNX_FILE,
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
    (out_dir / EXPORT_RECORD).write_text(json.dumps(record, indent=2) + "\n")
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


def baked_hashes(model_dir: Path) -> dict[str, str | None]:
    """sha256 of each of `BAKED_FILES` in `model_dir` (None where absent)."""
    out: dict[str, str | None] = {}
    for name in BAKED_FILES:
        path = model_dir / name
        if not path.is_file():
            out[name] = None
            continue
        digest = hashlib.sha256()
        with path.open("rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):  # weights can be GBs: never all in RAM
                digest.update(block)
        out[name] = digest.hexdigest()
    return out


def load_onnx_scorer(model_dir: str | Path) -> OnnxImageScorer:
    """The model folder's exported scorer (`onnx_model_path`), refused when stale: when any of
    `BAKED_FILES` in `model_dir`, whose operating point scores its logits, differs from the file
    the export was built from (sha256 in `export.json`)."""
    model_dir = Path(model_dir)
    path = onnx_model_path(model_dir)
    record_path = path.parent / EXPORT_RECORD
    try:
        record = json.loads(record_path.read_text())
        recorded, source = dict(record["sha256"]), str(record["model"])
    except (OSError, ValueError, KeyError, TypeError):
        raise InputError(
            f"{path}: cannot tell whether it is stale, {record_path.name} records no sha256 of the files "
            "it was exported from; "
            f"re-run `{EXPORT_COMMAND.replace('MODEL', str(model_dir))} --overwrite`"
        ) from None
    changed = [name for name, digest in baked_hashes(model_dir).items() if recorded.get(name) != digest]
    if changed:
        # an export in the model folder's onnx/ is re-run from that folder; an export folder
        # used as the model folder is re-run from the folder it was exported from
        command = (
            f"lumbarclip export --model {model_dir} --format onnx --overwrite"
            if path.parent != model_dir
            else f"lumbarclip export --model {source} --format onnx --out {model_dir} --overwrite"
        )
        raise InputError(f"{path} is stale: {', '.join(changed)} changed since export; re-run `{command}`")
    return OnnxImageScorer(path)


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
    for src in sorted(model_dir.iterdir()):
        if src.name in _NOT_COPIED or src.resolve() == out_dir.resolve():
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

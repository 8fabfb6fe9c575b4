"""`ModelFolder`: a trained model and everything that travels with it (preprocessing spec,
operating point with its finding gate, input guard, card, report bank, disc detector and
grader, ONNX export), read and written as one, in the spirit of a MONAI bundle.

`ModelFolder.load` reads every part there is, refuses a folder that lacks a required part
(naming each missing file and the command that writes it) or whose parts disagree (stale:
another image size or embedding width, an operating point fitted on other weights), and
builds the CLIP model only when asked (`model()`), so the ONNX runtime never loads PyTorch
weights. `ModelFolder.write` writes the named parts atomically: every file goes to a
staging folder first and is renamed into place only when all of them were written.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from safetensors import safe_open
from safetensors.numpy import load_file as load_arrays
from safetensors.numpy import save_file as save_arrays
from safetensors.torch import load_file as load_tensors
from safetensors.torch import load_model as load_weights
from safetensors.torch import save_file as save_tensors
from safetensors.torch import save_model as save_weights

from lumbarclip.bundle import layout
from lumbarclip.bundle.grader import DiscGrader
from lumbarclip.bundle.operating_point import OperatingPoint
from lumbarclip.bundle.reportbank import ReportBank
from lumbarclip.data.transforms import PreprocessSpec
from lumbarclip.decision import InputGuard
from lumbarclip.errors import InputError
from lumbarclip.models.clip import LumbarCLIP
from lumbarclip.models.config import ModelConfig
from lumbarclip.models.detector import DiscDetector
from lumbarclip.models.text import text_tower_from_folder

#: Parts a folder may lack: writing one as None removes it.
OPTIONAL: tuple[str, ...] = ("bank", "detector", "grader")
#: Key of the operating point's record of the model files it was fitted on.
FITTED_ON = "fitted_on_sha256"


@dataclass
class ExportRecord:
    """What `lumbarclip export` recorded of an ONNX export: the graph's file and the sha256 of
    the model folder's files it was built from (`layout.BAKED`)."""

    onnx: Path
    sha256: dict[str, str | None]
    source: str
    doc: dict[str, object] = field(default_factory=dict)


@dataclass
class ModelFolder:
    """One model folder's parts; None where the folder has none."""

    path: Path
    config: ModelConfig
    preprocess: PreprocessSpec | None = None
    operating_point: OperatingPoint | None = None
    guard: InputGuard | None = None
    card: dict[str, object] | None = None
    bank: ReportBank | None = None
    detector: DiscDetector | None = None
    grader: DiscGrader | None = None
    export: ExportRecord | None = None
    _model: LumbarCLIP | None = field(default=None, repr=False)

    # --- reading ------------------------------------------------------------------------------

    @classmethod
    def load(cls, path: str | Path, require: Iterable[str] = layout.DIAGNOSIS) -> ModelFolder:
        """Every part `path` holds. InputError naming each missing file of the model and of the
        `require`d parts (with the command that writes it), an unreadable file, or parts that
        disagree with each other."""
        path = Path(path)
        if not path.is_dir():
            raise InputError(f"{path}: model folder not found")
        missing = [(p, f) for p in ("model", *require) for f in layout.PARTS[p].files if not (path / f).exists()]
        if missing:
            raise InputError(_missing_message(path, missing))
        folder = cls(path, _read_config(path))
        if (path / layout.PREPROCESS).is_file():
            folder.preprocess = PreprocessSpec.from_dict(_read_json(path / layout.PREPROCESS, "preprocessing spec"))
        if _present(path, "operating_point"):
            if folder.preprocess is None:
                raise InputError(_missing_message(path, [("preprocess", layout.PREPROCESS)]))
            doc, arrays = _read_part(path, "operating_point")
            folder.operating_point = _parse(path / layout.OPERATING_POINT, "operating point", lambda: OperatingPoint.from_state(doc, arrays, folder.preprocess))
        if _present(path, "guard"):
            doc, arrays = _read_part(path, "guard")
            folder.guard = _parse(path / layout.GUARD, "input guard", lambda: InputGuard.from_state(doc, arrays))
        if (path / layout.CARD).is_file():
            folder.card = _read_json(path / layout.CARD, "model card")
        if _present(path, "bank"):
            folder.bank = _read_bank(path)
        if _present(path, "detector"):
            folder.detector = _read_detector(path / layout.DETECTOR)
        if _present(path, "grader"):
            doc, arrays = _read_part(path, "grader")
            folder.grader = _parse(path / layout.GRADER, "disc grader", lambda: DiscGrader.from_state(doc, arrays))
        folder.export = _read_export(path)
        stale = folder.disagreements()
        if stale:
            raise InputError(f"{path}: " + "; ".join(stale))
        return folder

    def model(self) -> LumbarCLIP:
        """The CLIP model (config, weights and text tower of the folder), built on first use."""
        if self._model is None:
            text_encoder, tokenizer = text_tower_from_folder(self.path / layout.TEXT)
            model = LumbarCLIP(self.config, text_encoder, tokenizer, vision_pretrained=False)
            try:
                load_weights(model, str(self.path / layout.WEIGHTS), device="cpu")
            except (OSError, RuntimeError, ValueError) as err:
                raise InputError(f"{self.path / layout.WEIGHTS}: weights do not fit {layout.CONFIG} ({str(err)[:200]})") from None
            model.clamp_logit_scale_()  # the scale within its cap, as training keeps it
            self._model = model.eval()
        return self._model

    def require(self, *parts: str) -> None:
        """InputError naming the files of `parts` this folder lacks, with their writers."""
        missing = [(p, f) for p in parts if getattr(self, p) is None for f in layout.PARTS[p].files]
        if missing:
            raise InputError(_missing_message(self.path, missing))

    def disagreements(self) -> list[str]:
        """Why parts of this folder cannot belong together (empty when they can)."""
        out = []
        size, dim = self.config.image_size, self.config.embed_dim
        if self.preprocess is not None and self.preprocess.image_size != size:
            out.append(
                f"{layout.PREPROCESS} image_size {self.preprocess.image_size} differs from {layout.CONFIG} "
                f"image_size {size}; re-run `{layout.TRAIN_COMMAND}`"
            )
        op = self.operating_point
        if op is not None:
            if op.weights.shape[0] != dim or op.class_embeddings.shape[-1] != dim:
                out.append(f"{layout.OPERATING_POINT_ARRAYS} is for {op.weights.shape[0]}-d embeddings, the model's are {dim}-d; "
                           f"re-run `{layout.EVALUATE_COMMAND}`")  # fmt: skip
            recorded = op.meta.get(FITTED_ON)
            if isinstance(recorded, dict) and recorded != model_hashes(self.path):
                out.append(f"{layout.OPERATING_POINT} was fitted on other model weights; re-run `{layout.EVALUATE_COMMAND}`")
        if self.guard is not None and "embedding" in self.guard.views and self.guard.views["embedding"].mean.shape[-1] != dim:
            out.append(f"{layout.GUARD_ARRAYS} is for another embedding width; re-run `{layout.EVALUATE_COMMAND}`")
        if self.bank is not None and len(self.bank) and self.bank.embeddings.shape[-1] != dim:
            out.append(f"{layout.BANK_ARRAYS} is for another embedding width; re-run `{layout.PARTS['bank'].writer}`")
        return out

    def export_file(self) -> Path:
        """The exported ONNX scorer; InputError when it is missing or stale (a file it was built
        from changed since), naming the command that re-writes it."""
        record = self.export
        if record is None:
            raise InputError(f"{self.path / layout.ONNX_DIR / layout.ONNX}: missing; write it with {layout.EXPORT_COMMAND}")
        if not record.sha256:
            raise InputError(
                f"{record.onnx}: cannot tell whether it is stale, {layout.EXPORT_RECORD} records no sha256 of the files "
                f"it was exported from; re-run `{layout.EXPORT_COMMAND.replace('MODEL', str(self.path))} --overwrite`"
            )
        changed = [name for name, digest in baked_hashes(self.path).items() if record.sha256.get(name) != digest]
        if changed:
            # an export in the model folder's onnx/ is re-run from that folder; an export folder
            # used as the model folder is re-run from the folder it was exported from
            command = (
                f"lumbarclip export --model {self.path} --format onnx --overwrite"
                if record.onnx.parent != self.path
                else f"lumbarclip export --model {record.source} --format onnx --out {self.path} --overwrite"
            )
            raise InputError(f"{record.onnx} is stale: {', '.join(changed)} changed since export; re-run `{command}`")
        return record.onnx

    # --- writing ------------------------------------------------------------------------------

    def write(self, parts: Iterable[str], overwrite: bool = False) -> list[Path]:
        """Write the named parts from this object's fields; a named part whose field is None is
        removed (a stale report bank must not outlive a re-evaluation). Files already there are
        refused unless `overwrite`. Atomic: nothing changes unless every file was written."""
        parts = list(dict.fromkeys(parts))
        unknown = [p for p in parts if p not in layout.PARTS or p == "export"]
        if unknown:
            raise ValueError(f"unknown or read-only part(s): {', '.join(unknown)}")
        written = [p for p in parts if self._field(p) is not None]
        required = [p for p in parts if p not in written and p not in OPTIONAL]
        if required:
            raise ValueError(f"nothing to write for part(s) {', '.join(required)}")
        present = [self.path / f for p in parts for f in layout.PARTS[p].files if (self.path / f).exists()]
        if present and not overwrite:
            raise InputError(f"{present[0]}: already exists; pass --overwrite to replace it")
        self.path.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".write-", dir=self.path))
        try:
            for part in written:
                self._stage(part, staging, model_there=staging if "model" in written else self.path)
            for part in parts:
                for name in layout.PARTS[part].files:
                    top = name.split("/")[0]
                    if part not in written:
                        _remove(self.path / top)
                    elif (staging / top).exists():
                        _replace(staging / top, self.path / top)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return [self.path / f for p in written for f in layout.PARTS[p].files]

    def _field(self, part: str) -> object | None:
        return self._model if part == "model" else getattr(self, part)

    def _stage(self, part: str, out: Path, model_there: Path) -> None:
        if part == "model":
            model = self._model
            (out / layout.CONFIG).write_text(json.dumps(asdict(model.config), indent=2) + "\n")
            save_weights(model, str(out / layout.WEIGHTS))
            model.text.config.save_pretrained(out / layout.TEXT)
            model.tokenizer.save_pretrained(out / layout.TEXT)
        elif part == "preprocess":
            (out / layout.PREPROCESS).write_text(json.dumps(self.preprocess.to_dict(), indent=2) + "\n")
        elif part == "operating_point":
            doc, arrays = self.operating_point.to_state()
            doc["meta"] = {**doc["meta"], FITTED_ON: model_hashes(model_there)}
            save_arrays(arrays, str(out / layout.OPERATING_POINT_ARRAYS))
            _write_json(out / layout.OPERATING_POINT, {**doc, "arrays": layout.OPERATING_POINT_ARRAYS})
        elif part == "guard":
            doc, arrays = self.guard.to_state()
            save_arrays(arrays, str(out / layout.GUARD_ARRAYS))
            _write_json(out / layout.GUARD, {**doc, "arrays": layout.GUARD_ARRAYS})
        elif part == "card":
            _write_json(out / layout.CARD, self.card)
        elif part == "bank":
            arrays, metadata, lines = self.bank.to_state()
            save_arrays(arrays, str(out / layout.BANK_ARRAYS), metadata=metadata)
            (out / layout.BANK_TEXTS).write_text("".join(line + "\n" for line in lines), encoding="utf-8")
        elif part == "detector":
            config, weights = self.detector.to_state()
            (out / layout.DETECTOR).mkdir()
            _write_json(out / layout.DETECTOR / layout.DETECTOR_CONFIG, config)
            save_tensors(weights, str(out / layout.DETECTOR / layout.DETECTOR_WEIGHTS))
        elif part == "grader":
            doc, arrays = self.grader.to_state()
            save_arrays(arrays, str(out / layout.GRADER_ARRAYS))
            _write_json(out / layout.GRADER, doc)


def load_model(path: str | Path) -> LumbarCLIP:
    """The CLIP model of a model folder (config, weights, text tower); nothing else is read."""
    return ModelFolder.load(path, require=()).model()


def save_model(model: LumbarCLIP, path: str | Path, preprocess: PreprocessSpec) -> Path:
    """Write the model and the preprocessing spec it was trained for (`train`'s part of a model
    folder), replacing those already there; the parts `evaluate` adds are left as they are."""
    folder = ModelFolder(Path(path), model.config, preprocess=preprocess, _model=model)
    folder.write(("model", "preprocess"), overwrite=True)
    return folder.path


def model_hashes(path: Path) -> dict[str, str | None]:
    """sha256 of the model's config and weights in `path`."""
    return {name: _sha256(path / name) for name in (layout.CONFIG, layout.WEIGHTS)}


def baked_hashes(path: str | Path) -> dict[str, str | None]:
    """sha256 of each of `layout.BAKED` in `path` (None where absent): what an export records."""
    return {name: _sha256(Path(path) / name) for name in layout.BAKED}


def export_paths(out_dir: str | Path) -> tuple[Path, Path]:
    """(the ONNX graph, its export record) of an export written to `out_dir`."""
    return Path(out_dir) / layout.ONNX, Path(out_dir) / layout.EXPORT_RECORD


def default_export_dir(path: str | Path) -> Path:
    return Path(path) / layout.ONNX_DIR


# --- helpers ----------------------------------------------------------------------------------


def _missing_message(path: Path, missing: list[tuple[str, str]]) -> str:
    by_writer: dict[str, list[str]] = {}
    for part, name in missing:
        by_writer.setdefault(layout.PARTS[part].writer, []).append(name)
    return f"{path}: not a complete model folder: " + "; ".join(
        f"missing {', '.join(names)} (write with `{writer}`)" for writer, names in by_writer.items()
    )


def _present(path: Path, part: str) -> bool:
    """True when the part's files are all there; InputError when only some are."""
    there = [(path / f).exists() for f in layout.PARTS[part].files]
    if any(there) and not all(there):
        lacking = [f for f, ok in zip(layout.PARTS[part].files, there) if not ok]
        raise InputError(f"{path}: {part.replace('_', ' ')} incomplete, missing {', '.join(lacking)} "
                         f"(write with `{layout.PARTS[part].writer}`)")  # fmt: skip
    return all(there)


def _read_json(path: Path, what: str) -> dict:
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as err:
        raise InputError(f"{path}: unreadable {what} ({err})") from None
    if not isinstance(doc, dict):
        raise InputError(f"{path}: unreadable {what} (not a JSON object)")
    return doc


def _read_part(path: Path, part: str) -> tuple[dict, dict[str, np.ndarray]]:
    """(JSON document, arrays) of a part stored as one .json and one .safetensors."""
    doc_name, arrays_name = layout.PARTS[part].files
    doc = _read_json(path / doc_name, part.replace("_", " "))
    try:
        arrays = load_arrays(str(path / arrays_name))
    except Exception as err:  # safetensors raises its own error types for a bad file
        raise InputError(f"{path / arrays_name}: unreadable arrays ({str(err)[:200]})") from None
    return doc, arrays


def _parse(path: Path, what: str, build):  # noqa: ANN001, ANN202 - a part's from_state, typed by the caller
    try:
        return build()
    except (KeyError, TypeError, ValueError, IndexError) as err:
        raise InputError(f"{path}: unreadable {what} ({err}); re-write it with the command that made it") from None


def _read_config(path: Path) -> ModelConfig:
    doc = _read_json(path / layout.CONFIG, "model config")
    try:
        return ModelConfig(**doc)
    except (TypeError, ValueError) as err:
        raise InputError(f"{path / layout.CONFIG}: not a LumbarCLIP model config ({err})") from None


def _read_bank(path: Path) -> ReportBank:
    arrays_path = path / layout.BANK_ARRAYS
    try:
        arrays = load_arrays(str(arrays_path))
        with safe_open(str(arrays_path), framework="np") as fh:
            metadata = dict(fh.metadata() or {})
        lines = (path / layout.BANK_TEXTS).read_text(encoding="utf-8").splitlines()
        return ReportBank.from_state(arrays, metadata, lines)
    except Exception as err:  # safetensors, JSON and shape errors alike name the bank
        raise InputError(f"{arrays_path}: unreadable report bank ({str(err)[:200]})") from None


def _read_detector(folder: Path) -> DiscDetector:
    config = _read_json(folder / layout.DETECTOR_CONFIG, "detector config")
    try:
        return DiscDetector.from_state(config, load_tensors(str(folder / layout.DETECTOR_WEIGHTS)))
    except Exception as err:  # a bad config, file or state dict: the detector cannot be used
        raise InputError(f"{folder}: unreadable disc detector ({str(err)[:200]})") from None


def _read_export(path: Path) -> ExportRecord | None:
    """The export of `path`: `path/image_scorer.onnx` (an export folder) or `path/onnx/...`."""
    for where in (path, path / layout.ONNX_DIR):
        onnx, record_path = export_paths(where)
        if onnx.is_file():
            try:
                doc = json.loads(record_path.read_text())
                return ExportRecord(onnx, dict(doc["sha256"]), str(doc["model"]), doc)
            except (OSError, ValueError, KeyError, TypeError):
                return ExportRecord(onnx, {}, "")
    return None


def _write_json(path: Path, doc: object) -> None:
    path.write_text(json.dumps(doc, indent=2, allow_nan=False) + "\n")


def _sha256(path: Path) -> str | None:
    if not path.is_file():
        return None
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):  # weights can be GBs: never all in RAM
            digest.update(block)
    return digest.hexdigest()


def _replace(src: Path, dst: Path) -> None:
    """Move `src` onto `dst` (a file by rename; a folder by renaming the old one aside first)."""
    if src.is_dir() and dst.exists():
        aside = dst.with_name(f".{dst.name}.old-{os.getpid()}")
        os.replace(dst, aside)
        os.replace(src, dst)
        shutil.rmtree(aside, ignore_errors=True)
    else:
        os.replace(src, dst)


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


"""The model folder's layout: every file name, and the command that writes each part. The one
place these names are spelt; everything else asks `lumbarclip.bundle` for a part.

    MODEL/
      config.json, model.safetensors, text/     the CLIP model          (train)
      preprocess.json                           its input spec         (train)
      operating_point.json + .safetensors       probe, calibration,    (evaluate --split test)
                                                thresholds, finding gate
      input_guard.json + .safetensors           out-of-distribution guard (evaluate)
      card.json                                 the model card          (evaluate)
      reportbank.safetensors + .jsonl           nearest reports, opt-in (evaluate --report-bank)
      detector/detector.json + .safetensors     disc detector           (make real)
      grader.json + .safetensors                disc grader             (make real)
      onnx/image_scorer.onnx + export.json      ONNX export             (export)
"""

from __future__ import annotations

from dataclasses import dataclass

CONFIG = "config.json"
WEIGHTS = "model.safetensors"
TEXT = "text"
PREPROCESS = "preprocess.json"
OPERATING_POINT = "operating_point.json"
OPERATING_POINT_ARRAYS = "operating_point.safetensors"
GUARD = "input_guard.json"
GUARD_ARRAYS = "input_guard.safetensors"
CARD = "card.json"
BANK_ARRAYS = "reportbank.safetensors"
BANK_TEXTS = "reportbank.jsonl"
DETECTOR = "detector"
DETECTOR_CONFIG = "detector.json"
DETECTOR_WEIGHTS = "detector.safetensors"
GRADER = "grader.json"
GRADER_ARRAYS = "grader.safetensors"
ONNX_DIR = "onnx"
ONNX = "image_scorer.onnx"
EXPORT_RECORD = "export.json"

TRAIN_COMMAND = "lumbarclip train --config CONFIG --data MANIFEST --out RUN"
EVALUATE_COMMAND = "lumbarclip evaluate --run MODEL --data MANIFEST --overwrite"
EXPORT_COMMAND = "lumbarclip export --model MODEL --format onnx"
DISCS_COMMAND = "make real SLICES=... NOTES=... OUT=..."


@dataclass(frozen=True)
class Part:
    """One part of a model folder: its files (relative to the folder) and the command that writes them."""

    name: str
    files: tuple[str, ...]
    writer: str


PARTS: dict[str, Part] = {
    p.name: p
    for p in (
        Part("model", (CONFIG, WEIGHTS, TEXT), TRAIN_COMMAND),
        Part("preprocess", (PREPROCESS,), TRAIN_COMMAND),
        Part("operating_point", (OPERATING_POINT, OPERATING_POINT_ARRAYS), EVALUATE_COMMAND),
        Part("guard", (GUARD, GUARD_ARRAYS), EVALUATE_COMMAND),
        Part("card", (CARD,), EVALUATE_COMMAND),
        Part("bank", (BANK_ARRAYS, BANK_TEXTS), EVALUATE_COMMAND + " --report-bank"),
        Part("detector", (f"{DETECTOR}/{DETECTOR_CONFIG}", f"{DETECTOR}/{DETECTOR_WEIGHTS}"), DISCS_COMMAND),
        Part("grader", (GRADER, GRADER_ARRAYS), DISCS_COMMAND),
        Part("export", (f"{ONNX_DIR}/{ONNX}", f"{ONNX_DIR}/{EXPORT_RECORD}"), EXPORT_COMMAND),
    )
}
#: The files an ONNX export is built from (architecture, weights, the probe, the input it
#: expects): a change to any of them makes the export stale.
BAKED: tuple[str, ...] = (CONFIG, WEIGHTS, OPERATING_POINT_ARRAYS, PREPROCESS)
#: What `predict`, `serve` and `pacs` need besides the model.
DIAGNOSIS: tuple[str, ...] = ("preprocess", "operating_point", "guard", "card")


def files_help(*parts: str) -> str:
    """'config.json, model.safetensors, ...' of the named parts, for command-line help."""
    return ", ".join(f for name in parts for f in PARTS[name].files)

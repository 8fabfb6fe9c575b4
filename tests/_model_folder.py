"""A tiny diagnosable model folder (weights, operating point, card) for the predict/serve/ONNX
tests: random but fixed weights, so outputs are deterministic without any training."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from lumbarclip.bundle import FindingGate, ModelFolder, OperatingPoint, save_model
from lumbarclip.data.transforms import PreprocessSpec
from lumbarclip.decision import InputGuard, Mahalanobis
from lumbarclip.models import ModelConfig, create_model

#: The finding kinds the tiny folder's gate lets through (the rest are "not validated").
VALIDATED = ("bulge", "canal_narrowing", "desiccation")


def add_parts(folder: Path, **parts: object) -> ModelFolder:
    """Write typed parts into an existing model folder (replacing those there), as evaluate and
    the disc layer do; an operating point brings its preprocessing spec."""
    model_folder = ModelFolder.load(folder, require=())
    for name, value in parts.items():
        setattr(model_folder, name, value)
    names = list(parts)
    if "operating_point" in parts:
        model_folder.preprocess = parts["operating_point"].preprocess  # type: ignore[attr-defined]
        names.append("preprocess")
    model_folder.write(names, overwrite=True)
    return model_folder


def make_model_folder(
    folder: Path, image_size: int = 32, embed_dim: int = 16, seed: int = 0, finding_head: bool = False
) -> Path:
    torch.manual_seed(seed)
    config = ModelConfig(vision="resnet18", image_size=image_size, embed_dim=embed_dim, finding_head=finding_head)
    save_model(create_model(config), folder, PreprocessSpec.of_model(image_size))
    rng = np.random.default_rng(seed)
    classes = rng.normal(size=(2, embed_dim))
    op = OperatingPoint(
        weights=rng.normal(size=embed_dim),
        bias=0.1,
        calibration={"a": 1.5, "b": 0.2},
        thresholds={"image": 0.5, "patient": 0.5},
        class_embeddings=classes / np.linalg.norm(classes, axis=1, keepdims=True),
        preprocess=PreprocessSpec.of_model(image_size),
        study_unit=[f"{seq} {lv}" for seq in ("T1", "T2") for lv in ("L3-L4", "L4-L5", "L5-S1")],
        findings=FindingGate(validated=list(VALIDATED), valid_auroc=dict.fromkeys(VALIDATED, 0.9)),
    )
    # A guard that accepts everything: these tests are about the plumbing; tests/test_guard.py
    # fits a real one.
    guard = InputGuard({"embedding": Mahalanobis(np.zeros(embed_dim), np.eye(embed_dim), threshold=1e6)})
    add_parts(folder, operating_point=op, guard=guard, card={"name": "tiny test model", "intended_use": "tests only"})
    return folder

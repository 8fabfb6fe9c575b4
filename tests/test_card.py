"""The model card from typed metrics: byte for byte the card.json the builder wrote from the
same figures when it read the metrics dict by key (tests/data/small-metrics-card*.json, written
by that builder), whether the metrics carry the current or the previous release's key names."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from _metrics_file import small_metrics
from lumbarclip.data.transforms import PreprocessSpec
from lumbarclip.evaluation.card import VERSIONED, build_card
from lumbarclip.bundle import FindingGate, OperatingPoint
from lumbarclip.evaluation.metrics_file import parse_metrics

DATA = Path(__file__).parent / "data"
CONFIG = {"vision": "resnet18", "head": "linear", "embed_dim": 16, "image_size": 32, "text": "all-MiniLM-L6-v2"}


def _operating_point(gate: dict[str, object]) -> OperatingPoint:
    return OperatingPoint(
        weights=np.zeros(4), bias=0.0, calibration={"a": 0.5, "b": 0.875}, thresholds={"image": 0.90625, "patient": 0.75},
        class_embeddings=np.eye(2, 4), preprocess=PreprocessSpec.of_model(32, planes=("axial", "sagittal")),
        study_unit=["T2 L4-L5"], findings=FindingGate.from_dict(gate),
    )  # fmt: skip


def _legacy(metrics: dict) -> dict:
    old = {("finding_zero_shot" if k == "per_finding" else k): v for k, v in metrics.items()}
    study = old["retrieval"]["study"]
    old["retrieval"] = {**old["retrieval"], "study": {("n_images" if k == "n_studies" else k): v for k, v in study.items()}}
    return old


def _card_bytes(tmp_path: Path, metrics: dict, op: OperatingPoint, bank: int | None) -> bytes:
    card = build_card(CONFIG, parse_metrics(metrics), op, bank)
    assert list(card["versions"]) == list(VERSIONED)
    card["versions"] = dict.fromkeys(card["versions"])  # the installed versions vary; the golden files hold nulls
    return (json.dumps(card, indent=2, allow_nan=False) + "\n").encode()


@pytest.mark.parametrize("names", ["current", "previous"])
def test_card_is_byte_identical_to_the_key_reading_builder(tmp_path, names):
    metrics = small_metrics()
    op = _operating_point(metrics["per_finding"])
    rename = _legacy if names == "previous" else dict
    assert _card_bytes(tmp_path, rename(metrics), op, 40) == (DATA / "small-metrics-card.json").read_bytes()
    bare = {k: v for k, v in metrics.items() if k != "report_bank"} | {"per_finding": {}}
    expected = (DATA / "small-metrics-card-no-findings.json").read_bytes()
    assert _card_bytes(tmp_path, rename(bare), _operating_point({}), None) == expected


def test_card_copies_the_figures_it_names(tmp_path):
    metrics = small_metrics()
    card = json.loads(json.dumps(build_card(CONFIG, parse_metrics(metrics), _operating_point(metrics["per_finding"]), 40)))  # as stored
    headline = card["evaluation"]["headline"]["patient"]["auroc"]
    assert headline == {"value": metrics["patient"]["auroc"], "ci95": metrics["ci95"]["patient.auroc"]}
    assert card["input_guard"] == metrics["input_guard"] and card["evaluation"]["calibration"] == metrics["calibration"]
    findings = card["findings"]
    assert findings["test_zero_shot_auroc"] == {k: v["auroc"] for k, v in metrics["per_finding"]["per_kind"].items()}
    assert findings["test_finding_head_macro_auroc"] == metrics["per_finding"]["finding_head"]["macro_auroc"]
    assert findings["validated"] == ["bulge"] and findings["scorer"] == "head"  # the head's gate, from the operating point

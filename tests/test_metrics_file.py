"""The typed reader of metrics.json: figures as written, renamed keys of older files read the
same, and bad files refused in one line naming them."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from _metrics_file import small_metrics
from lumbarclip.errors import InputError
from lumbarclip.evaluation.metrics_file import LEGACY_KEYS, parse_metrics, read_metrics

DEMO = Path(__file__).resolve().parents[1] / "docs" / "results" / "data" / "demo-metrics.json"


def _legacy(metrics: dict) -> dict:
    """`metrics` with the keys the writer used before the renames, written out by hand."""
    old = {("finding_zero_shot" if k == "per_finding" else k): v for k, v in copy.deepcopy(metrics).items()}
    study = old["retrieval"]["study"]
    old["retrieval"]["study"] = {("n_images" if k == "n_studies" else k): v for k, v in study.items()}
    return old


def _write(path: Path, doc: object) -> Path:
    path.write_text(json.dumps(doc, indent=2) + "\n")
    return path


def test_the_file_reads_as_written(tmp_path):
    written = small_metrics()
    metrics = read_metrics(_write(tmp_path / "metrics.json", written))
    assert metrics.patient.balanced_accuracy == written["patient"]["balanced_accuracy"]
    assert metrics.level("image").confusion_matrix == written["image"]["confusion_matrix"]
    assert metrics.interval("patient.auroc") == tuple(written["ci95"]["patient.auroc"])
    assert metrics.interval("image.auprc") is None and metrics.interval("no.such") is None
    assert metrics.baselines["raw_pixels"].image.auroc == written["baselines"]["raw_pixels"]["image"]["auroc"]
    assert metrics.retrieval.recall("t2i", 10) == (written["retrieval"]["t2i_r@10"], written["retrieval"]["chance_t2i_r@10"])
    assert metrics.retrieval.study.n_studies == 10 and metrics.retrieval.n_images == 60
    assert metrics.retrieval.findings_match.i2t.r5 == written["retrieval"]["findings_match"]["i2t"]["r@5"]
    scores = metrics.per_finding
    assert scores.scorer == "head" and scores.validated == ["bulge"]
    assert scores.per_kind["desiccation"].ci95 == (0.8125 - 0.125, 0.8125 + 0.0625)
    assert scores.finding_head.valid_auroc == {"bulge": 0.84375, "desiccation": 0.75}
    assert scores.pixel_ceiling.per_kind["desiccation"].auroc is None
    assert metrics.integrity.class_balance["test"].patients == 10
    assert metrics.label_efficiency["linear_probe"]["0.1"].patients == 4
    # the blocks the model card copies come back key for key, in the written order
    for block in ("calibration", "input_guard", "report_bank"):
        dumped = getattr(metrics, block).dump()
        assert json.dumps(dumped) == json.dumps(written[block])
    assert metrics.retrieval.dump() == written["retrieval"]  # aliases back to the file's keys


def test_keys_a_newer_writer_adds_are_kept():
    written = small_metrics()
    written["input_guard"]["views"] = ["embedding", "pixels"]
    written["pointing_game"] = {"hits": 3}
    metrics = parse_metrics(written)
    assert metrics.input_guard.dump()["views"] == ["embedding", "pixels"]
    assert metrics.model_extra == {"pointing_game": {"hits": 3}}


def test_old_key_names_read_the_same(tmp_path):
    assert {old for _, old, _ in LEGACY_KEYS} == {"finding_zero_shot", "n_images"}
    for current in (small_metrics(), json.loads(DEMO.read_text())):
        assert "per_finding" in current and "n_studies" in current["retrieval"]["study"]
        old = _legacy(current)
        before = json.dumps(old)
        from_old = read_metrics(_write(tmp_path / "old.json", old))
        assert json.dumps(old) == before  # the caller's dict is not renamed in place
        assert from_old == read_metrics(_write(tmp_path / "new.json", current))
        assert from_old.per_finding.macro_auroc == current["per_finding"]["macro_auroc"]
        assert from_old.retrieval.study.n_studies == current["retrieval"]["study"]["n_studies"]


def test_a_manifest_without_findings_has_no_per_finding_block():
    assert parse_metrics({**small_metrics(), "per_finding": {}}).per_finding is None
    assert parse_metrics(_legacy({**small_metrics(), "per_finding": {}})).per_finding is None


@pytest.mark.parametrize(
    "content, message",
    [
        (None, "missing; write it with lumbarclip evaluate"),
        ("{not json", "not valid JSON"),
        ("[1, 2]", "a JSON list, not an object"),
        (json.dumps({**small_metrics(), "patient": {"accuracy": "high"}}), "patient.accuracy"),
        (json.dumps({k: v for k, v in small_metrics().items() if k != "retrieval"}), "retrieval: Field required"),
    ],
)
def test_a_bad_file_is_one_line_naming_it(tmp_path, content, message):
    path = tmp_path / "metrics.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(InputError) as err:
        read_metrics(path)
    text = str(err.value)
    assert text.startswith(f"{path}: ") and message in text and "\n" not in text

"""`evaluate_run` and `lumbarclip evaluate` on a tiny synthetic cohort and a tiny (untrained)
model: every contract key, values in range, CIs from scipy's bootstrap, leaks refused (also
from the hashed training patient ids of train_summary.json), a warning when they cannot be
checked, and a model card from the test split only."""

import csv
import hashlib
import json
import logging
import re
import shutil

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from lumbarclip.bundle import ModelFolder, layout, save_model
from lumbarclip.cli import main
from lumbarclip.data.transforms import PreprocessSpec
from lumbarclip.errors import InputError
from lumbarclip.evaluation.evaluate import EvalOptions, evaluate_run
from lumbarclip.evaluation.integrity import TrainingPatients
from lumbarclip.evaluation.metrics_file import read_metrics
from lumbarclip.evaluation.supervised import SupervisedConfig, classifier_proba, train_classifier
from lumbarclip.models import ModelConfig, create_model, create_vision_tower
from lumbarclip.synth.cohort import CohortConfig, make_cohort

# The contract of DESIGN.md (plus calibration), written out rather than read from the code.
CONTRACT_BLOCK = set(
    "accuracy balanced_accuracy f1_macro f1_weighted precision_macro recall_macro auroc auprc "
    "confusion_matrix n ece brier".split()
)
RETRIEVAL_KEYS = {f"{d}_r@{k}" for d in ("i2t", "t2i") for k in (1, 5, 10)}
UNIT_INTERVAL = tuple(sorted(CONTRACT_BLOCK - {"confusion_matrix", "n"}))


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval")
    manifest = make_cohort(
        root / "cohort", CohortConfig(n_patients=24, size=32, abnormal_rate=0.5), progress=False
    )
    model = create_model(
        ModelConfig(vision="test_resnet", image_size=32, embed_dim=16, text_unfrozen_layers=0)
    )
    save_model(model, root / "run" / "model", PreprocessSpec.of_model(model.config.image_size))
    return root, manifest


@pytest.fixture(scope="module")
def evaluated(cohort):
    root, manifest = cohort
    options = EvalOptions(
        finetune=False, from_scratch=False, fractions=(0.1, 1.0), bootstrap=100, progress=False
    )
    return evaluate_run(root / "run", manifest, options=options), root / "run" / "eval-test"


def check_block(block):
    assert CONTRACT_BLOCK <= set(block)
    for key in UNIT_INTERVAL:
        assert block[key] is None or 0.0 <= block[key] <= 1.0, key
    cm = block["confusion_matrix"]
    assert len(cm) == 2 and all(len(r) == 2 for r in cm) and sum(map(sum, cm)) == block["n"]


def test_metrics_json_has_every_contract_key(evaluated):
    metrics, out = evaluated
    on_disk = json.loads((out / "metrics.json").read_text())
    assert on_disk == metrics
    typed = read_metrics(out / "metrics.json")  # every block the writer fills validates
    assert typed.patient.n == metrics["patient"]["n"] and typed.per_finding is not None
    assert not {"finding_zero_shot", "n_images"} & (set(metrics) | set(metrics["retrieval"]["study"]))
    for block in (metrics, metrics["zero_shot"], *metrics["baselines"].values()):
        check_block(block["image"])
        check_block(block["patient"])
    assert metrics["image"]["n"] == 6 * metrics["patient"]["n"]
    assert set(metrics["baselines"]) == {"majority", "raw_pixels"}
    assert RETRIEVAL_KEYS <= set(metrics["retrieval"])
    assert all(0 <= metrics["retrieval"][k] <= 1 for k in RETRIEVAL_KEYS)
    study = metrics["retrieval"]["study"]  # one query per patient: the slices averaged
    assert study["n_studies"] == metrics["patient"]["n"] and RETRIEVAL_KEYS <= set(study)
    assert 0 <= study["findings_match"]["i2t"]["map"] <= 1
    assert set(metrics["label_efficiency"]) == {"linear_probe"}
    for curve in metrics["label_efficiency"].values():
        assert curve["0.1"]["patients"] < curve["1.0"]["patients"]
        check_block(curve["0.1"]["image"])
    assert metrics["integrity"]["patient_overlap"] == {"train/valid": 0, "train/test": 0, "valid/test": 0}


def check_intervals(metrics):
    """Every CI is scipy's BCa interval (meta says so), ordered and inside [0, 1]. Whether it
    is the right interval is checked against scipy and a normal interval in test_metrics.py;
    an interval need not contain its estimate (BCa corrects for resampling bias)."""
    assert metrics["meta"]["ci_method"].startswith("scipy.stats.bootstrap BCa")
    for key, interval in metrics["ci95"].items():
        assert interval is None or 0.0 <= interval[0] <= interval[1] <= 1.0, key


def test_confidence_intervals(evaluated):
    metrics, _ = evaluated
    ci95 = metrics["ci95"]
    assert {
        f"{lv}.{m}" for lv in ("image", "patient") for m in ("accuracy", "balanced_accuracy", "auroc")
    } <= set(ci95)
    assert any(k.startswith("zero_shot.") for k in ci95)
    check_intervals(metrics)
    assert ci95["image.brier"][1] - ci95["image.brier"][0] > 0  # resampled, not a point


def test_report_is_written_with_integrity_first(evaluated):
    _, out = evaluated
    page = (out / "report.html").read_text(encoding="utf-8")
    assert re.findall(r"<h2>([^<]+)</h2>", page)[0] == "Integrity checks"
    assert page.count("src='data:image/png;base64,") >= 10


def test_cli_refuses_to_overwrite(cohort, evaluated, capsys):
    root, manifest = cohort
    before = (root / "run" / "eval-test" / "metrics.json").read_bytes()
    assert main(["evaluate", "--run", str(root / "run"), "--data", str(manifest)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("lumbarclip evaluate: error:") and "already exists" in err and "\n" not in err
    assert (root / "run" / "eval-test" / "metrics.json").read_bytes() == before


def test_cli_refuses_a_leaky_split(cohort, capsys):
    root, manifest = cohort
    rows = list(csv.DictReader(manifest.open()))
    test_patient = next(r for r in rows if r["split"] == "test")
    train_patient = next(
        r["patient_id"] for r in rows if r["split"] == "train" and r["label"] == test_patient["label"]
    )
    for r in rows:  # the test patient's images are relabelled as a training patient's
        if r["patient_id"] == test_patient["patient_id"]:
            r["patient_id"] = train_patient
    leaky = manifest.parent / "leaky.csv"
    with leaky.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    out = root / "leaky-eval"
    assert main(["evaluate", "--run", str(root / "run"), "--data", str(leaky), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert "patient-disjoint" in err and train_patient in err and "\n" not in err
    assert not out.exists()


def _run_copy(root, name, summary=None):
    """A run folder holding a copy of the tiny model and, when given, a train_summary.json."""
    (root / name / "model").mkdir(parents=True)
    for part in ("config.json", "model.safetensors", "text"):  # the model alone, not what evaluate added
        copy = shutil.copytree if (root / "run" / "model" / part).is_dir() else shutil.copy
        copy(root / "run" / "model" / part, root / name / "model" / part)
    if summary is not None:
        (root / name / "train_summary.json").write_text(json.dumps(summary))
    return root / name


def _sha256(patient_id):
    return hashlib.sha256(patient_id.encode("utf-8")).hexdigest()


def test_test_split_writes_the_card_and_says_overlap_was_not_checked(cohort, evaluated):
    root, _ = cohort
    metrics, _ = evaluated
    assert (root / "run" / "model" / layout.CARD).is_file()
    assert not metrics["integrity"]["pretraining_overlap_checked"]  # the fixture's run has no train_summary.json
    assert any("train_summary.json not found" in w and "NOT checked" in w for w in metrics["integrity"]["warnings"])


def test_overlap_with_hashed_training_patients_is_refused(cohort):
    root, manifest = cohort
    rows = list(csv.DictReader(manifest.open()))
    test_patient = next(r["patient_id"] for r in rows if r["split"] == "test")
    # the ids only as digests, and no manifest to fall back on: the digests alone catch the leak
    run = _run_copy(root, "hashed", {"train_patients_sha256": [_sha256("someone-else"), _sha256(test_patient)]})
    with pytest.raises(InputError, match=f"e.g. {test_patient}\\).*training data"):
        evaluate_run(run, manifest, options=EvalOptions(progress=False))
    assert not (run / "eval-test").exists()


def test_run_without_hashed_ids_falls_back_to_its_manifest_and_says_so(cohort, tmp_path):
    _, manifest = cohort
    (tmp_path / "train_summary.json").write_text(json.dumps({"manifest": str(manifest)}))
    training = TrainingPatients.from_run(tmp_path)
    train_ids = {r["patient_id"] for r in csv.DictReader(manifest.open()) if r["split"] == "train"}
    assert training.hashes == {_sha256(p) for p in train_ids}
    assert "no hashed training patient ids" in training.warning and "as it is now" in training.warning


def test_valid_split_writes_no_card_and_warns_when_overlap_cannot_be_checked(cohort, capsys, caplog):
    root, manifest = cohort
    run = _run_copy(root, "valid-run", {"manifest": str(root / "moved-away.csv")})  # no hashed ids
    args = ["evaluate", "--run", str(run), "--data", str(manifest), "--split", "valid", "--no-finetune"]
    args += ["--no-scratch", "--no-label-efficiency", "--no-report", "--bootstrap", "20", "--no-progress"]
    with caplog.at_level(logging.WARNING):
        assert main(args) == 0
    logged = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("no hashed training patient ids" in m and "NOT checked" in m for m in logged)
    printed = capsys.readouterr().out
    assert "WARNING:" in printed and "NOT checked" in printed
    assert (run / "eval-valid" / "metrics.json").is_file()
    assert not (run / "model" / layout.CARD).exists()


def test_supervised_classifier_learns_and_keeps_the_best_epoch():
    generator = torch.Generator().manual_seed(0)
    labels = np.r_[np.zeros(24), np.ones(40)].astype(int)
    images = torch.randn(64, 1, 32, 32, generator=generator)
    images[labels == 1, :, 8:24, 8:24] += 1.5  # a bright square marks the abnormal class
    module = train_classifier(
        create_vision_tower("test_resnet"),
        (images[:48], labels[:48]),
        (images[48:], labels[48:]),
        SupervisedConfig(epochs=3, batch_size=16),
        progress=False,
    )
    assert roc_auc_score(labels, classifier_proba(module, images)) > 0.9
    assert not module.training


@pytest.mark.slow
def test_train_then_evaluate_end_to_end(cohort, capsys):
    from lumbarclip.training import load_config, train

    root, manifest = cohort
    config = load_config(
        "cpu-demo",
        [
            "model.vision=test_resnet",
            "model.image_size=32",
            "model.embed_dim=16",
            "trainer.max_epochs=1",
            "data.batch_size=16",
        ],
    )
    run = train(config, manifest, root / "trained", progress=False)
    train_ids = {r["patient_id"] for r in csv.DictReader(manifest.open()) if r["split"] == "train"}
    summary = json.loads((run / "train_summary.json").read_text())
    assert summary["train_patients_sha256"] == sorted(_sha256(p) for p in train_ids)
    assert (
        main(
            [
                "evaluate",
                "--run",
                str(run),
                "--data",
                str(manifest),
                "--epochs",
                "1",
                "--bootstrap",
                "100",
                "--no-progress",
            ]
        )
        == 0
    )
    assert "linear_probe" in capsys.readouterr().out
    metrics = json.loads((run / "eval-test" / "metrics.json").read_text())
    for block in (metrics, metrics["zero_shot"], metrics["finetune"], *metrics["baselines"].values()):
        check_block(block["image"])
        check_block(block["patient"])
    assert set(metrics["baselines"]) == {"majority", "raw_pixels", "from_scratch"}
    assert set(metrics["label_efficiency"]) == {"linear_probe", "from_scratch"}
    assert (
        metrics["label_efficiency"]["from_scratch"]["1.0"]["image"]
        == metrics["baselines"]["from_scratch"]["image"]
    )
    check_intervals(metrics)
    assert (run / "eval-test" / "report.html").stat().st_size > 10_000
    assert metrics["integrity"]["pretraining_overlap_checked"]
    assert not any("NOT checked" in w or "hashed" in w for w in metrics["integrity"]["warnings"])


def test_findings_figures_and_the_gate_reach_metrics_card_and_operating_point(evaluated):
    from lumbarclip.evaluation.findings import MIN_VALID_AUROC
    from lumbarclip.findings import LEVEL_KINDS

    metrics, out = evaluated
    fz = metrics["per_finding"]
    assert "macro_auroc" in fz and set(fz["per_kind"]) == set(LEVEL_KINDS)
    ceiling = fz["pixel_ceiling"]
    assert "macro_auroc" in ceiling and ceiling["per_kind"]
    assert all(v["auroc"] is None or 0 <= v["auroc"] <= 1 for v in ceiling["per_kind"].values())
    cosine = fz["prompt_pair_cosine"]["per_kind"]
    assert set(cosine) == set(LEVEL_KINDS) and all(-1 <= c <= 1 for c in cosine.values())
    validated = [k for k, a in fz["valid_auroc"].items() if a is not None and a >= MIN_VALID_AUROC]
    assert fz["validated"] == validated
    model_dir = out.parent / "model"
    card = json.loads((model_dir / layout.CARD).read_text())
    assert card["findings"]["valid_auroc"] == fz["valid_auroc"]  # card.json: findings.valid_auroc.<kind>
    assert card["findings"]["validated"] == validated
    assert card["findings"]["pixel_ceiling_macro_auroc"] == ceiling["macro_auroc"]
    assert ModelFolder.load(model_dir).operating_point.validated_findings == validated
    html = (out / "report.html").read_text()
    assert "pixel ceiling" in html and "valid AUROC" in html and "cos(pos, neg)" in html

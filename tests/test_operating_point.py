"""Operating point: the probe folded over the embedding, Platt calibration against scipy, ECE
reduced on a miscalibrated toy case (sklearn's calibration_curve), valid-chosen thresholds,
the report bank, and `evaluate` writing a self-sufficient model folder."""

import json

import numpy as np
import pytest
from scipy.optimize import minimize
from scipy.special import expit
from sklearn.calibration import calibration_curve
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import balanced_accuracy_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from lumbarclip.bundle import ModelFolder, OperatingPoint, save_model
from lumbarclip.bundle.reportbank import SYNTHETIC_REPORTS, ReportBank
from lumbarclip.data.transforms import PreprocessSpec
from lumbarclip.decision import PLATT_C, fit_platt
from lumbarclip.inference.operating_point import (
    fit_operating_point,
    probe_weights,
)


def _ece(y, p, bins=10):
    """ECE from sklearn's reliability curve (uniform bins), computed here independently."""
    frac, mean = calibration_curve(y, p, n_bins=bins, strategy="uniform")
    counts = np.histogram(p, bins=np.linspace(0, 1, bins + 1))[0]
    counts = counts[counts > 0]
    return float(np.sum(counts * np.abs(frac - mean)) / len(p))


def _toy(n, seed):
    """Logits of an over-confident, shifted classifier: truth is sigmoid(0.4 * z - 1)."""
    rng = np.random.default_rng(seed)
    z = rng.normal(0, 4, n)
    y = (rng.random(n) < expit(0.4 * z - 1.0)).astype(int)
    return z, y


def test_platt_matches_scipy_and_reduces_ece():
    z_valid, y_valid = _toy(4000, 0)
    calib = fit_platt(z_valid, y_valid)

    def nll(ab):  # sklearn's objective: summed log-loss + the L2 penalty a^2 / (2C) (b unpenalised)
        p = np.clip(expit(ab[0] * z_valid + ab[1]), 1e-12, 1 - 1e-12)
        return -np.sum(y_valid * np.log(p) + (1 - y_valid) * np.log(1 - p)) + ab[0] ** 2 / (2 * PLATT_C)

    ref = minimize(nll, x0=[1.0, 0.0], method="Nelder-Mead", options={"xatol": 1e-6, "fatol": 1e-10}).x
    assert calib["a"] == pytest.approx(ref[0], abs=1e-3) and calib["b"] == pytest.approx(ref[1], abs=1e-3)
    assert calib["a"] == pytest.approx(0.4, abs=0.05) and calib["b"] == pytest.approx(-1.0, abs=0.15)
    z_test, y_test = _toy(4000, 1)
    op = OperatingPoint(np.zeros(2), 0.0, calib, {"image": 0.5, "patient": 0.5}, np.eye(2), PreprocessSpec.of_model(32))
    before, after = _ece(y_test, expit(z_test)), _ece(y_test, op.calibrate(z_test))
    assert before > 0.15 and after < 0.03


def test_platt_penalty_keeps_a_separable_valid_set_finite():
    # perfectly separated: the unpenalised slope runs off towards infinity, the penalised one stays put
    z = np.array([-3.0, -2.0, -1.5, -0.5, 0.5, 1.0, 2.0, 3.5])
    y = (z > 0).astype(int)
    calib = fit_platt(z, y)
    assert np.isfinite(calib["a"]) and 0 < calib["a"] < 5
    p = expit(calib["a"] * z + calib["b"])
    assert ((p >= 0.5) == y.astype(bool)).all() and p.max() < 0.999  # same decisions, no 0/1 certainty


def test_one_class_valid_leaves_the_logit_uncalibrated():
    assert fit_platt(np.array([0.1, 2.0, -1.0]), np.array([1, 1, 1])) == {"a": 1.0, "b": 0.0}


def test_probe_folded_over_embedding_and_thresholds_chosen_on_valid(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 8)) + 0.3
    y = (x[:, 0] + 0.5 * x[:, 1] + rng.normal(0, 0.7, 300) > 0.3).astype(int)
    pipeline = make_pipeline(StandardScaler(), LogisticRegression(C=1.0, class_weight="balanced")).fit(x[:200], y[:200])
    w, b = probe_weights(pipeline)
    np.testing.assert_allclose(x @ w + b, pipeline.decision_function(x), atol=1e-4)
    patients = np.repeat(np.arange(50), 2)
    op = fit_operating_point(pipeline, x[200:], y[200:], patients, np.eye(2, 8), PreprocessSpec.of_model(32), {"note": "toy"})
    prob = op.calibrate(op.logit(x[200:]))
    best = max(balanced_accuracy_score(y[200:], prob >= t) for t in np.unique(prob))
    assert balanced_accuracy_score(y[200:], prob >= op.thresholds["image"]) == pytest.approx(best)
    # given the probe's own thresholds (evaluation's), the calibrated ones make the same decisions
    raw = {"image": 0.55, "patient": 0.45}
    same = fit_operating_point(pipeline, x[200:], y[200:], patients, np.eye(2, 8), PreprocessSpec.of_model(32), raw_thresholds=raw)
    raw_prob = pipeline.predict_proba(x)[:, 1]
    np.testing.assert_array_equal(same.calibrate(same.logit(x)) >= same.thresholds["image"], raw_prob >= 0.55)
    means = raw_prob.reshape(-1, 2).mean(axis=1)
    np.testing.assert_array_equal(same.calibrate_patient(means) >= same.thresholds["patient"], means >= 0.45)
    doc, arrays = op.to_state()
    loaded = OperatingPoint.from_state(json.loads(json.dumps(doc)), arrays, op.preprocess)
    np.testing.assert_allclose(loaded.weights, w, rtol=1e-6)
    assert loaded.thresholds == pytest.approx(op.thresholds) and loaded.calibration == pytest.approx(op.calibration)
    assert loaded.patient_calibration == pytest.approx(op.patient_calibration)
    assert loaded.preprocess.image_size == 32 and loaded.meta == {"note": "toy"}


def test_report_bank_nearest_and_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    emb = rng.normal(size=(5, 4))
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    bank = ReportBank(emb, [f"report {i}" for i in range(5)], [0, 1, 1, 0, 1])
    query = emb[[3]] + 0.01
    top = bank.nearest(query, 2)[0]
    order = np.argsort(-(query @ emb.T)[0])
    assert [t["text"] for t in top] == [f"report {order[0]}", f"report {order[1]}"] and top[0]["text"] == "report 3"
    assert bank.top1_labels(emb).tolist() == [0, 1, 1, 0, 1]
    again = ReportBank.from_state(*bank.to_state())
    assert again.texts == bank.texts and again.labels.tolist() == [0, 1, 1, 0, 1]


@pytest.mark.slow
def test_evaluate_writes_a_model_folder_predict_can_use(tmp_path):
    from lumbarclip.evaluation.evaluate import EvalOptions, evaluate_run
    from lumbarclip.inference.predict import Predictor
    from lumbarclip.models import ModelConfig, create_model
    from lumbarclip.synth.cohort import CohortConfig, make_cohort

    manifest = make_cohort(tmp_path / "cohort", CohortConfig(n_patients=24, size=32, abnormal_rate=0.5), progress=False)
    model = create_model(ModelConfig(vision="test_resnet", image_size=32, embed_dim=16, text_unfrozen_layers=0))
    model_dir = save_model(model, tmp_path / "run" / "model", PreprocessSpec.of_model(model.config.image_size))
    options = EvalOptions(finetune=False, from_scratch=False, label_efficiency=False, raw_pixels=False,
                          bootstrap=50, progress=False, report=False, report_bank=True)  # fmt: skip
    metrics = evaluate_run(tmp_path / "run", manifest, options=options)
    calib = metrics["calibration"]
    assert set(calib["before"]["image"]) >= {"ece", "brier"} and calib["fitted_on"] == "valid"
    card = json.loads((model_dir / "card.json").read_text())
    headline = card["evaluation"]["headline"]["patient"]["balanced_accuracy"]
    assert headline["value"] == metrics["patient"]["balanced_accuracy"]
    assert headline["ci95"] == metrics["ci95"]["patient.balanced_accuracy"]
    bank = ModelFolder.load(model_dir).bank
    assert len(bank) == metrics["report_bank"]["reports"] == 16  # 24 patients: 16 in train
    # the built-in writer's reports, checked pair by pair: serve may show them without a flag
    assert metrics["report_bank"]["texts"] == bank.source == SYNTHETIC_REPORTS
    from fastapi.testclient import TestClient

    from lumbarclip.serve import create_app

    assert TestClient(create_app(model_dir)).get("/health").json()["nearest_reports"] is True
    images = sorted((tmp_path / "cohort" / "images").glob("*.png"))[:6]
    result = Predictor.load(model_dir).predict(images, top_k=1)
    assert len(result.images) == 6 and all(len(line.nearest_reports) == 1 for line in result.images)

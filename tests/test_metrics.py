"""Metrics, thresholds, patient aggregation, bootstrap, retrieval, probe and integrity checks on
small hand-made arrays (no model)."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import stats
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    brier_score_loss,
    confusion_matrix,
    f1_score,
    precision_score,
    recall_score,
    roc_auc_score,
)
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from torchmetrics.functional.classification import binary_calibration_error

from lumbarclip.data.manifest import ImageRecord, Manifest
from lumbarclip.decision import aggregate_patients, choose_threshold
from lumbarclip.errors import InputError
from lumbarclip.evaluation.integrity import check_patient_overlap, integrity_checks, outcome_warnings
from lumbarclip.evaluation.metrics import (
    METRIC_KEYS,
    bootstrap_ci,
    classification_metrics,
    expected_calibration_error,
)
from lumbarclip.evaluation.predictions import Predictions
from lumbarclip.evaluation.probe import fit_probe, subsample_patients
from lumbarclip.evaluation.retrieval import retrieval_metrics
from lumbarclip.evaluation.zeroshot import load_prompts


def _noisy_scores(n=300, seed=0):
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.8).astype(int)
    prob = np.clip(0.35 * y + 0.65 * rng.random(n), 0, 1)
    return y, prob


@pytest.mark.parametrize("threshold", [0.0, 0.4, 0.7, 1.01])
def test_classification_metrics_match_sklearn(threshold):
    y, prob = _noisy_scores()
    m = classification_metrics(y, prob, threshold=threshold)
    pred = (prob >= threshold).astype(int)
    both = {"labels": [0, 1], "zero_division": 0}
    assert set(METRIC_KEYS) <= set(m)
    assert m["accuracy"] == pytest.approx(accuracy_score(y, pred))
    assert m["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(y, pred))
    assert m["f1_macro"] == pytest.approx(f1_score(y, pred, average="macro", **both))
    assert m["f1_weighted"] == pytest.approx(f1_score(y, pred, average="weighted", **both))
    assert m["precision_macro"] == pytest.approx(precision_score(y, pred, average="macro", **both))
    assert m["recall_macro"] == pytest.approx(recall_score(y, pred, average="macro", **both))
    assert m["auroc"] == pytest.approx(roc_auc_score(y, prob))
    assert m["confusion_matrix"] == confusion_matrix(y, pred, labels=[0, 1]).tolist()
    assert m["n"] == len(y)
    assert m["brier"] == pytest.approx(brier_score_loss(y, prob))
    json.dumps(m, allow_nan=False)  # plain JSON types only


def test_one_class_gives_null_ranking_metrics_not_a_crash():
    m = classification_metrics(np.ones(5), np.array([0.9, 0.8, 0.3, 0.7, 0.6]))
    assert m["auroc"] is None and m["auprc"] is None
    assert m["balanced_accuracy"] == pytest.approx(0.8)  # recall of the one class present
    assert classification_metrics(np.array([]), np.array([]))["n"] == 0


def test_ece_by_hand_and_against_torchmetrics():
    # all predictions 0.9 while half are abnormal: one bin, gap |0.5 - 0.9| = 0.4
    assert expected_calibration_error(np.array([0, 1, 0, 1]), np.full(4, 0.9)) == pytest.approx(0.4)
    # bins [0.2, 0.3) and [0.8, 0.9) each exactly calibrated
    y = np.array([1] + [0] * 4 + [1] * 4 + [0])
    prob = np.array([0.21] * 5 + [0.81] * 5)
    assert expected_calibration_error(y, prob) == pytest.approx(0.01)
    y, prob = _noisy_scores(500, seed=4)
    independent = binary_calibration_error(torch.tensor(prob), torch.tensor(y), n_bins=10, norm="l1")
    assert expected_calibration_error(y, prob) == pytest.approx(float(independent), abs=1e-6)


def test_threshold_is_chosen_between_the_classes():
    y = np.array([0, 0, 0, 1, 1, 1, 1])
    prob = np.array([0.1, 0.2, 0.55, 0.6, 0.7, 0.8, 0.9])
    t = choose_threshold(y, prob)
    assert 0.55 < t <= 0.6
    assert classification_metrics(y, prob, t)["balanced_accuracy"] == 1.0
    assert choose_threshold(np.ones(3), np.array([0.2, 0.5, 0.9])) == 0.5


def test_patient_aggregation_is_the_mean_probability():
    ids, labels, prob = aggregate_patients(
        np.array(["b", "a", "b", "a", "b"]), np.array([1, 0, 1, 0, 1]), np.array([0.9, 0.1, 0.6, 0.3, 0.3])
    )
    assert ids.tolist() == ["a", "b"]
    assert labels.tolist() == [0, 1]
    assert prob == pytest.approx([0.2, 0.6])


def test_bootstrap_is_scipys_bca_interval():
    y, prob = _noisy_scores(120)

    def stat(idx):
        m = classification_metrics(y[idx], prob[idx])
        return {"acc": m["accuracy"], "auc": m["auroc"]}

    ci = bootstrap_ci(stat, len(y), n_resamples=300, seed=3)
    assert ci == bootstrap_ci(stat, len(y), n_resamples=300, seed=3)
    direct = stats.bootstrap(
        (np.arange(len(y)),),
        lambda idx: np.array(list(stat(idx.astype(int)).values())),
        n_resamples=300,
        method="BCa",
        vectorized=False,
        rng=np.random.default_rng(3),
    ).confidence_interval
    assert ci["acc"] == pytest.approx([direct.low[0], direct.high[0]])
    assert ci["auc"] == pytest.approx([direct.low[1], direct.high[1]])


def test_bootstrap_of_a_mean_matches_the_normal_interval():
    # an independent computation: for the mean of 400 normal draws the bootstrap interval is
    # close to mean ± 1.96 sd / sqrt(n)
    x = np.random.default_rng(0).normal(size=400)
    normal = x.mean() + np.array([-1, 1]) * 1.96 * x.std(ddof=1) / np.sqrt(len(x))
    for method in ("BCa", "percentile"):
        ci = bootstrap_ci(lambda idx: {"mean": x[idx].mean()}, len(x), n_resamples=2000, method=method)
        assert ci["mean"] == pytest.approx(normal, abs=0.015)


def test_bootstrap_interval_is_not_widened_to_a_biased_estimate():
    # the share of distinct groups drawn is 1.0 on the full sample and ~0.63 on a resample: a
    # percentile interval lies below the estimate, and it is reported as it is
    ci = bootstrap_ci(
        lambda idx: {"distinct": len(set(idx.tolist())) / 50}, 50, n_resamples=200, method="percentile"
    )
    assert 0.5 < ci["distinct"][0] < ci["distinct"][1] < 0.75


def test_bootstrap_strata_keep_their_sizes_and_constant_metrics_get_point_intervals():
    strata = [np.arange(0, 3), np.arange(3, 20)]
    ci = bootstrap_ci(
        lambda idx: {"normal_share": float(np.mean(idx < 3)), "undefined": None}, strata, n_resamples=50
    )
    assert ci["normal_share"] == [3 / 20, 3 / 20]  # every resample keeps 3 of 20
    assert ci["undefined"] is None
    # a stratum of one cannot be resampled on its own: pooled, so the share now varies
    pooled = bootstrap_ci(lambda idx: {"first": float(np.mean(idx == 0))}, [[0], np.arange(1, 20)], n_resamples=200)
    assert pooled["first"][1] > 0


def test_bootstrap_resamples_whole_patients():
    # six images a patient, all right or all wrong: resampling patients makes the image-level
    # accuracy equal the patient-level one in every resample, so the intervals coincide
    rng = np.random.default_rng(1)
    patient_right = rng.random(40) < 0.7
    labels = rng.integers(0, 2, 40)
    y = np.repeat(labels, 6)
    prob = np.repeat(np.where(patient_right, labels * 0.6 + 0.2, 0.8 - labels * 0.6), 6)
    pids = np.repeat([f"p{i}" for i in range(40)], 6)
    ci = Predictions(y, prob, pids).bootstrap(n_resamples=100, seed=0)
    assert ci["image.accuracy"] == ci["patient.accuracy"]
    assert ci["image.accuracy"][0] < 0.7 < ci["image.accuracy"][1]


def test_thresholds_are_tuned_on_valid_per_level():
    valid = Predictions([0, 0, 1, 1], [0.6, 0.65, 0.7, 0.8], ["a", "b", "c", "d"])
    test = Predictions([0, 1], [0.66, 0.75], ["e", "f"]).tuned_on(valid)
    assert 0.65 < test.thresholds["image"] <= 0.7
    assert test.metrics()["image"]["balanced_accuracy"] == 1.0


def test_retrieval_recalls_and_chance():
    # 3 patients, 2 images each; reports are the patient directions, images are noisy copies
    basis = np.eye(3)
    images = np.repeat(basis, 2, axis=0) + 0.1 * np.array([[0, 1, 0], [0, 0, 1]] * 3)
    images /= np.linalg.norm(images, axis=1, keepdims=True)
    r = retrieval_metrics(images, np.repeat(["a", "b", "c"], 2), basis, np.array(["a", "b", "c"]), ks=(1, 2))
    assert r["i2t_r@1"] == 1.0 and r["t2i_r@1"] == 1.0
    assert r["chance_i2t_r@1"] == pytest.approx(1 / 3)
    assert r["chance_t2i_r@1"] == pytest.approx(2 / 6)
    assert r["chance_t2i_r@2"] == pytest.approx(1 - (4 / 6) * (3 / 5))
    # swap two reports: image -> report now misses for patients a and b at K=1, hits at K=2
    swapped = retrieval_metrics(
        images, np.repeat(["a", "b", "c"], 2), basis, np.array(["b", "a", "c"]), ks=(1, 2)
    )
    assert swapped["i2t_r@1"] == pytest.approx(1 / 3)
    assert swapped["i2t_r@2"] > swapped["i2t_r@1"]


def test_probe_learns_separable_features_and_picks_c():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 120)
    x = rng.normal(size=(120, 5)) + y[:, None] * np.array([2.0, 0, 0, 0, 0])
    probe = fit_probe(x[:80], y[:80], x[80:], y[80:], cs=(0.01, 1.0))
    assert probe.C in (0.01, 1.0)
    assert balanced_accuracy_score(y[80:], probe.predict_proba(x[80:]) >= 0.5) > 0.8
    with pytest.raises(InputError):
        fit_probe(x[:10], np.ones(10, int), x[80:], y[80:])


def test_probe_c_is_the_best_on_valid_and_weights_see_train_only():
    # 40 noise features and few training cases: C matters; the choice is recomputed by hand
    rng = np.random.default_rng(2)
    y = rng.integers(0, 2, 160)
    x = rng.normal(size=(160, 40)) + y[:, None] * np.r_[0.8, np.zeros(39)]
    xt, yt, xv, yv = x[:60], y[:60], x[60:], y[60:]
    cs = (1e-3, 1e-2, 1e-1, 1.0, 10.0)
    scored = []
    for c in cs:
        model = make_pipeline(
            StandardScaler(), LogisticRegression(C=c, class_weight="balanced", max_iter=5000, random_state=0)
        ).fit(xt, yt)
        prob = model.predict_proba(xv)[:, 1]
        scored.append(((balanced_accuracy_score(yv, prob > 0.5), roc_auc_score(yv, prob), -c), c, prob))
    _, best_c, best_prob = max(scored, key=lambda item: item[0])
    probe = fit_probe(xt, yt, xv, yv, cs=cs)
    assert probe.C == best_c
    assert probe.predict_proba(xv) == pytest.approx(best_prob)  # fitted on train, not train+valid


def test_subsample_patients_is_stratified_seeded_and_whole():
    pids = np.repeat([f"p{i:02d}" for i in range(50)], 3)
    labels = np.repeat((np.arange(50) >= 10).astype(int), 3)  # 10 normal, 40 abnormal
    mask = subsample_patients(pids, labels, 0.01, seed=0)
    kept = set(pids[mask])
    assert {int(labels[pids == p][0]) for p in kept} == {0, 1}  # one of each class at 1%
    assert len(kept) == 2 and mask.sum() == 6  # all three images of each kept patient
    assert np.array_equal(mask, subsample_patients(pids, labels, 0.01, seed=0))
    assert len(set(pids[subsample_patients(pids, labels, 0.1, seed=0)])) == 5  # 1 normal + 4 abnormal
    assert subsample_patients(pids, labels, 1.0).all()


def _manifest(rows):
    records = [
        ImageRecord(Path(f"{p}-{i}.png"), p, s, y, f"report of {p}") for i, (p, s, y) in enumerate(rows)
    ]
    return Manifest(Path("m.csv"), records)


def test_patient_overlap_is_fatal_and_named():
    leaky = _manifest([("p1", "train", 1), ("p2", "valid", 0), ("p1", "test", 1)])
    with pytest.raises(InputError, match="p1 appear in both train and test"):
        check_patient_overlap(leaky)
    ok = _manifest([("p1", "train", 1), ("p2", "valid", 0), ("p3", "test", 1)])
    assert set(check_patient_overlap(ok).values()) == {0}


def test_pretraining_overlap_is_fatal():
    manifest = _manifest([("p1", "train", 1), ("p2", "valid", 0), ("p3", "test", 1)])
    with pytest.raises(InputError, match="p3"):
        integrity_checks(manifest, "test", {}, pretrain_patients={"p3", "p9"})
    assert integrity_checks(manifest, "test", {}, pretrain_patients={"p1"})["pretraining_overlap_checked"]


def test_integrity_warnings():
    manifest = _manifest(
        [("p1", "train", 1), ("p2", "train", 0), ("p3", "valid", 1), ("p4", "valid", 0), ("p5", "test", 1)]
    )
    out = integrity_checks(
        manifest,
        "test",
        {"probe": ["image"], "fusion": ["image", "report"]},
        prompts={0: ["normal spine"], 1: ["report of p5"]},
    )
    warnings = " | ".join(out["warnings"])
    assert "fusion reads report" in warnings and "probe" not in warnings
    assert "split test has one class" in warnings and "split train" not in warnings
    assert "verbatim test reports" in warnings
    assert out["class_balance"]["train"]["patients_normal"] == 1


def test_load_prompts(tmp_path):
    good = tmp_path / "p.yaml"
    good.write_text("normal: [No disc herniation.]\nabnormal:\n  - Disc protrusion at L4-L5.\n  - Bulge.\n")
    assert load_prompts(good) == {0: ["No disc herniation."], 1: ["Disc protrusion at L4-L5.", "Bulge."]}
    as_json = tmp_path / "p.json"
    as_json.write_text(json.dumps({"0": "normal", "1": ["abnormal"]}))
    assert load_prompts(as_json) == {0: ["normal"], 1: ["abnormal"]}
    for text in ("normal: [a]\n", "sick: [a]\nnormal: [b]\n", "normal: []\nabnormal: [b]\n", "- a\n"):
        bad = tmp_path / "bad.yaml"
        bad.write_text(text)
        with pytest.raises(InputError):
            load_prompts(bad)


def test_outcome_warnings_flag_majority_chance_and_pixel_parity():
    pids = np.repeat([f"p{i}" for i in range(8)], 2)
    y = np.repeat([0, 0, 0, 1, 1, 1, 1, 1], 2)
    good = Predictions(y, np.where(y == 1, 0.8, 0.2), pids)
    metrics = {
        **good.metrics(),
        "zero_shot": Predictions(y, np.full(len(y), 0.9), pids).metrics(),  # calls everything abnormal
        "baselines": {"raw_pixels": Predictions(y, np.where(y == 1, 0.7, 0.3), pids).metrics()},
        "ci95": {"patient.balanced_accuracy": [0.9, 1.0], "zero_shot.patient.balanced_accuracy": [0.5, 0.5]},
    }
    warnings = " | ".join(outcome_warnings(metrics, "linear_probe"))
    assert "zero_shot calls every image abnormal" in warnings
    assert "zero_shot patient balanced accuracy 95% CI [0.50, 0.50]" in warnings
    assert "raw-pixel baseline matches or beats linear_probe" in warnings
    assert "linear_probe calls" not in warnings and "linear_probe patient balanced" not in warnings
    metrics["baselines"] = {"raw_pixels": Predictions(y, np.where(y == 1, 0.4, 0.6), pids).metrics()}
    assert "raw-pixel" not in " ".join(outcome_warnings(metrics, "linear_probe"))


def test_f1_threshold_is_the_best_f1_by_brute_force():
    from sklearn.metrics import f1_score

    from lumbarclip.decision import choose_f1_threshold

    rng = np.random.default_rng(3)
    y = (rng.random(300) < 0.1).astype(int)  # a rare class, as spondylolisthesis boxes are
    prob = np.clip(0.3 * y + rng.normal(0.3, 0.15, 300), 0, 1)
    t = choose_f1_threshold(y, prob)
    best = max(f1_score(y, prob >= c) for c in np.unique(prob))
    assert f1_score(y, prob >= t) == pytest.approx(best)
    assert choose_f1_threshold(np.zeros(5, int), np.linspace(0, 1, 5)) == 0.5

"""Findings-match retrieval: relevance by Jaccard, mAP and Recall@K against hand computations."""

from itertools import combinations

import numpy as np
import pytest

from lumbarclip.evaluation.retrieval import (
    findings_match_metrics,
    findings_relevance,
    ranked_relevance_metrics,
    retrieval_metrics,
    study_embeddings,
)
from lumbarclip.findings import Findings, LevelFindings, finding_set, jaccard


def test_finding_set_and_jaccard():
    f = Findings(levels={"L4-L5": LevelFindings("L4-L5", disc="bulge", severity="mild", thecal_sac="abutted")})
    assert finding_set(f) == {"L4-L5:bulge", "L4-L5:thecal_sac_compression"}
    assert finding_set(Findings()) == frozenset()
    assert jaccard(frozenset(), frozenset()) == 1.0  # two normal studies match
    assert jaccard(frozenset({"a", "b"}), frozenset({"b", "c"})) == pytest.approx(1 / 3)


def test_relevance_threshold():
    q = [frozenset({"a", "b"}), frozenset()]
    items = [frozenset({"a"}), frozenset({"a", "b", "c"}), frozenset(), frozenset({"c"})]
    # Jaccard row 0: 1/2, 2/3, 0, 0; row 1: 0, 0, 1, 0
    assert findings_relevance(q, items).tolist() == [[True, True, False, False], [False, False, True, False]]


def test_map_and_recall_by_hand():
    sim = np.array([[0.9, 0.1, 0.8, 0.2], [0.1, 0.2, 0.3, 0.9], [0.5, 0.4, 0.3, 0.2]])
    rel = np.array([[False, True, True, False], [False, False, True, False], [False, False, False, False]])
    out = ranked_relevance_metrics(sim, rel, ks=(1, 2))
    # query 0 ranking: 0, 2, 3, 1 -> relevant at ranks 2 and 4: AP = (1/2 + 2/4) / 2 = 0.5
    # query 1 ranking: 3, 2, 1, 0 -> relevant at rank 2: AP = 1/2; query 2 has no relevant item
    assert out["map"] == pytest.approx(0.5)
    assert out["r@1"] == 0.0 and out["r@2"] == 1.0
    assert out["n_queries"] == 2 and out["n_queries_without_match"] == 1
    assert out["chance_map"] == pytest.approx((2 / 4 + 1 / 4) / 2)
    # random top-1: P(hit) = m / n; top-2 with m=2: 1 - C(2,2)/C(4,2) = 5/6, with m=1: 1/2
    assert out["chance_r@1"] == pytest.approx((2 / 4 + 1 / 4) / 2)
    assert out["chance_r@2"] == pytest.approx((5 / 6 + 1 / 2) / 2)


def test_findings_match_both_directions():
    img = np.eye(3)[[0, 1, 2, 2]]
    txt = np.eye(3)
    sets = [frozenset({"x"}), frozenset({"y"}), frozenset()]
    out = findings_match_metrics(img, [sets[0], sets[1], sets[2], sets[2]], txt, sets, ks=(1,))
    assert out["i2t"]["map"] == 1.0 and out["i2t"]["r@1"] == 1.0
    assert out["t2i"]["map"] == 1.0 and out["t2i"]["n_queries"] == 3
    assert out["threshold"] == 0.5


def test_study_embeddings_average_a_patients_slices():
    emb = np.array([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8], [1.0, 0.0]])
    ids, study = study_embeddings(emb, np.array(["b", "b", "a", "b"]))
    assert ids.tolist() == ["a", "b"]
    np.testing.assert_allclose(study[0], [0.6, 0.8])
    np.testing.assert_allclose(study[1], np.array([2.0, 1.0]) / np.sqrt(5))
    # p's two slices each look more like another report (x, y) than like p's, which their mean finds
    img = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [0.0, 0.0, 1.0]])
    txt = np.array([[0.7, 0.7, 0.0], [0.9, 0.0, 0.43], [0.0, 0.9, 0.43], [0.0, 0.0, 1.0]])
    txt /= np.linalg.norm(txt, axis=1, keepdims=True)
    reports = np.array(["p", "x", "y", "q"])
    patients = np.array(["p", "p", "q", "q"])
    assert retrieval_metrics(img, patients, txt, reports, ks=(1,))["i2t_r@1"] == 0.5
    ids, study = study_embeddings(img, patients)
    assert retrieval_metrics(study, ids, txt, reports, ks=(1,))["i2t_r@1"] == 1.0


def test_report_sections_show_findings_match_and_per_finding_auroc():
    from lumbarclip.evaluation.predictions import Predictions
    from lumbarclip.evaluation.report import ReportInputs, render_report
    from lumbarclip.evaluation.retrieval import retrieval_metrics

    img = np.eye(3)[[0, 1, 2, 2]]
    sets = [frozenset({"x"}), frozenset({"y"}), frozenset()]
    retrieval = retrieval_metrics(img, np.array(["a", "b", "c", "c"]), np.eye(3), np.array(["a", "b", "c"]))
    retrieval["findings_match"] = findings_match_metrics(img, [sets[0], sets[1], sets[2], sets[2]], np.eye(3), sets)
    ids, study = study_embeddings(img, np.array(["a", "b", "c", "c"]))
    by_study = retrieval_metrics(study, ids, np.eye(3), np.array(["a", "b", "c"]))
    retrieval["study"] = {("n_studies" if k == "n_images" else k): v for k, v in by_study.items()}  # as evaluate writes it
    fz = {
        "per_kind": {"bulge": {"auroc": 0.912, "ci95": [0.85, 0.96], "positives": 30, "negatives": 70}},
        "macro_auroc": 0.912, "macro_kinds": ["bulge"], "min_positives": 20, "rule": "r",
    }  # fmt: skip
    predictions = {"linear_probe": Predictions([0, 1, 1, 0], [0.2, 0.7, 0.6, 0.4], ["a", "b", "c", "c"])}
    page = render_report(ReportInputs({"retrieval": retrieval, "per_finding": fz}, predictions))
    assert "Study level" in page and "study -&gt; report" in page
    assert "4 image queries" in page and "3 study queries" in page
    assert "Findings match" in page and "mAP" in page and "Jaccard of the level:kind sets &gt;= 0.5" in page
    assert "0.912" in page and "0.850-0.960" in page and ">30<" in page
    assert "Not computed (the manifest has no findings column)" in render_report(ReportInputs({}, predictions))


@pytest.mark.parametrize("k", [1, 2, 3, 5, 7])
def test_chance_recall_is_the_share_of_top_k_sets_that_hold_a_relevant_item(k):
    """The hypergeometric chance level against a count over every top-k set of 6 items."""
    relevant = np.array([[1, 0, 0, 0, 0, 0], [1, 1, 0, 0, 1, 0], [0, 0, 0, 0, 0, 1], [1, 1, 1, 1, 1, 0]], dtype=bool)
    out = ranked_relevance_metrics(np.zeros(relevant.shape), relevant, (k,))
    n = relevant.shape[1]
    sets = list(combinations(range(n), min(k, n)))
    brute = np.mean([np.mean([row[list(top)].any() for top in sets]) for row in relevant])
    assert out[f"chance_r@{k}"] == pytest.approx(brute)

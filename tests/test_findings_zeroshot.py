"""Per-finding zero-shot: prompts per (level, kind) and their scores against hand computations."""

import numpy as np
import pytest
import torch

from lumbarclip.findings import LEVEL_KINDS, LEVELS
from lumbarclip.inference import embed_texts
from lumbarclip.inference.findings import UNKNOWN_LEVEL, FindingClassifier, finding_prompts, render_prompts
from lumbarclip.models import ModelConfig, create_model
from lumbarclip.reports import split_sentences, write_synthetic_note
from lumbarclip.synth.cohort import sample_findings


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return create_model(ModelConfig(vision="test_resnet", image_size=32, embed_dim=16, text_unfrozen_layers=0)).eval()


def test_prompts_cover_every_kind_and_name_the_level():
    prompts = finding_prompts()
    assert set(prompts) == set(LEVEL_KINDS)
    for pair in prompts.values():
        assert pair["positive"] and pair["negative"]
        assert all("{level}" in p for p in pair["positive"] + pair["negative"])
    rendered = render_prompts(prompts, "L4-L5")
    assert rendered["bulge"]["positive"][0] == "disc bulge at L4-L5"
    assert render_prompts(prompts, None)["bulge"]["positive"][0] == f"disc bulge at {UNKNOWN_LEVEL}"


def test_prompts_are_not_report_sentences():
    """Written apart from the report writer: none equals a sentence of 300 written reports."""
    import random

    rng, pyrng = np.random.default_rng(0), random.Random(0)
    sentences = set()
    for i in range(300):
        for s in split_sentences(write_synthetic_note(sample_findings(rng, abnormal=i % 2 == 1), pyrng)):
            sentences.add(s.strip().rstrip(".").lower())
    from lumbarclip.inference.findings import NORMAL_PROMPTS

    for level in LEVELS:
        for pair in render_prompts(finding_prompts(), level).values():
            for p in pair["positive"] + pair["negative"]:
                assert p.lower() not in sentences
        for p in NORMAL_PROMPTS:
            assert p.format(level=level).lower() not in sentences


def test_scores_match_hand_computation(model):
    clf = FindingClassifier.build(model)
    assert clf.kinds == LEVEL_KINDS
    emb = torch.nn.functional.normalize(torch.randn(3, 16), dim=-1).numpy()
    levels = ["L4-L5", "L5-S1", None]
    got = clf.scores(emb, levels)
    scale = float(model.logit_scale.detach())
    for kind in LEVEL_KINDS:
        assert got[kind].shape == (3,)
        for i, level in enumerate(levels):
            rendered = render_prompts(finding_prompts(), level)[kind]
            cls = []
            for side in ("negative", "positive"):
                mean = embed_texts(model, rendered[side]).mean(0)
                cls.append(mean / np.linalg.norm(mean))
            logits = scale * np.array([emb[i] @ cls[0], emb[i] @ cls[1]])
            expected = np.exp(logits[1]) / np.exp(logits).sum()
            assert got[kind][i] == pytest.approx(expected, rel=1e-4, abs=1e-6)
    with pytest.raises(ValueError, match="levels"):
        clf.scores(emb, levels[:2])


def _record(pid: str, level: str, findings):
    from pathlib import Path

    from lumbarclip.data.manifest import ImageRecord

    return ImageRecord(Path(f"{pid}_{level}.png"), pid, "test", int(findings.abnormal), "r", "T1", level, findings.to_json())


def test_per_finding_auroc_against_scipy():
    from scipy.stats import mannwhitneyu

    from lumbarclip.evaluation.findings import PROMPTS_RULE, level_truth, per_finding_scores
    from lumbarclip.findings import Findings, LevelFindings

    rng = np.random.default_rng(0)
    records = []
    for i in range(40):
        lf = LevelFindings("L4-L5", disc="bulge", severity="mild") if i % 3 == 0 else LevelFindings("L4-L5")
        f = Findings(levels={"L4-L5": lf})
        records += [_record(f"p{i}", "L4-L5", f), _record(f"p{i}", "L5-S1", f)]  # L5-S1 is normal
    records.append(_record("nolevel", "", Findings()))
    truth, usable = level_truth(records)
    assert usable.sum() == 80 and truth[:, LEVEL_KINDS.index("bulge")].sum() == 14
    scores = {k: rng.random(len(records)) for k in LEVEL_KINDS}
    out = per_finding_scores(scores, records, n_resamples=200, seed=0, min_positives=10)
    y = truth[usable, LEVEL_KINDS.index("bulge")]
    s = scores["bulge"][usable]
    u = mannwhitneyu(s[y == 1], s[y == 0]).statistic  # AUROC = U / (n1 n0)
    bulge = out["per_kind"]["bulge"]
    assert bulge["auroc"] == pytest.approx(u / (14 * 66))
    assert bulge["positives"] == 14 and bulge["negatives"] == 66
    assert bulge["ci95"][0] < bulge["ci95"][1]
    assert out["per_kind"]["extrusion"]["auroc"] is None  # no positives: undefined, not 0.5
    assert out["macro_kinds"] == ["bulge"] and out["macro_auroc"] == bulge["auroc"]
    assert out["n_images_without_level_or_findings"] == 1
    assert out["rule"] == PROMPTS_RULE  # scores of another scorer say how they were made
    assert per_finding_scores(scores, records, 20, 0, rule="the head")["rule"] == "the head"


def test_integrity_flags_a_prompt_equal_to_a_training_sentence():
    from lumbarclip.evaluation.integrity import prompt_overlap

    reports = ["LSS MRI : Disc bulge at L4-L5. Desiccated L5-S1 disc."]
    assert prompt_overlap(["disc bulge at L4-L5", "disc bulge at L5-S1"], reports) == ["disc bulge at L4-L5"]
    assert prompt_overlap(["desiccated  l5-s1 disc."], reports) == ["desiccated  l5-s1 disc."]
    assert prompt_overlap(["disc bulge"], reports) == []  # a part of a sentence is not flagged


def _gate_records(n_patients: int, bulge_every: int = 2):
    from lumbarclip.findings import Findings, LevelFindings

    records = []
    for i in range(n_patients):
        lf = LevelFindings("L4-L5", disc="bulge", severity="mild") if i % bulge_every == 0 else LevelFindings("L4-L5")
        records.append(_record(f"p{i}", "L4-L5", Findings(levels={"L4-L5": lf})))
    return records


def test_valid_gate_shows_only_kinds_above_the_bar_with_enough_positives():
    from sklearn.metrics import roc_auc_score

    from lumbarclip.evaluation.findings import level_truth, valid_gate

    records = _gate_records(40)
    truth, _ = level_truth(records)
    y = truth[:, LEVEL_KINDS.index("bulge")]
    rng = np.random.default_rng(1)
    scores = {k: rng.random(len(records)) for k in LEVEL_KINDS}
    scores["bulge"] = y + rng.normal(0, 0.3, len(y))  # separable enough
    gate = valid_gate(scores, records, min_auroc=0.8, min_positives=10)
    assert gate["valid_auroc"]["bulge"] == pytest.approx(roc_auc_score(y, scores["bulge"]))
    assert gate["validated"] == ["bulge"] and gate["valid_positives"]["bulge"] == 20
    assert gate["valid_auroc"]["extrusion"] is None  # no positive: never validated
    assert set(gate["not_validated"]) == set(LEVEL_KINDS) - {"bulge"}
    few = valid_gate(scores, records, min_auroc=0.8, min_positives=21)  # 20 positives: too few to trust
    assert few["validated"] == [] and few["valid_auroc"]["bulge"] is None


def test_pair_cosine_is_the_cosine_of_the_two_ensembles(model):
    classifier = FindingClassifier.build(model)
    cos = classifier.pair_cosine(["L4-L5"])
    k = classifier.kinds.index("bulge")
    neg, pos = classifier.classes["L4-L5"][k]
    assert cos["bulge"] == pytest.approx(float(torch.nn.functional.cosine_similarity(neg, pos, dim=0)), abs=1e-6)
    both = classifier.pair_cosine(["L4-L5", "L5-S1"])["bulge"]
    assert both == pytest.approx((cos["bulge"] + classifier.pair_cosine(["L5-S1"])["bulge"]) / 2, abs=1e-6)


def test_pixel_ceiling_learns_a_finding_drawn_in_the_pixels():
    """A tiny tower on 16 px images where 'bulge' is a bright square: the ceiling sees it."""
    from lumbarclip.evaluation.findings import level_truth, pixel_ceiling
    from lumbarclip.evaluation.supervised import SupervisedConfig
    from lumbarclip.models import create_vision_tower

    torch.manual_seed(0)
    splits = []
    for n in (80, 40, 40):
        records = _gate_records(n)
        truth, _ = level_truth(records)
        y = torch.as_tensor(truth[:, LEVEL_KINDS.index("bulge")], dtype=torch.float32)
        images = torch.randn(n, 1, 16, 16) * 0.3
        images[:, :, 4:12, 4:12] += 2.0 * y[:, None, None, None]
        splits.append((images, records))
    tower = create_vision_tower("test_resnet", img_size=16)
    out = pixel_ceiling(*splits, tower, SupervisedConfig(epochs=6, batch_size=16, head_lr=1e-2, tower_lr=1e-2), seed=0)
    assert out["per_kind"]["bulge"]["auroc"] > 0.95 and out["per_kind"]["bulge"]["positives"] == 20
    assert out["macro_kinds"] == ["bulge"] and out["macro_auroc"] == out["per_kind"]["bulge"]["auroc"]
    assert "extrusion" not in out["per_kind"]  # never positive in train: not trained, not scored


def test_normal_contrast_matches_hand_computation(model):
    """contrast="normal": the positive ensemble against the shared "normal at this level" one."""
    from lumbarclip.inference.findings import NORMAL_PROMPTS

    clf = FindingClassifier.build(model, contrast="normal")
    emb = torch.nn.functional.normalize(torch.randn(2, 16), dim=-1).numpy()
    got = clf.scores(emb, ["L3-L4", None])
    scale = float(model.logit_scale.detach())
    for i, level in enumerate(["L3-L4", None]):
        normal = embed_texts(model, [p.format(level=level or UNKNOWN_LEVEL) for p in NORMAL_PROMPTS]).mean(0)
        normal /= np.linalg.norm(normal)
        for kind in ("bulge", "desiccation"):
            pos = embed_texts(model, render_prompts(finding_prompts(), level)[kind]["positive"]).mean(0)
            pos /= np.linalg.norm(pos)
            logits = scale * np.array([emb[i] @ normal, emb[i] @ pos])
            assert got[kind][i] == pytest.approx(np.exp(logits[1]) / np.exp(logits).sum(), rel=1e-4, abs=1e-6)
    negative = clf.with_contrast("negative").scores(emb, ["L3-L4", None])
    assert np.allclose(negative["bulge"], FindingClassifier.build(model).scores(emb, ["L3-L4", None])["bulge"])
    with pytest.raises(ValueError, match="contrast"):
        clf.with_contrast("opposite")

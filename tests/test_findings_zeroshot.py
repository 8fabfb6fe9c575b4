"""Per-finding zero-shot: prompts per (level, kind) and their scores against hand computations."""

import numpy as np
import pytest
import torch

from lumbarclip.findings import LEVEL_KINDS, LEVELS
from lumbarclip.inference import embed_texts
from lumbarclip.inference.findings import UNKNOWN_LEVEL, FindingClassifier, finding_prompts, render_prompts
from lumbarclip.models import ModelConfig, create_model
from lumbarclip.reports import split_sentences, write_report
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
        for s in split_sentences(write_report(sample_findings(rng, abnormal=i % 2 == 1), pyrng)):
            sentences.add(s.strip().rstrip(".").lower())
    for level in LEVELS:
        for pair in render_prompts(finding_prompts(), level).values():
            for p in pair["positive"] + pair["negative"]:
                assert p.lower() not in sentences


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

    from lumbarclip.evaluation.findings import level_truth, per_finding_zero_shot
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
    out = per_finding_zero_shot(scores, records, n_resamples=200, seed=0, min_positives=10)
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


def test_integrity_flags_a_prompt_equal_to_a_training_sentence():
    from lumbarclip.evaluation.integrity import prompt_overlap

    reports = ["LSS MRI : Disc bulge at L4-L5. Desiccated L5-S1 disc."]
    assert prompt_overlap(["disc bulge at L4-L5", "disc bulge at L5-S1"], reports) == ["disc bulge at L4-L5"]
    assert prompt_overlap(["desiccated  l5-s1 disc."], reports) == ["desiccated  l5-s1 disc."]
    assert prompt_overlap(["disc bulge"], reports) == []  # a part of a sentence is not flagged

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

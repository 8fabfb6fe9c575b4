"""The MedKLIP-style finding head: learns kinds from spatial features and looks where they are."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lumbarclip.bundle import load_model
from lumbarclip.errors import InputError
from lumbarclip.findings import LEVEL_KINDS
from lumbarclip.models.finding_head import FindingHead
from lumbarclip.synth.cohort import CohortConfig, make_cohort
from lumbarclip.training import load_config, train


def test_each_query_learns_its_kind_and_attends_to_where_it_is():
    """Kind k is present when a marker sits in cell k of a 3x3 feature map; after training the
    head separates presence, and each query's attention peaks on its own cell when present."""
    torch.manual_seed(0)
    kinds, channels = 3, 8
    head = FindingHead(channels, kinds, dim=16)
    opt = torch.optim.Adam(head.parameters(), lr=1e-2)

    def batch(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        present = (torch.rand(n, kinds) < 0.5).float()
        fmap = 0.3 * torch.randn(n, channels, 3, 3)
        for k in range(kinds):
            fmap[:, 0, k // 3, k % 3] += 3.0 * present[:, k]  # the marker channel, in cell k
        return fmap, present

    for _ in range(300):
        fmap, present = batch(64)
        logits, _ = head(fmap)
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, present)
        opt.zero_grad()
        loss.backward()
        opt.step()
    fmap, present = batch(256)
    with torch.no_grad():
        logits, attention = head(fmap)
    assert attention.shape == (256, kinds, 3, 3)
    assert torch.allclose(attention.sum((-1, -2)), torch.ones(256, kinds), atol=1e-5)
    accuracy = ((logits > 0).float() == present).float().mean()
    assert accuracy > 0.95
    for k in range(kinds):
        rows = present[:, k] == 1
        peak = attention[rows, k].flatten(1).argmax(1)
        assert (peak == k).float().mean() > 0.9


@pytest.mark.slow
def test_finding_head_trains_with_sentence_targets_only(tmp_path):
    cohort = make_cohort(tmp_path / "cohort", CohortConfig(n_patients=12, size=32), progress=False)
    tiny = [
        "model.vision=resnet18", "model.image_size=32", "model.embed_dim=16", "data.batch_size=8",
        "trainer.max_epochs=1", "trainer.precision=32-true", "model.finding_head=true",
    ]  # fmt: skip
    binary = ["loss.labels=binary", "loss.kernel=dot"]
    with pytest.raises(InputError, match="finding_head=true needs loss.labels=sentence"):
        train(load_config("cpu-demo", tiny + binary), cohort, tmp_path / "refused", progress=False)
    sentence = ["loss.labels=sentence", "loss.kernel=agreement", "data.sentences=relevant"]
    run = train(load_config("cpu-demo", tiny + sentence), cohort, tmp_path / "run", progress=False)
    model = load_model(run / "model")
    emb, logits, attention = model.encode_image_and_findings(torch.zeros(2, 1, 32, 32))
    assert emb.shape == (2, 16) and logits.shape == (2, len(LEVEL_KINDS)) and attention.shape[:2] == (2, len(LEVEL_KINDS))
    assert torch.allclose(emb, model.encode_image(torch.zeros(2, 1, 32, 32)), atol=1e-5)
    assert np.isfinite(logits.detach().numpy()).all()


def test_sentence_labels_need_the_agreement_kernel():
    with pytest.raises(InputError, match="agreement"):
        load_config("cpu-demo", ["loss.labels=sentence", "loss.kernel=dot"])
    with pytest.raises(InputError, match="agreement"):
        load_config("cpu-demo", ["loss.labels=binary", "loss.kernel=agreement"])


def test_the_scorer_with_the_better_valid_macro_auroc_gates_the_findings():
    from lumbarclip.evaluation.evaluate import _choose_scorer

    prompts = {"valid_auroc": {"bulge": 0.7, "desiccation": 0.6}, "validated": [], "contrast": "negative"}
    head = {"valid_auroc": {"bulge": 0.9, "desiccation": 0.85}, "validated": ["bulge", "desiccation"]}
    chosen = dict(prompts)
    _choose_scorer(chosen, head)
    assert chosen["scorer"] == "head" and chosen["validated"] == ["bulge", "desiccation"]
    assert chosen["contrast"] == "negative" and chosen["valid_macro_auroc_by_scorer"]["head"] == pytest.approx(0.875)
    kept = dict(prompts, valid_auroc={"bulge": 0.95, "desiccation": 0.9})
    _choose_scorer(kept, head)
    assert kept["scorer"] == "prompts" and kept["validated"] == []

"""Speed levers keep the maths: fused AdamW (with clipping under bf16), last-layer-only text
outputs, channels_last vision towers. Their timings live in bench/vs_open_clip.py."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from lumbarclip.bundle import load_model
from lumbarclip.models import LumbarCLIP, ModelConfig, create_model
from lumbarclip.reports import class_prompts
from lumbarclip.synth.cohort import CohortConfig, make_cohort
from lumbarclip.training import load_config, train
from lumbarclip.training.module import CLIPModule

TINY = ["model.vision=resnet18", "model.image_size=32", "model.embed_dim=16", "data.batch_size=8", "optim.lr=1e-3", "optim.warmup_fraction=0"]
TEXTS = ["Diffuse disc bulge at L4/L5.", "No significant abnormality.", "Mild facet hypertrophy at L5/S1 on the left side."]


@pytest.fixture(scope="module")
def model() -> LumbarCLIP:
    return create_model(ModelConfig(vision="resnet18", image_size=32, embed_dim=16, text_unfrozen_layers=1))


def _module(model: LumbarCLIP, precision: str, *overrides: str) -> CLIPModule:
    module = CLIPModule(model, load_config("cpu-demo", [*TINY, *overrides]), class_prompts())
    module.trainer = SimpleNamespace(precision=precision)
    module.total_steps = 10
    return module


@pytest.mark.parametrize(
    ("setting", "precision", "fused", "foreach"),
    [("fused", "bf16-mixed", True, False), ("fused", "32-true", True, False), ("fused", "16-mixed", False, True),
     ("foreach", "bf16-mixed", False, True), ("for-loop", "32-true", False, False)],
)
def test_adamw_kernel_follows_the_config(model, setting, precision, fused, foreach):
    optimizer = _module(model, precision, f"optim.implementation={setting}").configure_optimizers()["optimizer"]
    assert (bool(optimizer.defaults["fused"]), bool(optimizer.defaults["foreach"])) == (fused, foreach)


def test_unknown_adamw_kernel_is_refused():
    with pytest.raises(Exception, match="optim.implementation"):
        load_config("cpu-demo", ["optim.implementation=turbo"])


def test_fused_adamw_clips_the_global_norm(model):
    module = _module(model, "bf16-mixed")
    optimizer = module.configure_optimizers()["optimizer"]
    params = [p for p in module.parameters() if p.requires_grad]
    for p in params:
        p.grad = torch.randn_like(p) * 10
    module.configure_gradient_clipping(optimizer, gradient_clip_val=1.0)
    norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(p.grad) for p in params]))
    assert norm == pytest.approx(1.0, rel=1e-4)
    model.zero_grad(set_to_none=True)


def test_fused_and_for_loop_adamw_take_the_same_steps(model):
    state = {k: v.clone() for k, v in model.state_dict().items()}
    results = []
    for setting in ("fused", "for-loop"):
        model.load_state_dict(state)
        optimizer = _module(model, "32-true", f"optim.implementation={setting}").configure_optimizers()["optimizer"]
        generator = torch.Generator().manual_seed(1)
        for _ in range(3):
            for p in model.parameters():
                if p.requires_grad:
                    p.grad = torch.randn(p.shape, generator=generator)
            optimizer.step()
        results.append({k: v.clone() for k, v in model.state_dict().items()})
    model.load_state_dict(state)
    assert all(torch.allclose(results[0][k], results[1][k], atol=1e-6) for k in state)
    assert not torch.equal(results[0]["visual.conv1.weight"], state["visual.conv1.weight"])


def test_mean_pooling_reads_the_last_layer_only(model, monkeypatch):
    calls = []
    forward = model.text.forward
    monkeypatch.setattr(model.text, "forward", lambda *a, **k: calls.append(k) or forward(*a, **k))
    with torch.no_grad():
        pooled = model._pool_text(TEXTS)
        tokens = model.tokenize(TEXTS)
        last = forward(**tokens).last_hidden_state
    mask = tokens["attention_mask"].unsqueeze(-1).float()
    assert not calls[0].get("output_hidden_states")
    assert tokens["input_ids"].shape[1] < model.config.max_tokens  # padded to the longest, not to 77
    torch.testing.assert_close(pooled, (last * mask).sum(1) / mask.sum(1))


def test_layer_average_pooling_still_gets_every_layer(model, monkeypatch):
    monkeypatch.setattr(model.config, "text_pooling", "layer_avg")
    with torch.no_grad():
        pooled = model._pool_text(TEXTS)
        tokens = model.tokenize(TEXTS)
        hidden = model.text(**tokens, output_hidden_states=True).hidden_states
    mask = tokens["attention_mask"].unsqueeze(-1).float()
    expected = (((hidden[1] + hidden[2] + hidden[-1]) / 3) * mask).sum(1) / mask.sum(1)
    torch.testing.assert_close(pooled, expected)


@pytest.mark.slow
def test_bf16_channels_last_fused_training_runs_and_saves(tmp_path):
    cohort = make_cohort(tmp_path / "cohort", CohortConfig(n_patients=12, size=32), progress=False, workers=1)
    config = load_config("cpu-demo", [*TINY, "trainer.max_epochs=1", "trainer.precision=bf16-mixed",
                                      "trainer.channels_last=true", "trainer.monitor="])
    run = train(config, cohort, tmp_path / "run", progress=False)
    saved = load_model(run / "model")
    fresh = create_model(config.model)
    weight = saved.visual.conv1.weight
    assert weight.is_contiguous() and torch.isfinite(weight).all()
    assert not torch.equal(weight, fresh.visual.conv1.weight)

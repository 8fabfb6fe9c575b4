import csv
import json

import pytest
import torch

from lumbarclip.bundle import load_model
from lumbarclip.data.transforms import PreprocessSpec
from lumbarclip.cli import main
from lumbarclip.errors import InputError
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


@pytest.mark.slow
def test_train_writes_a_loadable_run(cohort, tmp_path):
    run = train(load_config("cpu-demo", TINY), cohort, tmp_path / "run", progress=False)
    summary = json.loads((run / "train_summary.json").read_text())
    assert summary["epochs"] == 2 and summary["train_images"] > 0 and summary["skipped_rows"] == 0
    assert 0.0 <= summary["best_value"] <= 1.0
    rows = list(csv.DictReader((run / "logs" / "metrics.csv").open()))
    assert any(r.get("train/loss") for r in rows) and any(r.get("val/zero_shot_balanced_accuracy") for r in rows)
    model = load_model(run / "model")
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


def test_unknown_monitor_is_refused_before_training(cohort, tmp_path):
    with pytest.raises(InputError, match="not a logged metric"):
        train(load_config("cpu-demo", [*TINY, "trainer.monitor=val/auc"]), cohort, tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()
    with pytest.raises(InputError, match="monitor_mode"):
        train(load_config("cpu-demo", [*TINY, "trainer.monitor_mode=up"]), cohort, tmp_path / "run", progress=False)


@pytest.mark.parametrize(
    "monitor,mode,values,best",
    [
        ("val/loss", "", [2.0, 1.0, 1.5], 1),  # a loss: lowest
        ("val/zero_shot_balanced_accuracy", "", [0.6, 0.9, 0.7], 1),  # an accuracy: highest
        ("val/loss", "max", [2.0, 1.0, 1.5], 0),  # the explicit setting wins
    ],
)
def test_export_best_follows_the_metric_direction(monitor, mode, values, best, tmp_path):
    from types import SimpleNamespace

    from lumbarclip.training.trainer import ExportBest, monitor_mode

    config = load_config("cpu-demo", [f"trainer.monitor={monitor}", f"trainer.monitor_mode={mode}"])
    export = ExportBest(tmp_path / "model", monitor, monitor_mode(config), PreprocessSpec.of_model(32))
    for epoch, value in enumerate(values):
        trainer = SimpleNamespace(
            sanity_checking=False, callback_metrics={monitor: torch.tensor(value)}, current_epoch=epoch, is_global_zero=False
        )
        export.on_validation_end(trainer, None)
    assert export.best_epoch == best and export.best == pytest.approx(values[best])
    restored = ExportBest(tmp_path / "model", monitor, "min", PreprocessSpec.of_model(32))
    restored.load_state_dict(export.state_dict())  # carried by the checkpoints across a resume
    assert (restored.best, restored.best_epoch) == (export.best, export.best_epoch)


def test_cli_internal_errors_exit_1_and_input_errors_exit_2(cohort, tmp_path, capsys, monkeypatch):
    import lumbarclip.training.trainer as trainer_module

    def diverged(*args, **kwargs):
        raise RuntimeError("loss is NaN at step 3")

    monkeypatch.setattr(trainer_module, "train", diverged)
    assert main(["train", "--data", str(cohort), "--out", str(tmp_path / "r")]) == 1
    err = capsys.readouterr().err
    assert "internal error (RuntimeError: loss is NaN at step 3)" in err and "--debug" in err
    with pytest.raises(RuntimeError, match="NaN"):
        main(["--debug", "train", "--data", str(cohort), "--out", str(tmp_path / "r")])
    assert main(["train", "--out", str(tmp_path / "r")]) == 2  # bad usage stays the user's
    assert "--data and --out are required" in capsys.readouterr().err


def test_frozen_text_cache_follows_pooling_and_weights():
    from lumbarclip.models import ModelConfig, create_model

    model = create_model(ModelConfig(image_size=32, embed_dim=8, text_unfrozen_layers=0)).eval()
    text = ["Lt paracentral protrusion."]

    def uncached() -> torch.Tensor:
        with torch.no_grad():
            return torch.nn.functional.normalize(model.text_head(model._pool_text(text)), dim=-1)

    with torch.no_grad():
        mean = model.encode_text(text)
        assert torch.allclose(mean, uncached(), atol=1e-6)
        model.config.text_pooling = "cls"  # a change of pooling must not serve the mean vectors
        assert torch.allclose(model.encode_text(text), uncached(), atol=1e-6)
        assert not torch.allclose(model.encode_text(text), mean, atol=1e-3)
        model.config.text_pooling = "mean"
        before = model.encode_text(text)
        next(model.text.parameters()).mul_(1.5)  # new weights in place (e.g. loaded into the tower)
        after = model.encode_text(text)
        assert torch.allclose(after, uncached(), atol=1e-6) and not torch.allclose(after, before, atol=1e-4)

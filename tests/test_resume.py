"""A run killed with SIGKILL (mid-epoch, right after the epoch-end checkpoint, or during
validation) and resumed with `lumbarclip train --resume RUN` ends with the weights, BatchNorm
statistics, exported model and metrics log of the same run never interrupted."""

import csv
import json
import os
import signal
import subprocess
import sys
import textwrap

import pytest
import torch
from safetensors.torch import load_file

from lumbarclip.cli import main
from lumbarclip.synth.cohort import CohortConfig, make_cohort
from lumbarclip.training import load_config, train

TINY = [
    "model.vision=test_resnet",
    "model.image_size=32",
    "model.embed_dim=16",
    "model.vision_kwargs={drop_rate: 0.2}",  # dropout: training draws from the global random stream
    "data.batch_size=8",
    "trainer.max_epochs=3",
    # bf16 as the cpu-demo preset trains: text vectors computed in a batch differ there by ~1e-2
    # with the batch's padding, so a resume that rebuilt its text cache differently would show
    "trainer.precision=bf16-mixed",
    "trainer.checkpoint_every_n_steps=2",
    "optim.lr=1e-3",
]
STEPS_PER_EPOCH = 6  # 48 train images / 8

# Killed at the given point (after `save_checkpoint` returns, so "right after the epoch-end
# checkpoint" is exact); resumed below through the CLI, as users do.
KILLED_RUN = """
import os, signal, sys
import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback
from lumbarclip.training import load_config
from lumbarclip.training.trainer import train

def kill():
    os.kill(os.getpid(), signal.SIGKILL)

class Kill(Callback):
    def on_train_batch_end(self, trainer, *args):
        if {where!r} == "mid-epoch" and trainer.global_step == {step}:
            kill()

    def on_validation_batch_end(self, trainer, *args):
        if {where!r} == "validation" and trainer.current_epoch == 1 and not trainer.sanity_checking:
            kill()

save = pl.Trainer.save_checkpoint

def save_then_kill(trainer, filepath, *args, **kwargs):
    save(trainer, filepath, *args, **kwargs)
    if {where!r} == "epoch-end" and os.path.basename(str(filepath)) == "epoch.ckpt":
        kill()

pl.Trainer.save_checkpoint = save_then_kill
train(load_config("cpu-demo", {overrides!r}), sys.argv[1], sys.argv[2], progress=False, callbacks=[Kill()])
"""


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}


def _final_state(run) -> dict[str, torch.Tensor]:
    ckpt = torch.load(run / "checkpoints" / "epoch.ckpt", map_location="cpu", weights_only=True)
    return ckpt["state_dict"]


def _metrics(run) -> list[tuple[str, str, dict[str, float]]]:
    """(epoch, step, logged values) of each row of `RUN/logs/metrics.csv`."""
    with (run / "logs" / "metrics.csv").open(newline="") as f:
        return [(r.pop("epoch"), r.pop("step"), {k: float(v) for k, v in r.items() if v}) for r in csv.DictReader(f)]


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    return make_cohort(tmp_path_factory.mktemp("cohort"), CohortConfig(n_patients=12, size=32), progress=False)


@pytest.fixture(scope="module")
def reference(cohort, tmp_path_factory):
    return train(load_config("cpu-demo", TINY), cohort, tmp_path_factory.mktemp("ref") / "run", progress=False)


@pytest.mark.slow
@pytest.mark.parametrize(
    "where,resumed_from,global_step,epoch",
    [
        ("mid-epoch", "step.ckpt", 9 - 1, 1),  # killed at step 9 of 18; step checkpoint at 8
        ("epoch-end", "epoch.ckpt", STEPS_PER_EPOCH, 0),  # killed as epoch 0's checkpoint is on disk
        # killed validating epoch 1: no step checkpoint at an epoch's last batch (step 12; Lightning
        # would skip the validation on resume), so the newest is the one at step 10
        ("validation", "step.ckpt", 2 * STEPS_PER_EPOCH - 2, 1),
    ],
)
def test_killed_run_resumes_to_the_uninterrupted_weights(
    cohort, reference, tmp_path, where, resumed_from, global_step, epoch
):
    run = tmp_path / "killed"
    script = textwrap.dedent(KILLED_RUN.format(where=where, step=9, overrides=TINY))
    killed = subprocess.run([sys.executable, "-c", script, str(cohort), str(run)], env=_env(), capture_output=True)
    assert killed.returncode == -signal.SIGKILL, killed.stderr.decode()[-2000:]
    assert not (run / "train_summary.json").exists()
    ckpt = torch.load(run / "checkpoints" / resumed_from, map_location="cpu", weights_only=True)
    assert (ckpt["global_step"], ckpt["epoch"]) == (global_step, epoch)

    resumed = subprocess.run(
        [sys.executable, "-m", "lumbarclip.cli", "train", "--resume", str(run), "--no-progress"],
        env=_env(),
        capture_output=True,
    )
    assert resumed.returncode == 0, resumed.stderr.decode()[-2000:]
    summary = json.loads((run / "train_summary.json").read_text())
    assert summary["resumed_from"] == f"checkpoints/{resumed_from}" and summary["epochs"] == 3

    ref_w, res_w = _final_state(reference), _final_state(run)
    assert ref_w.keys() == res_w.keys()
    assert any(k.endswith("running_var") for k in ref_w) and any(k.endswith("num_batches_tracked") for k in ref_w)
    worst = max((ref_w[k].double() - res_w[k].double()).abs().max().item() for k in ref_w)
    assert worst <= 1e-6, worst  # every parameter and BatchNorm buffer
    # the exported best model too: ExportBest's best value survived the kill
    ref_m, res_m = load_file(reference / "model" / "model.safetensors"), load_file(run / "model" / "model.safetensors")
    assert max((ref_m[k] - res_m[k]).abs().max().item() for k in ref_m) <= 1e-6
    assert json.loads((reference / "train_summary.json").read_text())["best_epoch"] == summary["best_epoch"]
    # the log holds every row once: those before the checkpoint kept, the later ones logged again
    ref_log, res_log = _metrics(reference), _metrics(run)
    assert [row[:2] + (sorted(row[2]),) for row in res_log] == [row[:2] + (sorted(row[2]),) for row in ref_log]
    assert all(res[2] == pytest.approx(ref[2], rel=1e-5) for ref, res in zip(ref_log, res_log))


def test_frozen_text_vectors_do_not_depend_on_their_batch():
    """A resumed run refills the text cache from other batches than the run it resumes: each
    sentence's vector must be the same whatever it was first batched with, and under autocast."""
    from lumbarclip.models import ModelConfig, create_model

    short, long = "Normal.", "Broad-based disc bulge at L4-L5 with moderate bilateral foraminal narrowing."
    alone = create_model(ModelConfig(image_size=32, embed_dim=8, text_unfrozen_layers=0)).eval()
    together = create_model(ModelConfig(image_size=32, embed_dim=8, text_unfrozen_layers=0)).eval()
    together.load_state_dict(alone.state_dict())
    with torch.no_grad():
        alone.encode_text([short])
        with torch.autocast("cpu", dtype=torch.bfloat16):
            together.encode_text([long, short])
    assert torch.equal(alone._pooled_cache[short], together._pooled_cache[short])


def test_resume_refuses_extra_arguments_and_non_runs(cohort, tmp_path, capsys):
    assert main(["train", "--resume", str(tmp_path), "--data", str(cohort)]) == 2
    assert "--resume takes the run's own config" in capsys.readouterr().err
    assert main(["train", "--resume", str(tmp_path)]) == 2
    assert "not a run folder" in capsys.readouterr().err

"""A run killed with SIGKILL mid-epoch and resumed with `lumbarclip train --resume RUN` ends
with the weights of the same run never interrupted."""

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

pytestmark = pytest.mark.slow

TINY = [
    "model.vision=test_resnet",
    "model.image_size=32",
    "model.embed_dim=16",
    "data.batch_size=8",
    "trainer.max_epochs=3",
    "trainer.precision=32-true",
    "trainer.checkpoint_every_n_steps=2",
    "optim.lr=1e-3",
]
KILL_AT_STEP = 9  # 6 steps an epoch (48 train images / 8): killed in epoch 1, last checkpoint at step 8

KILLED_RUN = """
import os, signal, sys
from lightning.pytorch.callbacks import Callback
from lumbarclip.training import load_config
from lumbarclip.training.trainer import train

class Kill(Callback):
    def on_train_batch_end(self, trainer, *args):
        if trainer.global_step == {step}:
            os.kill(os.getpid(), signal.SIGKILL)

train(load_config("cpu-demo", {overrides!r}), sys.argv[1], sys.argv[2], progress=False, callbacks=[Kill()])
"""


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}


def _final_weights(run) -> dict[str, torch.Tensor]:
    ckpt = torch.load(run / "checkpoints" / "epoch.ckpt", map_location="cpu", weights_only=True)
    return ckpt["state_dict"]


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    return make_cohort(tmp_path_factory.mktemp("cohort"), CohortConfig(n_patients=12, size=32), progress=False)


def test_killed_run_resumes_to_the_uninterrupted_weights(cohort, tmp_path):
    reference = train(load_config("cpu-demo", TINY), cohort, tmp_path / "ref", progress=False)

    run = tmp_path / "killed"
    script = textwrap.dedent(KILLED_RUN.format(step=KILL_AT_STEP, overrides=TINY))
    killed = subprocess.run([sys.executable, "-c", script, str(cohort), str(run)], env=_env(), capture_output=True)
    assert killed.returncode == -signal.SIGKILL, killed.stderr.decode()[-2000:]
    assert not (run / "model").exists() or not (run / "train_summary.json").exists()
    step_ckpt = torch.load(run / "checkpoints" / "step.ckpt", map_location="cpu", weights_only=True)
    assert step_ckpt["global_step"] == KILL_AT_STEP - 1 and step_ckpt["epoch"] == 1  # mid-epoch

    resumed = subprocess.run(
        [sys.executable, "-m", "lumbarclip.cli", "train", "--resume", str(run), "--no-progress"],
        env=_env(),
        capture_output=True,
    )
    assert resumed.returncode == 0, resumed.stderr.decode()[-2000:]
    summary = json.loads((run / "train_summary.json").read_text())
    assert summary["resumed_from"] == "checkpoints/step.ckpt" and summary["epochs"] == 3

    ref_w, res_w = _final_weights(reference), _final_weights(run)
    assert ref_w.keys() == res_w.keys()
    # float32 CPU kernels may differ in the last bit between processes (BatchNorm running
    # variances of ~2 differ by 1-2 ulp): 1e-6 relative to max(1, |w|)
    worst = max(((ref_w[k].double() - res_w[k].double()).abs() / ref_w[k].double().abs().clamp(min=1)).max().item()
                for k in ref_w)
    assert worst <= 1e-6, worst
    # the exported best model too: ExportBest's best value survived the kill
    ref_m, res_m = load_file(reference / "model" / "model.safetensors"), load_file(run / "model" / "model.safetensors")
    assert max((ref_m[k] - res_m[k]).abs().max().item() for k in ref_m) <= 1e-6
    assert json.loads((reference / "train_summary.json").read_text())["best_epoch"] == summary["best_epoch"]


def test_resume_refuses_extra_arguments_and_non_runs(cohort, tmp_path, capsys):
    assert main(["train", "--resume", str(tmp_path), "--data", str(cohort)]) == 2
    assert "--resume takes the run's own config" in capsys.readouterr().err
    assert main(["train", "--resume", str(tmp_path)]) == 2
    assert "not a run folder" in capsys.readouterr().err

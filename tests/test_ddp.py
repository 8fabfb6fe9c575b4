"""Two CPU processes (Lightning DDP over gloo) at batch B/2 each train the model that one
process trains at batch B: same loss at every step, same weights, and the validation metric
computed on the whole valid split (not one rank's half)."""

import csv
import json
import os
import subprocess
import sys

import pytest
import torch

from lumbarclip.synth.cohort import CohortConfig, make_cohort

pytestmark = pytest.mark.slow

# A ViT (LayerNorm, no dropout): BatchNorm's per-process batch statistics would differ from
# one process's by design (trainer.sync_batchnorm=true is the fix on GPUs).
TINY = [
    "model.vision=test_vit",
    "model.image_size=32",
    "model.embed_dim=16",
    "trainer.max_epochs=2",
    "trainer.precision=32-true",
    "trainer.accelerator=cpu",
    "trainer.log_every_n_steps=1",
    "trainer.checkpoint_every_n_steps=0",
    "optim.lr=1e-3",
]


def _train(manifest, out, batch, processes):
    extra = ["trainer.strategy=ddp", f"trainer.devices={processes}"] if processes > 1 else ["trainer.devices=1"]
    cmd = [sys.executable, "-m", "lumbarclip.cli", "train", "--data", str(manifest), "--out", str(out), "--no-progress"]
    for override in [*TINY, f"data.batch_size={batch}", *extra]:
        cmd += ["--set", override]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(cmd, env=env, capture_output=True, timeout=900)
    assert done.returncode == 0, done.stderr.decode()[-3000:]
    rows = list(csv.DictReader((out / "logs" / "metrics.csv").open()))
    losses = {int(r["step"]): float(r["train/loss"]) for r in rows if r.get("train/loss")}
    val = [float(r["val/zero_shot_balanced_accuracy"]) for r in rows if r.get("val/zero_shot_balanced_accuracy")]
    weights = torch.load(out / "checkpoints" / "epoch.ckpt", map_location="cpu", weights_only=True)["state_dict"]
    return losses, val, weights, json.loads((out / "train_summary.json").read_text())


def test_two_processes_at_half_batch_train_the_one_process_model(tmp_path):
    manifest = make_cohort(tmp_path / "cohort", CohortConfig(n_patients=12, size=32), progress=False)
    one_loss, one_val, one_w, one_summary = _train(manifest, tmp_path / "one", batch=8, processes=1)
    two_loss, two_val, two_w, two_summary = _train(manifest, tmp_path / "two", batch=4, processes=2)

    assert (one_summary["processes"], two_summary["processes"]) == (1, 2)
    assert len(one_loss) == 12 and one_loss.keys() == two_loss.keys()  # 6 global batches of 8 an epoch
    assert max(abs(one_loss[s] - two_loss[s]) for s in one_loss) <= 1e-5
    assert len(one_val) == 2 and one_val == pytest.approx(two_val, abs=1e-9)
    assert one_w.keys() == two_w.keys()
    worst = max((one_w[k].double() - two_w[k].double()).abs().max().item() for k in one_w)
    assert worst <= 1e-5, worst

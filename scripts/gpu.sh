#!/usr/bin/env bash
# Throughput of the paper-resnet50 preset on one GPU: training img/s and peak GPU memory over a
# few hundred steps of the real engine (`lumbarclip.training.train`, Lightning, bf16-mixed).
# Never needed by the tests.
#
#   scripts/gpu.sh                   # 300 steps on a 224 px synthetic cohort (rendered once)
#   STEPS=500 BATCH=64 scripts/gpu.sh --set model.vision_pretrained=/path/resnet50.safetensors
#
# Settings (environment): STEPS (300 timed steps, after WARMUP=20 untimed ones), BATCH (preset: 32),
# PATIENTS (300; 6 images each), SIZE (224), TEXT (minilm: the packaged offline tower; the preset's
# emilyalsentzer/Bio_ClinicalBERT needs the network or a local folder), VISION (preset: resnet50),
# WORKERS (data-loader processes, 8), DEVICE (gpu; `DEVICE=cpu` is the dry run of this script),
# OUT (gpu-bench: cohort/ and run/ go there), PY (.venv/bin/python). Extra arguments are
# `--set key=value` overrides for the preset. The vision tower trains from scratch unless
# `--set model.vision_pretrained=timm|FILE` is given (timm's ImageNet weights need the network).
#
# CPU dry run (seconds; checks the script, not a GPU figure):
#   DEVICE=cpu STEPS=3 WARMUP=1 PATIENTS=12 SIZE=32 VISION=resnet18 BATCH=8 WORKERS=0 scripts/gpu.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
OUT=${OUT:-gpu-bench}
PATIENTS=${PATIENTS:-300}
SIZE=${SIZE:-224}
export HF_HUB_OFFLINE=${HF_HUB_OFFLINE:-1} TRANSFORMERS_OFFLINE=${TRANSFORMERS_OFFLINE:-1}

if [ ! -f "$OUT/cohort/manifest.csv" ]; then
  "$PY" -m lumbarclip.cli synth --out "$OUT/cohort" --patients "$PATIENTS" --size "$SIZE" --no-progress
fi

overrides=()
while [ $# -gt 0 ]; do
  case "$1" in
    --set) overrides+=("$2"); shift 2 ;;
    *) echo "scripts/gpu.sh: unknown argument $1 (use --set key=value)" >&2; exit 2 ;;
  esac
done

STEPS=${STEPS:-300} WARMUP=${WARMUP:-20} DEVICE=${DEVICE:-gpu} OUT="$OUT" SIZE="$SIZE" \
"$PY" - "${overrides[@]}" <<'PYTHON'
import os, resource, sys, time

import lightning as L
import torch

from lumbarclip.training import load_config, train

steps, warmup, device = int(os.environ["STEPS"]), int(os.environ["WARMUP"]), os.environ["DEVICE"]
overrides = [
    f"model.text={os.environ.get('TEXT', 'minilm')}",
    "model.vision_pretrained=",
    f"model.image_size={os.environ['SIZE']}",
    f"trainer.accelerator={device}",
    "trainer.devices=1",
    "trainer.max_epochs=100000",  # the callback below stops the run
    "trainer.monitor=",  # no model export per epoch
    "trainer.checkpoint_every_n_steps=0",
    f"trainer.channels_last={'true' if device == 'gpu' else 'false'}",
    f"data.num_workers={os.environ.get('WORKERS', '8')}",
]
overrides += [f"model.vision={os.environ['VISION']}"] if os.environ.get("VISION") else []
overrides += [f"data.batch_size={os.environ['BATCH']}"] if os.environ.get("BATCH") else []
config = load_config("paper-resnet50", overrides + sys.argv[1:])
sync = torch.cuda.synchronize if device == "gpu" else (lambda: None)


class Throughput(L.Callback):
    """Compute time of each step (start to end, synchronised) and wall time between step ends
    within an epoch (so data loading is counted, validation is not); stops after the timed steps."""

    def __init__(self) -> None:
        self.compute, self.wall, self.images, self.last_end = [], [], 0, None

    def on_train_epoch_start(self, trainer, module):
        self.last_end = None

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        sync()
        self.started = time.perf_counter()

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        sync()
        now = time.perf_counter()
        if trainer.global_step > warmup:
            self.compute.append(now - self.started)
            if self.last_end is not None:
                self.wall.append(now - self.last_end)
            self.images += len(batch["texts"])
        self.last_end = now
        if trainer.global_step >= warmup + steps:
            trainer.should_stop = True


meter = Throughput()
if device == "gpu":
    torch.backends.cudnn.benchmark = True
    torch.cuda.reset_peak_memory_stats()
train(config, os.path.join(os.environ["OUT"], "cohort", "manifest.csv"), os.path.join(os.environ["OUT"], "run"),
      progress=False, overwrite=True, callbacks=[meter])
batch = config.data.batch_size
name = torch.cuda.get_device_name() if device == "gpu" else f"cpu ({torch.get_num_threads()} threads)"
print(f"\n{config.model.vision} {config.model.image_size} px + {config.model.text}, batch {batch}, "
      f"{config.trainer.precision}, {len(meter.compute)} timed steps on {name}")
print(f"training step:  {batch * len(meter.compute) / sum(meter.compute):8.1f} img/s (compute, median step "
      f"{sorted(meter.compute)[len(meter.compute) // 2] * 1000:.0f} ms)")
if meter.wall:
    print(f"with loading:   {batch * len(meter.wall) / sum(meter.wall):8.1f} img/s (wall between steps, "
          f"{config.data.num_workers} loader workers)")
if device == "gpu":
    print(f"peak GPU memory: {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB allocated, "
          f"{torch.cuda.max_memory_reserved() / 2**30:.2f} GiB reserved")
print(f"peak host RSS:   {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB")
PYTHON

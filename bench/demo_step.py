"""The demo's training step (cpu-demo preset, real data module) with its speed levers toggled,
interleaved, timed in CPU seconds of the process on one thread (a loaded machine does not
inflate them). The first round pays one-off kernel set-up; read the later rounds.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/demo_step.py --data COHORT/manifest.csv [--steps 8] [--rounds 3]
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import lightning as L  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
import vs_open_clip  # noqa: E402  (its StepTimer)

from lumbarclip.data.datamodule import PairDataModule  # noqa: E402
from lumbarclip.models import create_model  # noqa: E402
from lumbarclip.reports import class_prompts  # noqa: E402
from lumbarclip.training import load_config  # noqa: E402
from lumbarclip.training.module import CLIPModule  # noqa: E402

MODES = {  # name: (optim.implementation, channels_last)
    "cpu-demo as shipped (fused AdamW, contiguous)": ("fused", False),
    "for-loop AdamW (PyTorch's CPU default)": ("for-loop", False),
    "fused AdamW + channels_last": ("fused", True),
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="a cohort manifest (e.g. a demo's cohort/manifest.csv)")
    parser.add_argument("--steps", type=int, default=8, help="timed steps per mode and round")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    vs_open_clip.clock = time.process_time
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    config = load_config("cpu-demo")
    data = PairDataModule(args.data, config.data, config.model.image_size, config.loss.labels, config.seed)
    data.setup("fit")
    loader = data.train_dataloader()
    for _ in loader:  # fill the pixel cache, as the first epoch does
        pass
    module = CLIPModule(create_model(config.model), config, class_prompts())
    module.total_steps = 1000
    results: dict[str, list[float]] = {name: [] for name in MODES}
    for r in range(args.rounds):
        for name, (kernel, channels_last) in MODES.items():
            config.optim.implementation = kernel
            module.model.visual.to(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
            timer = vs_open_clip.StepTimer()
            with contextlib.redirect_stderr(open(os.devnull, "w")):
                L.Trainer(
                    max_steps=args.steps + 2, precision=config.trainer.precision, accelerator="cpu", devices=1,
                    gradient_clip_val=config.optim.grad_clip or None, callbacks=[timer], logger=False,
                    enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                    limit_val_batches=0, num_sanity_val_steps=0,
                ).fit(module, train_dataloaders=loader)
            steps = sorted(s["end"] - s["start"] for s in timer.steps[2:])
            optimizer = sorted(s["end"] - s["clip"] for s in timer.steps[2:])
            if r:  # round 0 pays one-off kernel set-up
                results[name] += steps
            print(f"round {r}: {name:46s} median {steps[len(steps) // 2]:.3f} CPU-s/step "
                  f"(clipping+optimizer {optimizer[len(optimizer) // 2]:.3f})", flush=True)
    print(f"\nrounds 1..{args.rounds - 1}, {config.data.batch_size} images a step, load average {os.getloadavg()[0]:.1f}:")
    for name, steps in results.items():
        steps.sort()
        if steps:
            print(f"{name:46s} median {steps[len(steps) // 2]:.3f}  best {steps[0]:.3f} CPU-s/step")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""`train()`: config + manifest -> a run folder with the best model saved as safetensors."""

from __future__ import annotations

import contextlib
import json
import logging
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback, LearningRateMonitor
from lightning.pytorch.loggers import CSVLogger

from lumbarclip.data.datamodule import PairDataModule
from lumbarclip.errors import InputError
from lumbarclip.models import create_model
from lumbarclip.reports import class_prompts
from lumbarclip.training.config import TrainConfig, save_config
from lumbarclip.training.module import CLIPModule



@contextlib.contextmanager
def quiet_lightning() -> Iterator[None]:
    """Hide Lightning's INFO banners and its notices about frozen (eval-mode) modules, tiny
    loaders and deprecations: they are expected here and bury the progress bar."""
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*(treespec|num_workers|eval mode|logging interval).*")
        yield


class ExportBest(Callback):
    """Save the model folder (config.json + model.safetensors + tokenizer) whenever the monitored
    validation metric reaches a new best (ties go to the later epoch); no pickled checkpoints."""

    def __init__(self, folder: Path, monitor: str) -> None:
        self.folder, self.monitor = folder, monitor
        self.best: float | None = None
        self.best_epoch = -1

    def on_validation_end(self, trainer: L.Trainer, pl_module: CLIPModule) -> None:
        if trainer.sanity_checking or self.monitor not in trainer.callback_metrics:
            return
        value = float(trainer.callback_metrics[self.monitor])
        if self.best is None or value >= self.best:
            self.best, self.best_epoch = value, trainer.current_epoch
            if trainer.is_global_zero:
                pl_module.model.save_pretrained(self.folder)


def prepare_run_dir(out_dir: str | Path, overwrite: bool = False) -> Path:
    """A run folder that holds no earlier model unless `overwrite` is set."""
    run = Path(out_dir)
    if (run / "model").exists() and not overwrite:
        raise InputError(f"{run}: already holds a trained model; choose another --out or pass --overwrite")
    run.mkdir(parents=True, exist_ok=True)
    return run


def train(
    config: TrainConfig, manifest: str | Path, out_dir: str | Path, progress: bool = True, overwrite: bool = False
) -> Path:
    """Train a LumbarCLIP model; returns the run folder (`RUN/model/` is the best model)."""
    data = PairDataModule(manifest, config)
    run = prepare_run_dir(out_dir, overwrite)
    save_config(config, run / "config.yaml")
    L.seed_everything(config.seed, workers=True, verbose=False)
    model = create_model(config.model)
    module = CLIPModule(model, config, class_prompts())
    export = ExportBest(run / "model", config.trainer.monitor)
    tc = config.trainer
    with quiet_lightning():
        trainer = L.Trainer(
            default_root_dir=run,
            max_epochs=tc.max_epochs,
            precision=tc.precision,
            accelerator=tc.accelerator,
            devices=tc.devices,
            strategy=tc.strategy,
            accumulate_grad_batches=tc.accumulate_grad_batches,
            gradient_clip_val=config.optim.grad_clip or None,
            log_every_n_steps=tc.log_every_n_steps,
            logger=CSVLogger(run, name="logs", version=""),
            callbacks=[LearningRateMonitor(logging_interval="epoch")] + ([export] if tc.monitor else []),
            enable_checkpointing=False,
            enable_progress_bar=progress,
            enable_model_summary=False,
            num_sanity_val_steps=0,
            deterministic=False,
        )
        started = time.perf_counter()
        trainer.fit(module, datamodule=data)
    if export.best is None:  # no monitor (trainer.monitor="") or it was never logged: last epoch
        model.save_pretrained(run / "model")
    summary = {
        "manifest": str(data.manifest.path.resolve()),
        "best_epoch": export.best_epoch,
        "monitor": tc.monitor,
        "best_value": export.best,
        "epochs": trainer.current_epoch,
        "train_images": len(data.manifest.split("train")),
        "valid_images": len(data.manifest.split("valid")),
        "skipped_rows": len(data.manifest.skipped),
        "seconds": round(time.perf_counter() - started, 1),
        "torch_threads": torch.get_num_threads(),
    }
    if trainer.is_global_zero:
        (run / "train_summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return run

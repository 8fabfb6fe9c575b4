"""`train()`: config + manifest (or shard folder) -> a run folder with the best model saved as
safetensors, Lightning checkpoints to resume from, and the run's record.

Run folder: `config.yaml` and `run.json` (written first: all `--resume` needs), `checkpoints/`
(`step.ckpt` every `trainer.checkpoint_every_n_steps` optimizer steps, `epoch.ckpt` at each
epoch end; Lightning checkpoints of plain tensors and numbers, loaded with
`weights_only=True`), `model/` (the exported model), `logs/metrics.csv` (whole across resumes),
`train_summary.json`.
"""

from __future__ import annotations

import csv
import json
import time
from collections.abc import Sequence
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback, LearningRateMonitor, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger

from lumbarclip._lightning import quiet_lightning
from lumbarclip.bundle.folder import save_model
from lumbarclip.data.datamodule import PairDataModule
from lumbarclip.data.privacy import TRAIN_PATIENTS_KEY, train_patient_hashes
from lumbarclip.data.shards import read_shard_index
from lumbarclip.data.transforms import PreprocessSpec
from lumbarclip.errors import InputError
from lumbarclip.models import create_model
from lumbarclip.reports import class_prompts
from lumbarclip.training.config import TrainConfig, load_config, save_config
from lumbarclip.training.module import MONITOR_MODES, CLIPModule

RUN_FILE = "run.json"
CHECKPOINTS = "checkpoints"


def monitor_mode(config: TrainConfig) -> str:
    """`min` or `max` for `trainer.monitor`, from `trainer.monitor_mode` or the metric itself;
    an unknown monitor is refused before any training (it would never be logged)."""
    tc = config.trainer
    if tc.monitor not in MONITOR_MODES:
        raise InputError(
            f"trainer.monitor={tc.monitor!r} is not a logged metric; choose one of "
            f"{', '.join(MONITOR_MODES)} or '' (keep the last epoch)"
        )
    if tc.monitor_mode not in ("", "min", "max"):
        raise InputError(f"trainer.monitor_mode must be min, max or '' (from the metric); got {tc.monitor_mode!r}")
    return tc.monitor_mode or MONITOR_MODES[tc.monitor]


class ExportBest(Callback):
    """Save the model folder (config, weights, tokenizer, preprocessing spec) whenever the monitored
    metric reaches a new best in its direction (ties go to the later epoch). Its state rides in
    the checkpoints, so a resumed run keeps comparing against the best before the kill."""

    def __init__(self, folder: Path, monitor: str, mode: str, preprocess: PreprocessSpec) -> None:
        self.folder, self.monitor, self.mode, self.preprocess = folder, monitor, mode, preprocess
        self.best: float | None = None
        self.best_epoch = -1

    def on_validation_end(self, trainer: L.Trainer, pl_module: CLIPModule) -> None:
        if trainer.sanity_checking:
            return
        if self.monitor not in trainer.callback_metrics:
            raise RuntimeError(f"monitor {self.monitor!r} was not logged at the end of validation")
        value = float(trainer.callback_metrics[self.monitor])
        better = self.best is None or (value >= self.best if self.mode == "max" else value <= self.best)
        if better:
            self.best, self.best_epoch = value, trainer.current_epoch
            if trainer.is_global_zero:
                save_model(pl_module.model, self.folder, self.preprocess)

    def state_dict(self) -> dict:
        return {"best": self.best, "best_epoch": self.best_epoch}

    def load_state_dict(self, state_dict: dict) -> None:
        self.best, self.best_epoch = state_dict["best"], state_dict["best_epoch"]


class RunLogger(CSVLogger):
    """`RUN/logs/metrics.csv`, kept whole across a resume: Lightning's CSV writer deletes the
    file it finds, so a resumed run reads it first and writes back the rows of the steps before
    its checkpoint (`MetricsBeforeCheckpoint`); the resumed run logs the later steps again.
    Each row is written as it is logged (a row still buffered at a kill, such as the learning
    rate logged at an epoch's start, would be lost: a mid-epoch resume does not log it again)."""

    def __init__(self, run: Path, resume: bool) -> None:
        super().__init__(run, name="logs", version="", flush_logs_every_n_steps=1)
        path = Path(self.log_dir) / "metrics.csv"
        self.previous: list[dict[str, str]] = []
        if resume and path.is_file():
            with path.open(newline="") as f:
                self.previous = list(csv.DictReader(f))

    def restore(self, before_step: int) -> None:
        """Write back the rows logged at steps before `before_step` (creating the writer deletes the file)."""
        kept, self.previous = [r for r in self.previous if int(r["step"]) < before_step], []
        if kept:
            self.experiment.metrics = kept
            self.experiment.save()


class MetricsBeforeCheckpoint(Callback):
    """Restores the metric rows of a resumed run's steps before its checkpoint (a row's step is
    the optimizer step count when it was logged: the checkpoint's `global_step` and later ones
    are logged again; see `RunLogger`)."""

    def __init__(self, logger: RunLogger) -> None:
        self.logger = logger
        self.before_step: int | None = None

    def on_load_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        self.before_step = checkpoint["global_step"]

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.before_step is not None and trainer.is_global_zero:  # after loading, before the first log
            self.logger.restore(self.before_step)


def prepare_run_dir(out_dir: str | Path, overwrite: bool = False) -> Path:
    """A run folder that holds no earlier model or checkpoint unless `overwrite` is set."""
    run = Path(out_dir)
    if ((run / "model").exists() or (run / CHECKPOINTS).exists()) and not overwrite:
        raise InputError(
            f"{run}: already holds a trained model or checkpoints; resume it with --resume, "
            "choose another --out or pass --overwrite"
        )
    if overwrite:
        for old in (run / CHECKPOINTS).glob("*.ckpt"):
            old.unlink()
    run.mkdir(parents=True, exist_ok=True)
    return run


def latest_checkpoint(run: Path) -> Path:
    """The newest of the step and epoch-end checkpoints of a run folder."""
    found = sorted((run / CHECKPOINTS).glob("*.ckpt"), key=lambda p: p.stat().st_mtime_ns)
    if not found:
        raise InputError(f"{run}: no checkpoint in {CHECKPOINTS}/ (killed before the first one); start it again")
    return found[-1]


class StepCheckpoint(ModelCheckpoint):
    """Every n optimizer steps, but not at an epoch's last batch: Lightning resumes from a
    checkpoint taken there as if that epoch's validation had run (it skips it), so a run killed
    during that validation would never validate the epoch (nor export it if best). A kill there
    resumes from the step checkpoint before, or from the epoch-end one that follows validation."""

    def on_train_batch_end(self, trainer: L.Trainer, *args, **kwargs) -> None:
        if not trainer.fit_loop.epoch_loop.batch_progress.is_last_batch:
            super().on_train_batch_end(trainer, *args, **kwargs)


def _checkpointing(run: Path, every_n_steps: int) -> list[ModelCheckpoint]:
    """Two rolling files: the last `every_n_steps` step and the last epoch end."""
    common = dict(dirpath=run / CHECKPOINTS, save_top_k=1, monitor=None, enable_version_counter=False)
    callbacks = [ModelCheckpoint(filename="epoch", every_n_epochs=1, save_on_train_epoch_end=True, **common)]
    if every_n_steps > 0:
        callbacks.append(StepCheckpoint(filename="step", every_n_train_steps=every_n_steps, **common))
    return callbacks


def preprocess_spec(data: PairDataModule, image_size: int) -> PreprocessSpec:
    """The input spec the model is trained for: the evaluation transform at `image_size`, with
    the planes and sequences of the training split (of a shard folder's index when it records
    them; axial T1/T2 otherwise)."""
    if data.manifest is not None:
        return PreprocessSpec.of_split(image_size, data.manifest.split("train"))
    index = read_shard_index(data.shards)
    planes, sequences = tuple(index.get("planes", ())), tuple(index.get("sequences", ()))
    return PreprocessSpec.of_model(image_size, planes or ("axial",), sequences or ("T1", "T2"))


def train(
    config: TrainConfig,
    manifest: str | Path,
    out_dir: str | Path,
    progress: bool = True,
    overwrite: bool = False,
    resume: bool = False,
    callbacks: Sequence[Callback] = (),
) -> Path:
    """Train a LumbarCLIP model; returns the run folder (`RUN/model/` is the best model).

    `manifest`: a manifest CSV or a `lumbarclip data shard` folder. `resume`: continue from
    the newest checkpoint in `out_dir` (see `resume_run`). `callbacks`: extra Lightning callbacks.
    """
    mode = monitor_mode(config) if config.trainer.monitor else ""
    data = PairDataModule(manifest, config.data, config.model.image_size, config.loss.labels, config.seed)
    if resume:
        run = Path(out_dir)
        ckpt_path: Path | None = latest_checkpoint(run)
    else:
        run = prepare_run_dir(out_dir, overwrite)
        ckpt_path = None
        save_config(config, run / "config.yaml")
        (run / RUN_FILE).write_text(json.dumps({"data": str(data.source_path)}, indent=2) + "\n")
    L.seed_everything(config.seed, workers=True, verbose=False)
    model = create_model(config.model)
    module = CLIPModule(model, config, class_prompts())
    preprocess = preprocess_spec(data, config.model.image_size)
    export = ExportBest(run / "model", config.trainer.monitor, mode, preprocess) if mode else None
    tc = config.trainer
    logger = RunLogger(run, resume)
    with quiet_lightning():
        trainer = L.Trainer(
            default_root_dir=run,
            max_epochs=tc.max_epochs,
            precision=tc.precision,
            accelerator=tc.accelerator,
            devices=tc.devices,
            num_nodes=tc.num_nodes,
            strategy=tc.strategy,
            sync_batchnorm=tc.sync_batchnorm,
            use_distributed_sampler=False,  # EpochSampler deals each rank its share of a global batch
            accumulate_grad_batches=tc.accumulate_grad_batches,
            gradient_clip_val=config.optim.grad_clip or None,
            log_every_n_steps=tc.log_every_n_steps,
            logger=logger,
            callbacks=[LearningRateMonitor(logging_interval="epoch"), MetricsBeforeCheckpoint(logger)]
            + _checkpointing(run, tc.checkpoint_every_n_steps)
            + ([export] if export else [])
            + list(callbacks),
            enable_progress_bar=progress,
            enable_model_summary=False,
            num_sanity_val_steps=0,
            deterministic=False,
        )
        steps_per_epoch = -(-data.batches_per_epoch(trainer.world_size) // tc.accumulate_grad_batches)
        module.total_steps = steps_per_epoch * tc.max_epochs
        started = time.perf_counter()
        trainer.fit(module, datamodule=data, ckpt_path=ckpt_path, weights_only=True)
    if export is None and trainer.is_global_zero:  # trainer.monitor="": the last epoch
        save_model(model, run / "model", preprocess)
    summary = {
        "manifest": data.manifest_path,  # evaluate refuses to score patients the model trained on
        TRAIN_PATIENTS_KEY: train_patient_hashes(data.manifest, data.manifest_path),  # the same, if the manifest moves
        "data": str(data.source_path),
        "best_epoch": export.best_epoch if export else trainer.current_epoch - 1,
        "monitor": tc.monitor,
        "monitor_mode": mode,
        "best_value": export.best if export else None,
        "epochs": trainer.current_epoch,
        "resumed_from": str(ckpt_path.relative_to(run)) if ckpt_path else None,
        "processes": trainer.world_size,
        "train_images": data.counts["train"],
        "valid_images": data.counts["valid"],
        "skipped_rows": data.skipped_rows,
        "seconds": round(time.perf_counter() - started, 1),
        "torch_threads": torch.get_num_threads(),
    }
    if trainer.is_global_zero:
        (run / "train_summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return run


def resume_run(run_dir: str | Path, progress: bool = True, callbacks: Sequence[Callback] = ()) -> Path:
    """Continue a killed run from its newest checkpoint, with the config and data it started with."""
    run = Path(run_dir)
    if not (run / RUN_FILE).is_file() or not (run / "config.yaml").is_file():
        raise InputError(f"{run}: not a run folder (needs {RUN_FILE} and config.yaml written by `lumbarclip train`)")
    data = json.loads((run / RUN_FILE).read_text())["data"]
    config = load_config(str(run / "config.yaml"))
    return train(config, data, run, progress=progress, resume=True, callbacks=callbacks)

"""What every Lightning run of the package shares (contrastive training in `training`, the
supervised baselines in `evaluation`), kept below both layers."""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Iterator


@contextlib.contextmanager
def quiet_lightning() -> Iterator[None]:
    """Hide Lightning's INFO banners and its notices about frozen (eval-mode) modules, tiny
    loaders and deprecations: they are expected here and bury the progress bar."""
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    with warnings.catch_warnings():
        quiet = "treespec|num_workers|eval mode|logging interval|before the epoch ended|exists and is not empty"
        warnings.filterwarnings("ignore", message=f".*({quiet}).*")
        yield


def adamw_one_cycle(module: object, lr: float, pct_start: float = 0.1, weight_decay: float = 1e-4) -> dict:
    """`configure_optimizers` of the small supervised models (disc detector, disc CNN): AdamW
    under a one-cycle schedule stepped per batch over the whole run."""
    import torch

    optimizer = torch.optim.AdamW(module.parameters(), lr=lr, weight_decay=weight_decay)  # type: ignore[attr-defined]
    total = int(module.trainer.estimated_stepping_batches)  # type: ignore[attr-defined]
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=total, pct_start=pct_start)
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}


def fit_best_epoch(module: object, train: object, valid: object, monitor: str, epochs: int, progress: bool) -> tuple[float, str, float]:
    """Fit `module` (a LightningModule) for `epochs` and load back the epoch with the highest
    `monitor` on `valid` (a weights-only checkpoint in a temporary folder, read with
    `weights_only=True`); returns (best score, its checkpoint's name, seconds)."""
    import tempfile
    import time
    from pathlib import Path

    import lightning as L
    import torch
    from lightning.pytorch.callbacks import ModelCheckpoint

    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="lumbarclip-fit-") as work, quiet_lightning():
        checkpoint = ModelCheckpoint(dirpath=work, monitor=monitor, mode="max", save_top_k=1, save_weights_only=True)
        trainer = L.Trainer(
            max_epochs=epochs, accelerator="auto", devices=1, logger=False, callbacks=[checkpoint],
            enable_progress_bar=progress, enable_model_summary=False, num_sanity_val_steps=0,
        )  # fmt: skip
        trainer.fit(module, train, valid)  # type: ignore[arg-type]
        best = torch.load(checkpoint.best_model_path, map_location="cpu", weights_only=True)["state_dict"]
        name = Path(checkpoint.best_model_path).name
    module.load_state_dict(best)  # type: ignore[attr-defined]
    return float(checkpoint.best_model_score), name, round(time.perf_counter() - started, 1)

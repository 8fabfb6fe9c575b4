"""Supervised image classifiers on a vision tower: the from-scratch baseline (random init)
and fine-tuning of the pre-trained LumbarCLIP tower. Same data, same head, same schedule, so
the difference between the two is what contrastive pre-training bought.

The epoch kept is the one with the lowest validation loss; the test split is never seen here.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lumbarclip._lightning import quiet_lightning


@dataclass
class SupervisedConfig:
    """CPU-sized defaults: a few epochs are enough to rank from-scratch against fine-tuning."""

    epochs: int = 3
    batch_size: int = 32
    head_lr: float = 1e-3
    tower_lr: float = 1e-3  # fine-tuning passes a smaller one for the pre-trained tower
    weight_decay: float = 1e-4
    precision: str | None = None  # None: the precision the run was trained with


class TowerClassifier(L.LightningModule):
    """Vision tower -> linear logits, trained with class-weighted BCE: one output (abnormal) or
    several independent ones (per-finding labels, the pixel ceiling of findings)."""

    def __init__(self, tower: nn.Module, config: SupervisedConfig, pos_weight: float | np.ndarray) -> None:
        super().__init__()
        self.multi = np.ndim(pos_weight) > 0  # labels [N, K] (even K = 1) rather than [N]
        weight = torch.as_tensor(np.atleast_1d(np.asarray(pos_weight, dtype=np.float32)))
        self.n_outputs = len(weight)
        self.tower = tower.train()  # a copied pre-trained tower arrives in eval mode
        self.head = nn.Linear(tower.num_features, self.n_outputs)
        self.config = config
        self.loss = nn.BCEWithLogitsLoss(pos_weight=weight if self.multi else weight[0])

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        logits = self.head(self.tower(images))
        return logits if self.multi else logits.squeeze(-1)

    def _loss(self, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        images, labels = batch
        return self.loss(self(images).float(), labels.float())

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss = self._loss(batch)
        self.log("train_loss", loss, prog_bar=True)
        return loss

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        self.log("val_loss", self._loss(batch), prog_bar=True)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW(
            [
                {"params": self.tower.parameters(), "lr": self.config.tower_lr},
                {"params": self.head.parameters(), "lr": self.config.head_lr},
            ],
            weight_decay=self.config.weight_decay,
        )


def train_classifier(
    tower: nn.Module,
    train: tuple[torch.Tensor, np.ndarray],
    valid: tuple[torch.Tensor, np.ndarray],
    config: SupervisedConfig,
    seed: int = 0,
    progress: bool = True,
) -> TowerClassifier:
    """Train tower + head on (images, labels [N] or [N, K] of 0/1); returns the
    best-validation-loss weights. Each output's positives are weighted by its negatives/positives."""
    L.seed_everything(seed, verbose=False)
    y_train = np.asarray(train[1])
    pos_weight = (y_train == 0).sum(0) / np.maximum((y_train == 1).sum(0), 1)
    module = TowerClassifier(tower, config, pos_weight)
    loaders = [
        DataLoader(
            TensorDataset(images, torch.as_tensor(labels)), batch_size=config.batch_size, shuffle=shuffle
        )
        for (images, labels), shuffle in ((train, True), (valid, False))
    ]
    with tempfile.TemporaryDirectory(prefix="lumbarclip-sup-") as tmp:
        best = ModelCheckpoint(dirpath=tmp, monitor="val_loss", save_top_k=1, save_weights_only=True)
        with quiet_lightning():
            trainer = L.Trainer(
                max_epochs=config.epochs,
                accelerator="auto",
                devices=1,
                precision=config.precision or "32-true",
                logger=False,
                callbacks=[best],
                enable_progress_bar=progress,
                enable_model_summary=False,
                default_root_dir=tmp,
                num_sanity_val_steps=0,
            )
            trainer.fit(module, *loaders)
        state = torch.load(best.best_model_path, map_location="cpu", weights_only=True)["state_dict"]
    module.load_state_dict(state)
    return module.eval()


@torch.no_grad()
def classifier_proba(module: TowerClassifier, images: torch.Tensor, batch_size: int = 64) -> np.ndarray:
    """P(abnormal) for each image ([N], or [N, K] for K outputs), in evaluation mode."""
    module = module.eval()
    device = next(module.parameters()).device
    probs = [
        torch.sigmoid(module(images[i : i + batch_size].to(device)).float()).cpu()
        for i in range(0, len(images), batch_size)
    ]
    return torch.cat(probs).numpy() if probs else np.zeros(0)

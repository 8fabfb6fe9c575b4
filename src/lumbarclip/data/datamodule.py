"""The Lightning DataModule: a manifest's train and valid splits as image-report pair loaders."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import lightning as L
from torch.utils.data import DataLoader

from lumbarclip.data.dataset import ImageTextDataset, collate_pairs
from lumbarclip.data.manifest import Manifest, read_manifest
from lumbarclip.data.transforms import eval_transform, train_transform
from lumbarclip.errors import InputError
from lumbarclip.reports import split_sentences

if TYPE_CHECKING:
    from lumbarclip.training.config import TrainConfig


class PairDataModule(L.LightningDataModule):
    def __init__(self, manifest: str | Path | Manifest, config: "TrainConfig") -> None:
        super().__init__()
        self.manifest = manifest if isinstance(manifest, Manifest) else read_manifest(manifest)
        self.config = config
        for split in ("train", "valid"):
            if not self.manifest.split(split):
                raise InputError(f"{self.manifest.path}: no usable rows in the {split!r} split")

    def _dataset(self, split: str, train: bool) -> ImageTextDataset:
        cfg, size = self.config.data, self.config.model.image_size
        return ImageTextDataset(
            self.manifest.split(split),
            train_transform(size, cfg.flip) if train and cfg.augment else eval_transform(size),
            split_sentences=split_sentences,
            sample_sentence=cfg.sample_sentence and train,
            label_source=self.config.loss.labels,
            cache_images=cfg.cache_images,
        )

    def setup(self, stage: str | None = None) -> None:
        self.train_set = self._dataset("train", train=True)
        self.valid_set = self._dataset("valid", train=False)

    def _loader(self, dataset: ImageTextDataset, shuffle: bool) -> DataLoader:
        workers = self.config.data.num_workers
        return DataLoader(
            dataset,
            batch_size=self.config.data.batch_size,
            shuffle=shuffle,
            drop_last=shuffle and len(dataset) > self.config.data.batch_size,
            num_workers=workers,
            persistent_workers=workers > 0,
            collate_fn=collate_pairs,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.valid_set, shuffle=False)

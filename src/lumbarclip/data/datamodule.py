"""The Lightning DataModule: a manifest's (or a shard folder's) train and valid splits as
image-report pair loaders that give the same batches whatever the number of processes, data
workers or restarts.

Order and randomness are functions of (seed, epoch, sample) only: `EpochSampler` draws one
permutation per epoch and hands each process its share of every global batch, and each sample
is augmented from its own seed. So 2 processes at batch B/2 see exactly the batches of 1
process at batch B, and a run resumed mid-epoch skips the batches it already trained on and
continues with the very batches it would have seen.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path

import lightning as L
import torch
from torch.utils.data import DataLoader, Sampler

from lumbarclip.data.config import DataConfig
from lumbarclip.data.dataset import ImageTextDataset, collate_pairs, sample_seed
from lumbarclip.data.manifest import Manifest, check_patient_overlap, read_manifest
from lumbarclip.data.shards import ShardPairs, is_shard_folder, read_shard_index
from lumbarclip.data.transforms import eval_transform, train_transform
from lumbarclip.errors import InputError
from lumbarclip.reports import split_sentences


class EpochSampler(Sampler):
    """This process's `(index, sample seed)` keys for one epoch.

    Training: a permutation seeded by (seed, epoch), cut to whole global batches
    (`batch_size x world`), each global batch dealt round-robin to the ranks. Validation
    (`shuffle=False`): indices in order, dealt round-robin and padded with repeats to equal
    lengths (callers drop the repeats by index). `resume_at(epoch, batches)` skips the batches
    of that epoch that a checkpoint already holds, once.
    """

    def __init__(
        self, n: int, batch_size: int, seed: int = 0, shuffle: bool = True, rank: int = 0, world: int = 1
    ) -> None:
        self.n, self.batch_size, self.seed, self.shuffle = n, batch_size, seed, shuffle
        self.rank, self.world = rank, world
        self.epoch = 0
        self._skip: tuple[int, int] | None = None

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def resume_at(self, epoch: int, batches_done: int) -> None:
        self.epoch = epoch
        self._skip = (epoch, batches_done * self.batch_size) if batches_done else None

    def _indices(self) -> list[int]:
        if not self.shuffle:
            per_rank = -(-self.n // self.world)
            mine = list(range(self.rank, self.n, self.world))
            return mine + mine[-1:] * (per_rank - len(mine)) if mine else [0] * per_rank
        generator = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        order = torch.randperm(self.n, generator=generator).tolist()
        global_batch = self.batch_size * self.world
        used = (self.n // global_batch) * global_batch if self.n >= global_batch else self.n - self.n % self.world
        return order[self.rank : used : self.world]

    def __len__(self) -> int:
        return len(self._indices())

    def __iter__(self) -> Iterator[tuple[int, int]]:
        indices = self._indices()
        if self._skip is not None and self._skip[0] == self.epoch:
            indices = indices[self._skip[1] :]
        self._skip = None
        epoch = self.epoch if self.shuffle else 0
        return iter([(i, sample_seed(self.seed, epoch, i)) for i in indices])


class StreamLoader(DataLoader):
    """A loader over a stream that tells it the epoch on each pass (Lightning iterates a
    loader once per epoch; an iterable dataset has no sampler for it to call `set_epoch` on)."""

    def __init__(self, dataset: ShardPairs, first_epoch: int = 0, skip_batches: int = 0, **kwargs) -> None:
        super().__init__(dataset, **kwargs)
        self.next_epoch, self.skip_batches = first_epoch, skip_batches

    def __iter__(self):
        """The epoch's stream; after a mid-epoch resume, without the batches already trained
        (the stream is a function of seed and epoch; with several data workers the interleaving
        of their batches is too, but their part batches make the count inexact)."""
        self.dataset.set_epoch(self.next_epoch)
        self.next_epoch += 1
        stream = super().__iter__()
        skip, self.skip_batches = self.skip_batches, 0
        return itertools.islice(stream, skip, None) if skip else stream


class PairDataModule(L.LightningDataModule):
    """`source`: a manifest CSV (images decoded once and kept in RAM when `cache_images`) or a
    folder written by `lumbarclip data shard` (streamed, for cohorts larger than RAM)."""

    def __init__(
        self,
        source: str | Path | Manifest,
        data: DataConfig,
        image_size: int,
        label_source: str = "binary",
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.data, self.image_size, self.label_source, self.seed = data, image_size, label_source, seed
        self.shards = None if isinstance(source, Manifest) or not is_shard_folder(source) else Path(source)
        if self.shards is not None:
            self.manifest = None
            index = read_shard_index(self.shards)
            self.source_path = self.shards.resolve()
            self.manifest_path = index.get("manifest")
            self.counts = {s: index["splits"].get(s, {}).get("images", 0) for s in ("train", "valid")}
            self.skipped_rows = int(index.get("skipped_rows", 0))
        else:
            self.manifest = source if isinstance(source, Manifest) else read_manifest(source)
            check_patient_overlap(self.manifest)
            self.source_path = self.manifest.path.resolve()
            self.manifest_path = str(self.source_path)
            self.counts = {s: len(self.manifest.split(s)) for s in ("train", "valid")}
            self.skipped_rows = len(self.manifest.skipped)
        for split, count in self.counts.items():
            if not count:
                raise InputError(f"{self.source_path}: no usable rows in the {split!r} split")

    def batches_per_epoch(self, world: int) -> int:
        """Training batches per process and epoch, known before any loader is built (the LR
        schedule needs it; asking Lightning would start the loader before a resume is restored)."""
        if self.shards is not None:
            info = read_shard_index(self.shards)["splits"]["train"]["shards"]
            return max(1, sum(s["count"] // world for s in info) // self.data.batch_size)
        per_rank = len(EpochSampler(self.counts["train"], self.data.batch_size, world=world))
        return max(1, -(-per_rank // self.data.batch_size))

    def _rank_world(self) -> tuple[int, int]:
        trainer = self.trainer
        return (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)

    def _transform(self, train: bool):
        if train and self.data.augment:
            return train_transform(self.image_size, self.data.flip)
        return eval_transform(self.image_size)

    def _dataset(self, split: str, train: bool) -> ImageTextDataset | ShardPairs:
        if self.shards is not None:
            rank, world = self._rank_world()
            return ShardPairs(
                self.shards,
                split,
                self._transform(train),
                sample_sentence=self.data.sample_sentence and train,
                label_source=self.label_source,
                sentences=self.data.sentences,
                seed=self.seed,
                batch_size=self.data.batch_size,
                shuffle=train,
                rank=rank,
                world=world,
            )
        return ImageTextDataset(
            self.manifest.split(split),
            self._transform(train),
            split_sentences=split_sentences,
            sample_sentence=self.data.sample_sentence and train,
            label_source=self.label_source,
            cache_images=self.data.cache_images,
            sentences=self.data.sentences,
        )

    def setup(self, stage: str | None = None) -> None:
        self.train_set = self._dataset("train", train=True)
        self.valid_set = self._dataset("valid", train=False)

    def _loader(self, dataset: ImageTextDataset | ShardPairs, train: bool) -> DataLoader:
        workers = self.data.num_workers
        # A loader draws its workers' base seed from `generator` each time it is iterated; from the
        # global generator, that draw would move the dropout stream at each epoch's (and each
        # validation's) start, so a run resumed mid-epoch, which iterates its loader again after
        # the checkpoint's random state is restored, would draw other dropout masks. The data do
        # not depend on these seeds: every sample is drawn from its own (see `EpochSampler`).
        common = dict(num_workers=workers, collate_fn=collate_pairs, generator=torch.Generator().manual_seed(self.seed))
        if isinstance(dataset, ShardPairs):  # batches are formed in the stream
            epoch, skip = self._resume_point(len(dataset) * self.data.batch_size) if train and self.trainer else (0, 0)
            return StreamLoader(dataset, epoch, skip, batch_size=None, **common)
        rank, world = self._rank_world()
        sampler = EpochSampler(len(dataset), self.data.batch_size, self.seed, shuffle=train, rank=rank, world=world)
        if train and self.trainer is not None:
            sampler.resume_at(*self._resume_point(len(sampler)))
        return DataLoader(
            dataset, batch_size=self.data.batch_size, sampler=sampler, persistent_workers=workers > 0, **common
        )

    def _resume_point(self, per_rank_samples: int) -> tuple[int, int]:
        """(epoch, batches already trained in it) from the restored optimizer step count."""
        trainer = self.trainer
        batches = -(-per_rank_samples // self.data.batch_size)
        steps_per_epoch = max(1, -(-batches // trainer.accumulate_grad_batches))
        epoch, steps = divmod(trainer.global_step, steps_per_epoch)
        return epoch, steps * trainer.accumulate_grad_batches

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, train=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.valid_set, train=False)

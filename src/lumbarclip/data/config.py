"""`DataConfig`: how training reads its pairs. It lives in `data` so the data layer needs
nothing from `training` (which imports `data`, never the reverse)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class DataConfig:
    batch_size: int = 32  # per process: under DDP the global batch is batch_size x processes
    num_workers: int = 0
    augment: bool = True
    flip: bool = False
    sample_sentence: bool = True  # one report sentence per image per step, as the paper does
    cache_images: bool = True  # in-RAM image cache (small cohorts); shard folders always stream

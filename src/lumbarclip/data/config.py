"""`DataConfig`: how training reads its pairs. It lives in `data` so the data layer needs
nothing from `training` (which imports `data`, never the reverse)."""

from __future__ import annotations

from dataclasses import dataclass

SENTENCE_POOLS: tuple[str, ...] = ("report", "level", "relevant")
#: Soft-loss label vectors (`dataset.label_vector`); `loss.labels` in the training config.
LABEL_SOURCES: tuple[str, ...] = ("binary", "findings", "kinds", "level", "sentence")


@dataclass
class DataConfig:
    batch_size: int = 32  # per process: under DDP the global batch is batch_size x processes
    num_workers: int = 0
    augment: bool = True
    flip: bool = False
    sample_sentence: bool = True  # one report sentence per image per step, as the paper does
    # which sentences an image is paired with: "report" (any, the paper), "level" (those naming
    # the image's disc level, else those naming no level) or "relevant" (those naming the image's
    # level and those naming none, which speak for every level); see `dataset.sentence_pool`
    sentences: str = "report"
    cache_images: bool = True  # in-RAM image cache (small cohorts); shard folders always stream

    def __post_init__(self) -> None:
        if self.sentences not in SENTENCE_POOLS:
            raise ValueError(f"data.sentences must be one of {SENTENCE_POOLS}, got {self.sentences!r}")

"""Image-report pairs as tensors: one sentence of the patient's report sampled per image per step."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import Dataset

from lumbarclip.data.config import LABEL_SOURCES
from lumbarclip.data.imageio import load_image
from lumbarclip.data.manifest import ImageRecord
from lumbarclip.errors import InputError
from lumbarclip.findings import Findings, binary_label_vector, findings_vector
from lumbarclip.reports.levels import find_levels


def label_vector(record: ImageRecord, source: str) -> list[float]:
    """Soft-loss label vector of a record: `binary` (the paper's two classes, one-hot),
    `findings` (multi-hot over `FINDINGS_VECTOR_NAMES`: level x kind, side, severity),
    `kinds` (multi-hot over `LABEL_NAMES`, the union over levels) or `level` (the findings
    vector of the image's own level only: what one axial slice can show), from the findings JSON."""
    if source == "binary":
        return binary_label_vector(record.label)
    if source not in LABEL_SOURCES:
        raise ValueError(f"unknown label source {source!r}; use {', '.join(LABEL_SOURCES)}")
    if not record.findings:
        raise InputError(f"{record.image_path}: label source {source!r} needs a findings column")
    findings = Findings.from_json(record.findings)
    if source == "level":
        if not record.level:
            raise InputError(f"{record.image_path}: label source 'level' needs a level column")
        return findings_vector(Findings(levels={record.level: findings.level(record.level)}))
    return findings_vector(findings) if source == "findings" else findings.label_vector()


def sentence_pool(sentences: list[str], level: str = "") -> list[str]:
    """The sentences an image at `level` is paired with: those naming that level; failing that,
    those naming no level (general statements); failing that, all. No level: all sentences.
    An axial slice shows one disc, so a sentence about another level describes nothing in it."""
    if not level:
        return sentences
    named = [set(level_names(s)) for s in sentences]
    return (
        [s for s, n in zip(sentences, named) if level in n]
        or [s for s, n in zip(sentences, named) if not n]
        or sentences
    )


def level_names(text: str) -> list[str]:
    """The lumbar levels a text names (ranges expanded), in order."""
    return [name for mention in find_levels(text) for name in mention.lumbar]


@dataclass
class PairSample:
    image: torch.Tensor
    text: str
    label: int
    label_vec: torch.Tensor
    index: int


class ImageTextDataset(Dataset):
    """Pairs for contrastive training. `split_sentences` picks the sentence pool of a report,
    narrowed to the image's level with `level_sentences`; with `sample_sentence=False` the whole
    report is the text (evaluation, retrieval)."""

    def __init__(
        self,
        records: list[ImageRecord],
        transform: Callable[[np.ndarray], torch.Tensor],
        split_sentences: Callable[[str], list[str]] | None = None,
        sample_sentence: bool = True,
        label_source: str = "binary",
        cache_images: bool = True,
        level_sentences: bool = False,
    ) -> None:
        self.records = records
        self.transform = transform
        self.sample_sentence = sample_sentence and split_sentences is not None
        self.sentences = [
            sentence_pool(split_sentences(r.report) or [r.report], r.level if level_sentences else "")
            if split_sentences
            else [r.report]
            for r in records
        ]
        self.label_vecs = torch.tensor([label_vector(r, label_source) for r in records])
        self.cache: dict[int, np.ndarray] | None = {} if cache_images else None

    def __len__(self) -> int:
        return len(self.records)

    def pixels(self, index: int) -> np.ndarray:
        if self.cache is None:
            return load_image(self.records[index].image_path)
        if index not in self.cache:
            self.cache[index] = load_image(self.records[index].image_path)
        return self.cache[index]

    def __getitem__(self, key: int | tuple[int, int]) -> PairSample:
        """`index`, or `(index, seed)` from `EpochSampler`: the sample's own seed then drives its
        augmentation and sentence choice, so they do not depend on workers, ranks or a resume."""
        index, seed = key if isinstance(key, tuple) else (key, None)
        if seed is None:
            return self._sample(index)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return self._sample(index)

    def _sample(self, index: int) -> PairSample:
        record = self.records[index]
        pool = self.sentences[index]
        # torch's generator (seeded per sample, or per data-loader worker by Lightning; a Python
        # Random copied into each worker would repeat the same choices in every worker)
        text = pool[int(torch.randint(len(pool), ()))] if self.sample_sentence else record.report
        return PairSample(self.transform(self.pixels(index)), text, record.label, self.label_vecs[index], index)


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """The seed of one sample in one epoch of one run (independent streams per triple)."""
    return int(np.random.SeedSequence([seed, epoch, index]).generate_state(1)[0])


def collate_pairs(samples: list[PairSample]) -> dict[str, object]:
    return {
        "images": torch.stack([s.image for s in samples]),
        "texts": [s.text for s in samples],
        "labels": torch.tensor([s.label for s in samples]),
        "label_vecs": torch.stack([s.label_vec for s in samples]),
        "indices": torch.tensor([s.index for s in samples]),
    }

"""Image-report pairs as tensors: one sentence of the patient's report sampled per image per step."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch
from torch.utils.data import Dataset

from lumbarclip.data.config import LABEL_SOURCES
from lumbarclip.data.imageio import load_image
from lumbarclip.data.manifest import ImageRecord
from lumbarclip.errors import InputError
from lumbarclip.findings import LEVEL_KINDS, Findings, binary_label_vector, findings_vector, level_kinds
from lumbarclip.reports.sentences import split_sentences as split_report
from lumbarclip.reports.levels import find_levels
from lumbarclip.reports.statements import Statement, sentence_statements, statement_vector


def label_vector(record: ImageRecord, source: str) -> list[float]:
    """Soft-loss label vector of a record's image: `binary` (the paper's two classes, one-hot),
    `findings` (multi-hot over `FINDINGS_VECTOR_NAMES`: level x kind, side, severity),
    `kinds` (multi-hot over `LABEL_NAMES`, the union over levels), `level` (the findings
    vector of the image's own level only: what one axial slice can show) or `sentence` (0/1 over
    `LEVEL_KINDS` at the image's level, scored against each sentence's own statements, see
    `text_label_vector`), from the findings JSON."""
    if source == "binary":
        return binary_label_vector(record.label)
    if source not in LABEL_SOURCES:
        raise ValueError(f"unknown label source {source!r}; use {', '.join(LABEL_SOURCES)}")
    if not record.findings:
        raise InputError(f"{record.image_path}: label source {source!r} needs a findings column")
    findings = Findings.from_json(record.findings)
    if source in ("level", "sentence"):
        if not record.level:
            raise InputError(f"{record.image_path}: label source {source!r} needs a level column")
        if source == "sentence":
            kinds = level_kinds(findings.level(record.level))
            return [1.0 if kind in kinds else 0.0 for kind in LEVEL_KINDS]
        return findings_vector(Findings(levels={record.level: findings.level(record.level)}))
    return findings_vector(findings) if source == "findings" else findings.label_vector()


@lru_cache(maxsize=65536)
def _statements(text: str) -> tuple[Statement, ...]:
    """A text's statements, sentence by sentence (notes repeat sentences: parse each once)."""
    return tuple(s for sentence in split_report(text) or [text] for s in sentence_statements(sentence))


def text_label_vector(text: str, record: ImageRecord, source: str) -> list[float]:
    """The label vector of the text side of a pair. For `sentence`, what this text states at the
    image's level (+1 present, -1 denied, 0 not stated; `reports.statements`), so "No disc
    bulge" is a negative target for a bulging disc; for every other source, the image's vector."""
    if source != "sentence":
        return label_vector(record, source)
    if not record.level:
        raise InputError(f"{record.image_path}: label source 'sentence' needs a level column")
    return statement_vector(list(_statements(text)), record.level)


def sentence_pool(sentences: list[str], level: str = "", pool: str = "level") -> list[str]:
    """The sentences an image at `level` is paired with. `level`: those naming that level;
    failing that, those naming no level (general statements); failing that, all. `relevant`:
    those naming that level and those naming none (a general statement speaks for every level);
    failing that, all. No level, or `report`: all sentences. An axial slice shows one disc, so a
    sentence about another level describes nothing in it."""
    if not level or pool == "report":
        return sentences
    named = [set(level_names(s)) for s in sentences]
    if pool == "relevant":
        return [s for s, n in zip(sentences, named) if level in n or not n] or sentences
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
    text_vec: torch.Tensor  # the text side's label vector (`text_label_vector`)


class ImageTextDataset(Dataset):
    """Pairs for contrastive training. `split_sentences` picks the sentence pool of a report,
    narrowed to the image's level by `sentences` (`sentence_pool`); with `sample_sentence=False`
    the whole report is the text (evaluation, retrieval)."""

    def __init__(
        self,
        records: list[ImageRecord],
        transform: Callable[[np.ndarray], torch.Tensor],
        split_sentences: Callable[[str], list[str]] | None = None,
        sample_sentence: bool = True,
        label_source: str = "binary",
        cache_images: bool = True,
        sentences: str = "report",
    ) -> None:
        self.records = records
        self.transform = transform
        self.sample_sentence = sample_sentence and split_sentences is not None
        self.label_source = label_source
        self.sentences = [
            sentence_pool(split_sentences(r.report) or [r.report], r.level, sentences)
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
        image_vec = self.label_vecs[index]
        text_vec = (
            torch.tensor(text_label_vector(text, record, self.label_source))
            if self.label_source == "sentence"
            else image_vec
        )
        return PairSample(self.transform(self.pixels(index)), text, record.label, image_vec, index, text_vec)


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """The seed of one sample in one epoch of one run (independent streams per triple)."""
    return int(np.random.SeedSequence([seed, epoch, index]).generate_state(1)[0])


def collate_pairs(samples: list[PairSample]) -> dict[str, object]:
    return {
        "images": torch.stack([s.image for s in samples]),
        "texts": [s.text for s in samples],
        "labels": torch.tensor([s.label for s in samples]),
        "label_vecs": torch.stack([s.label_vec for s in samples]),
        "text_label_vecs": torch.stack([s.text_vec for s in samples]),
        "indices": torch.tensor([s.index for s in samples]),
    }

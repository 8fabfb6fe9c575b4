"""WebDataset shards: a manifest's images decoded once into tar files that training streams,
for cohorts larger than RAM (the format open_clip uses at scale).

`write_shards(manifest, folder)` writes `train-000000.tar`, ..., `valid-...`, `test-...` and
`shards.json` (what each shard holds). A sample is `KEY.png` (the decoded image, [0, 1] scaled
to 16-bit grey: the in-RAM path's float32 within 1/65535) and `KEY.json` (patient, label,
report, sequence, level, findings; never the image's file path). `ShardPairs` streams one split
of such a folder: shards in a seeded order, a bounded shuffle buffer, one sample decoded at a
time, so memory does not grow with the cohort.
"""

from __future__ import annotations

import io
import itertools
import json
import random
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import IterableDataset
from tqdm.auto import tqdm

from lumbarclip.errors import InputError

INDEX_FILE = "shards.json"
SHARD_SPLITS: tuple[str, ...] = ("train", "valid", "test")


def is_shard_folder(path: str | Path) -> bool:
    return (Path(path) / INDEX_FILE).is_file()


def read_shard_index(folder: str | Path) -> dict:
    path = Path(folder) / INDEX_FILE
    if not path.is_file():
        raise InputError(f"{folder}: not a shard folder (no {INDEX_FILE}; write one with `lumbarclip data shard`)")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise InputError(f"{path}: invalid JSON ({err})") from None


def _png16(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.round(np.clip(pixels, 0.0, 1.0) * 65535).astype(np.uint16)).save(buffer, format="PNG")
    return buffer.getvalue()


def _unpng16(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)), dtype=np.float32) / 65535.0


def write_shards(
    manifest: str | Path, out_dir: str | Path, shard_size: int = 2000, overwrite: bool = False, progress: bool = True
) -> dict:
    """Decode every image of the manifest once and write WebDataset shards + `shards.json`.
    A patient in two splits is refused; an unreadable image is skipped and counted."""
    import webdataset as wds

    from lumbarclip.data.imageio import load_image
    from lumbarclip.data.manifest import check_patient_overlap, read_manifest

    if shard_size < 1:
        raise InputError(f"shard size must be at least 1; got {shard_size}")
    m = read_manifest(manifest)
    check_patient_overlap(m)
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise InputError(f"{out}: not empty; choose another --out or pass --overwrite")
    out.mkdir(parents=True, exist_ok=True)
    for old in [*out.glob("*.tar"), out / INDEX_FILE]:
        old.unlink(missing_ok=True)
    index: dict = {"format": "lumbarclip-webdataset-1", "manifest": str(m.path.resolve()), "splits": {},
                   "skipped_rows": len(m.skipped), "unreadable": []}
    bar = tqdm(total=len(m.records), desc="sharding", unit="image", disable=not progress)
    for split in SHARD_SPLITS:
        records = m.split(split)
        shards: list[dict] = []
        written = 0
        for start in range(0, len(records), shard_size):
            name = f"{split}-{len(shards):06d}.tar"
            first, count = written, 0
            with wds.TarWriter(str(out / name)) as sink:
                for record in records[start : start + shard_size]:
                    bar.update()
                    try:
                        pixels = load_image(record.image_path)
                    except InputError as err:
                        index["unreadable"].append(str(err))
                        continue
                    meta = {
                        "patient_id": record.patient_id,
                        "label": record.label,
                        "report": record.report,
                        "sequence": record.sequence,
                        "level": record.level,
                        "findings": record.findings,
                    }
                    sink.write({"__key__": f"{written:09d}", "png": _png16(pixels), "json": json.dumps(meta).encode()})
                    written, count = written + 1, count + 1
            shards.append({"file": name, "first": first, "count": count})
        if records:
            index["splits"][split] = {
                "images": written,
                "patients": len({r.patient_id for r in records}),
                "shards": shards,
            }
    bar.close()
    (out / INDEX_FILE).write_text(json.dumps(index, indent=2) + "\n")
    return index


class ShardPairs(IterableDataset):
    """One split of a shard folder as a stream of collated-ready pair batches.

    Every process reads the same shards in the same (seeded, per-epoch) order, the data
    workers split the shards between them, and inside each shard a process keeps every
    `world`-th sample, cut to equal counts, so all processes get the same number of batches.
    Samples are augmented from their own seed, as in the in-RAM path.
    """

    def __init__(
        self,
        folder: str | Path,
        split: str,
        transform: Callable[[np.ndarray], torch.Tensor],
        sample_sentence: bool = True,
        label_source: str = "binary",
        sentences: str = "report",
        seed: int = 0,
        batch_size: int = 32,
        shuffle: bool = True,
        rank: int = 0,
        world: int = 1,
        buffer: int = 1000,
    ) -> None:
        self.folder = Path(folder)
        info = read_shard_index(folder)["splits"].get(split)
        if not info or not info["images"]:
            raise InputError(f"{folder}: no {split!r} images in these shards")
        self.shards = info["shards"]
        self.transform, self.sample_sentence, self.label_source = transform, sample_sentence, label_source
        self.sentences = sentences
        self.seed, self.batch_size, self.shuffle, self.buffer = seed, batch_size, shuffle, buffer
        self.rank, self.world = rank, world
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        """Batches per process and epoch (an upper bound when several workers each end on a
        part batch)."""
        per_rank = sum(s["count"] // self.world for s in self.shards)
        return per_rank // self.batch_size if self.shuffle else -(-per_rank // self.batch_size)

    def _mine(self, samples: Iterator[dict]) -> Iterator[dict]:
        """This process's samples of each shard: every `world`-th one, cut (training) or padded
        with a repeat (validation, which drops repeats by index) to the same count on every rank."""
        starts = {str(self.folder / s["file"]): (s["first"], s["count"]) for s in self.shards}
        for url, group in itertools.groupby(samples, key=lambda sample: sample["__url__"]):
            first, count = starts[url]
            keep = count // self.world if self.shuffle else -(-count // self.world)
            kept, last = 0, None
            for sample in group:
                last = last or sample
                if (int(sample["__key__"]) - first) % self.world == self.rank and kept < keep:
                    yield sample
                    kept, last = kept + 1, sample
            for _ in range(keep - kept):
                yield last

    def _pair(self, sample: dict):
        from lumbarclip.data.dataset import PairSample, label_vector, sample_seed, sentence_pool, text_label_vector
        from lumbarclip.data.manifest import ImageRecord
        from lumbarclip.reports import split_sentences

        meta = json.loads(sample["json"])
        index = int(sample["__key__"])
        record = ImageRecord(Path(sample["__key__"]), meta["patient_id"], "", int(meta["label"]), meta["report"],
                             meta.get("sequence", ""), meta.get("level", ""), meta.get("findings", ""))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(sample_seed(self.seed, self.epoch if self.shuffle else 0, index))
            text = record.report
            if self.sample_sentence:
                pool = sentence_pool(split_sentences(record.report) or [record.report], record.level, self.sentences)
                text = pool[int(torch.randint(len(pool), ()))]
            image = self.transform(_unpng16(sample["png"]))
        vec = torch.tensor(label_vector(record, self.label_source))
        text_vec = torch.tensor(text_label_vector(text, record, self.label_source)) if self.label_source == "sentence" else vec
        return PairSample(image, text, record.label, vec, index, text_vec)

    def __iter__(self) -> Iterator[list]:
        import webdataset as wds

        urls = [str(self.folder / s["file"]) for s in self.shards]
        if self.shuffle:
            random.Random(self.seed * 100_003 + self.epoch).shuffle(urls)
        stages = [wds.SimpleShardList(urls), wds.split_by_worker, wds.tarfile_to_samples(), self._mine]
        if self.shuffle:
            stages.append(wds.shuffle(self.buffer, initial=self.buffer, seed=self.seed * 100_003 + self.epoch))
        stages += [wds.map(self._pair), wds.batched(self.batch_size, collation_fn=list, partial=not self.shuffle)]
        return iter(wds.DataPipeline(*stages))

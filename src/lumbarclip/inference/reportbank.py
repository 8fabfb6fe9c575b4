"""Report bank: the training reports' texts and text embeddings, stored beside the model, so a
new scan can be shown the most similar reports the model was trained on.

Files: `reportbank.safetensors` (embeddings [R, D], labels [R]) and `reportbank.jsonl` (one
`{"text", "label"}` per report, in the same order). Real reports can hold names, dates or other
identifiers and the text is stored AS GIVEN, so a bank is only built when asked for
(`lumbarclip evaluate --report-bank`); do not share a model folder holding a bank built from
patient reports you may not share.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file, save_file

from lumbarclip.errors import InputError

BANK_ARRAYS = "reportbank.safetensors"
BANK_TEXTS = "reportbank.jsonl"


@dataclass
class ReportBank:
    embeddings: np.ndarray  # [R, D] unit rows
    texts: list[str]
    labels: np.ndarray  # [R] 0 normal / 1 abnormal (the report's patient label)

    def __post_init__(self) -> None:
        self.embeddings = np.asarray(self.embeddings, dtype=np.float32)
        self.labels = np.asarray(self.labels, dtype=np.int64)
        if not (len(self.embeddings) == len(self.texts) == len(self.labels)):
            raise ValueError("report bank: embeddings, texts and labels differ in length")

    def __len__(self) -> int:
        return len(self.texts)

    def nearest(self, image_embeddings: np.ndarray, k: int) -> list[list[dict[str, object]]]:
        """Per image embedding, the `k` reports of highest cosine similarity, best first."""
        sims = np.asarray(image_embeddings, dtype=np.float32) @ self.embeddings.T
        k = min(k, len(self))
        order = np.argsort(-sims, axis=1, kind="stable")[:, :k]
        return [
            [{"text": self.texts[j], "score": round(float(row[j]), 4), "label": int(self.labels[j])} for j in idx]
            for row, idx in zip(sims, order)
        ]

    def top1_labels(self, image_embeddings: np.ndarray) -> np.ndarray:
        """[N] the label of each image's most similar report."""
        sims = np.asarray(image_embeddings, dtype=np.float32) @ self.embeddings.T
        return self.labels[np.argmax(sims, axis=1)]

    def save(self, model_dir: str | Path) -> Path:
        model_dir = Path(model_dir)
        save_file({"embeddings": self.embeddings, "labels": self.labels}, str(model_dir / BANK_ARRAYS))
        with (model_dir / BANK_TEXTS).open("w", encoding="utf-8") as fh:
            for text, label in zip(self.texts, self.labels):
                fh.write(json.dumps({"text": text, "label": int(label)}, ensure_ascii=False) + "\n")
        return model_dir / BANK_ARRAYS

    @classmethod
    def load(cls, model_dir: str | Path) -> ReportBank | None:
        """The folder's bank, or None when it has none (a bank is optional)."""
        model_dir = Path(model_dir)
        arrays_path, texts_path = model_dir / BANK_ARRAYS, model_dir / BANK_TEXTS
        if not arrays_path.is_file() and not texts_path.is_file():
            return None
        if not (arrays_path.is_file() and texts_path.is_file()):
            raise InputError(f"{model_dir}: report bank incomplete (needs {BANK_ARRAYS} and {BANK_TEXTS})")
        arrays = load_file(str(arrays_path))
        texts = [json.loads(line)["text"] for line in texts_path.read_text(encoding="utf-8").splitlines() if line]
        return cls(arrays["embeddings"], texts, arrays["labels"])


def build_report_bank(model: object, texts: Sequence[str], labels: Sequence[int], batch_size: int = 64) -> ReportBank:
    """Embed each report once with the model's text tower."""
    from lumbarclip.inference.embed import embed_texts

    return ReportBank(embed_texts(model, list(texts), batch_size), list(texts), np.asarray(labels))  # type: ignore[arg-type]

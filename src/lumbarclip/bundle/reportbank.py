"""Report bank: the training reports' texts and text embeddings, stored beside the model, so a
new scan can be shown the most similar reports the model was trained on.

Stored as arrays (embeddings [R, D], labels [R]) with the source in their metadata, and one
`{"text", "label"}` JSON line per report in the same order. Real reports can hold names, dates
or other identifiers and the text is stored AS GIVEN, so a bank is only built when asked for
(`lumbarclip evaluate --report-bank`); do not share a model folder holding a bank built from
patient reports you may not share.

Each bank records where its texts came from (`source`, in the safetensors metadata):
`SYNTHETIC_REPORTS` only when they are the notes `lumbarclip synth` wrote for its own cohort,
`USER_REPORTS` for anything else, including a bank that records no source, so the web service can keep user reports off unless asked (`lumbarclip serve --show-reports`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np

#: `ReportBank.source` values: notes of the built-in synthetic writer, or anything else.
SYNTHETIC_REPORTS, USER_REPORTS = "synthetic", "user"


@dataclass
class ReportBank:
    embeddings: np.ndarray  # [R, D] unit rows
    texts: list[str]
    labels: np.ndarray  # [R] 0 normal / 1 abnormal (the report's patient label)
    source: str = USER_REPORTS  # SYNTHETIC_REPORTS or USER_REPORTS

    def __post_init__(self) -> None:
        self.embeddings = np.asarray(self.embeddings, dtype=np.float32)
        self.labels = np.asarray(self.labels, dtype=np.int64)
        if not (len(self.embeddings) == len(self.texts) == len(self.labels)):
            raise ValueError("report bank: embeddings, texts and labels differ in length")
        if self.source not in (SYNTHETIC_REPORTS, USER_REPORTS):
            raise ValueError(f"report bank: source must be {SYNTHETIC_REPORTS!r} or {USER_REPORTS!r}, got {self.source!r}")

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

    def to_state(self) -> tuple[dict[str, np.ndarray], dict[str, str], list[str]]:
        """(arrays, their metadata, JSON lines of the texts) as the model folder stores them."""
        lines = [json.dumps({"text": t, "label": int(lab)}, ensure_ascii=False) for t, lab in zip(self.texts, self.labels)]
        return {"embeddings": self.embeddings, "labels": self.labels}, {"source": self.source}, lines

    @classmethod
    def from_state(cls, arrays: dict[str, np.ndarray], metadata: dict[str, str], lines: list[str]) -> ReportBank:
        """Inverse of `to_state`. A bank whose source is not recorded as synthetic is taken as user reports."""
        source = SYNTHETIC_REPORTS if metadata.get("source") == SYNTHETIC_REPORTS else USER_REPORTS
        texts = [json.loads(line)["text"] for line in lines if line]
        return cls(arrays["embeddings"], texts, arrays["labels"], source)

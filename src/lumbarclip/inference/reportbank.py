"""Report bank: the training reports' texts and text embeddings, stored beside the model, so a
new scan can be shown the most similar reports the model was trained on.

Files: `reportbank.safetensors` (embeddings [R, D], labels [R]) and `reportbank.jsonl` (one
`{"text", "label"}` per report, in the same order). Real reports can hold names, dates or other
identifiers and the text is stored AS GIVEN, so a bank is only built when asked for
(`lumbarclip evaluate --report-bank`); do not share a model folder holding a bank built from
patient reports you may not share.

Each bank records where its texts came from (`source`, in the safetensors metadata):
`SYNTHETIC_REPORTS` only when they are the notes `lumbarclip synth` wrote for its own cohort,
`USER_REPORTS` for anything else, including banks written before the source was recorded, so
the web service can keep user reports off unless asked (`lumbarclip serve --show-reports`).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from safetensors import safe_open
from safetensors.numpy import load_file, save_file

from lumbarclip.errors import InputError

BANK_ARRAYS = "reportbank.safetensors"
BANK_TEXTS = "reportbank.jsonl"
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

    def save(self, model_dir: str | Path) -> Path:
        model_dir = Path(model_dir)
        save_file(
            {"embeddings": self.embeddings, "labels": self.labels}, str(model_dir / BANK_ARRAYS),
            metadata={"source": self.source},
        )
        with (model_dir / BANK_TEXTS).open("w", encoding="utf-8") as fh:
            for text, label in zip(self.texts, self.labels):
                fh.write(json.dumps({"text": text, "label": int(label)}, ensure_ascii=False) + "\n")
        return model_dir / BANK_ARRAYS

    @classmethod
    def load(cls, model_dir: str | Path) -> ReportBank | None:
        """The folder's bank, or None when it has none (a bank is optional). A bank whose
        source is not recorded as synthetic is taken as user reports."""
        model_dir = Path(model_dir)
        arrays_path, texts_path = model_dir / BANK_ARRAYS, model_dir / BANK_TEXTS
        if not arrays_path.is_file() and not texts_path.is_file():
            return None
        if not (arrays_path.is_file() and texts_path.is_file()):
            raise InputError(f"{model_dir}: report bank incomplete (needs {BANK_ARRAYS} and {BANK_TEXTS})")
        arrays = load_file(str(arrays_path))
        with safe_open(str(arrays_path), framework="np") as fh:
            recorded = (fh.metadata() or {}).get("source")
        source = SYNTHETIC_REPORTS if recorded == SYNTHETIC_REPORTS else USER_REPORTS
        texts = [json.loads(line)["text"] for line in texts_path.read_text(encoding="utf-8").splitlines() if line]
        return cls(arrays["embeddings"], texts, arrays["labels"], source)


def build_report_bank(
    model: object, texts: Sequence[str], labels: Sequence[int], batch_size: int = 64, source: str = USER_REPORTS
) -> ReportBank:
    """Embed each report once with the model's text tower; `source` as `reports_source` found it."""
    from lumbarclip.inference.embed import embed_texts

    return ReportBank(embed_texts(model, list(texts), batch_size), list(texts), np.asarray(labels), source)  # type: ignore[arg-type]


def reports_source(manifest_path: str | Path, reports: Iterable[tuple[str, str]]) -> str:
    """SYNTHETIC_REPORTS when every (patient_id, report) is a note `lumbarclip synth` wrote for
    the cohort of `manifest_path` (its findings.jsonl beside it, no `parsed` field: a twin's
    findings.jsonl carries real notes and has one); USER_REPORTS otherwise, so that text of
    unknown origin is handled as a user's."""
    cohort = Path(manifest_path).parent / "findings.jsonl"
    try:
        records = [json.loads(line) for line in cohort.read_text(encoding="utf-8").splitlines() if line.strip()]
        written = {(str(r["patient_id"]), r["report"]) for r in records if "parsed" not in r}
    except (OSError, ValueError, TypeError, KeyError):
        return USER_REPORTS
    if len(written) != len(records):
        return USER_REPORTS
    wanted = set(reports)
    return SYNTHETIC_REPORTS if wanted and wanted <= written else USER_REPORTS

"""Building a report bank (`lumbarclip.bundle.ReportBank`): the training reports embedded by the
model's text tower, and where their texts came from (`reports_source`).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from lumbarclip.bundle.reportbank import SYNTHETIC_REPORTS, USER_REPORTS, ReportBank


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

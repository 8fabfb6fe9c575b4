"""Checks that make a misleading evaluation impossible to miss; `evaluate` runs them first
and the report shows them first.

Fatal (an `InputError`): a patient in more than one split, or an evaluation split whose
patients the model was pre-trained on. Warnings: a classifier that reads text at test time
(the failure of the paper's best model), a split with one class, a zero-shot prompt that
is a verbatim report of the evaluated split, selection and scoring on the same split.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from itertools import combinations
from pathlib import Path

from lumbarclip.data.manifest import SPLITS, ImageRecord
from lumbarclip.errors import InputError

#: Test-time inputs a classifier may have without a warning; anything else is text about the case.
IMAGE_ONLY_INPUTS: frozenset[str] = frozenset({"image", "class prompts"})


def _patients(records: Iterable[ImageRecord], split: str) -> set[str]:
    return {r.patient_id for r in records if r.split == split}


def check_patient_overlap(records: list[ImageRecord], source: str | Path) -> dict[str, int]:
    """Patients shared by each pair of splits; raises `InputError` naming them when any are."""
    overlap = {}
    for a, b in combinations(SPLITS, 2):
        shared = sorted(_patients(records, a) & _patients(records, b))
        if shared:
            named = ", ".join(shared[:5]) + (f" and {len(shared) - 5} more" if len(shared) > 5 else "")
            raise InputError(f"{source}: patient(s) {named} appear in both {a} and {b}; splits must be patient-disjoint")
        overlap[f"{a}/{b}"] = 0
    return overlap


def check_pretraining_overlap(pretrain_patients: set[str], records: list[ImageRecord], split: str, source: str | Path) -> None:
    """Refuse to score a model on patients it saw during contrastive pre-training."""
    shared = sorted(pretrain_patients & _patients(records, split))
    if shared:
        raise InputError(
            f"{source}: {len(shared)} {split} patient(s) (e.g. {shared[0]}) were in the model's training data"
        )


def class_balance(records: list[ImageRecord]) -> dict[str, dict[str, float | int]]:
    """Per split: images, patients, normal and abnormal patients, abnormal fraction (patients)."""
    out: dict[str, dict[str, float | int]] = {}
    for split in SPLITS:
        rows = [r for r in records if r.split == split]
        by_patient: dict[str, int] = {}
        for r in rows:
            by_patient[r.patient_id] = max(by_patient.get(r.patient_id, 0), r.label)
        abnormal = sum(by_patient.values())
        out[split] = {
            "images": len(rows),
            "patients": len(by_patient),
            "normal_patients": len(by_patient) - abnormal,
            "abnormal_patients": abnormal,
            "abnormal_fraction": abnormal / len(by_patient) if by_patient else 0.0,
        }
    return out


def integrity_checks(
    records: list[ImageRecord],
    source: str | Path,
    split: str,
    classifier_inputs: Mapping[str, Iterable[str]],
    prompts: Mapping[int, list[str]] | None = None,
    pretrain_patients: set[str] | None = None,
    skipped_rows: int = 0,
) -> dict[str, object]:
    """Run every check; fatal ones raise, the rest become `warnings` in the returned dict."""
    overlap = check_patient_overlap(records, source)
    if pretrain_patients is not None:
        check_pretraining_overlap(pretrain_patients, records, split, source)
    balance = class_balance(records)
    warnings = []
    for name, inputs in classifier_inputs.items():
        text = sorted(set(inputs) - IMAGE_ONLY_INPUTS)
        if text:
            warnings.append(f"classifier {name} reads {', '.join(text)} at test time: it does not measure image-only diagnosis")
    for name, counts in balance.items():
        if counts["patients"] == 0:
            warnings.append(f"split {name} is empty")
        elif counts["normal_patients"] == 0 or counts["abnormal_patients"] == 0:
            warnings.append(f"split {name} has one class only: AUROC/AUPRC are undefined there")
    reports = {r.report.strip() for r in records if r.split == split}
    copied = sorted({p for plist in (prompts or {}).values() for p in plist if p.strip() in reports})
    if copied:
        warnings.append(f"{len(copied)} zero-shot prompt(s) are verbatim {split} reports, e.g. {copied[0]!r}")
    if split == "valid":
        warnings.append("scoring on the valid split, where thresholds and C were chosen: scores are optimistic")
    if skipped_rows:
        warnings.append(f"{skipped_rows} manifest row(s) were skipped (see the manifest check)")
    return {
        "patient_overlap": overlap,
        "pretraining_overlap_checked": pretrain_patients is not None,
        "class_balance": balance,
        "classifier_inputs": {k: sorted(v) for k, v in classifier_inputs.items()},
        "warnings": warnings,
    }

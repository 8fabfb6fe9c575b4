"""Checks that make a misleading evaluation impossible to miss; `evaluate` runs them first
and the report shows them first.

Fatal (an `InputError`): a patient in more than one split, or an evaluated split holding
patients the model was pre-trained on (matched on the sha256 digests of patient ids that
`train` records in train_summary.json, so the check survives a moved or edited manifest).
Warnings: a pre-training overlap that could not be checked (no train_summary.json or no
digests in it), a classifier that reads text at test time (the failure of the paper's best
model), an empty or one-class split, a zero-shot prompt that is a verbatim report of the
evaluated split, a per-finding prompt that equals a sentence of a training report (the text
tower would recognise it rather than read it), scoring on the split used for selection,
skipped manifest rows.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from lumbarclip.data.manifest import Manifest, check_manifest, check_patient_overlap, read_manifest
from lumbarclip.data.privacy import TRAIN_PATIENTS_KEY, hash_patient_id, hash_patient_ids
from lumbarclip.errors import InputError

#: Test-time inputs a classifier may have without a warning; anything else is text about the case.
IMAGE_ONLY_INPUTS: frozenset[str] = frozenset({"image", "class prompts"})


@dataclass(frozen=True)
class TrainingPatients:
    """What a run folder says about the patients its model was trained on: their hashed ids
    (None when unknown) and, when the check is weaker or impossible, a warning for the user."""

    hashes: frozenset[str] | None
    warning: str | None = None

    @classmethod
    def from_run(cls, run_root: Path) -> TrainingPatients:
        """From RUN/train_summary.json: its hashed ids, else the train split of the manifest it
        names (as that file is now, which may have changed), else unknown."""
        summary_path = run_root / "train_summary.json"
        unchecked = "overlap of the evaluated patients with the model's training patients NOT checked"
        if not summary_path.is_file():
            return cls(None, f"{summary_path} not found: {unchecked}")
        summary = json.loads(summary_path.read_text())
        if summary.get(TRAIN_PATIENTS_KEY) is not None:
            return cls(frozenset(summary[TRAIN_PATIENTS_KEY]))
        source = summary.get("manifest")
        if not source or not Path(source).is_file():
            return cls(
                None, f"{summary_path} records no hashed training patient ids and no readable manifest: {unchecked}"
            )
        records = read_manifest(source, check_files=False).records
        return cls(
            frozenset(hash_patient_ids(r.patient_id for r in records if r.split == "train")),
            f"{summary_path} records no hashed training patient ids: overlap checked against the train "
            f"split of {source} as it is now, which may differ from what the model was trained on",
        )


def check_pretraining_overlap(
    pretrain_patients: Iterable[str], manifest: Manifest, split: str, hashed: bool = False
) -> None:
    """Refuse to score a model on patients it saw during contrastive pre-training;
    `hashed`: `pretrain_patients` are `hash_patient_ids` digests rather than ids."""
    known = set(pretrain_patients)
    shared = sorted(
        pid for pid in {r.patient_id for r in manifest.split(split)}
        if (hash_patient_id(pid) if hashed else pid) in known
    )  # fmt: skip
    if shared:
        raise InputError(
            f"{manifest.path}: {len(shared)} {split} patient(s) (e.g. {shared[0]}) "
            "were in the model's training data"
        )


def _sentence_key(text: str) -> str:
    return " ".join(text.lower().replace(".", " ").split())


def prompt_overlap(prompts: Iterable[str], reports: Iterable[str]) -> list[str]:
    """The prompts equal to a sentence (or the whole text) of one of `reports`, ignoring case,
    spacing and full stops."""
    from lumbarclip.reports import split_sentences

    seen: set[str] = set()
    for report in reports:
        seen.add(_sentence_key(report))
        seen.update(_sentence_key(s) for s in split_sentences(report))
    return sorted({p for p in prompts if _sentence_key(p) in seen})


def integrity_checks(
    manifest: Manifest,
    split: str,
    classifier_inputs: Mapping[str, Iterable[str]],
    prompts: Mapping[int, list[str]] | None = None,
    pretrain_patients: set[str] | None = None,
    finding_prompts: Iterable[str] | None = None,
    training: TrainingPatients | None = None,
) -> dict[str, object]:
    """Run every check; fatal ones raise, the rest become `warnings` in the returned dict.
    `pretrain_patients` (ids) and `training` (a run's hashed ids) both name training patients."""
    overlap = check_patient_overlap(manifest)
    if pretrain_patients is not None:
        check_pretraining_overlap(pretrain_patients, manifest, split)
    if training is not None and training.hashes is not None:
        check_pretraining_overlap(training.hashes, manifest, split, hashed=True)
    report = check_manifest(manifest)
    warnings = [training.warning] if training is not None and training.warning else []
    for name, inputs in classifier_inputs.items():
        text = sorted(set(inputs) - IMAGE_ONLY_INPUTS)
        if text:
            warnings.append(
                f"classifier {name} reads {', '.join(text)} at test time: "
                "it does not measure image-only diagnosis"
            )
    for name, counts in report.splits.items():
        if counts["patients"] == 0:
            warnings.append(f"split {name} is empty")
        elif counts["patients_normal"] == 0 or counts["patients_abnormal"] == 0:
            warnings.append(f"split {name} has one class only: AUROC/AUPRC are undefined there")
    reports = {r.report.strip() for r in manifest.split(split)}
    copied = sorted({p for plist in (prompts or {}).values() for p in plist if p.strip() in reports})
    if copied:
        warnings.append(f"{len(copied)} zero-shot prompt(s) are verbatim {split} reports, e.g. {copied[0]!r}")
    if finding_prompts is not None:
        clashes = prompt_overlap(finding_prompts, {r.report for r in manifest.split("train")})
        if clashes:
            warnings.append(
                f"{len(clashes)} per-finding prompt(s) equal a training report sentence, e.g. {clashes[0]!r}"
            )
    if split == "valid":
        warnings.append(
            "scoring on the valid split, where thresholds and C were chosen: scores are optimistic"
        )
    if report.skipped:
        warnings.append(f"{len(report.skipped)} manifest row(s) were skipped (see `lumbarclip data check`)")
    return {
        "patient_overlap": overlap,
        "pretraining_overlap_checked": pretrain_patients is not None
        or (training is not None and training.hashes is not None),
        "class_balance": report.splits,
        "skipped_rows": len(report.skipped),
        "classifier_inputs": {k: sorted(v) for k, v in classifier_inputs.items()},
        "warnings": warnings,
    }


def outcome_warnings(metrics: Mapping[str, object], main: str) -> list[str]:
    """Warnings read off the scores: a classifier that calls every image one class (its
    accuracy is the majority rate, the paper's zero-shot failure), a headline balanced accuracy
    whose 95% CI reaches chance, and a raw-pixel baseline that matches the model."""
    blocks = {main: metrics, **{k: metrics[k] for k in ("zero_shot", "finetune") if k in metrics}}
    blocks.update(metrics.get("baselines", {}))  # type: ignore[arg-type]
    warnings = []
    for name, block in blocks.items():
        called = [sum(col) for col in zip(*block["image"]["confusion_matrix"], strict=True)]
        if name != "majority" and min(called) == 0 and sum(called) > 0:
            which = "abnormal" if called[1] else "normal"
            warnings.append(f"{name} calls every image {which}: its accuracy is the majority rate")
    ci95 = metrics.get("ci95", {})
    for prefix, name in (("", main), ("zero_shot.", "zero_shot")):
        interval = ci95.get(f"{prefix}patient.balanced_accuracy")  # type: ignore[union-attr]
        if interval and interval[0] <= 0.5:
            warnings.append(
                f"{name} patient balanced accuracy 95% CI [{interval[0]:.2f}, {interval[1]:.2f}] "
                "reaches 0.5: not distinguishable from chance on this split"
            )
    pixels = blocks.get("raw_pixels")
    if pixels and (pixels["patient"]["balanced_accuracy"] or 0) >= (
        metrics["patient"]["balanced_accuracy"] or 0
    ):
        warnings.append(
            f"raw-pixel baseline matches or beats {main} per patient: the embeddings add nothing here"
        )
    return warnings

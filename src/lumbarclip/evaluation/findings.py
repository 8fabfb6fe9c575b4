"""Findings-level evaluation: per-finding AUROC of any scorer, the valid gate, the pixel
ceiling and the findings sets of retrieval.

The truth for an image is its patient's parsed findings at the image's own level
(`Findings.level(record.level)`); images without a level or findings are left out (counted).
Scores come from the zero-shot prompts (`lumbarclip.inference.findings.FindingClassifier`,
nothing fitted) or the model's finding head. Intervals: `metrics.bootstrap_ci` over patients
(a patient's images together).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

from lumbarclip.data.manifest import ImageRecord
from lumbarclip.evaluation.metrics import bootstrap_ci
from lumbarclip.evaluation.supervised import SupervisedConfig, classifier_proba, train_classifier
from lumbarclip.findings import LEVEL_KINDS, Findings, finding_set, level_kinds

#: Kinds with at least this many positive images enter the macro AUROC.
MIN_POSITIVES = 20


def record_findings(record: ImageRecord) -> Findings | None:
    return Findings.from_json(record.findings) if record.findings else None


def finding_sets(records: Sequence[ImageRecord]) -> list[frozenset[str]] | None:
    """Each record's findings as a "level:kind" set; None when any record lacks findings."""
    parsed = [record_findings(r) for r in records]
    return None if any(f is None for f in parsed) else [finding_set(f) for f in parsed]  # type: ignore[arg-type]


def level_truth(records: Sequence[ImageRecord], kinds: Sequence[str] = LEVEL_KINDS) -> tuple[np.ndarray, np.ndarray]:
    """([N, K] 0/1 truth of each kind at each image's level, [N] bool usable: level and findings known)."""
    truth = np.zeros((len(records), len(kinds)), dtype=int)
    usable = np.zeros(len(records), dtype=bool)
    for i, record in enumerate(records):
        findings = record_findings(record)
        if findings is None or not record.level:
            continue
        usable[i] = True
        present = level_kinds(findings.level(record.level))
        truth[i] = [kind in present for kind in kinds]
    return truth, usable


def _auroc(y: np.ndarray, p: np.ndarray) -> float | None:
    return float(roc_auc_score(y, p)) if 0 < y.sum() < len(y) else None


#: How the zero-shot prompts score a finding (the `rule` of their per-finding figures).
PROMPTS_RULE = (
    "P(finding) = softmax over (negative, positive) prompt ensembles at the image's level; "
    "truth = the patient's findings at that level"
)


def per_finding_scores(
    scores: dict[str, np.ndarray],
    records: Sequence[ImageRecord],
    n_resamples: int = 1000,
    seed: int = 0,
    min_positives: int = MIN_POSITIVES,
    rule: str = PROMPTS_RULE,
) -> dict[str, object]:
    """AUROC per finding kind of a scorer's `scores` (image level, each image at its level) with
    a 95% CI, counts, and the macro AUROC over kinds with >= `min_positives` positive images;
    `rule` says how the scores were made."""
    kinds = [k for k in LEVEL_KINDS if k in scores]
    truth, usable = level_truth(records, kinds)
    idx = np.flatnonzero(usable)
    patients = np.array([r.patient_id for r in records])[idx]
    pid, by_patient = np.unique(patients, return_inverse=True)
    members = [idx[by_patient == g] for g in range(len(pid))]

    def statistic(groups: np.ndarray) -> dict[str, float | None]:
        rows = np.concatenate([members[g] for g in groups]) if len(groups) else np.zeros(0, int)
        return {k: _auroc(truth[rows, j], scores[k][rows]) for j, k in enumerate(kinds)}

    point = statistic(np.arange(len(pid)))
    ci = bootstrap_ci(statistic, len(pid), n_resamples, seed) if len(pid) >= 2 else dict.fromkeys(kinds)
    per_kind = {}
    for j, kind in enumerate(kinds):
        positives = int(truth[idx, j].sum())
        per_kind[kind] = {
            "auroc": point[kind],
            "ci95": ci.get(kind),
            "positives": positives,
            "negatives": int(len(idx) - positives),
        }
    counted = [k for k in kinds if per_kind[k]["positives"] >= min_positives and per_kind[k]["auroc"] is not None]
    return {
        "per_kind": per_kind,
        "macro_auroc": float(np.mean([per_kind[k]["auroc"] for k in counted])) if counted else None,
        "macro_kinds": counted,
        "min_positives": min_positives,
        "n_images": int(len(idx)),
        "n_images_without_level_or_findings": int(len(records) - len(idx)),
        "rule": rule,
    }


#: A finding kind is shown by predict, the page and the SR only when its AUROC on the valid split
#: (by the chosen scorer) reaches this, measured on at least `MIN_VALID_POSITIVES` positive valid images.
MIN_VALID_AUROC = 0.80
MIN_VALID_POSITIVES = 10


def valid_gate(
    scores: dict[str, np.ndarray],
    records: Sequence[ImageRecord],
    min_auroc: float = MIN_VALID_AUROC,
    min_positives: int = MIN_VALID_POSITIVES,
) -> dict[str, object]:
    """Which finding kinds are validated: each kind's AUROC on the valid split (None when it has
    fewer than `min_positives` positive images there, too few to trust) against `min_auroc`."""
    kinds = [k for k in LEVEL_KINDS if k in scores]
    truth, usable = level_truth(records, kinds)
    auroc: dict[str, float | None] = {}
    positives: dict[str, int] = {}
    for j, kind in enumerate(kinds):
        y = truth[usable, j]
        positives[kind] = int(y.sum())
        auroc[kind] = _auroc(y, scores[kind][usable]) if y.sum() >= min_positives else None
    validated = [k for k in kinds if auroc[k] is not None and auroc[k] >= min_auroc]  # type: ignore[operator]
    return {
        "valid_auroc": auroc,
        "valid_positives": positives,
        "validated": validated,
        "not_validated": [k for k in kinds if k not in validated],
        "min_valid_auroc": min_auroc,
        "min_valid_positives": min_positives,
    }


def pixel_ceiling(
    train: tuple[torch.Tensor, Sequence[ImageRecord]],
    valid: tuple[torch.Tensor, Sequence[ImageRecord]],
    test: tuple[torch.Tensor, Sequence[ImageRecord]],
    tower: torch.nn.Module,
    config: SupervisedConfig,
    seed: int = 0,
    progress: bool = False,
    min_positives: int = MIN_POSITIVES,
) -> dict[str, object]:
    """What the pixels show of each finding: the vision tower (random init, the model's
    architecture and size) with one output per kind, trained on the train split's per-level
    truth (epoch kept by valid loss), scored on test. Its AUROC per kind bounds what an image
    embedding, and so zero-shot, can reach."""
    kinds = list(LEVEL_KINDS)
    parts = []
    for images, records in (train, valid, test):
        truth, usable = level_truth(records, kinds)
        parts.append((images[torch.from_numpy(usable)], truth[usable]))
    (x_tr, y_tr), (x_va, y_va), (x_te, y_te) = parts
    trained = [j for j in range(len(kinds)) if 0 < y_tr[:, j].sum() < len(y_tr)]
    module = train_classifier(tower, (x_tr, y_tr[:, trained]), (x_va, y_va[:, trained]), config, seed, progress)
    prob = classifier_proba(module, x_te).reshape(len(x_te), -1)
    per_kind = {}
    for col, j in enumerate(trained):
        per_kind[kinds[j]] = {"auroc": _auroc(y_te[:, j], prob[:, col]), "positives": int(y_te[:, j].sum())}
    counted = [k for k, v in per_kind.items() if v["positives"] >= min_positives and v["auroc"] is not None]
    return {
        "per_kind": per_kind,
        "macro_auroc": float(np.mean([per_kind[k]["auroc"] for k in counted])) if counted else None,
        "macro_kinds": counted,
        "n_train_images": int(len(x_tr)),
        "epochs": config.epochs,
        "rule": "the model's vision tower from random init with one sigmoid output per finding kind, trained "
        "on the train split's per-level truth (class-weighted BCE, epoch kept by valid loss), scored on test",
    }

"""Fitting and measuring the disc grader on the labelled boxes of a sagittal cohort.

For the linear sources of features (`lumbarclip.inference.grades.SOURCES`: "clip", "crop") a
multinomial logistic regression learns the Pfirrmann grade (train discs at L3-L4, L4-L5, L5-S1,
the graded levels) and one logistic regression per disc class learns the boxed classes (every
train disc); source "cnn" is a CNN trained on the crops (`lumbarclip.training.grader`) whose
heads are its linear models. Every source's grade probabilities are temperature-scaled on valid
(`calibrate`). The source with the highest mean valid linear-weighted kappa is kept. The gate: a level's Pfirrmann
grade is shown when its valid kappa reaches `KAPPA_GATE` (inter-reader agreement is about 0.6),
a class when its valid AUROC reaches `AUROC_GATE` (the per-finding gate). Test is scored once
for the kept source, per patient and level (the mean of the patient's slices' probabilities),
on the labelled boxes: this isolates grading from detection, which is scored apart.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, cohen_kappa_score, confusion_matrix, f1_score, roc_auc_score
from sklearn.preprocessing import StandardScaler
from scipy.optimize import minimize_scalar
from scipy.special import log_softmax
from tqdm import tqdm

from lumbarclip.data.discs import NAMED_LEVELS, labelled_slice
from lumbarclip.data.manifest import ImageRecord
from lumbarclip.decision import choose_f1_threshold
from lumbarclip.evaluation.metrics import expected_calibration_error
from lumbarclip.bundle.grader import DISC_CLASSES, PFIRRMANN, SOURCES, DiscGrader
from lumbarclip.inference.grades import disc_features
from lumbarclip.models.disc_cnn import DiscCNN

KAPPA_GATE = 0.6
AUROC_GATE = 0.80


@dataclass
class DiscTable:
    """One row per labelled disc of a split's slices: features, grade, classes, where it is."""

    features: np.ndarray  # [K, D]
    pfirrmann: np.ndarray  # [K], 0 where not graded
    classes: np.ndarray  # [K, C] 0/1
    levels: np.ndarray  # [K]
    patients: np.ndarray  # [K]


def disc_table(source: str, model: object, records: list[ImageRecord], size: int, progress: bool = False) -> DiscTable:
    rows: list[np.ndarray] = []
    grade, classes, levels, patients = [], [], [], []
    for record in tqdm(records, desc=f"disc features ({source})", unit="slice", disable=not progress, leave=False):
        read = labelled_slice(record, size)
        if read is None:
            continue
        model_input, boxes, discs = read
        rows.append(disc_features(source, model, model_input, boxes))
        for d in discs:
            grade.append(d.pfirrmann or 0)
            classes.append([float(c in d.classes) for c in DISC_CLASSES])
            levels.append(d.level)
            patients.append(record.patient_id)
    return DiscTable(np.concatenate(rows), np.array(grade), np.array(classes), np.array(levels), np.array(patients))


def _graded(t: DiscTable) -> np.ndarray:
    return (t.pfirrmann > 0) & np.isin(t.levels, NAMED_LEVELS)


def fit(train: DiscTable, source: str, size: int, seed: int = 0) -> DiscGrader:
    scaler = StandardScaler().fit(train.features)
    z = scaler.transform(train.features)
    graded = _graded(train)
    pf = LogisticRegression(C=0.05, max_iter=3000, class_weight="balanced", random_state=seed).fit(z[graded], train.pfirrmann[graded])
    coef = np.zeros((len(PFIRRMANN), z.shape[1]))
    intercept = np.full(len(PFIRRMANN), -1e3)  # a grade never seen in train is never predicted
    for row, grade in enumerate(pf.classes_):
        coef[PFIRRMANN.index(int(grade))], intercept[PFIRRMANN.index(int(grade))] = pf.coef_[row], pf.intercept_[row]
    ccoef, cint = np.zeros((len(DISC_CLASSES), z.shape[1])), np.full(len(DISC_CLASSES), -1e3)
    for j in range(len(DISC_CLASSES)):
        y = train.classes[:, j]
        if 0 < y.sum() < len(y):
            lr = LogisticRegression(C=0.05, max_iter=3000, class_weight="balanced", random_state=seed).fit(z, y)
            ccoef[j], cint[j] = lr.coef_[0], lr.intercept_[0]
    scale = np.where(scaler.scale_ > 0, scaler.scale_, 1.0)
    return DiscGrader(source, scaler.mean_, scale, coef, intercept, ccoef, cint, dict.fromkeys(DISC_CLASSES, 0.5), size)


def from_network(network: DiscCNN, size: int) -> DiscGrader:
    """The grader of source "cnn": the network's own heads as the linear models over its features."""
    width = int(network.pfirrmann.in_features)
    return DiscGrader(
        "cnn", np.zeros(width), np.ones(width),
        network.pfirrmann.weight.detach().double().numpy(), network.pfirrmann.bias.detach().double().numpy(),
        network.classes.weight.detach().double().numpy(), network.classes.bias.detach().double().numpy(),
        dict.fromkeys(DISC_CLASSES, 0.5), size, network=network,
    )  # fmt: skip


def calibrate(grader: DiscGrader, valid: DiscTable) -> None:
    """Temperature scaling of the Pfirrmann model: the temperature that minimises the negative
    log-likelihood of the valid discs' grades (scipy, bounded), divided into the model, so a
    probability of 0.7 is right about 70% of the time."""
    graded = _graded(valid)
    if not graded.any():
        return
    z = grader.standardise(valid.features[graded])
    logits = z @ grader.pfirrmann_coef.T + grader.pfirrmann_intercept
    target = valid.pfirrmann[graded] - 1

    def nll(t: float) -> float:
        return float(-np.mean(log_softmax(logits / t, axis=1)[np.arange(len(target)), target]))

    temperature = float(minimize_scalar(nll, bounds=(0.05, 20.0), method="bounded").x)
    grader.pfirrmann_coef = grader.pfirrmann_coef / temperature
    grader.pfirrmann_intercept = grader.pfirrmann_intercept / temperature
    grader.temperature = grader.temperature * temperature


def patient_grades(grader: DiscGrader, t: DiscTable) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """level -> (true grade, predicted grade) per patient: the argmax of the mean of its slices' probabilities."""
    return {level: (truth, np.array(PFIRRMANN)[proba.argmax(axis=1)]) for level, (truth, proba) in patient_probabilities(grader, t).items()}


def patient_probabilities(grader: DiscGrader, t: DiscTable) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """level -> (true grade [P], P(grade 1..5) [P, 5]) per patient: the mean of its slices' probabilities."""
    graded = _graded(t)
    proba = grader.pfirrmann_proba(t.features[graded])
    out = {}
    for level in NAMED_LEVELS:
        keys = sorted({p for p, lv in zip(t.patients[graded], t.levels[graded]) if lv == level})
        truth, mean = [], []
        for pid in keys:
            mask = (t.patients[graded] == pid) & (t.levels[graded] == level)
            truth.append(int(t.pfirrmann[graded][mask][0]))
            mean.append(proba[mask].mean(axis=0))
        out[level] = (np.array(truth, dtype=int), np.array(mean).reshape(-1, len(PFIRRMANN)))
    return out


def pfirrmann_scores(grader: DiscGrader, t: DiscTable) -> dict[str, dict[str, object]]:
    out: dict[str, dict[str, object]] = {}
    by_level = patient_probabilities(grader, t)
    pooled = (np.concatenate([a for a, _ in by_level.values()]), np.concatenate([b for _, b in by_level.values()]))
    for level, (truth, proba) in [*by_level.items(), ("all", pooled)]:
        pred = np.array(PFIRRMANN)[proba.argmax(axis=1)]
        out[level] = {
            "n": len(truth),
            "accuracy": float(accuracy_score(truth, pred)),
            "kappa_linear": float(cohen_kappa_score(truth, pred, weights="linear", labels=list(PFIRRMANN))),
            "within_one": float(np.mean(np.abs(truth - pred) <= 1)),
            "ece_top_label": expected_calibration_error((pred == truth).astype(int), proba.max(axis=1)),
            "confusion_matrix": confusion_matrix(truth, pred, labels=list(PFIRRMANN)).tolist(),
        }
    return out


def class_scores(grader: DiscGrader, t: DiscTable) -> dict[str, dict[str, float | None]]:
    """Per class, per disc on the slices: AUROC and F1 at the grader's thresholds."""
    proba = grader.class_proba(t.features)
    out: dict[str, dict[str, float | None]] = {}
    for j, name in enumerate(DISC_CLASSES):
        y = t.classes[:, j]
        auroc = float(roc_auc_score(y, proba[:, j])) if 0 < y.sum() < len(y) else None
        f1 = float(f1_score(y, proba[:, j] >= grader.class_thresholds[name], zero_division=0))
        out[name] = {"auroc": auroc, "f1": f1, "positives": int(y.sum())}
    normal_true = (t.classes.sum(axis=1) == 0).astype(int)
    normal_pred = np.all(proba < np.array([grader.class_thresholds[c] for c in DISC_CLASSES]), axis=1).astype(int)
    out["normal"] = {"auroc": None, "f1": float(f1_score(normal_true, normal_pred, zero_division=0)), "positives": int(normal_true.sum())}
    out["macro_f1"] = {"auroc": None, "f1": float(np.mean([out[c]["f1"] for c in (*DISC_CLASSES, "normal")])), "positives": None}  # type: ignore[misc]
    return out


def gate_on_valid(grader: DiscGrader, valid: DiscTable) -> None:
    """Thresholds per class (the best F1 on valid: disc classes are reported by their F1) and
    the gate of levels and classes."""
    proba = grader.class_proba(valid.features)
    for j, name in enumerate(DISC_CLASSES):
        grader.class_thresholds[name] = float(choose_f1_threshold(valid.classes[:, j], proba[:, j]))
    pf = pfirrmann_scores(grader, valid)
    cl = class_scores(grader, valid)
    grader.gate = {
        "pfirrmann": {lv: {"kappa": pf[lv]["kappa_linear"], "accuracy": pf[lv]["accuracy"],
                           "validated": pf[lv]["kappa_linear"] >= KAPPA_GATE} for lv in NAMED_LEVELS},  # fmt: skip
        "classes": {c: {"auroc": cl[c]["auroc"], "validated": (cl[c]["auroc"] or 0.0) >= AUROC_GATE} for c in DISC_CLASSES},
    }


def choose_grader(
    model: object, records: list[ImageRecord], size: int, seed: int = 0, progress: bool = False, network: DiscCNN | None = None
) -> tuple[DiscGrader, dict[str, object]]:
    """Fit each source on train (the linear ones; "cnn", when a trained `network` is given, is
    its own heads), calibrate its grades and gate it on valid, keep the best mean valid kappa;
    the valid figures of every source come back beside it."""
    by_split = {s: [r for r in records if r.split == s] for s in ("train", "valid")}
    compared: dict[str, object] = {}
    best: tuple[float, DiscGrader] | None = None
    with torch.no_grad():
        for source in SOURCES:
            if source == "cnn":
                if network is None:
                    continue
                tables = {"valid": disc_table(source, network, by_split["valid"], size, progress)}
                grader = from_network(network, size)
            else:
                tables = {s: disc_table(source, model, recs, size, progress) for s, recs in by_split.items()}
                grader = fit(tables["train"], source, size, seed)
            calibrate(grader, tables["valid"])
            gate_on_valid(grader, tables["valid"])
            kappa = float(np.mean([grader.gate["pfirrmann"][lv]["kappa"] for lv in NAMED_LEVELS]))  # type: ignore[misc]
            compared[source] = {"valid_mean_kappa": kappa, "temperature": grader.temperature, "gate": grader.gate}
            if best is None or kappa > best[0]:
                best = (kappa, grader)
    assert best is not None
    return best[1], compared

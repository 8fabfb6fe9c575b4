"""docs/results/data/real.json from a `make real` output folder: the figures of
docs/results/real.md (aggregate figures only; no image, note or per-patient value leaves OUT).

    python scripts/real_results.py --out REAL_OUT [--guard-demo OOD.json] [--guard-real OOD.json]

Tables: the 78 test patients per method with bootstrap 95% CIs, the paper's per-image metric
definition, the candidates compared on valid, the targets, an expert-label ceiling (a logistic
regression on the cohort's own per-disc labels: box classes and Pfirrmann grades, fitted on train,
scored on valid) and the cohort's counts. `--guard-*` add the input-guard tables written by
`bench/ood.py --out`.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Literal

import numpy as np

from lumbarclip.evaluation.metrics_file import MetricsFile, read_metrics

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "docs" / "results" / "data" / "real.json"
PAPER = {"accuracy": 0.9500, "f1": 0.9475}  # arXiv 2509.20813, axial, per image as its code computes it
METRICS = ("accuracy", "f1_macro", "f1_weighted", "balanced_accuracy", "auroc", "auprc")
METHODS = {  # name -> the classifier's ci95 prefix (`MetricsFile.classifier_scores`)
    "linear probe": "",
    "zero-shot, threshold chosen on valid": "zero_shot_valid_threshold.",
    "zero-shot, 0.5 rule": "zero_shot.",
    "fine-tuned vision tower": "finetune.",
    "majority (always LBP)": "baselines.majority.",
    "raw pixels (logistic regression)": "baselines.raw_pixels.",
}


def _cell(value: float | None, ci: tuple[float, float] | None = None) -> str:
    if value is None:
        return "-"
    text = f"{value:.3f}"
    return text + (f" [{ci[0]:.2f}, {ci[1]:.2f}]" if ci and None not in ci else "")


def method_rows(metrics: MetricsFile, level: Literal["image", "patient"]) -> list[list[str]]:
    rows = []
    blocks = metrics.classifier_scores()
    for name, prefix in METHODS.items():
        if prefix in blocks:
            scores = blocks[prefix].level(level)
            rows.append([name] + [_cell(getattr(scores, m), metrics.interval(f"{prefix}{level}.{m}")) for m in METRICS])
    return rows


def expert_ceiling(manifest: Path) -> dict[str, float]:
    """Valid patient AUROC / balanced accuracy of a logistic regression on the cohort's own
    expert per-disc labels (counts of each box class over a patient's slices, Pfirrmann grades
    at L3-L4 / L4-L5 / L5-S1 and their maximum), fitted on train: what a perfect disc reader
    would give for the LBP label."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import balanced_accuracy_score, roc_auc_score

    from lumbarclip.data.discs import BOX_CLASSES, discs_from_json
    from lumbarclip.data.manifest import read_manifest

    records = read_manifest(manifest, check_files=False).records
    feats: dict[str, np.ndarray] = {}
    label: dict[str, int] = {}
    split: dict[str, str] = {}
    for r in records:
        f = feats.setdefault(r.patient_id, np.zeros(len(BOX_CLASSES) + 4))
        grades = {}
        for disc in discs_from_json(r.discs):
            for cls in disc.classes:
                f[BOX_CLASSES.index(cls)] += 1
            if disc.pfirrmann:
                grades[disc.level] = disc.pfirrmann
        for i, level in enumerate(("L3-L4", "L4-L5", "L5-S1")):
            f[len(BOX_CLASSES) + i] = max(f[len(BOX_CLASSES) + i], grades.get(level, 0))
        f[-1] = max(f[len(BOX_CLASSES) : len(BOX_CLASSES) + 3])
        label[r.patient_id], split[r.patient_id] = r.label, r.split
    pick = {s: sorted(p for p in feats if split[p] == s) for s in ("train", "valid")}
    x = {s: np.stack([feats[p] for p in ids]) for s, ids in pick.items()}
    y = {s: np.array([label[p] for p in ids]) for s, ids in pick.items()}
    model = LogisticRegression(max_iter=5000, class_weight="balanced").fit(x["train"], y["train"])
    prob = model.predict_proba(x["valid"])[:, 1]
    return {
        "valid_patient_auroc": float(roc_auc_score(y["valid"], prob)),
        "valid_patient_balanced_accuracy": float(balanced_accuracy_score(y["valid"], prob >= 0.5)),
        "n_train": len(pick["train"]),
        "n_valid": len(pick["valid"]),
    }


def guard_rows(doc: dict) -> list[list[str]]:
    rows = []
    for name, r in doc["sets"].items():
        rate = f"{r['rate']:.1%}" if r["rate"] is not None else "-"
        views = ", ".join(f"{v} {k}" for k, v in sorted((r.get("by_view") or {}).items()))
        rows.append([name, str(r["n"]), f"{r['flagged']} ({rate})", str(r["by_header"]), str(r["by_guard"]), views or "-"])
    total = doc["unseen"]
    rows.append(["all unseen inputs", str(total["n"]), f"{total['flagged']} ({total['rate']:.1%})", "", "", ""])
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, type=Path, help="the make real output folder")
    ap.add_argument("--guard-demo", type=Path, help="bench/ood.py --out JSON of the demo (phantom) model")
    ap.add_argument("--guard-real", type=Path, help="bench/ood.py --out JSON of the real model")
    ap.add_argument("--guard-commit", help="commit the guard figures were measured at")
    ap.add_argument("--eval-commit", help="commit at which metrics.json was (re)computed, when not the training commit")
    ap.add_argument(
        "--extra-candidates", action="append", default=[], type=Path, metavar="REAL_JSON",
        help="real.json of a bench/real.py --valid-only run: further recipes compared on valid",
    )  # fmt: skip
    args = ap.parse_args()

    summary = json.loads((args.out / "real.json").read_text())
    for path in args.extra_candidates:
        summary["candidates"].update(json.loads(path.read_text())["candidates"])
    metrics = read_metrics(args.out / "run" / "eval-test" / "metrics.json")
    probe = metrics.patient
    patients = probe.n
    negatives = int(np.asarray(probe.confusion_matrix)[0].sum())
    columns = ["method", "accuracy", "macro-F1", "weighted F1", "balanced accuracy", "AUROC", "AUPRC"]
    tables: dict[str, dict] = {
        "test": {"columns": columns, "rows": method_rows(metrics, "patient")},
        "image": {"columns": columns, "rows": method_rows(metrics, "image")},
    }
    acc_ci = metrics.interval("patient.accuracy") or (None, None)
    tables["paper"] = {
        "columns": ["", "accuracy", "F1", "unit"],
        "rows": [
            ["the paper (axial slices)", f"{PAPER['accuracy']:.4f}", f"{PAPER['f1']:.4f}", "per image, as its code computes it (weighted F1)"],
            ["always LBP on these 78 test patients", f"{metrics.baselines['majority'].patient.accuracy:.3f}", "-", "per patient"],
            ["linear probe, per image (the paper's definition)", _cell(metrics.image.accuracy), _cell(metrics.image.f1_weighted), "per image, mid-sagittal slices"],
            ["linear probe, per patient", _cell(probe.accuracy, acc_ci), _cell(probe.f1_weighted), "per patient, mid-sagittal slices"],
        ],
    }
    tables["candidates"] = {
        "columns": ["candidate", "overrides of cpu-real", "valid probe patient AUROC", "valid probe patient bal. acc", "valid zero-shot patient AUROC", "seconds", "chosen"],
        "rows": [
            [name, ", ".join(c["overrides"]) or "(preset)", _cell(c["probe_patient_auroc"]), _cell(c["probe_patient_balanced_accuracy"]),
             _cell(c["zero_shot_patient_auroc"]), f"{c['seconds']:.0f}", "yes" if name == summary["chosen"] else ""]
            for name, c in summary["candidates"].items()
        ],
    }  # fmt: skip
    def target(name: str, metric: str, met: bool) -> list[str]:
        lo, hi = metrics.interval(f"patient.{metric}") or (None, None)
        bounds = "-" if lo is None else f"[{lo:.2f}, {hi:.2f}]"
        return [name, _cell(getattr(probe, metric)), bounds, "-" if lo is None else f"{hi - lo:.2f}", "yes" if met else "no"]

    tables["targets"] = {
        "columns": ["target", "measured (linear probe, 78 test patients)", "95% CI", "CI width", "met"],
        "rows": [
            target("patient balanced accuracy >= 0.85", "balanced_accuracy", probe.balanced_accuracy >= 0.85),
            target("patient macro-F1 >= 0.85", "f1_macro", probe.f1_macro >= 0.85),
            target("accuracy > 0.95 with a CI above 0.885", "accuracy",
                   probe.accuracy > 0.95 and acc_ci[0] is not None and acc_ci[0] > 0.885),
        ],
    }  # fmt: skip
    ceiling = expert_ceiling(args.out / "cohort" / "manifest.csv")
    tables["ceiling"] = {
        "columns": ["reader of the LBP label (valid, 77 patients)", "patient AUROC", "patient balanced accuracy"],
        "rows": [
            ["experts' own per-disc labels on these slices (box classes + Pfirrmann), logistic regression fitted on train",
             _cell(ceiling["valid_patient_auroc"]), _cell(ceiling["valid_patient_balanced_accuracy"])],
            *[[f"LumbarCLIP {name} (linear probe)", _cell(c["probe_patient_auroc"]), _cell(c["probe_patient_balanced_accuracy"])]
              for name, c in summary["candidates"].items()],
        ],
    }  # fmt: skip
    cohort = summary["cohort"]
    counts = [[split, str(c["patients"]), str(c["patients_abnormal"]), str(c["patients_normal"]), str(c["images"])] for split, c in cohort["splits"].items()]
    tables["cohort"] = {"columns": ["split", "patients", "LBP", "no finding", "slices"], "rows": counts}
    tables["adapter"] = {
        "columns": ["what the adapter counted", "n"],
        "rows": [[kind, str(len(items))] for kind, items in sorted(cohort["problems"].items())]
        + [[kind, str(n)] for kind, n in sorted(cohort["counts"].items())],
    }
    seconds = summary["seconds"]
    tables["time"] = {
        "columns": ["stage", "seconds"],
        "rows": [[k, f"{v:.0f}"] for k, v in seconds.items()],
    }
    for key, path in (("guard_demo", args.guard_demo), ("guard_real", args.guard_real)):
        if path:
            doc = json.loads(path.read_text())
            tables[key] = {
                "columns": ["inputs", "n", "flagged", "by header", "by guard", "outside each guard view"],
                "rows": guard_rows(doc),
                **({"commit": args.guard_commit} if args.guard_commit else {}),
            }
    out = {
        "command": "make real SLICES=YOLOspine-at-aab0746 NOTES=Lumbar-MedCLIP/local_data OUT=real-out",
        "commit": summary["commit"],
        "seed": summary["seed"],
        "machine": summary["machine"],
        "note": "mid-sagittal slices, not the paper's axial ones; "
        f"{patients} test patients, {negatives} without LBP"
        + (f"; test figures of the same model recomputed at {args.eval_commit}" if args.eval_commit else ""),
        "tables": tables,
    }
    DATA.write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {DATA.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""docs/results/data/discs.json from the disc layer's figures (`make real`'s
OUT/run/eval-test/discs.json, or `bench/discs.py --out`): aggregate figures only.

    python scripts/discs_results.py --figures real-out/run/eval-test/discs.json --commit C \
        --zero-shot real-out/run/eval-test/disc-zeroshot.json \
        [--example real-out/cohort/manifest.csv --model real-out/run/model --png OUT.png]

`--example` draws one test slice with its found discs, levels and grades into `--png`, which
stays beside the run: it shows a real patient's image and is never committed.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "docs" / "results" / "data" / "discs.json"
LEVELS = ("L3-L4", "L4-L5", "L5-S1")


def _f(value: object) -> str:
    return "-" if value is None else f"{value:.3f}" if isinstance(value, float) else str(value)


def tables(fig: dict) -> dict[str, dict]:
    out: dict[str, dict] = {}
    rows = []
    for split in ("valid", "test"):
        d = fig.get(f"detection_{split}")
        if d:
            naming = d["naming_accuracy"]
            rows.append([split, _f(d["recall"]), _f(d["precision"]), f"{d['tp']} / {d['fp']} / {d['fn']}",
                         *(_f(naming[lv]) for lv in LEVELS), _f(naming["all"])])  # fmt: skip
    out["detection"] = {
        "columns": ["split", "recall (IoU >= 0.5)", "precision", "TP / FP / FN", "naming L3-L4", "naming L4-L5", "naming L5-S1", "naming, three levels"],
        "rows": rows,
    }
    rules = fig.get("column_rules_valid") or []
    chosen_rule = fig.get("column_rule") or {}
    out["column"] = {
        "columns": ["min score", "column tolerance (box widths)", "gap ratio", "valid recall", "valid precision", "valid F1",
                    "valid naming, three levels", "(F1 + naming) / 2", "chosen"],
        "rows": [[_f(r["min_score"]), _f(r["column_tolerance"]), _f(r["gap_ratio"]), _f(r["recall"]), _f(r["precision"]), _f(r["f1"]),
                  _f(r["naming"]), _f(r["objective"]),
                  "yes" if all(r[k] == chosen_rule.get(k) for k in ("min_score", "column_tolerance", "gap_ratio")) else ""] for r in rules],
    }  # fmt: skip
    pf = fig.get("pfirrmann_test") or {}
    gate = fig["grader"]["gate"]["pfirrmann"]
    out["pfirrmann"] = {
        "columns": ["level", "patients", "accuracy", "linear-weighted kappa", "within one grade", "ECE (top grade)", "shown by predict (valid kappa >= 0.6)"],
        "rows": [[lv, str(pf[lv]["n"]), _f(pf[lv]["accuracy"]), _f(pf[lv]["kappa_linear"]), _f(pf[lv]["within_one"]), _f(pf[lv].get("ece_top_label")),
                  ("yes" if gate[lv]["validated"] else "no") + f" ({gate[lv]['kappa']:.2f})"]
                 for lv in LEVELS if lv in pf and lv in gate]
        + ([["all three", str(pf["all"]["n"]), _f(pf["all"]["accuracy"]), _f(pf["all"]["kappa_linear"]), _f(pf["all"]["within_one"]),
             _f(pf["all"].get("ece_top_label")), ""]] if "all" in pf else []),
    }  # fmt: skip
    if "all" in pf:
        cm = pf["all"]["confusion_matrix"]
        out["confusion"] = {
            "columns": ["true \\ predicted", *(f"grade {g}" for g in range(1, 6))],
            "rows": [[f"grade {g}", *(str(v) for v in row)] for g, row in enumerate(cm, start=1)],
        }
    cl = fig.get("classes_test") or {}
    gate = fig["grader"]["gate"].get("classes", {})
    out["classes"] = {
        "columns": ["disc class", "test discs with it", "AUROC", "F1 (threshold from valid)", "shown by predict (valid AUROC >= 0.80)"],
        "rows": [[name, _f(v["positives"]), _f(v["auroc"]), _f(v["f1"]),
                  ("yes" if gate[name]["validated"] else "no") + f" ({gate[name]['auroc']:.2f})" if name in gate and gate[name]["auroc"] is not None else "-"]
                 for name, v in cl.items()],
    }  # fmt: skip
    sources = fig.get("grader_sources_valid") or {}
    out["sources"] = {
        "columns": ["grader features", "valid mean kappa (three levels)", "temperature (valid)", "chosen"],
        "rows": [[name, _f(v["valid_mean_kappa"]), _f(v.get("temperature")), "yes" if name == fig["grader"]["source"] else ""]
                 for name, v in sources.items()],
    }  # fmt: skip
    train = fig["detector_train"]
    out["detector"] = {
        "columns": ["detector", "input", "epochs", "best valid F1", "train slices", "valid slices", "seconds (detector, grader and scoring)"],
        "rows": [[f"FCOS over {train['config']['backbone']} ({train['config']['pretrained'] or 'scratch'})",
                  f"{train['config']['image_size']} px", str(train["epochs"]), _f(train["best_valid_f1"]),
                  str(train["train_slices"]), str(train["valid_slices"]), f"{fig.get('seconds', 0):.0f}"]],
    }  # fmt: skip
    cnn = fig.get("disc_cnn_train")
    if cnn:
        out["disc_cnn"] = {
            "columns": ["disc CNN", "crop (rows x cols)", "epochs", "best valid kappa (per disc)", "train discs", "valid discs", "seconds"],
            "rows": [[f"{cnn['config']['backbone']} ({cnn['config']['pretrained'] or 'scratch'})", "x".join(map(str, cnn["config"]["crop"])),
                      str(cnn["epochs"]), _f(cnn["best_valid_kappa_per_disc"]), str(cnn["train_discs"]), str(cnn["valid_discs"]), f"{cnn['seconds']:.0f}"]],
        }  # fmt: skip
    return out


def zero_shot_tables(zs: dict, commit: str | None) -> dict[str, dict]:
    """Per-level zero-shot (valid macro of each view, test per level and group for the chosen
    view) and level-granular nearest-report search (test, chosen view)."""
    extra = {"command": "make real (stage 5, lumbarclip.disc_layer.tie_to_reports)", **({"commit": commit} if commit else {})}
    groups = list(next(iter(zs["test"]["zero_shot"].values())))
    valid_rows = [[view, _f(zs["valid"][view]["zero_shot"]["macro"]["auroc"]), "yes" if view == zs["chosen"] else ""] for view in zs["valid"]]
    test = zs["test"]["zero_shot"]
    positives = test.get("positives") or {}

    def cell(lv: str, g: str) -> str:
        n = positives.get(lv, {}).get(g)
        return _f(test[lv][g]) + (f" ({n})" if n is not None else "")

    test_rows = [[lv, *(cell(lv, g) for g in groups)] for lv in LEVELS] + [["macro", _f(test["macro"]["auroc"]), "", ""]]
    ret = zs["test"]["retrieval"]
    ret_rows = [[lv, str(int(ret[lv]["n"])), _f(ret[lv]["r@1"]), _f(ret[lv]["chance_r@1"]), _f(ret[lv]["r@5"]), _f(ret[lv]["chance_r@5"])] for lv in LEVELS if lv in ret]
    return {
        "zeroshot_valid": {"columns": ["image of a level", "valid macro AUROC", "chosen"], "rows": valid_rows, **extra},
        "zeroshot_test": {"columns": [f"level (test, {zs['chosen']}): AUROC (positive patients)", *groups], "rows": test_rows, **extra},
        "level_retrieval": {"columns": ["level (test)", "patients with a sentence naming it", "R@1", "chance", "R@5", "chance"], "rows": ret_rows, **extra},
    }


def draw_example(manifest: Path, model: Path, png: Path) -> None:
    """The first test slice: found discs with level and (validated) grade, beside the labels."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from lumbarclip.data.discs import discs_from_json
    from lumbarclip.data.imageio import load_image
    from lumbarclip.data.manifest import read_manifest
    from lumbarclip.inference.predict import Predictor

    record = next(r for r in read_manifest(manifest).split("test") if r.discs)
    (line,) = Predictor.load(model, salt="figure").predict([record.image_path], top_k=0).images
    fig, axes = plt.subplots(1, 2, figsize=(9, 4.8))
    for ax, title, discs in (
        (axes[0], "found by the model", [d.dump() for d in line.discs or [] if d.box_xyxy]),
        (axes[1], "labelled", [d.to_dict() for d in discs_from_json(record.discs)]),
    ):
        ax.imshow(load_image(record.image_path), cmap="gray")
        for d in discs:
            x0, y0, x1, y1 = d["box_xyxy"]
            ax.add_patch(plt.Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, color="lime" if d.get("validated") else "orange"))
            grade = f" P{d['pfirrmann']}" if d.get("pfirrmann") else ""
            ax.text(x1 + 3, (y0 + y1) / 2, f"{d['level']}{grade}", color="white", fontsize=7, va="center")
        ax.set_title(title)
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(png, dpi=120)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--figures", required=True, type=Path, help="discs.json of make real or bench/discs.py")
    ap.add_argument("--commit", required=True, help="commit the figures were made at")
    ap.add_argument("--command", default="make real SLICES=YOLOspine-at-aab0746 NOTES=Lumbar-MedCLIP/local_data OUT=real-out")
    ap.add_argument("--machine", default="2 CPU cores (x86_64), no GPU")
    ap.add_argument("--zero-shot", type=Path, help="make real's disc-zeroshot.json (or bench/disc_zeroshot.py --test --out): per-level zero-shot and retrieval")
    ap.add_argument("--zero-shot-commit", help="commit the zero-shot figures were made at")
    ap.add_argument("--example", type=Path, help="cohort manifest: draw one test slice (with --model and --png)")
    ap.add_argument("--model", type=Path)
    ap.add_argument("--png", type=Path)
    args = ap.parse_args()
    fig = json.loads(args.figures.read_text())
    doc = {
        "command": args.command, "commit": args.commit, "seed": fig["detector_train"]["seed"], "machine": args.machine,
        "note": "mid-sagittal slices; detection and naming per slice, Pfirrmann per patient and level (its slices' "
        "probabilities averaged, on the labelled boxes), classes per labelled disc",
        "tables": tables(fig),
    }  # fmt: skip
    if args.zero_shot:
        doc["tables"].update(zero_shot_tables(json.loads(args.zero_shot.read_text()), args.zero_shot_commit))
    DATA.write_text(json.dumps(doc, indent=1) + "\n")
    print(f"wrote {DATA.relative_to(ROOT)}")
    if args.example and args.model and args.png:
        draw_example(args.example, args.model, args.png)
        print(f"wrote {args.png} (a real patient's slice: keep it out of the repository)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

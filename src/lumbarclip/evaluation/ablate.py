"""`run_ablation`: the paper's ablation as a grid of vision towers x heads x losses x seeds.

Every cell trains with the training API on the same manifest, is evaluated on the test split
(linear probe, zero-shot, retrieval with patient-bootstrap CIs; no baselines or label
efficiency: they do not depend on the grid, run `evaluate` on one cell for them), and becomes
a row of ablation.csv. ablation.md aggregates the seeds: mean ± sample std, and [lo, hi] = the
per-run 95% CI bounds averaged over seeds.

A cell already trained with the same config (train_summary.json, config.yaml) is not trained
again, and its newer eval-test/metrics.json is reused, so an interrupted grid resumes where it
stopped; a cell trained with another config is refused unless `overwrite`.
"""

from __future__ import annotations

import csv
import itertools
import json
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import yaml
from tqdm.auto import tqdm

from lumbarclip.data.manifest import read_manifest
from lumbarclip.errors import InputError
from lumbarclip.evaluation.evaluate import EvalOptions, evaluate_run
from lumbarclip.evaluation.integrity import check_patient_overlap

#: (column, path into metrics.json, ci95 key or None)
COLUMNS: tuple[tuple[str, tuple[str, ...], str | None], ...] = (
    ("probe_image_bacc", ("image", "balanced_accuracy"), "image.balanced_accuracy"),
    ("probe_image_auroc", ("image", "auroc"), "image.auroc"),
    ("probe_patient_bacc", ("patient", "balanced_accuracy"), "patient.balanced_accuracy"),
    ("probe_patient_auroc", ("patient", "auroc"), "patient.auroc"),
    ("zs_image_bacc", ("zero_shot", "image", "balanced_accuracy"), "zero_shot.image.balanced_accuracy"),
    ("zs_patient_bacc", ("zero_shot", "patient", "balanced_accuracy"), "zero_shot.patient.balanced_accuracy"),
    ("zs_patient_auroc", ("zero_shot", "patient", "auroc"), "zero_shot.patient.auroc"),
    ("i2t_r@1", ("retrieval", "i2t_r@1"), None),
    ("i2t_r@5", ("retrieval", "i2t_r@5"), None),
    ("t2i_r@1", ("retrieval", "t2i_r@1"), None),
    ("t2i_r@5", ("retrieval", "t2i_r@5"), None),
)
GRID_KEYS: tuple[str, ...] = ("vision", "head", "loss", "seed")


@dataclass
class AblationGrid:
    """The cells to train: every combination of the lists, on top of a preset and overrides."""

    visions: Sequence[str]
    heads: Sequence[str] = ("linear", "mlp")
    losses: Sequence[str] = ("soft",)
    seeds: Sequence[int] = (0, 1)
    preset: str = "cpu-demo"
    overrides: Sequence[str] = ()

    def cells(self) -> list[dict[str, object]]:
        return [
            dict(zip(GRID_KEYS, c, strict=True))
            for c in itertools.product(self.visions, self.heads, self.losses, self.seeds)
        ]


@dataclass
class AblationResult:
    csv_path: Path
    markdown_path: Path
    rows: list[dict[str, object]] = field(default_factory=list)
    markdown: str = ""


def run_ablation(
    manifest: str | Path,
    out_dir: str | Path,
    grid: AblationGrid,
    eval_options: EvalOptions | None = None,
    progress: bool = True,
    overwrite: bool = False,
) -> AblationResult:
    """Train and evaluate every cell; write OUT/ablation.csv, OUT/ablation.md and OUT/runs/."""
    from lumbarclip.training import load_config, train

    out = Path(out_dir)
    if (out / "ablation.csv").exists() and not overwrite:
        raise InputError(f"{out / 'ablation.csv'}: already exists; choose another --out or pass --overwrite")
    options = replace(
        eval_options or EvalOptions(),
        raw_pixels=False,
        finetune=False,
        from_scratch=False,
        label_efficiency=False,
        report=False,
        progress=progress,
    )
    check_patient_overlap(read_manifest(manifest))  # a leaky manifest fails before any training
    cells = grid.cells()
    configs = [  # every config is built (and validated) before the first training starts
        load_config(
            grid.preset,
            [
                *grid.overrides,
                f"model.vision={c['vision']}",
                f"model.head={c['head']}",
                f"loss.kind={c['loss']}",
                f"seed={c['seed']}",
            ],
        )
        for c in cells
    ]
    rows = []
    bar = tqdm(list(zip(cells, configs, strict=True)), desc="ablation", unit="run", disable=not progress)
    for cell, config in bar:
        run = out / "runs" / "-".join(str(cell[k]) for k in GRID_KEYS)
        bar.set_postfix_str(run.name)
        trained = (run / "train_summary.json").is_file()
        if trained and not _same_config(run, config) and not overwrite:
            raise InputError(
                f"{run}: was trained with another config; choose another --out or pass --overwrite"
            )
        if not trained or not _same_config(run, config):
            train(config, manifest, run, progress=progress, overwrite=True)
        metrics_path = run / "eval-test" / "metrics.json"
        if (
            metrics_path.is_file()
            and metrics_path.stat().st_mtime >= (run / "train_summary.json").stat().st_mtime
        ):
            metrics = json.loads(metrics_path.read_text())
        else:
            metrics = evaluate_run(
                run, manifest, "test", options=replace(options, seed=int(cell["seed"])), overwrite=True
            )
        summary = json.loads((run / "train_summary.json").read_text())
        timing = {
            "train_seconds": summary.get("seconds"),
            "eval_seconds": round(sum(metrics["meta"]["seconds"].values()), 1),
        }
        rows.append({**cell, "run": str(run), **_row_metrics(metrics), **timing})
    csv_path = _write_csv(out / "ablation.csv", rows)
    markdown = markdown_table(rows)
    md_path = out / "ablation.md"
    md_path.write_text(markdown + "\n", encoding="utf-8")
    return AblationResult(csv_path, md_path, rows, markdown)


def _same_config(run: Path, config: object) -> bool:
    saved = run / "config.yaml"
    return saved.is_file() and yaml.safe_load(saved.read_text()) == yaml.safe_load(
        yaml.safe_dump(config.to_dict(), sort_keys=False)
    )  # type: ignore[attr-defined]


def _lookup(metrics: dict[str, object], path: tuple[str, ...]) -> object:
    node: object = metrics
    for key in path:
        node = node.get(key) if isinstance(node, dict) else None
    return node


def _row_metrics(metrics: dict[str, object]) -> dict[str, object]:
    """One run's numbers for the CSV: each column, and its CI bounds where there is a CI."""
    ci95 = metrics.get("ci95", {})
    row: dict[str, object] = {}
    for name, path, ci_key in COLUMNS:
        row[name] = _lookup(metrics, path)
        if ci_key:
            ci = ci95.get(ci_key) if isinstance(ci95, dict) else None
            row[f"{name}_lo"], row[f"{name}_hi"] = ci if ci else (None, None)
    return row


def _write_csv(path: Path, rows: list[dict[str, object]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]) if rows else list(GRID_KEYS))
        writer.writeheader()
        writer.writerows(rows)
    return path


def _mean_std(values: list[float]) -> tuple[float, float | None]:
    arr = np.asarray(values, dtype=float)
    return float(arr.mean()), float(arr.std(ddof=1)) if len(arr) > 1 else None


def markdown_table(rows: list[dict[str, object]]) -> str:
    """Seeds aggregated per (vision, head, loss): `mean ± std [lo, hi]` for each column."""
    groups: dict[tuple[object, ...], list[dict[str, object]]] = {}
    for row in rows:
        groups.setdefault(tuple(row[k] for k in GRID_KEYS[:-1]), []).append(row)
    header = ["vision", "head", "loss", "seeds", *[name for name, _, _ in COLUMNS]]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for key, members in groups.items():
        cells = [*map(str, key), str(len(members))]
        for name, _, ci_key in COLUMNS:
            values = [float(m[name]) for m in members if m[name] is not None]
            if not values:
                cells.append("n/a")
                continue
            mean, std = _mean_std(values)
            text = f"{mean:.3f} ± {std:.3f}" if std is not None else f"{mean:.3f}"
            if ci_key:
                bounds = [(m[f"{name}_lo"], m[f"{name}_hi"]) for m in members if m[f"{name}_lo"] is not None]
                if bounds:
                    lo, hi = np.mean(bounds, axis=0)
                    text += f" [{lo:.2f}, {hi:.2f}]"
            cells.append(text)
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)

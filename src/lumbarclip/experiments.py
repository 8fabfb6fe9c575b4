"""Experiments that train and then evaluate: the paper's ablation as a grid of vision towers x
heads x losses x seeds. This module sits above `training` and `evaluation` (it imports both;
neither imports it).

A grid axis is a list of named variants, each a list of `key=value` config overrides: the
built-in names of `VISION_VARIANTS` and `LOSS_VARIANTS` (any other vision name is taken as a
timm model name). Every cell trains with the training API on the same manifest, is evaluated on
the test split (linear probe, zero-shot, retrieval with patient-bootstrap CIs, findings-level
retrieval and per-finding zero-shot when the manifest has findings; no baselines or label
efficiency: they do not depend on the grid, run `evaluate` on one cell for them), and becomes a
row of ablation.csv (with each run's own patient-bootstrap CI). ablation.md aggregates the
seeds: mean ± sample std and [lo, hi] = the 95% Student-t interval of the mean over the per-seed
values (`seed_interval`). Averaging per-run CI bounds instead would show the spread of one
test set's resampling and hide the spread between seeds, the variance an ablation compares.

A cell already trained with the same config (train_summary.json, config.yaml) is not trained
again, and its newer eval-test/metrics.json is reused, so an interrupted grid resumes where it
stopped; a cell trained with another config is refused unless `overwrite`.
"""

from __future__ import annotations

import csv
import itertools
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import yaml
from scipy import stats
from tqdm.auto import tqdm

from lumbarclip.data.manifest import read_manifest
from lumbarclip.errors import InputError
from lumbarclip.evaluation.evaluate import EvalOptions, evaluate_run
from lumbarclip.evaluation.integrity import check_patient_overlap
from lumbarclip.evaluation.metrics_file import MetricsFile, read_metrics
from lumbarclip.training import load_config, train

#: Small members of the paper's three vision families, sized to train on a CPU at 32-64 px
#: (timm models from scratch; the ViT and Swin keep their family's blocks with fewer of them).
VISION_VARIANTS: dict[str, tuple[str, ...]] = {
    "resnet": ("model.vision=resnet10t",),
    "vit": ("model.vision=vit_tiny_patch16_224", "model.vision_kwargs={patch_size: 8, depth: 4}"),
    "swin": (
        "model.vision=swin_tiny_patch4_window7_224",
        "model.vision_kwargs={window_size: 4, embed_dim: 48, depths: [2, 2, 2], num_heads: [3, 6, 12]}",
    ),
}
#: The preset's soft loss, the paper's soft loss with binary labels, soft targets from findings
#: (multi-hot over level x kind + side + severity), and the plain CLIP (InfoNCE) loss. The
#: binary and findings variants drop what only per-sentence targets feed (the finding head).
_PATIENT_LABELS = ("loss.kernel=dot", "loss.identity_weight=0.0", "model.finding_head=false", "data.sentences=report")
LOSS_VARIANTS: dict[str, tuple[str, ...]] = {
    "soft": ("loss.kind=soft",),
    "soft-binary": ("loss.kind=soft", "loss.labels=binary", *_PATIENT_LABELS),
    "soft-findings": ("loss.kind=soft", "loss.labels=findings", *_PATIENT_LABELS),
    "hard": ("loss.kind=hard",),
}
HEADS: tuple[str, ...] = ("linear", "mlp")

#: (column, the figure as an attribute path of the typed metrics.json (`MetricsFile`), whether
#: the CSV gets its 95% CI: the path is also its `ci95` key)
COLUMNS: tuple[tuple[str, str, bool], ...] = (
    ("probe_patient_acc", "patient.accuracy", True),
    ("probe_patient_f1", "patient.f1_macro", True),
    ("probe_patient_bacc", "patient.balanced_accuracy", True),
    ("probe_patient_auroc", "patient.auroc", True),
    ("probe_image_bacc", "image.balanced_accuracy", True),
    ("zs_patient_acc", "zero_shot.patient.accuracy", True),
    ("zs_patient_f1", "zero_shot.patient.f1_macro", True),
    ("zs_patient_bacc", "zero_shot.patient.balanced_accuracy", True),
    ("zs_patient_auroc", "zero_shot.patient.auroc", True),
    ("i2t_r@1", "retrieval.i2t_r1", False),
    ("i2t_r@5", "retrieval.i2t_r5", False),
    ("chance_i2t_r@5", "retrieval.chance_i2t_r5", False),
    ("t2i_r@5", "retrieval.t2i_r5", False),
    ("findings_i2t_map", "retrieval.findings_match.i2t.map", False),
    ("chance_findings_i2t_map", "retrieval.findings_match.i2t.chance_map", False),
    ("study_i2t_r@5", "retrieval.study.i2t_r5", False),
    ("study_findings_i2t_map", "retrieval.study.findings_match.i2t.map", False),
    ("finding_zs_macro_auroc", "per_finding.macro_auroc", False),
)
GRID_KEYS: tuple[str, ...] = ("vision", "head", "loss", "seed")


def vision_overrides(name: str) -> tuple[str, ...]:
    """A built-in vision variant's overrides, or `model.vision=NAME` for a timm model name."""
    return VISION_VARIANTS.get(name, (f"model.vision={name}",))


@dataclass
class AblationGrid:
    """The cells to train: every combination of the axes, on top of a preset and overrides.
    `visions` and `losses` map a variant's name to its config overrides."""

    visions: Mapping[str, Sequence[str]]
    heads: Sequence[str] = HEADS
    losses: Mapping[str, Sequence[str]] = field(default_factory=lambda: {"soft": LOSS_VARIANTS["soft"]})
    seeds: Sequence[int] = (0, 1)
    preset: str = "cpu-demo"
    overrides: Sequence[str] = ()

    @classmethod
    def named(
        cls,
        visions: Sequence[str],
        heads: Sequence[str] = HEADS,
        losses: Sequence[str] = ("soft",),
        seeds: Sequence[int] = (0, 1),
        preset: str = "cpu-demo",
        overrides: Sequence[str] = (),
    ) -> AblationGrid:
        """A grid from variant names (`VISION_VARIANTS` or timm names, `HEADS`, `LOSS_VARIANTS`)."""
        unknown = [h for h in heads if h not in HEADS] + [loss for loss in losses if loss not in LOSS_VARIANTS]
        if unknown:
            raise InputError(
                f"unknown --head/--loss value(s): {', '.join(unknown)} (heads: {', '.join(HEADS)}; "
                f"losses: {', '.join(LOSS_VARIANTS)})"
            )
        return cls(
            {v: vision_overrides(v) for v in visions},
            heads,
            {loss: LOSS_VARIANTS[loss] for loss in losses},
            seeds,
            preset,
            overrides,
        )

    def cells(self) -> list[dict[str, object]]:
        return [
            dict(zip(GRID_KEYS, c, strict=True))
            for c in itertools.product(self.visions, self.heads, self.losses, self.seeds)
        ]

    def cell_overrides(self, cell: Mapping[str, object]) -> list[str]:
        """The grid's overrides, then the cell's: vision variant, head, loss variant, seed."""
        return [
            *self.overrides,
            *self.visions[str(cell["vision"])],
            f"model.head={cell['head']}",
            *self.losses[str(cell["loss"])],
            f"seed={cell['seed']}",
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
    configs = [load_config(grid.preset, grid.cell_overrides(c)) for c in cells]  # all validated first
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
            not metrics_path.is_file()
            or metrics_path.stat().st_mtime < (run / "train_summary.json").stat().st_mtime
        ):
            evaluate_run(run, manifest, "test", options=replace(options, seed=int(cell["seed"])), overwrite=True)
        metrics = read_metrics(metrics_path)
        summary = json.loads((run / "train_summary.json").read_text())
        timing = {
            "train_seconds": summary.get("seconds"),
            "eval_seconds": round(sum(metrics.meta.seconds.values()), 1),
        }
        rows.append({**cell, "run": str(run), **_row_metrics(metrics), **timing})
        _write_csv(out / "ablation.csv.partial", rows)  # what is done so far, should the grid stop
    csv_path = _write_csv(out / "ablation.csv", rows)
    (out / "ablation.csv.partial").unlink(missing_ok=True)
    markdown = markdown_table(rows)
    md_path = out / "ablation.md"
    md_path.write_text(markdown + "\n", encoding="utf-8")
    return AblationResult(csv_path, md_path, rows, markdown)


def _same_config(run: Path, config: object) -> bool:
    saved = run / "config.yaml"
    return saved.is_file() and yaml.safe_load(saved.read_text()) == yaml.safe_load(
        yaml.safe_dump(config.to_dict(), sort_keys=False)  # type: ignore[attr-defined]
    )


def _figure(metrics: MetricsFile, path: str) -> object:
    """The figure at an attribute path of `metrics`; None where a block on the way is absent
    (no findings in the manifest, no study retrieval)."""
    node: object = metrics
    for name in path.split("."):
        if node is None:
            return None
        node = getattr(node, name)
    return node


def _row_metrics(metrics: MetricsFile) -> dict[str, object]:
    """One run's numbers for the CSV: each column, and its CI bounds where there is a CI."""
    row: dict[str, object] = {}
    for name, path, with_ci in COLUMNS:
        row[name] = _figure(metrics, path)
        if with_ci:
            row[f"{name}_lo"], row[f"{name}_hi"] = metrics.interval(path) or (None, None)
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


def seed_interval(values: Sequence[float], confidence: float = 0.95) -> tuple[float, float] | None:
    """Student-t interval of the mean over per-seed values (df = seeds - 1): what a rerun with
    new seeds would likely average to. None for fewer than two seeds (no spread to measure)."""
    arr = np.asarray(values, dtype=float)
    if len(arr) < 2:
        return None
    sem = float(stats.sem(arr))
    if sem == 0.0:  # identical seeds: scipy's interval is nan at scale 0
        return float(arr.mean()), float(arr.mean())
    lo, hi = stats.t.interval(confidence, len(arr) - 1, loc=arr.mean(), scale=sem)
    return float(lo), float(hi)


def _number(value: object) -> float | None:
    """A CSV cell (str), a metrics value or None as a float; blanks and None are missing."""
    return None if value is None or value == "" else float(value)  # type: ignore[arg-type]


def markdown_table(rows: Sequence[Mapping[str, object]], columns: Sequence[str] | None = None) -> str:
    """Seeds aggregated per (vision, head, loss): `mean ± std [lo, hi]` for each column (all
    of `COLUMNS`, or the named ones), [lo, hi] the `seed_interval` (two or more seeds). Rows
    may come from `run_ablation` or ablation.csv."""
    chosen = [c for c in COLUMNS if columns is None or c[0] in columns]
    groups: dict[tuple[object, ...], list[Mapping[str, object]]] = {}
    for row in rows:
        groups.setdefault(tuple(row[k] for k in GRID_KEYS[:-1]), []).append(row)
    header = ["vision", "head", "loss", "seeds", *[name for name, _, _ in chosen]]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for key, members in groups.items():
        cells = [*map(str, key), str(len(members))]
        for name, _, _ in chosen:
            values = [v for m in members if (v := _number(m.get(name))) is not None]
            if not values:
                cells.append("n/a")
                continue
            mean, std = _mean_std(values)
            text = f"{mean:.3f} ± {std:.3f}" if std is not None else f"{mean:.3f}"
            interval = seed_interval(values)
            if interval:
                text += f" [{interval[0]:.2f}, {interval[1]:.2f}]"
            cells.append(text)
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)

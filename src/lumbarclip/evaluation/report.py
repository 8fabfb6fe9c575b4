"""report.html: one self-contained page (figures inlined as base64 PNG, no script, no network)
that a clinician can read top to bottom: integrity checks first, then the headline scores,
curves, confusion matrices, calibration, the embedding map, baselines, label efficiency,
retrieval and a gallery of test images with the worst errors first.

The page is the jinja2 template `templates/report.html.j2` with its stylesheet
`templates/report.css` inlined; this module computes what the template shows (figures as PNG
data URIs, table rows) and leaves markup and escaping to the template. Figures use matplotlib's
object API on the Agg canvas, so no pyplot state or display is touched.
"""

from __future__ import annotations

import base64
import functools
import io
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from jinja2 import Environment, PackageLoader, StrictUndefined
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image
from sklearn.decomposition import PCA
from sklearn.manifold import TSNE
from sklearn.metrics import precision_recall_curve, roc_curve

from lumbarclip.data.imageio import load_image
from lumbarclip.data.manifest import ImageRecord
from lumbarclip.evaluation.metrics import reliability_bins
from lumbarclip.evaluation.predictions import AGGREGATION_LEVELS, Predictions

CLASS_NAMES = ("normal", "abnormal")
HEADLINE_METRICS: tuple[str, ...] = (
    "balanced_accuracy",
    "auroc",
    "auprc",
    "f1_macro",
    "accuracy",
    "ece",
    "brier",
)
GALLERY_SIZE = 24


@dataclass
class SaliencyGallery:
    """Saliency overlays of a few abnormal images and, where the lesions are known (synthetic
    cohorts), the pointing game on all of them; built by `evaluation.pointing.saliency_gallery`."""

    overlays: Sequence[tuple[bytes, str]]  # PNG bytes, caption
    description: str = ""
    pointing_game: Mapping[str, object] = field(default_factory=dict)  # PointingGame.to_dict()


@dataclass
class ReportInputs:
    """What the page is drawn from; every array refers to the evaluated split's images."""

    metrics: Mapping[str, object]
    predictions: Mapping[str, Predictions]  # classifier name -> predictions; the first is the headline
    records: Sequence[ImageRecord] = ()  # aligned with the predictions' rows (for the gallery)
    image_emb: np.ndarray | None = None
    text_emb: np.ndarray | None = None  # one row per report of the split
    text_labels: np.ndarray | None = None
    class_emb: np.ndarray | None = None  # zero-shot class embeddings (rows 0 normal, 1 abnormal)
    title: str = "LumbarCLIP evaluation"
    meta: Mapping[str, object] = field(default_factory=dict)
    embedding_map: str = "pca"  # pca | tsne
    saliency: SaliencyGallery | None = None  # optional section


def write_html_report(inputs: ReportInputs, path: str | Path) -> Path:
    """Render the page and write it to `path` (UTF-8)."""
    path = Path(path)
    path.write_text(render_report(inputs), encoding="utf-8")
    return path


def render_report(inputs: ReportInputs) -> str:
    """The whole HTML document as a string."""
    metrics = inputs.metrics
    main = next(iter(inputs.predictions))
    names = pseudonyms(r.patient_id for r in inputs.records)
    blocks = _blocks(metrics)
    ci95 = metrics.get("ci95", {})
    return _environment().get_template("report.html.j2").render(
        title=inputs.title,
        meta=inputs.meta,
        headline_metrics=HEADLINE_METRICS,
        main=main,
        main_threshold=inputs.predictions[main].thresholds["image"],
        integrity=_integrity(metrics.get("integrity", {})),
        headline=_score_rows(_level_rows(blocks), ci95, str(metrics.get("classifier"))),  # type: ignore[arg-type]
        has_ci=bool(ci95),
        curves=_figure_uri(_curves_figure(inputs.predictions)),
        confusion=_figure_uri(_confusion_figure(metrics)),
        reliability=_figure_uri(_reliability_figure({k: p for k, p in inputs.predictions.items() if k in blocks})),
        embedding=_figure_uri(_embedding_figure(inputs)),
        baselines=_score_rows(_level_rows(metrics.get("baselines", {})), {}),  # type: ignore[arg-type]
        label_efficiency=_label_efficiency(metrics.get("label_efficiency", {})),  # type: ignore[arg-type]
        retrieval_block=_retrieval(metrics.get("retrieval", {})),  # type: ignore[arg-type]
        per_finding=_per_finding(metrics.get("per_finding", {})),  # type: ignore[arg-type]
        gallery_cells=_gallery(inputs.predictions[main], inputs.records, names),
        saliency=_saliency(inputs.saliency, names) if inputs.saliency is not None else None,
    )


@functools.cache
def _environment() -> Environment:
    """The template's environment: HTML-escaped values, an error on any name it is not given."""
    env = Environment(
        loader=PackageLoader("lumbarclip.evaluation", "templates"),
        autoescape=True,
        undefined=StrictUndefined,
        keep_trailing_newline=True,
    )
    env.filters["fmt"] = _fmt
    env.filters["label"] = _label
    return env


# --- building blocks -------------------------------------------------------------------------


def _label(name: str) -> str:
    return name.replace("_", " ")


def _fmt(value: object) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value)


def _figure_uri(fig: Figure | None) -> str | None:
    """PNG data URI of a figure, rendered by the Agg canvas; None for no figure."""
    if fig is None:
        return None
    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    return _png_uri(buf.getvalue())


def _png_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


# --- sections ---------------------------------------------------------------------------------


def _integrity(integrity: Mapping[str, object]) -> dict[str, object]:
    """Warnings, split overlap, class balance rows and each classifier's test-time inputs."""
    overlap = integrity.get("patient_overlap", {})
    balance = integrity.get("class_balance", {})
    cols = ["images", "patients", "patients_normal", "patients_abnormal"]
    return {
        "warnings": list(integrity.get("warnings", [])),  # type: ignore[call-overload]
        "overlap": ", ".join(f"{k}: {v}" for k, v in overlap.items()),  # type: ignore[union-attr]
        "balance": [
            [s, *[b[c] for c in cols], b["patients_abnormal"] / b["patients"] if b["patients"] else None]
            for s, b in balance.items()  # type: ignore[union-attr]
        ],
        "inputs": [[_label(k), ", ".join(v)] for k, v in integrity.get("classifier_inputs", {}).items()],  # type: ignore[union-attr]
    }


def _blocks(metrics: Mapping[str, object]) -> dict[str, Mapping[str, Mapping[str, object]]]:
    """Every classifier's {image, patient} blocks, by name."""
    out: dict[str, Mapping[str, Mapping[str, object]]] = {}
    if "image" in metrics:
        out[str(metrics.get("classifier", "model"))] = metrics  # type: ignore[assignment]
    for name in ("zero_shot", "finetune"):
        if isinstance(metrics.get(name), Mapping):
            out[name] = metrics[name]  # type: ignore[assignment]
    return out


def _level_rows(
    blocks: Mapping[str, Mapping[str, Mapping[str, object]]],
) -> list[tuple[str, str, Mapping[str, object]]]:
    """(classifier, level, metrics) for every classifier's image and patient blocks."""
    return [(name, lv, block[lv]) for name, block in blocks.items() for lv in AGGREGATION_LEVELS if lv in block]


def _score_rows(
    rows: list[tuple[str, str, Mapping[str, object]]], ci95: Mapping[str, object], main: str | None = None
) -> list[dict[str, object]]:
    """One row per classifier and level: name, level, n and each headline metric as (value, 95%
    CI or None) (`ci95` keys: "image.auroc" for the `main` classifier, "zero_shot.image.auroc"
    for the others)."""
    return [
        {
            "name": name,
            "level": lv,
            "n": block.get("n"),
            "cells": [
                (block.get(m), ci95.get(f"{lv}.{m}" if name == main else f"{name}.{lv}.{m}")) for m in HEADLINE_METRICS
            ],
        }
        for name, lv, block in rows
    ]


def _curves_figure(predictions: Mapping[str, Predictions]) -> Figure | None:
    fig = Figure(figsize=(10, 8))
    axes = fig.subplots(2, 2)
    drawn = False
    for row, lv in enumerate(AGGREGATION_LEVELS):
        roc_ax, pr_ax = axes[row]
        for name, pred in predictions.items():
            p = pred.level(lv)
            if len(np.unique(p.y_true)) < 2:
                continue
            fpr, tpr, _ = roc_curve(p.y_true, p.prob)
            precision, recall, _ = precision_recall_curve(p.y_true, p.prob)
            roc_ax.plot(fpr, tpr, label=_label(name))
            pr_ax.plot(recall, precision, label=_label(name))
            drawn = True
        roc_ax.plot([0, 1], [0, 1], ls=":", color="grey")
        roc_ax.set(xlabel="1 - specificity", ylabel="sensitivity", title=f"ROC ({lv})")
        pr_ax.set(xlabel="recall", ylabel="precision", title=f"Precision-recall ({lv})", ylim=(0, 1.02))
        if roc_ax.get_legend_handles_labels()[0]:
            roc_ax.legend(fontsize=8, loc="lower right")
            pr_ax.legend(fontsize=8, loc="lower left")
    fig.tight_layout()
    return fig if drawn else None


def _confusion_figure(metrics: Mapping[str, object]) -> Figure | None:
    if "image" not in metrics:
        return None
    fig = Figure(figsize=(8, 3.6))
    for ax, lv in zip(fig.subplots(1, 2), AGGREGATION_LEVELS, strict=True):
        cm = np.asarray(metrics[lv]["confusion_matrix"])  # type: ignore[index]
        ax.imshow(cm, cmap="Blues")
        for (i, j), v in np.ndenumerate(cm):
            ax.text(j, i, str(v), ha="center", va="center", color="white" if v > cm.max() / 2 else "black")
        ax.set(
            xticks=[0, 1],
            yticks=[0, 1],
            xticklabels=CLASS_NAMES,
            yticklabels=CLASS_NAMES,
            xlabel="predicted",
            ylabel="true",
            title=f"{lv} (n={cm.sum()})",
        )
    fig.tight_layout()
    return fig


def _reliability_figure(predictions: Mapping[str, Predictions]) -> Figure:
    fig = Figure(figsize=(5, 4.5))
    ax = fig.subplots()
    ax.plot([0, 1], [0, 1], ls=":", color="grey", label="perfect calibration")
    for name, pred in predictions.items():
        bins = reliability_bins(pred.y_true, pred.prob)
        filled = bins["count"] > 0
        ax.plot(bins["mean_prob"][filled], bins["frac_pos"][filled], marker="o", label=_label(name))
    ax.set(xlabel="predicted P(abnormal)", ylabel="observed abnormal rate", xlim=(0, 1), ylim=(0, 1))
    ax.legend(fontsize=8)
    return fig


def _embedding_figure(inputs: ReportInputs) -> Figure | None:
    if inputs.image_emb is None or len(inputs.image_emb) < 3:
        return None
    main = next(iter(inputs.predictions.values()))
    groups = [("image", inputs.image_emb, main.y_true, "o")]
    if inputs.text_emb is not None and inputs.text_labels is not None and len(inputs.text_emb):
        groups.append(("report", inputs.text_emb, inputs.text_labels, "^"))
    if inputs.class_emb is not None:
        groups.append(("class prompt", inputs.class_emb, np.arange(len(inputs.class_emb)), "*"))
    stacked = np.concatenate([g[1] for g in groups])
    if inputs.embedding_map == "tsne":
        xy = TSNE(2, init="pca", perplexity=min(30.0, (len(stacked) - 1) / 3), random_state=0).fit_transform(
            stacked
        )
    else:
        xy = PCA(2, random_state=0).fit_transform(stacked)
    fig = Figure(figsize=(6.5, 5.5))
    ax = fig.subplots()
    start = 0
    for kind, emb, labels, marker in groups:
        part = xy[start : start + len(emb)]
        start += len(emb)
        for cls, colour in ((0, "tab:blue"), (1, "tab:red")):
            sel = np.asarray(labels) == cls
            if sel.any():
                ax.scatter(
                    *part[sel].T,
                    marker=marker,
                    c=colour,
                    s=160 if marker == "*" else 18,
                    alpha=1.0 if marker == "*" else 0.6,
                    edgecolors="k" if marker == "*" else "none",
                    label=f"{kind}: {CLASS_NAMES[cls]}",
                )
    ax.set(title=f"{inputs.embedding_map.upper()} of unit embeddings", xticks=[], yticks=[])
    ax.legend(fontsize=8, markerscale=0.8)
    return fig


def _label_efficiency(efficiency: Mapping[str, Mapping[str, Mapping[str, object]]]) -> dict[str, object] | None:
    """The curves of patient scores against the share of training patients, and their table."""
    if not efficiency:
        return None
    fig = Figure(figsize=(9, 3.6))
    rows = []
    for ax, metric in zip(fig.subplots(1, 2), ("balanced_accuracy", "auroc"), strict=True):
        for name, by_fraction in efficiency.items():
            fractions = sorted(by_fraction, key=float)
            values = [by_fraction[f]["patient"][metric] for f in fractions]  # type: ignore[index]
            ax.plot(
                [float(f) * 100 for f in fractions],
                [np.nan if v is None else v for v in values],
                marker="o",
                label=_label(name),
            )
        ticks = sorted({float(f) * 100 for by_fraction in efficiency.values() for f in by_fraction})
        ax.set(xscale="log", xlabel="training patients", ylabel=f"patient {_label(metric)}", ylim=(0, 1.02))
        ax.set_xticks(ticks, [f"{t:g}%" for t in ticks])
        ax.minorticks_off()
        ax.legend(fontsize=8)
    for name, by_fraction in efficiency.items():
        for f in sorted(by_fraction, key=float):
            r = by_fraction[f]
            rows.append(
                [
                    _label(name),
                    f"{float(f):.0%}",
                    r.get("patients"),
                    r["image"]["balanced_accuracy"],
                    r["patient"]["balanced_accuracy"],
                    r["patient"]["auroc"],
                ]
            )
    fig.tight_layout()
    return {"figure": _figure_uri(fig), "rows": rows}


def _retrieval(retrieval: Mapping[str, object], query: str = "image") -> dict[str, object] | None:
    """Same-patient and findings-match rows; the study-level block (slices averaged) nested."""
    if not retrieval:
        return None
    rows = []
    for direction, text in (("i2t", f"{query} -> report"), ("t2i", f"report -> {query}")):
        ks = sorted(int(k.split("@")[1]) for k in retrieval if k.startswith(f"{direction}_r@"))
        rows += [
            [text, k, retrieval[f"{direction}_r@{k}"], retrieval.get(f"chance_{direction}_r@{k}")] for k in ks
        ]
    return {
        "query": query,
        "rows": rows,
        "n_queries": retrieval.get("n_studies" if query == "study" else "n_images"),
        "n_texts": retrieval.get("n_texts"),
        "findings_match": _findings_match(retrieval.get("findings_match"), query),  # type: ignore[arg-type]
        "study": _retrieval(retrieval.get("study") or {}, "study"),  # type: ignore[arg-type]
    }


def _findings_match(match: Mapping[str, object] | None, query: str = "image") -> dict[str, object] | None:
    if not match:
        return None
    rows = []
    for direction, text in (("i2t", f"{query} -> report"), ("t2i", f"report -> {query}")):
        block = match[direction]
        ks = sorted(int(k.split("@")[1]) for k in block if k.startswith("r@"))  # type: ignore[union-attr]
        rows.append([text, "mAP", block["map"], block["chance_map"]])  # type: ignore[index]
        rows += [[text, f"R@{k}", block[f"r@{k}"], block[f"chance_r@{k}"]] for k in ks]  # type: ignore[index]
    return {
        "rows": rows,
        "threshold": match["threshold"],
        "i2t_unmatched": match["i2t"]["n_queries_without_match"],  # type: ignore[index]
        "t2i_unmatched": match["t2i"]["n_queries_without_match"],  # type: ignore[index]
    }


def _per_finding(fz: Mapping[str, object]) -> dict[str, object] | None:
    """Per kind: test zero-shot AUROC with its CI, the pixel ceiling (what the images show), the
    valid AUROC that gates whether predict shows the kind, and the prompt-pair cosine."""
    if not fz:
        return None
    ceiling = fz.get("pixel_ceiling") or {}
    gate = fz.get("valid_auroc") or {}
    cosine = (fz.get("prompt_pair_cosine") or {}).get("per_kind", {})  # type: ignore[union-attr]
    shown = set(fz.get("validated") or [])  # type: ignore[arg-type]
    rows = []
    for kind, block in fz["per_kind"].items():  # type: ignore[union-attr]
        ci = block["ci95"]
        rows.append([
            _label(kind), block["auroc"], f"{ci[0]:.3f}-{ci[1]:.3f}" if ci else "n/a", block["positives"],
            block["negatives"], (ceiling.get("per_kind", {}).get(kind) or {}).get("auroc"), gate.get(kind),  # type: ignore[union-attr]
            "yes" if kind in shown else "no", cosine.get(kind),
        ])  # fmt: skip
    return {
        "rows": rows,
        "macro_auroc": fz.get("macro_auroc"),
        "n_kinds": len(fz.get("macro_kinds", [])),  # type: ignore[arg-type]
        "min_positives": fz.get("min_positives"),
        "ceiling_macro": ceiling.get("macro_auroc"),  # type: ignore[union-attr]
        "rule": str(fz.get("rule", "")),
        "ceiling_rule": str(ceiling.get("rule", "not computed")),  # type: ignore[union-attr]
        "min_valid_auroc": fz.get("min_valid_auroc", "n/a"),
    }


def _thumbnail_uri(path: Path, size: int = 160) -> str:
    pixels = (load_image(path) * 255).astype(np.uint8)
    image = Image.fromarray(pixels)
    image.thumbnail((size, size))
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return _png_uri(buf.getvalue())


def pseudonyms(patient_ids: Iterable[str]) -> dict[str, str]:
    """"patient 1".."patient N" for the distinct ids in sorted order: the page is shared with
    people who may not see patient identifiers, and a sorted numbering is stable for the same
    set of patients without being reversible from the page alone."""
    return {pid: f"patient {n}" for n, pid in enumerate(sorted(set(patient_ids)), start=1)}


def _gallery(
    pred: Predictions, records: Sequence[ImageRecord], names: Mapping[str, str], size: int = GALLERY_SIZE
) -> list[dict[str, object]]:
    """Images sorted by |label - P(abnormal)|, largest first: the most confident mistakes lead.
    Patients are named by `names` (pseudonyms), never by their id."""
    if not records:
        return []
    order = np.argsort(-np.abs(pred.y_true - pred.prob), kind="stable")[:size]
    cells = []
    for i in order:
        rec = records[i]
        called = int(pred.prob[i] >= pred.thresholds["image"])
        who = names[rec.patient_id]
        cells.append({
            "alt": who,
            "uri": _thumbnail_uri(rec.image_path),
            "caption": f"{who} {' '.join(x for x in (rec.level, rec.sequence) if x)}",
            "truth": CLASS_NAMES[pred.y_true[i]],
            "prob": pred.prob[i],
            "verdict": "right" if called == pred.y_true[i] else "wrong",
        })  # fmt: skip
    return cells


def _saliency(gallery: SaliencyGallery, names: Mapping[str, str]) -> dict[str, object]:
    """The pointing game and the overlays; a caption that starts with a patient id (as the
    saliency gallery writes them) starts with the patient's pseudonym instead."""
    game = gallery.pointing_game
    rows = [
        ["saliency peak", game["hit_rate"]],
        ["centre prior", game["centre_baseline"]],
        ["random map", game["random_baseline"]],
        [f"saliency peak, on the {game['n_centre_misses']} images the centre prior misses",
         game["hit_rate_where_centre_misses"]],
    ] if game else []  # fmt: skip
    cells = [
        {"alt": "saliency overlay", "uri": _png_uri(png), "caption": _pseudonymised(caption, names), "verdict": None}
        for png, caption in gallery.overlays
    ]
    return {"description": gallery.description, "game": game, "game_rows": rows, "cells": cells}


def _pseudonymised(caption: str, names: Mapping[str, str]) -> str:
    """`caption` with a leading patient id replaced by its pseudonym (longest id first, so one
    id that prefixes another cannot match in its place)."""
    for pid in sorted(names, key=len, reverse=True):
        if caption == pid or caption.startswith(pid + " ") or caption.startswith(pid + ":"):
            return names[pid] + caption[len(pid):]
    return caption

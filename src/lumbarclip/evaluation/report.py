"""report.html: one self-contained page (figures inlined as base64 PNG, no script, no network)
that a clinician can read top to bottom: integrity checks first, then the headline scores,
curves, confusion matrices, calibration, the embedding map, baselines, label efficiency,
retrieval and a gallery of test images with the worst errors first.

Figures use matplotlib's object API on the Agg canvas, so no pyplot state or display is touched.
"""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
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

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2rem auto;max-width:1100px;
color:#1d232a;line-height:1.45;padding:0 1rem}
h1{font-size:1.6rem;margin-bottom:.2rem}h2{font-size:1.2rem;margin-top:2.2rem;border-bottom:1px solid #d5dbe1}
table{border-collapse:collapse;margin:.6rem 0;font-size:.9rem}
th,td{border:1px solid #d5dbe1;padding:.25rem .55rem;text-align:right}th{background:#f1f4f7}
td:first-child,th:first-child{text-align:left}
.warn{background:#fff4e0;border-left:4px solid #e8a33d;padding:.4rem .8rem;margin:.3rem 0}
.ok{background:#e9f7ee;border-left:4px solid #3a9d5d;padding:.4rem .8rem;margin:.3rem 0}
.meta{color:#5b6670;font-size:.9rem}figure{margin:.8rem 0}img.fig{max-width:100%}
.gallery{display:grid;grid-template-columns:repeat(auto-fill,minmax(150px,1fr));gap:.6rem}
.gallery figure{margin:0;font-size:.78rem;text-align:center}.gallery img{width:100%;image-rendering:pixelated}
.wrong{color:#b3261e;font-weight:600}.right{color:#2f7d4a}
"""


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
    main_threshold = inputs.predictions[main].thresholds["image"]
    names = pseudonyms(r.patient_id for r in inputs.records)
    sections = [
        _section("Integrity checks", _integrity_html(metrics.get("integrity", {}))),
        _section(
            "Headline",
            _scores_table(
                _level_rows(_blocks(metrics)), metrics.get("ci95", {}), str(metrics.get("classifier"))
            ),
        ),
        _section("ROC and precision-recall curves", _img(_curves_figure(inputs.predictions))),
        _section(f"Confusion matrices ({_label(main)})", _img(_confusion_figure(metrics))),
        _section(
            "Calibration (reliability diagram, image level)",
            _img(_reliability_figure({k: p for k, p in inputs.predictions.items() if k in _blocks(metrics)})),
        ),
        _section("Embedding map (test images and reports)", _embedding_html(inputs)),
        _section("Baselines", _scores_table(_level_rows(metrics.get("baselines", {})), {})),
        _section("Label efficiency", _label_efficiency_html(metrics.get("label_efficiency", {}))),
        _section("Retrieval", _retrieval_html(metrics.get("retrieval", {}))),
        _section("Per-finding zero-shot", _finding_zero_shot_html(metrics.get("finding_zero_shot", {}))),
        _section(
            f"Gallery: {_label(main)} (abnormal when P >= {main_threshold:.2f}), worst errors first",
            _gallery_html(inputs.predictions[main], inputs.records, names),
        ),
    ]
    if inputs.saliency is not None:
        sections.append(
            _section("Saliency: where the model sees abnormality", _saliency_html(inputs.saliency, names))
        )
    meta = "".join(f"<div>{html.escape(str(k))}: {html.escape(str(v))}</div>" for k, v in inputs.meta.items())
    return (
        "<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
        "<meta name='viewport' content='width=device-width, initial-scale=1'>"
        "<link rel='icon' href='data:,'>"
        f"<title>{html.escape(inputs.title)}</title><style>{CSS}</style></head><body>"
        f"<h1>{html.escape(inputs.title)}</h1><div class='meta'>{meta}</div>"
        + "".join(sections)
        + "</body></html>\n"
    )


# --- building blocks -------------------------------------------------------------------------


def _section(title: str, body: str) -> str:
    return f"<section><h2>{html.escape(title)}</h2>{body}</section>"


def _label(name: str) -> str:
    return name.replace("_", " ")


def _fmt(value: object) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.3f}"
    return html.escape(str(value))


def _table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{_fmt(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _figure_uri(fig: Figure) -> str:
    """PNG data URI of a figure, rendered by the Agg canvas."""
    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _img(fig: Figure | None, alt: str = "figure") -> str:
    if fig is None:
        return "<p class='meta'>Not available for this split (one class only or no data).</p>"
    return f"<figure><img class='fig' alt='{html.escape(alt)}' src='{_figure_uri(fig)}'></figure>"


# --- sections ---------------------------------------------------------------------------------


def _integrity_html(integrity: Mapping[str, object]) -> str:
    warnings = list(integrity.get("warnings", []))
    parts = [f"<div class='warn'>&#9888; {html.escape(w)}</div>" for w in warnings]
    if not warnings:
        parts.append("<div class='ok'>No integrity warnings.</div>")
    overlap = integrity.get("patient_overlap", {})
    if overlap:
        pairs = ", ".join(f"{k}: {v}" for k, v in overlap.items())
        parts.append(f"<p>Patients shared between splits (must be 0): {html.escape(pairs)}.</p>")
    balance = integrity.get("class_balance", {})
    if balance:
        cols = ["images", "patients", "patients_normal", "patients_abnormal"]
        rows = [
            [s, *[b[c] for c in cols], b["patients_abnormal"] / b["patients"] if b["patients"] else None]
            for s, b in balance.items()
        ]
        parts.append(_table(["split", "images", "patients", "normal", "abnormal", "abnormal fraction"], rows))
    inputs = integrity.get("classifier_inputs", {})
    if inputs:
        parts.append(
            _table(["classifier", "test-time inputs"], [[_label(k), ", ".join(v)] for k, v in inputs.items()])
        )
    return "".join(parts)


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


def _scores_table(
    rows: list[tuple[str, str, Mapping[str, object]]], ci95: Mapping[str, object], main: str | None = None
) -> str:
    """One row per classifier and level, each metric with its 95% CI when there is one (`ci95`
    keys: "image.auroc" for the `main` classifier, "zero_shot.image.auroc" for the others)."""
    if not rows:
        return "<p class='meta'>None computed.</p>"
    body = []
    for name, lv, block in rows:
        cells = []
        for m in HEADLINE_METRICS:
            ci = ci95.get(f"{lv}.{m}" if name == main else f"{name}.{lv}.{m}")
            cells.append(
                _fmt(block.get(m)) + (f" <span class='meta'>[{ci[0]:.3f}, {ci[1]:.3f}]</span>" if ci else "")
            )
        body.append(
            f"<tr><td>{html.escape(_label(name))}</td><td>{lv}</td><td>{block.get('n')}</td>"
            + "".join(f"<td>{c}</td>" for c in cells)
            + "</tr>"
        )
    head = "".join(
        f"<th>{h}</th>" for h in ["classifier", "level", "n", *[_label(m) for m in HEADLINE_METRICS]]
    )
    note = "<p class='meta'>[95% CI, bootstrap over patients]</p>" if ci95 else ""
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>{note}"


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


def _embedding_html(inputs: ReportInputs) -> str:
    if inputs.image_emb is None or len(inputs.image_emb) < 3:
        return "<p class='meta'>No embeddings given.</p>"
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
    return _img(fig, "embedding map")


def _label_efficiency_html(efficiency: Mapping[str, Mapping[str, Mapping[str, object]]]) -> str:
    if not efficiency:
        return "<p class='meta'>Not computed (see --label-efficiency).</p>"
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
    table = _table(
        ["classifier", "train patients", "n", "image bal. acc.", "patient bal. acc.", "patient AUROC"], rows
    )
    return _img(fig, "label efficiency") + table


def _retrieval_html(retrieval: Mapping[str, object], query: str = "image") -> str:
    """Same-patient and findings-match tables; the study-level block (slices averaged) below."""
    if not retrieval:
        return "<p class='meta'>Not computed.</p>"
    rows = []
    for direction, text in (("i2t", f"{query} -> report"), ("t2i", f"report -> {query}")):
        ks = sorted(int(k.split("@")[1]) for k in retrieval if k.startswith(f"{direction}_r@"))
        rows += [
            [text, k, retrieval[f"{direction}_r@{k}"], retrieval.get(f"chance_{direction}_r@{k}")] for k in ks
        ]
    note = (
        f"<p class='meta'>{retrieval.get('n_images')} {query} queries, {retrieval.get('n_texts')} reports; "
        "a hit is an item of the query's patient.</p>"
    )
    html = _table(["direction", "K", "Recall@K", "chance"], rows) + note
    html += _findings_match_html(retrieval.get("findings_match"), query)  # type: ignore[arg-type]
    study = retrieval.get("study")
    if study:
        html += (
            "<h3>Study level</h3><p class='meta'>Each patient's slice embeddings averaged into one "
            "query (a slice shows one disc level; the report covers all).</p>"
            + _retrieval_html(study, "study")  # type: ignore[arg-type]
        )
    return html


def _findings_match_html(match: Mapping[str, object] | None, query: str = "image") -> str:
    if not match:
        return ""
    rows = []
    for direction, text in (("i2t", f"{query} -> report"), ("t2i", f"report -> {query}")):
        block = match[direction]
        ks = sorted(int(k.split("@")[1]) for k in block if k.startswith("r@"))
        rows.append([text, "mAP", block["map"], block["chance_map"]])
        rows += [[text, f"R@{k}", block[f"r@{k}"], block[f"chance_r@{k}"]] for k in ks]
    note = (
        f"<p class='meta'>A hit is a report (image) whose patient's findings match the query's: "
        f"Jaccard of the level:kind sets &gt;= {match['threshold']} (two normal studies match). "
        f"Queries without any matching item: i2t {match['i2t']['n_queries_without_match']}, "
        f"t2i {match['t2i']['n_queries_without_match']} (left out).</p>"
    )
    return "<h3>Findings match</h3>" + _table(["direction", "score", "value", "chance"], rows) + note


def _finding_zero_shot_html(fz: Mapping[str, object]) -> str:
    """Per kind: test zero-shot AUROC with its CI, the pixel ceiling (what the images show), the
    valid AUROC that gates whether predict shows the kind, and the prompt-pair cosine."""
    if not fz:
        return "<p class='meta'>Not computed (the manifest has no findings column).</p>"
    ceiling = (fz.get("pixel_ceiling") or {}).get("per_kind", {})  # type: ignore[union-attr]
    gate = fz.get("valid_auroc") or {}
    cosine = (fz.get("prompt_pair_cosine") or {}).get("per_kind", {})  # type: ignore[union-attr]
    shown = set(fz.get("validated") or [])  # type: ignore[arg-type]
    rows = []
    for kind, block in fz["per_kind"].items():  # type: ignore[union-attr]
        ci = block["ci95"]
        rows.append([
            _label(kind), block["auroc"], f"{ci[0]:.3f}-{ci[1]:.3f}" if ci else "n/a", block["positives"],
            block["negatives"], (ceiling.get(kind) or {}).get("auroc"), gate.get(kind),  # type: ignore[union-attr]
            "yes" if kind in shown else "no", cosine.get(kind),
        ])  # fmt: skip
    note = (
        f"<p class='meta'>Image level, each image scored against the prompts of its own disc level; "
        f"macro AUROC {_fmt(fz.get('macro_auroc'))} over the {len(fz.get('macro_kinds', []))} kinds "  # type: ignore[arg-type]
        f"with &gt;= {fz.get('min_positives')} positive images (pixel ceiling "
        f"{_fmt((fz.get('pixel_ceiling') or {}).get('macro_auroc'))}). {html.escape(str(fz.get('rule', '')))}. "  # type: ignore[union-attr]
        f"Pixel ceiling: {html.escape(str((fz.get('pixel_ceiling') or {}).get('rule', 'not computed')))}. "  # type: ignore[union-attr]
        f"Shown: predict, the page and the SR show a kind only when its valid AUROC is &gt;= "
        f"{fz.get('min_valid_auroc', 'n/a')}. Cosine: between the positive and negative prompt ensembles.</p>"
    )
    headers = ["finding", "AUROC", "95% CI", "positives", "negatives", "pixel ceiling", "valid AUROC", "shown", "cos(pos, neg)"]
    return _table(headers, rows) + note


def _thumbnail_uri(path: Path, size: int = 160) -> str:
    pixels = (load_image(path) * 255).astype(np.uint8)
    image = Image.fromarray(pixels)
    image.thumbnail((size, size))
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def pseudonyms(patient_ids: Iterable[str]) -> dict[str, str]:
    """"patient 1".."patient N" for the distinct ids in sorted order: the page is shared with
    people who may not see patient identifiers, and a sorted numbering is stable for the same
    set of patients without being reversible from the page alone."""
    return {pid: f"patient {n}" for n, pid in enumerate(sorted(set(patient_ids)), start=1)}


def _gallery_html(
    pred: Predictions, records: Sequence[ImageRecord], names: Mapping[str, str], size: int = GALLERY_SIZE
) -> str:
    """Images sorted by |label - P(abnormal)|, largest first: the most confident mistakes lead.
    Patients are named by `names` (pseudonyms), never by their id."""
    if not records:
        return "<p class='meta'>No images given.</p>"
    order = np.argsort(-np.abs(pred.y_true - pred.prob), kind="stable")[:size]
    cells = []
    for i in order:
        rec = records[i]
        called = int(pred.prob[i] >= pred.thresholds["image"])
        verdict = "right" if called == pred.y_true[i] else "wrong"
        where = " ".join(x for x in (rec.level, rec.sequence) if x)
        who = html.escape(names[rec.patient_id])
        cells.append(
            f"<figure><img alt='{who}' src='{_thumbnail_uri(rec.image_path)}'>"
            f"<figcaption>{who} {html.escape(where)}<br>"
            f"true {CLASS_NAMES[pred.y_true[i]]}, "
            f"P(abn) {pred.prob[i]:.2f} <span class='{verdict}'>{verdict}</span></figcaption></figure>"
        )
    return f"<div class='gallery'>{''.join(cells)}</div>"


def _saliency_html(gallery: SaliencyGallery, names: Mapping[str, str]) -> str:
    """The pointing game and the overlays; a caption that starts with a patient id (as the
    saliency gallery writes them) starts with the patient's pseudonym instead."""
    parts = [f"<p class='meta'>{html.escape(gallery.description)}</p>"] if gallery.description else []
    game = gallery.pointing_game
    if game:
        rows = [
            ["saliency peak", game["hit_rate"]],
            ["centre prior", game["centre_baseline"]],
            ["random map", game["random_baseline"]],
            [f"saliency peak, on the {game['n_centre_misses']} images the centre prior misses",
             game["hit_rate_where_centre_misses"]],
        ]
        parts.append(
            f"<p>Pointing game on {game['n_images']} abnormal images with a visible lesion: a hit when "
            f"the peak lies within {game['margin_px']:g} px of the pixels the findings change.</p>"
            + _table(["map", "hit rate"], rows)
        )
    cells = [
        f"<figure><img alt='saliency overlay' src='data:image/png;base64,{base64.b64encode(png).decode('ascii')}'>"
        f"<figcaption>{html.escape(_pseudonymised(caption, names))}</figcaption></figure>"
        for png, caption in gallery.overlays
    ]
    return "".join(parts) + f"<div class='gallery'>{''.join(cells)}</div>"


def _pseudonymised(caption: str, names: Mapping[str, str]) -> str:
    """`caption` with a leading patient id replaced by its pseudonym (longest id first, so one
    id that prefixes another cannot match in its place)."""
    for pid in sorted(names, key=len, reverse=True):
        if caption == pid or caption.startswith(pid + " ") or caption.startswith(pid + ":"):
            return names[pid] + caption[len(pid):]
    return caption

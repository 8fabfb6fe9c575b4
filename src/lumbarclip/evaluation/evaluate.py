"""`evaluate_run`: one trained model + a manifest -> metrics.json and report.html.

Order of work: integrity checks (fatal ones stop before anything loads), embeddings of the
train/valid/evaluated splits, then every downstream mode. Hyper-parameters (probe C, the
epoch of supervised training) and decision thresholds are chosen on the valid split; the
evaluated split is scored once, by every classifier, at the end of its own fit.
"""

from __future__ import annotations

import copy
import json
import logging
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

import numpy as np
import torch
import yaml

from lumbarclip.bundle import layout
from lumbarclip.bundle.folder import ModelFolder
from lumbarclip.bundle.operating_point import FindingGate
from lumbarclip.data.manifest import ImageRecord, Manifest, read_manifest
from lumbarclip.data.transforms import PreprocessSpec
from lumbarclip.errors import InputError
from lumbarclip.evaluation.baselines import majority_proba, raw_pixel_features
from lumbarclip.evaluation.integrity import TrainingPatients, integrity_checks, outcome_warnings
from lumbarclip.evaluation.metrics import CI_METHOD
from lumbarclip.evaluation.predictions import AGGREGATION_LEVELS, Predictions
from lumbarclip.evaluation.probe import LinearProbe, fit_probe, subsample_patients
from lumbarclip.evaluation.report import ReportInputs, write_html_report
from lumbarclip.evaluation.retrieval import retrieval_metrics, study_embeddings
from lumbarclip.evaluation.supervised import SupervisedConfig, classifier_proba, train_classifier
from lumbarclip.evaluation.zeroshot import default_prompts, zero_shot_abnormal_proba
from lumbarclip.models import LumbarCLIP

MAIN = "linear_probe"
#: The figures of the findings block that the operating point keeps as its per-finding gate.
GATE_FIELDS: tuple[str, ...] = tuple(f.name for f in fields(FindingGate))
PATIENT_RULE = (
    "patient P(abnormal) = mean of its images' P(abnormal); patient label = max of its image labels"
)
OUTPUTS: tuple[str, ...] = ("metrics.json", "report.html")
log = logging.getLogger(__name__)


@dataclass
class EvalOptions:
    """What to compute. The supervised parts (fine-tune, from scratch and its label-efficiency
    curve) train networks and dominate the run time; the rest takes seconds."""

    prompts: dict[int, list[str]] | None = None  # None: the packaged prompt ensemble
    raw_pixels: bool = True
    finetune: bool = True
    from_scratch: bool = True
    pixel_ceiling: bool = True  # per-finding supervised tower on pixels: what the images show
    label_efficiency: bool = True
    fractions: tuple[float, ...] = (0.01, 0.1, 1.0)
    supervised: SupervisedConfig = field(default_factory=SupervisedConfig)
    finetune_tower_lr: float = 1e-4
    bootstrap: int = 1000
    seed: int = 0
    batch_size: int = 64
    report: bool = True
    embedding_map: str = "pca"
    progress: bool = True
    model_folder: bool = True  # write the operating point, input guard and card into the model folder (test only)
    report_bank: bool = False  # also store the training reports (texts as given: opt-in)


@dataclass
class SplitData:
    """The records of one split and everything derived from them."""

    records: list[ImageRecord]
    embeddings: np.ndarray
    images: torch.Tensor | None = None  # preprocessed pixels, for the pixel and supervised classifiers

    @property
    def labels(self) -> np.ndarray:
        return np.array([r.label for r in self.records], dtype=int)

    @property
    def patients(self) -> np.ndarray:
        return np.array([r.patient_id for r in self.records])

    def predictions(self, prob: np.ndarray) -> Predictions:
        return Predictions(self.labels, prob, self.patients)


@dataclass
class Downstream:
    """The classifiers fitted on train (optionally a patient subset of it), selected and
    thresholded on valid, and scored on the evaluated split `test`."""

    model: LumbarCLIP
    train: SplitData
    valid: SplitData
    test: SplitData
    opts: EvalOptions
    folder: ModelFolder
    preprocess: PreprocessSpec

    def tuned(
        self, predict: Callable[[object], np.ndarray], features: Callable[[SplitData], object]
    ) -> Predictions:
        """Test predictions whose thresholds were chosen on valid."""
        valid = self.valid.predictions(predict(features(self.valid)))
        return self.test.predictions(predict(features(self.test))).tuned_on(valid)

    def probe(
        self, features: Callable[[SplitData], np.ndarray], mask: np.ndarray | None = None
    ) -> tuple[Predictions, LinearProbe]:
        """Linear probe on `features` of each split; returns (predictions, the fitted probe)."""
        keep = np.ones(len(self.train.records), bool) if mask is None else mask
        fitted = fit_probe(
            features(self.train)[keep],
            self.train.labels[keep],
            features(self.valid),
            self.valid.labels,
            seed=self.opts.seed,
        )
        return self.tuned(fitted.predict_proba, features), fitted

    def supervised(
        self, tower: torch.nn.Module, config: SupervisedConfig, mask: np.ndarray | None = None
    ) -> Predictions:
        """Train tower + head on the (subset of the) train images."""
        keep = np.ones(len(self.train.records), bool) if mask is None else mask
        module = train_classifier(
            tower,
            (self.train.images[keep], self.train.labels[keep]),
            (self.valid.images, self.valid.labels),
            config,
            self.opts.seed,
            self.opts.progress,
        )
        return self.tuned(
            lambda images: classifier_proba(module, images, self.opts.batch_size), lambda s: s.images
        )

    def from_scratch(self, mask: np.ndarray | None = None) -> Predictions:
        """The same architecture as the model's vision tower, randomly initialised."""
        from lumbarclip.models import vision_tower_for

        return self.supervised(vision_tower_for(self.model.config), self.opts.supervised, mask)

    def finetune(self) -> Predictions:
        """The pre-trained vision tower, trained end to end at a smaller learning rate."""
        config = replace(self.opts.supervised, tower_lr=self.opts.finetune_tower_lr)
        return self.supervised(copy.deepcopy(self.model.visual), config)

    def label_efficiency(self, full: dict[str, Predictions]) -> dict[str, dict[str, object]]:
        """Scores at each fraction of TRAINING PATIENTS (class-stratified, seeded) for the
        classifiers in `full` (their whole-train predictions, reused at 100%)."""
        fitters: dict[str, Callable[[np.ndarray], Predictions]] = {
            MAIN: lambda mask: self.probe(lambda s: s.embeddings, mask)[0],
            "from_scratch": self.from_scratch,
        }
        out: dict[str, dict[str, object]] = {}
        for name, whole in full.items():
            out[name] = {}
            for fraction in self.opts.fractions:
                mask = subsample_patients(self.train.patients, self.train.labels, fraction, self.opts.seed)
                pred = whole if mask.all() else fitters[name](mask)
                out[name][str(fraction)] = {"patients": len(set(self.train.patients[mask])), **pred.metrics()}
        return out


def resolve_model_dir(run_dir: str | Path) -> tuple[Path, Path]:
    """(model folder, run folder) for a run folder holding `model/` or a model folder itself."""
    path = Path(run_dir)
    if (path / "model" / layout.CONFIG).is_file():
        return path / "model", path
    if (path / layout.CONFIG).is_file():
        return path, path.parent
    raise InputError(f"{path}: neither a run folder with model/ nor a model folder ({layout.CONFIG})")


def evaluate_run(
    run_dir: str | Path,
    manifest_path: str | Path,
    split: str = "test",
    out_dir: str | Path | None = None,
    options: EvalOptions | None = None,
    overwrite: bool = False,
) -> dict[str, object]:
    """Evaluate a trained model on `split` of a manifest; writes OUT/metrics.json (and
    OUT/report.html) where OUT defaults to RUN/eval-SPLIT. Returns the metrics dict. Only the
    test split writes the model folder (operating point, card): a card must not carry
    scores from valid, where thresholds and C were chosen."""
    opts = options or EvalOptions()
    model_dir, run_root, out, manifest = _resolve_inputs(run_dir, manifest_path, split, out_dir, overwrite)
    prompts = opts.prompts or default_prompts()
    integrity = _check_integrity(manifest, split, run_root, prompts, opts)
    if opts.supervised.precision is None:
        opts = replace(opts, supervised=replace(opts.supervised, precision=_run_precision(run_root)))

    timer = _Timer()
    run = _load_and_embed(model_dir, manifest, split, opts)
    model, test = run.model, run.test
    timer.lap("load_and_embed")

    preds: dict[str, Predictions] = {}
    preds[MAIN], probe = run.probe(lambda s: s.embeddings)
    text = _text_side(run, prompts, opts)
    preds["zero_shot"] = text.zero_shot
    timer.lap("probe_zero_shot_retrieval")
    per_finding = text.per_finding
    if per_finding and model.finding_head is not None and test.images is not None:
        per_finding["finding_head"] = head = _finding_head(run, opts)
        _choose_scorer(per_finding, head)
        timer.lap("finding_head")
    if per_finding and opts.pixel_ceiling and test.images is not None:
        per_finding["pixel_ceiling"] = _pixel_ceiling(model, run, opts)
        timer.lap("pixel_ceiling")
    folder = None
    if opts.model_folder and split == "test":  # the card carries the once-scored test figures only
        from lumbarclip.evaluation.model_folder import prepare_model_folder

        folder = prepare_model_folder(
            model, run.folder, run.preprocess, FindingGate.from_dict(per_finding),
            probe.pipeline, run.train, run.valid, test, text.classes.numpy(),
            preds[MAIN].thresholds, opts.report_bank,
            {"fitted_on": "valid", "manifest": Path(manifest.path).name, "probe_C": probe.C},
            opts.batch_size, manifest.path,
        )  # fmt: skip
        timer.lap("operating_point")

    baselines, pixels_c = _baselines(run, timer)
    if opts.finetune:
        preds["finetune"] = run.finetune()
        timer.lap("finetune")
    efficiency: dict[str, dict[str, object]] = {}
    if opts.label_efficiency:
        efficiency = run.label_efficiency(
            {MAIN: preds[MAIN], **{k: v for k, v in baselines.items() if k == "from_scratch"}}
        )
        timer.lap("label_efficiency")

    ci95 = preds[MAIN].bootstrap(opts.bootstrap, opts.seed)
    ci95.update(preds["zero_shot"].bootstrap(opts.bootstrap, opts.seed, prefix="zero_shot."))
    ci95.update(text.zero_shot_valid_threshold.bootstrap(opts.bootstrap, opts.seed, prefix="zero_shot_valid_threshold."))
    others = {"finetune": preds.get("finetune"), **{f"baselines.{k}": v for k, v in baselines.items()}}
    for name, pred in others.items():
        if pred is not None:
            ci95.update(pred.bootstrap(opts.bootstrap, opts.seed, prefix=f"{name}."))
    timer.lap("bootstrap")

    metrics: dict[str, object] = {
        **preds[MAIN].metrics(),
        "classifier": MAIN,
        "zero_shot": preds["zero_shot"].metrics(),
        "zero_shot_valid_threshold": text.zero_shot_valid_threshold.metrics(),
        "retrieval": text.retrieval,
        "per_finding": per_finding,
        "ci95": ci95,
        "baselines": {name: p.metrics() for name, p in baselines.items()},
        "label_efficiency": efficiency,
        "integrity": integrity,
        **(folder.metrics if folder else {}),
        **({"finetune": preds["finetune"].metrics()} if "finetune" in preds else {}),
        "meta": _meta(split, out, manifest.path, model_dir, model, probe.C, pixels_c, opts, timer),
    }
    integrity["warnings"] += outcome_warnings(metrics, MAIN)
    out.mkdir(parents=True, exist_ok=True)
    if opts.report:
        shown = {**preds, **{k: v for k, v in baselines.items() if k != "majority"}}
        title = f"LumbarCLIP evaluation: {run_root.name} on {split}"
        _write_html_report(run, metrics, shown, text, title, model_dir, manifest.path, split, out)
        timer.lap("report")
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2, allow_nan=False) + "\n")
    if folder:
        for note in folder.write(metrics, asdict(model.config), overwrite):
            print(f"WARNING: {note}", file=sys.stderr)
    return metrics


def _resolve_inputs(
    run_dir: str | Path, manifest_path: str | Path, split: str, out_dir: str | Path | None, overwrite: bool
) -> tuple[Path, Path, Path, Manifest]:
    """(model folder, run folder, output folder, manifest), refusing a bad split or outputs
    that would be overwritten before anything loads."""
    if split not in ("valid", "test"):
        raise InputError(f"--split must be valid or test, got {split!r}")
    model_dir, run_root = resolve_model_dir(run_dir)
    out = Path(out_dir) if out_dir else run_root / f"eval-{split}"
    existing = [name for name in OUTPUTS if (out / name).exists()]
    if existing and not overwrite:
        raise InputError(f"{out / existing[0]}: already exists; choose another --out or pass --overwrite")
    return model_dir, run_root, out, read_manifest(manifest_path)


def _check_integrity(
    manifest: Manifest, split: str, run_root: Path, prompts: dict[int, list[str]], opts: EvalOptions
) -> dict[str, object]:
    """The integrity block of metrics.json (fatal findings raise here, before any model loads);
    refuses a manifest whose train, valid or evaluated split is empty."""
    training = TrainingPatients.from_run(run_root)
    if training.warning:
        log.warning(training.warning)  # at once, not only in the summary printed at the end
    integrity = integrity_checks(
        manifest, split, _classifier_inputs(opts), prompts, finding_prompts=_all_finding_prompts(), training=training
    )
    for name in ("train", "valid", split):
        if not manifest.split(name):
            raise InputError(
                f"{manifest.path}: the {name} split is empty; evaluation needs train, valid and {split}"
            )
    return integrity


def _load_and_embed(model_dir: Path, manifest: Manifest, split: str, opts: EvalOptions) -> Downstream:
    """The model and the preprocessed images and embeddings of train, valid and `split`."""
    from lumbarclip.inference import encode_images, load_images

    folder = ModelFolder.load(model_dir, require=())
    model = folder.model()
    preprocess = folder.preprocess or PreprocessSpec.of_split(model.config.image_size, manifest.split("train"))
    splits = {}
    for name in ("train", "valid", split):
        records = manifest.split(name)
        images = load_images([r.image_path for r in records], preprocess, opts.progress)
        splits[name] = SplitData(records, encode_images(model, images, opts.batch_size), images)
    return Downstream(model, splits["train"], splits["valid"], splits[split], opts, folder, preprocess)


@dataclass
class _TextSide:
    """What the text tower gives on the evaluated split: the zero-shot classifier's class
    embeddings and predictions, each patient's report(s) once with their embeddings, retrieval
    and per-finding zero-shot scores."""

    classes: torch.Tensor  # [2, D] normal / abnormal class embeddings
    zero_shot: Predictions
    zero_shot_valid_threshold: Predictions  # the same scores, cut at thresholds chosen on valid
    texts: list[tuple[str, str]]  # (patient id, report)
    text_emb: np.ndarray
    retrieval: dict[str, object]
    per_finding: dict[str, object]


def _text_side(run: Downstream, prompts: dict[int, list[str]], opts: EvalOptions) -> _TextSide:
    """Zero-shot classification, image <-> report retrieval (per image and per study) and the
    findings level, all on the evaluated split."""
    from lumbarclip.inference import class_embeddings, embed_texts

    model, test = run.model, run.test
    with torch.no_grad():
        classes = class_embeddings(model, prompts).cpu()
    zero_shot = test.predictions(zero_shot_abnormal_proba(model, test.embeddings, classes))
    tuned = run.tuned(lambda emb: zero_shot_abnormal_proba(model, emb, classes), lambda s: s.embeddings)
    texts = sorted({(r.patient_id, r.report) for r in test.records})  # each patient's report(s), once
    text_emb = embed_texts(model, [t for _, t in texts], opts.batch_size)
    text_patients = np.array([p for p, _ in texts])
    retrieval = retrieval_metrics(test.embeddings, test.patients, text_emb, text_patients)
    study = study_embeddings(test.embeddings, test.patients)
    by_study = retrieval_metrics(study[1], study[0], text_emb, text_patients)
    retrieval["study"] = {("n_studies" if k == "n_images" else k): v for k, v in by_study.items()}
    per_finding = _findings_level(model, run, texts, text_emb, study, retrieval, opts)
    return _TextSide(classes, zero_shot, tuned, texts, text_emb, retrieval, per_finding)


def _baselines(run: Downstream, timer: _Timer) -> tuple[dict[str, Predictions], float | None]:
    """The majority class, a probe on raw pixels and the vision tower trained from scratch (as
    `run.opts` asks), and the raw-pixel probe's C."""
    opts, test = run.opts, run.test
    baselines = {"majority": test.predictions(majority_proba(run.train.labels, len(test.records)))}
    pixels_c = None
    if opts.raw_pixels:
        baselines["raw_pixels"], pixels_probe = run.probe(lambda s: raw_pixel_features(s.images))
        pixels_c = pixels_probe.C
    timer.lap("simple_baselines")
    if opts.from_scratch:
        baselines["from_scratch"] = run.from_scratch()
        timer.lap("from_scratch")
    return baselines, pixels_c


def _meta(
    split: str,
    out: Path,
    manifest_path: str | Path,
    model_dir: Path,
    model: LumbarCLIP,
    probe_c: float,
    pixels_c: float | None,
    opts: EvalOptions,
    timer: _Timer,
) -> dict[str, object]:
    """The `meta` block of metrics.json: what was evaluated, the rules used and the seconds of each step."""
    return {
        "split": split,
        "out": str(out),
        "manifest": str(manifest_path),
        "model": str(model_dir),
        "vision": model.config.vision,
        "probe_C": probe_c,
        "raw_pixels_C": pixels_c,
        "patient_rule": PATIENT_RULE,
        "zero_shot_rule": "argmax over class prompt ensembles (threshold 0.5, nothing tuned); "
        "zero_shot_valid_threshold: the same scores cut at the thresholds that maximise valid balanced accuracy",
        "threshold_rule": "maximise balanced accuracy on the valid split, per level",
        "bootstrap_resamples": opts.bootstrap,
        "ci_method": CI_METHOD,
        "seed": opts.seed,
        "supervised": asdict(opts.supervised),
        "seconds": timer.laps,
    }


def _write_html_report(
    run: Downstream,
    metrics: dict[str, object],
    predictions: dict[str, Predictions],
    text: _TextSide,
    title: str,
    model_dir: Path,
    manifest_path: str | Path,
    split: str,
    out: Path,
) -> None:
    """OUT/report.html of the evaluated split, with the saliency gallery."""
    from lumbarclip.evaluation.pointing import saliency_gallery

    test = run.test
    write_html_report(
        ReportInputs(
            metrics=metrics,
            predictions=predictions,
            records=test.records,
            image_emb=test.embeddings,
            text_emb=text.text_emb,
            text_labels=np.array([int(test.labels[test.patients == p].max()) for p, _ in text.texts]),
            class_emb=text.classes.numpy(),
            title=title,
            meta={
                "model": model_dir,
                "manifest": manifest_path,
                "split": split,
                "patient rule": PATIENT_RULE,
            },
            embedding_map=run.opts.embedding_map,
            saliency=saliency_gallery(
                run.model, test.records, test.images, text.classes[1] - text.classes[0], manifest_path, seed=run.opts.seed
            ),
        ),
        out / "report.html",
    )


def format_summary(metrics: dict[str, object]) -> str:
    """A compact plain-text table of every classifier's headline scores (for stdout)."""
    rows = [(str(metrics.get("classifier", MAIN)), metrics)]
    rows += [(name, metrics[name]) for name in ("zero_shot", "finetune") if name in metrics]
    rows += list(metrics.get("baselines", {}).items())  # type: ignore[union-attr]
    ci = metrics.get("ci95", {})
    lines = [f"{'classifier':<14} {'img bal.acc':>11} {'img AUROC':>9} {'pat bal.acc':>11} {'pat AUROC':>9}"]
    for name, block in rows:
        cells = [_num(block[lv][m]) for lv in AGGREGATION_LEVELS for m in ("balanced_accuracy", "auroc")]  # type: ignore[index]
        lines.append(f"{name:<14} {cells[0]:>11} {cells[1]:>9} {cells[2]:>11} {cells[3]:>9}")
    main_ci = ci.get("patient.balanced_accuracy")  # type: ignore[union-attr]
    if main_ci:
        lines.append(f"95% CI of {rows[0][0]} patient bal.acc: [{main_ci[0]:.3f}, {main_ci[1]:.3f}]")
    r = metrics.get("retrieval") or {}
    if r:
        lines.append(
            "retrieval R@1/5/10 i2t "
            + "/".join(_num(r.get(f"i2t_r@{k}")) for k in (1, 5, 10))  # type: ignore[union-attr]
            + "  t2i "
            + "/".join(_num(r.get(f"t2i_r@{k}")) for k in (1, 5, 10))  # type: ignore[union-attr]
        )
    match = r.get("findings_match") if r else None  # type: ignore[union-attr]
    if match:
        lines.append(
            f"findings-match retrieval (Jaccard >= {match['threshold']}) i2t mAP {_num(match['i2t']['map'])} "
            f"(chance {_num(match['i2t']['chance_map'])}), R@5 {_num(match['i2t'].get('r@5'))}"
        )
    study = r.get("study") if r else None  # type: ignore[union-attr]
    if study:
        study_match = study.get("findings_match") or {}
        lines.append(
            "study (slices averaged) -> report R@1/5/10 "
            + "/".join(_num(study.get(f"i2t_r@{k}")) for k in (1, 5, 10))
            + f" (chance R@5 {_num(study.get('chance_i2t_r@5'))})"
            + (f", findings-match mAP {_num(study_match['i2t']['map'])}" if study_match else "")
        )
    fz = metrics.get("per_finding") or {}
    if fz:
        lines.append(
            f"per-finding zero-shot macro AUROC {_num(fz.get('macro_auroc'))} "  # type: ignore[union-attr]
            f"over {len(fz.get('macro_kinds', []))} kinds with >= {fz.get('min_positives')} positives"  # type: ignore[union-attr]
            + (f"; pixel ceiling {_num(fz['pixel_ceiling'].get('macro_auroc'))}" if fz.get("pixel_ceiling") else "")  # type: ignore[union-attr,index]
            + (f"; prompt-pair cosine {_num(fz['prompt_pair_cosine']['mean'])}" if fz.get("prompt_pair_cosine") else "")  # type: ignore[union-attr,index]
        )
        if "validated" in fz:  # type: ignore[operator]
            lines.append(
                f"findings shown by predict (valid AUROC >= {fz.get('min_valid_auroc')}): "  # type: ignore[union-attr]
                + (", ".join(fz["validated"]) or "none")  # type: ignore[index]
            )
    for warning in (metrics.get("integrity") or {}).get("warnings", []):  # type: ignore[union-attr]
        lines.append(f"WARNING: {warning}")
    return "\n".join(lines)


# --- helpers ---------------------------------------------------------------------------------


def _num(value: object) -> str:
    return "n/a" if value is None else f"{value:.3f}"


class _Timer:
    def __init__(self) -> None:
        self.laps: dict[str, float] = {}
        self._last = time.perf_counter()

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.laps[name] = round(now - self._last, 1)
        self._last = now


def _all_finding_prompts() -> list[str]:
    """Every per-finding prompt at every level (for the integrity check)."""
    from lumbarclip.findings import LEVELS
    from lumbarclip.inference.findings import NORMAL_PROMPTS, finding_prompts, render_prompts

    return [
        p for lv in LEVELS for pair in render_prompts(finding_prompts(), lv).values() for p in pair["positive"] + pair["negative"]
    ] + [p.format(level=lv) for lv in LEVELS for p in NORMAL_PROMPTS]


def _macro(aurocs: dict[str, float | None]) -> float | None:
    """Mean AUROC over the kinds that have one (enough positives)."""
    values = [a for a in aurocs.values() if a is not None]
    return float(np.mean(values)) if values else None


def _findings_level(
    model: LumbarCLIP,
    run: Downstream,
    texts: list[tuple[str, str]],
    text_emb: np.ndarray,
    study: tuple[np.ndarray, np.ndarray],
    retrieval: dict[str, object],
    opts: EvalOptions,
) -> dict[str, object]:
    """Findings-match retrieval (added to `retrieval`), per-finding zero-shot AUROC on test, the
    per-kind gate measured on valid (which kinds predict may show) and the cosine between each
    kind's positive and negative prompt ensembles; empty when the manifest has no findings. The
    contrast of the zero-shot score (`inference.findings.CONTRASTS`) is the one with the better
    valid macro AUROC; test is scored with it only."""
    from lumbarclip.evaluation.findings import finding_sets, per_finding_scores, valid_gate
    from lumbarclip.evaluation.retrieval import findings_match_metrics
    from lumbarclip.findings import LEVELS
    from lumbarclip.inference.findings import CONTRASTS, FindingClassifier

    test, valid = run.test, run.valid
    image_sets = finding_sets(test.records)
    if image_sets is None:
        return {}
    by_patient = dict(zip(test.patients.tolist(), image_sets))
    text_sets = [by_patient[p] for p, _ in texts]
    retrieval["findings_match"] = findings_match_metrics(test.embeddings, image_sets, text_emb, text_sets)
    study_ids, study_emb = study
    retrieval["study"]["findings_match"] = findings_match_metrics(  # type: ignore[index]
        study_emb, [by_patient[p] for p in study_ids], text_emb, text_sets
    )
    base = FindingClassifier.build(model)
    gates: dict[str, dict[str, object]] = {}
    if finding_sets(valid.records) is not None:  # the contrast is chosen on valid, test scored once
        valid_levels = [r.level or None for r in valid.records]
        gates = {c: valid_gate(base.with_contrast(c).scores(valid.embeddings, valid_levels), valid.records) for c in CONTRASTS}
    valid_macro = {c: _macro(g["valid_auroc"]) for c, g in gates.items()}  # type: ignore[arg-type]
    contrast = max(CONTRASTS, key=lambda c: valid_macro.get(c) or -1.0)  # a tie keeps "negative"
    classifier = base.with_contrast(contrast)
    scores = classifier.scores(test.embeddings, [r.level or None for r in test.records])
    out = per_finding_scores(scores, test.records, opts.bootstrap, opts.seed)
    out |= gates.get(contrast, {})
    out |= {"contrast": contrast, "valid_macro_auroc_by_contrast": valid_macro}
    imaged = sorted({r.level for r in test.records if r.level in LEVELS}) or list(LEVELS)
    cosine = classifier.pair_cosine(imaged)
    out["prompt_pair_cosine"] = {"per_kind": cosine, "mean": float(np.mean(list(cosine.values())))}
    return out


def _finding_head(run: Downstream, opts: EvalOptions) -> dict[str, object]:
    """The finding head's per-kind AUROC on test and on valid (its gate), beside zero-shot."""
    from lumbarclip.evaluation.findings import per_finding_scores, valid_gate
    from lumbarclip.inference.findings import head_outputs

    test_scores, _ = head_outputs(run.model, run.test.images, opts.batch_size)
    valid_scores, _ = head_outputs(run.model, run.valid.images, opts.batch_size)
    rule = "P(finding) = the finding head's sigmoid at the image's level (trained on the reports' statements)"
    out = per_finding_scores(test_scores, run.test.records, opts.bootstrap, opts.seed, rule=rule)
    return out | valid_gate(valid_scores, run.valid.records)


def _choose_scorer(per_finding: dict[str, object], head: dict[str, object]) -> None:
    """Which scores `predict` shows per finding: the prompts' (zero-shot) or the finding head's,
    whichever has the better valid macro AUROC; the chosen one's valid gate becomes the gate."""
    prompts_valid = _macro(per_finding.get("valid_auroc") or {})  # type: ignore[arg-type]
    head_valid = _macro(head.get("valid_auroc") or {})  # type: ignore[arg-type]
    per_finding["valid_macro_auroc_by_scorer"] = {"prompts": prompts_valid, "head": head_valid}
    if head_valid is not None and head_valid > (prompts_valid or -1.0):
        per_finding["scorer"] = "head"
        per_finding |= {k: head[k] for k in GATE_FIELDS if k in head}
    else:
        per_finding["scorer"] = "prompts"


def _pixel_ceiling(model: LumbarCLIP, run: Downstream, opts: EvalOptions) -> dict[str, object]:
    """`evaluation.findings.pixel_ceiling` with the model's vision tower, freshly initialised."""
    from lumbarclip.evaluation.findings import pixel_ceiling
    from lumbarclip.models import vision_tower_for

    tower = vision_tower_for(model.config)
    return pixel_ceiling(
        (run.train.images, run.train.records), (run.valid.images, run.valid.records),
        (run.test.images, run.test.records), tower, opts.supervised, opts.seed, opts.progress,
    )  # fmt: skip


def _classifier_inputs(opts: EvalOptions) -> dict[str, list[str]]:
    """What each classifier reads at test time (the integrity check warns on any text)."""
    inputs = {MAIN: ["image"], "zero_shot": ["image", "class prompts"], "majority": []}
    if opts.raw_pixels:
        inputs["raw_pixels"] = ["image"]
    if opts.from_scratch:
        inputs["from_scratch"] = ["image"]
    if opts.finetune:
        inputs["finetune"] = ["image"]
    return inputs


def _run_precision(run_root: Path) -> str:
    """The run's training precision (RUN/config.yaml), so supervised baselines train alike."""
    config = run_root / "config.yaml"
    if config.is_file():
        return str((yaml.safe_load(config.read_text()) or {}).get("trainer", {}).get("precision", "32-true"))
    return "32-true"

"""`evaluate_run`: one trained model + a manifest -> metrics.json and report.html.

Order of work: integrity checks (fatal ones stop before anything loads), embeddings of the
train/valid/evaluated splits, then every downstream mode. Hyper-parameters (probe C, the
epoch of supervised training) and decision thresholds are chosen on the valid split; the
evaluated split is scored once, by every classifier, at the end of its own fit.
"""

from __future__ import annotations

import copy
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from lumbarclip.data.manifest import ImageRecord, read_manifest
from lumbarclip.errors import InputError
from lumbarclip.evaluation.baselines import load_image_tensors, majority_proba, raw_pixel_features
from lumbarclip.evaluation.integrity import integrity_checks
from lumbarclip.evaluation.predictions import LEVELS, Predictions
from lumbarclip.evaluation.probe import fit_probe, subsample_patients
from lumbarclip.evaluation.report import ReportInputs, write_report
from lumbarclip.evaluation.retrieval import retrieval_metrics
from lumbarclip.evaluation.supervised import SupervisedConfig, classifier_proba, train_classifier
from lumbarclip.evaluation.zeroshot import default_prompts, zero_shot_abnormal_proba

MAIN = "linear_probe"
PATIENT_RULE = "patient P(abnormal) = mean of its images' P(abnormal); patient label = max of its image labels"
OUTPUTS: tuple[str, ...] = ("metrics.json", "report.html")


@dataclass
class EvalOptions:
    """What to compute. The supervised parts (fine-tune, from scratch and its label-efficiency
    curve) train networks and dominate the run time; the rest takes seconds."""

    prompts: dict[int, list[str]] | None = None  # None: the packaged prompt ensemble
    finetune: bool = True
    from_scratch: bool = True
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


@dataclass
class SplitData:
    """The records of one split and everything derived from them."""

    records: list[ImageRecord]
    embeddings: np.ndarray
    images: torch.Tensor | None = None

    @property
    def labels(self) -> np.ndarray:
        return np.array([r.label for r in self.records], dtype=int)

    @property
    def patients(self) -> np.ndarray:
        return np.array([r.patient_id for r in self.records])

    def predictions(self, prob: np.ndarray) -> Predictions:
        return Predictions(self.labels, prob, self.patients)


def resolve_model_dir(run_dir: str | Path) -> tuple[Path, Path]:
    """(model folder, run folder) for a run folder holding `model/` or a model folder itself."""
    path = Path(run_dir)
    if (path / "model" / "config.json").is_file():
        return path / "model", path
    if (path / "config.json").is_file():
        return path, path.parent
    raise InputError(f"{path}: neither a run folder with model/ nor a model folder (config.json)")


def evaluate_run(
    run_dir: str | Path,
    manifest_path: str | Path,
    split: str = "test",
    out_dir: str | Path | None = None,
    options: EvalOptions | None = None,
    overwrite: bool = False,
) -> dict[str, object]:
    """Evaluate a trained model on `split` of a manifest; writes OUT/metrics.json (and
    OUT/report.html) where OUT defaults to RUN/eval-SPLIT. Returns the metrics dict."""
    opts = options or EvalOptions()
    if split not in ("valid", "test"):
        raise InputError(f"--split must be valid or test, got {split!r}")
    model_dir, run_root = resolve_model_dir(run_dir)
    out = Path(out_dir) if out_dir else run_root / f"eval-{split}"
    existing = [name for name in OUTPUTS if (out / name).exists()]
    if existing and not overwrite:
        raise InputError(f"{out / existing[0]}: already exists; choose another --out or pass --overwrite")
    manifest = read_manifest(manifest_path)
    prompts = opts.prompts or default_prompts()
    inputs = _classifier_inputs(opts)
    integrity = integrity_checks(manifest, split, inputs, prompts, _pretrain_patients(run_root))
    for name in ("train", "valid", split):
        if not manifest.split(name):
            raise InputError(f"{manifest.path}: the {name} split is empty; evaluation needs train, valid and {split}")

    from lumbarclip.inference import embed_images, embed_texts
    from lumbarclip.models import LumbarCLIP

    timer = _Timer()
    model = LumbarCLIP.from_pretrained(model_dir)
    timer.lap("load_model")
    data = {
        name: SplitData(manifest.split(name), embed_images(model, [r.image_path for r in manifest.split(name)], opts.batch_size, opts.progress))
        for name in ("train", "valid", split)
    }
    train, valid, test = data["train"], data["valid"], data[split]
    timer.lap("embed")

    preds: dict[str, Predictions] = {}
    probe = fit_probe(train.embeddings, train.labels, valid.embeddings, valid.labels, seed=opts.seed)
    preds[MAIN] = _tuned(test, valid, probe.predict_proba)
    preds["zero_shot"] = test.predictions(zero_shot_abnormal_proba(model, test.embeddings, prompts))
    texts = sorted({(r.patient_id, r.report) for r in test.records})
    text_emb = embed_texts(model, [t for _, t in texts], opts.batch_size)
    retrieval = retrieval_metrics(test.embeddings, test.patients, text_emb, np.array([p for p, _ in texts]))
    timer.lap("probe_zero_shot_retrieval")

    for part in (train, valid, test):
        part.images = load_image_tensors([r.image_path for r in part.records], model.config.image_size, opts.progress)
    baselines: dict[str, Predictions] = {"majority": test.predictions(majority_proba(train.labels, len(test.records)))}
    pixels = {name: raw_pixel_features(part.images) for name, part in data.items()}
    pixel_probe = fit_probe(pixels["train"], train.labels, pixels["valid"], valid.labels, seed=opts.seed)
    baselines["raw_pixels"] = _tuned(test, valid, pixel_probe.predict_proba, pixels[split], pixels["valid"])
    timer.lap("simple_baselines")

    def supervised(tower: torch.nn.Module, config: SupervisedConfig, mask: np.ndarray | None = None) -> Predictions:
        keep = np.ones(len(train.records), bool) if mask is None else mask
        module = train_classifier(
            tower, (train.images[keep], train.labels[keep]), (valid.images, valid.labels), config, opts.seed, opts.progress
        )
        return _tuned(test, valid, lambda imgs: classifier_proba(module, imgs, opts.batch_size), test.images, valid.images)

    def scratch_tower() -> torch.nn.Module:
        from lumbarclip.models import create_vision_tower

        return create_vision_tower(model.config.vision, pretrained=False, **model.config.vision_kwargs)

    if opts.from_scratch:
        baselines["from_scratch"] = supervised(scratch_tower(), opts.supervised)
        timer.lap("from_scratch")
    if opts.finetune:
        finetune_config = replace(opts.supervised, tower_lr=opts.finetune_tower_lr)
        preds["finetune"] = supervised(copy.deepcopy(model.visual), finetune_config)
        timer.lap("finetune")

    efficiency: dict[str, dict[str, object]] = {}
    if opts.label_efficiency:
        fitters: dict[str, Callable[[np.ndarray], Predictions]] = {
            MAIN: lambda mask: _tuned(
                test, valid, fit_probe(train.embeddings[mask], train.labels[mask], valid.embeddings, valid.labels, seed=opts.seed).predict_proba
            )
        }
        full = {MAIN: preds[MAIN]}
        if opts.from_scratch:
            fitters["from_scratch"] = lambda mask: supervised(scratch_tower(), opts.supervised, mask)
            full["from_scratch"] = baselines["from_scratch"]
        efficiency = _label_efficiency(fitters, full, train, opts.fractions, opts.seed)
        timer.lap("label_efficiency")

    ci95 = preds[MAIN].bootstrap(opts.bootstrap, opts.seed)
    ci95.update(preds["zero_shot"].bootstrap(opts.bootstrap, opts.seed, prefix="zero_shot."))
    timer.lap("bootstrap")

    metrics: dict[str, object] = {
        **preds[MAIN].metrics(),
        "classifier": MAIN,
        "zero_shot": preds["zero_shot"].metrics(),
        "retrieval": retrieval,
        "ci95": ci95,
        "baselines": {name: p.metrics() for name, p in baselines.items()},
        "label_efficiency": efficiency,
        "integrity": integrity,
    }
    if "finetune" in preds:
        metrics["finetune"] = preds["finetune"].metrics()
    metrics["meta"] = {
        "split": split,
        "manifest": str(manifest.path),
        "model": str(model_dir),
        "vision": model.config.vision,
        "probe_C": probe.C,
        "raw_pixels_C": pixel_probe.C,
        "patient_rule": PATIENT_RULE,
        "zero_shot_rule": "argmax over class prompt ensembles (threshold 0.5, nothing tuned)",
        "threshold_rule": "maximise balanced accuracy on the valid split, per level",
        "bootstrap_resamples": opts.bootstrap,
        "seed": opts.seed,
        "supervised": asdict(opts.supervised),
        "seconds": timer.laps,
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2, allow_nan=False) + "\n")
    if opts.report:
        report_preds = {**preds, **{k: v for k, v in baselines.items() if k != "majority"}}
        write_report(
            ReportInputs(
                metrics=metrics,
                predictions=report_preds,
                records=test.records,
                image_emb=test.embeddings,
                text_emb=text_emb,
                text_labels=np.array([_patient_label(test, p) for p, _ in texts]),
                class_emb=_class_embeddings(model, prompts),
                title=f"LumbarCLIP evaluation: {run_root.name} on {split}",
                meta={"model": model_dir, "manifest": manifest.path, "split": split, "patient rule": PATIENT_RULE},
                embedding_map=opts.embedding_map,
            ),
            out / "report.html",
        )
        timer.lap("report")
        (out / "metrics.json").write_text(json.dumps(metrics, indent=2, allow_nan=False) + "\n")
    return metrics


def format_summary(metrics: dict[str, object]) -> str:
    """A compact plain-text table of every classifier's headline scores (for stdout)."""
    rows = [(str(metrics.get("classifier", MAIN)), metrics)]
    rows += [(name, metrics[name]) for name in ("zero_shot", "finetune") if name in metrics]
    rows += list(metrics.get("baselines", {}).items())  # type: ignore[union-attr]
    ci = metrics.get("ci95", {})
    lines = [f"{'classifier':<14} {'img bal.acc':>11} {'img AUROC':>9} {'pat bal.acc':>11} {'pat AUROC':>9}"]
    for name, block in rows:
        cells = [_num(block[lv][m]) for lv in LEVELS for m in ("balanced_accuracy", "auroc")]  # type: ignore[index]
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


def _tuned(
    test: SplitData,
    valid: SplitData,
    predict: Callable[[np.ndarray], np.ndarray],
    x_test: object | None = None,
    x_valid: object | None = None,
) -> Predictions:
    """Predictions on the evaluated split with thresholds chosen on valid (features default
    to each split's image embeddings)."""
    valid_pred = valid.predictions(predict(valid.embeddings if x_valid is None else x_valid))
    return test.predictions(predict(test.embeddings if x_test is None else x_test)).tuned_on(valid_pred)


def _label_efficiency(
    fitters: dict[str, Callable[[np.ndarray], Predictions]],
    full: dict[str, Predictions],
    train: SplitData,
    fractions: Sequence[float],
    seed: int,
) -> dict[str, dict[str, object]]:
    """Scores per classifier at each fraction of TRAINING PATIENTS (class-stratified, seeded);
    100% reuses the classifier already fitted on the whole split."""
    out: dict[str, dict[str, object]] = {}
    for name, fit in fitters.items():
        out[name] = {}
        for fraction in fractions:
            mask = subsample_patients(train.patients, train.labels, fraction, seed)
            pred = full[name] if mask.all() else fit(mask)
            out[name][str(fraction)] = {"patients": int(len(np.unique(train.patients[mask]))), **pred.metrics()}
    return out


def _classifier_inputs(opts: EvalOptions) -> dict[str, list[str]]:
    """What each classifier reads at test time (the integrity check warns on any text)."""
    inputs = {MAIN: ["image"], "zero_shot": ["image", "class prompts"], "majority": [], "raw_pixels": ["image"]}
    if opts.from_scratch:
        inputs["from_scratch"] = ["image"]
    if opts.finetune:
        inputs["finetune"] = ["image"]
    return inputs


def _pretrain_patients(run_root: Path) -> set[str] | None:
    """Training patients of the manifest the model was trained on, when the run records it
    (`train_summary.json` key "manifest"); None when unknown."""
    summary = run_root / "train_summary.json"
    if not summary.is_file():
        return None
    source = json.loads(summary.read_text()).get("manifest")
    if not source or not Path(source).is_file():
        return None
    records = read_manifest(source, check_files=False).records
    return {r.patient_id for r in records if r.split == "train"}


def _patient_label(split: SplitData, patient_id: str) -> int:
    return int(split.labels[split.patients == patient_id].max())


def _class_embeddings(model: object, prompts: dict[int, list[str]]) -> np.ndarray:
    from lumbarclip.inference import class_embeddings

    with torch.no_grad():
        return class_embeddings(model, prompts).cpu().numpy()  # type: ignore[arg-type]

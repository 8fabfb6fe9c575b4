"""`build_disc_layer()`: the disc layer of a sagittal model folder in one call. It trains the
disc detector (`training.detector`), fits the disc grader (`evaluation.grades`), scores both,
writes them into the model folder (`lumbarclip.bundle`) and describes them in the model card.
`tie_to_reports()` measures the disc layer against the report text: per-level zero-shot and
level-granular sentence search, for three images of a level, one of them aligned with the
level's sentences on train (`training.crop_text`). Both sit in the top layers because they
train and evaluate.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from lumbarclip.bundle import ModelFolder
from lumbarclip.data.manifest import read_manifest
from lumbarclip.errors import InputError
from lumbarclip.evaluation.disc_zeroshot import (
    ALIGNED, VIEWS, aligned_embeddings, level_discs, level_embeddings, level_retrieval, zero_shot_auroc,
)  # fmt: skip
from lumbarclip.findings import LEVEL_KINDS
from lumbarclip.inference import embed_texts
from lumbarclip.inference.findings import FindingClassifier
from lumbarclip.evaluation.grades import choose_grader, class_scores, disc_table, pfirrmann_scores
from lumbarclip.models.detector import DetectorConfig, DiscDetector
from lumbarclip.models.disc_cnn import DiscCNNConfig
from lumbarclip.training.crop_text import fit_crop_projection
from lumbarclip.training.detector import choose_column_rule, score_detector, train_detector
from lumbarclip.training.grader import train_disc_cnn


def build_disc_layer(
    manifest: str | Path,
    model_dir: str | Path,
    config: DetectorConfig | None = None,
    epochs: int = 8,
    seed: int = 0,
    test: bool = False,
    detector: bool = True,
    grader: bool = True,
    column: bool = True,
    cnn: bool = True,
    cnn_config: DiscCNNConfig | None = None,
    cnn_epochs: int = 6,
    progress: bool = True,
) -> dict[str, object]:
    """The disc layer of a sagittal model folder: the detector (epoch by valid F1) and the
    grader (feature source chosen on valid), then their figures on valid and, with `test`, on
    the test split (score it once, for the chosen settings). `detector=False` / `grader=False`
    keep what the folder already has; `column` chooses the detector's column rule on valid
    (`training.detector.choose_column_rule`), for a new or a kept detector; `cnn` trains the disc
    CNN (`training.grader`) as a third grader source beside the linear ones. The card gets a `discs` section when the folder has one."""
    started = time.perf_counter()
    folder = ModelFolder.load(model_dir, require=())
    figures: dict[str, object] = {}
    if detector:
        folder.detector, figures["detector_train"] = train_detector(manifest, config, epochs=epochs, seed=seed, progress=progress)
    folder.require("detector")
    if column:
        chosen, figures["column_rules_valid"] = choose_column_rule(folder.detector, manifest, progress=progress)
        folder.detector.set_config(chosen)
    if detector or column:
        folder.write(("detector",), overwrite=True)
    rule = folder.detector.config
    figures["column_rule"] = {"min_score": rule.min_score, "column_tolerance": rule.column_tolerance, "gap_ratio": rule.gap_ratio,
                              "score_thresh": rule.score_thresh}  # fmt: skip
    for split in ("valid", "test") if test else ("valid",):
        figures[f"detection_{split}"] = score_detector(folder.detector, manifest, split, progress=progress).to_dict()
    figures["seconds_detector"] = round(time.perf_counter() - started, 1)
    records = read_manifest(manifest).records
    model = folder.model()
    size = model.config.image_size
    if grader:
        network = None
        if cnn:
            network, figures["disc_cnn_train"] = train_disc_cnn(records, size, cnn_config, epochs=cnn_epochs, seed=seed, progress=progress)
        folder.grader, figures["grader_sources_valid"] = choose_grader(model, records, size, seed, progress=progress, network=network)
        folder.write(("grader",), overwrite=True)
    folder.require("grader")
    kept = folder.grader
    figures["grader"] = {"source": kept.source, "temperature": kept.temperature, "gate": kept.gate}
    if test:
        extractor = kept.network if kept.source == "cnn" else model
        table = disc_table(kept.source, extractor, [r for r in records if r.split == "test"], size, progress)
        figures["pfirrmann_test"] = pfirrmann_scores(kept, table)
        figures["classes_test"] = class_scores(kept, table)
    figures["seconds"] = round(time.perf_counter() - started, 1)
    if folder.card is not None:
        folder.card["discs"] = _card_section(folder.detector, figures)
        folder.write(("card",), overwrite=True)
    return figures


def _card_section(detector: DiscDetector, figures: dict[str, object]) -> dict[str, object]:
    """The card's `discs` section: what finds, names and grades the discs, and how well on valid."""
    config = detector.config
    train = figures.get("detector_train") or {}
    return {
        "detector": f"torchvision FCOS over timm {config.backbone} (weights: {config.pretrained or 'none'}), "
        f"{config.image_size} px, one class; epoch of best valid F1 at IoU 0.5",
        "valid_f1": train.get("best_valid_f1"),  # type: ignore[union-attr]
        "valid_detection": figures.get("detection_valid"),
        "column_rule": figures.get("column_rule"),
        "levels": "named by order from the sacrum (lowest disc L5-S1) after the column rule chosen on valid "
        "(column_rule: boxes under min_score dropped; column_tolerance > 0 drops boxes off the column of discs; "
        "gap_ratio > 0 counts wide gaps as missed discs); a transitional vertebra is not guessed",
        "grader": figures["grader"],
        "output": "predict: discs (level, box in image pixels, Pfirrmann grade and class probabilities where validated on valid)",
    }


def tie_to_reports(
    manifest: str | Path, model_dir: str | Path, test: bool = False, steps: int = 300, seed: int = 0
) -> dict[str, object]:
    """Per-level zero-shot and level-granular nearest-report search on valid for three images
    of a level (the disc's crop, the whole slice, the grader's disc features projected into the
    CLIP space by a projection fitted on train against the sentences naming the level, or
    `UNSTATED` where none does); with
    `test`, the view of the best valid macro AUROC scored once on test."""
    folder = ModelFolder.load(model_dir, require=("grader",))
    records = read_manifest(manifest).records
    model = folder.model().eval()
    grader = folder.grader
    extractor = grader.network if grader.source == "cnn" else model
    split = {s: [r for r in records if r.split == s] for s in ("train", "valid", "test")}
    classifier = FindingClassifier.build(model)
    reports = {r.patient_id: r.report for r in records}
    train = level_discs(grader, extractor, split["train"], grader.input_size)
    if len(train.keys) < 2:
        raise InputError(f"{manifest}: fewer than 2 train discs at a graded level; nothing to align")
    projection = fit_crop_projection(
        train.features, embed_texts(model, train.texts()), train.labels(), float(model.logit_scale.detach()), steps=steps, seed=seed
    )

    def score(subset: list, view: str) -> dict[str, object]:
        if view == ALIGNED:
            discs = level_discs(grader, extractor, subset, grader.input_size)
            emb, keys, findings = aligned_embeddings(projection, discs), discs.keys, discs.findings
        else:
            emb, keys, findings = level_embeddings(model, subset, view)
        return {"zero_shot": zero_shot_auroc(classifier, emb, keys, findings), "retrieval": level_retrieval(model, emb, keys, reports)}

    views = (*VIEWS, ALIGNED)
    valid = {view: score(split["valid"], view) for view in views}
    chosen = max(views, key=lambda v: valid[v]["zero_shot"]["macro"]["auroc"] or 0.0)  # type: ignore[index]
    figures: dict[str, object] = {
        "valid": valid, "chosen": chosen, "grader_source": grader.source, "aligned_discs_train": len(train.keys),
        "aligned_discs_with_sentences": sum(bool(t) for t in train.sentences), "aligned_steps": steps, "seed": seed,
        "train_level_positives": dict(zip(LEVEL_KINDS, np.asarray(train.labels().sum(0), dtype=int).tolist())),
    }  # fmt: skip
    if test:
        figures["test"] = score(split["test"], chosen)
    return figures

"""`build_disc_layer()`: the disc layer of a sagittal model folder in one call. It trains the
disc detector (`training.detector`), fits the disc grader (`evaluation.grades`), scores both,
and describes them in the model card. It sits in the top layers because it both trains and
evaluates.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from lumbarclip.data.manifest import read_manifest
from lumbarclip.errors import InputError
from lumbarclip.evaluation.grades import choose_grader, class_scores, disc_table, pfirrmann_scores
from lumbarclip.inference.discs import DETECTOR_FOLDER
from lumbarclip.inference.grades import DiscGrader
from lumbarclip.models import LumbarCLIP
from lumbarclip.models.detector import DetectorConfig, DiscDetector
from lumbarclip.training.detector import score_detector, train_detector


def build_disc_layer(
    manifest: str | Path,
    model_dir: str | Path,
    config: DetectorConfig | None = None,
    epochs: int = 8,
    seed: int = 0,
    test: bool = False,
    detector: bool = True,
    grader: bool = True,
    progress: bool = True,
) -> dict[str, object]:
    """The disc layer of a sagittal model folder: the detector (MODEL/detector/, epoch by valid
    F1) and the grader (MODEL/grader.*, feature source chosen on valid), then their figures on
    valid and, with `test`, on the test split (score it once, for the chosen settings).
    `detector=False` / `grader=False` keep what the folder already has."""
    started = time.perf_counter()
    model_dir = Path(model_dir)
    folder = model_dir / DETECTOR_FOLDER
    if detector:
        train_detector(manifest, folder, config, epochs=epochs, seed=seed, progress=progress)
    found = DiscDetector.load(folder)
    figures: dict[str, object] = {"detector_train": json.loads((folder / "detector-train.json").read_text())}
    for split in ("valid", "test") if test else ("valid",):
        figures[f"detection_{split}"] = score_detector(found, manifest, split, progress=progress).to_dict()
    figures["seconds_detector"] = round(time.perf_counter() - started, 1)
    records = read_manifest(manifest).records
    model = LumbarCLIP.from_pretrained(model_dir).eval()
    size = model.config.image_size
    if grader:
        chosen, compared = choose_grader(model, records, size, seed, progress=progress)
        chosen.save(model_dir)
        figures["grader_sources_valid"] = compared
    kept = DiscGrader.load(model_dir)
    if kept is None:
        raise InputError(f"{model_dir}: no disc grader; run without grader=False")
    figures["grader"] = {"source": kept.source, "gate": kept.gate}
    if test:
        table = disc_table(kept.source, model, [r for r in records if r.split == "test"], size, progress)
        figures["pfirrmann_test"] = pfirrmann_scores(kept, table)
        figures["classes_test"] = class_scores(kept, table)
    figures["seconds"] = round(time.perf_counter() - started, 1)
    _describe_in_card(model_dir, figures)
    return figures


def _describe_in_card(model_dir: Path, figures: dict[str, object]) -> None:
    """The card's `discs` section: what finds, names and grades the discs, and how well on valid."""
    from lumbarclip.inference.operating_point import CARD_FILE, read_card, write_card

    if not (model_dir / CARD_FILE).is_file():
        return
    train = figures["detector_train"]
    card = read_card(model_dir)
    card["discs"] = {
        "detector": f"torchvision FCOS over timm {train['config']['backbone']} (weights: {train['config']['pretrained'] or 'none'}), "  # type: ignore[index]
        f"{train['config']['image_size']} px, one class; epoch of best valid F1 at IoU 0.5",  # type: ignore[index]
        "valid_f1": train["best_valid_f1"],  # type: ignore[index]
        "valid_detection": figures.get("detection_valid"),
        "levels": "named by order from the sacrum (lowest disc L5-S1); a missed or transitional disc shifts the names above it",
        "grader": figures["grader"],
        "output": "predict: discs (level, box in image pixels, Pfirrmann grade and class probabilities where validated on valid)",
    }
    write_card(model_dir, card)

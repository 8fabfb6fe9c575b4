"""`train_detector()`: the disc detector trained on the train split's disc boxes (manifest
`discs` column), the epoch with the best valid F1 at IoU >= 0.5 kept; `build_disc_layer` stores it in the
model folder beside the CLIP model, with the disc grader.

Images go through the one preprocessing (`lumbarclip.data.transforms`: percentile window, zero
pad to a centred square, resize), boxes with them; training adds a small affine and intensity
jitter (torchvision's v2 transforms move the boxes too), never a flip (left and right matter to
the reports, and a sagittal flip swaps front and back).
"""

from __future__ import annotations

import itertools
from dataclasses import asdict, replace
from pathlib import Path

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from torchvision import tv_tensors
from torchvision.transforms import v2
from tqdm import tqdm

from lumbarclip._lightning import adamw_one_cycle, fit_best_epoch
from lumbarclip.data.detection import DetectionScore
from lumbarclip.data.discs import discs_from_json, level_name, ranks_from_the_sacrum
from lumbarclip.data.imageio import load_image
from lumbarclip.data.manifest import ImageRecord, read_manifest
from lumbarclip.data.transforms import MEAN, STD, square_boxes, to_square_tensor
from lumbarclip.errors import InputError
from lumbarclip.models.detector import DetectorConfig, DiscDetector, column_of_discs

class DiscBoxes(Dataset):
    """(model input [1, S, S], {"boxes", "labels"}) of each slice with disc boxes."""

    def __init__(self, records: list[ImageRecord], size: int, augment: bool = False) -> None:
        self.records = [r for r in records if discs_from_json(r.discs)]
        self.size = size
        self.augment = (
            v2.Compose([
                v2.RandomAffine(degrees=6, translate=(0.05, 0.05), scale=(0.9, 1.1)),
                v2.ColorJitter(brightness=0.2, contrast=0.2),
            ])
            if augment else None
        )  # fmt: skip
        self._cache: dict[int, tuple[torch.Tensor, np.ndarray]] = {}

    def __len__(self) -> int:
        return len(self.records)

    def _load(self, i: int) -> tuple[torch.Tensor, np.ndarray]:
        if i not in self._cache:
            record = self.records[i]
            pixels = load_image(record.image_path)
            boxes = np.array([d.box_xyxy for d in discs_from_json(record.discs)], dtype=np.float64)
            self._cache[i] = (to_square_tensor(pixels, self.size), square_boxes(boxes, pixels.shape[:2], self.size))
        return self._cache[i]

    def __getitem__(self, i: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        image, boxes = self._load(i)
        box_tensor = tv_tensors.BoundingBoxes(torch.as_tensor(boxes, dtype=torch.float32), format="XYXY", canvas_size=(self.size, self.size))
        if self.augment is not None:
            image, box_tensor = self.augment(tv_tensors.Image(image), box_tensor)
            box_tensor = v2.functional.clamp_bounding_boxes(box_tensor)
            keep = (box_tensor[:, 2] - box_tensor[:, 0] > 2) & (box_tensor[:, 3] - box_tensor[:, 1] > 2)
            box_tensor = box_tensor[keep]
        image = (torch.as_tensor(image) - MEAN) / STD
        return image, {"boxes": torch.as_tensor(box_tensor).float(), "labels": torch.ones(len(box_tensor), dtype=torch.int64)}


def _collate(batch: list) -> tuple[torch.Tensor, list[dict[str, torch.Tensor]]]:
    images, targets = zip(*batch)
    return torch.stack(images), list(targets)


class DetectorModule(L.LightningModule):
    """FCOS's own losses in training; detection F1 at IoU >= 0.5 on valid, which picks the epoch."""

    def __init__(self, detector: DiscDetector, lr: float, epochs: int) -> None:
        super().__init__()
        self.detector = detector
        self.lr, self.epochs = lr, epochs
        self._score = DetectionScore()

    def training_step(self, batch: tuple, batch_idx: int) -> torch.Tensor:
        images, targets = batch
        losses = self.detector(images, targets)
        loss = sum(losses.values())
        self.log("train/loss", loss, prog_bar=True, batch_size=len(images))
        return loss

    def validation_step(self, batch: tuple, batch_idx: int) -> None:
        images, targets = batch
        for det, target in zip(self.detector(images), targets):
            truth = target["boxes"].numpy()
            self._score.add(det["boxes"].numpy(), truth, [""] * len(truth))

    def on_validation_epoch_end(self) -> None:
        self.log("val/f1", self._score.f1)
        self.log("val/recall", self._score.recall)
        self.log("val/precision", self._score.precision)
        self._score = DetectionScore()

    def configure_optimizers(self) -> dict:
        return adamw_one_cycle(self, self.lr, pct_start=0.1)


def train_detector(
    manifest: str | Path,
    config: DetectorConfig | None = None,
    epochs: int = 8,
    batch_size: int = 8,
    lr: float = 1e-3,
    seed: int = 0,
    progress: bool = True,
) -> tuple[DiscDetector, dict[str, object]]:
    """Train on the train split's boxes, keep the epoch of best valid F1; returns the detector
    and the record of its training (epochs, valid F1, seconds)."""
    config = config or DetectorConfig()
    records = read_manifest(manifest).records
    train_set = DiscBoxes([r for r in records if r.split == "train"], config.image_size, augment=True)
    valid_set = DiscBoxes([r for r in records if r.split == "valid"], config.image_size)
    if not len(train_set) or not len(valid_set):
        raise InputError(f"{manifest}: the detector needs slices with disc boxes (discs column) in train and valid")
    L.seed_everything(seed, workers=True)
    module = DetectorModule(DiscDetector(config), lr, epochs)
    score, name, seconds = fit_best_epoch(
        module, DataLoader(train_set, batch_size=batch_size, shuffle=True, collate_fn=_collate),
        DataLoader(valid_set, batch_size=batch_size, collate_fn=_collate), "val/f1", epochs, progress,
    )  # fmt: skip
    summary = {
        "config": asdict(config), "epochs": epochs, "batch_size": batch_size, "lr": lr, "seed": seed,
        "best_valid_f1": score, "best_epoch_file": name,
        "train_slices": len(train_set), "valid_slices": len(valid_set), "seconds": seconds,
    }  # fmt: skip
    return module.detector.eval(), summary


#: The column rules compared on valid (`choose_column_rule`): min_score, column_tolerance, gap_ratio.
#: The defaults come first (ties go to them); min_score values below the detector's
#: score_thresh lower it (more boxes for the column to choose from).
COLUMN_GRID: dict[str, tuple[float, ...]] = {
    "min_score": (0.3, 0.15, 0.2, 0.4, 0.5),
    "column_tolerance": (0.0, 0.5, 1.0),
    "gap_ratio": (0.0, 1.6),
}


@torch.no_grad()
def _raw_detections(detector: DiscDetector, data: DiscBoxes, floor: float, progress: bool) -> list[tuple[np.ndarray, np.ndarray]]:
    """Every box scoring at least `floor` on each slice (the detector's own threshold lowered
    for the run, then restored)."""
    detector.eval()
    kept, detector.fcos.score_thresh = detector.fcos.score_thresh, floor
    out = []
    try:
        for i in tqdm(range(len(data)), desc="discs (valid, raw)", unit="slice", disable=not progress, leave=False):
            found = detector(data[i][0][None])[0]
            out.append((found["boxes"].numpy().astype(np.float64), found["scores"].numpy().astype(np.float64)))
    finally:
        detector.fcos.score_thresh = kept
    return out


def _score(detections: list[tuple[np.ndarray, np.ndarray]], data: DiscBoxes, config: DetectorConfig, cache: dict) -> DetectionScore:
    """Counts under one rule; `cache` keeps each slice's column per (min_score, tolerance),
    which the gap ratio does not change."""
    score = DetectionScore()
    for i, ((boxes, scores), record) in enumerate(zip(detections, data.records)):
        key = (i, config.min_score, config.column_tolerance)
        if key not in cache:
            cache[key] = column_of_discs(boxes, scores, replace(config, gap_ratio=0.0))[:2]
        kept, _ = cache[key]
        levels = [d.level for d in discs_from_json(record.discs)]
        names = [level_name(int(r)) for r in ranks_from_the_sacrum(kept, config.gap_ratio)]
        score.add(kept, data[i][1]["boxes"].numpy(), levels, names=names)
    return score


def choose_column_rule(
    detector: DiscDetector, manifest: str | Path, grid: dict[str, tuple[float, ...]] | None = None, progress: bool = False
) -> tuple[DetectorConfig, list[dict[str, object]]]:
    """The column rule (`COLUMN_GRID`) with the best valid mean of detection F1 and naming
    accuracy at the three named levels; the detector runs once (at the lowest score of the
    grid), the rules are applied to its raw boxes. Returns the detector's config with the
    chosen rule (its score_thresh lowered where the rule's min_score is lower; apply it with
    `DiscDetector.set_config`), and every rule's figures (ties go to the grid's earlier values)."""
    grid = grid or COLUMN_GRID
    data = DiscBoxes([r for r in read_manifest(manifest).records if r.split == "valid"], detector.config.image_size)
    if not len(data):
        raise InputError(f"{manifest}: no valid slices with disc boxes to choose the column rule on")
    floor = min(detector.config.score_thresh, *grid.get("min_score", (detector.config.score_thresh,)))
    detections = _raw_detections(detector, data, floor, progress)
    rows: list[dict[str, object]] = []
    best: tuple[float, DetectorConfig] | None = None
    cache: dict = {}
    for values in itertools.product(*grid.values()):
        config = replace(detector.config, **dict(zip(grid, values)))
        config.score_thresh = min(config.score_thresh, config.min_score) if config.min_score > 0 else config.score_thresh
        score = _score(detections, data, config, cache)
        naming = score.naming_accuracy()["all"] or 0.0
        objective = (score.f1 + naming) / 2
        rows.append(dict(zip(grid, values)) | {"recall": score.recall, "precision": score.precision, "f1": score.f1,
                                               "naming": naming, "objective": objective})  # fmt: skip
        if best is None or objective > best[0] + 1e-12:
            best = (objective, config)
    assert best is not None
    return best[1], rows


@torch.no_grad()
def score_detector(detector: DiscDetector, manifest: str | Path, split: str, progress: bool = False) -> DetectionScore:
    """Detection and naming on a split's slices with disc boxes (boxes in model-input pixels),
    under the detector's column rule."""
    records = [r for r in read_manifest(manifest).records if r.split == split]
    data = DiscBoxes(records, detector.config.image_size)
    score = DetectionScore()
    detector.eval()
    for i in tqdm(range(len(data)), desc=f"discs ({split})", unit="slice", disable=not progress):
        image, target = data[i]
        found = detector(image[None])[0]
        boxes, _, ranks = column_of_discs(found["boxes"].numpy().astype(np.float64), found["scores"].numpy().astype(np.float64), detector.config)
        levels = [d.level for d in discs_from_json(data.records[i].discs)]
        score.add(boxes, target["boxes"].numpy(), levels, names=[level_name(int(r)) for r in ranks])
    return score

"""`train_disc_cnn()`: the disc CNN (`lumbarclip.models.disc_cnn`) trained on the train split's
labelled disc crops, the epoch with the best valid linear-weighted kappa (Pfirrmann, the three
graded levels, per disc) kept. `build_disc_layer` then compares it on valid with the linear
graders (`lumbarclip.evaluation.grades`) and keeps the best.

Each slice is preprocessed once (the CLIP model's input at its size); a disc's crop is cut from
it with torchvision's `roi_align` around a jittered box (shift and scale, the detector's boxes
are not the labelled ones) and a random contrast and brightness, never a flip. The loss: cross
entropy on the grade (discs of the graded levels only) plus the absolute error of the expected
grade, so a miss by one costs less than a miss by three, plus a weighted binary cross entropy
per disc class.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from sklearn.metrics import cohen_kappa_score
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from lumbarclip._lightning import adamw_one_cycle, fit_best_epoch
from lumbarclip.bundle.grader import DISC_CLASSES, PFIRRMANN
from lumbarclip.data.discs import NAMED_LEVELS, labelled_slice
from lumbarclip.data.manifest import ImageRecord
from lumbarclip.errors import InputError
from lumbarclip.inference.grades import disc_crops
from lumbarclip.models.disc_cnn import DiscCNN, DiscCNNConfig


@dataclass
class LabelledDiscs:
    """Every labelled disc of a split's slices: the slice it is on, its box (model-input pixels)
    and its labels; the slices themselves are kept once, preprocessed."""

    inputs: torch.Tensor  # [N, 1, S, S]
    slice_of: np.ndarray  # [K]
    boxes: np.ndarray  # [K, 4]
    pfirrmann: np.ndarray  # [K], 0 where not graded or not at a graded level
    classes: np.ndarray  # [K, C]


def labelled_discs(records: list[ImageRecord], size: int, progress: bool = False) -> LabelledDiscs:
    inputs, slice_of, boxes, grades, classes = [], [], [], [], []
    for record in tqdm(records, desc="disc crops", unit="slice", disable=not progress, leave=False):
        read = labelled_slice(record, size)
        if read is None:
            continue
        model_input, slice_boxes, discs = read
        inputs.append(model_input)
        boxes.append(slice_boxes)
        for d in discs:
            slice_of.append(len(inputs) - 1)
            grades.append(d.pfirrmann if d.pfirrmann and d.level in NAMED_LEVELS else 0)
            classes.append([float(c in d.classes) for c in DISC_CLASSES])
    if not inputs:
        return LabelledDiscs(torch.zeros(0, 1, size, size), np.zeros(0, int), np.zeros((0, 4)), np.zeros(0, int), np.zeros((0, len(DISC_CLASSES))))
    return LabelledDiscs(torch.stack(inputs), np.array(slice_of), np.concatenate(boxes), np.array(grades), np.array(classes))


class DiscCrops(Dataset):
    """(crop [1, rows, cols], grade index or -1, classes [C]) of each labelled disc."""

    def __init__(self, discs: LabelledDiscs, crop: tuple[int, int], augment: bool = False, seed: int = 0) -> None:
        self.discs, self.crop, self.augment = discs, crop, augment
        self.rng = np.random.default_rng(seed)

    def __len__(self) -> int:
        return len(self.discs.slice_of)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int, torch.Tensor]:
        box = self.discs.boxes[i].copy()
        if self.augment:
            w, h = box[2] - box[0], box[3] - box[1]
            cx, cy = (box[0] + box[2]) / 2 + self.rng.normal(0, 0.08) * w, (box[1] + box[3]) / 2 + self.rng.normal(0, 0.08) * h
            s = np.exp(self.rng.normal(0, 0.1))
            box = np.array([cx - s * w / 2, cy - s * h / 2, cx + s * w / 2, cy + s * h / 2])
        crop = disc_crops(self.discs.inputs[self.discs.slice_of[i]], box[None], self.crop)[0]
        if self.augment:
            crop = crop * float(np.exp(self.rng.normal(0, 0.15))) + float(self.rng.normal(0, 0.2))
        grade = int(self.discs.pfirrmann[i]) - 1 if self.discs.pfirrmann[i] else -1
        return crop, grade, torch.as_tensor(self.discs.classes[i], dtype=torch.float32)


class DiscCNNModule(L.LightningModule):
    """The loss of the module docstring; valid linear-weighted kappa per disc picks the epoch."""

    def __init__(self, network: DiscCNN, lr: float, grade_weights: torch.Tensor, pos_weight: torch.Tensor) -> None:
        super().__init__()
        self.network, self.lr = network, lr
        self.register_buffer("grade_weights", grade_weights)
        self.register_buffer("pos_weight", pos_weight)
        self.register_buffer("grade_values", torch.arange(1, len(grade_weights) + 1, dtype=torch.float32))
        self._valid: list[tuple[np.ndarray, np.ndarray]] = []

    def _loss(self, batch: tuple) -> torch.Tensor:
        crops, grade, classes = batch
        pf, cl = self.network(crops)
        loss = F.binary_cross_entropy_with_logits(cl, classes, pos_weight=self.pos_weight)
        graded = grade >= 0
        if graded.any():
            logits, target = pf[graded], grade[graded]
            expected = (logits.softmax(-1) * self.grade_values).sum(-1)
            loss = loss + F.cross_entropy(logits, target, weight=self.grade_weights) + (expected - (target + 1).float()).abs().mean()
        return loss

    def training_step(self, batch: tuple, batch_idx: int) -> torch.Tensor:
        loss = self._loss(batch)
        self.log("train/loss", loss, prog_bar=True, batch_size=len(batch[0]))
        return loss

    def validation_step(self, batch: tuple, batch_idx: int) -> None:
        crops, grade, _ = batch
        graded = grade >= 0
        if graded.any():
            pred = self.network(crops[graded])[0].argmax(-1)
            self._valid.append((grade[graded].numpy(), pred.numpy()))

    def on_validation_epoch_end(self) -> None:
        truth = np.concatenate([t for t, _ in self._valid]) if self._valid else np.zeros(0)
        pred = np.concatenate([p for _, p in self._valid]) if self._valid else np.zeros(0)
        kappa = cohen_kappa_score(truth, pred, weights="linear", labels=list(range(len(PFIRRMANN)))) if len(truth) else 0.0
        self.log("val/kappa", float(np.nan_to_num(kappa)))
        self._valid = []

    def configure_optimizers(self) -> dict:
        return adamw_one_cycle(self, self.lr, pct_start=0.15)


def train_disc_cnn(
    records: list[ImageRecord],
    size: int,
    config: DiscCNNConfig | None = None,
    epochs: int = 6,
    batch_size: int = 64,
    lr: float = 2e-3,
    seed: int = 0,
    progress: bool = True,
) -> tuple[DiscCNN, dict[str, object]]:
    """Train on the train split's labelled discs (crops of the `size`-px model input), keep the
    epoch of best valid kappa; returns the network and the record of its training."""
    config = config or DiscCNNConfig()
    train = labelled_discs([r for r in records if r.split == "train"], size, progress)
    valid = labelled_discs([r for r in records if r.split == "valid"], size, progress)
    if not (train.pfirrmann > 0).any() or not (valid.pfirrmann > 0).any():
        raise InputError("the disc CNN needs Pfirrmann-graded discs (discs column) in train and valid")
    counts = np.bincount(train.pfirrmann[train.pfirrmann > 0] - 1, minlength=len(PFIRRMANN)).astype(np.float64)
    grade_weights = torch.as_tensor(np.where(counts > 0, np.sqrt(counts.max() / np.maximum(counts, 1)), 0.0), dtype=torch.float32)
    pos = train.classes.sum(axis=0)
    pos_weight = torch.as_tensor(np.clip((len(train.classes) - pos) / np.maximum(pos, 1), 1.0, 10.0), dtype=torch.float32)
    L.seed_everything(seed, workers=True)
    module = DiscCNNModule(DiscCNN(config), lr, grade_weights, pos_weight)
    score, name, seconds = fit_best_epoch(
        module, DataLoader(DiscCrops(train, config.crop, augment=True, seed=seed), batch_size=batch_size, shuffle=True),
        DataLoader(DiscCrops(valid, config.crop), batch_size=256), "val/kappa", epochs, progress,
    )  # fmt: skip
    summary = {
        "config": asdict(config), "epochs": epochs, "batch_size": batch_size, "lr": lr, "seed": seed, "input_size": size,
        "best_valid_kappa_per_disc": score, "best_epoch_file": name,
        "train_discs": len(train.slice_of), "valid_discs": len(valid.slice_of), "seconds": seconds,
    }  # fmt: skip
    return module.network.eval(), summary

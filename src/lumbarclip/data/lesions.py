"""Where a synthetic image's findings show, as its cohort's `findings.jsonl` records it: the
ground truth of the pointing game. `lumbarclip synth` writes it, `evaluation.pointing` reads it.

One image's record: `{"boxes": [{"kind", "box": [x0, y0, x1, y1]}], "runs": [[row, x0, x1]]}`;
box corners and run ends are inclusive pixel columns and rows, and the runs cover, row by row,
every pixel the findings visibly change (tighter than the boxes, which span a bulge's ring).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lumbarclip.errors import InputError

#: Ground-truth regions of `ImageLesions.region`: the changed pixels or their boxes filled.
TRUTHS: tuple[str, ...] = ("mask", "box")


@dataclass(frozen=True)
class LesionBox:
    """One connected region of one kind of finding, inclusive pixel corners (x0, y0, x1, y1)."""

    kind: str
    box: tuple[int, int, int, int]


@dataclass(frozen=True)
class ImageLesions:
    """One image's lesions: their boxes and the changed pixels as runs (row, x0, x1)."""

    boxes: tuple[LesionBox, ...]
    runs: tuple[tuple[int, int, int], ...]

    @classmethod
    def from_mask(cls, boxes: Iterable[Mapping[str, object]], mask: np.ndarray) -> ImageLesions:
        """From `{"kind", "box"}` dicts and an [H, W] bool mask of the changed pixels."""
        runs = []
        for row in np.flatnonzero(mask.any(axis=1)):
            padded = np.concatenate(([0], mask[row].astype(np.int8), [0]))
            edges = np.flatnonzero(np.diff(padded))
            runs += [(int(row), int(a), int(b) - 1) for a, b in zip(edges[::2], edges[1::2])]
        return cls(tuple(LesionBox(str(b["kind"]), tuple(int(v) for v in b["box"])) for b in boxes), tuple(runs))  # type: ignore[arg-type, union-attr]

    @classmethod
    def from_dict(cls, data: object) -> ImageLesions:
        """From the JSON record; ValueError naming what is wrong with it."""
        if not isinstance(data, dict) or not isinstance(data.get("boxes"), list) or not isinstance(data.get("runs"), list):
            raise ValueError("lesions need lists boxes and runs")
        try:
            boxes = tuple(LesionBox(str(b["kind"]), _ints(b["box"], 4)) for b in data["boxes"])
            runs = tuple(_ints(run, 3) for run in data["runs"])
        except (KeyError, TypeError, ValueError):
            raise ValueError("each box needs a kind and 4 integer corners, each run 3 integers") from None
        return cls(boxes, runs)  # type: ignore[arg-type]

    def to_dict(self) -> dict[str, object]:
        """The JSON record (lists, as `findings.jsonl` holds it)."""
        return {
            "boxes": [{"kind": b.kind, "box": list(b.box)} for b in self.boxes],
            "runs": [list(run) for run in self.runs],
        }

    def mask(self, shape: tuple[int, int]) -> np.ndarray:
        """[H, W] bool: the pixels the findings change."""
        mask = np.zeros(shape, dtype=bool)
        for row, x0, x1 in self.runs:
            mask[row, x0 : x1 + 1] = True
        return mask

    def region(self, shape: tuple[int, int], truth: str = "mask") -> np.ndarray:
        """[H, W] bool region of the pointing game: the changed pixels (`mask`) or the boxes
        filled (`box`)."""
        if truth == "mask":
            return self.mask(shape)
        if truth == "box":
            region = np.zeros(shape, dtype=bool)
            for item in self.boxes:
                x0, y0, x1, y1 = item.box
                region[y0 : y1 + 1, x0 : x1 + 1] = True
            return region
        raise ValueError(f"truth must be one of {', '.join(TRUTHS)}; got {truth!r}")


def _ints(values: object, n: int) -> tuple[int, ...]:
    if not isinstance(values, list) or len(values) != n or not all(isinstance(v, int) for v in values):
        raise ValueError(f"expected {n} integers")
    return tuple(values)


def read_lesions(manifest: str | Path) -> dict[Path, ImageLesions]:
    """Lesions of a synthetic cohort (`findings.jsonl` beside its manifest): resolved image
    path -> `ImageLesions`, images with a visible lesion only. InputError naming the file and
    line when the file is missing, malformed or records no lesions."""
    root = Path(manifest).parent
    path = root / "findings.jsonl"
    if not path.is_file():
        raise InputError(f"{path}: not found; lesions come with synthetic cohorts (lumbarclip synth)")
    lesions: dict[Path, ImageLesions] = {}
    seen = False
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise InputError(f"{path}: line {number}: not JSON ({err.msg})") from None
        if "lesions" in record:
            seen = True
            for image, found in record["lesions"].items():
                try:
                    lesions[(root / image).resolve()] = ImageLesions.from_dict(found)
                except ValueError as err:
                    raise InputError(f"{path}: line {number}: lesions of {image}: {err}") from None
    if not seen:
        raise InputError(f"{path}: no lesions; lumbarclip synth writes them with each cohort")
    return lesions

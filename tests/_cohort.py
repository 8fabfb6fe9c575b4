"""Look-alike sagittal cohorts for the disc tests: a manifest row per slice with its discs, and
the manifest written as `lumbarclip.data.manifest` reads it."""

from __future__ import annotations

import csv
import json
from pathlib import Path


def slice_row(image: Path, patient: int, split: str, discs: list[dict]) -> dict[str, object]:
    """One sagittal slice of an abnormal patient, its discs as the `discs` column holds them."""
    return {"image_path": f"img/{image.name}", "patient_id": f"{patient:04d}", "split": split, "label": 1,
            "report": "Disc bulge.", "plane": "sagittal", "discs": json.dumps(discs)}  # fmt: skip


def write_manifest(path: Path, rows: list[dict[str, object]]) -> str:
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return str(path)

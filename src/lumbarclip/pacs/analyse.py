"""One study's files in, its result datasets out: the clinic's predict path (series selection,
slice choice, diagnosis, findings, saliency) via `Predictor`, then the SR and, if asked, the
Secondary Capture overlays. The same analyser serves the listening node and the pull mode."""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pydicom
from pydicom.dataset import Dataset

from lumbarclip.errors import InputError
from lumbarclip.pacs.sr import ModelInfo, build_overlays, build_report


class StudyAnalyser:
    """Callable `(files of one study) -> [SR, *overlays]` around a loaded Predictor."""

    def __init__(self, predictor: Any, overlays: bool = False, top_k: int = 3) -> None:
        self.predictor = predictor
        self.overlays = overlays
        self.top_k = top_k
        self.model = ModelInfo.from_card(getattr(predictor, "card", None) or {})

    @classmethod
    def load(cls, model_dir: str | Path, runtime: str = "torch", **kwargs: Any) -> StudyAnalyser:
        """Load the model once; the analyser is then reused for every study."""
        from lumbarclip.inference.predict import Predictor

        return cls(Predictor.load(model_dir, runtime=runtime), **kwargs)

    def __call__(self, files: Sequence[str | Path]) -> list[Dataset]:
        return self.analyse(files)

    def analyse(self, files: Sequence[str | Path]) -> list[Dataset]:
        """Diagnose one study. InputError when the files span several studies or when no
        image of the study could be diagnosed (the reasons Predictor gave are named)."""
        paths = [Path(f) for f in files]
        if not paths:
            raise InputError("a study with no instances")
        headers = {str(p): pydicom.dcmread(p, stop_before_pixels=True) for p in paths}
        if len({str(ds.StudyInstanceUID) for ds in headers.values()}) != 1:
            raise InputError(f"{len(paths)} files belong to more than one study")
        with tempfile.TemporaryDirectory(prefix="lumbarclip-saliency-") as tmp:
            result = self.predictor.predict(
                [str(p) for p in paths],
                top_k=self.top_k,
                saliency_dir=Path(tmp) if self.overlays else None,
            )
            if len(result.studies) != 1:
                reasons = sorted({str(s.get("reason", "?")) for s in result.skipped})
                raise InputError(
                    f"expected one diagnosed study, got {len(result.studies)}"
                    + (f" (skipped: {'; '.join(reasons)})" if reasons else "")
                )
            image_sources = [headers[str(Path(img["path"]))] for img in result.images]
            out: list[Dataset] = [
                build_report(
                    list(headers.values()), result.studies[0], result.images, image_sources, self.model
                )
            ]
            if self.overlays:
                pairs = [
                    (ds, img["saliency"])
                    for img, ds in zip(result.images, image_sources)
                    if img.get("saliency")
                ]
                out += build_overlays([ds for ds, _ in pairs], [png for _, png in pairs])
        return out

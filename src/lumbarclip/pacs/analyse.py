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

from lumbarclip.bundle import layout
from lumbarclip.errors import InputError
from lumbarclip.inference.results import Skipped, StudyResult
from lumbarclip.pacs.sr import ModelInfo, build_overlays, build_report


class StudyAnalyser:
    """Callable `(folder of one study's instances) -> [SR, *overlays]` around a loaded Predictor."""

    def __init__(self, predictor: Any, overlays: bool = False, top_k: int = 3) -> None:
        self.predictor = predictor
        self.overlays = overlays
        self.top_k = top_k
        model_dir = getattr(predictor, "model_dir", None)
        weights = Path(model_dir) / layout.WEIGHTS if model_dir else None
        self.model = ModelInfo.from_card(getattr(predictor, "card", None) or {}, weights)

    @classmethod
    def load(
        cls, model_dir: str | Path, runtime: str = "torch", salt: str | None = None, **kwargs: Any
    ) -> StudyAnalyser:
        """Load the model once, with the per-finding prompt embeddings when findings are asked
        for, so the first study does not wait for them; then reused for every study."""
        from lumbarclip.inference.predict import Predictor

        analyser = cls(Predictor.load(model_dir, runtime=runtime, salt=salt), **kwargs)
        if analyser.top_k:
            analyser.predictor.findings()
        return analyser

    def __call__(self, folder: Path, previous: Sequence[Dataset] = ()) -> list[Dataset]:
        return self.analyse(folder, previous)

    def analyse(self, folder: str | Path, previous: Sequence[Dataset] = ()) -> list[Dataset]:
        """Diagnose the study whose instances are the `*.dcm` files in `folder`: Predictor
        picks the series and slices as for any study folder. InputError when the files span
        several studies. A study with nothing the model takes gets a "not assessed" SR with the
        reasons (input guard, header checks, no axial T1/T2 series). `previous`: SRs already sent
        for this study, which the new one names as predecessors (an amended report)."""
        folder = Path(folder)
        paths = sorted(folder.glob("*.dcm"))
        if not paths:
            raise InputError(f"{folder}: a study with no instances")
        headers = {str(p): pydicom.dcmread(p, stop_before_pixels=True) for p in paths}
        if len({str(ds.StudyInstanceUID) for ds in headers.values()}) != 1:
            raise InputError(f"{folder}: {len(paths)} files belong to more than one study")
        with tempfile.TemporaryDirectory(prefix="lumbarclip-saliency-") as tmp:
            result = self.predictor.predict(
                [folder], top_k=self.top_k, saliency_dir=Path(tmp) if self.overlays else None
            )
            if len(result.studies) > 1:
                raise InputError(f"expected one study, got {len(result.studies)}")
            study = result.studies[0] if result.studies else self._not_assessed(result.skipped)
            image_sources = [headers[str(Path(img.path))] for img in result.images]
            out: list[Dataset] = [
                build_report(
                    list(headers.values()), study, result.images, image_sources, self.model, previous
                )
            ]
            if self.overlays:
                pairs = [(ds, img.saliency) for img, ds in zip(result.images, image_sources) if img.saliency]
                out += build_overlays([ds for ds, _ in pairs], [png for _, png in pairs])
        return out

    def _not_assessed(self, skipped: Sequence[Skipped]) -> StudyResult:
        """The study line of a study with nothing the model takes (e.g. no axial T1/T2 series):
        no verdict, the reasons its files were left out."""
        reasons = sorted({s.reason for s in skipped})
        return StudyResult(
            study="", n_images=0, n_in_distribution=0, p_abnormal_mean_raw=None, p_abnormal=None, label=None,
            threshold=self.predictor.operating_point.thresholds["patient"], rule=None, selection=[],
            not_validated=[], reason="; ".join(reasons) or "no image to assess",
        )  # fmt: skip

"""`Predictor`: a model folder diagnoses new scans (image files, DICOM series or study folders).

    predictor = Predictor.load(model_dir, runtime="torch")   # or "onnx"; model loaded once
    result = predictor.predict(["scan.dcm", "study_folder/"], top_k=3)
    for line in result.lines(): print(json.dumps(line))

Inputs: a file is scored as given (DICOM, PNG/JPEG/TIFF, NIfTI's middle slice). A folder is
searched recursively: its DICOM files are grouped by study, and `data.study.choose_slices`
picks the slices of the model's plane (axial: the T1/T2 disc-level slices, the Mendeley
adapter's rule; sagittal: the middle slice of each T1/T2 stack), saying which and why;
its other images are each scored. Files named like the public dataset (`T1_0002_D3.png`) give
their sequence, level and patient from the name.

Every image is preprocessed by `data.transforms.preprocess`, the function evaluation uses, as the
model folder's preprocessing spec says; an image that preprocessing refuses (too small to enlarge
to the model's size, too elongated, non-square pixels: `data.transforms.size_refusal`) goes to
`skipped` with the reason, as do unreadable files. This is the one place `predict`, `serve` and
`pacs` turn files into model inputs.

Before any verdict each image passes the input guard (`lumbarclip.decision.InputGuard`, fitted
at evaluation) and, for DICOM, the header checks (`data.study.header_refusal`: MR, the
model's plane from its preprocessing spec, lumbar). Every image line names the plane it assessed. An image that fails either gets `"in_distribution": false`, `"label": null`, no
`p_abnormal` and a `reason`. The others get the calibrated P(abnormal) and a label at the image
threshold.

A study is only what an identity says belongs together: one DICOM StudyInstanceUID, one
patient of the dataset's file naming, or the name the user gives (`study=`). Files that merely
share a folder or an upload are separate studies. A study's verdict uses its in-distribution
images only, and only when they have the shape of the patients the study map was fitted on
(`OperatingPoint.study_unit`, e.g. T1 and T2 at three discs): then the mean of their
UNCALIBRATED probabilities (evaluation's patient rule) goes through the patient-level Platt map
and the patient threshold. Any other study gets no verdict and the reason; the raw mean is
always given beside. Studies are named by keyed-hash pseudonyms (`data.privacy`) of their UID
or file; no DICOM header value that identifies anyone reaches the output. The salt is `salt`,
else `LUMBARCLIP_SALT`, else random per Predictor (then pseudonyms differ between runs).
"""

from __future__ import annotations

import os
import re
import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from tqdm.auto import tqdm

from lumbarclip.data.imageio import image_format
from lumbarclip.data.privacy import SALT_ENV, pseudonymise
from lumbarclip.data.transforms import load_model_input
from lumbarclip.decision import InputGuard, guard_views, sigmoid, slot, unit_mismatch
from lumbarclip.errors import InputError
from lumbarclip.bundle import ModelFolder, OperatingPoint
from lumbarclip.inference.results import Disc, Finding, ImageResult, Label, NearestReport, PredictResult, Skipped, StudyResult

if TYPE_CHECKING:
    from lumbarclip.models import LumbarCLIP

RUNTIMES: tuple[str, ...] = ("torch", "onnx")
#: Suffixes of non-DICOM images picked up inside folders (other files there are ignored).
IMAGE_SUFFIXES: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".nii", ".nii.gz")
LABELS: tuple[Label, Label] = ("normal", "abnormal")


@dataclass
class _Item:
    """One image to score and what is known about it (internal; keys are raw, not output)."""

    path: Path
    study_key: str
    sequence: str | None = None
    level: str | None = None
    series: int | None = None
    reason: str = ""
    series_notes: tuple[str, ...] = ()
    refusal: str | None = None  # why the header puts it outside what the model takes
    plane: str | None = None  # from the DICOM header; None when the file has no orientation


class Predictor:
    """A model folder loaded once (`lumbarclip.bundle.ModelFolder`): scorer (PyTorch or
    onnxruntime), operating point, card, input guard, optional report bank and disc layer; the
    full model (text tower) only when findings or saliency need it."""

    def __init__(self, folder: ModelFolder, scorer: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]], runtime: str, salt: str | None = None) -> None:
        folder.require("operating_point", "guard", "card")
        self.folder = folder
        self.model_dir = folder.path
        self.operating_point: OperatingPoint = folder.operating_point
        self.guard: InputGuard = folder.guard
        self.card: dict[str, object] = folder.card
        self.bank = folder.bank
        self.scorer = scorer
        self.runtime = runtime
        self.detector = folder.detector  # the disc detector (sagittal models), or None
        self.grader = folder.grader if folder.detector is not None else None
        self._findings: object | None = None
        self.salt = salt or os.environ.get(SALT_ENV) or secrets.token_hex(16)

    @classmethod
    def load(cls, model_dir: str | Path, runtime: str = "torch", salt: str | None = None) -> Predictor:
        """Everything `predict` needs, read from the model folder (nothing fetched)."""
        if runtime not in RUNTIMES:
            raise InputError(f"--runtime must be one of {', '.join(RUNTIMES)}, got {runtime!r}")
        folder = ModelFolder.load(model_dir)
        if runtime == "torch":
            from lumbarclip.inference.scorer import ImageScorer

            module = ImageScorer(folder.model(), folder.operating_point).eval()

            @torch.no_grad()
            def scorer(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
                emb, logit = module(torch.from_numpy(images))
                return emb.numpy(), logit.numpy()

        else:
            from lumbarclip.inference.onnx import load_onnx_scorer

            scorer = load_onnx_scorer(folder)
        return cls(folder, scorer, runtime, salt)

    @property
    def model(self) -> LumbarCLIP:
        """The full LumbarCLIP (loaded on first use under the ONNX runtime)."""
        return self.folder.model()

    def findings(self) -> object | None:
        """The per-finding zero-shot classifier, built once (None when unavailable)."""
        if self._findings is None:
            from lumbarclip.inference.findings import FindingClassifier

            self._findings = FindingClassifier.build(self.model, contrast=self.operating_point.findings.contrast)
        return self._findings

    # --- the work -----------------------------------------------------------------------------

    def predict(
        self,
        inputs: Sequence[str | Path],
        top_k: int = 3,
        saliency_dir: Path | None = None,
        progress: bool = False,
        overwrite: bool = False,
        batch_size: int = 32,
        study: str | None = None,
    ) -> PredictResult:
        """Score every readable image of `inputs`; unreadable ones go to `result.skipped`.
        `study` names one study that all inputs belong to (else identities decide)."""
        if top_k < 0:
            raise InputError(f"--top-k must be >= 0, got {top_k}")
        if study is not None and not study.strip():
            raise InputError("--study must not be empty")
        result = PredictResult()
        progress = progress and any(Path(i).is_dir() for i in inputs)  # bars on folders only
        items = self._collect(inputs, result, progress)
        if study is not None:
            for item in items:
                item.study_key = f"user:{study}"
        spec = self.operating_point.preprocess
        tensors, kept, pixels = [], [], []
        for item in tqdm(items, desc="load images", unit="image", disable=not progress, leave=False):
            try:
                tensor, image = load_model_input(item.path, spec)
            except InputError as err:
                result.skipped.append(Skipped(input=str(item.path), reason=_reason(err, item.path)))
                continue
            tensors.append(tensor)
            kept.append(item)
            pixels.append(image.pixels)
        if not kept:
            return result
        images = torch.stack(tensors).numpy()
        emb, logit = [], []
        for start in range(0, len(images), batch_size):
            e, lg = self.scorer(images[start : start + batch_size])
            emb.append(e)
            logit.append(lg)
        embeddings, logits = np.concatenate(emb), np.concatenate(logit)
        prob = self.operating_point.calibrate(logits)
        ratios = self.guard.ratios(guard_views(embeddings, images, spec.input_range, list(self.guard.views)))
        ood = np.max(np.stack(list(ratios.values())), axis=0)
        guard_ok = self.guard.accepts(ood)
        inside = np.array([bool(ok) and item.refusal is None for ok, item in zip(guard_ok, kept)])
        study_ids = [
            item.study_key[5:] if item.study_key.startswith("user:") else pseudonymise(item.study_key, self.salt)
            for item in kept
        ]
        findings = self._top_findings(embeddings, images, [i.level for i in kept], top_k)
        nearest = self.bank.nearest(embeddings, top_k) if self.bank is not None and top_k else [[] for _ in kept]
        overlays = self._saliency(torch.from_numpy(images), pixels, study_ids, saliency_dir, overwrite)
        for n, item in enumerate(kept):
            plane = item.plane or " or ".join(spec.planes)
            verdict: dict[str, object]
            if inside[n]:
                verdict = {
                    "p_abnormal": round(float(prob[n]), 6),
                    "label": LABELS[int(self.operating_point.label(prob[n], "image"))],
                    "threshold": round(self.operating_point.thresholds["image"], 6),
                    "top_findings": findings[n],
                    "nearest_reports": [NearestReport(**report) for report in nearest[n]],
                }
            else:
                verdict = {
                    "p_abnormal": None,
                    "label": None,
                    "reason": "not assessed: "
                    + (item.refusal or _guard_reason({name: float(r[n]) for name, r in ratios.items()})),
                }  # fmt: skip
            if overlays:
                verdict["saliency"] = str(overlays[n])
            if self.detector is not None:
                verdict["discs"] = self._discs(pixels[n], torch.from_numpy(images[n]), bool(inside[n]), plane)
                verdict["image_size"] = [int(pixels[n].shape[1]), int(pixels[n].shape[0])]  # width, height: the boxes' frame
            result.images.append(ImageResult(
                path=str(item.path),
                study=study_ids[n],
                series=item.series,
                sequence=item.sequence,
                level=item.level,
                plane=plane,
                plane_from="DICOM header" if item.plane else "the model's plane (the file states no orientation)",
                in_distribution=bool(inside[n]),
                ood_score=round(float(ood[n]), 4),
                **verdict,  # type: ignore[arg-type]
            ))  # fmt: skip
        result.studies = self._studies(kept, study_ids, logits, inside)
        return result

    def _studies(
        self, kept: list[_Item], study_ids: list[str], logits: np.ndarray, inside: np.ndarray
    ) -> list[StudyResult]:
        """One line per study. A verdict only from its in-distribution images, and only when they
        have the evaluated unit's shape: then evaluation's patient rule (mean of the images' probe
        probabilities) through the patient-level map, at the patient threshold."""
        raw = sigmoid(np.asarray(logits, dtype=np.float64))
        threshold = self.operating_point.thresholds["patient"]
        out = []
        for sid in dict.fromkeys(study_ids):
            idx = [n for n, s in enumerate(study_ids) if s == sid]
            members = [kept[n] for n in idx]
            good = [n for n in idx if inside[n]]
            notes = [note for m in members for note in m.series_notes]
            selection = list(dict.fromkeys([*notes, *(m.reason for m in members if m.reason)]))
            line: dict[str, object] = {
                "study": str(sid),
                "n_images": len(members),
                "n_in_distribution": len(good),
                "p_abnormal_mean_raw": round(float(raw[good].mean()), 6) if good else None,
                "p_abnormal": None,
                "label": None,
                "threshold": round(threshold, 6),
                "rule": None,
                "selection": selection,
                "not_validated": self.not_validated,
            }
            mismatch = unit_mismatch(self.operating_point.study_unit, [slot(kept[n].sequence, kept[n].level) for n in good])
            if not good:
                line["reason"] = "no study verdict: none of its images is in distribution"
            elif mismatch:
                line["reason"] = f"no study verdict: {mismatch}; see the image verdicts"
            else:
                p = float(self.operating_point.calibrate_patient(np.array([raw[good].mean()]))[0])
                line |= {
                    "p_abnormal": round(p, 6),
                    "label": LABELS[int(p >= threshold)],
                    "rule": "patient: patient-level Platt map of the mean of its in-distribution images' "
                    "uncalibrated probabilities (evaluation's patient rule), fitted on valid patients",
                }
            out.append(StudyResult(**line))  # type: ignore[arg-type]
        return out

    def _discs(self, pixels: np.ndarray, model_input: torch.Tensor, inside: bool, view: str) -> list[Disc]:
        """The slice's named discs, or one "not assessed" entry with the reason."""
        from lumbarclip.inference.discs import find_discs, not_assessed

        if not inside:
            return not_assessed("the image itself was not assessed")
        if view != "sagittal":
            return not_assessed(f"{view} slice: discs are found and named on sagittal slices")
        model = self.model if self.grader is not None and self.grader.source == "clip" else None
        found = find_discs(self.detector, pixels, self.grader, model, model_input)  # type: ignore[arg-type]
        return found or not_assessed("no disc found")

    @property
    def not_validated(self) -> list[str]:
        """Finding kinds whose scores are never shown: their valid AUROC missed the gate."""
        from lumbarclip.findings import LEVEL_KINDS

        shown = set(self.operating_point.validated_findings)
        return [k for k in LEVEL_KINDS if k not in shown]

    def _top_findings(
        self, embeddings: np.ndarray, images: np.ndarray, levels: list[str | None], k: int
    ) -> list[list[Finding]]:
        """The `k` best-scoring VALIDATED finding kinds of each image, at its level, scored by the
        scorer evaluation chose on valid: the prompts (zero-shot) or the model's finding head."""
        if not k or not self.operating_point.validated_findings:
            return [[] for _ in levels]
        if self.operating_point.findings.scorer == "head":
            from lumbarclip.inference.findings import head_outputs

            scores, _ = head_outputs(self.model, torch.from_numpy(images))  # type: ignore[arg-type]
        else:
            scores = self.findings().scores(embeddings, levels)  # type: ignore[union-attr]
        kinds = [kind for kind in scores if kind in self.operating_point.validated_findings]
        table = np.stack([scores[kind] for kind in kinds], axis=1)  # [N, K]
        out = []
        for row, level in zip(table, levels):
            best = np.argsort(-row, kind="stable")[:k]
            out.append([Finding(finding=kinds[j], level=level, score=round(float(row[j]), 4)) for j in best])
        return out

    def _saliency(
        self, images: torch.Tensor, pixels: list[np.ndarray], study_ids: list[str], folder: Path | None, overwrite: bool
    ) -> list[Path]:
        """Overlay PNGs of where each image moves its embedding towards abnormal (away from normal)."""
        if folder is None:
            return []
        from lumbarclip.inference.saliency import save_overlay, saliency_maps

        folder = Path(folder)
        counters: dict[str, int] = {}
        paths = []
        for sid in study_ids:
            counters[sid] = counters.get(sid, 0) + 1
            safe = re.sub(r"[^A-Za-z0-9_-]", "_", sid)[:64]  # a user-given --study name is not a file name
            paths.append(folder / f"{safe}-{counters[sid]:02d}.png")
        existing = [p for p in paths if p.exists()]
        if existing and not overwrite:
            raise InputError(f"{existing[0]}: already exists; choose another --saliency folder or pass --overwrite")
        maps = saliency_maps(self.model, images, self.operating_point.saliency_direction)  # type: ignore[arg-type]
        for raw, cam, path in zip(pixels, maps, paths):
            save_overlay(raw, cam, path)
        return paths

    # --- inputs ---------------------------------------------------------------------------------

    def _collect(self, inputs: Sequence[str | Path], result: PredictResult, progress: bool) -> list[_Item]:
        """The images to score, in input order; unreadable or unusable inputs to `skipped`."""
        items: list[_Item] = []
        for given in inputs:
            path = Path(given)
            if path.is_dir():
                items += self._folder(path, result, progress)
            elif path.is_file():
                item = self._file(path, result)
                if item is not None:
                    items.append(item)
            else:
                result.skipped.append(Skipped(input=str(path), reason="no such file or folder"))
        return items

    def _file(self, path: Path, result: PredictResult) -> _Item | None:
        """One file given by the user, scored whatever its orientation."""
        from lumbarclip.data.study import header_refusal, plane, slice_header

        try:
            kind = image_format(path)
            if kind == "dicom":
                head = slice_header(path)
                if head is None:
                    return _Item(path, f"file:{path.resolve()}", reason="given as a file", refusal="DICOM without image geometry (orientation/position)")
                key = f"uid:{head.study}" if head.study else f"file:{path.resolve()}"
                refusal = header_refusal(head, self.operating_point.preprocess.planes)
                return _Item(path, key, head.sequence, reason="given as a file", refusal=refusal, plane=plane(head.normal))
        except (InputError, OSError) as err:
            result.skipped.append(Skipped(input=str(path), reason=_reason(err, path)))
            return None
        return _named_item(path, path.parent, "given as a file")

    def _folder(self, folder: Path, result: PredictResult, progress: bool) -> list[_Item]:
        """A series or study folder: DICOM studies -> chosen slices; other images each."""
        from lumbarclip.data.study import SliceHeader, choose_slices, header_refusal, plane, slice_header

        files = sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith("."))
        images = [p for p in files if p.name.lower().endswith(IMAGE_SUFFIXES)]
        picked = set(images)
        dicoms = [p for p in files if p not in picked and _maybe_dicom(p)]
        studies: dict[str, list[SliceHeader]] = {}
        for path in tqdm(dicoms, desc="DICOM headers", unit="file", disable=not (progress and dicoms), leave=False):
            try:
                head = slice_header(path)
            except InputError as err:
                result.skipped.append(Skipped(input=str(path), reason=_reason(err, path)))
                continue
            if head is None:
                result.skipped.append(Skipped(input=str(path), reason="DICOM without image geometry (orientation/position)"))
                continue
            refusal = header_refusal(head, planes=None)
            if refusal:
                result.skipped.append(Skipped(input=str(path), reason=f"not assessed: {refusal}"))
                continue
            studies.setdefault(head.study or f"file:{path.resolve()}", []).append(head)
        items = [_named_item(p, folder, f"image file in {folder}") for p in images]
        planes = self.operating_point.preprocess.planes
        for n, (uid, heads) in enumerate(studies.items(), start=1):
            chosen, notes = choose_slices(heads, planes)
            if not chosen:
                where = f"{folder} (study {n} of {len(studies)})" if len(studies) > 1 else str(folder)
                wanted = " or ".join(planes)
                result.skipped.append(Skipped(input=where, reason=f"not assessed: no {wanted} T1 or T2 series: " + "; ".join(notes)))
                continue
            by_path = {h.path: h for h in heads}
            for c in chosen:
                reason = f"{c.level + ' ' if c.level else ''}{c.sequence}: {c.reason}"
                key = uid if uid.startswith("file:") else f"uid:{uid}"
                view = plane(by_path[c.path].normal)
                items.append(_Item(c.path, key, c.sequence, c.level or None, c.series_number, reason, tuple(notes), plane=view))
        return items


def _named_item(path: Path, folder: Path, reason: str) -> _Item:
    """A non-DICOM image: sequence, level and patient from a public-dataset name, else the file
    is a study of its own (sharing a folder says nothing about sharing a patient)."""
    from lumbarclip.data.mendeley import DISC_LEVELS, PNG_NAME, patient_key

    from lumbarclip.data.mendeley_sagittal import parse_image_name

    stem = path.name.split(".")[0]
    match = PNG_NAME.match(stem)
    if match:
        key = f"name:{folder.resolve()}:{patient_key(match.group(2))}"
        seq, level = match.group(1).upper(), DISC_LEVELS[match.group(3)]
        return _Item(path, key, seq, level, reason=f"{reason}; sequence and level from the file name")
    sagittal = parse_image_name(path.name[: -len(path.suffix)] if path.suffix else path.name)
    if sagittal:
        patient, seq = sagittal
        return _Item(path, f"name:{folder.resolve()}:{patient}", seq, reason=f"{reason}; sequence from the file name")
    return _Item(path, f"file:{path.resolve()}", reason=reason)


def _guard_reason(ratios: dict[str, float]) -> str:
    """Which of the guard's views put the image outside, e.g. 'unlike the images the model was
    evaluated on (input guard: embedding 2.3x, pixels 1.4x its threshold)'."""
    over = ", ".join(f"{name} {r:.1f}x" for name, r in ratios.items() if r > 1.0)
    return f"unlike the images the model was evaluated on (input guard: {over} its threshold)"


def _maybe_dicom(path: Path) -> bool:
    try:
        return image_format(path) == "dicom"
    except OSError:
        return False


def _reason(err: Exception, path: Path) -> str:
    """An error message without the leading 'PATH: ' (the path is reported beside it)."""
    text = str(err).splitlines()[0] if str(err) else type(err).__name__
    prefix = f"{path}: "
    return text[len(prefix) :] if text.startswith(prefix) else text

"""The diagnosis as DICOM: a Comprehensive SR in the source study (highdicom), and optional
Secondary Capture images of the saliency overlays, so that a PACS viewer shows the result
beside the images it was computed from.

SR content tree (root "Diagnostic imaging report", LOINC 18748-4):
- TEXT  Intended use: research use only, not for diagnostic use
- TEXT  Algorithm Name / Algorithm Version (DCM 111001 / 111003), from the model card
- CODE  Study verdict -> Abnormal (SCT 263654008) or Normal (SCT 17621005), or Not assessed
  (99LUMBARCLIP) when the model gives no study verdict, then TEXT Reason: why (input guard,
  header checks, a study not shaped like the evaluated unit)
- NUM   Calibrated probability of abnormality, Decision threshold (only with a verdict)
- TEXT  Images not assessed: how many of the analysed images the input guard or the header
  checks left out, and why
- CONTAINER Findings at disc level (one per level): TEXT Finding site, NUM one per finding
  (zero-shot score), IMAGE the source images at that level
- CONTAINER Source images: IMAGE one per analysed image
Concepts without a standard code use the private scheme 99LUMBARCLIP (declared in the
CodingSchemeIdentificationSequence). `read_report` reads these values back.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import highdicom as hd
import numpy as np
from highdicom.sr import CodedConcept
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

SCHEME = "99LUMBARCLIP"
MANUFACTURER = "LumbarCLIP"
INTENDED_USE = (
    "Research use only. Not for diagnostic use: an automated image-only estimate from a "
    "contrastively pre-trained model, not reviewed by a radiologist."
)
SR_SERIES_NUMBER = 990
SC_SERIES_NUMBER = 991

TITLE = CodedConcept("18748-4", "LN", "Diagnostic imaging report")
ALGORITHM_NAME = CodedConcept("111001", "DCM", "Algorithm Name")
ALGORITHM_VERSION = CodedConcept("111003", "DCM", "Algorithm Version")
FINDING_SITE = CodedConcept("363698007", "SCT", "Finding site")
SOURCE = CodedConcept("260753009", "SCT", "Source")
ABNORMAL = CodedConcept("263654008", "SCT", "Abnormal")
NORMAL = CodedConcept("17621005", "SCT", "Normal")
NO_UNITS = CodedConcept("1", "UCUM", "no units")
INTENDED_USE_NAME = CodedConcept("INTENDED_USE", SCHEME, "Intended use")
VERDICT = CodedConcept("VERDICT", SCHEME, "Study verdict")
PROBABILITY = CodedConcept("P_ABNORMAL", SCHEME, "Calibrated probability of abnormality")
THRESHOLD = CodedConcept("THRESHOLD", SCHEME, "Decision threshold")
LEVEL_FINDINGS = CodedConcept("LEVEL_FINDINGS", SCHEME, "Findings at disc level")
SOURCE_IMAGES = CodedConcept("SOURCE_IMAGES", SCHEME, "Source images")
NOT_ASSESSED = CodedConcept("NOT_ASSESSED", SCHEME, "Not assessed")
REASON = CodedConcept("REASON", SCHEME, "Reason")
IMAGES_NOT_ASSESSED = CodedConcept("IMG_NOT_ASSESSED", SCHEME, "Images not assessed")


def _finding_code(kind: str) -> CodedConcept:
    return CodedConcept(kind.upper()[:16], SCHEME, kind.replace("_", " "))


def is_abnormal(label: Any) -> bool:
    """A study label as Predictor writes it (1/0, True/False or 'abnormal'/'normal')."""
    if isinstance(label, str):
        return label.strip().lower() == "abnormal"
    return bool(label)


def level_findings(images: Sequence[dict]) -> dict[str, dict[str, float]]:
    """Per disc level, each finding's highest score over the level's images (T1 and T2)."""
    out: dict[str, dict[str, float]] = {}
    for image in images:
        for item in image.get("top_findings") or []:
            level = item.get("level") or image.get("level")
            if not level:
                continue
            scores = out.setdefault(str(level), {})
            kind = str(item["finding"])
            scores[kind] = max(scores.get(kind, 0.0), float(item["score"]))
    return dict(sorted(out.items()))


@dataclass(frozen=True)
class ModelInfo:
    """Name and version written into the report, from the model's card.json."""

    name: str
    version: str

    @classmethod
    def from_card(cls, card: dict, weights: Path | None = None) -> ModelInfo:
        """The card's name; its version, else the package version that wrote the card and the
        SHA-256 prefix of the weights file (which pins the exact model)."""
        version = card.get("version")
        if not version:
            parts = []
            package = (card.get("versions") or {}).get("lumbarclip")
            if package:
                parts.append(f"lumbarclip {package}")
            if weights is not None and Path(weights).is_file():
                digest = hashlib.sha256(Path(weights).read_bytes()).hexdigest()
                parts.append(f"weights sha256:{digest[:12]}")
            version = " ".join(parts) or "unversioned"
        name = card.get("name") or "LumbarCLIP"
        return cls(str(name)[:64], str(version)[:64])


def build_report(
    sources: Sequence[Dataset],
    study: dict,
    images: Sequence[dict],
    image_sources: Sequence[Dataset],
    model: ModelInfo,
    previous: Sequence[Dataset] = (),
) -> hd.sr.ComprehensiveSR:
    """The Comprehensive SR of one study. `sources` are all received instances of the study
    (evidence), `images[i]` is Predictor's result for the image read from `image_sources[i]`.
    `previous`: the SRs this one replaces (Predecessor Documents Sequence), e.g. after a late
    instance made the study larger."""
    items: list[Any] = [
        # kept short: viewers such as Orthanc Explorer hide text values longer than 256 chars
        hd.sr.TextContentItem(INTENDED_USE_NAME, INTENDED_USE, relationship_type="CONTAINS"),
        hd.sr.TextContentItem(ALGORITHM_NAME, model.name, relationship_type="CONTAINS"),
        hd.sr.TextContentItem(ALGORITHM_VERSION, model.version, relationship_type="CONTAINS"),
    ]
    if study.get("label") is None:  # no study verdict: say so and why, give no probability
        items += [
            hd.sr.CodeContentItem(VERDICT, NOT_ASSESSED, relationship_type="CONTAINS"),
            hd.sr.TextContentItem(REASON, _short(str(study.get("reason") or "no study verdict")), relationship_type="CONTAINS"),
        ]
    else:
        items += [
            hd.sr.CodeContentItem(
                VERDICT, ABNORMAL if is_abnormal(study["label"]) else NORMAL, relationship_type="CONTAINS"
            ),
            hd.sr.NumContentItem(
                PROBABILITY, float(study["p_abnormal"]), NO_UNITS, relationship_type="CONTAINS"
            ),
            hd.sr.NumContentItem(
                THRESHOLD, float(study["threshold"]), NO_UNITS, relationship_type="CONTAINS"
            ),
        ]
    outside = [image for image in images if image.get("in_distribution") is False]
    if outside:
        why = "; ".join(dict.fromkeys(str(image.get("reason") or "outside the input guard") for image in outside))
        items.append(hd.sr.TextContentItem(
            IMAGES_NOT_ASSESSED, _short(f"{len(outside)} of {len(images)}: {why}"), relationship_type="CONTAINS"
        ))  # fmt: skip
    refs = {ds.SOPInstanceUID: ds for ds in image_sources}
    by_level: dict[str, list[Dataset]] = {}
    for image, ds in zip(images, image_sources):
        if image.get("level"):
            by_level.setdefault(str(image["level"]), []).append(ds)
    for level, scores in level_findings(images).items():
        container = hd.sr.ContainerContentItem(LEVEL_FINDINGS, relationship_type="CONTAINS")
        children: list[Any] = [
            hd.sr.TextContentItem(FINDING_SITE, level, relationship_type="CONTAINS")
        ]
        children += [
            hd.sr.NumContentItem(_finding_code(kind), score, NO_UNITS, relationship_type="CONTAINS")
            for kind, score in sorted(scores.items(), key=lambda kv: -kv[1])
        ]
        children += [_image_item(ds) for ds in by_level.get(level, [])]
        container.ContentSequence = hd.sr.ContentSequence(children)
        items.append(container)
    library = hd.sr.ContainerContentItem(SOURCE_IMAGES, relationship_type="CONTAINS")
    library.ContentSequence = hd.sr.ContentSequence([_image_item(ds) for ds in refs.values()])
    items.append(library)
    root = hd.sr.ContainerContentItem(TITLE)
    root.ContentSequence = hd.sr.ContentSequence(items)
    return hd.sr.ComprehensiveSR(
        evidence=[with_type2_defaults(sources[0]), *sources[1:]],
        content=root,
        series_instance_uid=hd.UID(),
        series_number=SR_SERIES_NUMBER,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer=MANUFACTURER,
        is_complete=True,
        series_description="LumbarCLIP report - not for diagnostic use",
        manufacturer_model_name=model.name,
        software_versions=model.version,
        content_qualification="RESEARCH",
        coding_schemes=[hd.coding_schemes.CodingSchemeIdentificationItem(SCHEME, name="LumbarCLIP")],
        previous_versions=list(previous) or None,
    )


#: Patient and General Study attributes of type 2 (required, may be empty) that highdicom copies
#: from the first evidence instance; a scanner always sends them, a minimal file may not.
_TYPE2 = (
    "PatientName", "PatientID", "PatientBirthDate", "PatientSex", "AccessionNumber",
    "StudyID", "StudyDate", "StudyTime", "ReferringPhysicianName",
)


def _short(text: str, limit: int = 240) -> str:
    """A TEXT value viewers show in full (Orthanc Explorer hides values over 256 characters)."""
    return text if len(text) <= limit else text[: limit - 3] + "..."


def with_type2_defaults(ds: Dataset) -> Dataset:
    """A shallow copy of `ds` with absent type-2 Patient/Study attributes present and empty."""
    out = Dataset(ds)
    for keyword in _TYPE2:
        if keyword not in out:
            setattr(out, keyword, None)
    return out


def _image_item(ds: Dataset) -> hd.sr.ImageContentItem:
    return hd.sr.ImageContentItem(
        SOURCE, ds.SOPClassUID, ds.SOPInstanceUID, relationship_type="CONTAINS"
    )


def _named(item: Dataset, code: CodedConcept) -> bool:
    name = item.ConceptNameCodeSequence[0]
    return name.CodeValue == code.value and name.CodingSchemeDesignator == code.scheme_designator


def read_report(ds: Dataset) -> dict[str, Any]:
    """The values `build_report` wrote, read back from the SR dataset (tests, pull mode)."""
    sr = hd.sr.ComprehensiveSR.from_dataset(ds) if not isinstance(ds, hd.sr.ComprehensiveSR) else ds
    out: dict[str, Any] = {"levels": {}, "images": []}
    for item in sr.ContentSequence:
        if _named(item, VERDICT):
            out["verdict"] = item.ConceptCodeSequence[0].CodeMeaning.lower()
        elif _named(item, REASON):
            out["reason"] = item.TextValue
        elif _named(item, IMAGES_NOT_ASSESSED):
            out["images_not_assessed"] = item.TextValue
        elif _named(item, PROBABILITY):
            out["p_abnormal"] = hd.sr.NumContentItem.from_dataset(item).value
        elif _named(item, THRESHOLD):
            out["threshold"] = hd.sr.NumContentItem.from_dataset(item).value
        elif _named(item, ALGORITHM_NAME):
            out["model_name"] = item.TextValue
        elif _named(item, ALGORITHM_VERSION):
            out["model_version"] = item.TextValue
        elif _named(item, INTENDED_USE_NAME):
            out["intended_use"] = item.TextValue
        elif _named(item, LEVEL_FINDINGS):
            level, scores = "", {}
            for child in item.ContentSequence:
                if _named(child, FINDING_SITE):
                    level = child.TextValue
                elif child.ValueType == "NUM":
                    kind = child.ConceptNameCodeSequence[0].CodeMeaning.replace(" ", "_")
                    scores[kind] = hd.sr.NumContentItem.from_dataset(child).value
            out["levels"][level] = scores
        elif _named(item, SOURCE_IMAGES):
            out["images"] = [
                child.ReferencedSOPSequence[0].ReferencedSOPInstanceUID
                for child in item.ContentSequence
            ]
    return out


def patient_orientation(ds: Dataset) -> tuple[str, str]:
    """Patient directions of the image rows and columns (e.g. ('L', 'P') for a standard axial
    slice) from ImageOrientationPatient; the axial convention when the header has none."""
    iop = ds.get("ImageOrientationPatient")
    if not iop or len(iop) != 6:
        return ("L", "P")
    letters = (("R", "L"), ("A", "P"), ("F", "H"))  # negative, positive along LPS x, y, z

    def direction(v: Sequence[float]) -> str:
        axis = int(np.argmax(np.abs(v)))
        return letters[axis][int(float(v[axis]) > 0)]

    return direction([float(x) for x in iop[:3]]), direction([float(x) for x in iop[3:]])


def build_overlays(
    image_sources: Sequence[Dataset], overlay_pngs: Sequence[str | Path]
) -> list[hd.sc.SCImage]:
    """One RGB Secondary Capture per saliency overlay PNG, in one new series of the study."""
    series_uid = generate_uid()
    out = []
    for number, (ds, png) in enumerate(zip(image_sources, overlay_pngs), start=1):
        rgb = np.asarray(Image.open(png).convert("RGB"), dtype=np.uint8)
        out.append(
            hd.sc.SCImage.from_ref_dataset(
                ref_dataset=ds,
                pixel_array=rgb,
                photometric_interpretation="RGB",
                bits_allocated=8,
                coordinate_system="PATIENT",
                patient_orientation=patient_orientation(ds),
                series_instance_uid=series_uid,
                series_number=SC_SERIES_NUMBER,
                sop_instance_uid=generate_uid(),
                instance_number=number,
                manufacturer=MANUFACTURER,
                series_description="LumbarCLIP saliency - not for diagnostic use",
                transfer_syntax_uid="1.2.840.10008.1.2.1",
            )
        )
    return out

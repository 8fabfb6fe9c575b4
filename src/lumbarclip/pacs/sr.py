"""The diagnosis as DICOM: a Comprehensive SR in the source study (highdicom), and optional
Secondary Capture images of the saliency overlays, so that a PACS viewer shows the result
beside the images it was computed from.

The SR is a TID 1500 Measurement Report (highdicom templates), so that any TID 1500 reader
(viewers, highdicom, dcmqi) finds the values where the standard puts them:
- Observation context: the model as device observer (name, manufacturer LumbarCLIP); procedure
  reported: MRI (LN 25056-3); Image Library: one entry per analysed image.
- Imaging Measurements, measurement group "study" (TID 1501): finding site Lumbar spine
  (SCT 122496007), Algorithm Identification (model name and version), the analysed images as
  source images, qualitative evaluation Impression (DCM 121073) = Abnormal (SCT 263654008),
  Normal (SCT 17621005) or Not evaluated (SCT 373121007, the model gave no study verdict);
  measurements Probability (DCM 122157, the study's `p_abnormal`: the calibrated probability of
  abnormality from the linear probe on the image embeddings, its images' probe probabilities
  averaged and mapped by the patient-level Platt map fitted on valid) and Threshold Value
  (DCM 122411, the patient threshold chosen on valid), only with a verdict; TEXT items: Intended use (research use
  only), Reason (why not evaluated), Images not assessed (how many of the analysed images the
  input guard or the header checks left out, and why), Findings not validated (the finding
  kinds this model was not validated for, which get no score).
- One measurement group per disc level and finding kind: Finding (DCM 121071) = the kind,
  finding site = the disc (SCT L1/L2 .. L5/S1 disc), measurement Probability = P(finding) from
  the finding scorer evaluation chose on valid (the prompts or the finding head; uncalibrated),
  highest over the level's images, the level's images as source images.
Concepts with no standard code (the TEXT items above, most finding kinds) use the private
scheme 99LUMBARCLIP, declared in the CodingSchemeIdentificationSequence. `read_report` reads
these values back. The values come from `Predictor`'s typed result (`inference.results`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import highdicom as hd
import numpy as np
from highdicom.sr import CodedConcept
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code
from pydicom.uid import generate_uid

from lumbarclip.inference.results import Disc, ImageResult, StudyResult

SCHEME = "99LUMBARCLIP"
MANUFACTURER = "LumbarCLIP"
INTENDED_USE = (
    "Research use only. Not for diagnostic use: an automated image-only estimate from a "
    "contrastively pre-trained model, not reviewed by a radiologist."
)
SR_SERIES_NUMBER = 990
SC_SERIES_NUMBER = 991

PROCEDURE = codes.cid100.MRIUnspecifiedBodyRegion
IMAGING_MEASUREMENTS = codes.DCM.ImagingMeasurements
FINDING = codes.DCM.Finding
FINDING_SITE = codes.SCT.FindingSite
TRACKING_ID = codes.DCM.TrackingIdentifier
IMPRESSION = codes.DCM.Impression
PROBABILITY = codes.DCM.Probability
THRESHOLD = codes.DCM.ThresholdValue
ALGORITHM_NAME = codes.DCM.AlgorithmName
ALGORITHM_VERSION = codes.DCM.AlgorithmVersion
IMAGE_LIBRARY = codes.DCM.ImageLibrary
LUMBAR_SPINE = CodedConcept("122496007", "SCT", "Lumbar spine")
ABNORMAL = CodedConcept("263654008", "SCT", "Abnormal")
NORMAL = CodedConcept("17621005", "SCT", "Normal")
NOT_EVALUATED = CodedConcept("373121007", "SCT", "Not evaluated")
VERDICTS = {ABNORMAL.value: "abnormal", NORMAL.value: "normal", NOT_EVALUATED.value: "not assessed"}
NO_UNITS = CodedConcept("1", "UCUM", "no units")
INTENDED_USE_NAME = CodedConcept("INTENDED_USE", SCHEME, "Intended use")
REASON = CodedConcept("REASON", SCHEME, "Reason")
IMAGES_NOT_ASSESSED = CodedConcept("IMG_NOT_ASSESSED", SCHEME, "Images not assessed")
NOT_VALIDATED = CodedConcept("NOT_VALIDATED", SCHEME, "Findings not validated")
PLANE_ASSESSED = CodedConcept("PLANE_ASSESSED", SCHEME, "Plane assessed")
DISC = CodedConcept("DISC", SCHEME, "Intervertebral disc (detected)")
SLICES_USED = CodedConcept("SLICES_USED", SCHEME, "Slices used")
PFIRRMANN_GRADE = CodedConcept("PFIRRMANN", SCHEME, "Pfirrmann grade")
DETECTION_SCORE = CodedConcept("DETECTION_SCORE", SCHEME, "Detection score")
NOT_VALIDATED_TEXT = "Not validated for this model: "
STUDY_GROUP = "study"

#: Disc levels as SNOMED CT body structures (the finding site of a level's findings).
LEVEL_SITES: dict[str, CodedConcept] = {
    "L1-L2": CodedConcept("80064006", "SCT", "L1/L2 disc"),
    "L2-L3": CodedConcept("67459009", "SCT", "L2/L3 disc"),
    "L3-L4": CodedConcept("62551000", "SCT", "L3/L4 disc"),
    "L4-L5": CodedConcept("84020006", "SCT", "L4/L5 disc"),
    "L5-S1": CodedConcept("715056000", "SCT", "L5/S1 disc"),
}
#: Finding kinds with a SNOMED CT disorder code; the others are private (`finding_code`).
STANDARD_FINDINGS: dict[str, CodedConcept] = {
    "protrusion": CodedConcept("73589001", "SCT", "Herniation of intervertebral disc"),
    "canal_narrowing": CodedConcept("76107001", "SCT", "Spinal stenosis"),
}


def finding_code(kind: str) -> CodedConcept:
    """The code of a finding kind: SNOMED CT where one exists, else private (16-char value)."""
    return STANDARD_FINDINGS.get(kind) or CodedConcept(kind.upper()[:16], SCHEME, kind.replace("_", " "))


def _finding_kind(code: Dataset) -> str:
    for kind, concept in STANDARD_FINDINGS.items():
        if code.CodeValue == concept.value and code.CodingSchemeDesignator == concept.scheme_designator:
            return kind
    return str(code.CodeMeaning).replace(" ", "_")


def level_findings(images: Sequence[ImageResult], exclude: Iterable[str] = ()) -> dict[str, dict[str, float]]:
    """Per disc level, each finding's highest score over the level's images (T1 and T2);
    kinds in `exclude` (not validated for the model) get no score."""
    skip = set(exclude)
    out: dict[str, dict[str, float]] = {}
    for image in images:
        for item in image.top_findings or []:
            level = item.level or image.level
            if not level or item.finding in skip:
                continue
            scores = out.setdefault(level, {})
            scores[item.finding] = max(scores.get(item.finding, 0.0), item.score)
    return dict(sorted(out.items()))


@dataclass(frozen=True)
class ModelInfo:
    """Name and version written into the report, from the model's card."""

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
    study: StudyResult,
    images: Sequence[ImageResult],
    image_sources: Sequence[Dataset],
    model: ModelInfo,
    previous: Sequence[Dataset] = (),
) -> hd.sr.ComprehensiveSR:
    """The Comprehensive SR of one study. `sources` are all received instances of the study
    (evidence), `images[i]` is Predictor's result for the image read from `image_sources[i]`.
    `previous`: the SRs this one replaces (Predecessor Documents Sequence), e.g. after a late
    instance made the study larger."""
    algorithm = hd.sr.AlgorithmIdentification(name=model.name, version=model.version, manufacturer=MANUFACTURER)
    refs = {ds.SOPInstanceUID: ds for ds in image_sources}
    groups = [_study_group(study, images, list(refs.values()), algorithm)]
    by_level: dict[str, list[Dataset]] = {}
    for image, ds in zip(images, image_sources):
        if image.level:
            by_level.setdefault(image.level, []).append(ds)
    for level, scores in level_findings(images, study.not_validated).items():
        site = hd.sr.FindingSite(LEVEL_SITES.get(level, LUMBAR_SPINE))
        for kind, score in sorted(scores.items(), key=lambda kv: -kv[1]):
            groups.append(hd.sr.MeasurementsAndQualitativeEvaluations(
                tracking_identifier=hd.sr.TrackingIdentifier(uid=hd.UID(), identifier=f"{level} {kind}"),
                finding_type=finding_code(kind),
                finding_sites=[site],
                algorithm_id=algorithm,
                measurements=[hd.sr.Measurement(PROBABILITY, score, NO_UNITS)],
                source_images=_source_images(by_level.get(level, [])),
            ))  # fmt: skip
    for image, ds in zip(images, image_sources):
        groups += _disc_groups(image, ds, algorithm)
    observer = hd.sr.DeviceObserverIdentifyingAttributes(
        uid=generate_uid(entropy_srcs=[MANUFACTURER, model.name, model.version]),
        name=model.name,
        manufacturer_name=MANUFACTURER,
        model_name=model.name,
    )
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(
            observer_device_context=hd.sr.ObserverContext(
                observer_type=codes.DCM.Device, observer_identifying_attributes=observer
            )
        ),
        procedure_reported=PROCEDURE,
        imaging_measurements=groups,
        referenced_images=list(refs.values()) or None,
    )
    return hd.sr.ComprehensiveSR(
        evidence=[with_type2_defaults(sources[0]), *sources[1:]],
        content=report[0],
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


def _disc_groups(
    image: ImageResult, source: Dataset, algorithm: hd.sr.AlgorithmIdentification
) -> list[hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations]:
    """One TID 1410 group per lumbar disc the image's line lists: the disc's SNOMED CT code as
    finding site, its box as a closed SCOORD polyline on the image, the detection score, the
    Pfirrmann grade where it was validated (a NUM, 1-5) and each validated class's probability."""
    groups = []
    for disc in image.discs or []:
        if disc.box_xyxy is None or disc.level not in LEVEL_SITES:  # not assessed, or a thoracic disc
            continue
        groups.append(hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
            tracking_identifier=hd.sr.TrackingIdentifier(uid=hd.UID(), identifier=f"disc {disc.level}"),
            referenced_region=_box_region(disc.box_xyxy, source),
            finding_type=DISC,
            finding_sites=[hd.sr.FindingSite(LEVEL_SITES[disc.level])],
            algorithm_id=algorithm,
            measurements=_disc_measurements(disc),
        ))  # fmt: skip
    return groups


def _box_region(box: Sequence[float], source: Dataset) -> hd.sr.ImageRegion:
    """A box [x0, y0, x1, y1] (pixels of `source`) as a closed polyline on it."""
    x0, y0, x1, y1 = box
    return hd.sr.ImageRegion(
        graphic_type=hd.sr.GraphicTypeValues.POLYLINE,
        graphic_data=np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]], dtype=np.float32),
        source_image=hd.sr.SourceImageForRegion.from_source_image(source),
    )


def _disc_measurements(disc: Disc) -> list[hd.sr.Measurement]:
    """Detection score, the validated Pfirrmann grade, each validated class's probability."""
    out = [hd.sr.Measurement(DETECTION_SCORE, disc.score or 0.0, NO_UNITS)]
    if disc.validated and disc.pfirrmann is not None:
        out.append(hd.sr.Measurement(PFIRRMANN_GRADE, float(disc.pfirrmann), NO_UNITS))
    out += [
        hd.sr.Measurement(CodedConcept(f"P_{name.upper()[:12]}", SCHEME, f"Probability of {name}"), p, NO_UNITS)
        for name, p in sorted((disc.classes or {}).items())
    ]
    return out


def _study_group(
    study: StudyResult,
    images: Sequence[ImageResult],
    image_sources: Sequence[Dataset],
    algorithm: hd.sr.AlgorithmIdentification,
) -> hd.sr.MeasurementsAndQualitativeEvaluations:
    """The study's measurement group: verdict, probability and threshold (or why there is no
    verdict), and the notes a reader needs to weigh them (intended use, images left out,
    finding kinds not validated)."""
    if study.label is None or study.p_abnormal is None:  # no study verdict: say so and why, give no probability
        verdict, measurements = NOT_EVALUATED, []
    else:
        verdict = ABNORMAL if study.label == "abnormal" else NORMAL
        measurements = [
            hd.sr.Measurement(PROBABILITY, study.p_abnormal, NO_UNITS),
            hd.sr.Measurement(THRESHOLD, study.threshold, NO_UNITS),
        ]
    group = hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=hd.UID(), identifier=STUDY_GROUP),
        finding_sites=[hd.sr.FindingSite(LUMBAR_SPINE)],
        algorithm_id=algorithm,
        measurements=measurements,
        qualitative_evaluations=[hd.sr.QualitativeEvaluation(IMPRESSION, verdict)],
        source_images=_source_images(image_sources),
    )
    # kept short: viewers such as Orthanc Explorer hide text values longer than 256 chars
    notes = [(INTENDED_USE_NAME, INTENDED_USE)]
    planes = sorted({image.plane for image in images})
    if planes:
        notes.append((PLANE_ASSESSED, " and ".join(planes)))
    picked = [line for line in study.selection if "middle slice" in line or "slab" in line]
    if picked:  # which slice of each series was read (the node picks them itself)
        notes.append((SLICES_USED, _short("; ".join(picked))))
    if verdict is NOT_EVALUATED:
        notes.append((REASON, _short(study.reason or "no study verdict")))
    outside = [image for image in images if not image.in_distribution]
    if outside:
        why = "; ".join(dict.fromkeys(image.reason or "outside the input guard" for image in outside))
        notes.append((IMAGES_NOT_ASSESSED, _short(f"{len(outside)} of {len(images)}: {why}")))
    if study.not_validated:
        notes.append((NOT_VALIDATED, _short(NOT_VALIDATED_TEXT + ", ".join(study.not_validated))))
    group[0].ContentSequence.extend(
        hd.sr.TextContentItem(name, value, relationship_type="CONTAINS") for name, value in notes
    )
    return group


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


def _source_images(datasets: Sequence[Dataset]) -> list[hd.sr.SourceImageForMeasurementGroup] | None:
    """A measurement group's images (None for none: highdicom rejects an empty list)."""
    return [hd.sr.SourceImageForMeasurementGroup(ds.SOPClassUID, ds.SOPInstanceUID) for ds in datasets] or None


def _named(item: Dataset, code: CodedConcept | Code) -> bool:
    name = item.ConceptNameCodeSequence[0]
    return name.CodeValue == code.value and name.CodingSchemeDesignator == code.scheme_designator


def _image_uids(item: Dataset) -> list[str]:
    """SOP Instance UIDs of the IMAGE items under `item`, depth first (the Image Library)."""
    out: list[str] = []
    for child in item.get("ContentSequence", []):
        if child.ValueType == "IMAGE":
            out.append(str(child.ReferencedSOPSequence[0].ReferencedSOPInstanceUID))
        elif child.ValueType == "CONTAINER":
            out += _image_uids(child)
    return out


def read_report(ds: Dataset) -> dict[str, Any]:
    """The values `build_report` wrote, read back from the SR dataset (tests, pull mode)."""
    out: dict[str, Any] = {"levels": {}, "images": []}
    for item in ds.ContentSequence:
        if _named(item, IMAGE_LIBRARY):
            out["images"] = _image_uids(item)
        elif _named(item, IMAGING_MEASUREMENTS):
            for group in item.ContentSequence:
                _read_group(group, out)
    return out


def _read_group(group: Dataset, out: dict[str, Any]) -> None:
    """One measurement group into `out`: the study's values, or one level's finding score."""
    values: dict[tuple[str, str], Any] = {}
    for child in group.ContentSequence:
        name = child.ConceptNameCodeSequence[0]
        key = (str(name.CodingSchemeDesignator), str(name.CodeValue))
        if child.ValueType == "TEXT":
            values[key] = str(child.TextValue)
        elif child.ValueType == "CODE":
            values[key] = child.ConceptCodeSequence[0]
        elif child.ValueType == "NUM":  # FloatingPointValue: the exact float written
            values[key] = hd.sr.NumContentItem.from_dataset(child).value
        elif child.ValueType == "SCOORD":
            values[("SCOORD", "")] = [float(v) for v in child.GraphicData]

    def get(code: CodedConcept | Code) -> Any:
        return values.get((code.scheme_designator, code.value))

    tracking = get(TRACKING_ID)
    if tracking == STUDY_GROUP:
        out["verdict"] = VERDICTS.get(get(IMPRESSION).CodeValue, str(get(IMPRESSION).CodeMeaning).lower())
        for key, code in (
            ("p_abnormal", PROBABILITY), ("threshold", THRESHOLD), ("model_name", ALGORITHM_NAME),
            ("model_version", ALGORITHM_VERSION), ("intended_use", INTENDED_USE_NAME), ("reason", REASON),
            ("images_not_assessed", IMAGES_NOT_ASSESSED), ("plane", PLANE_ASSESSED), ("slices_used", SLICES_USED),
        ):  # fmt: skip
            if get(code) is not None:
                out[key] = get(code)
        if get(NOT_VALIDATED):
            out["not_validated"] = get(NOT_VALIDATED).removeprefix(NOT_VALIDATED_TEXT).split(", ")
        return
    site, finding = get(FINDING_SITE), get(FINDING)
    if str(tracking).startswith("disc "):
        points = values.get(("SCOORD", ""), [])
        out.setdefault("discs", {})[str(tracking)[5:]] = {
            "pfirrmann": get(PFIRRMANN_GRADE),
            "score": get(DETECTION_SCORE),
            "box_xyxy": [min(points[0::2]), min(points[1::2]), max(points[0::2]), max(points[1::2])] if points else None,
            "finding_site": site.CodeValue if site is not None else None,
        }
        return
    if finding is None or get(PROBABILITY) is None:
        return
    level = next(
        (lvl for lvl, code in LEVEL_SITES.items() if site is not None and site.CodeValue == code.value),
        str(tracking).rsplit(" ", 1)[0],  # "<level> <kind>": a level with no SNOMED CT disc
    )
    out["levels"].setdefault(level, {})[_finding_kind(finding)] = get(PROBABILITY)


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
        sc = hd.sc.SCImage.from_ref_dataset(
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
        # the lumbar spine is an unpaired structure: said so, General Series needs no Laterality
        sc.ImageLaterality = "U"
        if "BodyPartExamined" in ds:
            sc.BodyPartExamined = ds.BodyPartExamined
        out.append(sc)
    return out

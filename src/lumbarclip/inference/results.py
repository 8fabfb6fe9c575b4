"""What `Predictor.predict` returns, typed: one line per image, one per study, the inputs it
skipped, and per sagittal image its discs. `lumbarclip predict` prints these as JSON lines,
`serve` returns them (its OpenAPI schema is these models), `pacs.sr` writes them into the SR.

A key of a line is either always there (its value may be null: `label` is null when the model
gives no verdict) or only there when it applies (`reason` only when something was not assessed,
`saliency` only when overlays were asked for). The models keep that difference as pydantic's
set fields: the producer passes every always-there key, null or not, and `dump` leaves out the
keys never set, so a line read back (`model_validate`) dumps to the same JSON.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

#: The one encoding of a verdict: the calibrated probability's side of the threshold.
Label = Literal["normal", "abnormal"]


class Line(BaseModel):
    """A part of the result: unknown keys refused, `dump` as the JSON lines have it."""

    model_config = ConfigDict(extra="forbid")

    def dump(self) -> dict[str, Any]:
        """The JSON object of this line: the keys that were set, in the fields' order."""
        return self.model_dump(mode="json", exclude_unset=True)


class Verdict(Line):
    """A line that gives a verdict: `p_abnormal` and `label` are given together or not at all."""

    if TYPE_CHECKING:  # declared by each subclass, where its place among the keys is
        p_abnormal: float | None
        label: Label | None

    @model_validator(mode="after")
    def _both_or_neither(self) -> Verdict:
        if (self.p_abnormal is None) != (self.label is None):
            raise ValueError("p_abnormal and label must both be null (no verdict) or both be given")
        return self


class Finding(Line):
    finding: str = Field(description="finding kind (lumbarclip.findings.LEVEL_KINDS), validated on valid for this model")
    level: str | None = Field(description="disc level the image was scored at ('L4-L5'), null when unknown")
    score: float = Field(description="P(finding) from the scorer evaluation chose: the prompts (zero-shot) or the finding head")


class NearestReport(Line):
    text: str = Field(description="a report of the model folder's report bank")
    score: float = Field(description="cosine similarity of the image embedding and the report's embedding")
    label: int = Field(description="the bank report's label: 1 abnormal, 0 normal")


class Disc(Line):
    """One disc the detector found on a sagittal slice, or the one entry saying why none was looked for."""

    level: str | None = Field(description="named by order from the sacrum ('L5-S1', 'L4-L5', ...); null when not assessed")
    box_xyxy: list[float] | None = Field(description="box [x0, y0, x1, y1] in pixels of the image as read; null when not assessed")
    score: float | None = Field(None, description="the detector's score of the box")
    thoracic: bool | None = Field(None, description="above L1-L2 (counted from the sacrum)")
    pfirrmann: int | None = Field(None, description="Pfirrmann grade 1-5, only where the grader's level passed the valid gate")
    validated: bool = Field(description="whether the Pfirrmann grade shown was validated on valid at this level")
    pfirrmann_probabilities: dict[str, float] | None = Field(None, description="P(grade) for grades '1'..'5', with a validated grade")
    reason: str | None = Field(None, description="why no grade (or nothing) is shown")
    classes: dict[str, float] | None = Field(None, description="P(class) of the disc classes that passed the valid gate")
    classes_present: list[str] | None = Field(None, description="the classes at or above the grader's threshold for each")


class ImageResult(Verdict):
    """The verdict on one image: calibrated P(abnormal) and label, or no verdict and why."""

    path: str = Field(description="the file scored (serve: the name the client sent)")
    study: str = Field(description="pseudonym of the study the image belongs to (keyed hash), or the name the user gave")
    series: int | None = Field(description="DICOM SeriesNumber, null when unknown")
    sequence: str | None = Field(description="T1 or T2, from the DICOM header or the file name; null when unknown")
    level: str | None = Field(description="disc level of an axial slice ('L4-L5'), null when unknown")
    plane: str = Field(description="the plane assessed: 'axial' or 'sagittal'")
    plane_from: str = Field(description="where the plane comes from: the DICOM header, or the model's own plane")
    in_distribution: bool = Field(description="passed the input guard and the header checks; only then is there a verdict")
    ood_score: float = Field(description="the input guard's largest ratio to its threshold over its views (above 1: outside)")
    p_abnormal: float | None = Field(
        description="calibrated P(abnormal) of the image: the linear probe on the image embedding, Platt-scaled on "
        "valid; null when not assessed"
    )
    label: Label | None = Field(description="'abnormal' when p_abnormal reaches the threshold, else 'normal'; null when not assessed")
    threshold: float | None = Field(None, description="the image threshold on p_abnormal, chosen on valid")
    top_findings: list[Finding] | None = Field(None, description="the best-scoring validated finding kinds at the image's level")
    nearest_reports: list[NearestReport] | None = Field(None, description="the most similar reports of the model folder's bank")
    reason: str | None = Field(None, description="why the image was not assessed")
    saliency: str | None = Field(None, description="saliency overlay PNG (serve: as a data URL), when asked for")
    discs: list[Disc] | None = Field(None, description="the slice's discs, with a model folder that has a disc detector")
    image_size: list[int] | None = Field(None, description="[width, height] of the image as read: the frame of the disc boxes")


class StudyResult(Verdict):
    """The verdict on one study, from its in-distribution images, when they are shaped like the evaluated unit."""

    study: str = Field(description="pseudonym of the study (keyed hash), or the name the user gave")
    n_images: int = Field(description="images of the study scored")
    n_in_distribution: int = Field(description="of those, how many were assessed")
    p_abnormal_mean_raw: float | None = Field(
        description="mean of the in-distribution images' uncalibrated probe probabilities sigmoid(logit); null when none"
    )
    p_abnormal: float | None = Field(
        description="calibrated P(abnormal) of the study: the patient-level Platt map of p_abnormal_mean_raw; "
        "null without a study verdict"
    )
    label: Label | None = Field(description="'abnormal' when p_abnormal reaches the threshold, else 'normal'; null without a verdict")
    threshold: float = Field(description="the patient threshold on p_abnormal, chosen on valid")
    rule: str | None = Field(description="how the verdict was reached; null without a verdict")
    selection: list[str] = Field(description="which series and slices were used, and why")
    not_validated: list[str] = Field(description="finding kinds whose scores are never shown: their valid AUROC missed the gate")
    reason: str | None = Field(None, description="why there is no study verdict")


class Skipped(Line):
    input: str = Field(description="the file or folder left out")
    reason: str = Field(description="why")


class PredictResult(Line):
    """Everything one `predict` call found: image lines, study lines, skipped inputs."""

    images: list[ImageResult] = Field(default_factory=list, description="one verdict per image scored")
    studies: list[StudyResult] = Field(default_factory=list, description="one verdict per study")
    skipped: list[Skipped] = Field(default_factory=list, description="inputs left out, each with the reason")

    def lines(self) -> Iterator[dict[str, Any]]:
        """The JSON lines `lumbarclip predict` prints: images, then studies."""
        for image in self.images:
            yield {"type": "image", **image.dump()}
        for study in self.studies:
            yield {"type": "study", **study.dump()}


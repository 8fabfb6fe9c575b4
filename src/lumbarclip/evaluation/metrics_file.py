"""metrics.json as typed, validated blocks: what the model card, the ablation grid and the docs
tables read of the file `evaluate_run` writes.

`read_metrics(path)` reads the file; a missing, non-JSON or malformed one is a one-line
InputError naming it. `parse_metrics(dict)` validates the dict `evaluate_run` returns. Keys
renamed in the writer (`LEGACY_KEYS`) are still read, under their current names, for one
release. Every block keeps the keys it does not declare (`model_extra`), so a newer writer's
additions survive a read; `dump` gives a block back with the keys it was read with (the declared
ones in the writer's order, then the others), which is how the model card copies whole blocks.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from lumbarclip.errors import InputError

#: A 95% interval [lo, hi]; None where the bootstrap gives none (a metric undefined on the data).
Interval = tuple[float, float]
#: Renamed keys of metrics.json: (path of the block holding it, old key, current key).
LEGACY_KEYS: tuple[tuple[tuple[str, ...], str, str], ...] = (
    ((), "finding_zero_shot", "per_finding"),  # it holds the finding head's and the pixel ceiling's scores too
    (("retrieval", "study"), "n_images", "n_studies"),  # one query per study, not per image
)


class _Block(BaseModel):
    model_config = ConfigDict(frozen=True, extra="allow", populate_by_name=True)

    def dump(self) -> dict[str, Any]:
        """The block as it was read: its JSON keys (aliases included), nothing added."""
        return self.model_dump(by_alias=True, exclude_unset=True)


class LevelScores(_Block):
    """One classifier's figures at one level (`metrics.classification_metrics`); None where a
    metric is undefined (one class only, an empty split)."""

    accuracy: float | None
    balanced_accuracy: float | None
    f1_macro: float | None
    f1_weighted: float | None
    precision_macro: float | None
    recall_macro: float | None
    auroc: float | None
    auprc: float | None
    confusion_matrix: list[list[int]]
    n: int
    ece: float | None
    brier: float | None
    threshold: float | None = None


class Scores(_Block):
    """A classifier's image- and patient-level figures."""

    image: LevelScores
    patient: LevelScores

    def level(self, name: Literal["image", "patient"]) -> LevelScores:
        return self.image if name == "image" else self.patient


class EfficiencyPoint(Scores):
    """A classifier trained on a fraction of the training patients."""

    patients: int


class MatchRetrieval(_Block):
    """Findings-match retrieval one way: a hit is an item whose findings match the query's."""

    n_queries: int
    n_queries_without_match: int
    map: float | None
    chance_map: float | None
    r1: float | None = Field(None, alias="r@1")
    r5: float | None = Field(None, alias="r@5")
    r10: float | None = Field(None, alias="r@10")
    chance_r1: float | None = Field(None, alias="chance_r@1")
    chance_r5: float | None = Field(None, alias="chance_r@5")
    chance_r10: float | None = Field(None, alias="chance_r@10")


class FindingsMatch(_Block):
    i2t: MatchRetrieval
    t2i: MatchRetrieval
    threshold: float  # Jaccard of the level:kind sets at which two studies' findings match


class RecallAtK(_Block):
    """Same-patient retrieval both ways (`retrieval.retrieval_metrics`) with a random ranking's
    recall beside each, and findings-match retrieval when the manifest has findings."""

    i2t_r1: float = Field(alias="i2t_r@1")
    i2t_r5: float = Field(alias="i2t_r@5")
    i2t_r10: float = Field(alias="i2t_r@10")
    t2i_r1: float = Field(alias="t2i_r@1")
    t2i_r5: float = Field(alias="t2i_r@5")
    t2i_r10: float = Field(alias="t2i_r@10")
    n_texts: int
    chance_i2t_r1: float = Field(alias="chance_i2t_r@1")
    chance_i2t_r5: float = Field(alias="chance_i2t_r@5")
    chance_i2t_r10: float = Field(alias="chance_i2t_r@10")
    chance_t2i_r1: float = Field(alias="chance_t2i_r@1")
    chance_t2i_r5: float = Field(alias="chance_t2i_r@5")
    chance_t2i_r10: float = Field(alias="chance_t2i_r@10")
    findings_match: FindingsMatch | None = None

    def recall(self, direction: Literal["i2t", "t2i"], k: Literal[1, 5, 10]) -> tuple[float, float]:
        """(Recall@k, its chance level) of image -> report (i2t) or report -> image (t2i)."""
        return getattr(self, f"{direction}_r{k}"), getattr(self, f"chance_{direction}_r{k}")


class StudyRetrieval(RecallAtK):
    """Retrieval with one query per study, its slice embeddings averaged."""

    n_studies: int


class Retrieval(RecallAtK):
    n_images: int
    study: StudyRetrieval | None = None


class KindScore(_Block):
    """A finding kind's test AUROC; the pixel ceiling gives no interval and no negatives."""

    auroc: float | None
    ci95: Interval | None = None
    positives: int
    negatives: int | None = None


class FindingScores(_Block):
    """One scorer's test AUROC per finding kind, and the macro AUROC over `macro_kinds` (the
    kinds with enough positives)."""

    per_kind: dict[str, KindScore]
    macro_auroc: float | None = None
    macro_kinds: list[str] = []
    rule: str = ""


class FindingGate(_Block):
    """Which finding kinds `predict` shows: each kind's valid AUROC against `min_valid_auroc`
    (`findings.valid_gate`); `valid_auroc` is None where the valid split has no findings."""

    valid_auroc: dict[str, float | None] | None = None
    valid_positives: dict[str, int] = {}
    validated: list[str] = []
    not_validated: list[str] = []
    min_valid_auroc: float | None = None
    min_valid_positives: int | None = None


class HeadScores(FindingScores, FindingGate):
    """The finding head's test scores and its own valid gate."""

    min_positives: int | None = None


class PixelCeiling(FindingScores):
    """The vision tower trained on the per-kind truth from scratch: what the pixels show."""

    n_train_images: int | None = None
    epochs: int | None = None


class PromptPairCosine(_Block):
    per_kind: dict[str, float]
    mean: float


class PerFinding(FindingScores, FindingGate):
    """The `per_finding` block. `per_kind` and `macro_auroc` are the zero-shot prompts' test
    scores; `finding_head` and `pixel_ceiling` the other scorers'. The gate fields are those of
    `scorer`, the scorer whose valid macro AUROC was the better (prompts without a head)."""

    min_positives: int | None = None
    n_images: int | None = None
    n_images_without_level_or_findings: int | None = None
    contrast: str | None = None
    valid_macro_auroc_by_contrast: dict[str, float | None] = {}
    prompt_pair_cosine: PromptPairCosine | None = None
    finding_head: HeadScores | None = None
    valid_macro_auroc_by_scorer: dict[str, float | None] = {}
    scorer: Literal["prompts", "head"] | None = None
    pixel_ceiling: PixelCeiling | None = None


class SplitBalance(_Block):
    images: int
    patients: int
    patients_normal: int
    patients_abnormal: int


class Integrity(_Block):
    patient_overlap: dict[str, int]
    pretraining_overlap_checked: bool
    class_balance: dict[str, SplitBalance]
    skipped_rows: int
    classifier_inputs: dict[str, list[str]]
    warnings: list[str]


class Calibration(_Block):
    """Platt maps fitted on valid, and the figures on the evaluated split before and after."""

    method: str
    fitted_on: str
    image_map: dict[str, float]
    patient_map: dict[str, float]
    rule: str
    thresholds: dict[str, float]
    before: dict[str, dict[str, float | None]]
    after: dict[str, dict[str, float | None]]


class InputGuard(_Block):
    """The input guard fitted beside the operating point (`decision.InputGuard`)."""

    method: str
    thresholds: dict[str, float]
    in_rate_valid: float
    fitted_on: str
    flagged_test_fraction: float
    header_checks: str


class ReportBank(_Block):
    """The nearest-report check of the model folder's report bank."""

    reports: int
    source: str
    texts: str
    rule: str
    top1_label_agreement: dict[str, dict[str, float | None]]
    probe: dict[str, dict[str, float | None]]


class Meta(_Block):
    split: str
    out: str | None = None
    manifest: str | None = None
    model: str | None = None
    vision: str | None = None
    probe_C: float | None = None
    raw_pixels_C: float | None = None
    patient_rule: str | None = None
    zero_shot_rule: str | None = None
    threshold_rule: str | None = None
    bootstrap_resamples: int | None = None
    ci_method: str | None = None
    seed: int | None = None
    supervised: dict[str, Any] = {}
    seconds: dict[str, float] = {}


class MetricsFile(Scores):
    """metrics.json: `image` and `patient` are the figures of `classifier` (the linear probe);
    `ci95` holds the 95% intervals keyed "patient.auroc" for it and with a prefix for the others
    ("zero_shot.patient.auroc", "baselines.raw_pixels.image.auroc")."""

    classifier: str
    zero_shot: Scores
    zero_shot_valid_threshold: Scores | None = None
    retrieval: Retrieval
    per_finding: PerFinding | None = None  # None: the manifest has no findings
    ci95: dict[str, Interval | None]
    baselines: dict[str, Scores] = {}
    label_efficiency: dict[str, dict[str, EfficiencyPoint]] = {}
    integrity: Integrity
    calibration: Calibration | None = None  # these three only where the model folder was written
    input_guard: InputGuard | None = None
    report_bank: ReportBank | None = None
    finetune: Scores | None = None
    meta: Meta

    @model_validator(mode="before")
    @classmethod
    def _current_keys(cls, data: Any) -> Any:
        return _renamed(data) if isinstance(data, Mapping) else data

    @field_validator("per_finding", mode="before")
    @classmethod
    def _empty_is_none(cls, value: Any) -> Any:
        return value or None

    def interval(self, key: str) -> Interval | None:
        """The 95% interval of `key` ("patient.auroc", "zero_shot.image.auroc"), None if none."""
        return self.ci95.get(key)

    def classifier_scores(self) -> dict[str, Scores]:
        """Every classifier's figures keyed by its `ci95` prefix: "" for `classifier`, then
        "zero_shot.", "zero_shot_valid_threshold.", "finetune." and "baselines.NAME." where present."""
        named = {"zero_shot": self.zero_shot, "zero_shot_valid_threshold": self.zero_shot_valid_threshold}
        named |= {"finetune": self.finetune, **{f"baselines.{k}": v for k, v in self.baselines.items()}}
        return {"": self, **{f"{name}.": block for name, block in named.items() if block is not None}}


def parse_metrics(metrics: Mapping[str, object], source: str | Path = "metrics") -> MetricsFile:
    """The typed metrics of a metrics.json dict; InputError naming `source` and the first bad key."""
    try:
        return MetricsFile.model_validate(metrics)
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "top level"
        raise InputError(
            f"{source}: not a metrics.json of lumbarclip evaluate ({where}: {first['msg']}; "
            f"{err.error_count()} problem(s))"
        ) from None


def read_metrics(path: str | Path) -> MetricsFile:
    """metrics.json as written by `lumbarclip evaluate`, typed; InputError naming the file when
    it is missing, not JSON or not metrics."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: missing; write it with lumbarclip evaluate")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise InputError(f"{path}: not valid JSON ({err})") from None
    if not isinstance(data, dict):
        raise InputError(f"{path}: not a metrics.json of lumbarclip evaluate (a JSON {type(data).__name__}, not an object)")
    return parse_metrics(data, path)


def _renamed(data: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of `data` with every `LEGACY_KEYS` key under its current name, in its place."""
    out = dict(data)
    for path, old, new in LEGACY_KEYS:
        out = _rename(out, path, old, new)
    return out


def _rename(node: Any, path: tuple[str, ...], old: str, new: str) -> Any:
    """`node` with `old` renamed `new` in its block at `path`; the dicts on the way are copied."""
    if not isinstance(node, Mapping):
        return node
    if path:
        head = path[0]
        return {**node, head: _rename(node[head], path[1:], old, new)} if head in node else node
    if old not in node or new in node:
        return node
    return {(new if key == old else key): value for key, value in node.items()}

"""Per-level zero-shot from the report text: each graded level's findings, as the report states
them (`Findings.level`), scored by the level's prompts (`inference.findings.FindingClassifier`)
against an image of that level: the disc's own crop (its box widened, padded square, at the
model's input size), the whole slice, or the disc's grader features projected into the CLIP
space by a projection aligned with the level's report sentences (`ALIGNED`,
`training.crop_text`). A patient's score at a level is the
mean over its slices; AUROC per level and finding group. And nearest-report search at level
granularity: each (patient, level) crop against every patient's report sentences that name that
level, the own patient's sentence counted as the hit (R@K beside chance).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

from lumbarclip.data.dataset import level_names
from lumbarclip.data.discs import NAMED_LEVELS, discs_from_json
from lumbarclip.data.imageio import load_image
from lumbarclip.data.manifest import ImageRecord
from lumbarclip.bundle.grader import DiscGrader
from lumbarclip.data.transforms import MEAN, STD, to_square_tensor
from lumbarclip.evaluation.grades import disc_table
from lumbarclip.findings import LEVEL_KINDS, Findings, level_kinds
from lumbarclip.inference.findings import FindingClassifier
from lumbarclip.reports.sentences import split_sentences

#: The finding groups of the target: a group is present at a level when any of its kinds is.
GROUPS: dict[str, tuple[str, ...]] = {
    "bulge or herniation": ("bulge", "protrusion", "extrusion"),
    "stenosis": ("canal_narrowing", "foraminal_narrowing", "thecal_sac_compression"),
    "degeneration": ("desiccation",),
}
MARGIN = 0.5  # of the box's size on each side: the crop keeps the canal behind the disc
VIEWS: tuple[str, ...] = ("crop", "slice")
#: The disc's grader features projected into the CLIP space (`training.crop_text`); needs a projection.
ALIGNED = "aligned"
#: The text a disc is aligned with when its report names no sentence at its level: by the
#: reports' convention (and the zero-shot truth's) an unnamed level is normal.
UNSTATED = "no abnormality at the {level} level"


def _crop(pixels: np.ndarray, box: list[float]) -> np.ndarray:
    x0, y0, x1, y1 = box
    dx, dy = (x1 - x0) * MARGIN, max((y1 - y0) * MARGIN, (x1 - x0) * 0.25)
    h, w = pixels.shape[:2]
    r0, r1 = int(max(0, y0 - dy)), int(min(h, y1 + dy + 1))
    c0, c1 = int(max(0, x0 - dx)), int(min(w, x1 + dx + 1))
    return pixels[r0:r1, c0:c1]


@torch.no_grad()
def level_embeddings(model: object, records: list[ImageRecord], view: str) -> tuple[np.ndarray, list[tuple[str, str]], list[Findings]]:
    """Unit embeddings of every graded level of every slice ([N, D]), their (patient, level),
    and the patient's report findings."""
    size = model.config.image_size  # type: ignore[attr-defined]
    images, keys, findings = [], [], []
    for record in records:
        discs = [d for d in discs_from_json(record.discs) if d.level in NAMED_LEVELS]
        if not discs:
            continue
        pixels = load_image(record.image_path)
        parsed = Findings.from_json(record.findings) if record.findings else Findings()
        for disc in discs:
            part = _crop(pixels, disc.box_xyxy) if view == "crop" else pixels
            images.append((to_square_tensor(part, size) - MEAN) / STD)
            keys.append((record.patient_id, disc.level))
            findings.append(parsed)
    emb = []
    for start in range(0, len(images), 64):
        batch = torch.stack(images[start : start + 64])
        emb.append(torch.nn.functional.normalize(model.encode_image(batch), dim=-1).numpy())  # type: ignore[attr-defined]
    return (np.concatenate(emb) if emb else np.zeros((0, 0))), keys, findings


def zero_shot_auroc(
    classifier: FindingClassifier, emb: np.ndarray, keys: list[tuple[str, str]], findings: list[Findings]
) -> dict[str, dict[str, float | None]]:
    """{level: {group: AUROC}} per patient (its slices' scores averaged), the macro over them,
    and {"positives": {level: {group: patients with the finding}}}: an AUROC over one or two
    positive patients says little."""
    scores = classifier.scores(emb, [lv for _, lv in keys])
    out: dict[str, dict[str, float | None]] = {}
    positives: dict[str, dict[str, int]] = {}
    values = []
    for level in NAMED_LEVELS:
        out[level] = {}
        positives[level] = {}
        for group, kinds in GROUPS.items():
            kinds_here = [k for k in kinds if k in scores]
            by_patient: dict[str, list[float]] = {}
            truth: dict[str, int] = {}
            for n, (pid, lv) in enumerate(keys):
                if lv != level:
                    continue
                by_patient.setdefault(pid, []).append(max(scores[k][n] for k in kinds_here))
                truth[pid] = int(bool(level_kinds(findings[n].level(level)) & set(kinds)))
            y = np.array([truth[p] for p in by_patient])
            s = np.array([np.mean(v) for v in by_patient.values()])
            auroc = float(roc_auc_score(y, s)) if 0 < y.sum() < len(y) else None
            out[level][group] = auroc
            positives[level][group] = int(y.sum())
            if auroc is not None:
                values.append(auroc)
    out["macro"] = {"auroc": float(np.mean(values)) if values else None}
    out["positives"] = positives  # type: ignore[assignment]
    return out


def level_sentences(report: str, level: str) -> list[str]:
    return [s for s in split_sentences(report) or [report] if level in level_names(s)]


def level_retrieval(
    model: object, emb: np.ndarray, keys: list[tuple[str, str]], reports: dict[str, str], ks: tuple[int, ...] = (1, 5)
) -> dict[str, dict[str, float]]:
    """Per level: R@K of the own patient's sentences naming that level among every patient's,
    with a (patient, level) query the mean of its crops' embeddings; chance is K / candidates."""
    from lumbarclip.inference import embed_texts

    out: dict[str, dict[str, float]] = {}
    for level in NAMED_LEVELS:
        texts = {pid: " ".join(level_sentences(text, level)) for pid, text in reports.items()}
        texts = {pid: t for pid, t in texts.items() if t}
        pids = sorted({pid for pid, lv in keys if lv == level and pid in texts})
        if len(pids) < 2:
            continue
        text_emb = embed_texts(model, [texts[p] for p in pids])  # type: ignore[arg-type]
        query = np.stack([emb[[n for n, k in enumerate(keys) if k == (p, level)]].mean(0) for p in pids])
        query /= np.linalg.norm(query, axis=1, keepdims=True)
        rank = np.argsort(-(query @ text_emb.T), axis=1)
        hits = {k: float(np.mean([i in rank[i, :k] for i in range(len(pids))])) for k in ks}
        out[level] = {**{f"r@{k}": hits[k] for k in ks}, **{f"chance_r@{k}": min(1.0, k / len(pids)) for k in ks}, "n": float(len(pids))}
    return out


@dataclass
class LevelDiscs:
    """Every labelled disc at a graded level of a split's slices: its grader features, (patient,
    level), the patient's report findings, and the report's sentences naming that level ('' when
    none does)."""

    features: np.ndarray
    keys: list[tuple[str, str]]
    findings: list[Findings]
    sentences: list[str]

    def texts(self) -> list[str]:
        """What each disc is aligned with: its level's sentences, or `UNSTATED` at its level."""
        return [text or UNSTATED.format(level=lv) for text, (_, lv) in zip(self.sentences, self.keys)]

    def labels(self) -> np.ndarray:
        """[N, K] multi-hot of `LEVEL_KINDS` at each disc's level, as its report states them."""
        return np.array([[float(k in level_kinds(f.level(lv))) for k in LEVEL_KINDS] for f, (_, lv) in zip(self.findings, self.keys)])


def level_discs(grader: DiscGrader, extractor: object, records: list[ImageRecord], size: int) -> LevelDiscs:
    """`LevelDiscs` of the records, read as the grader reads them (`evaluation.grades.disc_table`)."""
    table = disc_table(grader.source, extractor, records, size)
    at_level = np.isin(table.levels, NAMED_LEVELS)
    by_patient = {r.patient_id: r for r in records}
    keys = [(str(p), str(lv)) for p, lv in zip(table.patients[at_level], table.levels[at_level])]
    findings = {pid: Findings.from_json(r.findings) if r.findings else Findings() for pid, r in by_patient.items()}
    return LevelDiscs(
        table.features[at_level], keys, [findings[p] for p, _ in keys],
        [" ".join(level_sentences(by_patient[p].report, lv)) for p, lv in keys],
    )  # fmt: skip


@torch.no_grad()
def aligned_embeddings(projection: torch.nn.Module, discs: LevelDiscs) -> np.ndarray:
    """Unit CLIP-space embeddings [N, D] of the discs' features through the aligned projection."""
    out = projection(torch.as_tensor(discs.features, dtype=torch.float32))
    return torch.nn.functional.normalize(out, dim=-1).numpy()

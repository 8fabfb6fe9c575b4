"""Per-finding zero-shot: is there a disc bulge (a narrowed right foramen, ...) at this image's level?

Each finding kind of `lumbarclip.findings.LEVEL_KINDS` has a positive and a negative prompt
ensemble with a `{level}` placeholder. They are written here, apart from the report writer's
phrase tables (`lumbarclip.reports.writer`), in a plainer question-free style, so a high score
is not the text tower recognising a sentence it was trained on; the evaluation's integrity check
(`evaluation.integrity.prompt_overlap`) flags any prompt equal to a training sentence anyway.

An image is scored against the prompts of its own level: P(finding) is the softmax over
{positive, contrast} of logit_scale * cosine, as in the binary zero-shot classifier. The
contrast is the kind's negative ensemble ("no disc bulge at L4-L5") or, with
`contrast="normal"`, one "normal at this level" ensemble shared by all kinds; `evaluate` picks
the one with the better valid macro AUROC and the operating point keeps it for `predict`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from lumbarclip.findings import LEVEL_KINDS, LEVELS
from lumbarclip.models import LumbarCLIP

#: How a level with no known name is written into the prompts.
UNKNOWN_LEVEL = "this disc level"

_PROMPTS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "bulge": (
        ("disc bulge at {level}", "bulging intervertebral disc at {level}", "the {level} disc bulges"),
        ("no disc bulge at {level}", "the {level} disc does not bulge", "normal disc contour at {level}"),
    ),
    "protrusion": (
        ("disc protrusion at {level}", "protruded disc at {level}", "focal disc herniation at {level}"),
        ("no disc protrusion at {level}", "no herniated disc at {level}", "the {level} disc is not protruded"),
    ),
    "extrusion": (
        ("disc extrusion at {level}", "extruded disc fragment at {level}", "large herniation extruding at {level}"),
        ("no disc extrusion at {level}", "no extruded fragment at {level}", "the {level} disc is not extruded"),
    ),
    "thecal_sac_compression": (
        ("thecal sac compression at {level}", "the dural sac is indented at {level}", "compressed thecal sac at {level}"),
        ("thecal sac free at {level}", "no compression of the dural sac at {level}", "the thecal sac is intact at {level}"),
    ),
    "root_compression": (
        ("nerve root compression at {level}", "compressed exiting nerve root at {level}", "root impingement at {level}"),
        ("nerve roots free at {level}", "no nerve root impingement at {level}", "the {level} roots are not compressed"),
    ),
    "canal_narrowing": (
        ("spinal canal stenosis at {level}", "narrow central canal at {level}", "the canal is narrowed at {level}"),
        ("spinal canal of normal width at {level}", "no canal stenosis at {level}", "wide central canal at {level}"),
    ),
    "foraminal_narrowing": (
        ("neural foraminal narrowing at {level}", "foraminal stenosis at {level}", "narrow exit foramen at {level}"),
        ("patent neural foramina at {level}", "no foraminal stenosis at {level}", "open exit foramina at {level}"),
    ),
    "facet_hypertrophy": (
        ("facet arthropathy at {level}", "hypertrophic facet joints at {level}", "facet joint enlargement at {level}"),
        ("normal facet joints at {level}", "no facet arthropathy at {level}", "facets not hypertrophied at {level}"),
    ),
    "ligamentum_hypertrophy": (
        ("thickened ligamenta flava at {level}", "ligamentum flavum thickening at {level}", "buckled yellow ligament at {level}"),
        ("thin ligamenta flava at {level}", "no ligamentum flavum thickening at {level}", "normal yellow ligament at {level}"),
    ),
    "desiccation": (
        ("dark dehydrated disc at {level}", "disc desiccation at {level}", "degenerated low signal disc at {level}"),
        ("well hydrated disc at {level}", "no disc desiccation at {level}", "normal disc signal at {level}"),
    ),
    "annular_tear": (
        ("annulus fibrosus tear at {level}", "high intensity zone in the annulus at {level}", "torn annulus at {level}"),
        ("intact annulus fibrosus at {level}", "no annular fissure at {level}", "no high intensity zone at {level}"),
    ),
}


#: The "normal at this level" ensemble, the other contrast for every kind.
NORMAL_PROMPTS: tuple[str, ...] = (
    "normal disc level at {level}",
    "unremarkable {level} intervertebral disc",
    "no abnormality at the {level} level",
)
#: How a kind's positive ensemble is contrasted: its own negative, or the shared normal one.
CONTRASTS: tuple[str, ...] = ("negative", "normal")


def finding_prompts() -> dict[str, dict[str, list[str]]]:
    """{kind: {"positive": [...], "negative": [...]}} for every kind of `LEVEL_KINDS`, each
    prompt holding a `{level}` placeholder (a fresh copy; callers may edit it)."""
    return {kind: {"positive": list(pos), "negative": list(neg)} for kind, (pos, neg) in _PROMPTS.items()}


def render_prompts(prompts: dict[str, dict[str, list[str]]], level: str | None) -> dict[str, dict[str, list[str]]]:
    """The prompts with `{level}` filled in (`UNKNOWN_LEVEL` when the level is not known)."""
    name = level if level else UNKNOWN_LEVEL
    return {
        kind: {side: [p.format(level=name) for p in texts] for side, texts in pair.items()}
        for kind, pair in prompts.items()
    }


@dataclass
class FindingClassifier:
    """Per level and kind, the unit embeddings of the negative and positive prompt ensembles."""

    kinds: tuple[str, ...]
    #: level (or "" for unknown) -> [K, 2, D]: per kind, (negative, positive) class embedding
    classes: dict[str, torch.Tensor]
    logit_scale: float
    #: level (or "") -> [D]: the "normal at this level" ensemble (`NORMAL_PROMPTS`)
    normal: dict[str, torch.Tensor] | None = None
    contrast: str = "negative"

    @classmethod
    @torch.no_grad()
    def build(
        cls, model: LumbarCLIP, prompts: dict[str, dict[str, list[str]]] | None = None, contrast: str = "negative"
    ) -> FindingClassifier:
        """Embed every prompt once, in one batched pass of the text tower rather than one small
        forward per ensemble ((len(LEVELS) + 1) levels x kinds x 2 of them)."""
        from lumbarclip.inference.embed import embed_texts

        prompts = prompts or finding_prompts()
        kinds = tuple(k for k in LEVEL_KINDS if k in prompts)
        texts: list[str] = []
        spans: list[tuple[str, int, int, int, int]] = []  # level, kind index, class, start, stop
        for level in (*LEVELS, ""):
            rendered = render_prompts(prompts, level or None)
            for i, kind in enumerate(kinds):
                for c, side in enumerate(("negative", "positive")):
                    if not rendered[kind][side]:
                        raise ValueError(f"finding {kind!r} has no {side} prompts")
                    spans.append((level, i, c, len(texts), len(texts) + len(rendered[kind][side])))
                    texts += rendered[kind][side]
        normal_spans = {}
        for level in (*LEVELS, ""):
            normal_spans[level] = (len(texts), len(texts) + len(NORMAL_PROMPTS))
            texts += [p.format(level=level or UNKNOWN_LEVEL) for p in NORMAL_PROMPTS]
        if contrast not in CONTRASTS:
            raise ValueError(f"contrast must be one of {CONTRASTS}, got {contrast!r}")
        emb = torch.from_numpy(embed_texts(model, texts, batch_size=256))
        classes = {level: torch.zeros(len(kinds), 2, emb.shape[1]) for level in (*LEVELS, "")}
        for level, i, c, start, stop in spans:  # CLIP's prompt ensemble: normalised mean
            classes[level][i, c] = torch.nn.functional.normalize(emb[start:stop].mean(0), dim=-1)
        normal = {
            level: torch.nn.functional.normalize(emb[start:stop].mean(0), dim=-1)
            for level, (start, stop) in normal_spans.items()
        }
        return cls(kinds, classes, float(model.logit_scale.detach().float().cpu()), normal, contrast)

    def with_contrast(self, contrast: str) -> FindingClassifier:
        """The same embeddings scored with another contrast (no text tower pass)."""
        if contrast not in CONTRASTS:
            raise ValueError(f"contrast must be one of {CONTRASTS}, got {contrast!r}")
        return FindingClassifier(self.kinds, self.classes, self.logit_scale, self.normal, contrast)

    def scores(self, image_emb: np.ndarray, levels: Sequence[str | None]) -> dict[str, np.ndarray]:
        """{kind: P(finding) per image [N]} with each image scored at its own level."""
        emb = torch.as_tensor(np.asarray(image_emb, dtype=np.float32))
        if len(levels) != len(emb):
            raise ValueError(f"{len(emb)} embeddings but {len(levels)} levels")
        out = np.zeros((len(self.kinds), len(emb)), dtype=np.float64)
        keys = np.array([lv if lv in self.classes and lv else "" for lv in levels])
        for key in set(keys.tolist()):
            rows = np.flatnonzero(keys == key)
            pairs = self.classes[key]
            if self.contrast == "normal":
                pairs = pairs.clone()
                pairs[:, 0] = self.normal[key]  # type: ignore[index]
            logits = self.logit_scale * torch.einsum("nd,kcd->knc", emb[rows], pairs)
            out[:, rows] = logits.softmax(dim=-1)[..., 1].double().numpy()
        return {kind: out[i] for i, kind in enumerate(self.kinds)}

    def pair_cosine(self, levels: Sequence[str] = LEVELS) -> dict[str, float]:
        """{kind: cosine between its positive and negative ensemble embeddings}, averaged over
        `levels`: near 1 when the text side cannot tell "disc bulge" from "no disc bulge"."""
        return {
            kind: float(np.mean([float(self.classes[lv][k, 0] @ self.classes[lv][k, 1]) for lv in levels]))
            for k, kind in enumerate(self.kinds)
        }


@torch.no_grad()
def head_outputs(model: LumbarCLIP, images: torch.Tensor, batch_size: int = 64) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """The finding head's ({kind: P(finding) [N]}, [N, K, h, w] attention) for preprocessed
    images: trained on the reports' statements at each image's level, not prompts (the model
    must have `finding_head`)."""
    model.eval()
    probs, maps = [], []
    for start in range(0, len(images), batch_size):
        batch = images[start : start + batch_size].to(model.device)
        _, logits, attention = model.encode_image_and_findings(batch)
        probs.append(logits.float().sigmoid().cpu().numpy())
        maps.append(attention.float().cpu().numpy())
    prob = np.concatenate(probs) if probs else np.zeros((0, len(LEVEL_KINDS)))
    return {kind: prob[:, k].astype(np.float64) for k, kind in enumerate(LEVEL_KINDS)}, np.concatenate(maps) if maps else np.zeros((0,))

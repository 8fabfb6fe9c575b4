"""Crops aligned with their level's sentences: after fitting, a disc's projected features sit
nearest the text of its own findings, on held-out discs; the projection starts from nothing
(an untrained one is at chance) and refuses mismatched inputs."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lumbarclip.training.crop_text import fit_crop_projection


def _discs(n: int, seed: int, texts: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Three kinds of level (normal, bulge, bulge + stenosis); features carry the kind in two of
    40 noisy dimensions, the text is that kind's sentence embedding plus a little noise."""
    rng = np.random.default_rng(seed)
    kind = rng.integers(0, 3, n)
    labels = np.array([[0, 0], [1, 0], [1, 1]], dtype=float)[kind]
    feats = rng.normal(0, 1, (n, 40))
    feats[:, :2] += 4.0 * labels  # two standard deviations from each threshold: about 95% separable
    text = texts[kind] + rng.normal(0, 0.05, (n, texts.shape[1]))
    return feats, text / np.linalg.norm(text, axis=1, keepdims=True), kind


def test_projected_discs_meet_the_text_of_their_findings():
    rng = np.random.default_rng(0)
    texts = rng.normal(0, 1, (3, 16))
    texts /= np.linalg.norm(texts, axis=1, keepdims=True)
    feats, text, kind = _discs(300, 1, texts)
    labels = np.array([[0, 0], [1, 0], [1, 1]], dtype=float)[kind]
    projection = fit_crop_projection(feats, text, labels, logit_scale=20.0, steps=300)
    held_feats, _, held_kind = _discs(200, 2, texts)
    with torch.no_grad():
        emb = torch.nn.functional.normalize(projection(torch.as_tensor(held_feats, dtype=torch.float32)), dim=-1).numpy()
    nearest = np.argmax(emb @ texts.T, axis=1)
    assert np.mean(nearest == held_kind) >= 0.85
    untrained = fit_crop_projection(feats, text, labels, logit_scale=20.0, steps=0)
    with torch.no_grad():
        raw = untrained(torch.as_tensor(held_feats, dtype=torch.float32)).numpy()
    assert np.mean(np.argmax(raw @ texts.T, axis=1) == held_kind) < 0.6


def test_mismatched_inputs_are_refused():
    with pytest.raises(ValueError, match="matching"):
        fit_crop_projection(np.zeros((4, 3)), np.ones((3, 8)), np.zeros((4, 2)), 10.0)

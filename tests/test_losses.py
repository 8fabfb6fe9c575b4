import math

import pytest
import torch
import torch.nn.functional as F

from lumbarclip.losses import ClipLoss, hard_clip_loss, label_similarity, soft_clip_loss, soft_targets


def _features():
    img = F.normalize(torch.tensor([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0]]), dim=-1)
    txt = F.normalize(torch.tensor([[1.0, 0.1], [0.0, 1.0], [0.7, 0.7]]), dim=-1)
    return img, txt


def _ce(row_logits, target):
    """Cross-entropy of one row against a target distribution, by hand."""
    lse = math.log(sum(math.exp(v) for v in row_logits))
    return -sum(t * (v - lse) for v, t in zip(row_logits, target))


def test_hard_loss_matches_hand_computation():
    img, txt = _features()
    scale = torch.tensor(2.0)
    logits = (scale * img @ txt.T).tolist()
    cols = [list(c) for c in zip(*logits)]
    onehot = [[1.0 if i == j else 0.0 for j in range(3)] for i in range(3)]
    expected = (sum(_ce(logits[i], onehot[i]) for i in range(3)) / 3 + sum(_ce(cols[i], onehot[i]) for i in range(3)) / 3) / 2
    assert hard_clip_loss(img, txt, scale).item() == pytest.approx(expected, rel=1e-5)


def test_soft_loss_paper_form_matches_hand_computation():
    img, txt = _features()
    scale = torch.tensor(3.0)
    labels = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])  # classes 0, 1, 0
    logits = (scale * img @ txt.T).tolist()
    cols = [list(c) for c in zip(*logits)]
    # S = Y Yᵀ is symmetric here; the softmax of row [1, 0, 1] is [e, 1, e] / (2e + 1).
    e = math.e
    same = [[1, 0, 1], [0, 1, 0], [1, 0, 1]]
    targets = [[math.exp(v) / sum(math.exp(w) for w in row) for v in row] for row in same]
    assert targets[0] == pytest.approx([e / (2 * e + 1), 1 / (2 * e + 1), e / (2 * e + 1)])
    expected = (sum(_ce(logits[i], targets[i]) for i in range(3)) / 3 + sum(_ce(cols[i], targets[i]) for i in range(3)) / 3) / 2
    assert soft_clip_loss(img, txt, scale, labels, labels).item() == pytest.approx(expected, rel=1e-5)


def test_soft_targets_normalized_zeroes_other_classes():
    sim = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0], [1.0, 0.0, 1.0]])
    assert soft_targets(sim, "normalized").tolist() == [[0.5, 0.0, 0.5], [0.0, 1.0, 0.0], [0.5, 0.0, 0.5]]
    with pytest.raises(ValueError):
        soft_targets(sim, "other")


def test_normalized_soft_loss_equals_infonce_with_unique_labels():
    img = F.normalize(torch.randn(5, 8), dim=-1)
    txt = F.normalize(torch.randn(5, 8), dim=-1)
    labels = torch.eye(5)
    scale = torch.tensor(10.0)
    soft = soft_clip_loss(img, txt, scale, labels, labels, form="normalized")
    assert soft.item() == pytest.approx(hard_clip_loss(img, txt, scale).item(), rel=1e-6)


def test_soft_loss_does_not_push_same_class_pairs_apart():
    """Two images of one class with swapped texts: the soft loss is lower than InfoNCE's,
    since the swapped (same-class) pairing is a valid target, not a false negative."""
    img = F.normalize(torch.tensor([[1.0, 0.0], [1.0, 0.05]]), dim=-1)
    txt = F.normalize(torch.tensor([[1.0, 0.05], [1.0, 0.0]]), dim=-1)
    labels = torch.tensor([[0.0, 1.0], [0.0, 1.0]])
    scale = torch.tensor(50.0)
    soft = soft_clip_loss(img, txt, scale, labels, labels, form="normalized")
    assert soft.item() < hard_clip_loss(img, txt, scale).item()
    assert soft.item() == pytest.approx(math.log(2), abs=0.05)


def test_clip_loss_module_gradients_and_fallback():
    img = F.normalize(torch.randn(4, 6), dim=-1).requires_grad_()
    txt = F.normalize(torch.randn(4, 6), dim=-1).requires_grad_()
    scale = torch.tensor(5.0, requires_grad=True)
    labels = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 1.0], [1.0, 0.0]])
    loss = ClipLoss("soft")(img, txt, scale, labels)
    loss.backward()
    assert img.grad is not None and scale.grad is not None and torch.isfinite(loss)
    assert ClipLoss("soft")(img, txt, scale, None).item() == pytest.approx(hard_clip_loss(img, txt, scale).item())
    with pytest.raises(ValueError):
        ClipLoss("triplet")


def test_label_kernels_match_hand_computation():
    a = torch.tensor([[1.0, 1.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]])
    b = torch.tensor([[1.0, 0.0, 1.0, 0.0], [1.0, 1.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]])
    assert label_similarity(a, b, "dot").tolist() == [[1.0, 2.0, 0.0], [0.0, 0.0, 0.0]]
    cos = label_similarity(a, b, "cosine")
    assert cos[0].tolist() == pytest.approx([1 / 2, 1.0, 0.0])  # 1 / (sqrt2 * sqrt2)
    # Jaccard: {0,1} vs {0,2} -> 1/3; identical -> 1; empty vs empty -> 1 (two normal studies)
    jac = label_similarity(a, b, "jaccard")
    assert jac.flatten().tolist() == pytest.approx([1 / 3, 1.0, 0.0, 0.0, 0.0, 1.0])
    with pytest.raises(ValueError, match="kernel"):
        label_similarity(a, b, "rbf")


def test_identity_mixture_targets():
    sim = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    t = soft_targets(sim, "normalized", identity_weight=0.5)
    # row 0: 0.5 * [0.5, 0.5, 0] + 0.5 * [1, 0, 0]
    assert t.flatten().tolist() == pytest.approx([0.75, 0.25, 0.0, 0.25, 0.75, 0.0, 0.0, 0.0, 1.0])
    assert torch.allclose(t.sum(1), torch.ones(3))
    with pytest.raises(ValueError, match="identity_weight"):
        soft_targets(sim, "normalized", identity_weight=1.5)


def test_findings_soft_loss_matches_hand_computation():
    img = F.normalize(torch.tensor([[1.0, 0.0], [0.6, 0.8]]), dim=-1)
    txt = F.normalize(torch.tensor([[0.8, 0.6], [0.0, 1.0]]), dim=-1)
    labels = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 1.0]])  # Jaccard 1/3 between the two
    scale, w = 10.0, 0.25
    logits = scale * (img @ txt.T)
    sim = [[1.0, 1 / 3], [1 / 3, 1.0]]
    targets = [[(1 - w) * s / sum(row) + w * (i == j) for j, s in enumerate(row)] for i, row in enumerate(sim)]
    rows, cols = logits.tolist(), logits.T.tolist()
    expected = (sum(_ce(rows[i], targets[i]) for i in range(2)) + sum(_ce(cols[i], targets[i]) for i in range(2))) / 4
    got = soft_clip_loss(img, txt, torch.tensor(scale), labels, labels, "normalized", "jaccard", w)
    assert got.item() == pytest.approx(expected, rel=1e-5)
    module = ClipLoss("soft", "normalized", kernel="jaccard", identity_weight=w)
    assert module(img, txt, torch.tensor(scale), labels).item() == pytest.approx(expected, rel=1e-5)
    # identity weight 1 is InfoNCE whatever the labels
    assert soft_clip_loss(img, txt, torch.tensor(scale), labels, labels, "normalized", "jaccard", 1.0).item() == (
        pytest.approx(hard_clip_loss(img, txt, torch.tensor(scale)).item(), rel=1e-5)
    )


def test_config_carries_findings_loss_settings():
    from lumbarclip.training.config import load_config

    cfg = load_config("cpu-demo", ["loss.labels=findings", "loss.kernel=jaccard", "loss.identity_weight=0.25"])
    assert (cfg.loss.labels, cfg.loss.kernel, cfg.loss.identity_weight) == ("findings", "jaccard", 0.25)
    with pytest.raises(ValueError, match="kernel"):
        ClipLoss("soft", "normalized", kernel="rbf")


def test_config_carries_level_sentence_settings():
    from lumbarclip.training.config import load_config

    cfg = load_config("cpu-demo", ["data.sentences=level", "loss.labels=level", "loss.kernel=jaccard"])
    assert (cfg.data.sentences, cfg.loss.labels) == ("level", "level")
    with pytest.raises(ValueError, match="data.sentences"):
        load_config("cpu-demo", ["data.sentences=paragraph"])
    with pytest.raises(ValueError, match="loss.labels"):
        load_config("cpu-demo", ["loss.labels=sentences"])


def test_agreement_kernel_scores_a_text_on_what_it_states():
    """Fraction of a sentence's statements each image bears out, by hand; 0.5 when it states nothing."""
    images = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 0.0], [1.0, 1.0, 0.0]])
    texts = torch.tensor([[1.0, 0.0, 0.0], [-1.0, 0.0, 0.0], [1.0, -1.0, -1.0], [0.0, 0.0, 0.0]])
    expected = torch.tensor(
        [
            [1.0, 0.0, 1.0, 0.5],  # bulge, no other finding
            [0.0, 1.0, 2 / 3, 0.5],  # normal: the denial matches, "bulge with no ..." matches 2 of 3
            [1.0, 0.0, 2 / 3, 0.5],
        ]
    )
    assert torch.allclose(label_similarity(images, texts, "agreement"), expected)


def test_sentence_targets_pull_a_denial_towards_the_images_without_the_finding():
    """With the image and text sides labelled apart, the loss is lower when "no bulge" sits
    next to the normal image than next to the bulging one."""
    loss = ClipLoss("soft", "normalized", kernel="agreement")
    image_labels = torch.tensor([[1.0], [0.0]])  # bulge, normal
    text_labels = torch.tensor([[1.0], [-1.0]])  # "bulge", "no bulge"
    img = torch.eye(2)
    right = loss(img, torch.eye(2), torch.tensor(5.0), image_labels, text_labels)
    swapped = loss(img, torch.eye(2).flip(0), torch.tensor(5.0), image_labels, text_labels)
    assert right < swapped

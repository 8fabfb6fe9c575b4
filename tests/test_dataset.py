import json

import pytest
import torch

from lumbarclip.data.dataset import ImageTextDataset, collate_pairs, label_vector, sentence_pool
from lumbarclip.data.manifest import read_manifest
from lumbarclip.data.transforms import eval_transform, train_transform
from lumbarclip.errors import InputError
from lumbarclip.findings import FINDINGS_VECTOR_NAMES, LABEL_NAMES, Findings, findings_vector
from lumbarclip.reports import split_sentences
from lumbarclip.synth.cohort import CohortConfig, make_cohort


@pytest.fixture(scope="module")
def records(tmp_path_factory):
    manifest = make_cohort(tmp_path_factory.mktemp("ds"), CohortConfig(n_patients=6, size=40), progress=False)
    return read_manifest(manifest).records


def test_sampled_texts_are_sentences_of_the_patients_report(records):
    ds = ImageTextDataset(records, eval_transform(32), split_sentences=split_sentences)
    for i in range(len(ds)):
        sample = ds[i]
        assert sample.text in split_sentences(records[i].report)
        assert sample.image.shape == (1, 32, 32)
    whole = ImageTextDataset(records, eval_transform(32), split_sentences=split_sentences, sample_sentence=False)
    assert whole[0].text == records[0].report


def test_label_vectors_binary_and_findings(records):
    record = records[0]
    assert label_vector(record, "binary") == [1.0 - record.label, float(record.label)]
    kinds = label_vector(record, "kinds")
    assert len(kinds) == len(LABEL_NAMES)
    assert kinds == Findings.from_dict(json.loads(record.findings)).label_vector()
    assert (kinds[0] == 1.0) == (record.label == 0)
    multi = label_vector(record, "findings")
    assert multi == findings_vector(Findings.from_dict(json.loads(record.findings)))
    assert (multi[-1] == 1.0) == (record.label == 0)
    with pytest.raises(InputError, match="findings column"):
        label_vector(type(record)(record.image_path, "p", "train", 1, "r"), "findings")


def test_collate_and_cache(records):
    ds = ImageTextDataset(records[:4], train_transform(32), split_sentences=split_sentences, label_source="findings")
    batch = collate_pairs([ds[i] for i in range(4)])
    assert batch["images"].shape == (4, 1, 32, 32) and len(batch["texts"]) == 4
    assert batch["label_vecs"].shape == (4, len(FINDINGS_VECTOR_NAMES))
    assert torch.equal(batch["labels"], torch.tensor([r.label for r in records[:4]]))
    assert len(ds.cache) == 4  # decoded once, augmented on every access
    assert not torch.equal(ds[0].image, ds[0].image)


def test_sentence_pool_keeps_the_images_level():
    report = [
        "Desiccating L3-4 and L5-S1 discs",
        "Mild diffuse disc bulge noted at L4/L5 level",
        "The spinal canal is adequate",
    ]
    assert sentence_pool(report, "L4-L5") == [report[1]]
    assert sentence_pool(report, "L3-L4") == [report[0]]
    assert sentence_pool(report, "L5-S1") == [report[0]]
    assert sentence_pool(report[:2] + ["Disc bulges at L3-L5"], "L4-L5") == [report[1], "Disc bulges at L3-L5"]
    assert sentence_pool(report, "L1-L2") == [report[2]]  # not named: the general statements
    assert sentence_pool(report[:2], "L1-L2") == report[:2]  # nothing general: everything
    assert sentence_pool(report, "") == report  # level unknown


def test_level_sentences_and_level_labels(records):
    ds = ImageTextDataset(
        records, eval_transform(32), split_sentences=split_sentences, label_source="level", sentences="level"
    )
    for i, record in enumerate(records):
        assert ds[i].text in sentence_pool(split_sentences(record.report), record.level)
        findings = Findings.from_json(record.findings)
        expected = findings_vector(Findings(levels={record.level: findings.level(record.level)}))
        assert ds[i].label_vec.tolist() == expected
        # the level view sets slots of this level (or "normal") only
        on = {FINDINGS_VECTOR_NAMES[j] for j, v in enumerate(expected) if v}
        assert on == {"normal"} or all(name.startswith(record.level + ":") for name in on)
    with pytest.raises(InputError, match="level column"):
        label_vector(type(records[0])(records[0].image_path, "p", "train", 1, "r", findings=records[0].findings), "level")


def test_relevant_pool_keeps_the_level_and_the_general_statements():
    report = ["Mild diffuse disc bulge noted at L4/L5 level", "No evidence of disc herniation", "L5-S1: normal disc"]
    assert sentence_pool(report, "L4-L5", "relevant") == report[:2]
    assert sentence_pool(report, "L3-L4", "relevant") == [report[1]]
    assert sentence_pool(report[:1], "L3-L4", "relevant") == report[:1]  # nothing relevant: everything


def test_sentence_labels_score_each_sentence_on_what_it_states(records):
    """The image side is its level's 0/1 kinds; the text side is what the sampled sentence
    states, computed here from the sentence alone: denials are -1, positives +1."""
    from lumbarclip.findings import LEVEL_KINDS, level_kinds
    from lumbarclip.reports.statements import sentence_statements

    ds = ImageTextDataset(
        records, eval_transform(32), split_sentences=split_sentences, label_source="sentence", sentences="relevant"
    )
    for i, record in enumerate(records):
        sample = ds[i, 7]
        truth = level_kinds(Findings.from_json(record.findings).level(record.level))
        assert sample.label_vec.tolist() == [float(k in truth) for k in LEVEL_KINDS]
        stated = {s.kind: s.present for s in sentence_statements(sample.text) if s.level in (None, record.level)}
        expected = [0.0 if k not in stated else (1.0 if stated[k] else -1.0) for k in LEVEL_KINDS]
        assert sample.text_vec.tolist() == expected
    batch = collate_pairs([ds[i] for i in range(4)])
    assert batch["text_label_vecs"].shape == batch["label_vecs"].shape == (4, len(LEVEL_KINDS))

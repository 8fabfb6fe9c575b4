"""`lumbarclip data shard` writes WebDataset shards of a manifest; `train --data DIR` streams
them; every process of a DDP run gets its own equal share."""

import csv
import json
import tarfile

import numpy as np
import pytest
import torch

from lumbarclip.cli import main
from lumbarclip.data.datamodule import PairDataModule
from lumbarclip.data.imageio import load_image
from lumbarclip.data.manifest import read_manifest
from lumbarclip.data.shards import ShardPairs, _unpng16
from lumbarclip.data.transforms import eval_transform
from lumbarclip.synth.cohort import CohortConfig, make_cohort
from lumbarclip.training import load_config, train


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    return make_cohort(tmp_path_factory.mktemp("cohort"), CohortConfig(n_patients=12, size=32), progress=False)


@pytest.fixture(scope="module")
def shards(cohort, tmp_path_factory):
    out = tmp_path_factory.mktemp("shards")
    assert main(["data", "shard", str(cohort), "--out", str(out), "--shard-size", "10", "--overwrite", "--no-progress"]) == 0
    return out


def test_shards_hold_every_image_and_its_record(cohort, shards):
    manifest = read_manifest(cohort)
    index = json.loads((shards / "shards.json").read_text())
    for split in ("train", "valid", "test"):
        records = manifest.split(split)
        info = index["splits"][split]
        assert info["images"] == len(records) and sum(s["count"] for s in info["shards"]) == len(records)
        members = []
        for shard in info["shards"]:
            with tarfile.open(shards / shard["file"]) as tar:
                members += [(m.name, tar.extractfile(m).read()) for m in tar.getmembers()]
        pngs = [data for name, data in members if name.endswith(".png")]
        metas = [json.loads(data) for name, data in members if name.endswith(".json")]
        assert len(pngs) == len(metas) == len(records)
        for record, png, meta in zip(records, pngs, metas):
            assert (meta["patient_id"], meta["label"], meta["report"]) == (record.patient_id, record.label, record.report)
            assert np.abs(_unpng16(png) - load_image(record.image_path)).max() <= 0.5 / 65535 + 1e-7
            assert str(record.image_path) not in json.dumps(meta)  # no file paths in shards


def test_processes_get_disjoint_equal_shares(shards):
    def keys(rank, world, split, shuffle):
        ds = ShardPairs(shards, split, eval_transform(32), batch_size=4, shuffle=shuffle, rank=rank, world=world)
        return [[s.index for s in batch] for batch in ds]

    one = sorted(i for b in keys(0, 1, "train", True) for i in b)
    assert one == list(range(48))  # 48 train images, batches of 4
    r0, r1 = keys(0, 2, "train", True), keys(1, 2, "train", True)
    assert len(r0) == len(r1) == 6 and all(len(b) == 4 for b in r0 + r1)
    flat0, flat1 = {i for b in r0 for i in b}, {i for b in r1 for i in b}
    assert not flat0 & flat1 and len(flat0 | flat1) == 48
    # validation: all 12 images across the two ranks, equal batch counts (a repeat pads one rank)
    v0, v1 = keys(0, 2, "valid", False), keys(1, 2, "valid", False)
    assert len(v0) == len(v1) and {i for b in v0 + v1 for i in b} == set(range(12))
    # a new epoch, a new order
    ds = ShardPairs(shards, "train", eval_transform(32), batch_size=48, buffer=48)
    first = [s.index for s in next(iter(ds))]
    ds.set_epoch(1)
    assert first != [s.index for s in next(iter(ds))]


@pytest.mark.slow
def test_train_streams_from_shards(cohort, shards, tmp_path):
    overrides = ["model.vision=test_resnet", "model.image_size=32", "model.embed_dim=16", "data.batch_size=8",
                 "trainer.max_epochs=1", "trainer.precision=32-true", "trainer.log_every_n_steps=1"]
    assert PairDataModule(shards, load_config("cpu-demo", overrides).data, 32).shards is not None
    run = train(load_config("cpu-demo", overrides), shards, tmp_path / "run", progress=False)
    summary = json.loads((run / "train_summary.json").read_text())
    assert (summary["train_images"], summary["valid_images"]) == (48, 12)
    assert summary["manifest"] == str(read_manifest(cohort).path.resolve())  # evaluate's leak check still works
    rows = list(csv.DictReader((run / "logs" / "metrics.csv").open()))
    assert len([r for r in rows if r.get("train/loss")]) == 6  # 48 images / 8
    assert torch.isfinite(torch.tensor([float(r["train/loss"]) for r in rows if r.get("train/loss")])).all()


def test_shard_and_train_refuse_a_patient_in_two_splits(cohort, tmp_path, capsys):
    rows = list(csv.DictReader(open(cohort)))
    for row in rows:  # relative image paths resolve against the manifest's folder
        row["image_path"] = str((cohort.parent / row["image_path"]).resolve())
    valid = next(r for r in rows if r["split"] == "valid")
    train_row = next(r for r in rows if r["split"] == "train" and r["label"] == valid["label"])
    train_row["patient_id"] = valid["patient_id"]  # same label: a leak, not a label conflict
    leaky = tmp_path / "leaky.csv"
    with leaky.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    assert main(["data", "shard", str(leaky), "--out", str(tmp_path / "s")]) == 2
    assert "appear in both train and valid" in capsys.readouterr().err
    assert main(["train", "--data", str(leaky), "--out", str(tmp_path / "r")]) == 2
    assert "appear in both train and valid" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()  # refused before the run folder is made

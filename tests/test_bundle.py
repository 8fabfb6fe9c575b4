"""`lumbarclip.bundle`: the one owner of the model folder. What it refuses (missing, partial,
unreadable and disagreeing parts, each named with the command that writes it), how it writes
(atomically, never over a user's files unless asked), and that no other module spells a file
name of the folder."""

import json
import re
from pathlib import Path

import numpy as np
import pytest
from _model_folder import add_parts, make_model_folder

from lumbarclip.bundle import ModelFolder, ReportBank, layout
from lumbarclip.bundle import folder as folder_module
from lumbarclip.errors import InputError


@pytest.fixture()
def model_dir(tmp_path):
    return make_model_folder(tmp_path / "model")


def test_a_complete_folder_loads_every_part(model_dir):
    folder = ModelFolder.load(model_dir)
    assert folder.config.image_size == folder.preprocess.image_size == 32
    assert folder.operating_point.weights.shape == (16,) and folder.guard is not None
    assert folder.card["name"] == "tiny test model"
    assert folder.bank is None and folder.detector is None and folder.grader is None and folder.export is None
    assert folder.operating_point.findings.validated == ["bulge", "canal_narrowing", "desiccation"]
    model = folder.model()
    assert model is folder.model() and model.config == folder.config  # built once, on first use


def test_missing_parts_are_named_with_the_command_that_writes_them(model_dir):
    for name in (layout.OPERATING_POINT, layout.OPERATING_POINT_ARRAYS, layout.GUARD, layout.GUARD_ARRAYS, layout.CARD):
        (model_dir / name).unlink()
    with pytest.raises(InputError) as err:
        ModelFolder.load(model_dir)
    message = str(err.value)
    assert message.startswith(f"{model_dir}: not a complete model folder: missing ")
    for name in (layout.OPERATING_POINT, layout.OPERATING_POINT_ARRAYS, layout.GUARD, layout.GUARD_ARRAYS, layout.CARD):
        assert name in message
    assert message.count(layout.EVALUATE_COMMAND) == 1 and "\n" not in message
    assert ModelFolder.load(model_dir, require=()).operating_point is None  # the model alone still loads


def test_a_part_with_a_file_missing_is_refused_not_skipped(model_dir):
    add_parts(model_dir, bank=ReportBank(np.eye(2, 16), ["a", "b"], [0, 1]))
    (model_dir / layout.BANK_TEXTS).unlink()
    with pytest.raises(InputError, match=rf"bank incomplete, missing {re.escape(layout.BANK_TEXTS)}"):
        ModelFolder.load(model_dir)


def test_unreadable_parts_get_one_line_errors(model_dir):
    (model_dir / layout.GUARD).write_text("{not json")
    with pytest.raises(InputError, match=rf"{re.escape(str(model_dir / layout.GUARD))}: unreadable guard"):
        ModelFolder.load(model_dir)
    (model_dir / layout.GUARD).write_text(json.dumps({"thresholds": {"embedding": 1.0}}))
    with pytest.raises(InputError, match="unreadable input guard"):
        ModelFolder.load(model_dir)


def test_parts_that_disagree_are_stale(model_dir):
    spec = json.loads((model_dir / layout.PREPROCESS).read_text())
    (model_dir / layout.PREPROCESS).write_text(json.dumps({**spec, "image_size": 48}))
    with pytest.raises(InputError, match=f"image_size 48 differs from {layout.CONFIG} image_size 32"):
        ModelFolder.load(model_dir)
    (model_dir / layout.PREPROCESS).write_text(json.dumps(spec))
    ModelFolder.load(model_dir)
    # new weights after evaluation: the operating point was fitted on another model
    other = make_model_folder(model_dir.parent / "other", seed=1)
    (model_dir / layout.WEIGHTS).write_bytes((other / layout.WEIGHTS).read_bytes())
    with pytest.raises(InputError, match=rf"{layout.OPERATING_POINT} was fitted on other model weights; re-run `lumbarclip evaluate"):
        ModelFolder.load(model_dir)


def test_write_refuses_existing_files_unless_overwrite_and_removes_a_named_empty_part(model_dir):
    folder = ModelFolder.load(model_dir)
    before = (model_dir / layout.CARD).read_text()
    folder.card = {"name": "changed"}
    with pytest.raises(InputError, match=rf"{re.escape(str(model_dir / layout.CARD))}: already exists; pass --overwrite"):
        folder.write(("card",))
    assert (model_dir / layout.CARD).read_text() == before
    folder.write(("card",), overwrite=True)
    assert ModelFolder.load(model_dir).card == {"name": "changed"}
    add_parts(model_dir, bank=ReportBank(np.eye(2, 16), ["a", "b"], [0, 1]))
    folder = ModelFolder.load(model_dir)
    assert len(folder.bank) == 2
    folder.bank = None
    folder.write(("bank",), overwrite=True)  # a re-evaluation without a bank leaves no stale bank
    assert not (model_dir / layout.BANK_ARRAYS).exists() and ModelFolder.load(model_dir).bank is None
    folder.card = None
    with pytest.raises(ValueError, match="nothing to write for part"):
        folder.write(("card",), overwrite=True)


def test_write_is_atomic(model_dir, monkeypatch):
    """A failure while writing the second part leaves every file as it was, and no staging folder."""
    folder = ModelFolder.load(model_dir)
    before = {p.name: p.read_bytes() for p in model_dir.iterdir() if p.is_file()}
    folder.card = {"name": "new"}
    folder.operating_point.bias = 5.0

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(folder_module, "save_arrays", broken)
    with pytest.raises(OSError, match="disk full"):
        folder.write(("card", "guard"), overwrite=True)
    assert {p.name: p.read_bytes() for p in model_dir.iterdir() if p.is_file()} == before
    assert not [p for p in model_dir.iterdir() if p.name.startswith(".")]


def test_the_folder_layout_is_spelt_in_the_bundle_only():
    """Every file name of the folder lives in `bundle.layout`: no other source module spells one."""
    names = [v for k, v in vars(layout).items() if k.isupper() and isinstance(v, str) and "." in v and " " not in v]
    assert len(names) >= 15
    src = Path(layout.__file__).parents[1]
    offenders = [
        f"{path.relative_to(src)}: {name}"
        for path in src.rglob("*.py")
        if path.parent.name != "bundle"
        for name in names
        if re.search(rf"(?<![\w.]){re.escape(name)}\b", path.read_text())
    ]
    assert offenders == []

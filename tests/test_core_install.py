"""The core install (no extras) trains, evaluates and predicts; commands that need an extra
exit 2 with the pip line. The optional packages are blocked in a fresh interpreter, as if they
had never been installed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

import lumbarclip
from lumbarclip.extras import EXTRAS

def core_only_view(tmp_path: Path) -> Path:
    """site-packages as a core install has it: every entry but the extras' packages, linked."""
    site = Path(sysconfig.get_paths()["purelib"])
    blocked = {m for mods in EXTRAS.values() for m in mods} | {"python_multipart"}
    view = tmp_path / "core-site"
    view.mkdir()
    for entry in site.iterdir():
        top = entry.name.split("-")[0].split(".")[0].lower()
        if top not in blocked and not entry.name.endswith(".pth"):
            (view / entry.name).symlink_to(entry)
    return view


def run_core(code: str, tmp_path: Path) -> subprocess.CompletedProcess:
    """`code` in an interpreter that sees only the core install (-S: no site-packages)."""
    src = Path(lumbarclip.__file__).parents[1]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(src), str(core_only_view(tmp_path))])}
    prelude = "import torch; torch.set_num_threads(1)\nfrom lumbarclip.cli import main\n"
    return subprocess.run(
        [sys.executable, "-S", "-c", prelude + code], capture_output=True, text=True, cwd=tmp_path, env=env, timeout=900
    )


def test_commands_needing_an_extra_exit_2_with_the_pip_line(tmp_path):
    code = """
import importlib.util
assert all(importlib.util.find_spec(m) is None for m in ("fastapi", "pynetdicom", "onnxruntime", "highdicom"))
for argv in (["train", "--help"], ["serve", "--help"]):
    try:
        main(argv)
    except SystemExit as e:
        assert e.code == 0, argv
print("CODES", main(["serve", "--model", "m"]), main(["pacs", "send", "x.dcm", "--dest", "h:1:A"]),
      main(["export", "--model", "m", "--out", "o"]))
"""
    out = run_core(code, tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "CODES 2 2 2" in out.stdout
    for extra in ("serve", "pacs", "onnx"):
        assert f"pip install 'lumbarclip[{extra}]'" in out.stderr


@pytest.mark.slow
def test_core_alone_trains_evaluates_and_predicts(tmp_path):
    code = """
import json
tiny = ["model.vision=resnet18", "model.image_size=32", "model.embed_dim=16", "data.batch_size=8",
        "trainer.max_epochs=1", "trainer.precision=32-true"]
assert main(["synth", "--out", "c", "--patients", "12", "--size", "32"]) == 0
args = ["train", "--data", "c/manifest.csv", "--out", "r"]
for o in tiny:
    args += ["--set", o]
assert main(args) == 0
assert main(["evaluate", "--run", "r", "--data", "c/manifest.csv", "--no-finetune", "--no-scratch", "--no-label-efficiency", "--no-report", "--bootstrap", "50"]) == 0
assert main(["predict", "--model", "r/model", "c/images", "--out", "p.jsonl"]) == 0
"""
    out = run_core(code, tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    lines = [json.loads(l) for l in (tmp_path / "p.jsonl").read_text().splitlines()]
    assert lines and all("p_abnormal" in l for l in lines if l.get("kind", "image") == "image")

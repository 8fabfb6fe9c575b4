"""The package's import layers (`[tool.importlinter]` in pyproject.toml) hold: `lint-imports`
finds no import that points up a layer, none from run-time code or evaluation to `synth`, none
from `training` to `evaluation`, none from `data` to `inference`; and each contract does catch
the import it forbids, planted in a copy of the package."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LINT = Path(sys.executable).parent / "lint-imports"


def lint(root: Path, source: Path) -> subprocess.CompletedProcess[str]:
    """`lint-imports` on pyproject.toml at `root`, with the package found under `source`."""
    env = {**os.environ, "PYTHONPATH": str(source), "COLUMNS": "400"}
    return subprocess.run(
        [str(LINT), "--config", str(root / "pyproject.toml"), "--no-cache"],
        cwd=root, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip


def test_import_contracts_are_kept():
    done = lint(ROOT, ROOT / "src")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "0 broken" in done.stdout


@pytest.mark.parametrize(
    ("module", "imported", "contract"),
    [
        ("data/planted.py", "lumbarclip.cli", "One-way layers"),
        ("data/planted.py", "lumbarclip.inference.embed", "data does not import inference"),
        ("training/planted.py", "lumbarclip.evaluation.metrics", "training does not import evaluation"),
        ("evaluation/planted.py", "lumbarclip.synth.phantom", "evaluation does not import synth"),
        ("serve/planted.py", "lumbarclip.synth", "never loads the synthetic cohort generator"),
        # the model folder sits below everything that uses it
        ("bundle/planted.py", "lumbarclip.inference.predict", "One-way layers"),
    ],
)  # fmt: skip
def test_each_contract_catches_a_planted_import(tmp_path, module, imported, contract):
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    shutil.copytree(ROOT / "src" / "lumbarclip", tmp_path / "src" / "lumbarclip", ignore=shutil.ignore_patterns("__pycache__"))
    planted = tmp_path / "src" / "lumbarclip" / module
    planted.parent.mkdir(exist_ok=True)
    planted.write_text(f"import {imported}\n")
    done = lint(tmp_path, tmp_path / "src")
    assert done.returncode == 1, done.stdout + done.stderr
    broken = [line for line in done.stdout.splitlines() if line.rstrip().endswith("BROKEN")]
    assert any(contract in line for line in broken), done.stdout
    assert f"lumbarclip.{module.removesuffix('.py').removesuffix('/__init__').replace('/', '.')} -> {imported}" in done.stdout

"""The docs build strictly (broken links, missing pages and missing snippets fail), and the
README stays a front page: short, with both set-up commands on its first screen."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"


def test_readme_is_a_front_page():
    lines = README.read_text().splitlines()
    assert len(lines) <= 250, f"README.md has {len(lines)} lines; move detail into docs/"
    first_screen = "\n".join(lines[:40])
    assert "make demo" in first_screen
    assert "make test" in first_screen


def test_readme_demo_table_is_generated():
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "docs_tables.py"), "--check"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr


def test_mkdocs_build_strict(tmp_path):
    env = dict(os.environ, NO_MKDOCS_2_WARNING="1")
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-d", str(tmp_path / "site")],
        cwd=ROOT, capture_output=True, text=True, timeout=600, env=env,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert (tmp_path / "site" / "index.html").exists()
    demo = (tmp_path / "site" / "results" / "demo" / "index.html").read_text()
    commit = json.loads((ROOT / "docs" / "results" / "data" / "demo.json").read_text())["commit"]
    assert "linear_probe" in demo and commit in demo  # the generated table and its provenance


def test_readme_links_resolve():
    import re

    targets = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", README.read_text())
    local = [t for t in targets if not t.startswith(("http://", "https://"))]
    assert local
    missing = [t for t in local if not (ROOT / t).exists()]
    assert not missing, missing


def test_result_files_say_where_their_figures_come_from():
    import json

    data = ROOT / "docs" / "results" / "data"
    headed = [p for p in sorted(data.glob("*.json")) if p.name != "demo-metrics.json"]
    assert headed
    for path in headed:
        meta = json.loads(path.read_text())
        for key in ("command", "commit", "seed", "machine"):
            assert key in meta, f"{path.name} has no {key!r}"

"""MkDocs hook: regenerate the results tables from docs/results/data/*.json before each build
(scripts/docs_tables.py), and point pymdownx.snippets at them."""

from __future__ import annotations

import importlib.util
from pathlib import Path

_SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "docs_tables.py"


def _tables():
    spec = importlib.util.spec_from_file_location("docs_tables", _SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def on_config(config):
    out = _tables().write_snippets()
    snippets = config["mdx_configs"].setdefault("pymdownx.snippets", {})
    snippets["base_path"] = [str(out)]
    snippets["check_paths"] = True
    return config

"""Arguments that several commands share, defined once."""

from __future__ import annotations

import argparse


def add_overrides(p: argparse.ArgumentParser, applies_to: str = "") -> None:
    """`--set KEY=VALUE` (repeatable): dotted overrides of the training config."""
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help=f"override a config value{applies_to}, e.g. --set model.head=mlp --set trainer.max_epochs=5",
    )


def add_render_options(p: argparse.ArgumentParser) -> None:
    """Where and how a phantom cohort is rendered (`synth`, `twin`)."""
    from lumbarclip.synth.cohort import FORMATS, CohortConfig

    defaults = CohortConfig()
    p.add_argument("--out", required=True, help="folder to create (must be empty unless --overwrite)")
    p.add_argument("--seed", type=int, default=defaults.seed, help=f"random seed (default {defaults.seed})")
    p.add_argument("--size", type=int, default=defaults.size, help=f"image side in pixels (default {defaults.size})")
    p.add_argument(
        "--format", dest="fmt", choices=FORMATS, default=defaults.fmt, help="16-bit PNG (default) or DICOM MR files"
    )
    p.add_argument("--overwrite", action="store_true", help="replace a cohort already in --out")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")

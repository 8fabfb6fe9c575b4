"""`lumbarclip COMMAND`: a thin shell over the library. Each command lives in its own module
with `register(subparsers)`, which adds its parser and sets `func(args) -> int`."""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from collections.abc import Sequence

from lumbarclip.errors import InputError
from lumbarclip.extras import require_extra

#: Command modules under `lumbarclip.cli`, in the order `--help` lists them.
COMMANDS: tuple[str, ...] = (
    "demo",
    "synth",
    "twin",
    "data",
    "train",
    "evaluate",
    "predict",
    "ablate",
    "parse_report",
    "pacs",
    "export",
    "serve",
)

#: Commands that need an optional extra (`lumbarclip.extras`); `--help` works without it.
COMMAND_EXTRAS: dict[str, str] = {"serve": "serve", "pacs": "pacs", "export": "onnx"}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lumbarclip",
        description="Contrastive image-report pre-training and image-only diagnosis for axial "
        "lumbar spine MRI. Run `lumbarclip COMMAND --help` for each command.",
    )
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMANDS:
        importlib.import_module(f"lumbarclip.cli.{name}").register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: exit 0 on success; 2 on bad usage or input (the user's to fix: a one-line
    reason); 1 on an internal error (a bug, a diverged model: a short message and a hint for
    `--debug`, never posing as the user's mistake)."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.command in COMMAND_EXTRAS:
            require_extra(COMMAND_EXTRAS[args.command], f"lumbarclip {args.command}")
        if getattr(args, "runtime", None) == "onnx":
            require_extra("onnx", "--runtime onnx")
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (InputError, FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError) as err:
        if args.debug:
            raise
        print(f"lumbarclip {args.command}: error: {err}", file=sys.stderr)
        return 2
    except Exception as err:  # noqa: BLE001 - everything else is ours, not the user's
        if args.debug:
            raise
        reason = str(err).splitlines()[0] if str(err) else ""
        print(
            f"lumbarclip {args.command}: internal error ({type(err).__name__}: {reason}); "
            "rerun with --debug for the traceback",
            file=sys.stderr,
        )
        return 1

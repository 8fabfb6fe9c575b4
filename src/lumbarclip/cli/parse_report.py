"""`lumbarclip parse-report`: one report -> its `Findings` as JSON (with "abnormal")."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from lumbarclip.errors import InputError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "parse-report",
        help="read a radiology report and print its findings as JSON",
        description="Parse a free-text lumbar spine MRI report (negation- and typo-aware) and print "
        'its findings as one JSON object: per-level disc findings, other and incidental findings, and '
        '"abnormal" (true when any finding that makes a study abnormal is present).',
    )
    p.add_argument("text", nargs="?", help="the report text (quote it), or use --file")
    p.add_argument("--file", type=Path, help="read the report from this UTF-8 text file")
    p.set_defaults(func=run)


def read_report_file(path: Path) -> str:
    """The text of a report file; a missing, unreadable, non-UTF-8 or empty file is an InputError."""
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise InputError(f"{path}: cannot read the report file ({err.strerror or err})") from err
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise InputError(f"{path}: not UTF-8 text (bad byte at offset {err.start})") from err
    if not text.strip():
        raise InputError(f"{path}: the report file is empty")
    return text


def run(args: argparse.Namespace) -> int:
    from lumbarclip.reports import parse_report

    if (args.text is None) == (args.file is None):
        raise InputError("give the report either as TEXT or with --file, not both or neither")
    text = read_report_file(args.file) if args.file is not None else args.text
    if not text.strip():
        raise InputError("the report text is empty")
    print(json.dumps(parse_report(text).to_dict(), indent=2, sort_keys=True))
    return 0

"""Report text <-> `Findings`: the writer (synthetic notes, zero-shot prompts), the sentence
splitter (one sentence per image) and the negation-aware parser."""

from lumbarclip.reports.parser import parse_report
from lumbarclip.reports.sentences import split_sentences
from lumbarclip.reports.writer import CLASS_PROMPTS, class_prompts, write_synthetic_note

__all__ = ["CLASS_PROMPTS", "class_prompts", "parse_report", "split_sentences", "write_synthetic_note"]

"""NegEx-style scopes: which stretches of a (canonical, lower-case) sentence are negated or uncertain.

A trigger opens a scope that runs forward ("No significant thecal sac or nerve root compression",
"not causing significant nerve root compression") or backward ("... cannot be excluded") until a
termination term ("but", "however", a clause that starts a new finding) or the sentence's end.
A finding whose words start inside a negated or uncertain scope is not recorded: an uncertain
finding ("? sequestrated disc", "probably Schmorl's nodule") is a question for the clinician,
not a finding of the study.
"""

from __future__ import annotations

import re

Span = tuple[int, int]

#: "No significant change since ..." does not deny a finding.
_PSEUDO = r"no\s+(?:significant\s+)?(?:interval\s+)?changes?\b|not\s+only\b|no\s+increase\b"
PRE_NEGATION_RE = re.compile(
    rf"\b(?!{_PSEUDO})(?:no|not|without|nor|neither|free\s+of|negative\s+for|absence\s+of)\b"
)
POST_NEGATION_RE = re.compile(
    r"\b(?:not\s+(?:seen|noted|identified|demonstrated|present)|(?:is|are)\s+absent|(?:is|are|was)\s+ruled\s+out)\b"
)
PRE_UNCERTAIN_RE = re.compile(
    r"\?|\b(?:probabl[ey]|possibl[ey]|likely|suspected|suspicious\s+(?:of|for)|suggestive(?:\s+of)?"
    r"|questionable|equivocal|(?:to\s+)?rule\s+out|r/o|versus|vs)\b"
)
POST_UNCERTAIN_RE = re.compile(
    r"\b(?:can\s*not\s+be\s+(?:excluded|ruled\s+out)|not\s+excluded|(?:is|are)\s+suspected)\b|\?\s*$"
)
#: Words that open a new finding after a comma, so a negation before the comma stops there.
_CLAUSE_OPENERS = (
    r"mild|moderate|small|large|significant|diffuse|broad|wide|central|left|right|lt|rt|multilevel"
    r"|multiple|mostly|with|associated|noted|and\s+(?:mild|diffuse|central)"
)
TERMINATION_RE = re.compile(
    rf"\b(?:but|however|although|though|except|apart\s+from|aside\s+from|other\s+than|whereas|which|where|while)\b"
    rf"|[;:]|,(?=\s*(?:{_CLAUSE_OPENERS})\b)"
)


def _forward(text: str, start: int, stops: list[int]) -> Span:
    return start, next((s for s in stops if s >= start), len(text))


def _backward(end: int, stops: list[int]) -> Span:
    return max((s for s in stops if s < end), default=0), end


def scopes(text: str) -> tuple[list[Span], list[Span]]:
    """(negated spans, uncertain spans) of one canonical sentence."""
    stops = [m.start() for m in TERMINATION_RE.finditer(text)]
    negated = [_forward(text, m.end(), stops) for m in PRE_NEGATION_RE.finditer(text)]
    negated += [_backward(m.start(), stops) for m in POST_NEGATION_RE.finditer(text)]
    uncertain = [_forward(text, m.end(), stops) for m in PRE_UNCERTAIN_RE.finditer(text)]
    uncertain += [_backward(m.start(), stops) for m in POST_UNCERTAIN_RE.finditer(text)]
    return negated, uncertain


def inside(position: int, spans: list[Span]) -> bool:
    return any(lo <= position < hi for lo, hi in spans)

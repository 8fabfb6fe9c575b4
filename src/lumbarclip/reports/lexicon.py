"""Typo repair: map each word of a note onto the radiology term list the parser's rules use.

Real notes are typed fast ("protruion", "hyperatrophy", "compresing", "dissicating",
"spondylolithesis", "ligamnetum", "thecalsac"). Rather than list misspellings, every word that
is not a known term is matched against the term list by similarity (difflib), and glued words
are split where both halves are known. The rules then only ever see correctly spelled terms.
"""

from __future__ import annotations

import difflib
import re
from functools import lru_cache

#: The terms the rules are written in (correct spellings, with the inflections the notes use).
TERMS: frozenset[str] = frozenset(
    """
    thecal theca sac dural nerve nerves root roots exit exiting traversing neural canal canals
    foramen foramina foraminal spinal cord lateral recess disc discs discal material materials
    vertebral vertebra vertebrae body bodies facet facets joint joints ligamentum ligament flavum
    flava endplate endplates lumbar lumbosacral sacral space spaces
    bulge bulges bulging protrusion protrusions protruding herniation herniations herniated
    extrusion extrusions extruded sequestrated sequestration sequestered migration migrating
    migrated diffuse diffusely central paracentral posterocentral posterolateral paramedian
    broad based wide base circumferential focal posterior
    mild mildly moderate moderately severe severely significant significantly large largely
    small slight slightly minimal marked markedly relatively
    compressing compression compressed compresses indenting indentation indent intending abutting
    abuts encroaching encroachment encroaches narrowing narrowed narrow displacing impinging
    effacing obliterating touching causing
    hypertrophy hypertrophied hypertrophic desiccated desiccating desiccation desiccative
    dehydrated dehydration annular annulus tear tears fissure fissures
    spondylolisthesis listhesis anterolisthesis retrolisthesis fracture fractures fractured
    wedging collapse height scoliosis scoliotic schmorl schmorls nodes nodules nodule
    edema oedema marrow bruise modic muscle spasm straightening lordosis hemangioma hemangiomas
    renal kidney pelvic cyst cysts stenosis surgery operation operations operated postoperative
    previous fixation transpedicular transpedicle granulation fibrosis laminectomy screws
    evidence noted seen adequate level levels multilevel multiple left right both bilateral
    probably possibly likely suspected suggestive questionable excluded feature features
    grade lower elsewhere other degenerative degeneration changes signal
    """.split()
)
#: Short everyday words: never corrected, but usable as halves of glued words ("notedat").
COMMON: frozenset[str] = frozenset(
    "a an and at as by for from in into of on or the to with no not without more less is are was "
    "were be seen appeared appears also all its it this that there type within largest fibroid".split()
)
_SYNONYMS = {"disk": "disc", "disks": "discs", "haemangioma": "hemangioma", "oedema": "edema"}
_KNOWN = TERMS | COMMON
_WORD_RE = re.compile(r"[a-z]+")
#: A word glued to a level: "atL4/L5" -> "at L4/L5".
_GLUED_LEVEL_RE = re.compile(r"([a-z]{2,}?)(?=(?:l[1-5]|s1|[dt]1[0-2])(?:[-/_]|\b))")


def _close_term(word: str) -> str | None:
    """The one term this word is a typo of, if any: two letters swapped ("nerev"), or a similar
    spelling with the same first letter ("protruion", "hyperatrophy")."""
    for i in range(len(word) - 1):
        swapped = word[:i] + word[i + 1] + word[i] + word[i + 2 :]
        if swapped in TERMS:
            return swapped
    cutoff = 0.85 if len(word) <= 5 else 0.8
    candidates = [t for t in TERMS if t[0] == word[0] and abs(len(t) - len(word)) <= 2 and len(t) >= 4]
    best = difflib.get_close_matches(word, candidates, n=1, cutoff=cutoff)
    return best[0] if best else None


@lru_cache(maxsize=20000)
def canonical_word(word: str) -> str:
    """A lower-case word as the rules expect it: known, corrected, split, or unchanged."""
    if word in _KNOWN or len(word) < 4:
        return word
    if word in _SYNONYMS:
        return _SYNONYMS[word]
    term = _close_term(word)
    if term:
        return term
    for cut in range(2, len(word) - 1):
        left, right = word[:cut], word[cut:]
        if left in _KNOWN and right in _KNOWN and len(left) + len(right) >= 6:
            return f"{canonical_word(left)} {canonical_word(right)}"
    return word


def canonical_text(text: str) -> str:
    """Lower-case text with every word canonicalised; punctuation and digits kept as they are."""
    text = _GLUED_LEVEL_RE.sub(r"\1 ", text.lower())
    return _WORD_RE.sub(lambda m: canonical_word(m.group(0)), text)

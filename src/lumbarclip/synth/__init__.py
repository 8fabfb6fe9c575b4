"""Synthetic axial lumbar MRI: a phantom renderer driven by `Findings`, synthetic cohorts and
twins of real notes."""

from lumbarclip.synth.cohort import (
    CohortConfig,
    make_cohort,
    make_twin,
    sample_findings,
    twin_findings,
    write_cohort,
)
from lumbarclip.synth.phantom import Anatomy, Nuisance, render_slice

__all__ = [
    "Anatomy",
    "CohortConfig",
    "Nuisance",
    "make_cohort",
    "make_twin",
    "render_slice",
    "sample_findings",
    "twin_findings",
    "write_cohort",
]

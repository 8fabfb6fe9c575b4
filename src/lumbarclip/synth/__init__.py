"""Synthetic axial lumbar MRI: a phantom renderer driven by `Findings` and a cohort generator."""

from lumbarclip.synth.cohort import CohortConfig, make_cohort, sample_findings, write_cohort
from lumbarclip.synth.phantom import Anatomy, Nuisance, render_slice

__all__ = ["Anatomy", "CohortConfig", "Nuisance", "make_cohort", "render_slice", "sample_findings", "write_cohort"]

"""The model folder: its layout (`layout`), its typed parts and `ModelFolder`, which reads and
writes them together. Train, evaluate, export, predict, serve and pacs all go through here.
Names are imported on first use (PEP 562), so `lumbarclip.bundle.layout` stays light."""

from lumbarclip._lazy import lazy_exports

_EXPORTS = {
    "ModelFolder": "folder",
    "ExportRecord": "folder",
    "load_model": "folder",
    "save_model": "folder",
    "DiscGrader": "grader",
    "FindingGate": "operating_point",
    "OperatingPoint": "operating_point",
    "ReportBank": "reportbank",
}
__all__ = sorted(_EXPORTS)

__getattr__ = lazy_exports(__name__, _EXPORTS)

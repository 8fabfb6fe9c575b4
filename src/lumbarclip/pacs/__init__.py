"""Hospital integration: a DICOM node (Storage SCP) and a DICOMweb client that diagnose MR
studies and write the result back as a DICOM Structured Report. Names import on first use."""

from lumbarclip._lazy import lazy_exports

_EXPORTS = {
    "PacsNode": "node",
    "NodeConfig": "node",
    "Destination": "node",
    "StudyAssembler": "store",
    "send_datasets": "node",
    "StudyAnalyser": "analyse",
    "build_report": "sr",
    "read_report": "sr",
    "build_overlays": "sr",
    "pull_study": "dicomweb",
    "make_client": "dicomweb",
}
__all__ = sorted(_EXPORTS)

__getattr__ = lazy_exports(__name__, _EXPORTS)

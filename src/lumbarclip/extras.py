"""Optional parts of the install. The core (`pip install lumbarclip`) trains, evaluates and
predicts; serving, the DICOM node and ONNX come with extras, named here so that a command whose
extra is missing says which pip line to run instead of failing on an import deep inside."""

from __future__ import annotations

import importlib

from lumbarclip.errors import InputError

#: extra -> the modules it provides (import names).
EXTRAS: dict[str, tuple[str, ...]] = {
    "serve": ("fastapi", "uvicorn", "multipart"),
    "pacs": ("pynetdicom", "highdicom", "dicomweb_client"),
    "onnx": ("onnx", "onnxscript", "onnxruntime"),
}


def missing_modules(extra: str) -> list[str]:
    """The modules of `extra` that cannot be imported here."""
    missing = []
    for module in EXTRAS[extra]:
        try:
            importlib.import_module(module)
        except ImportError:
            missing.append(module)
    return missing


def require_extra(extra: str, what: str) -> None:
    """InputError (exit 2 on the command line) naming the pip line, when `extra` is missing."""
    missing = missing_modules(extra)
    if missing:
        raise InputError(
            f"{what} needs the '{extra}' extra (missing: {', '.join(missing)}); "
            f"install it with: pip install 'lumbarclip[{extra}]'"
        )

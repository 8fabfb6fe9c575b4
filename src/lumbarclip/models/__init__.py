"""Models: timm vision towers, Hugging Face text towers, projection heads, `LumbarCLIP`.

Names are imported on first use (PEP 562), so `lumbarclip.models.config` stays light for the CLI.
"""

from importlib import import_module
from typing import Any

_EXPORTS = {
    "LumbarCLIP": "clip",
    "create_model": "clip",
    "ModelConfig": "config",
    "create_head": "heads",
    "load_text_tower": "text",
    "resolve_text_tower": "text",
    "create_vision_tower": "vision",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(import_module(f"{__name__}.{_EXPORTS[name]}"), name)

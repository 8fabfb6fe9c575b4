"""Models: timm vision towers, Hugging Face text towers, projection heads, `LumbarCLIP`.

Names are imported on first use (PEP 562), so `lumbarclip.models.config` stays light for the CLI.
"""

from lumbarclip._lazy import lazy_exports

_EXPORTS = {
    "LumbarCLIP": "clip",
    "create_model": "clip",
    "ModelConfig": "config",
    "create_head": "heads",
    "load_text_tower": "text",
    "resolve_text_tower": "text",
    "create_vision_tower": "vision",
    "vision_tower_for": "vision",
}
__all__ = sorted(_EXPORTS)

__getattr__ = lazy_exports(__name__, _EXPORTS)

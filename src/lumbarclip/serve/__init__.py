"""The diagnosis web service: FastAPI app (`create_app`) and its one static page."""

from lumbarclip._lazy import lazy_exports

_EXPORTS = {"create_app": "app"}
__all__ = sorted(_EXPORTS)

__getattr__ = lazy_exports(__name__, _EXPORTS)

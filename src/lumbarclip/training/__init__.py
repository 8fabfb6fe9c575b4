"""Training: config dataclasses and presets, the LightningModule, and `train()` (imported on use)."""

from importlib import import_module
from typing import Any

_EXPORTS = {
    "TrainConfig": "config",
    "load_config": "config",
    "preset_names": "config",
    "save_config": "config",
    "train": "trainer",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(import_module(f"{__name__}.{_EXPORTS[name]}"), name)

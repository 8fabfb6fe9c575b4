"""Training: config dataclasses and presets, the LightningModule, and `train()` (imported on use)."""

from lumbarclip._lazy import lazy_exports

_EXPORTS = {
    "TrainConfig": "config",
    "load_config": "config",
    "preset_names": "config",
    "save_config": "config",
    "train": "trainer",
}
__all__ = sorted(_EXPORTS)

__getattr__ = lazy_exports(__name__, _EXPORTS)

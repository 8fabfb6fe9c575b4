"""Training: config dataclasses and presets, the LightningModule, and `train()`."""

from lumbarclip.training.config import TrainConfig, load_config, preset_names, save_config
from lumbarclip.training.train import train

__all__ = ["TrainConfig", "load_config", "preset_names", "save_config", "train"]

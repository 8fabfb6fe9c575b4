"""Models: timm vision towers, Hugging Face text towers, projection heads, `LumbarCLIP`."""

from lumbarclip.models.clip import LumbarCLIP, create_model
from lumbarclip.models.config import ModelConfig
from lumbarclip.models.heads import create_head
from lumbarclip.models.text import load_text_tower, resolve_text_tower
from lumbarclip.models.vision import create_vision_tower

__all__ = [
    "LumbarCLIP",
    "ModelConfig",
    "create_head",
    "create_model",
    "create_vision_tower",
    "load_text_tower",
    "resolve_text_tower",
]

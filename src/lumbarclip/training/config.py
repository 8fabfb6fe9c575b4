"""`TrainConfig`: dataclasses for a training run, loaded from a YAML preset or file plus
`key=value` overrides (dotted keys, YAML values), with unknown keys refused."""

from __future__ import annotations

import dataclasses
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from lumbarclip.data.config import LABEL_SOURCES, DataConfig
from lumbarclip.errors import InputError
from lumbarclip.models.config import ModelConfig


@dataclass
class LossConfig:
    kind: str = "soft"  # soft | hard
    form: str = "softmax"  # softmax (the paper) | normalized
    labels: str = "binary"  # binary | findings (per level x kind, side, severity) | kinds (union over levels)
    # | level (the findings vector of the image's own level only; pair with data.sentences=level)
    # | sentence (per-sentence statements, negations included, against the image's level; needs
    # kernel=agreement, pair with data.sentences=relevant)
    kernel: str = "dot"  # label similarity: dot (the paper) | cosine | jaccard | agreement
    identity_weight: float = 0.0  # weight of the InfoNCE (own pair) target mixed into the soft one
    finding_weight: float = 1.0  # weight of the finding head's BCE (model.finding_head; labels=sentence)
    gather_with_grad: bool = True

    def __post_init__(self) -> None:
        if self.labels not in LABEL_SOURCES:
            raise ValueError(f"loss.labels must be one of {LABEL_SOURCES}, got {self.labels!r}")
        if (self.labels == "sentence") != (self.kernel == "agreement"):
            raise ValueError("loss.labels=sentence and loss.kernel=agreement go together (ternary sentence vectors)")


@dataclass
class OptimConfig:
    lr: float = 2e-5
    text_lr: float | None = None  # defaults to lr
    weight_decay: float = 1e-4
    warmup_fraction: float = 0.1
    grad_clip: float = 1.0
    implementation: str = "fused"  # AdamW: fused (one kernel over all tensors) | foreach | for-loop

    def __post_init__(self) -> None:
        if self.implementation not in ("fused", "foreach", "for-loop"):
            raise ValueError(f"optim.implementation must be fused, foreach or for-loop, got {self.implementation!r}")


@dataclass
class TrainerConfig:
    max_epochs: int = 20
    precision: str = "32-true"  # any Lightning precision: 32-true, bf16-mixed, 16-mixed
    accelerator: str = "auto"
    devices: Any = "auto"
    strategy: str = "auto"  # ddp for several GPUs
    accumulate_grad_batches: int = 1
    monitor: str = "val/zero_shot_balanced_accuracy"  # "" keeps the last epoch (no selection on valid)
    monitor_mode: str = ""  # min | max | "" (from the metric: loss min, accuracy max)
    log_every_n_steps: int = 10
    channels_last: bool = False  # NHWC vision tower (pays for CNNs at 224 px, not at 64 px)
    checkpoint_every_n_steps: int = 500  # plus one at each epoch end; 0: epoch ends only
    num_nodes: int = 1
    sync_batchnorm: bool = False  # batch statistics over all processes (BatchNorm towers under DDP)


@dataclass
class TrainConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    seed: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def preset_names() -> list[str]:
    return sorted(p.name[:-5] for p in resources.files("lumbarclip.presets").iterdir() if p.name.endswith(".yaml"))


def _read_yaml(name_or_path: str) -> dict[str, Any]:
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml"):
        if not path.is_file():
            raise InputError(f"{path}: config file not found")
        text = path.read_text()
    elif name_or_path in preset_names():
        text = resources.files("lumbarclip.presets").joinpath(f"{name_or_path}.yaml").read_text()
    else:
        raise InputError(f"unknown preset {name_or_path!r}; choose from {', '.join(preset_names())} or give a .yaml file")
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as err:
        raise InputError(f"{name_or_path}: invalid YAML ({err})") from None
    if not isinstance(data, dict):
        raise InputError(f"{name_or_path}: a config must be a mapping")
    return data


def _apply_override(data: dict[str, Any], override: str) -> None:
    if "=" not in override:
        raise InputError(f"override {override!r} must look like key=value")
    key, raw = override.split("=", 1)
    *parents, leaf = key.strip().split(".")
    node = data
    for part in parents:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise InputError(f"override {override!r}: {part} is not a section")
    node[leaf] = yaml.safe_load(raw) if raw.strip() else ""


SECTIONS: dict[str, type] = {
    "model": ModelConfig,
    "data": DataConfig,
    "loss": LossConfig,
    "optim": OptimConfig,
    "trainer": TrainerConfig,
}


def _coerce(cls: type, name: str, value: Any) -> Any:
    """YAML reads `1e-3` as a string: cast strings and ints to the field's declared number type."""
    declared = str(next(f.type for f in dataclasses.fields(cls) if f.name == name))
    if isinstance(value, str) and declared in ("int", "float", "float | None"):
        return (int if declared == "int" else float)(value)
    if isinstance(value, int) and not isinstance(value, bool) and declared.startswith("float"):
        return float(value)
    return value


def _build_section(cls: type, data: Any, where: str) -> Any:
    if not isinstance(data, dict):
        raise InputError(f"config key {where} must be a section")
    unknown = set(data) - {f.name for f in dataclasses.fields(cls)}
    if unknown:
        raise InputError(f"unknown config key(s) {', '.join(sorted(f'{where}.{k}' for k in unknown))}")
    try:
        return cls(**{k: _coerce(cls, k, v) for k, v in data.items()})
    except (TypeError, ValueError) as err:
        raise InputError(f"invalid config section {where}: {err}") from None


def load_config(preset_or_yaml: str = "cpu-demo", overrides: list[str] | None = None) -> TrainConfig:
    """A preset name (see `preset_names()`) or a YAML file, then `key=value` overrides."""
    data = _read_yaml(preset_or_yaml)
    for override in overrides or []:
        _apply_override(data, override)
    unknown = set(data) - set(SECTIONS) - {"seed"}
    if unknown:
        raise InputError(f"unknown config key(s) {', '.join(sorted(unknown))}")
    sections = {k: _build_section(cls, data.get(k, {}), k) for k, cls in SECTIONS.items()}
    return TrainConfig(**sections, seed=int(data.get("seed", 0)))


def save_config(config: TrainConfig, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))

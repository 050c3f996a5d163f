"""Bundle manifest writer (the reader and verifier is ``cds_daemon.analysis.bundle``).

manifest.json (format ``thyroideffi-bundle/1``):
  format, name, version, created (UTC ISO-8601)
  classes [benign, indeterminate, malignant], display_names (same order)
  preprocessing {input_size, grid [rows, cols], views, mean, std, resize "bilinear", normalisation,
                 mpp (micrometres per pixel of the training fields: whole slides are read at it)}
  files {backbone, aggregator, cam_weights, ood_stats} -> file names
  io {backbone {input, outputs [logits, pooled, feature_map], feature_map [h, w]},
      aggregator {input, output, tokens [1, views, D]}, feature_dim}
  temperatures {basic, premium, ensemble}, ensemble {rule}
  conformal {alpha, quantiles [K], score "1 - p_y", rule}
  finalisation {alpha, delta, threshold (null: nothing finalised), n_calibration, n_candidates, n_finalised,
                errors, upper_bound, method, score, candidates, guarantee, calibration {confidence, error, candidate}}
  thresholds {confidence (= finalisation threshold, 1.0 when null), mahalanobis, energy}
  ood {mahalanobis {features, shrinkage, percentile}, energy {definition, percentile}}
  cam {definition, grad_cam, normalisation}
  metrics {split "test", n, macro_f1, accuracy, macro_auc, ece_before, ece_after, indeterminate_recall,
           referral_rate, conformal_coverage, basic_macro_f1, premium_macro_f1}
  training {config..., history summary}, dataset {source, labels_sha256, n_images, n_groups, counts}
  git_commit (or null), training_time_s, export {exporter, opset, parity}, sha256 {file name -> hex}
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Any

from cds_daemon.analysis.tiles import GRID, IMAGENET_MEAN, IMAGENET_STD, INPUT_SIZE, RESIZE
from cds_daemon.common.manifest import (
    AGGREGATOR_IO,
    BACKBONE_IO,
    CLASSES,
    DISPLAY_NAMES,
    FORMAT,
    MANIFEST_NAME,
    sha256_file,
)
from dicom_fixtures.modules import FIELD_MPP
from model_build.decision import Calibration

FILES = {
    "backbone": "backbone.onnx",
    "aggregator": "aggregator.onnx",
    "cam_weights": "cam_weights.npz",
    "ood_stats": "ood_stats.npz",
}


def build_manifest(
    *,
    name: str,
    version: str,
    created: datetime,
    calibration: Calibration,
    metrics: dict[str, Any],
    reference: dict[str, Any] | None = None,
    training: dict[str, Any],
    dataset: dict[str, Any],
    git_commit: str | None,
    training_time_s: float,
    export: dict[str, Any],
    feature_dim: int,
    feature_map: tuple[int, int],
) -> dict[str, Any]:
    """Every manifest field except ``sha256`` (added by ``write_manifest`` from the files on disk)."""
    n_views = 1 + GRID[0] * GRID[1]
    return {
        "format": FORMAT,
        "name": name,
        "version": version,
        "created": created.isoformat(timespec="seconds"),
        "classes": list(CLASSES),
        "display_names": list(DISPLAY_NAMES),
        "preprocessing": {
            "input_size": INPUT_SIZE,
            "grid": list(GRID),
            "views": n_views,
            "view_order": "whole field, then grid tiles row-major (tile = width/cols x height/rows)",
            "mean": list(IMAGENET_MEAN),
            "std": list(IMAGENET_STD),
            "resize": RESIZE,
            "normalisation": "(pixel / 255 - mean) / std per RGB channel",
            "mpp": FIELD_MPP,
        },
        "files": dict(FILES),
        "io": {
            "backbone": {
                **BACKBONE_IO,
                "input_shape": ["N", 3, INPUT_SIZE, INPUT_SIZE],
                "feature_map": list(feature_map),
            },
            "aggregator": {**AGGREGATOR_IO, "input_shape": [1, n_views, feature_dim]},
            "feature_dim": feature_dim,
        },
        "temperatures": {
            "basic": calibration.temperature_basic,
            "premium": calibration.temperature_premium,
            "ensemble": calibration.temperature_ensemble,
        },
        "ensemble": {"rule": "softmax(((basic / T_basic + premium / T_premium) / 2) / T_ensemble)"},
        "conformal": {
            "alpha": calibration.alpha,
            "quantiles": list(calibration.quantiles),
            "score": "1 - p_y",
            "rule": "class k is in the set iff 1 - p_k <= quantiles[k] (class-conditional split conformal)",
        },
        "finalisation": {
            **calibration.finalisation,
            "score": "calibrated ensemble confidence (max probability)",
            "candidates": "fields no other referral reason applies to (not Indeterminate/Suspicious, one-class "
            "conformal set, Basic and Premium agree, in distribution, good image quality)",
            "guarantee": "P(error rate among finalised fields > alpha) <= delta, over calibration draws",
            "calibration": calibration.finalisation_data,
        },
        "thresholds": {
            "confidence": calibration.confidence_threshold,
            "mahalanobis": calibration.mahalanobis_threshold,
            "energy": calibration.energy_threshold,
            "stain": calibration.stain_threshold,
        },
        "ood": {
            "mahalanobis": {
                "features": "view-0 pooled backbone features",
                "statistic": "min over classes of (x - mu_c)^T P (x - mu_c); mu_c, P in ood_stats.npz",
                "covariance": "shared within-class, Ledoit-Wolf shrinkage toward scaled identity",
                "shrinkage": calibration.mahalanobis_shrinkage,
                "percentile": calibration.ood_percentile,
            },
            "energy": {
                "definition": "-logsumexp(raw Basic logits)",
                "percentile": calibration.ood_percentile,
            },
            "stain": {
                "features": "optical-density statistics of the whole image (cds_daemon.analysis.stain.FEATURES)",
                "statistic": "(x - stain_mean)^T stain_precision (x - stain_mean), arrays in ood_stats.npz",
                "fitted_on": "held-out in-distribution fields (the selection split), never the training images",
                "percentile": calibration.ood_percentile,
            },
        },
        "cam": {
            "definition": "CAM_c = sum_k W[c,k] * feature_map[k] (cam_weights.npz W, b); mean(CAM_c) + b_c = logit_c",
            "grad_cam": "Grad-CAM weights are W[c] / (h*w) under global average pooling, "
            "so Grad-CAM without ReLU = CAM / 49",
            "normalisation": "tile CAMs stitched into a (rows*h, cols*w) grid, one global min-max to [0, 1]; "
            "whole-image CAM min-max on its own",
        },
        "metrics": metrics,
        "reference": reference,
        "training": training,
        "dataset": dataset,
        "git_commit": git_commit,
        "training_time_s": training_time_s,
        "export": export,
    }


def write_manifest(bundle_dir: Path, manifest: dict[str, Any]) -> dict[str, Any]:
    """Add the SHA-256 of every file in ``bundle_dir`` and write manifest.json; returns the manifest."""
    bundle_dir = Path(bundle_dir)
    files = sorted(p for p in bundle_dir.iterdir() if p.name != MANIFEST_NAME)
    if any(not p.is_file() for p in files):
        raise ValueError(f"{bundle_dir}: a bundle holds plain files only")
    missing = set(manifest["files"].values()) - {p.name for p in files}
    if missing:
        raise FileNotFoundError(f"{bundle_dir}: missing {sorted(missing)}")
    full = {**manifest, "sha256": {p.name: sha256_file(p) for p in files}}
    text = json.dumps(full, indent=2, allow_nan=False) + "\n"
    (bundle_dir / MANIFEST_NAME).write_text(text, encoding="utf-8")
    return full

"""ThyroidEffi inference on ONNX Runtime: one backbone pass over the 13 views serves Basic and Premium.

``Engine(bundle_dir, threads)`` verifies and loads a bundle once and checks, on a fixed synthetic field,
that the class activation maps reproduce the logits (mean(CAM_c) + b_c == logit_c within 1e-3, relative
for |logit| > 1); it refuses to start otherwise. ``Engine.predict(rgb)`` returns a frozen ``Prediction``.

The probabilities, conformal sets and OOD scores are defined in :mod:`cds_daemon.analysis.numeric`
(shared with model_build). The engine computes numbers only: the referral rule is
:mod:`cds_daemon.analysis.triage`, and what may be finalised is :mod:`cds_daemon.analysis.policy`.
- CAM_c = sum_k W[c, k] * A_k over the 1280 x 7 x 7 post-activation map A, in logit units. Because the
  classifier global-average-pools A, Grad-CAM's weights are W[c, k] / 49, so Grad-CAM without its ReLU is
  exactly CAM_c / 49; after min-max scaling the two are identical. The stitched map places the 12 tile
  CAMs in the 3 x 4 grid (21 x 28) and scales them together (one global min-max) to [0, 1]; the
  whole-image 7 x 7 CAM is min-max scaled on its own.

Memory: the backbone runs over the views in chunks of ``chunk`` (4) instead of all 13 at once. ONNX
Runtime's CPU arena keeps its peak allocation for the life of the session, and that peak scales with
the batch: measured on the demo bundle, 605 MiB RSS at 13 views per run against 364 MiB at 4, at the
same speed (192 vs 180 ms per field). Chunking changes no number (tests/unit/analysis/test_engine.py).

Thread safety: ``predict`` keeps no mutable state and ONNX Runtime's ``InferenceSession.run`` is
thread-safe, so one Engine may serve several threads (each call then shares the intra-op threads).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

from cds_daemon.analysis.bundle import Bundle, load_bundle
from cds_daemon.analysis.numeric import (
    MahalanobisTerms,
    energy_score,
    ensemble_logits,
    prediction_sets,
    softmax,
)
from cds_daemon.analysis.policy import BundleRules
from cds_daemon.analysis.risk import FinalisationRule, finalisation_confidence
from cds_daemon.analysis.stain import stain_distance, stain_features
from cds_daemon.analysis.tiles import make_views
from cds_daemon.common.manifest import BundleError, bundle_identity

# mean(CAM_c) + b_c must equal logit_c within this, times |logit_c| when that exceeds 1 (float32 rounding
# in the graph is relative to the magnitude of what it sums).
SELF_CHECK_TOLERANCE = 1e-3


def class_activation_maps(feature_maps: np.ndarray, weight_row: np.ndarray) -> np.ndarray:
    """(V, D, h, w) maps and one classifier row (D,) -> (V, h, w) CAMs in logit units."""
    return np.asarray(np.einsum("vdhw,d->vhw", feature_maps, np.asarray(weight_row, dtype=feature_maps.dtype)))


def stitch_tiles(tile_maps: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
    """(rows*cols, h, w) row-major tile maps -> (rows*h, cols*w) mosaic."""
    rows, cols = grid
    n, h, w = tile_maps.shape
    if n != rows * cols:
        raise ValueError(f"{n} tile maps for a {rows}x{cols} grid")
    return tile_maps.reshape(rows, cols, h, w).transpose(0, 2, 1, 3).reshape(rows * h, cols * w)


def unit_scale(x: np.ndarray) -> np.ndarray:
    """Min-max scale to [0, 1] as float32; a constant map becomes all zeros."""
    x = np.asarray(x, dtype=np.float64)
    lo, hi = float(x.min()), float(x.max())
    if hi - lo <= 1e-12:
        return np.zeros(x.shape, dtype=np.float32)
    return ((x - lo) / (hi - lo)).astype(np.float32)


def synthetic_field(height: int = 768, width: int = 1024, seed: int = 20240601) -> np.ndarray:
    """A fixed smooth colour field for the load-time self-check (deterministic, not a real image)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    base = np.stack([np.sin(xx / 37.0 + c) * np.cos(yy / 53.0 - c) for c in range(3)], axis=-1)
    noise = rng.normal(0.0, 0.15, size=(height // 16, width // 16, 3)).astype(np.float32)
    noise = np.repeat(np.repeat(noise, 16, axis=0), 16, axis=1)
    return np.asarray(np.clip(127.5 + 90.0 * (base + noise), 0, 255), dtype=np.uint8)


BACKBONE_CHUNK = 4  # views per backbone run: bounds ORT's arena (see the module docstring)


@dataclass(frozen=True, eq=False)
class Prediction:
    """One field's result. Probabilities are calibrated and keyed by class name (bundle order)."""

    label: str  # ensemble predicted class
    display_name: str
    confidence: float  # max ensemble probability
    probs: dict[str, float]
    basic_label: str
    basic_probs: dict[str, float]
    premium_label: str
    premium_probs: dict[str, float]
    members_agree: bool
    conformal_set: tuple[str, ...]
    mahalanobis: float
    mahalanobis_ood: bool
    energy: float
    energy_ood: bool
    cam_class: str  # class the maps explain (= label)
    cam: np.ndarray  # (rows*7, cols*7) = (21, 28) float32 in [0, 1], tile CAMs with one global scale
    cam_whole: np.ndarray  # (7, 7) float32 in [0, 1], whole-image CAM
    model_name: str
    model_version: str
    timings_ms: dict[str, float]  # views, backbone, aggregator, post, total
    stain: float = 0.0  # stain-gate Mahalanobis distance (0 for a bundle without the gate)
    stain_ood: bool = False
    finalisation_confidence: float = 0.0  # min(ensemble, Basic) calibrated confidence: what the threshold applies to
    embedding: np.ndarray | None = None  # (D,) float32 pooled backbone features of the whole image: similar cases


def open_session(path: Path, threads: int, model: bytes | None = None) -> ort.InferenceSession:
    """An ORT CPU session as the daemon runs it: ORT_ENABLE_ALL, ``threads`` intra-op, 1 inter-op.

    ``model`` (the graph bytes) is loaded instead of reading ``path``, which then only names it in errors.
    """
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    # Idle pool threads would otherwise spin for work and take CPU from the worker's helper process.
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    try:
        source = model if model is not None else str(path)
        return ort.InferenceSession(source, sess_options=opts, providers=["CPUExecutionProvider"])
    except Exception as e:  # ORT raises its own exception types for unreadable graphs
        raise BundleError(f"{path}: ONNX Runtime cannot load the graph ({e})") from e


def _check_io(session: ort.InferenceSession, path: Path, inputs: list[str], outputs: list[str]) -> None:
    have_in = [i.name for i in session.get_inputs()]
    have_out = [o.name for o in session.get_outputs()]
    if have_in != inputs or not set(outputs) <= set(have_out):
        raise BundleError(
            f"{path}: graph inputs {have_in} / outputs {have_out} do not match the manifest ({inputs} -> {outputs})"
        )


class Engine:
    """Loads a verified bundle into two ONNX Runtime sessions and runs the ensemble on RGB fields."""

    def __init__(self, bundle_dir: Path | str, threads: int, chunk: int = BACKBONE_CHUNK) -> None:
        if threads < 1:
            raise ValueError(f"threads must be >= 1, got {threads}")
        if chunk < 1:
            raise ValueError(f"chunk must be >= 1, got {chunk}")
        self.chunk = chunk
        self.bundle: Bundle = load_bundle(Path(bundle_dir))
        m = self.bundle.manifest
        self.manifest = m
        self.classes = m.classes
        self._backbone = open_session(self.bundle.paths["backbone"], threads, self.bundle.backbone_onnx)
        self._aggregator = open_session(self.bundle.paths["aggregator"], threads, self.bundle.aggregator_onnx)
        _check_io(self._backbone, self.bundle.paths["backbone"], [m.backbone_input], list(m.backbone_outputs))
        _check_io(self._aggregator, self.bundle.paths["aggregator"], [m.aggregator_input], [m.aggregator_output])
        self.identity = bundle_identity(self.bundle.directory)  # what results and the review page name it by
        self.rules = BundleRules(m, self.identity)
        self._weight = self.bundle.cam_weight.astype(np.float32)
        self._maha = MahalanobisTerms.of(self.bundle.class_means, self.bundle.precision)
        self._quantiles = np.asarray(m.quantiles, dtype=np.float64)
        self.self_check()

    def finalisation(self, alpha: float | None = None, delta: float | None = None) -> FinalisationRule | None:
        """The bundle's finalisation rule (:class:`cds_daemon.analysis.policy.BundleRules`)."""
        return self.rules.finalisation(alpha, delta)

    def finalisation_threshold(self, alpha: float | None = None, delta: float | None = None) -> float:
        """The bundle rule's threshold (inf: it finalises nothing)."""
        return self.rules.finalisation_threshold(alpha, delta)

    def _stain(self, rgb: np.ndarray) -> tuple[float, bool]:
        """The stain gate: distance of the image's optical-density statistics, and whether it is out."""
        b, threshold = self.bundle, self.manifest.stain_threshold
        if b.stain_mean is None or b.stain_precision is None or threshold is None:
            return 0.0, False
        distance = float(stain_distance(stain_features(rgb), b.stain_mean, b.stain_precision))
        return distance, distance > threshold

    def run_backbone(self, views: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(V, 3, S, S) float32 views -> logits (V, K), pooled (V, D), feature_map (V, D, h, w)."""
        m = self.manifest
        names = list(m.backbone_outputs)
        parts = [
            self._backbone.run(names, {m.backbone_input: views[i : i + self.chunk]})
            for i in range(0, len(views), self.chunk)
        ]
        if len(parts) == 1:
            logits, pooled, fmap = parts[0]
        else:
            logits, pooled, fmap = (np.concatenate([part[j] for part in parts]) for j in range(3))
        return logits, pooled, fmap

    def run_aggregator(self, pooled: np.ndarray) -> np.ndarray:
        """(V, D) pooled view features of one field -> Premium logits (K,)."""
        m = self.manifest
        (logits,) = self._aggregator.run([m.aggregator_output], {m.aggregator_input: pooled[None]})
        return np.asarray(logits[0])

    def self_check(self) -> None:
        """Fixed synthetic field: output shapes, and mean(CAM_c) + b_c == logit_c for every view and class."""
        m = self.manifest
        views = make_views(synthetic_field(), input_size=m.input_size, grid=m.grid, mean=m.mean, std=m.std)
        path = self.bundle.paths["backbone"]
        logits, pooled, fmap = self.run_backbone(views)
        k, d, v = len(self.classes), m.feature_dim, m.n_views
        if logits.shape != (v, k) or pooled.shape != (v, d) or fmap.ndim != 4 or fmap.shape[:2] != (v, d):
            raise BundleError(
                f"{path}: self-check output shapes {logits.shape}, {pooled.shape}, {fmap.shape} do not match "
                f"{v} views, {k} classes, {d} features"
            )
        for c in range(k):
            cam_mean = class_activation_maps(fmap.astype(np.float64), self.bundle.cam_weight[c]).mean(axis=(1, 2))
            err = float(np.abs(cam_mean + self.bundle.cam_bias[c] - logits[:, c]).max())
            tolerance = SELF_CHECK_TOLERANCE * max(1.0, float(np.abs(logits[:, c]).max()))
            if not err <= tolerance:
                raise BundleError(
                    f"{self.bundle.paths['cam_weights']}: CAM self-check failed for class "
                    f"{self.classes[c]!r}: mean(CAM) + b differs from the backbone logit by {err:.3g} "
                    f"(> {tolerance:.3g})"
                )
        agg = self.run_aggregator(pooled)
        if agg.shape != (k,) or not np.isfinite(agg).all():
            raise BundleError(
                f"{self.bundle.paths['aggregator']}: self-check output has shape {agg.shape} (expected ({k},)) "
                "or non-finite values"
            )

    def predict(self, rgb: np.ndarray) -> Prediction:
        """Classify one (H, W, 3) uint8 RGB field."""
        m, names = self.manifest, self.classes
        t0 = time.perf_counter()
        views = make_views(rgb, input_size=m.input_size, grid=m.grid, mean=m.mean, std=m.std)
        t1 = time.perf_counter()
        logits, pooled, fmap = self.run_backbone(views)
        t2 = time.perf_counter()
        premium = self.run_aggregator(pooled).astype(np.float64)
        t3 = time.perf_counter()
        basic = logits[0].astype(np.float64)
        p_basic = softmax(basic, m.temperature_basic)
        p_premium = softmax(premium, m.temperature_premium)
        probs = softmax(
            ensemble_logits(basic, premium, m.temperature_basic, m.temperature_premium),
            m.temperature_ensemble,
        )
        cls = int(probs.argmax())
        in_set = prediction_sets(probs, self._quantiles)
        maha = self._maha.score(pooled[0])
        stain, stain_ood = self._stain(rgb)
        energy = float(energy_score(basic))
        cams = class_activation_maps(fmap, self._weight[cls])
        cam = unit_scale(stitch_tiles(cams[1:], m.grid))
        cam_whole = unit_scale(cams[0])
        t4 = time.perf_counter()
        conf = float(probs[cls])
        sure = float(finalisation_confidence(conf, float(p_basic.max())))
        conformal_set = tuple(n for n, keep in zip(names, in_set, strict=True) if keep)
        basic_label, premium_label = names[int(p_basic.argmax())], names[int(p_premium.argmax())]
        maha_ood, energy_ood = maha > m.mahalanobis_threshold, energy > m.energy_threshold
        return Prediction(
            label=names[cls],
            display_name=m.display_names[cls],
            confidence=conf,
            probs=dict(zip(names, probs.tolist(), strict=True)),
            basic_label=basic_label,
            basic_probs=dict(zip(names, p_basic.tolist(), strict=True)),
            premium_label=premium_label,
            premium_probs=dict(zip(names, p_premium.tolist(), strict=True)),
            members_agree=basic_label == premium_label,
            conformal_set=conformal_set,
            finalisation_confidence=sure,
            embedding=np.asarray(pooled[0], dtype=np.float32).copy(),
            mahalanobis=maha,
            mahalanobis_ood=bool(maha_ood),
            energy=energy,
            energy_ood=bool(energy_ood),
            cam_class=names[cls],
            cam=cam,
            cam_whole=cam_whole,
            model_name=m.name,
            model_version=m.version,
            stain=stain,
            stain_ood=stain_ood,
            timings_ms={
                "views": (t1 - t0) * 1e3,
                "backbone": (t2 - t1) * 1e3,
                "aggregator": (t3 - t2) * 1e3,
                "post": (t4 - t3) * 1e3,
                "total": (time.perf_counter() - t0) * 1e3,
            },
        )

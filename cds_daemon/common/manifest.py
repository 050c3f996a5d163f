"""The model bundle's manifest: the contract between ``model_build`` (which writes it) and the daemon.

``read_manifest`` parses and type-checks ``manifest.json`` without touching the other files (the
review page and the CLI need only the class names); ``cds_daemon.analysis.bundle`` verifies every
file's SHA-256 and loads the arrays. Every failure raises ``BundleError`` naming the file and field.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

FORMAT = "thyroideffi-bundle/1"
MANIFEST_NAME = "manifest.json"
FILE_ROLES = ("backbone", "aggregator", "cam_weights", "ood_stats")
CLASSES = ("benign", "indeterminate", "malignant")
DISPLAY_NAMES = (
    "Benign (Bethesda II)",
    "Indeterminate/Suspicious (Bethesda I, III, IV, V)",
    "Malignant (Bethesda VI)",
)
BACKBONE_IO = {"input": "images", "outputs": ["logits", "pooled", "feature_map"]}
AGGREGATOR_IO = {"input": "tokens", "output": "logits"}


class BundleError(Exception):
    """The model bundle is missing, altered or malformed; the message names the file and what is wrong."""


def sha256_file(path: Path) -> str:
    """Hex SHA-256 of a file, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


@dataclass(frozen=True)
class Manifest:
    """The fields of ``manifest.json`` the daemon relies on, type-checked; ``raw`` keeps the whole JSON."""

    name: str
    version: str
    classes: tuple[str, ...]
    display_names: tuple[str, ...]
    input_size: int
    grid: tuple[int, int]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    files: dict[str, str]
    sha256: dict[str, str]
    feature_dim: int
    backbone_input: str
    backbone_outputs: tuple[str, str, str]  # logits, pooled, feature_map
    aggregator_input: str
    aggregator_output: str
    temperature_basic: float
    temperature_premium: float
    temperature_ensemble: float
    alpha: float
    quantiles: tuple[float, ...]
    confidence_threshold: float
    mahalanobis_threshold: float
    energy_threshold: float
    raw: dict[str, Any]
    mpp: float | None = None  # micrometres per pixel of the training fields (preprocessing.mpp): slides are read at it

    @property
    def stain_threshold(self) -> float | None:
        """The stain gate's threshold (None for a bundle that predates the gate)."""
        value = self.raw.get("thresholds", {}).get("stain")
        return float(value) if isinstance(value, int | float) else None

    @property
    def finalisation(self) -> dict[str, Any] | None:
        """The finalisation rule and its calibration data (``cds_daemon.analysis.risk``), if the bundle has one."""
        block = self.raw.get("finalisation")
        return block if isinstance(block, dict) else None

    @property
    def n_views(self) -> int:
        return 1 + self.grid[0] * self.grid[1]


def _get(d: Any, key: str, where: str) -> Any:
    if not isinstance(d, dict) or key not in d:
        raise BundleError(f"{MANIFEST_NAME}: missing field {where}{key}")
    return d[key]


def _num(d: Any, key: str, where: str, *, positive: bool = False) -> float:
    v = _get(d, key, where)
    if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
        raise BundleError(f"{MANIFEST_NAME}: field {where}{key} must be a finite number, got {v!r}")
    if positive and v <= 0:
        raise BundleError(f"{MANIFEST_NAME}: field {where}{key} must be > 0, got {v!r}")
    return float(v)


def _str(d: Any, key: str, where: str) -> str:
    v = _get(d, key, where)
    if not isinstance(v, str) or not v:
        raise BundleError(f"{MANIFEST_NAME}: field {where}{key} must be a non-empty string, got {v!r}")
    return v


def _str_list(d: Any, key: str, where: str) -> tuple[str, ...]:
    v = _get(d, key, where)
    if not isinstance(v, list) or not v or not all(isinstance(s, str) and s for s in v):
        raise BundleError(f"{MANIFEST_NAME}: field {where}{key} must be a list of non-empty strings")
    return tuple(v)


def _num_list(d: Any, key: str, where: str, n: int) -> tuple[float, ...]:
    v = _get(d, key, where)
    ok = isinstance(v, list) and len(v) == n
    ok = ok and all(not isinstance(x, bool) and isinstance(x, int | float) and math.isfinite(x) for x in v)
    if not ok:
        raise BundleError(f"{MANIFEST_NAME}: field {where}{key} must be a list of {n} finite numbers, got {v!r}")
    return tuple(float(x) for x in v)


def parse_manifest(raw: Any) -> Manifest:
    """Type-check a decoded manifest; ``BundleError`` names the first bad field."""
    if not isinstance(raw, dict):
        raise BundleError(f"{MANIFEST_NAME}: top level must be a JSON object")
    fmt = _get(raw, "format", "")
    if fmt != FORMAT:
        raise BundleError(f"{MANIFEST_NAME}: format {fmt!r} is not supported (expected {FORMAT!r})")
    classes = _str_list(raw, "classes", "")
    display = _str_list(raw, "display_names", "")
    if len(display) != len(classes) or len(set(classes)) != len(classes):
        raise BundleError(f"{MANIFEST_NAME}: classes and display_names must be equal-length, classes unique")
    k = len(classes)
    pre = _get(raw, "preprocessing", "")
    grid = _num_list(pre, "grid", "preprocessing.", 2)
    if any(g < 1 or g != int(g) for g in grid):
        raise BundleError(f"{MANIFEST_NAME}: field preprocessing.grid must be two positive integers")
    input_size = _num(pre, "input_size", "preprocessing.", positive=True)
    if _get(pre, "resize", "preprocessing.") != "bilinear":
        raise BundleError(f"{MANIFEST_NAME}: field preprocessing.resize must be 'bilinear'")
    std = _num_list(pre, "std", "preprocessing.", 3)
    if min(std) <= 0:
        raise BundleError(f"{MANIFEST_NAME}: field preprocessing.std must be positive")
    files = _get(raw, "files", "")
    sha = _get(raw, "sha256", "")
    if not isinstance(files, dict) or not isinstance(sha, dict):
        raise BundleError(f"{MANIFEST_NAME}: fields files and sha256 must be objects")
    for role in FILE_ROLES:
        name = _str(files, role, "files.")
        if Path(name).name != name or name in (".", "..", MANIFEST_NAME):
            raise BundleError(f"{MANIFEST_NAME}: files.{role} must be a plain file name, got {name!r}")
        digest = _str(sha, name, "sha256.")
        if len(digest) != 64 or any(ch not in "0123456789abcdef" for ch in digest):
            raise BundleError(f"{MANIFEST_NAME}: sha256.{name} is not a lowercase hex SHA-256")
    io = _get(raw, "io", "")
    feature_dim = _num(io, "feature_dim", "io.", positive=True)
    bb, agg = _get(io, "backbone", "io."), _get(io, "aggregator", "io.")
    bb_out = _str_list(bb, "outputs", "io.backbone.")
    if len(bb_out) != 3:
        raise BundleError(f"{MANIFEST_NAME}: io.backbone.outputs must name logits, pooled and feature_map")
    temps = _get(raw, "temperatures", "")
    conformal = _get(raw, "conformal", "")
    alpha = _num(conformal, "alpha", "conformal.")
    if not 0 < alpha < 1:
        raise BundleError(f"{MANIFEST_NAME}: field conformal.alpha must lie in (0, 1)")
    thr = _get(raw, "thresholds", "")
    mpp = pre.get("mpp") if isinstance(pre, dict) else None
    if mpp is not None and (isinstance(mpp, bool) or not isinstance(mpp, int | float) or not 0 < mpp < 100):
        raise BundleError(f"{MANIFEST_NAME}: field preprocessing.mpp must be micrometres per pixel in (0, 100)")
    return Manifest(
        name=_str(raw, "name", ""),
        version=_str(raw, "version", ""),
        classes=classes,
        display_names=display,
        input_size=int(input_size),
        grid=(int(grid[0]), int(grid[1])),
        mean=_num_list(pre, "mean", "preprocessing.", 3),  # type: ignore[arg-type]
        std=std,  # type: ignore[arg-type]
        files={role: files[role] for role in FILE_ROLES},
        sha256={str(n): str(d) for n, d in sha.items()},
        feature_dim=int(feature_dim),
        backbone_input=_str(bb, "input", "io.backbone."),
        backbone_outputs=(bb_out[0], bb_out[1], bb_out[2]),
        aggregator_input=_str(agg, "input", "io.aggregator."),
        aggregator_output=_str(agg, "output", "io.aggregator."),
        temperature_basic=_num(temps, "basic", "temperatures.", positive=True),
        temperature_premium=_num(temps, "premium", "temperatures.", positive=True),
        temperature_ensemble=_num(temps, "ensemble", "temperatures.", positive=True),
        alpha=alpha,
        quantiles=_num_list(conformal, "quantiles", "conformal.", k),
        confidence_threshold=_num(thr, "confidence", "thresholds."),
        mahalanobis_threshold=_num(thr, "mahalanobis", "thresholds."),
        energy_threshold=_num(thr, "energy", "thresholds."),
        raw=raw,
        mpp=None if mpp is None else float(mpp),
    )


def read_manifest(bundle_dir: Path) -> Manifest:
    """Read and type-check ``bundle_dir/manifest.json`` (no file hashing)."""
    path = Path(bundle_dir) / MANIFEST_NAME
    if not path.is_file():
        raise BundleError(f"{path}: manifest missing (is {bundle_dir} a model bundle?)")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise BundleError(f"{path}: not valid JSON ({e})") from e
    return parse_manifest(raw)


def bundle_identity(bundle_dir: Path) -> str:
    """SHA-256 of manifest.json, which itself lists the SHA-256 of every file: one hash names the bundle."""
    return sha256_file(Path(bundle_dir) / MANIFEST_NAME)

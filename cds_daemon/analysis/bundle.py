"""Model bundle loader: verify every file's SHA-256 against the manifest, load the npz statistics.

A bundle is a directory holding the two ONNX graphs, two npz files and ``manifest.json``; the manifest
(:mod:`cds_daemon.common.manifest`) lists each file's SHA-256. The daemon refuses a bundle with a
missing, extra or altered file or a malformed manifest: every failure raises ``BundleError`` naming the
file and the field. No torch here.
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cds_daemon.analysis.stain import FEATURES
from cds_daemon.common.manifest import MANIFEST_NAME, BundleError, Manifest, read_manifest

F = len(FEATURES)


@dataclass(frozen=True, eq=False)
class Bundle:
    """A verified bundle: manifest, absolute file paths by role, and the npz arrays the engine needs."""

    directory: Path
    manifest: Manifest
    paths: dict[str, Path]
    backbone_onnx: bytes  # the verified graph bytes (sessions are built from these, not re-read from disk)
    aggregator_onnx: bytes
    cam_weight: np.ndarray  # (K, D) classifier weights
    cam_bias: np.ndarray  # (K,)
    class_means: np.ndarray  # (K, D) view-0 pooled feature means of the training split
    precision: np.ndarray  # (D, D) inverse of the shrunk shared covariance
    stain_mean: np.ndarray | None = None  # (F,) stain-gate features of held-out fields (older bundles: none)
    stain_precision: np.ndarray | None = None  # (F, F)


def verify_files(bundle_dir: Path, manifest: Manifest) -> dict[str, bytes]:
    """Every file listed in ``sha256`` exists and matches; no unlisted file sits beside them.

    Returns the verified contents by file name, so callers use exactly the bytes that were hashed
    (a file swapped after the check cannot be loaded instead).
    """
    bundle_dir = Path(bundle_dir)
    contents: dict[str, bytes] = {}
    for name, expected in sorted(manifest.sha256.items()):
        path = bundle_dir / name
        if Path(name).name != name or not path.is_file():
            raise BundleError(f"{path}: file listed in the manifest is missing")
        data = path.read_bytes()
        actual = hashlib.sha256(data).hexdigest()
        if actual != expected:
            raise BundleError(f"{path}: SHA-256 mismatch (manifest {expected[:12]}..., file {actual[:12]}...)")
        contents[name] = data
    listed = {*manifest.sha256, MANIFEST_NAME}
    extra = sorted(p.name for p in bundle_dir.iterdir() if p.name not in listed)
    if extra:
        raise BundleError(f"{bundle_dir}: files not listed in the manifest: {', '.join(extra)}")
    return contents


def _npz(path: Path, data: bytes, keys: dict[str, tuple[int, ...]]) -> dict[str, np.ndarray]:
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as z:
            arrays = {k: np.asarray(z[k], dtype=np.float64) for k in keys}
    except KeyError as e:
        raise BundleError(f"{path}: missing array {e}") from e
    except (OSError, ValueError) as e:
        raise BundleError(f"{path}: not a readable npz file ({e})") from e
    for k, shape in keys.items():
        if arrays[k].shape != shape:
            raise BundleError(f"{path}: array {k} has shape {arrays[k].shape}, expected {shape}")
        if not np.isfinite(arrays[k]).all():
            raise BundleError(f"{path}: array {k} has non-finite values")
    return arrays


def _optional_npz(path: Path, data: bytes, keys: dict[str, tuple[int, ...]]) -> dict[str, np.ndarray] | None:
    """Arrays a newer bundle adds; None when the bundle predates them (all absent)."""
    with np.load(io.BytesIO(data), allow_pickle=False) as z:
        present = [k for k in keys if k in z.files]
    if not present:
        return None
    return _npz(path, data, keys)


def load_bundle(bundle_dir: Path) -> Bundle:
    """Read the manifest, verify all hashes, load the npz arrays with shape checks."""
    bundle_dir = Path(bundle_dir).resolve()
    if not bundle_dir.is_dir():
        raise BundleError(f"{bundle_dir}: model bundle directory does not exist")
    manifest = read_manifest(bundle_dir)
    contents = verify_files(bundle_dir, manifest)
    paths = {role: bundle_dir / name for role, name in manifest.files.items()}
    blobs = {role: contents[name] for role, name in manifest.files.items()}
    k, d = len(manifest.classes), manifest.feature_dim
    cam = _npz(paths["cam_weights"], blobs["cam_weights"], {"W": (k, d), "b": (k,)})
    ood = _npz(paths["ood_stats"], blobs["ood_stats"], {"class_means": (k, d), "precision": (d, d)})
    stain = _optional_npz(paths["ood_stats"], blobs["ood_stats"], {"stain_mean": (F,), "stain_precision": (F, F)})
    return Bundle(
        directory=bundle_dir,
        manifest=manifest,
        paths=paths,
        backbone_onnx=blobs["backbone"],
        aggregator_onnx=blobs["aggregator"],
        cam_weight=cam["W"],
        cam_bias=cam["b"],
        class_means=ood["class_means"],
        precision=ood["precision"],
        stain_mean=None if stain is None else stain["stain_mean"],
        stain_precision=None if stain is None else stain["stain_precision"],
    )

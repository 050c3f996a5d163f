"""The tiny bundle end to end: manifest, verification (tampering refused), Engine self-check and predict."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from cds_daemon.analysis.bundle import load_bundle
from cds_daemon.analysis.engine import Engine
from cds_daemon.analysis.numeric import mahalanobis_score
from cds_daemon.analysis.tiles import make_views
from cds_daemon.common.manifest import CLASSES, DISPLAY_NAMES, MANIFEST_NAME, BundleError, sha256_file
from model_build.dataset import read_rgb
from model_build.demo import work_dir


@pytest.fixture(scope="module")
def tiny(tiny_bundle: Path) -> Path:
    """The session's tiny bundle (conftest): built once, tests that alter it work on a copy."""
    return tiny_bundle


@pytest.fixture(scope="module")
def engine(tiny: Path) -> Engine:
    return Engine(tiny, threads=2)


@pytest.fixture
def field(tiny: Path) -> np.ndarray:
    return read_rgb(next((work_dir(tiny) / "data" / "malignant").glob("*.png")))


def _copy(tiny: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "bundle"
    shutil.copytree(tiny, dst)
    return dst


def _rewrite_manifest(bundle: Path, edit: object) -> None:
    m = json.loads((bundle / MANIFEST_NAME).read_text())
    edit(m)  # type: ignore[operator]
    (bundle / MANIFEST_NAME).write_text(json.dumps(m))


def test_manifest_schema(tiny: Path) -> None:
    m = json.loads((tiny / MANIFEST_NAME).read_text())
    assert m["classes"] == list(CLASSES) and m["display_names"] == list(DISPLAY_NAMES)
    assert m["preprocessing"] | {"input_size": 224, "grid": [3, 4], "resize": "bilinear"} == m["preprocessing"]
    assert set(m["temperatures"]) == {"basic", "premium", "ensemble"}
    assert m["conformal"]["alpha"] == 0.1 and len(m["conformal"]["quantiles"]) == 3
    assert set(m["thresholds"]) == {"confidence", "mahalanobis", "energy", "stain"}
    for key in ("macro_f1", "ece_before", "ece_after", "indeterminate_recall", "referral_rate"):
        assert key in m["metrics"]
    assert len(m["dataset"]["labels_sha256"]) == 64
    assert set(m["dataset"]["counts"]) == {"train", "selection", "calibration", "test"}
    assert m["training"]["config"]["max_steps"] == 2 and m["training_time_s"] > 0
    assert m["export"]["parity_max_abs_diff"]["backbone_logits"] < 1e-4
    files = sorted(p.name for p in tiny.iterdir() if p.name != MANIFEST_NAME)
    assert sorted(m["sha256"]) == files == sorted(m["files"].values())
    assert all(m["sha256"][f] == sha256_file(tiny / f) for f in files)


def test_engine_predicts_probabilities_and_cam(engine: Engine, field: np.ndarray) -> None:
    p = engine.predict(field)
    assert set(p.probs) == set(CLASSES) and abs(sum(p.probs.values()) - 1) < 1e-9
    assert abs(sum(p.basic_probs.values()) - 1) < 1e-9 and abs(sum(p.premium_probs.values()) - 1) < 1e-9
    assert p.label == max(p.probs, key=p.probs.get) and p.confidence == p.probs[p.label]
    assert p.display_name == DISPLAY_NAMES[CLASSES.index(p.label)]
    assert p.members_agree == (p.basic_label == p.premium_label)
    assert set(p.conformal_set) <= set(CLASSES) and 0.0 <= p.finalisation_confidence <= p.confidence
    assert p.cam.shape == (21, 28) and p.cam.dtype == np.float32 and p.cam_whole.shape == (7, 7)
    assert p.cam.min() == 0.0 and p.cam.max() == 1.0 and 0 <= p.cam_whole.min() <= p.cam_whole.max() <= 1
    assert p.cam_class == p.label and np.isfinite([p.mahalanobis, p.energy]).all()
    assert p.timings_ms.keys() == {"views", "backbone", "aggregator", "post", "total"}
    # the bundle's OOD flags use the manifest thresholds
    assert p.mahalanobis_ood == (p.mahalanobis > engine.manifest.mahalanobis_threshold)
    assert p.energy_ood == (p.energy > engine.manifest.energy_threshold)


def test_engine_flags_an_out_of_distribution_field(engine: Engine) -> None:
    noise = np.random.default_rng(0).integers(0, 256, (768, 1024, 3), dtype=np.uint8)
    p = engine.predict(noise)
    assert p.mahalanobis_ood


def test_predict_is_thread_safe(engine: Engine, field: np.ndarray) -> None:
    ref = engine.predict(field)
    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(engine.predict, [field] * 4))
    for r in results:
        assert r.probs == ref.probs and np.array_equal(r.cam, ref.cam)


def test_tampered_file_is_refused(tiny: Path, tmp_path: Path) -> None:
    bundle = _copy(tiny, tmp_path)
    data = bytearray((bundle / "aggregator.onnx").read_bytes())
    data[len(data) // 2] ^= 0x01
    (bundle / "aggregator.onnx").write_bytes(bytes(data))
    with pytest.raises(BundleError, match=r"aggregator\.onnx: SHA-256 mismatch"):
        Engine(bundle, threads=1)


def test_missing_extra_and_malformed_are_refused(tiny: Path, tmp_path: Path) -> None:
    bundle = _copy(tiny, tmp_path)
    (bundle / "ood_stats.npz").unlink()
    with pytest.raises(BundleError, match=r"ood_stats\.npz: file listed in the manifest is missing"):
        load_bundle(bundle)
    shutil.copy(tiny / "ood_stats.npz", bundle / "ood_stats.npz")
    (bundle / "notes.txt").write_text("x")
    with pytest.raises(BundleError, match=r"not listed in the manifest: notes\.txt"):
        load_bundle(bundle)
    (bundle / "notes.txt").unlink()
    load_bundle(bundle)
    _rewrite_manifest(bundle, lambda m: m["conformal"].update(quantiles=[0.5, 0.5]))
    with pytest.raises(BundleError, match=r"conformal\.quantiles must be a list of 3"):
        load_bundle(bundle)
    (bundle / MANIFEST_NAME).write_text("{not json")
    with pytest.raises(BundleError, match="not valid JSON"):
        load_bundle(bundle)


def test_cam_self_check_refuses_inconsistent_weights(tiny: Path, tmp_path: Path) -> None:
    bundle = _copy(tiny, tmp_path)
    with np.load(bundle / "cam_weights.npz") as z:
        w, b = z["W"], z["b"]
    np.savez(bundle / "cam_weights.npz", W=w, b=b + 0.5)  # bias no longer the graph's bias
    digest = sha256_file(bundle / "cam_weights.npz")
    _rewrite_manifest(bundle, lambda m: m["sha256"].update({"cam_weights.npz": digest}))
    load_bundle(bundle)  # hashes are consistent again ...
    with pytest.raises(BundleError, match="CAM self-check failed"):
        Engine(bundle, threads=1)  # ... but the engine refuses to start


def test_daemon_side_never_imports_torch() -> None:
    modules = "cds_daemon.analysis.engine, cds_daemon.analysis.bundle, cds_daemon.analysis.tiles"
    code = f"import sys, {modules}; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


def test_fast_path_gives_the_one_batch_results(tiny: Path, engine: Engine) -> None:
    """Backbone in chunks of 4 views and precomputed Mahalanobis terms: the same results as one batch of 13
    views and the textbook distance, on fixture fields of every class."""
    one_batch = Engine(tiny, threads=2, chunk=13)
    fields = sorted((work_dir(tiny) / "data").glob("*/*.png"))[::2][:9]
    assert len(fields) >= 6 and engine.chunk == 4
    for path in fields:
        rgb = read_rgb(path)
        fast, slow = engine.predict(rgb), one_batch.predict(rgb)
        assert (fast.label, fast.conformal_set) == (slow.label, slow.conformal_set)
        assert fast.finalisation_confidence == pytest.approx(slow.finalisation_confidence, abs=1e-6)
        assert (fast.mahalanobis_ood, fast.energy_ood, fast.stain_ood) == (
            slow.mahalanobis_ood,
            slow.energy_ood,
            slow.stain_ood,
        )
        for name in fast.probs:
            assert abs(fast.probs[name] - slow.probs[name]) < 1e-6, path
        np.testing.assert_allclose(fast.cam, slow.cam, atol=1e-5)
        views = make_views(rgb, input_size=224, grid=(3, 4), mean=one_batch.manifest.mean, std=one_batch.manifest.std)
        _, pooled, _ = one_batch.run_backbone(views)
        b = one_batch.bundle
        textbook = float(mahalanobis_score(pooled[0], b.class_means, b.precision))
        assert abs(fast.mahalanobis - textbook) <= 1e-9 * max(1.0, textbook)

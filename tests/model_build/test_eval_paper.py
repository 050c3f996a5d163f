"""Reproduce the ThyroidEffi 1.0 paper's numbers from its own per-image logits (model_build/data, in the repo).

Conventions that matter (see model_build.metrics / evaluate_logits):
- Basic = argmax of row 0 (whole image); 13-view = argmax of the *mean* of the 13 logit rows (same argmax
  as the sum; averaging softmax probabilities instead gives a different classifier, macro-F1 0.9072).
- T is fitted on the val split, row 0, by NLL; ECE is on test, 15 equal-width bins, (lo, hi]. No test
  confidence lies on a bin edge, so [lo, hi) gives the same ECE.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from cds_daemon.analysis.numeric import softmax
from model_build import metrics
from model_build.calibration import fit_temperature
from model_build.evaluate_logits import BASIC_RAW, BASIC_SCALED, VIEW_MEAN, run_evaluate_logits
from model_build.logits_csv import PACKAGED_DATA_DIR, default_data_dir, load_split
from model_build.report import FIGURES

DATA = default_data_dir()
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def splits() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    return {s: tuple(load_split(s, DATA)) for s in ("val", "test")}


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, Path]:
    out = tmp_path_factory.mktemp("evaluate-logits")
    return run_evaluate_logits(DATA, out, n_boot=200, seed=0), out


def test_the_logits_ship_with_the_repository(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CDS_SHARED_DIR", raising=False)
    assert default_data_dir() == PACKAGED_DATA_DIR == REPO / "model_build" / "data" / "thyroideffi_logits"
    assert all((PACKAGED_DATA_DIR / f"{s}_not_aug.csv").is_file() for s in ("train", "val", "test"))
    assert "github.com/Harito97/Research_ThyroidFNA_ClassAI" in (PACKAGED_DATA_DIR / "README.md").read_text()


def test_split_sizes(splits: dict) -> None:
    for split, n, per_class in (("val", 270, [68, 77, 125]), ("test", 272, [61, 96, 115])):
        y, z = splits[split]
        assert z.shape == (n, 13, 3)
        assert np.bincount(y).tolist() == per_class


def test_basic_row0_macro_f1_and_confusion(splits: dict) -> None:
    y, z = splits["test"]
    cm = metrics.confusion_matrix(y, z[:, 0].argmax(1), 3)
    assert cm.tolist() == [[57, 2, 2], [0, 85, 11], [2, 15, 98]]
    assert metrics.macro_f1(cm) == pytest.approx(0.8919, abs=5e-4)
    # The paper's AUCs, reported to two decimals.
    auc = metrics.roc_auc_ovr(softmax(z[:, 0]), y)
    assert np.round(auc, 2).tolist() == [0.98, 0.95, 0.96]


def test_view_mean_macro_f1(splits: dict) -> None:
    y, z = splits["test"]
    pred = z.mean(axis=1).argmax(1)
    np.testing.assert_array_equal(pred, z.sum(axis=1).argmax(1))
    assert metrics.macro_f1(metrics.confusion_matrix(y, pred, 3)) == pytest.approx(0.8946, abs=5e-4)


def test_temperature_and_ece(splits: dict) -> None:
    y_val, z_val = splits["val"]
    y, z = splits["test"]
    t = fit_temperature(z_val[:, 0], y_val)
    assert t == pytest.approx(1.84, abs=0.02)
    raw, scaled = softmax(z[:, 0]), softmax(z[:, 0], t)
    assert metrics.ece(raw, y) == pytest.approx(0.092, abs=0.002)
    assert metrics.ece(scaled, y) == pytest.approx(0.054, abs=0.002)
    edges = np.linspace(0, 1, metrics.N_BINS + 1)
    for p in (raw, scaled):
        assert not np.isin(p.max(1), edges).any()


def test_evaluate_logits_end_to_end(evaluated: tuple[dict, Path]) -> None:
    result, out = evaluated
    models = result["models"]
    assert models[BASIC_RAW]["macro_f1"] == pytest.approx(0.8919, abs=5e-4)
    assert models[BASIC_SCALED]["macro_f1"] == models[BASIC_RAW]["macro_f1"]
    assert models[VIEW_MEAN]["macro_f1"] == pytest.approx(0.8946, abs=5e-4)
    assert result["temperature"] == pytest.approx(1.84, abs=0.02)
    assert result["val_nll_scaled"] < result["val_nll_raw"]
    assert models[BASIC_RAW]["ece"] == pytest.approx(0.092, abs=0.002)
    assert models[BASIC_SCALED]["ece"] == pytest.approx(0.054, abs=0.002)
    ci = models[BASIC_SCALED]["bootstrap"]["ece_ci"]
    assert ci[0] < models[BASIC_SCALED]["ece"] < ci[1]
    assert models[BASIC_RAW]["indeterminate_recall"] == pytest.approx(85 / 96)
    mc = models[BASIC_SCALED]["mcnemar"]
    assert (mc["b"], mc["c"], mc["p_exact"]) == (15, 15, 1.0)
    conf = models[BASIC_SCALED]["conformal"]
    assert sum(conf["set_size_histogram"].values()) == 272
    ref = models[BASIC_SCALED]["referral"]
    # Every predicted-Indeterminate image (102 in the confusion matrix) is referred.
    assert result["referral_reasons"]["indeterminate"] == 102
    assert 102 <= ref["n_referred"] <= 272
    assert ref["accuracy_accepted"] > models[BASIC_SCALED]["accuracy"]
    assert json.loads((out / "report.json").read_text()) == result
    assert all((out / f).stat().st_size > 0 for f in (*FIGURES.values(), "report.md"))


def test_conformal_quantiles_cover_the_calibration_split(splits: dict, evaluated: tuple[dict, Path]) -> None:
    from cds_daemon.analysis.numeric import prediction_sets
    from model_build.conformal import coverage_by_class

    result, _ = evaluated
    y_val, z_val = splits["val"]
    q = np.array(list(result["conformal_quantiles"].values()))
    sets = prediction_sets(softmax(z_val[:, 0], result["temperature"]), q)
    cov = coverage_by_class(sets, y_val)
    assert all(v >= 1 - result["alpha"] for v in cov.values())


def test_cli(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "model_build", "evaluate-logits", "--data-dir", str(DATA), "--out",
         str(tmp_path), "--n-boot", "20"],
        cwd=REPO, capture_output=True, text=True, check=False, timeout=120,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert "0.8919" in out.stdout and "0.8946" in out.stdout and "temperature" in out.stdout
    assert (tmp_path / "report.md").is_file()

"""Resplits, power and site simulation of the finalisation rule (``model_build.robustness``), on the paper's logits
that ship in the repository and on a synthetic bundle calibration block."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from cds_daemon.analysis.risk import fit_finalisation
from cds_daemon.common.binomial import min_sample_size
from model_build.__main__ import main
from model_build.evaluate_logits import BASIC_FINALISATION, DAEMON_FINALISATION, VIEWS_FINALISATION
from model_build.logits_csv import load_split
from model_build.robustness import (
    BUNDLE_RESPLIT_NAME,
    POWER_SIZES,
    bundle_resplits,
    resplit_logits,
    site_simulation,
    stratified_half,
    summarise,
)

REPO = Path(__file__).resolve().parents[2]
SCORES = (DAEMON_FINALISATION, BASIC_FINALISATION, VIEWS_FINALISATION)
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
ALPHA, DELTA = 0.02, 0.1
NUM = r"([0-9.]+)"
RESPLIT_RE = re.compile(
    rf"^resplits \[(.+?)\] alpha={NUM} delta={NUM} N=(\d+): coverage mean {NUM} p10 {NUM} p50 {NUM}, "
    rf"error mean {NUM}, P\(error > alpha\) {NUM}, swaps mean (\S+),"
)
POWER_RE = re.compile(rf"^power n=(\d+) .*coverage mean {NUM} p10 {NUM} p50 {NUM}")


@pytest.fixture(scope="module")
def pool() -> tuple[np.ndarray, np.ndarray]:
    (y_val, z_val), (y_test, z_test) = load_split("val"), load_split("test")
    return np.concatenate([z_val, z_test]), np.concatenate([y_val, y_test])


@pytest.fixture(scope="module")
def cli(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path]:
    out = tmp_path_factory.mktemp("robustness")
    run = subprocess.run(
        [sys.executable, "-m", "model_build", "evaluate-logits", "--out", str(out), "--n-boot", "10",
         "--resplits", "20", "--power", "--power-reps", "40", "--site-simulation", "4"],
        cwd=REPO, capture_output=True, text=True, check=False, timeout=120,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-2000:]
    return run.stdout, out


def test_cli_prints_one_resplits_line_per_score(cli: tuple[str, Path]) -> None:
    stdout, _ = cli
    found = {}
    for line in stdout.splitlines():
        if line.startswith("resplits ["):
            m = RESPLIT_RE.match(line)
            assert m, line
            found[m.group(1)] = m
    assert set(found) == set(SCORES)
    for m in found.values():
        alpha, delta, n = float(m.group(2)), float(m.group(3)), int(m.group(4))
        mean, p10, p50, err, p_err = (float(m.group(i)) for i in range(5, 10))
        assert (alpha, delta, n) == (ALPHA, DELTA, 20)
        assert 0.0 <= p10 <= p50 <= 1.0 and 0.0 <= mean <= 1.0 and p10 <= mean
        assert 0.0 <= err <= 1.0 and 0.0 <= p_err <= 1.0
        assert float(m.group(10)) >= 0.0


def test_cli_power_and_site_simulation_lines(cli: tuple[str, Path]) -> None:
    stdout, _ = cli
    power = {int(m.group(1)): float(m.group(2)) for line in stdout.splitlines() if (m := POWER_RE.match(line))}
    assert tuple(power) == POWER_SIZES
    assert all(0.0 <= v <= 1.0 for v in power.values())
    # More calibration data can only help on average (noise aside: the two ends are far apart).
    assert power[4000] > power[271] + 0.05
    assert "reviews_for_stable_rule(have=542)" in stdout
    assert "site simulation [" in stdout
    table = [line.split() for line in stdout.splitlines() if re.match(r"^\s+\d+\s+\d+\s+[0-9.]+", line)]
    assert [int(row[0]) for row in table] == [100, 200, 300, 400, 500]
    assert [int(row[1]) for row in table] == [442, 342, 242, 142, 42]


def test_cli_writes_figures_and_json(cli: tuple[str, Path]) -> None:
    _, out = cli
    report = json.loads((out / "report.json").read_text())
    assert set(report["resplits"]["scores"]) == set(SCORES)
    assert report["resplits"]["n_calibration"] == 270 and report["resplits"]["n_measured"] == 272
    assert "coverage" not in report["resplits"]["scores"][DAEMON_FINALISATION]  # per-resplit lists stay out
    assert [p["size"] for p in report["power"]["points"]] == list(POWER_SIZES)
    assert len(report["site_simulation"]["rows"]) == 5
    for block in ("resplits", "power", "site_simulation"):
        png = out / report[block]["figure"]
        assert png.read_bytes()[:8] == PNG_MAGIC


def test_resplits_hold_the_guarantee_roughly(pool: tuple[np.ndarray, np.ndarray]) -> None:
    z, y = pool
    block = resplit_logits(z, y, 120, alpha=ALPHA, delta=DELTA, seed=1)
    daemon = block["scores"][DAEMON_FINALISATION]
    # The guarantee is over calibration draws; halves of one pool are not independent draws, hence the margin.
    assert daemon["p_error_above_alpha"] <= DELTA + 0.06
    assert daemon["error_mean"] < 2 * ALPHA
    # The reference over 200 resplits: coverage mean 0.249, median 0 (most halves finalise nothing).
    assert 0.15 < daemon["coverage_mean"] < 0.35
    assert len(daemon["coverage"]) == 120 and all(0.0 <= c <= 1.0 for c in daemon["coverage"])


def test_stratified_half_takes_half_of_every_class(pool: tuple[np.ndarray, np.ndarray]) -> None:
    _, y = pool
    mask = stratified_half(y, np.random.default_rng(0))
    assert np.bincount(y[mask]).tolist() == [n // 2 for n in np.bincount(y)]
    assert not np.array_equal(mask, stratified_half(y, np.random.default_rng(1)))


def test_summarise_counts_nothing_finalised_as_no_error() -> None:
    s = summarise([0.0, 0.5, 0.4, 0.0], [None, 0.05, 0.0, None], [0, 1, 0, 0], alpha=0.02, delta=0.1)
    assert s["n"] == 4 and s["coverage_mean"] == pytest.approx(0.225)
    assert s["coverage_p50"] == pytest.approx(0.2) and s["share_nothing_finalised"] == 0.5
    assert s["error_mean"] == pytest.approx(0.0125) and s["p_error_above_alpha"] == 0.25
    assert s["swaps_mean"] == 0.25
    assert summarise([0.1], [0.0], None, alpha=0.02, delta=0.1)["swaps_mean"] is None
    with pytest.raises(ValueError):
        summarise([0.1, 0.2], [0.0], None, alpha=0.02, delta=0.1)


def test_site_simulation_rows(pool: tuple[np.ndarray, np.ndarray]) -> None:
    z, y = pool
    block = site_simulation(z, y, 3, alpha=ALPHA, delta=DELTA, seed=0)
    rows = block["rows"]
    assert [r["reviews"] for r in rows] == [100, 200, 300, 400, 500]
    assert all(r["n"] == 3 and r["reviews"] + r["n_rest"] == 542 for r in rows)
    # 100 reviews hold fewer candidates than the smallest sample that can certify anything at (0.02, 0.1).
    assert min_sample_size(ALPHA, DELTA) > 100
    assert rows[0]["coverage_mean"] == 0.0 and rows[0]["p_error_above_alpha"] == 0.0
    assert rows[-1]["coverage_mean"] > 0.0


def _bundle(tmp_path: Path, error_rate: float, n: int = 600, wrong_below: float = 0.0) -> Path:
    """Candidates 80% of the fields, confidence uniform on [0.4, 1]; errors at random at ``error_rate``, and
    every field below ``wrong_below`` wrong."""
    rng = np.random.default_rng(3)
    confidence = rng.uniform(0.4, 1.0, n)
    errors = (rng.random(n) < error_rate) | (confidence < wrong_below)
    candidates = rng.random(n) < 0.8
    rule = fit_finalisation(confidence, errors, candidates, alpha=ALPHA, delta=DELTA)
    block = {
        **rule.to_json(),
        "calibration": {
            "confidence": confidence.tolist(),
            "error": errors.tolist(),
            "candidate": candidates.tolist(),
        },
    }
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    (bundle / "manifest.json").write_text(json.dumps({"name": "synthetic", "finalisation": block}))
    return bundle


def test_evaluate_resplits_on_a_bundle_without_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bundle = _bundle(tmp_path, error_rate=0.0)
    assert main(["evaluate", str(bundle), "--resplits", "20", "--out", str(tmp_path / "out")]) == 0
    lines = [x for x in capsys.readouterr().out.splitlines() if x.startswith("resplits [")]
    assert len(lines) == 1
    m = RESPLIT_RE.match(lines[0])
    assert m and m.group(1) == BUNDLE_RESPLIT_NAME
    assert (float(m.group(2)), float(m.group(3)), int(m.group(4))) == (ALPHA, DELTA, 20)
    assert m.group(10) == "n/a"  # no labels in the calibration data, so no swaps
    saved = json.loads((tmp_path / "out" / "resplits.json").read_text())
    s = saved["scores"][BUNDLE_RESPLIT_NAME]
    # No error at all: every half certifies down to its lowest candidate, so nearly every measured candidate
    # (80% of the fields) is finalised, and never wrongly.
    assert 0.7 < s["coverage_p10"] <= s["coverage_mean"] <= 0.9
    assert s["error_mean"] == 0.0 and s["p_error_above_alpha"] == 0.0
    assert (tmp_path / "out" / "resplits.png").read_bytes()[:8] == PNG_MAGIC


def test_bundle_resplits_with_many_errors_finalise_nothing(tmp_path: Path) -> None:
    block = json.loads((_bundle(tmp_path, error_rate=0.3) / "manifest.json").read_text())["finalisation"]
    s = bundle_resplits(block, 10, seed=0)["scores"][BUNDLE_RESPLIT_NAME]
    assert s["coverage_mean"] == 0.0 and s["share_nothing_finalised"] == 1.0
    assert s["p_error_above_alpha"] == 0.0  # nothing finalised counts as no error


def test_bundle_resplits_stop_where_the_errors_start(tmp_path: Path) -> None:
    block = json.loads((_bundle(tmp_path, 0.0, wrong_below=0.55) / "manifest.json").read_text())["finalisation"]
    s = bundle_resplits(block, 10, seed=0)["scores"][BUNDLE_RESPLIT_NAME]
    data = block["calibration"]
    right = np.mean(np.asarray(data["candidate"]) & (np.asarray(data["confidence"]) >= 0.55))
    assert 0.5 < right < 0.7  # about 0.8 * 0.45 / 0.6
    # Every candidate from 0.55 up is right and certified; below, the first errors stop the sequence soon. The
    # measured half holds about half of those fields (the halves split the errors, not the confidences).
    assert right - 0.05 < s["coverage_p10"] <= s["coverage_mean"] < right + 0.03
    assert 0.0 <= s["error_mean"] < ALPHA
    stricter = bundle_resplits(block, 10, seed=0, alpha=0.01)["scores"][BUNDLE_RESPLIT_NAME]
    assert stricter["alpha"] == 0.01 and stricter["delta"] == DELTA
    assert stricter["error_mean"] <= s["error_mean"]


def test_evaluate_without_data_needs_resplits(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["evaluate", str(tmp_path)]) == 2
    assert "DATA is required" in capsys.readouterr().err
    assert main(["evaluate", str(tmp_path), "--resplits", "5"]) == 2
    assert "manifest.json not found" in capsys.readouterr().err

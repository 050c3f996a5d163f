from __future__ import annotations

import math

import numpy as np
import pytest

from cds_daemon.analysis.numeric import log_softmax, softmax
from model_build.calibration import fit_temperature, nll


def sample_labels(probs: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One categorical draw per row of ``probs``."""
    u = rng.random(probs.shape[0])
    return np.minimum((u[:, None] > np.cumsum(probs, axis=1)).sum(axis=1), probs.shape[1] - 1)


def test_softmax_is_stable_and_normalised() -> None:
    z = np.array([[1000.0, 0.0, -1000.0], [-1e6, -1e6, -1e6], [0.0, 1.0, 2.0]])
    p = softmax(z)
    assert np.isfinite(p).all()
    np.testing.assert_allclose(p.sum(axis=1), 1.0)
    np.testing.assert_allclose(p[0], [1.0, 0.0, 0.0], atol=1e-300)
    np.testing.assert_allclose(p[1], [1 / 3, 1 / 3, 1 / 3])
    e = np.exp([0.0, 1.0, 2.0])
    np.testing.assert_allclose(p[2], e / e.sum())
    assert np.isfinite(log_softmax(z)).all()


def test_softmax_temperature_and_leading_axes() -> None:
    z = np.random.default_rng(0).normal(0, 3, (4, 13, 3))
    p = softmax(z, 2.5)
    assert p.shape == z.shape
    np.testing.assert_allclose(p, softmax(z / 2.5))
    # A higher temperature flattens every row.
    assert (softmax(z, 10.0).max(axis=-1) <= softmax(z).max(axis=-1) + 1e-12).all()


@pytest.mark.parametrize("t", [0.0, -1.0, math.inf, math.nan])
def test_softmax_rejects_bad_temperature(t: float) -> None:
    with pytest.raises(ValueError, match="temperature"):
        softmax(np.zeros((1, 3)), t)


def test_nll_known_values() -> None:
    assert nll(np.array([[0.5, 0.5]]), np.array([0])) == pytest.approx(math.log(2))
    assert nll(np.array([[0.2, 0.8], [1.0, 0.0]]), np.array([1, 0])) == pytest.approx(-math.log(0.8) / 2)
    # A hard zero on the true class gives a large finite loss, not inf.
    assert math.isfinite(nll(np.array([[1.0, 0.0]]), np.array([1])))


def test_nll_validates_labels() -> None:
    with pytest.raises(ValueError, match="labels must lie"):
        nll(np.array([[0.5, 0.5]]), np.array([2]))
    with pytest.raises(ValueError, match="integers"):
        nll(np.array([[0.5, 0.5]]), np.array([0.0]))
    with pytest.raises(ValueError, match="does not match"):
        nll(np.array([[0.5, 0.5]]), np.array([0, 1]))


def test_fit_temperature_recovers_known_scale() -> None:
    rng = np.random.default_rng(1)
    z = rng.normal(0.0, 2.0, (20000, 3))
    y = sample_labels(softmax(z), rng)
    # The labels are calibrated for z, so logits 3z are over-confident by exactly T = 3.
    assert fit_temperature(3.0 * z, y) == pytest.approx(3.0, rel=0.05)
    assert fit_temperature(z, y) == pytest.approx(1.0, rel=0.05)
    assert fit_temperature(z / 2.0, y) == pytest.approx(0.5, rel=0.05)


def test_fit_temperature_is_a_minimum() -> None:
    rng = np.random.default_rng(2)
    z = rng.normal(0.0, 1.5, (3000, 3))
    y = sample_labels(softmax(z / 1.7), rng)
    t = fit_temperature(z, y)
    best = nll(softmax(z, t), y)
    for other in (t * 0.97, t * 1.03, 1.0):
        assert best <= nll(softmax(z, other), y)


def test_fit_temperature_warns_on_separable_logits() -> None:
    z = np.array([[5.0, 0.0], [0.0, 5.0]] * 10)
    y = np.array([0, 1] * 10)
    with pytest.warns(RuntimeWarning, match="edge"):
        t = fit_temperature(z, y)
    assert t < 0.06


def test_scaling_is_kept_when_it_helps_fields_the_fit_did_not_see() -> None:
    """Overconfident members (true logits times 3): the cross-fitted ECE falls with scaling, so it is kept."""
    from model_build.calibration import choose_temperatures

    rng = np.random.default_rng(7)
    z = rng.normal(0, 1.5, (600, 3))
    y = sample_labels(softmax(z), rng)
    choice = choose_temperatures(3 * z, 3 * z + rng.normal(0, 0.3, z.shape), y)
    assert choice.chosen == "temperature scaling" and choice.cv_ece_scaled < choice.cv_ece_raw
    assert choice.basic > 2.0 and choice.premium > 2.0


def test_raw_is_kept_when_scaling_would_make_the_calibration_error_worse() -> None:
    """A few extremely confident mistakes drive the NLL-optimal temperature up, which makes the many correct,
    well-calibrated fields underconfident: scaling lowers the NLL but raises the ECE, so the raw ensemble stays."""
    from model_build.calibration import choose_temperatures, fit_member_temperatures

    n_right, n_wrong = 380, 20
    z = np.vstack([np.tile([8.0, 0.0, 0.0], (n_right, 1)), np.tile([30.0, 0.0, 0.0], (n_wrong, 1))])
    y = np.array([0] * n_right + [1] * n_wrong)
    assert fit_member_temperatures(z, z, y)[0] > 2.0  # the fit itself wants a large T
    choice = choose_temperatures(z, z, y)
    assert choice.chosen.startswith("raw") and choice.cv_ece_scaled > choice.cv_ece_raw
    assert (choice.basic, choice.premium, choice.ensemble) == (1.0, 1.0, 1.0)

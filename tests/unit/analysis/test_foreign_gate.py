"""Is this a stained cytology field at all? The input-quality gate and the stain gate on foreign images.

The stain gate is fitted as model_build fits it: on held-out in-distribution fields (here, synthetic
fields the model never sees), its threshold at the 99.5th percentile of another set of such fields.
Nothing is fitted on the foreign images; the test half of the corpus judges it.
"""

from __future__ import annotations

import numpy as np
import pytest

from cds_daemon.analysis.quality import assess
from cds_daemon.analysis.stain import stain_distance, stain_features
from cds_daemon.common.config import QualitySettings
from dicom_fixtures.synth import CLASSES, make_field
from model_build.ood import GaussianStats, fit_gaussian
from tests.support.foreign import ForeignImage, foreign_corpus, halves

DIFFICULTY = 0.4  # the demo bundle's


def _fields(first_seed: int, n: int) -> list[np.ndarray]:
    return [make_field(CLASSES[i % 3], first_seed + i, DIFFICULTY) for i in range(n)]


@pytest.fixture(scope="module")
def gate() -> tuple[GaussianStats, float]:
    stats = fit_gaussian(np.array([stain_features(x) for x in _fields(10_000, 120)]))
    calibration = np.array([stain_features(x) for x in _fields(20_000, 120)])
    return stats, float(np.percentile(stain_distance(calibration, stats.mean, stats.precision), 99.5))


def _referred(rgb: np.ndarray, gate: tuple[GaussianStats, float]) -> list[str]:
    """Reasons the daemon's gates give (quality codes, and ood_stain)."""
    stats, threshold = gate
    reasons = [code for code, _ in assess(rgb, was_colour=True, settings=QualitySettings()).reasons]
    if float(stain_distance(stain_features(rgb), stats.mean, stats.precision)) > threshold:
        reasons.append("ood_stain")
    return reasons


@pytest.fixture(scope="module")
def corpus() -> tuple[list[ForeignImage], list[ForeignImage]]:
    return halves(foreign_corpus())


def test_foreign_images_are_referred(
    corpus: tuple[list[ForeignImage], list[ForeignImage]], gate: tuple[GaussianStats, float]
) -> None:
    _, test = corpus
    missed = [(im.name, im.category) for im in test if not _referred(im.rgb, gate)]
    assert len(test) >= 60 and {im.category for im in test} >= {"photograph", "grayscale", "other stain"}
    assert len(missed) <= 0.01 * len(test), missed


def test_in_distribution_fields_pass(gate: tuple[GaussianStats, float]) -> None:
    flagged = [i for i, x in enumerate(_fields(30_000, 150)) if _referred(x, gate)]
    assert len(flagged) <= 0.02 * 150, flagged


def test_stain_features_see_the_stain() -> None:
    field = make_field("benign", 1, DIFFICULTY)
    features = stain_features(field)
    assert features.shape == (12,) and np.isfinite(features).all()
    assert 0.01 < features[0] < 0.9  # tissue on a bright background
    assert stain_features(np.full((768, 1024, 3), 250, np.uint8))[0] == 0.0  # an empty slide has no tissue

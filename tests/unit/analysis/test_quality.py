"""The input-quality gate on the synthetic good and bad fields."""

from __future__ import annotations

import numpy as np
import pytest

from cds_daemon.analysis.quality import assess
from cds_daemon.common.config import QualitySettings
from dicom_fixtures.synth import CLASSES, make_bad_field, make_field

SETTINGS = QualitySettings()


@pytest.mark.parametrize(
    ("kind", "expected"),
    [
        ("blank", "quality_empty_field"),
        ("out_of_focus", "quality_blur"),
        ("overexposed", "quality_overexposed"),
        ("underexposed", "quality_underexposed"),
        ("radiograph", "quality_not_colour"),
    ],
)
def test_bad_fields_fail_with_the_right_reason(kind: str, expected: str) -> None:
    img = make_bad_field(kind, seed=3)
    colour = img.ndim == 3
    rgb = img if colour else np.repeat(img[..., None], 3, axis=2)
    result = assess(rgb, was_colour=colour, settings=SETTINGS)
    assert not result.ok
    assert expected in [code for code, _ in result.reasons]


@pytest.mark.parametrize("label", CLASSES)
def test_cytology_fields_pass(label: str) -> None:
    for seed in range(3):
        result = assess(make_field(label, seed=seed), was_colour=True, settings=SETTINGS)
        assert result.ok, result.reasons


def test_tiny_image_is_too_small() -> None:
    result = assess(np.zeros((1, 1, 3), np.uint8), was_colour=True, settings=SETTINGS)
    assert [code for code, _ in result.reasons] == ["quality_too_small"]

"""Synthetic cytology fields: shape, determinism, class morphology and bad fields."""

import numpy as np
import pytest

from dicom_fixtures.synth import BAD_KINDS, CLASSES, make_bad_field, make_field

ndimage = pytest.importorskip("scipy.ndimage")

SMALL = (192, 256)


def nuclear_areas(img: np.ndarray) -> np.ndarray:
    """Areas of connected purple-blue nuclear blobs found by a fixed colour threshold."""
    r, g, b = (img[..., i].astype(int) for i in range(3))
    labels, _ = ndimage.label((g < 110) & (b > r))
    sizes = np.bincount(labels.ravel())[1:]
    return sizes[sizes >= 30]


def mean_nuclear_area(label: str, difficulty: float, seeds: range) -> float:
    return float(np.mean([nuclear_areas(make_field(label, s, difficulty)).mean() for s in seeds]))


@pytest.mark.parametrize("label", CLASSES)
def test_field_is_full_size_rgb_uint8(label: str) -> None:
    img = make_field(label, 0)
    assert img.shape == (768, 1024, 3)
    assert img.dtype == np.uint8
    assert 150 < img.mean() < 250  # pale background dominates
    assert img.min() < 90  # but there are dark nuclei


def test_custom_size() -> None:
    assert make_field("benign", 1, size=(100, 300)).shape == (100, 300, 3)


@pytest.mark.parametrize("label", CLASSES)
def test_same_seed_same_pixels_different_seed_different(label: str) -> None:
    a = make_field(label, 7, size=SMALL)
    assert np.array_equal(a, make_field(label, 7, size=SMALL))
    assert not np.array_equal(a, make_field(label, 8, size=SMALL))


def test_case_seed_shares_slide_but_not_layout() -> None:
    a = make_field("benign", 1, size=SMALL, case_seed=99)
    b = make_field("benign", 2, size=SMALL, case_seed=99)
    assert not np.array_equal(a, b)
    assert np.array_equal(a, make_field("benign", 1, size=SMALL, case_seed=99))
    assert not np.array_equal(a, make_field("benign", 1, size=SMALL))


def test_classes_order_by_nuclear_area() -> None:
    seeds = range(5)
    areas = {label: mean_nuclear_area(label, 0.3, seeds) for label in CLASSES}
    assert areas["benign"] < areas["indeterminate"] < areas["malignant"]
    assert areas["malignant"] > 1.8 * areas["benign"]


def test_difficulty_pulls_classes_together() -> None:
    seeds = range(5)
    easy = mean_nuclear_area("malignant", 0.0, seeds) / mean_nuclear_area("benign", 0.0, seeds)
    hard = mean_nuclear_area("malignant", 1.0, seeds) / mean_nuclear_area("benign", 1.0, seeds)
    assert hard < easy


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"label": "suspicious", "seed": 0}, "unknown label"),
        ({"label": "benign", "seed": -1}, "seed"),
        ({"label": "benign", "seed": 0, "difficulty": 1.5}, "difficulty"),
        ({"label": "benign", "seed": 0, "size": (8, 8)}, "size"),
    ],
)
def test_make_field_rejects_bad_arguments(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        make_field(**kwargs)


@pytest.fixture(scope="module")
def bad_fields() -> dict[str, np.ndarray]:
    return {kind: make_bad_field(kind, 3) for kind in BAD_KINDS}


def _luma(img: np.ndarray) -> np.ndarray:
    return img.astype(np.float32) if img.ndim == 2 else img.astype(np.float32) @ [0.299, 0.587, 0.114]


def _sharpness(img: np.ndarray) -> float:
    y = _luma(img)
    lap = y[1:-1, 1:-1] * 4 - y[:-2, 1:-1] - y[2:, 1:-1] - y[1:-1, :-2] - y[1:-1, 2:]
    return float(lap.var())


def test_bad_field_shapes(bad_fields: dict[str, np.ndarray]) -> None:
    for kind, img in bad_fields.items():
        assert img.dtype == np.uint8
        expected = (768, 1024) if kind == "radiograph" else (768, 1024, 3)
        assert img.shape == expected, kind


def test_bad_fields_are_what_they_say(bad_fields: dict[str, np.ndarray]) -> None:
    normal = make_field("benign", 3)
    blank = _luma(bad_fields["blank"])
    assert blank.mean() > 200 and blank.std() < 8 and np.percentile(blank, 0.1) > 150
    assert _sharpness(bad_fields["out_of_focus"]) < 0.1 * _sharpness(normal)
    assert (bad_fields["overexposed"] == 255).mean() > 0.5
    assert _luma(bad_fields["underexposed"]).mean() < 40
    radiograph = bad_fields["radiograph"]
    assert radiograph.std() > 30  # real anatomy-like contrast, not a flat field
    natural = bad_fields["natural"].astype(int)
    top, bottom = natural[:150].mean(axis=(0, 1)), natural[-150:].mean(axis=(0, 1))
    assert top[2] > top[0] + 40  # blue sky
    assert bottom[1] > bottom[2]  # green/brown ground


def test_bad_fields_deterministic() -> None:
    for kind in BAD_KINDS:
        a = make_bad_field(kind, 5, size=SMALL)
        assert np.array_equal(a, make_bad_field(kind, 5, size=SMALL)), kind
        assert not np.array_equal(a, make_bad_field(kind, 6, size=SMALL)), kind


def test_unknown_bad_kind() -> None:
    with pytest.raises(ValueError, match="unknown bad-field kind"):
        make_bad_field("smudged", 0)

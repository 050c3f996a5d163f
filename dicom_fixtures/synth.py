"""Public API for synthetic Diff-Quik thyroid FNAB fields and non-cytology/bad fields.

``make_field`` renders one 40x field of a Bethesda-like class; ``make_bad_field`` renders
images the quality/OOD gate must reject. Both are deterministic functions of their
arguments (same seed, same pixels on the same platform and numpy build).
"""

import numpy as np

from .bad_fields import BAD_KINDS, render_bad_field
from .field import render_field, sample_slide, warm_up
from .morphology import CLASSES, check_difficulty, check_label

__all__ = ["BAD_KINDS", "CLASSES", "latent_severity", "make_bad_field", "make_field", "warm_up"]


def _check_common(seed: int, size: tuple[int, int]) -> None:
    if not isinstance(seed, int | np.integer) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    if len(size) != 2 or min(size) < 16 or max(size) > 8192:
        raise ValueError(f"size must be (rows, cols) with each within [16, 8192], got {size!r}")


def make_field(
    label: str,
    seed: int,
    difficulty: float = 0.5,
    size: tuple[int, int] = (768, 1024),
    *,
    case_seed: int | None = None,
) -> np.ndarray:
    """Render an HxWx3 uint8 cytology field of class ``label`` (one of ``CLASSES``).

    ``difficulty`` in [0, 1] pulls the classes' morphology together and adds variation
    (0: nearly separable, 1: heavily overlapping). Fields given the same ``case_seed``
    come from one slide: they share stain, blood, focus and atypia level while their
    cell layout still differs by ``seed``.
    """
    check_label(label)
    check_difficulty(difficulty)
    _check_common(seed, size)
    slide_rng = np.random.default_rng([int(seed if case_seed is None else case_seed), 0x51DE])
    slide = sample_slide(label, slide_rng, difficulty)
    rng = np.random.default_rng([int(seed), 0xF1E1D])
    return render_field(label, slide, rng, difficulty, (int(size[0]), int(size[1])))


def latent_severity(label: str, seed: int, difficulty: float = 0.5, *, case_seed: int | None = None) -> float:
    """The slide's latent atypia severity behind ``make_field`` with the same arguments (no rendering)."""
    check_label(label)
    check_difficulty(difficulty)
    slide_rng = np.random.default_rng([int(seed if case_seed is None else case_seed), 0x51DE])
    return sample_slide(label, slide_rng, difficulty).severity


def make_bad_field(kind: str, seed: int, size: tuple[int, int] = (768, 1024)) -> np.ndarray:
    """Render a field the quality/OOD gate should reject; ``kind`` is one of ``BAD_KINDS``.

    "radiograph" is HxW uint8 grayscale; every other kind is HxWx3 uint8.
    """
    if kind not in BAD_KINDS:
        raise ValueError(f"unknown bad-field kind {kind!r}; expected one of {', '.join(BAD_KINDS)}")
    _check_common(seed, size)
    return render_bad_field(kind, np.random.default_rng([int(seed), 0xBAD]), (int(size[0]), int(size[1])))

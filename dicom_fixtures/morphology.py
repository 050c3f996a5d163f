"""Bethesda-like morphology as a function of one latent atypia severity.

Severity 0 is a benign follicular pattern (small round uniform nuclei, flat honeycomb
sheets, abundant watery colloid), 1 is papillary carcinoma (enlarged, crowded,
overlapping, oval, irregular, grooved nuclei with pseudo-inclusions, papillary groups,
scant dense colloid) and 0.5 the indeterminate middle (microfollicles, partial
nuclear changes). Classes are distributions over severity whose overlap grows with
difficulty, so a classifier can learn them but not perfectly.
"""

from dataclasses import dataclass

import numpy as np

CLASSES = ("benign", "indeterminate", "malignant")
ARRANGEMENTS = ("sheet", "crowded", "papillary", "microfollicle")
_CENTRE = {"benign": 0.0, "indeterminate": 0.5, "malignant": 1.0}

# Profile value at severity 0, 0.5 and 1; linear in between.
_PROFILE: dict[str, tuple] = {
    "nuc_radius": (10.5, 13.5, 17.0),
    "radius_cv": (0.07, 0.13, 0.19),
    "spacing": (1.75, 1.3, 0.95),  # centre distance / nuclear diameter within groups
    "jitter": (0.11, 0.2, 0.3),  # positional noise, fraction of spacing
    "nuc_density": (1.0, 0.88, 0.72),  # powdery, paler chromatin in papillary carcinoma
    "density_cv": (0.07, 0.12, 0.16),
    "cyto_density": (0.55, 0.7, 0.95),
    "colloid": (0.32, 0.12, 0.05),  # fraction of the field covered
    "thick_colloid": (0.05, 0.25, 0.5),  # chance that colloid is dense "bubble-gum"
    "naked_nuclei": (0.45, 0.25, 0.1),  # fraction of single cells without cytoplasm
    "kinds": (
        (0.82, 0.16, 0.02, 0.0, 0.0),
        (0.3, 0.38, 0.16, 0.13, 0.03),
        (0.04, 0.26, 0.26, 0.32, 0.12),
    ),
    "arrangements": (
        (0.85, 0.0, 0.0, 0.15),
        (0.25, 0.2, 0.05, 0.5),
        (0.08, 0.37, 0.55, 0.0),
    ),
}


@dataclass(frozen=True)
class Morphology:
    nuc_radius: float
    radius_cv: float
    spacing: float
    jitter: float
    nuc_density: float
    density_cv: float
    cyto_density: float
    colloid: float
    thick_colloid: float
    naked_nuclei: float
    kinds: np.ndarray  # probabilities over shapes.NUCLEUS_KINDS (same order)
    arrangements: np.ndarray  # probabilities over ARRANGEMENTS


def _interp(values: tuple, s: float) -> np.ndarray:
    lo, mid, hi = (np.asarray(v, np.float64) for v in values)
    if s <= 0.5:
        return lo + (mid - lo) * (s / 0.5)
    return mid + (hi - mid) * ((s - 0.5) / 0.5)


def morphology_at(severity: float) -> Morphology:
    """Morphology parameters for a severity (clipped to [0, 1])."""
    s = float(np.clip(severity, 0.0, 1.0))
    vals = {k: _interp(v, s) for k, v in _PROFILE.items()}
    kinds = vals.pop("kinds")
    arrangements = vals.pop("arrangements")
    return Morphology(
        **{k: float(v) for k, v in vals.items()},
        kinds=kinds / kinds.sum(),
        arrangements=arrangements / arrangements.sum(),
    )


def check_label(label: str) -> None:
    if label not in CLASSES:
        raise ValueError(f"unknown label {label!r}; expected one of {', '.join(CLASSES)}")


def check_difficulty(difficulty: float) -> None:
    if not 0.0 <= difficulty <= 1.0:
        raise ValueError(f"difficulty must be within [0, 1], got {difficulty}")


def severity_distribution(label: str, difficulty: float) -> tuple[float, float]:
    """(mean, sd) of a class's latent severity: class centres pulled together and spread by difficulty."""
    return 0.5 + (_CENTRE[label] - 0.5) * (1.0 - 0.5 * difficulty), 0.05 + 0.2 * difficulty


def field_severity(label: str, rng: np.random.Generator, difficulty: float) -> float:
    """Latent severity of one field/case, drawn from ``severity_distribution``."""
    centre, sd = severity_distribution(label, difficulty)
    return float(centre + rng.normal(0.0, sd))


def group_severities(label: str, field: float, n: int, rng: np.random.Generator, difficulty: float) -> np.ndarray:
    """Per-group severities; indeterminate fields mix benign-looking and atypical groups."""
    spread = 0.06 + 0.08 * difficulty
    sev = field + rng.normal(0.0, spread, n)
    if label == "indeterminate":
        sev += rng.choice((-0.2, 0.2), n)
    return sev

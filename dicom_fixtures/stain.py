"""Diff-Quik stain model: per-structure optical-density colours and their random variation.

Fields are rendered in optical density (Beer-Lambert): each structure adds
``density * colour_od`` and the image is ``white * exp(-OD)``. Overlapping nuclei therefore
darken the way real crowded, overlapping nuclei do, and stain hue and strength vary by
scaling the colour vectors.
"""

from dataclasses import dataclass

import numpy as np

# Appearance of each structure at unit density on a white (255) background.
_BASE_RGB = {
    "nucleus": (112, 84, 168),  # purple-blue (azure + eosin)
    "cytoplasm": (172, 180, 218),  # pale blue-grey
    "colloid": (178, 150, 212),  # blue-violet to magenta
    "rbc": (238, 184, 176),  # pink-salmon
    "haze": (248, 236, 244),  # serum/protein background tint
}


def od_of(rgb: tuple[int, int, int]) -> np.ndarray:
    return -np.log(np.asarray(rgb, np.float32) / 255.0)


@dataclass(frozen=True)
class Palette:
    nucleus: np.ndarray
    cytoplasm: np.ndarray
    colloid: np.ndarray
    rbc: np.ndarray
    haze: np.ndarray
    white: np.ndarray  # illumination colour, 0..255 per channel


def sample_palette(rng: np.random.Generator, variation: float = 1.0) -> Palette:
    """A slide's stain: base colours with random hue/strength shifts scaled by ``variation``."""

    def jitter(name: str, hue: float, strength: float) -> np.ndarray:
        od = od_of(_BASE_RGB[name])
        od = od * np.exp(rng.normal(0.0, hue * variation, 3)).astype(np.float32)
        return (od * np.exp(rng.normal(0.0, strength * variation))).astype(np.float32)

    warm = rng.normal(0.0, 0.025 * variation)
    white = 250.0 * np.exp(np.array([warm, 0.0, -warm], np.float32)) * rng.uniform(0.96, 1.02)
    return Palette(
        nucleus=jitter("nucleus", 0.08, 0.12),
        cytoplasm=jitter("cytoplasm", 0.12, 0.2),
        colloid=jitter("colloid", 0.12, 0.2),
        rbc=jitter("rbc", 0.1, 0.15),
        haze=jitter("haze", 0.3, 0.5),
        white=np.minimum(white, 255.0).astype(np.float32),
    )

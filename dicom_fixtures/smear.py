"""A synthetic thyroid FNAB smear as a whole slide: cell groups, blood and empty glass, and where each lies.

The slide is a grid of cells of 1280 x 960 px at :data:`FIELD_MPP`; some cells hold a field of
follicular cells (rendered as :func:`dicom_fixtures.synth.make_field` renders one, all from one slide's
stain and atypia), some a patch of blood, the rest stay empty glass. Patches are blended into the glass
in optical density with feathered edges. With several focal planes, the middle one is in focus and the
others are blurred versions of it, so the sharpest plane of every field is known.
"""

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageFilter

from .bad_fields import render_bad_field
from .field import render_blood, render_field, sample_slide
from .modules import FIELD_MPP
from .morphology import check_difficulty, check_label

FIELD_ROWS, FIELD_COLS = 768, 1024
CELL_ROWS, CELL_COLS = 960, 1280
FEATHER_PX = 48
#: Blur (Gaussian sigma, px) of each plane's distance from the focused one.
DEFOCUS_PER_PLANE = 2.5


@dataclass(frozen=True)
class Patch:
    """A rectangle of the smear in level-0 pixels (top-left origin): ``kind`` is "cells" or "blood"."""

    kind: str
    x: int
    y: int
    width: int
    height: int


@dataclass(frozen=True)
class Smear:
    label: str
    planes: tuple[np.ndarray, ...]  # level-0 HxWx3 uint8 per focal plane, nearest the glass first
    sharpest: int
    patches: tuple[Patch, ...]
    mpp: float = FIELD_MPP
    plane_spacing_um: float = 1.0

    @property
    def shape(self) -> tuple[int, int]:
        rows, cols = self.planes[0].shape[:2]
        return int(rows), int(cols)

    def informative(self) -> tuple[Patch, ...]:
        return tuple(p for p in self.patches if p.kind == "cells")


def _od(rgb: np.ndarray) -> np.ndarray:
    return np.asarray(-np.log((rgb.astype(np.float32) + 0.5) / 256.0), np.float32)


def _feather(rows: int, cols: int) -> np.ndarray:
    ramp_r = np.clip(np.minimum(np.arange(rows), np.arange(rows)[::-1]) / FEATHER_PX, 0.0, 1.0)
    ramp_c = np.clip(np.minimum(np.arange(cols), np.arange(cols)[::-1]) / FEATHER_PX, 0.0, 1.0)
    return np.asarray(np.minimum(ramp_r[:, None], ramp_c[None, :])[..., None], np.float32)


def make_smear(
    label: str,
    seed: int,
    *,
    grid: tuple[int, int] = (4, 6),
    cell_patches: int = 6,
    blood_patches: int = 3,
    difficulty: float = 0.5,
    focal_planes: int = 1,
) -> Smear:
    """Render a smear of class ``label``; ``grid`` is (rows, columns) of 1280 x 960 px cells.

    ``cell_patches=0`` makes a slide with nothing to analyse (glass and blood only).
    """
    check_label(label)
    check_difficulty(difficulty)
    if min(grid) < 1 or cell_patches + blood_patches > grid[0] * grid[1] or min(cell_patches, blood_patches) < 0:
        raise ValueError(f"{cell_patches} cell and {blood_patches} blood patches do not fit a {grid} grid")
    if focal_planes < 1 or focal_planes % 2 == 0:
        raise ValueError("focal_planes must be an odd number >= 1 (the middle one is in focus)")
    rng = np.random.default_rng([seed, 0x5E4A])
    slide = sample_slide(label, np.random.default_rng([seed, 0x51DE]), difficulty)
    rows, cols = grid[0] * CELL_ROWS, grid[1] * CELL_COLS
    image = render_bad_field("blank", rng, (rows, cols))
    order = rng.permutation(grid[0] * grid[1])
    patches: list[Patch] = []
    for n, index in enumerate(order[: cell_patches + blood_patches]):
        r, c = divmod(int(index), grid[1])
        y = r * CELL_ROWS + int(rng.integers(0, CELL_ROWS - FIELD_ROWS))
        x = c * CELL_COLS + int(rng.integers(0, CELL_COLS - FIELD_COLS))
        field_rng = np.random.default_rng([seed, n, 0xF1E1D])
        if n < cell_patches:
            pixels = render_field(label, slide, field_rng, difficulty, (FIELD_ROWS, FIELD_COLS))
            kind = "cells"
        else:
            pixels = render_blood(slide, field_rng, (FIELD_ROWS, FIELD_COLS))
            kind = "blood"
        region = image[y : y + FIELD_ROWS, x : x + FIELD_COLS]
        mask = _feather(FIELD_ROWS, FIELD_COLS)
        od = _od(region) * (1.0 - mask) + _od(pixels) * mask
        region[...] = np.clip(256.0 * np.exp(-od) - 0.5, 0, 255).astype(np.uint8)
        patches.append(Patch(kind, x, y, FIELD_COLS, FIELD_ROWS))
    sharpest = focal_planes // 2
    planes = []
    for z in range(focal_planes):
        sigma = abs(z - sharpest) * DEFOCUS_PER_PLANE
        planes.append(
            image if sigma == 0 else np.asarray(Image.fromarray(image).filter(ImageFilter.GaussianBlur(sigma)))
        )
    return Smear(label, tuple(planes), sharpest, tuple(patches))

"""Compose one synthetic Diff-Quik thyroid FNAB field at 40x.

Smooth structures (background haze, colloid, cytoplasm, illumination) are rendered at
half resolution and upsampled; nuclei and red cells are stamped at full resolution.
"""

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

from . import layout
from .morphology import ARRANGEMENTS, Morphology, field_severity, group_severities, morphology_at
from .optics import develop, smooth_layer, to_od, vignetting_od
from .shapes import (
    FOCUS_LEVELS,
    NUCLEUS_KINDS,
    RADII,
    VARIANTS,
    blob,
    focus_level,
    nucleus_bank,
    orient,
    rbc_bank,
    ring,
    stamp,
)
from .stain import Palette, sample_palette
from .textures import NOISE_CELLS, fractal_tile, noise_crop

REFERENCE_AREA = 768 * 1024


def warm_up() -> None:
    """Build the per-process caches (stamp banks, noise tiles) now rather than on first use."""
    for level in range(len(FOCUS_LEVELS)):
        nucleus_bank(level)
        rbc_bank(level)
    for cell in NOISE_CELLS:
        fractal_tile(cell)


@dataclass(frozen=True)
class Slide:
    """Case-level properties shared by all fields from one slide."""

    palette: Palette
    severity: float
    blood: float
    blur: float


def sample_slide(label: str, rng: np.random.Generator, difficulty: float) -> Slide:
    """Draw a slide: stain, atypia severity, amount of blood and focus quality."""
    return Slide(
        palette=sample_palette(rng, variation=0.6 + 0.8 * difficulty),
        severity=field_severity(label, rng, difficulty),
        blood=float(rng.beta(1.3, 2.0)),
        blur=float(rng.uniform(0.35, 0.7 + 0.5 * difficulty)),
    )


@dataclass
class _Cells:
    pos: list[np.ndarray]
    morph: list[Morphology]
    naked: list[np.ndarray]
    borders: list[bool]  # flat sheet: draw honeycomb cell borders


def _group(
    rng: np.random.Generator, arrangement: str, m: Morphology, shape: tuple[int, int], scale: float
) -> np.ndarray:
    centre = rng.uniform(0.1, 0.9, 2) * np.array(shape)
    spacing = m.spacing * 2 * m.nuc_radius
    size = rng.uniform(70, 210) * scale
    if arrangement == "sheet":
        return layout.hex_sheet(rng, centre, size, spacing, m.jitter)
    if arrangement == "crowded":
        return layout.crowded_sheet(rng, centre, size * 0.8, spacing, m.jitter)
    if arrangement == "papillary":
        width = rng.uniform(5, 9) * m.nuc_radius
        return layout.papillary(rng, centre, size * 2.2, width, spacing * 0.9)
    return layout.microfollicles(rng, centre, size * 0.8, m.nuc_radius, m.spacing)


def _collect_cells(
    label: str, slide: Slide, rng: np.random.Generator, difficulty: float, shape: tuple[int, int]
) -> _Cells:
    area = shape[0] * shape[1] / REFERENCE_AREA
    scale = min(1.0, area**0.5)
    n_groups = max(1, int(rng.poisson(2.3 * area)) + (1 if area > 0.2 else 0))
    cells = _Cells([], [], [], [])
    for sev in group_severities(label, slide.severity, n_groups, rng, difficulty):
        m = morphology_at(sev)
        arrangement = ARRANGEMENTS[int(rng.choice(len(ARRANGEMENTS), p=m.arrangements))]
        pos = _group(rng, arrangement, m, shape, scale)
        cells.pos.append(pos)
        cells.morph.append(m)
        cells.naked.append(np.zeros(len(pos), bool))
        cells.borders.append(arrangement == "sheet")
    m = morphology_at(slide.severity + rng.normal(0, 0.05))
    n_single = int(rng.integers(8, 30) * area)
    cells.pos.append(layout.scatter(rng, shape, n_single))
    cells.morph.append(m)
    cells.naked.append(rng.random(n_single) < m.naked_nuclei)
    cells.borders.append(False)
    return cells


def _colloid(rng: np.random.Generator, m: Morphology, shape: tuple[int, int]) -> np.ndarray:
    """Colloid density at half resolution: watery cracked film or dense rounded 'bubble-gum'."""
    coverage = float(np.clip(m.colloid * rng.uniform(0.3, 1.8), 0.0, 0.8))
    if coverage < 0.01:
        return np.zeros(shape, np.float32)
    thick = rng.random() < m.thick_colloid
    if thick:
        coverage *= 0.5
    noise = noise_crop(rng, shape, cell=rng.uniform(60, 140) if not thick else rng.uniform(40, 70))
    thr = np.quantile(noise[::4, ::4], 1.0 - coverage)
    soft = 0.2 if thick else 0.35
    mask = np.clip((noise - thr) / soft, 0.0, 1.0)
    if thick:
        return mask * rng.uniform(0.9, 1.5) * (1.0 + 0.15 * noise_crop(rng, shape, cell=20))
    film = mask * rng.uniform(0.35, 0.7) * (1.0 + 0.25 * noise_crop(rng, shape, cell=30))
    cracks = Image.new("L", (shape[1], shape[0]), 0)
    draw = ImageDraw.Draw(cracks)
    for _ in range(int(rng.integers(4, 14))):
        p = rng.uniform(0, 1, 2) * np.array([shape[1], shape[0]])
        heading = rng.uniform(0, 2 * np.pi)
        pts = [tuple(p)]
        for _ in range(int(rng.integers(3, 10))):
            heading += rng.normal(0, 0.6)
            p = p + rng.uniform(8, 30) * np.array([np.cos(heading), np.sin(heading)])
            pts.append(tuple(p))
        draw.line(pts, fill=255, width=1)
    return film * (1.0 - 0.85 * np.asarray(cracks, np.float32) / 255.0)


def _stamp_cytoplasm(lowres: np.ndarray, cells: _Cells, rng: np.random.Generator) -> None:
    for pos, m, naked in zip(cells.pos, cells.morph, cells.naked, strict=True):
        r = max(2, round(m.spacing * m.nuc_radius * 0.75))
        tmpl = blob(r)
        for (y, x), bare in zip(pos, naked, strict=True):
            if not bare:
                stamp(lowres, tmpl, int(y / 2), int(x / 2), rng.uniform(0.7, 1.0))


def _stamp_borders(lowres: np.ndarray, cells: _Cells, rng: np.random.Generator) -> None:
    """Faint cell membranes of flat sheets: overlapping rings read as a honeycomb."""
    for pos, m, flat in zip(cells.pos, cells.morph, cells.borders, strict=True):
        if not flat:
            continue
        tmpl = ring(round(max(3.0, m.spacing * m.nuc_radius * 0.6) * 2) / 2)
        for y, x in pos:
            stamp(lowres, tmpl, int(y / 2), int(x / 2), rng.uniform(0.25, 0.45))


def _stamp_nuclei(density: np.ndarray, cells: _Cells, rng: np.random.Generator, level: int) -> None:
    bank = nucleus_bank(level)
    for pos, m in zip(cells.pos, cells.morph, strict=True):
        n = len(pos)
        radii = m.nuc_radius * np.exp(rng.normal(0, m.radius_cv, n))
        r_idx = np.clip(np.rint(radii).astype(int) - int(RADII[0]), 0, len(RADII) - 1)
        kinds = rng.choice(len(NUCLEUS_KINDS), n, p=m.kinds)
        variants = rng.integers(0, VARIANTS, n)
        codes = rng.integers(0, 8, n)
        dens = m.nuc_density * np.exp(rng.normal(0, m.density_cv, n))
        yx = np.rint(pos).astype(int)
        for i in range(n):
            tmpl = orient(bank[NUCLEUS_KINDS[kinds[i]]][r_idx[i]][variants[i]], int(codes[i]))
            stamp(density, tmpl, yx[i, 0], yx[i, 1], dens[i])


def _stamp_blood(density: np.ndarray, blood: float, rng: np.random.Generator, level: int) -> None:
    area = density.shape[0] * density.shape[1] / REFERENCE_AREA
    n = int(blood * 900 * area)
    if n == 0:
        return
    bank = rbc_bank(level)
    pos = np.rint(layout.smear_clusters(rng, density.shape, n)).astype(int)
    which = rng.integers(0, len(bank), n)
    dens = rng.uniform(0.55, 1.0, n)
    for i in range(n):
        stamp(density, bank[which[i]], pos[i, 0], pos[i, 1], dens[i])


def render_field(
    label: str,
    slide: Slide,
    rng: np.random.Generator,
    difficulty: float,
    size: tuple[int, int],
    exposure: float = 1.0,
) -> np.ndarray:
    """Render one HxWx3 uint8 field of class ``label`` from a slide and a field RNG.

    ``exposure`` scales the transmitted light (bad fields use it for over/under exposure).
    """
    h, w = size
    half = ((h + 1) // 2, (w + 1) // 2)
    pal = slide.palette
    overall = morphology_at(slide.severity)
    cells = _collect_cells(label, slide, rng, difficulty, size)

    density = np.zeros((3, *half), np.float32)  # cytoplasm, colloid, haze
    cyto = density[0]
    _stamp_cytoplasm(cyto, cells, rng)
    cyto -= 0.35
    np.clip(cyto * 2.5, 0.0, 1.0, out=cyto)  # merge overlapping cell blobs into sheets with an edge
    cyto *= overall.cyto_density * (0.6 + 0.4 * noise_crop(rng, half, cell=40) ** 2)
    borders = np.zeros(half, np.float32)
    _stamp_borders(borders, cells, rng)
    cyto += borders * cyto  # membranes only inside sheets
    density[1] = _colloid(rng, overall, half)
    density[2] = rng.uniform(0.2, 0.8) * (1.0 + 0.4 * noise_crop(rng, half, cell=80))
    low = to_od(density, np.stack([pal.cytoplasm, pal.colloid, pal.haze]))
    low += vignetting_od(rng, half, rng.uniform(0.02, 0.15))
    low += -np.log(pal.white / 255.0)[:, None, None]
    light = smooth_layer(low, size)

    # Sharp layer: per-stain density planes, mapped to OD in one matrix product.
    sharp = np.zeros((2, h, w), np.float32)
    level = focus_level(slide.blur * rng.uniform(0.85, 1.15))
    _stamp_nuclei(sharp[0], cells, rng, level)
    _stamp_blood(sharp[1], slide.blood, rng, level)
    od = to_od(sharp, np.stack([pal.nucleus, pal.rbc]))
    return develop(od, light, rng, noise_sigma=rng.uniform(1.0, 3.5), exposure=exposure)


def render_blood(slide: Slide, rng: np.random.Generator, size: tuple[int, int]) -> np.ndarray:
    """A bloody patch of a smear: serum haze and red cells, no follicular cells (never informative)."""
    h, w = size
    half = ((h + 1) // 2, (w + 1) // 2)
    pal = slide.palette
    haze = rng.uniform(0.3, 0.9) * (1.0 + 0.4 * noise_crop(rng, half, cell=80))
    low = to_od(haze[None].astype(np.float32), pal.haze[None])
    low += -np.log(pal.white / 255.0)[:, None, None]
    light = smooth_layer(low, size)
    sharp = np.zeros((1, h, w), np.float32)
    _stamp_blood(sharp[0], 1.0, rng, focus_level(slide.blur))
    od = to_od(sharp, pal.rbc[None])
    return develop(od, light, rng, noise_sigma=rng.uniform(1.0, 3.0))

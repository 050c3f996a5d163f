"""Precomputed stamp banks (nuclei, red cells, soft blobs) and the stamping primitive.

Rendering a field stamps a few hundred small density templates into an optical-density
canvas. Building each nucleus from scratch costs ~100 µs, so templates are generated
once per process from a fixed seed and picked per cell; random flips/transposes give
eight orientations of each for free.
"""

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from .textures import gaussian_blur

NUCLEUS_KINDS = ("round", "oval", "irregular", "grooved", "inclusion")
RADII = np.arange(6, 31)  # nuclear semi-major axis in pixels (about 0.3 µm/pixel at 40x)
VARIANTS = 6


@dataclass(frozen=True)
class _Shape:
    aspect: tuple[float, float]
    irregularity: tuple[float, float]
    groove: bool = False
    inclusion: bool = False


_KIND_SHAPES = {
    "round": _Shape((0.86, 1.0), (0.01, 0.04)),
    "oval": _Shape((0.62, 0.85), (0.02, 0.07)),
    "irregular": _Shape((0.55, 0.9), (0.09, 0.17)),
    "grooved": _Shape((0.5, 0.78), (0.03, 0.12), groove=True),
    "inclusion": _Shape((0.7, 0.95), (0.03, 0.1), inclusion=True),
}


def _chromatin(rng: np.random.Generator, size: int, grain: float) -> np.ndarray:
    raw = rng.standard_normal((size, size)).astype(np.float32)
    tex = gaussian_blur(raw, grain)
    return tex / (tex.std() + 1e-6)


def make_nucleus(rng: np.random.Generator, radius: float, shape: _Shape) -> np.ndarray:
    """One nucleus as a density map (~1 inside, 0 outside) with chromatin, rim and features."""
    half = int(np.ceil(radius * 1.3)) + 2
    size = 2 * half + 1
    y, x = np.mgrid[-half : half + 1, -half : half + 1].astype(np.float32)
    theta = rng.uniform(0, np.pi)
    c, s = np.cos(theta), np.sin(theta)
    u = x * c + y * s
    v = -x * s + y * c
    a = radius
    b = radius * rng.uniform(*shape.aspect)
    phi = np.arctan2(v / b, u / a)
    irr = rng.uniform(*shape.irregularity)
    boundary = np.ones_like(phi)
    for k in (2, 3, 4, 5):
        boundary += irr * rng.normal(0, 1.0 / k**0.5) * np.cos(k * phi + rng.uniform(0, 2 * np.pi))
    rho = np.sqrt((u / a) ** 2 + (v / b) ** 2) / np.maximum(boundary, 0.5)
    depth = (1.0 - rho) * b  # signed distance-ish to the membrane, in pixels
    mask = np.clip(depth + 0.5, 0.0, 1.0)

    grain = rng.uniform(0.6, 1.4)
    tex = _chromatin(rng, size, grain)
    density = mask * (1.0 + rng.uniform(0.2, 0.35) * tex)
    density += 0.35 * np.exp(-((depth - 1.0) ** 2) / 1.5) * mask  # nuclear membrane
    if shape.groove:
        bend = rng.normal(0, 0.02)
        off = rng.normal(0, 0.12) * b
        dist = np.abs(v - bend * u**2 - off)
        along = np.clip(1.0 - (np.abs(u) / (0.85 * a)) ** 4, 0.0, 1.0)
        density += 1.3 * np.exp(-((dist / 1.0) ** 2)) * along * mask
    if shape.inclusion:
        r_in = rng.uniform(0.28, 0.42) * b
        cu, cv = rng.normal(0, 0.2) * a, rng.normal(0, 0.15) * b
        d_in = np.sqrt((u - cu) ** 2 + (v - cv) ** 2)
        hole = np.clip(r_in - d_in + 0.5, 0.0, 1.0)
        ring = np.exp(-((d_in - r_in - 0.6) ** 2) / 0.8)
        density = density * (1.0 - 0.88 * hole) + 0.6 * ring * mask
    return density.astype(np.float32)


FOCUS_LEVELS = (0.45, 0.8, 1.15)  # optical blur sigmas (pixels) baked into the banks


def focus_level(sigma: float) -> int:
    """Index of the bank focus level closest to a requested blur sigma."""
    return int(np.argmin([abs(sigma - f) for f in FOCUS_LEVELS]))


def _defocus(tmpl: np.ndarray, sigma: float) -> np.ndarray:
    pad = int(np.ceil(2 * sigma))
    return gaussian_blur(np.pad(tmpl, pad), sigma)


@lru_cache(maxsize=1)
def _sharp_nuclei() -> dict[str, list[list[np.ndarray]]]:
    rng = np.random.default_rng(20240611)
    return {
        kind: [[make_nucleus(rng, float(r), _KIND_SHAPES[kind]) for _ in range(VARIANTS)] for r in RADII]
        for kind in NUCLEUS_KINDS
    }


@lru_cache(maxsize=len(FOCUS_LEVELS))
def nucleus_bank(level: int = 0) -> dict[str, list[list[np.ndarray]]]:
    """``bank[kind][radius_index][variant]`` density templates at one focus level.

    Blurring a few hundred small templates once is far cheaper than blurring every
    full-size field, and camera noise is added after optics anyway.
    """
    sigma = FOCUS_LEVELS[level]
    return {kind: [[_defocus(t, sigma) for t in row] for row in rows] for kind, rows in _sharp_nuclei().items()}


def _disc(radius: float, aspect: float, pallor: float) -> np.ndarray:
    half = int(np.ceil(radius)) + 2
    y, x = np.mgrid[-half : half + 1, -half : half + 1].astype(np.float32)
    rho = np.sqrt(x**2 + (y / aspect) ** 2)
    mask = np.clip(radius - rho + 0.5, 0.0, 1.0)
    rel = np.clip(rho / radius, 0.0, 1.0)
    body = 1.0 - pallor * np.exp(-((rel / 0.55) ** 2))  # biconcave: pale centre
    rim = 0.25 * np.exp(-(((rel - 0.92) / 0.1) ** 2))
    return (mask * (body + rim)).astype(np.float32)


@lru_cache(maxsize=len(FOCUS_LEVELS))
def rbc_bank(level: int = 0) -> list[np.ndarray]:
    """Red blood cell templates (about 7.5 µm, central pallor), a few sizes and ellipticities."""
    rng = np.random.default_rng(7)
    sigma = FOCUS_LEVELS[level]
    return [
        _defocus(_disc(rng.uniform(10.0, 12.5), rng.uniform(0.85, 1.0), rng.uniform(0.35, 0.6)), sigma)
        for _ in range(24)
    ]


@lru_cache(maxsize=64)
def blob(radius: int) -> np.ndarray:
    """Gaussian blob whose 1/e radius is ``radius``: used for soft cytoplasm and colloid."""
    half = int(radius * 2.2) + 1
    y, x = np.mgrid[-half : half + 1, -half : half + 1].astype(np.float32)
    return np.exp(-(x**2 + y**2) / float(radius) ** 2).astype(np.float32)


@lru_cache(maxsize=64)
def ring(radius: float) -> np.ndarray:
    """Thin soft ring (a cell membrane seen at half resolution)."""
    half = int(np.ceil(radius)) + 2
    y, x = np.mgrid[-half : half + 1, -half : half + 1].astype(np.float32)
    return np.exp(-(((np.hypot(x, y) - radius) / 0.7) ** 2)).astype(np.float32)


def orient(tmpl: np.ndarray, code: int) -> np.ndarray:
    """One of the eight dihedral orientations of a square template (views, no copy)."""
    if code & 1:
        tmpl = tmpl[::-1]
    if code & 2:
        tmpl = tmpl[:, ::-1]
    if code & 4:
        tmpl = tmpl.T
    return tmpl


def stamp(canvas: np.ndarray, tmpl: np.ndarray, cy: int, cx: int, color: np.ndarray | float) -> None:
    """Add ``tmpl * color`` centred at (cy, cx) into ``canvas`` (2-D or HxWxC), clipped at borders."""
    h, w = tmpl.shape
    y0, x0 = cy - h // 2, cx - w // 2
    y1, x1 = y0 + h, x0 + w
    ty0, tx0 = max(0, -y0), max(0, -x0)
    ty1 = h - max(0, y1 - canvas.shape[0])
    tx1 = w - max(0, x1 - canvas.shape[1])
    if ty0 >= ty1 or tx0 >= tx1:
        return
    part = tmpl[ty0:ty1, tx0:tx1]
    region = canvas[y0 + ty0 : y0 + ty1, x0 + tx0 : x0 + tx1]
    if canvas.ndim == 3:
        region += part[..., None] * color
    else:
        region += part * color

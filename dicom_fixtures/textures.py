"""Cheap random fields: smooth value noise and reusable camera-noise tiles."""

from functools import lru_cache

import numpy as np
from PIL import Image


def resize_float(arr: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of a 2-D float array to ``shape`` (rows, cols) using PIL."""
    img = Image.fromarray(np.ascontiguousarray(arr, dtype=np.float32))
    return np.asarray(img.resize((shape[1], shape[0]), Image.Resampling.BILINEAR))


def smooth_noise(rng: np.random.Generator, shape: tuple[int, int], cell: float) -> np.ndarray:
    """Zero-mean, unit-ish variance value noise with features about ``cell`` pixels wide."""
    gh = max(2, round(shape[0] / cell) + 2)
    gw = max(2, round(shape[1] / cell) + 2)
    coarse = rng.standard_normal((gh, gw)).astype(np.float32)
    img = Image.fromarray(coarse).resize((shape[1], shape[0]), Image.Resampling.BICUBIC)
    return np.asarray(img)


def fractal_noise(
    rng: np.random.Generator, shape: tuple[int, int], cell: float, octaves: int = 3, gain: float = 0.5
) -> np.ndarray:
    """Sum of value-noise octaves (coarse to fine), normalised to unit standard deviation.

    Octaves are summed at half resolution and upsampled once: the finest octave is at
    least 1.5 working pixels wide, so nothing visible is lost and it is ~3x cheaper.
    """
    work = ((shape[0] + 1) // 2, (shape[1] + 1) // 2)
    out = np.zeros(work, np.float32)
    amp = 1.0
    for i in range(octaves):
        out += amp * smooth_noise(rng, work, max(cell / 2 ** (i + 1), 1.5))
        amp *= gain
    out /= out.std() + 1e-6
    return resize_float(out, shape)


NOISE_CELLS = (20, 30, 40, 60, 90, 130)
_TILE = 1024


@lru_cache(maxsize=len(NOISE_CELLS))
def fractal_tile(cell: int) -> np.ndarray:
    """The cached 1024x1024 fractal-noise tile for one of ``NOISE_CELLS``."""
    return fractal_noise(np.random.default_rng(cell), (_TILE, _TILE), float(cell))


def noise_crop(rng: np.random.Generator, shape: tuple[int, int], cell: float) -> np.ndarray:
    """Fractal noise like :func:`fractal_noise`, cut from a cached tile at a random place.

    The cell size snaps to the nearest of ``NOISE_CELLS``; random offsets, flips and
    transposes make crops of one tile differ. Saves a dozen resizes per field.
    """
    if max(shape) > _TILE // 2:
        return fractal_noise(rng, shape, cell)
    tile = fractal_tile(min(NOISE_CELLS, key=lambda c: abs(c - cell)))
    if rng.random() < 0.5:
        tile = tile.T
    dy = int(rng.integers(0, _TILE - shape[0] + 1))
    dx = int(rng.integers(0, _TILE - shape[1] + 1))
    crop = tile[dy : dy + shape[0], dx : dx + shape[1]]
    flip = int(rng.integers(0, 4))
    return crop[:: 1 - 2 * (flip & 1), :: 1 - 2 * (flip >> 1)]


@lru_cache(maxsize=2)
def _noise_tile(rows: int, cols: int) -> np.ndarray:
    rng = np.random.default_rng(0x5EED)
    return rng.standard_normal((rows, cols)).astype(np.float32)


def camera_noise(rng: np.random.Generator, shape: tuple[int, int], margin: int = 256) -> np.ndarray:
    """Unit Gaussian noise of ``shape``: a random window into one cached tile.

    Drawing 0.8 M fresh normals costs more than the rest of a field's noise budget;
    a random offset into a shared tile is free and still differs between seeds.
    """
    tile = _noise_tile(shape[0] + margin, shape[1] + margin)
    dy, dx = (int(v) for v in rng.integers(0, margin, size=2))
    view = tile[dy : dy + shape[0], dx : dx + shape[1]]
    return view[::-1] if rng.random() < 0.5 else view


def gaussian_blur(arr: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian blur of the first two axes (edge-replicated), in float32."""
    if sigma <= 0:
        return np.asarray(arr, np.float32)
    radius = max(1, int(np.ceil(3 * sigma)))
    taps = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    taps = (taps / taps.sum()).astype(np.float32)
    out = np.asarray(arr, np.float32)
    for axis in (0, 1):
        pad = [(0, 0)] * out.ndim
        pad[axis] = (radius, radius)
        padded = np.pad(out, pad, mode="edge")
        n = out.shape[axis]
        acc = np.zeros_like(out)
        index: list[slice] = [slice(None)] * out.ndim
        for i, w in enumerate(taps):
            index[axis] = slice(i, i + n)
            acc += w * padded[tuple(index)]
        out = acc
    return out

"""Images the quality/out-of-distribution gate must catch: bad slides and non-cytology images."""

import numpy as np
from PIL import Image, ImageDraw

from .field import render_field, sample_slide
from .morphology import CLASSES
from .optics import defocus, develop, smooth_layer, to_od, vignetting_od
from .stain import sample_palette
from .textures import camera_noise, fractal_noise

BAD_KINDS = ("blank", "out_of_focus", "overexposed", "underexposed", "radiograph", "natural")


def _cytology(rng: np.random.Generator, size: tuple[int, int], exposure: float = 1.0) -> np.ndarray:
    label = CLASSES[int(rng.integers(0, len(CLASSES)))]
    slide = sample_slide(label, rng, 0.5)
    return render_field(label, slide, rng, 0.5, size, exposure=exposure)


def _blank(rng: np.random.Generator, size: tuple[int, int]) -> np.ndarray:
    """Empty glass: illumination, a faint film of serum and a few dust specks."""
    half = ((size[0] + 1) // 2, (size[1] + 1) // 2)
    pal = sample_palette(rng)
    haze = rng.uniform(0.0, 0.25) * (1.0 + 0.5 * fractal_noise(rng, half, cell=120, octaves=2))
    low = to_od(haze[None], pal.haze[None]) + vignetting_od(rng, half, rng.uniform(0.03, 0.2))
    low += -np.log(pal.white / 255.0)[:, None, None]
    light = smooth_layer(low, size)
    dust = Image.new("L", (size[1], size[0]), 0)
    draw = ImageDraw.Draw(dust)
    for _ in range(int(rng.integers(3, 15))):
        x, y = rng.uniform(0, size[1]), rng.uniform(0, size[0])
        r = rng.uniform(1.5, 6)
        draw.ellipse((x - r, y - r, x + r, y + r), fill=int(rng.integers(40, 160)))
    od = np.repeat((np.asarray(dust, np.float32) * np.float32(0.8 / 255.0))[None], 3, axis=0)
    return develop(od, light, rng, noise_sigma=rng.uniform(1.0, 3.0))


def _radiograph(rng: np.random.Generator, size: tuple[int, int]) -> np.ndarray:
    """Grayscale chest-radiograph-like image: bright body, dark lungs, ribs, spine."""
    h, w = size
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    yn, xn = y / h - 0.5, (x / w - 0.5) * (w / h)
    img = np.full(size, 0.08, np.float32)
    body = np.clip((1.0 - (xn / 0.62) ** 2 - ((yn - 0.1) / 0.75) ** 2) * 6, 0, 1)
    img += 0.55 * body
    for side in (-1, 1):
        cx = side * rng.uniform(0.17, 0.22)
        lung = np.clip((1.0 - ((xn - cx) / 0.15) ** 2 - ((yn + 0.02) / 0.33) ** 2) * 4, 0, 1)
        img -= 0.35 * lung
        for k in range(9):
            ax = np.abs(xn)
            arc = -0.3 + k * 0.068 - 0.2 * ax + 1.3 * ax**2
            band = np.exp(-(((yn - arc) / 0.014) ** 2)) * np.clip((0.42 - ax) * 12, 0, 1) * (xn * side > 0.03)
            img += 0.13 * band
    img += 0.3 * np.exp(-((xn / 0.05) ** 2)) * body  # spine and mediastinum
    heart = np.clip((1.0 - ((xn + 0.05) / 0.16) ** 2 - ((yn - 0.15) / 0.15) ** 2) * 3, 0, 1)
    img += 0.2 * heart
    img += 0.03 * fractal_noise(rng, size, cell=60)
    img += 0.015 * camera_noise(rng, size)
    img = np.clip(img * rng.uniform(0.9, 1.15), 0, 1) * 255
    out = Image.fromarray(img.astype(np.uint8))
    draw = ImageDraw.Draw(out)
    mx, my = int(w * 0.08), int(h * 0.08)
    draw.rectangle((mx, my, mx + h // 20, my + h // 14), fill=235)  # lead side marker
    return np.asarray(out)


def _natural(rng: np.random.Generator, size: tuple[int, int]) -> np.ndarray:
    """Outdoor-photo-like texture: sky gradient, hills on the horizon, textured vegetation."""
    h, w = size
    y = np.linspace(0, 1, h, dtype=np.float32)[:, None, None]
    sky_top = np.array([70, 120, 200], np.float32) * rng.uniform(0.85, 1.1)
    sky_low = np.array([190, 215, 240], np.float32)
    img = sky_top + (sky_low - sky_top) * y
    img = np.broadcast_to(img, (h, w, 3)).copy()
    clouds = np.clip(fractal_noise(rng, (h, w), cell=200, octaves=4), 0, None)[..., None]
    img += 40.0 * clouds
    horizon = h * rng.uniform(0.4, 0.6) + h * 0.08 * fractal_noise(rng, (1, w), cell=150, octaves=3)[0]
    ground = (np.arange(h)[:, None] > horizon[None, :])[..., None]
    tex = fractal_noise(rng, (h, w), cell=40, octaves=5)[..., None]
    grass = np.array([70, 110, 45], np.float32) + np.array([35, 30, 15], np.float32) * tex
    soil = fractal_noise(rng, (h, w), cell=120, octaves=2)[..., None] > 0.8
    grass = np.where(soil, np.array([120, 95, 60], np.float32) + 20 * tex, grass)
    img = np.where(ground, grass, img)
    img += 3.0 * camera_noise(rng, (h, w))[..., None]
    return np.clip(img, 0, 255).astype(np.uint8)


def render_bad_field(kind: str, rng: np.random.Generator, size: tuple[int, int]) -> np.ndarray:
    if kind == "blank":
        return _blank(rng, size)
    if kind == "out_of_focus":
        return defocus(_cytology(rng, size), rng.uniform(6.0, 12.0))
    if kind == "overexposed":
        return _cytology(rng, size, exposure=rng.uniform(2.6, 4.0))
    if kind == "underexposed":
        return _cytology(rng, size, exposure=rng.uniform(0.05, 0.15))
    if kind == "radiograph":
        return _radiograph(rng, size)
    if kind == "natural":
        return _natural(rng, size)
    raise ValueError(f"unknown bad-field kind {kind!r}")

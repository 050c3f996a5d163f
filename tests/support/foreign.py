"""Foreign images: things a PACS may send that are not a stained thyroid cytology field.

None is made by ``dicom_fixtures``: scikit-image's bundled sample images (photographs, textures,
astronomy, retina, immunohistochemistry, faces), pydicom's bundled test images (CT, MR, ultrasound,
test patterns), and a few made here with Pillow and scikit-image's colour deconvolution (screenshots
and text, blank and pale slides, out-of-focus tissue, H&E-like and other stains). Each source gives a
few variants (whole image and crops, resized to a camera's 1024 x 768). The corpus is split into a
development half (used to look at the gate) and a test half (used to judge it); nothing is fitted on
either.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import pydicom
from PIL import Image, ImageDraw, ImageFilter
from pydicom.data import get_testdata_file

SIZE = (1024, 768)  # width, height of a typical microscope camera image


@dataclass(frozen=True)
class ForeignImage:
    name: str
    category: str
    rgb: np.ndarray  # (H, W, 3) uint8


def _rgb(image: np.ndarray) -> np.ndarray:
    a = np.asarray(image)
    if a.dtype == bool:
        a = a.astype(np.uint8) * 255
    if a.dtype != np.uint8:
        a = a.astype(np.float64)
        lo, hi = float(a.min()), float(a.max())
        a = np.zeros(a.shape, np.uint8) if hi <= lo else ((a - lo) * 255.0 / (hi - lo)).round().astype(np.uint8)
    if a.ndim == 2:
        a = np.repeat(a[..., None], 3, axis=2)
    return np.ascontiguousarray(a[..., :3])


def _variants(rgb: np.ndarray, rng: np.random.Generator, n_crops: int = 2) -> Iterator[np.ndarray]:
    """The whole image and ``n_crops`` random crops (half to three quarters of each side), at ``SIZE``."""
    image = Image.fromarray(rgb)
    yield np.asarray(image.resize(SIZE, Image.Resampling.BILINEAR))
    w, h = image.size
    for _ in range(n_crops):
        cw, ch = int(w * rng.uniform(0.5, 0.75)), int(h * rng.uniform(0.5, 0.75))
        x, y = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
        yield np.asarray(image.crop((x, y, x + cw, y + ch)).resize(SIZE, Image.Resampling.BILINEAR))


def _skimage_sources() -> list[tuple[str, str, np.ndarray]]:
    import skimage.data as data

    photos = ("astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field", "retina", "colorwheel", "logo")
    gray = ("camera", "brick", "grass", "gravel", "moon", "coins", "clock", "page", "text", "cell", "checkerboard")
    out = [(f"skimage/{n}", "photograph" if n != "logo" else "graphics", _rgb(getattr(data, n)())) for n in photos]
    out += [(f"skimage/{n}", "grayscale", _rgb(getattr(data, n)())) for n in gray]
    out.append(("skimage/immunohistochemistry", "other stain", _rgb(data.immunohistochemistry())))
    faces = data.lfw_subset()
    out += [(f"skimage/lfw_subset[{i}]", "grayscale", _rgb(faces[i])) for i in range(0, 20, 5)]
    left, right, _ = data.stereo_motorcycle()
    out += [("skimage/stereo_motorcycle_left", "photograph", _rgb(left))]
    out += [("skimage/stereo_motorcycle_right", "photograph", _rgb(right))]
    return out


def _pydicom_sources() -> list[tuple[str, str, np.ndarray]]:
    names = {
        "CT_small.dcm": "radiology",
        "MR_small.dcm": "radiology",
        "JPEG2000.dcm": "radiology",
        "rtdose_1frame.dcm": "radiology",
        "examples_ybr_color.dcm": "ultrasound",
        "examples_rgb_color.dcm": "ultrasound",
        "examples_palette.dcm": "ultrasound",
        "SC_rgb_rle.dcm": "test pattern",
        "SC_rgb_jpeg_gdcm.dcm": "test pattern",
        "GDCMJ2K_TextGBR.dcm": "test pattern",
    }
    out = []
    for name, category in names.items():
        ds = pydicom.dcmread(get_testdata_file(name))
        arr = ds.pixel_array
        if int(ds.get("NumberOfFrames", 1) or 1) > 1:
            arr = arr[0]
        if str(ds.PhotometricInterpretation) == "PALETTE COLOR":
            from pydicom.pixels.processing import apply_color_lut

            arr = apply_color_lut(arr, ds)
        out.append((f"pydicom/{name}", category, _rgb(arr)))
    return out


def _screenshot(rng: np.random.Generator, dark: bool) -> np.ndarray:
    bg, fg = ((30, 30, 36), (220, 220, 220)) if dark else ((250, 250, 250), (20, 20, 20))
    image = Image.new("RGB", SIZE, bg)
    draw = ImageDraw.Draw(image)
    draw.rectangle((0, 0, SIZE[0], 48), fill=tuple(int(c) for c in rng.integers(40, 200, 3)))
    for row in range(12):
        words = " ".join("".join(chr(int(c)) for c in rng.integers(97, 123, int(rng.integers(3, 9)))) for _ in range(8))
        draw.text((24, 70 + 52 * row), words, fill=fg, font_size=28)
    draw.rectangle((700, 120, 980, 600), outline=fg, width=3)
    return np.asarray(image)


def _blank_slide(rng: np.random.Generator, tint: tuple[int, int, int]) -> np.ndarray:
    base = np.ones((SIZE[1], SIZE[0], 3)) * np.asarray(tint, np.float64)
    return np.clip(base + rng.normal(0, 3, base.shape), 0, 255).astype(np.uint8)


def _stained_tissue(rng: np.random.Generator, stains: str) -> np.ndarray:
    """Smooth random stain densities through scikit-image's colour deconvolution matrices."""
    from skimage.color import hed2rgb

    small = rng.gamma(1.5, 0.5, (SIZE[1] // 16, SIZE[0] // 16, 3))
    hed = np.asarray(Image.fromarray((np.clip(small / 4, 0, 1) * 255).astype(np.uint8)).resize(SIZE)) / 255.0
    hed = hed * np.array({"he": (1.2, 0.9, 0.0), "dab": (0.6, 0.0, 1.1), "eosin": (0.05, 1.4, 0.0)}[stains])
    return (np.clip(hed2rgb(hed), 0, 1) * 255).astype(np.uint8)


def _made_here(rng: np.random.Generator) -> list[tuple[str, str, np.ndarray]]:
    out: list[tuple[str, str, np.ndarray]] = []
    for i in range(4):
        out.append((f"made/screenshot-{i}", "screenshot", _screenshot(rng, dark=i % 2 == 1)))
    for i, tint in enumerate(((246, 246, 246), (240, 226, 232), (228, 232, 244))):
        out.append((f"made/blank-slide-{i}", "blank slide", _blank_slide(rng, tint)))
    for stains in ("he", "dab", "eosin"):
        for i in range(2):
            tissue = _stained_tissue(rng, stains)
            out.append((f"made/{stains}-tissue-{i}", "other stain", tissue))
            blurred = np.asarray(Image.fromarray(tissue).filter(ImageFilter.GaussianBlur(12)))
            out.append((f"made/{stains}-tissue-{i}-out-of-focus", "out of focus", blurred))
    return out


def foreign_corpus(seed: int = 0) -> list[ForeignImage]:
    """Every foreign image, variants included (about 140)."""
    rng = np.random.default_rng(seed)
    sources: list[Callable[[], list[tuple[str, str, np.ndarray]]]] = [_skimage_sources, _pydicom_sources]
    corpus = []
    for source in sources:
        for name, category, rgb in source():
            for i, variant in enumerate(_variants(rgb, rng)):
                corpus.append(ForeignImage(f"{name}#{i}", category, variant))
    corpus += [ForeignImage(name, category, rgb) for name, category, rgb in _made_here(rng)]
    return corpus


def halves(corpus: list[ForeignImage]) -> tuple[list[ForeignImage], list[ForeignImage]]:
    """(development half, test half): alternate images, so every source has variants in both."""
    return corpus[0::2], corpus[1::2]

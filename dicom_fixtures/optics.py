"""Microscope and camera: from optical density to an 8-bit RGB image.

A field is split into a smooth "slide" layer (illumination, background, colloid,
cytoplasm) rendered at half resolution and a sharp layer of stamped cells. Focus blur is
baked into the stamp banks (see ``shapes``), so developing a field is one exp, one
multiply and the camera noise. Arrays are channel-first (C, H, W) until the final
image: every plane is contiguous, which keeps strided numpy work fast.
"""

import numpy as np
from PIL import Image, ImageFilter

from .textures import camera_noise


def vignetting_od(rng: np.random.Generator, shape: tuple[int, int], strength: float) -> np.ndarray:
    """Neutral optical density of uneven illumination: darker towards an off-centre rim."""
    h, w = shape
    cy = h / 2 * (1 + rng.uniform(-0.3, 0.3))
    cx = w / 2 * (1 + rng.uniform(-0.3, 0.3))
    y, x = np.ogrid[:h, :w]
    r2 = ((y - cy) / (0.75 * h)) ** 2 + ((x - cx) / (0.75 * w)) ** 2
    return (strength * r2).astype(np.float32)


def to_od(densities: np.ndarray, colours: np.ndarray) -> np.ndarray:
    """Optical density (3, H, W) of stain densities (S, H, W) with colour ODs (S, 3).

    Explicit plane-by-plane multiply-adds: a (3 x S) @ (S x H*W) matmul is an order of
    magnitude slower in BLAS for such a thin inner dimension.
    """
    n_stains, h, w = densities.shape
    out = np.empty((3, h, w), np.float32)
    tmp = np.empty((h, w), np.float32)
    for c in range(3):
        np.multiply(densities[0], np.float32(colours[0, c]), out=out[c])
        for k in range(1, n_stains):
            np.multiply(densities[k], np.float32(colours[k, c]), out=tmp)
            out[c] += tmp
    return out


def upsample2x(arr: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Bilinear 2x upsampling of a (C, h, w) float array, cropped to (C, *shape).

    New samples are means of their neighbours, which is exact bilinear for a factor of 2.
    """
    c, h, w = arr.shape
    out = np.empty((c, 2 * h, 2 * w), np.float32)
    out[:, 0::2, 0::2] = arr
    mid = out[:, 0::2, 1:-1:2]
    np.add(arr[:, :, :-1], arr[:, :, 1:], out=mid)
    mid *= 0.5
    out[:, 0::2, -1] = arr[:, :, -1]
    rows = out[:, 1:-1:2]
    np.add(out[:, 0:-2:2], out[:, 2::2], out=rows)
    rows *= 0.5
    out[:, -1] = out[:, -2]
    return out[:, : shape[0], : shape[1]]


def smooth_layer(od_lowres: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Transmitted light (0..255, float32, (3, H, W)) of a half-resolution OD layer."""
    trans = np.negative(od_lowres)
    np.exp(trans, out=trans)
    trans *= 255.0
    return upsample2x(trans, shape)


def develop(
    od: np.ndarray,
    light: np.ndarray,
    rng: np.random.Generator,
    *,
    noise_sigma: float,
    exposure: float = 1.0,
) -> np.ndarray:
    """Sharp OD (3, H, W; consumed) times smooth light (3, H, W) plus camera noise -> HxWx3 uint8."""
    np.negative(od, out=od)
    np.exp(od, out=od)
    od *= light
    if exposure != 1.0:
        od *= np.float32(exposure)
    if noise_sigma > 0:
        od += camera_noise(rng, od.shape[1:]) * np.float32(noise_sigma)
    np.clip(od, 0.0, 255.0, out=od)
    rgb = np.empty((*od.shape[1:], 3), np.uint8)
    for c in range(3):
        rgb[..., c] = od[c]  # casting per plane beats a transposing copy
    return rgb


def defocus(img: np.ndarray, sigma: float) -> np.ndarray:
    """Strongly blur a finished uint8 image (out-of-focus fields); PIL's cost is radius-independent."""
    return np.asarray(Image.fromarray(img).filter(ImageFilter.GaussianBlur(sigma)))

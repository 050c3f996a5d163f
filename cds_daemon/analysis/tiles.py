"""The 13 model views of a microscope field: the single preprocessing path for training and inference.

View 0 is the whole field resized to ``input_size``; views 1..12 are the tiles of a rows x cols grid
(row-major, each tile width/cols x height/rows, fractional boxes when the size does not divide) resized
to ``input_size``. Resizing is Pillow bilinear (with Pillow's antialiasing support when downscaling);
normalisation is (x/255 - mean) / std per channel. numpy + Pillow only: the daemon imports this.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image

INPUT_SIZE = 224
GRID = (3, 4)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
RESIZE = "bilinear"

Box = tuple[float, float, float, float]


def grid_boxes(width: int, height: int, grid: tuple[int, int] = GRID) -> list[Box]:
    """Tile boxes (left, top, right, bottom) of a rows x cols grid, row-major, in pixel coordinates."""
    rows, cols = grid
    if rows < 1 or cols < 1:
        raise ValueError(f"grid must be positive, got {grid}")
    tw, th = width / cols, height / rows
    return [(c * tw, r * th, (c + 1) * tw, (r + 1) * th) for r in range(rows) for c in range(cols)]


def to_pil(rgb: np.ndarray) -> Image.Image:
    """Validate an (H, W, 3) uint8 array and wrap it as a Pillow RGB image (no copy of the pixels)."""
    if not isinstance(rgb, np.ndarray) or rgb.ndim != 3 or rgb.shape[2] != 3:
        shape = getattr(rgb, "shape", None)
        raise ValueError(f"expected an (H, W, 3) RGB array, got shape {shape}")
    if rgb.dtype != np.uint8:
        raise ValueError(f"expected uint8 pixels, got {rgb.dtype}")
    if rgb.shape[0] < 2 or rgb.shape[1] < 2:
        raise ValueError(f"image too small: {rgb.shape[1]}x{rgb.shape[0]}")
    return Image.fromarray(np.ascontiguousarray(rgb), mode="RGB")


def crop_resize(image: Image.Image, box: Box | None, size: int = INPUT_SIZE) -> np.ndarray:
    """The region ``box`` of ``image`` (whole image when None) resized to size x size, (size, size, 3) uint8.

    Pillow resamples straight from the source box, so fractional boxes are exact (no crop-then-resize
    rounding) and tiles are identical whether produced for training or inference.
    """
    out = image.resize((size, size), Image.Resampling.BILINEAR, box=box)
    return np.asarray(out, dtype=np.uint8)


def normalize(
    views: np.ndarray, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD
) -> np.ndarray:
    """(N, S, S, 3) uint8 -> (N, 3, S, S) float32 normalised, C-contiguous."""
    if views.ndim != 4 or views.shape[3] != 3:
        raise ValueError(f"expected (N, S, S, 3) views, got {views.shape}")
    scale = (1.0 / (255.0 * np.asarray(std, dtype=np.float32))).astype(np.float32)
    shift = (np.asarray(mean, dtype=np.float32) / np.asarray(std, dtype=np.float32)).astype(np.float32)
    out = np.empty((views.shape[0], 3, views.shape[1], views.shape[2]), dtype=np.float32)
    for c in range(3):
        np.multiply(views[..., c], scale[c], out=out[:, c], casting="unsafe")
        out[:, c] -= shift[c]
    return out


def make_view_pixels(rgb: np.ndarray, *, input_size: int = INPUT_SIZE, grid: tuple[int, int] = GRID) -> np.ndarray:
    """The 1 + rows*cols views as (V, S, S, 3) uint8, before normalisation (view 0 = whole image)."""
    image = to_pil(rgb)
    boxes: list[Box | None] = [None, *grid_boxes(image.width, image.height, grid)]
    out = np.empty((len(boxes), input_size, input_size, 3), dtype=np.uint8)
    for i, box in enumerate(boxes):
        out[i] = crop_resize(image, box, input_size)
    return out


def make_views(
    rgb: np.ndarray,
    *,
    input_size: int = INPUT_SIZE,
    grid: tuple[int, int] = GRID,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> np.ndarray:
    """(H, W, 3) uint8 RGB -> (1 + rows*cols, 3, S, S) float32: whole image, then the grid tiles."""
    return normalize(make_view_pixels(rgb, input_size=input_size, grid=grid), mean, std)

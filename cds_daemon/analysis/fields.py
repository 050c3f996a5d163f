"""Which fields of a whole slide are worth the model's time: the informative ones, as a cytopathologist picks.

Published thyroid FNA systems on whole slides find the follicular groups, classify them and aggregate;
none scores every tile. Here, on a low pyramid level (about 4 µm/px):

1. nuclear stain density per pixel by colour deconvolution of optical density (Ruifrok & Johnston's
   hematoxylin / eosin vectors; Diff-Quik and Papanicolaou nuclei load on the first), relative to the
   slide's own glass brightness;
2. windows the size of a training field (1024 x 768 at the bundle's µm/px) proposed at 1/8-field steps,
   scored by their *cellularity*, the share of pixels dense with nuclear stain: follicular groups score
   high; blood (eosinophilic red cells), colloid and empty glass score near zero;
3. the best windows taken greedily, never overlapping, while their cellularity is at least
   ``slides.min_cellularity``, at most ``slides.max_fields`` of them;
4. with several focal planes, each field is read in every plane and the sharpest (largest variance of
   the Laplacian of its grey image) is kept, with its z.

A slide with no window over the threshold has no informative field: it ends as "not analysed".
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
from PIL import Image

from cds_daemon.analysis.quality import laplacian_variance
from cds_daemon.analysis.slide_reader import SlideImage

FIELD_COLUMNS, FIELD_ROWS = 1024, 768
#: The mask level: the coarsest pyramid level at or under this many µm per pixel.
MASK_MPP = 4.0
#: Nuclear stain density (OD units along the hematoxylin vector) that counts as a nucleus.
NUCLEAR_OD = 0.3
#: Windows are proposed at this many steps per field width and height.
PROPOSAL_STEPS = 8
#: Read the mask level in strips of at most this many pixels (memory stays bounded on any slide).
STRIP_PIXELS = 1024 * 1024

_H = np.array([0.65, 0.70, 0.29])
_E = np.array([0.07, 0.99, 0.11])
_STAINS = np.stack(
    [_H / np.linalg.norm(_H), _E / np.linalg.norm(_E), np.cross(_H, _E) / np.linalg.norm(np.cross(_H, _E))]
)
_UNMIX = np.linalg.inv(_STAINS)


@dataclass(frozen=True)
class Field:
    """A chosen field: its box in level-0 pixels, focal plane, cellularity, and pixels at the bundle's µm/px."""

    x: int
    y: int
    width: int
    height: int
    z: float | None
    cellularity: float
    sharpness: float
    rgb: np.ndarray

    @property
    def box(self) -> tuple[int, int, int, int]:
        return self.x, self.y, self.width, self.height


@dataclass(frozen=True)
class Selection:
    fields: list[Field]
    proposals: int  # windows scored
    mask_mpp: float


def nuclear_density(rgb: np.ndarray, white: np.ndarray) -> np.ndarray:
    """Hematoxylin-vector stain density of each pixel, OD relative to the glass brightness ``white``."""
    intensity = np.clip(rgb.astype(np.float32) / np.maximum(white.astype(np.float32), 1.0), 1.0 / 255.0, 1.0)
    od = -np.log10(intensity)
    return np.asarray(od.reshape(-1, 3) @ _UNMIX[:, 0].astype(np.float32), np.float32).reshape(rgb.shape[:2])


def _mask_level(slide: SlideImage) -> tuple[int, float, tuple[int, int]]:
    """(level, downsample, size) of the coarsest level at or under MASK_MPP (level 0 if none is)."""
    chosen = slide.levels()[0]
    for level in slide.levels():
        if slide.geometry.mpp * level[1] <= MASK_MPP * 1.05:
            chosen = level if level[1] > chosen[1] else chosen
    return chosen


def _strips(width: int, height: int, multiple: int = 1) -> Iterator[tuple[int, int]]:
    rows = max(multiple, STRIP_PIXELS // max(width, 1) // multiple * multiple)
    for y in range(0, height, rows):
        yield y, min(rows, height - y)


def nuclear_map(slide: SlideImage) -> tuple[np.ndarray, float]:
    """The nuclear mask of the slide at MASK_MPP µm/px, and its downsample from level 0.

    The glass brightness comes from the coarsest level; the mask level is then read, and turned into a
    mask, a strip at a time (memory stays bounded on any slide). A level finer than MASK_MPP is averaged
    down to it, so cellularity means the same whatever pyramid a scanner wrote.
    """
    coarsest, _, (cw, ch) = max(slide.levels(), key=lambda lv: lv[1])
    thumb = slide.read(0, 0, cw, ch, level=coarsest) if cw * ch <= STRIP_PIXELS else None
    level, downsample, (width, height) = _mask_level(slide)
    factor = max(1.0, MASK_MPP / (slide.geometry.mpp * downsample) * 0.999)
    white: np.ndarray | None = None if thumb is None else _glass_white(thumb)
    strips = []
    for y, rows in _strips(width, height, round(factor)):
        strip = slide.read(0, y, width, rows, level=level)
        if factor > 1.0:
            size = (max(1, round(width / factor)), max(1, round(rows / factor)))
            strip = np.asarray(Image.fromarray(strip).resize(size, Image.Resampling.BOX))
        if white is None:  # no level small enough to read whole: the first strip's glass
            white = _glass_white(strip)
        strips.append(nuclear_density(strip, white) > NUCLEAR_OD)
    mask = np.concatenate(strips, axis=0)
    return mask, downsample * (width / mask.shape[1])


def _glass_white(rgb: np.ndarray) -> np.ndarray:
    """The glass's brightness per channel: the 99th percentile of (a sample of) the pixels."""
    return np.asarray(np.percentile(rgb.reshape(-1, 3)[:: max(1, rgb.size // 3 // 200_000)], 99, axis=0))


def _window_scores(mask: np.ndarray, win: tuple[int, int], step: tuple[int, int]) -> list[tuple[float, int, int]]:
    """(cellularity, x, y) of every window (mask-level pixels), from an integral image."""
    h, w = mask.shape
    wh, ww = min(win[0], h), min(win[1], w)
    integral = np.zeros((h + 1, w + 1), np.int64)
    integral[1:, 1:] = mask.astype(np.int64).cumsum(0).cumsum(1)
    ys = np.arange(0, h - wh + 1, max(1, step[0]))
    xs = np.arange(0, w - ww + 1, max(1, step[1]))
    y0, x0 = ys[:, None], xs[None, :]
    total = integral[y0 + wh, x0 + ww] - integral[y0, x0 + ww] - integral[y0 + wh, x0] + integral[y0, x0]
    share = total / float(win[0] * win[1])
    yy, xx = np.meshgrid(ys, xs, indexing="ij")
    return list(zip(share.ravel().tolist(), xx.ravel().tolist(), yy.ravel().tolist(), strict=True))


def sharpness(rgb: np.ndarray) -> float:
    """Variance of the Laplacian of the grey image (the quality gate's focus measure): larger is sharper."""
    return laplacian_variance(rgb.astype(np.float32).mean(axis=2))


def _at_bundle_scale(region: np.ndarray) -> np.ndarray:
    if region.shape[:2] == (FIELD_ROWS, FIELD_COLUMNS):
        return region
    resized = Image.fromarray(region).resize((FIELD_COLUMNS, FIELD_ROWS), Image.Resampling.BILINEAR)
    return np.asarray(resized)


def select_fields(slide: SlideImage, mpp: float, max_fields: int, min_cellularity: float) -> Selection:
    """The informative fields of ``slide`` read at ``mpp`` µm/px (the bundle's), best first (see the module)."""
    scale = mpp / slide.geometry.mpp  # level-0 pixels per bundle pixel
    field0 = (round(FIELD_ROWS * scale), round(FIELD_COLUMNS * scale))  # (rows, cols) at level 0
    if slide.geometry.height < field0[0] or slide.geometry.width < field0[1]:
        return Selection([], 0, slide.geometry.mpp)  # smaller than one field: nothing to analyse
    mask, downsample = nuclear_map(slide)
    win = (max(1, round(field0[0] / downsample)), max(1, round(field0[1] / downsample)))
    scores = _window_scores(mask, win, (max(1, win[0] // PROPOSAL_STEPS), max(1, win[1] // PROPOSAL_STEPS)))
    taken: list[tuple[int, int, int, int]] = []
    for cellularity, mx, my in sorted(scores, key=lambda s: (-s[0], s[2], s[1])):
        if cellularity < min_cellularity or len(taken) >= max_fields:
            break
        x, y = round(mx * downsample), round(my * downsample)
        x = max(0, min(x, slide.geometry.width - field0[1]))
        y = max(0, min(y, slide.geometry.height - field0[0]))
        if any(x < tx + tw and tx < x + field0[1] and y < ty + th and ty < y + field0[0] for tx, ty, tw, th in taken):
            continue
        taken.append((x, y, field0[1], field0[0]))
    fields = []
    planes: list[float | None] = list(slide.geometry.focal_planes) or [None]
    for x, y, w, h in taken:
        best: tuple[float, float | None, np.ndarray] | None = None
        for z in planes:
            region = slide.read(x, y, min(w, slide.geometry.width - x), min(h, slide.geometry.height - y), z=z)
            sharp = sharpness(region) if len(planes) > 1 else 0.0
            if best is None or sharp > best[0]:
                best = (sharp, z, region)
        assert best is not None
        cellularity = _cellularity(mask, x, y, w, h, downsample)
        fields.append(Field(x, y, w, h, best[1], cellularity, best[0], _at_bundle_scale(best[2])))
    return Selection(fields, len(scores), slide.geometry.mpp * downsample)


def _cellularity(mask: np.ndarray, x: int, y: int, w: int, h: int, downsample: float) -> float:
    window = mask[
        round(y / downsample) : round((y + h) / downsample), round(x / downsample) : round((x + w) / downsample)
    ]
    return float(window.mean()) if window.size else 0.0

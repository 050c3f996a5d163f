"""A classical cell-cluster detector for training-time crops (the paper's YOLOv10 role, no annotations).

Nuclei in Diff-Quik / H&E-like stains are the dark purple-blue mass; colour deconvolution (Ruifrok &
Johnston optical-density stain vectors) isolates a hematoxylin-like concentration, an Otsu threshold
(floored so an empty field does not threshold its own noise) gives a nuclear mask, and a box filter of
that mask is the local cell density. Windows of two sizes (1/3 and 1/2 of the short side) are ranked by
density and picked greedily without heavy overlap. As in the paper, missing boxes are filled with
random squares of 2/3 and 1/1 of the short side (512 and 768 px on a 1024 x 768 field). Used only to
build training views; never at inference.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

from cds_daemon.analysis.tiles import Box

# Optical-density stain vectors (rows: hematoxylin, eosin); the third is their normalised cross product.
_H = np.array([0.650, 0.704, 0.286])
_E = np.array([0.072, 0.990, 0.105])
_R = np.cross(_H, _E)
_STAINS = np.stack([v / np.linalg.norm(v) for v in (_H, _E, _R)])
_UNMIX = np.linalg.inv(_STAINS)
MIN_OD_THRESHOLD = 0.15


@dataclass(frozen=True)
class Cluster:
    box: Box  # (left, top, right, bottom) in full-resolution pixels
    density: float  # fraction of nuclear pixels in the window; 0 for random fill-ins
    detected: bool


def hematoxylin_map(rgb: np.ndarray, scale: int = 8) -> np.ndarray:
    """Hematoxylin-like concentration at 1/scale resolution (float32, >= 0)."""
    h, w = rgb.shape[:2]
    small = Image.fromarray(rgb).reduce(scale) if min(h, w) >= 4 * scale else Image.fromarray(rgb)
    od = -np.log((np.asarray(small, dtype=np.float32) + 1.0) / 256.0)
    conc = od.reshape(-1, 3) @ _UNMIX.astype(np.float32)
    return np.maximum(conc[:, 0], 0.0).reshape(od.shape[:2])


def otsu_threshold(values: np.ndarray, bins: int = 128) -> float:
    """Otsu's between-class-variance threshold of a 1-D sample."""
    v = values.ravel()
    lo, hi = float(v.min()), float(v.max())
    if hi - lo < 1e-9:
        return hi
    hist, edges = np.histogram(v, bins=bins, range=(lo, hi))
    p = hist / hist.sum()
    centres = (edges[:-1] + edges[1:]) / 2
    w0 = np.cumsum(p)
    mu0 = np.cumsum(p * centres)
    mu_t = mu0[-1]
    with np.errstate(divide="ignore", invalid="ignore"):
        between = (mu_t * w0 - mu0) ** 2 / (w0 * (1 - w0))
    return float(edges[int(np.nanargmax(between[:-1])) + 1])


def _window_density(mask: np.ndarray, side: int) -> np.ndarray:
    """Mean of ``mask`` over every side x side window (valid positions), via an integral image."""
    ii = np.pad(mask.astype(np.float64).cumsum(0).cumsum(1), ((1, 0), (1, 0)))
    s = ii[side:, side:] - ii[:-side, side:] - ii[side:, :-side] + ii[:-side, :-side]
    return s / (side * side)


def _iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of boxes a (N, 4) against one box b (4,)."""
    iw = np.clip(np.minimum(a[:, 2], b[2]) - np.maximum(a[:, 0], b[0]), 0, None)
    ih = np.clip(np.minimum(a[:, 3], b[3]) - np.maximum(a[:, 1], b[1]), 0, None)
    inter = iw * ih
    area = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    return inter / (area + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def detect_clusters(
    rgb: np.ndarray,
    k: int = 8,
    *,
    scale: int = 8,
    sides: tuple[float, ...] = (1 / 3, 1 / 2),
    min_density: float = 0.08,
    max_iou: float = 0.25,
    seed: int = 0,
) -> list[Cluster]:
    """Exactly ``k`` windows: the densest non-overlapping cell clusters, then random fill-ins."""
    h, w = rgb.shape[:2]
    conc = hematoxylin_map(rgb, scale)
    sy, sx = h / conc.shape[0], w / conc.shape[1]
    mask = conc > max(otsu_threshold(conc), MIN_OD_THRESHOLD)
    short = min(conc.shape)
    cands, scores = [], []
    for frac in sides:
        side = max(2, round(short * frac))
        dens = _window_density(mask, side)
        stride = max(1, side // 8)
        ys, xs = np.mgrid[0 : dens.shape[0] : stride, 0 : dens.shape[1] : stride]
        d = dens[ys, xs].ravel()
        ys, xs = ys.ravel(), xs.ravel()
        cands.append(np.stack([xs * sx, ys * sy, (xs + side) * sx, (ys + side) * sy], axis=1))
        scores.append(d)
    boxes, dens_all = np.concatenate(cands), np.concatenate(scores)
    keep = dens_all >= min_density
    boxes, dens_all = boxes[keep], dens_all[keep]
    out: list[Cluster] = []
    while len(out) < k and boxes.shape[0]:
        i = int(dens_all.argmax())
        b = boxes[i]
        out.append(Cluster((float(b[0]), float(b[1]), float(b[2]), float(b[3])), float(dens_all[i]), True))
        far = _iou(boxes, b) <= max_iou
        boxes, dens_all = boxes[far], dens_all[far]
    rng = np.random.default_rng(seed)
    s_short = min(h, w)
    fill_sides = [round(s_short * 2 / 3)] * 6 + [s_short] * 2
    for side in fill_sides[: k - len(out)]:
        x0 = float(rng.integers(0, w - side + 1))
        y0 = float(rng.integers(0, h - side + 1))
        out.append(Cluster((x0, y0, x0 + side, y0 + side), 0.0, False))
    return out


def focus_image(rgb: np.ndarray, clusters: list[Cluster], strength: float = 0.7) -> np.ndarray:
    """The paper's set B: detected cluster windows kept, the rest faded toward the background colour.

    The paper overlays the top boxes on the field to concentrate attention on cellular regions; fading
    everything outside them does that without drawing artificial box edges the classifier could learn.
    """
    detected = [c.box for c in clusters if c.detected]
    if not detected:
        return rgb
    keep = np.zeros(rgb.shape[:2], dtype=bool)
    for x0, y0, x1, y1 in detected:
        keep[int(y0) : int(np.ceil(y1)), int(x0) : int(np.ceil(x1))] = True
    background = np.percentile(rgb[::8, ::8].reshape(-1, 3), 90, axis=0).astype(np.float32)
    out = rgb.copy()
    faded = rgb[~keep].astype(np.float32) * (1 - strength) + background * strength
    out[~keep] = np.clip(faded + 0.5, 0, 255).astype(np.uint8)
    return out

"""Is this a stained cytology smear at all? Colour statistics in optical-density space.

Light through a stained smear obeys Beer-Lambert: the optical density OD = -log10(I / I0) of each
pixel is a sum of a few stain vectors weighted by stain amounts. So a smear's tissue pixels lie close
to a low-dimensional cone in OD space, along stain directions a lab keeps stable, on a bright empty
background; a photograph, a screenshot, a radiograph or another stain lies elsewhere. The features
(a thumbnail, about 2 ms):

- tissue fraction (OD sum above 0.3) and the background's brightness;
- mean OD of tissue pixels, and of their OD chromaticity (OD / |OD|: the hue of the stain mix);
- the spread of that chromaticity, and the second and third eigenvalues of the tissue OD covariance
  relative to the first (how far from a one- or two-stain cone the pixels are);
- the share of dense pixels (OD sum above 1.5: nuclei, clumps).

``model_build`` fits a mean and shrunk covariance of these features on held-out in-distribution
fields; the daemon's score is the Mahalanobis distance, and a field above the bundle's threshold is
referred as out of distribution (``ood_stain``).
"""

from __future__ import annotations

import numpy as np
from PIL import Image

FEATURES = (
    "tissue_fraction",
    "background_brightness",
    "od_mean_r",
    "od_mean_g",
    "od_mean_b",
    "chroma_r",
    "chroma_g",
    "chroma_b",
    "chroma_spread",
    "eigen_ratio_2",
    "eigen_ratio_3",
    "dense_fraction",
)
THUMBNAIL = 256
TISSUE_OD = 0.3
DENSE_OD = 1.5


def stain_features(rgb: np.ndarray) -> np.ndarray:
    """The ``FEATURES`` of an (H, W, 3) uint8 image, float64."""
    h, w = rgb.shape[:2]
    scale = THUMBNAIL / max(h, w)
    small = Image.fromarray(np.ascontiguousarray(rgb)).resize(
        (max(1, round(w * scale)), max(1, round(h * scale))), Image.Resampling.BILINEAR
    )
    intensity = np.clip(np.asarray(small, dtype=np.float64).reshape(-1, 3) / 255.0, 1.0 / 255.0, 1.0)
    od = -np.log10(intensity)
    total = od.sum(axis=1)
    tissue = total > TISSUE_OD
    background = intensity[~tissue].mean() if (~tissue).any() else 0.0
    out = np.zeros(len(FEATURES), dtype=np.float64)
    out[0], out[1] = tissue.mean(), background
    if tissue.sum() >= 10:
        t = od[tissue]
        chroma = t / np.linalg.norm(t, axis=1, keepdims=True)
        mean_chroma = chroma.mean(axis=0)
        eig = np.sort(np.linalg.eigvalsh(np.cov(t.T)))[::-1]
        out[2:5] = t.mean(axis=0)
        out[5:8] = mean_chroma
        out[8] = float(np.linalg.norm(chroma - mean_chroma, axis=1).mean())
        out[9:11] = eig[1:3] / max(float(eig[0]), 1e-12)
        out[11] = float((t.sum(axis=1) > DENSE_OD).mean())
    return out


def stain_distance(features: np.ndarray, mean: np.ndarray, precision: np.ndarray) -> np.ndarray:
    """Squared Mahalanobis distance of (N, F) or (F,) features from the in-distribution fit."""
    diff = np.asarray(features, dtype=np.float64) - mean
    return np.asarray(((diff @ precision) * diff).sum(axis=-1))

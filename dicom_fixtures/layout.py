"""Where cells go: nucleus centre positions for each kind of cell group.

Every function returns an ``(n, 2)`` float array of (row, col) centres; cell attributes
are assigned later by the field composer from the group's morphology.
"""

import numpy as np


def _blob_inside(rng: np.random.Generator, pts: np.ndarray, centre: np.ndarray, radius: float) -> np.ndarray:
    """Keep points inside an irregular (harmonic-perturbed) ellipse around ``centre``."""
    d = pts - centre
    aspect = rng.uniform(0.45, 1.0)
    theta = rng.uniform(0, np.pi)
    c, s = np.cos(theta), np.sin(theta)
    u = d[:, 1] * c + d[:, 0] * s
    v = (-d[:, 1] * s + d[:, 0] * c) / aspect
    phi = np.arctan2(v, u)
    edge = np.ones_like(phi)
    for k in (2, 3, 5):
        edge += rng.normal(0, 0.12) * np.cos(k * phi + rng.uniform(0, 2 * np.pi))
    return pts[np.hypot(u, v) < radius * edge]


def hex_sheet(rng: np.random.Generator, centre: np.ndarray, radius: float, spacing: float, jitter: float) -> np.ndarray:
    """Flat monolayer sheet: a rotated hexagonal lattice (honeycomb) with positional jitter."""
    n = int(radius / spacing) + 2
    i, j = np.mgrid[-n : n + 1, -n : n + 1]
    x = (j + 0.5 * (i % 2)) * spacing
    y = i * spacing * np.sqrt(3) / 2
    theta = rng.uniform(0, np.pi)
    c, s = np.cos(theta), np.sin(theta)
    pts = np.stack([x.ravel() * s + y.ravel() * c, x.ravel() * c - y.ravel() * s], axis=1) + centre
    pts = _blob_inside(rng, pts, centre, radius)
    return pts + rng.normal(0, jitter * spacing, pts.shape)


def crowded_sheet(
    rng: np.random.Generator, centre: np.ndarray, radius: float, spacing: float, jitter: float
) -> np.ndarray:
    """Crowded, overlapping, partly multilayered group: two offset jittered lattices."""
    first = hex_sheet(rng, centre, radius, spacing, jitter)
    second = hex_sheet(rng, centre, radius * 0.6, spacing * 1.1, jitter * 1.5)
    return np.concatenate([first, second])


def papillary(rng: np.random.Generator, centre: np.ndarray, length: float, width: float, spacing: float) -> np.ndarray:
    """Papillary frond: cells densely packed along a wandering, branching backbone."""
    out = []
    branches = [(centre, rng.uniform(0, 2 * np.pi), length)]
    for k in range(int(rng.integers(1, 4))):
        start, heading, span = branches[0] if k == 0 else branches[int(rng.integers(0, len(branches)))]
        steps = max(3, int(span / spacing))
        pos = np.array(start, np.float64)
        path = []
        for _ in range(steps):
            heading += rng.normal(0, 0.18)
            pos = pos + spacing * np.array([np.sin(heading), np.cos(heading)])
            path.append(pos.copy())
        path_arr = np.array(path)
        half = width * (0.5 if k == 0 else 0.35)
        n_cells = int(len(path_arr) * 2 * half / spacing)
        along = path_arr[rng.integers(0, len(path_arr), n_cells)]
        across = rng.uniform(-half, half, n_cells)[:, None] * np.array([np.cos(heading), -np.sin(heading)])
        out.append(along + across + rng.normal(0, spacing * 0.25, (n_cells, 2)))
        mid = path_arr[len(path_arr) // 2]
        branches.append((mid, heading + rng.choice((-1, 1)) * rng.uniform(0.6, 1.2), span * 0.6))
    return np.concatenate(out)


def microfollicles(
    rng: np.random.Generator, centre: np.ndarray, radius: float, nuc_radius: float, spacing: float
) -> np.ndarray:
    """Cluster of microfollicles: small rings of 6-12 nuclei around a lumen."""
    out = []
    n = max(1, int((radius / (4 * nuc_radius)) ** 2 * 1.5))
    for _ in range(n):
        c = centre + rng.normal(0, radius * 0.45, 2)
        ring_r = nuc_radius * rng.uniform(1.6, 2.4)
        k = max(5, int(2 * np.pi * ring_r / (spacing * 2 * nuc_radius * 0.8)))
        a = np.linspace(0, 2 * np.pi, k, endpoint=False) + rng.uniform(0, 2 * np.pi)
        ring = c + ring_r * np.stack([np.sin(a), np.cos(a)], axis=1)
        out.append(ring + rng.normal(0, nuc_radius * 0.15, ring.shape))
    return np.concatenate(out)


def scatter(rng: np.random.Generator, shape: tuple[int, int], n: int, margin: float = 0.0) -> np.ndarray:
    """Uniformly scattered single cells."""
    ys = rng.uniform(-margin, shape[0] + margin, n)
    xs = rng.uniform(-margin, shape[1] + margin, n)
    return np.stack([ys, xs], axis=1)


def smear_clusters(rng: np.random.Generator, shape: tuple[int, int], n: int) -> np.ndarray:
    """Blood-like positions: streaks elongated along one smear direction plus uniform spill."""
    n_streak = int(n * 0.7)
    heading = rng.uniform(0, np.pi)
    k = int(rng.integers(2, 6))
    centres = scatter(rng, shape, k)
    which = rng.integers(0, k, n_streak)
    along = rng.normal(0, 0.35 * max(shape), n_streak)
    across = rng.normal(0, 0.08 * min(shape), n_streak)
    d = np.stack(
        [along * np.sin(heading) + across * np.cos(heading), along * np.cos(heading) - across * np.sin(heading)], axis=1
    )
    streak = centres[which] + d
    return np.concatenate([streak, scatter(rng, shape, n - n_streak)])

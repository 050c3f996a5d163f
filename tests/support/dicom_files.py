"""DICOM files for the tests, made with dicom_fixtures."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from dicom_fixtures.synth import make_field
from dicom_fixtures.wrap import wrap_image, write_dicom

HEADER_END = 132  # preamble + "DICM"


def write_images(
    out: Path,
    n: int,
    *,
    iod: str = "vl-microscopic",
    ts: str = "explicit",
    seed: int = 0,
    label: str = "benign",
) -> list[Path]:
    """``n`` synthetic FNAB fields as DICOM files (distinct SOPInstanceUIDs)."""
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        pixels = make_field(label, seed=seed + i)
        ds = wrap_image(pixels, iod, ts, seed=seed + i)
        path = out / f"{iod}-{ts}-{seed + i}.dcm"
        write_dicom(ds, path)
        paths.append(path)
    return paths


def dataset_bytes(data: bytes) -> bytes:
    """The bytes after the File Meta Information group: what travels on the wire."""
    assert data[128:132] == b"DICM", "not a DICOM Part 10 file"
    group_length = int.from_bytes(data[HEADER_END + 8 : HEADER_END + 12], "little")
    return data[HEADER_END + 12 + group_length :]


def random_rgb(seed: int, shape: tuple[int, int] = (768, 1024)) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (*shape, 3), dtype=np.uint8)

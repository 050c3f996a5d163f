"""Decode a received DICOM file into the RGB uint8 image the model and the heatmap use."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from pydicom.pixels.processing import apply_color_lut


class DecodeError(Exception):
    """The pixel data cannot be decoded into an image; the message says why."""


@dataclass(frozen=True)
class DecodedImage:
    dataset: pydicom.Dataset
    rgb: np.ndarray  # (H, W, 3) uint8
    was_colour: bool
    frames: int


def _to_uint8(arr: np.ndarray) -> np.ndarray:
    if arr.dtype == np.uint8:
        return arr
    lo, hi = float(arr.min()), float(arr.max())
    if hi <= lo:
        return np.zeros(arr.shape, np.uint8)
    return ((arr.astype(np.float32) - lo) * (255.0 / (hi - lo))).round().astype(np.uint8)


def _fill_planar_configuration(ds: pydicom.Dataset) -> None:
    """Scanners often omit Planar Configuration for compressed colour data, where it means nothing
    (the codestream decides the layout, and the decoders hand back interleaved samples): assume 0,
    as dcmtk does, instead of refusing to decode."""
    compressed = ds.file_meta.TransferSyntaxUID.is_compressed
    if compressed and int(ds.get("SamplesPerPixel", 1) or 1) > 1 and "PlanarConfiguration" not in ds:
        ds.PlanarConfiguration = 0


def decode(path: Path) -> DecodedImage:
    """Read and decode the first frame; YBR (native 4:2:2 too) becomes RGB, grayscale is replicated."""
    try:
        ds = pydicom.dcmread(path)
        _fill_planar_configuration(ds)
        arr = ds.pixel_array
    except Exception as exc:  # pydicom and the pylibjpeg plugins raise many exception types
        raise DecodeError(f"cannot decode pixel data: {type(exc).__name__}: {exc}") from exc
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    samples = int(ds.SamplesPerPixel)
    if frames > 1:
        arr = arr[0]
    photometric = str(ds.PhotometricInterpretation)
    if photometric == "PALETTE COLOR":
        arr = apply_color_lut(arr, ds)
        samples = 3
    if samples == 1:
        gray = _to_uint8(arr)
        if photometric == "MONOCHROME1":
            gray = 255 - gray
        rgb = np.repeat(gray[..., None], 3, axis=2)
    else:
        rgb = _to_uint8(np.asarray(arr))
    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise DecodeError(f"unexpected decoded shape {rgb.shape}")
    return DecodedImage(ds, np.ascontiguousarray(rgb), was_colour=samples == 3, frames=frames)

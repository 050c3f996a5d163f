"""What the case view shows of a source image: PNG at full resolution, a transparent heatmap
layer, and the header fields (patient identifiers for logged-in reviewers only)."""

from __future__ import annotations

import functools
import io
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pydicom
from flask import Response
from PIL import Image, ImageDraw

from cds_daemon.analysis.decode import DecodeError, decode

if TYPE_CHECKING:
    from cds_daemon.analysis.engine import Engine


@dataclass(frozen=True)
class Header:
    """The source image's identifying and descriptive header fields (never logged)."""

    patient_name: str
    patient_id: str
    birth_date: str
    sex: str
    accession: str
    study_date: str
    study_description: str
    specimen: str
    rows: int
    columns: int


def _date(value: object) -> str:
    text = str(value or "")
    return f"{text[:4]}-{text[4:6]}-{text[6:8]}" if len(text) == 8 and text.isdigit() else text


@functools.lru_cache(maxsize=2048)
def read_header(path: str) -> Header:
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    name = str(ds.get("PatientName", "") or "")
    family, _, given = name.partition("^")
    specimens = [
        str(item.get("SpecimenIdentifier", ""))
        for item in ds.get("SpecimenDescriptionSequence", [])
        if item.get("SpecimenIdentifier")
    ]
    return Header(
        patient_name=f"{family.upper()}, {given.replace('^', ' ')}".strip(", ") if given else family,
        patient_id=str(ds.get("PatientID", "") or ""),
        birth_date=_date(ds.get("PatientBirthDate", "")),
        sex=str(ds.get("PatientSex", "") or ""),
        accession=str(ds.get("AccessionNumber", "") or ""),
        study_date=_date(ds.get("StudyDate", "")),
        study_description=str(ds.get("StudyDescription", "") or ""),
        specimen=", ".join(specimens),
        rows=int(ds.get("Rows", 0) or 0),
        columns=int(ds.get("Columns", 0) or 0),
    )


def png(array: np.ndarray, compress_level: int = 1) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG", compress_level=compress_level)
    return buf.getvalue()


def png_response(data: bytes) -> Response:
    """A PNG for a logged-in reviewer's page: never cached by the browser or a proxy."""
    return Response(data, mimetype="image/png", headers={"Cache-Control": "private, no-store"})


def jpeg_bytes(array: np.ndarray, quality: int = 85) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).convert("RGB").save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def heatmap_rgba(cam: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """CAM in [0, 1] -> opaque RGBA of ``size`` (width, height) in the archived heatmap's colours.

    The page lays it over the image with CSS opacity; at 45 % it matches the Secondary Capture.
    """
    from cds_daemon.reports.heatmap import colorize, upsample_bilinear

    rgb = colorize(upsample_bilinear(cam, (size[1], size[0])))
    return np.dstack([rgb, np.full(rgb.shape[:2], 255, np.uint8)])


class ImageCache:
    """Recently rendered PNGs by key; a case is browsed image by image, so a few suffice."""

    def __init__(self, capacity: int = 24) -> None:
        self.capacity = capacity
        self._items: OrderedDict[str, bytes] = OrderedDict()
        self._lock = threading.Lock()

    def get_or_make(self, key: str, make: Callable[[], bytes]) -> bytes:
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
        data = make()
        with self._lock:
            self._items[key] = data
            while len(self._items) > self.capacity:
                self._items.popitem(last=False)
        return data


def image_png(path: Path) -> bytes:
    """The image as PNG; an image that cannot be decoded shows a grey card that says so."""
    try:
        return png(decode(path).rgb)
    except DecodeError:
        card = Image.new("RGB", (1024, 768), (96, 96, 96))
        ImageDraw.Draw(card).text((40, 360), "This image cannot be decoded.", fill=(255, 255, 255), font_size=40)
        return png(np.asarray(card))


def thumbnail_png(path: Path, width: int = 256) -> bytes:
    """A small PNG of the image (similar cases), ``width`` pixels wide."""
    try:
        rgb = decode(path).rgb
    except DecodeError:
        rgb = np.full((192, 256, 3), 96, dtype=np.uint8)
    picture = Image.fromarray(rgb)
    picture.thumbnail((width, width * 4))
    return png(np.asarray(picture))


def heatmap_png(path: Path, engine: Engine) -> bytes:
    """RGBA PNG at a quarter of the image size; the browser stretches it over the image.

    The CAM is not stored with the prediction, so the engine recomputes it (same bundle, same map).
    """
    rgb = decode(path).rgb
    height, width = rgb.shape[:2]
    return png(heatmap_rgba(engine.predict(rgb).cam, (max(1, width // 4), max(1, height // 4))), compress_level=6)

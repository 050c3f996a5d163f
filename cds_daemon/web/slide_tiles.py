"""A stored slide as a Deep Zoom image, for the review page's viewer (OpenSeadragon), read with wsidicom.

Deep Zoom level ``L`` of a slide ``W x H`` pixels is the slide shrunk by ``2 ** (max_level - L)``, cut in
square tiles of the base level's tile size (no overlap). Where a stored level has that size and tile size and
its frames are JPEG Baseline in a colour space browsers decode, an interior tile *is* a stored frame: its bytes
are sent as they are. Any other tile (a level the pyramid does not have, an edge tile, other codecs) is read
from the nearest finer stored level, shrunk and encoded as JPEG. A level whose tiles would read more than
``MAX_SOURCE`` pixels a side is not served (the viewer starts at ``min_level``), so a slide without a
pyramid cannot make one request read the whole slide.

Open slides and made tiles are kept in bounded caches; a slide is read by one request at a time.
"""

from __future__ import annotations

import io
import math
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from xml.sax.saxutils import quoteattr

import numpy as np
from PIL import Image

from cds_daemon.analysis.slide_reader import SlideImage, SlideUnreadable

JPEG_BASELINE = "1.2.840.10008.1.2.4.50"
#: JPEG frames in these colour spaces are what a browser's JPEG decoder expects (YCbCr).
BROWSER_PHOTOMETRIC = frozenset({"YBR_FULL_422", "YBR_FULL"})
MAX_SOURCE = 4096
JPEG_QUALITY = 85
DEFAULT_TILE = 256


class TileNotFound(LookupError):
    """No such tile (outside the pyramid, or a level not served): HTTP 404."""


@dataclass(frozen=True)
class Tile:
    data: bytes
    stored: bool  # the stored frame's bytes, as they are


@dataclass(frozen=True)
class _Level:
    index: int  # wsidicom's level (log2 of its downsample)
    downsample: float
    width: int
    height: int
    tile_width: int
    tile_height: int
    passthrough: bool  # its frames are JPEG Baseline YCbCr


class DeepZoom:
    """One open slide's Deep Zoom pyramid (see the module)."""

    def __init__(self, image: SlideImage, z: float | None = None) -> None:
        self.image = image
        g = image.geometry
        self.width, self.height = g.width, g.height
        levels = []
        for level in image.wsi.levels:
            data = level.default_instance.image_data
            levels.append(
                _Level(
                    int(level.level),
                    g.width / level.size.width,
                    int(level.size.width),
                    int(level.size.height),
                    int(level.tile_size.width),
                    int(level.tile_size.height),
                    str(data.transfer_syntax) == JPEG_BASELINE
                    and str(data.photometric_interpretation) in BROWSER_PHOTOMETRIC,
                )
            )
        self._levels = sorted(levels, key=lambda lv: lv.downsample)
        base = self._levels[0]
        square = base.tile_width == base.tile_height and 128 <= base.tile_width <= 2048
        self.tile_size = base.tile_width if square else DEFAULT_TILE
        self.max_level = max(0, math.ceil(math.log2(max(self.width, self.height))))
        planes = image.wsi.levels.base_level.focal_planes
        self.z = z if z is not None and z in planes else None
        self.lock = threading.Lock()
        self.closed = False
        self.min_level = next(
            (lv for lv in range(self.max_level + 1) if self._source_side(lv) <= MAX_SOURCE), self.max_level
        )

    def scale(self, level: int) -> int:
        return int(2 ** (self.max_level - level))

    def level_size(self, level: int) -> tuple[int, int]:
        s = self.scale(level)
        return max(1, math.ceil(self.width / s)), max(1, math.ceil(self.height / s))

    def _source(self, level: int) -> _Level:
        """The coarsest stored level at least as fine as Deep Zoom ``level``."""
        s = self.scale(level)
        finer = [lv for lv in self._levels if lv.downsample <= s * 1.001]
        return finer[-1] if finer else self._levels[0]

    def _source_side(self, level: int) -> float:
        return self.tile_size * self.scale(level) / self._source(level).downsample

    def dzi(self) -> bytes:
        return (
            '<?xml version="1.0" encoding="UTF-8"?>\n'
            '<Image xmlns="http://schemas.microsoft.com/deepzoom/2008" Format="jpeg" Overlap="0"'
            f" TileSize={quoteattr(str(self.tile_size))}>"
            f"<Size Width={quoteattr(str(self.width))} Height={quoteattr(str(self.height))}/></Image>\n"
        ).encode()

    def tile(self, level: int, col: int, row: int) -> Tile:
        """Deep Zoom tile (level, col, row) as JPEG; TileNotFound outside the pyramid or below min_level."""
        if not self.min_level <= level <= self.max_level:
            raise TileNotFound(f"level {level} is not served (levels {self.min_level} to {self.max_level})")
        width, height = self.level_size(level)
        t = self.tile_size
        if col < 0 or row < 0 or col * t >= width or row * t >= height:
            raise TileNotFound(f"no tile {col}_{row} at level {level}")
        source = self._source(level)
        interior = (col + 1) * t <= width and (row + 1) * t <= height
        same_grid = (
            abs(source.width - width) <= 1
            and abs(source.height - height) <= 1
            and source.tile_width == source.tile_height == t
        )
        with self.lock:
            if self.closed:  # evicted while this request waited: the viewer retries, and it is opened again
                raise TileNotFound("the slide was closed")
            if source.passthrough and same_grid and interior:
                try:
                    return Tile(self.image.wsi.read_encoded_tile(source.index, (col, row), z=self.z), stored=True)
                except Exception as exc:  # wsidicom's own errors for a frame it cannot find or read
                    raise SlideUnreadable(f"stored tile {col}_{row} of level {source.index}: {exc}") from exc
            return Tile(self._made(level, col, row, source), stored=False)

    def _made(self, level: int, col: int, row: int, source: _Level) -> bytes:
        s, t = self.scale(level), self.tile_size
        x0, y0 = col * t * s, row * t * s  # level-0 pixels
        x1, y1 = min((col + 1) * t * s, self.width), min((row + 1) * t * s, self.height)
        d = source.downsample
        sx0, sy0 = int(x0 / d), int(y0 / d)
        sx1 = min(source.width, max(sx0 + 1, math.ceil(x1 / d)))
        sy1 = min(source.height, max(sy0 + 1, math.ceil(y1 / d)))
        rgb = self.image.read(sx0, sy0, sx1 - sx0, sy1 - sy0, level=source.index, z=self.z)
        size = (max(1, math.ceil(x1 / s) - col * t), max(1, math.ceil(y1 / s) - row * t))
        picture = Image.fromarray(rgb)
        if picture.size != size:
            picture = picture.resize(size, Image.Resampling.BOX)
        return jpeg(picture)

    def region(self, box: tuple[int, int, int, int], max_side: int) -> np.ndarray:
        """Level-0 box (x, y, width, height) as RGB at most ``max_side`` pixels a side, from the coarsest
        stored level that still gives that many (a field of the slide, for its view and thumbnail)."""
        x, y, w, h = box
        wanted = max(w, h) / max(1, max_side)
        usable = [lv for lv in self._levels if lv.downsample <= max(1.0, wanted) * 1.001]
        lv = usable[-1] if usable else self._levels[0]
        d = lv.downsample
        sx, sy = int(x / d), int(y / d)
        sw = max(1, min(lv.width - sx, math.ceil(w / d)))
        sh = max(1, min(lv.height - sy, math.ceil(h / d)))
        with self.lock:
            if self.closed:
                raise TileNotFound("the slide was closed")
            rgb = self.image.read(sx, sy, sw, sh, level=lv.index, z=self.z)
        picture = Image.fromarray(rgb)
        picture.thumbnail((max_side, max_side), Image.Resampling.BOX)
        return np.asarray(picture)

    def close(self) -> None:
        with self.lock:
            self.closed = True
            self.image.close()


def jpeg(picture: Image.Image, quality: int = JPEG_QUALITY) -> bytes:
    buf = io.BytesIO()
    picture.convert("RGB").save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


class SlideTiles:
    """Open slides (at most ``slides``, least recently used closed first) and made tiles (at most
    ``cache_bytes``), by the slide's Series Instance UID."""

    def __init__(self, scratch: Path, slides: int = 4, cache_bytes: int = 64 * 2**20) -> None:
        self.scratch = scratch
        self.capacity = slides
        self.cache_bytes = cache_bytes
        self._open: OrderedDict[str, DeepZoom] = OrderedDict()
        self._tiles: OrderedDict[tuple[str, int, int, int], Tile] = OrderedDict()
        self._held = 0
        self._lock = threading.Lock()
        self._opening = threading.Lock()

    def slide(self, key: str, paths: Callable[[], tuple[list[Path], float | None]]) -> DeepZoom:
        """The open slide ``key``; ``paths`` gives its levels' files and focal plane when it must be opened."""
        with self._lock:
            found = self._open.get(key)
            if found is not None:
                self._open.move_to_end(key)
                return found
        with self._opening:  # one slide opened at a time: opening reads every level's header
            with self._lock:
                found = self._open.get(key)
            if found is not None:
                return found
            files, z = paths()
            opened = DeepZoom(SlideImage(files, self.scratch), z)
            with self._lock:
                self._open[key] = opened
                evicted = []
                while len(self._open) > self.capacity:
                    evicted.append(self._open.popitem(last=False)[1])
            for old in evicted:
                old.close()
            return opened

    def tile(self, key: str, slide: DeepZoom, level: int, col: int, row: int) -> tuple[Tile, bool]:
        """(tile, whether it came from the cache)."""
        name = (key, level, col, row)
        with self._lock:
            cached = self._tiles.get(name)
            if cached is not None:
                self._tiles.move_to_end(name)
                return cached, True
        made = slide.tile(level, col, row)
        with self._lock:
            if name not in self._tiles:
                self._tiles[name] = made
                self._held += len(made.data)
            while self._held > self.cache_bytes and self._tiles:
                self._held -= len(self._tiles.popitem(last=False)[1].data)
        return made, False

    def close(self) -> None:
        with self._lock:
            slides, self._open = list(self._open.values()), OrderedDict()
            self._tiles.clear()
            self._held = 0
        for s in slides:
            s.close()

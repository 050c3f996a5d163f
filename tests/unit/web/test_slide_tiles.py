"""Deep Zoom tiles of stored slides: stored frames as they are where the levels line up, made tiles elsewhere
(edges, levels the pyramid lacks, other codecs), the same pixels either way; our slides and Orthanc's."""

from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cds_daemon.analysis.slide_reader import SlideImage
from cds_daemon.web.slide_tiles import MAX_SOURCE, DeepZoom, SlideTiles, TileNotFound
from tests.support.slides import dicomize_with_orthanc, write_slide


def _pixels(data: bytes) -> np.ndarray:
    assert data[:2] == b"\xff\xd8", "a JPEG"
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"), dtype=np.int16)


@pytest.fixture(scope="module")
def ours(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[Path], np.ndarray]:
    out = tmp_path_factory.mktemp("slide")
    written, smear = write_slide(out / "jpeg", "malignant", seed=31)
    return list(written.paths), smear.planes[smear.sharpest]


def test_the_pyramid_follows_deep_zoom_and_stored_frames_go_as_they_are(
    ours: tuple[list[Path], np.ndarray], tmp_path: Path
) -> None:
    paths, plane = ours
    with SlideImage(paths, tmp_path) as image:
        dz = DeepZoom(image)
        height, width = plane.shape[:2]
        assert (dz.width, dz.height) == (width, height)
        assert dz.max_level == math.ceil(math.log2(max(width, height)))
        assert b'TileSize="512"' in dz.dzi() and f'Width="{width}"'.encode() in dz.dzi()
        assert dz.level_size(dz.max_level - 1) == (math.ceil(width / 2), math.ceil(height / 2))

        stored = dz.tile(dz.max_level, 1, 1)  # interior, level 0 of the pyramid: its frame's bytes
        assert stored.stored and stored.data == image.wsi.read_encoded_tile(0, (1, 1))
        assert np.abs(_pixels(stored.data) - plane[512:1024, 512:1024]).mean() < 6
        half = dz.tile(dz.max_level - 1, 1, 0)  # a level the pyramid lacks (it has 1, 1/4, 1/16): made
        assert not half.stored
        shrunk = np.asarray(Image.fromarray(plane[0:1024, 1024:2048]).resize((512, 512), Image.Resampling.BOX))
        assert np.abs(_pixels(half.data) - shrunk.astype(np.int16)).mean() < 6
        cols = math.ceil(width / 512)
        rows = math.ceil(height / 512)
        edge = dz.tile(dz.max_level, cols - 1, rows - 1)  # cut to the slide's edge
        assert _pixels(edge.data).shape[:2] == (height - 512 * (rows - 1), width - 512 * (cols - 1))
        for outside in ((dz.max_level, cols, 0), (dz.max_level, 0, rows), (dz.max_level + 1, 0, 0), (3, 0, 0)):
            with pytest.raises(TileNotFound):
                dz.tile(*outside)
        assert dz.tile_size * dz.scale(dz.min_level) / 16 <= MAX_SOURCE  # the coarsest served level reads little
        assert dz.min_level == 0 or dz.tile_size * dz.scale(dz.min_level - 1) / 16 > MAX_SOURCE

        field = dz.region((1000, 800, 1024, 768), 256)
        assert field.shape == (192, 256, 3)


def test_a_slide_dicomized_by_orthanc_is_served_after_its_header_repairs(tmp_path: Path) -> None:
    """Another writer (no Image Type, Pixel Spacing swapped, 512 px JPEG tiles, a 3-level pyramid)."""
    _, smear = write_slide(tmp_path / "ours", "benign", seed=32)
    plane = smear.planes[smear.sharpest]
    paths = dicomize_with_orthanc(smear, tmp_path / "orthanc")
    with SlideImage(paths, tmp_path / "scratch") as image:
        assert image.repairs
        dz = DeepZoom(image)
        assert (dz.width, dz.height) == (plane.shape[1], plane.shape[0])
        top = dz.tile(dz.max_level, 1, 1)
        assert np.abs(_pixels(top.data) - plane[512:1024, 512:1024]).mean() < 6
        for level in range(dz.min_level, dz.max_level + 1):  # every served level has its first tile
            w, h = dz.level_size(level)
            assert _pixels(dz.tile(level, 0, 0).data).shape[:2] == (min(h, 512), min(w, 512))


def test_uncompressed_frames_are_encoded_and_the_caches_are_bounded(tmp_path: Path) -> None:
    written, _ = write_slide(tmp_path / "native", "benign", seed=33, jpeg=False, grid=(2, 2), cells=2, blood=1)
    tiles = SlideTiles(tmp_path / "scratch", slides=1, cache_bytes=200_000)
    dz = tiles.slide("a", lambda: (list(written.paths), None))
    tile, cached = tiles.tile("a", dz, dz.max_level, 0, 0)
    assert not tile.stored and not cached and tile.data[:2] == b"\xff\xd8"
    assert tiles.tile("a", dz, dz.max_level, 0, 0) == (tile, True)
    for col in range(4):
        tiles.tile("a", dz, dz.max_level, col, 1)
    assert tiles._held <= 200_000
    assert tiles.slide("a", lambda: pytest.fail("opened twice")) is dz  # type: ignore[arg-type,return-value]
    other, _ = write_slide(tmp_path / "other", "benign", seed=34, grid=(2, 2), cells=2, blood=1)
    tiles.slide("b", lambda: (list(other.paths), None))  # one open slide at most: "a" is closed
    with pytest.raises(TileNotFound):
        dz.tile(dz.max_level, 1, 0)
    tiles.close()

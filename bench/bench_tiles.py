"""Slide viewer tiles from the stored files: latency per tile, cold and warm, beside the raw frame read.

    .venv/bin/python bench/bench_tiles.py [--width 40000 --height 30000] [--tiles 200] [--no-http]

Writes a ``--width`` x ``--height`` slide (JPEG tiles of 512 px, levels 1, 4, 16, 64) and, in one run, times
``--tiles`` random tiles of each kind through the review app's tile source (``web.slide_tiles``):

- *stored*: Deep Zoom's top level, interior tiles: the stored frame's bytes as they are;
- *made, level lacking*: 1/2 (the pyramid has 1/4: read from level 0 and shrunk) and 1/8 (from 1/4);
- *made, coarse*: the coarsest served level (a few tiles, read from the coarsest stored level);

each *cold* (a fresh tile cache; the slide already open) and *warm* (the same tiles again, from the cache),
and the first request of all (opening the slide). The baseline is wsidicom's own read of the same stored
frames (``read_encoded_tile``) in the same run. Then (unless ``--no-http``) the slide is sent with dcmtk to
a daemon (tiny bundle: the model does not matter here), and the same tiles are fetched from its review
page over HTTP with a signed-in session (login check, audit, the real server), cold (the daemon's first
look at the slide) and warm. Prints p50 / p95 in ms. Not part of the test suite.
"""

from __future__ import annotations

import argparse
import http.cookiejar
import json
import random
import re
import statistics
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cds_daemon.web.slide_tiles import DeepZoom, SlideTiles
from dicom_fixtures.smear import make_smear
from dicom_fixtures.wsm import WrittenSlide, write_large_wsm


def _ms(samples: list[float]) -> str:
    ordered = sorted(samples)
    p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
    return f"p50 {statistics.median(ordered):7.2f} ms   p95 {p95:7.2f} ms   (n={len(ordered)})"


def _timed(calls: list[Callable[[], object]]) -> list[float]:
    out = []
    for call in calls:
        t0 = time.perf_counter()
        call()
        out.append((time.perf_counter() - t0) * 1000)
    return out


def _tiles(dz: DeepZoom, level: int, n: int, rng: random.Random, interior: bool) -> list[tuple[int, int, int]]:
    width, height = dz.level_size(level)
    cols, rows = -(-width // dz.tile_size), -(-height // dz.tile_size)
    if interior:
        cols, rows = max(1, width // dz.tile_size), max(1, height // dz.tile_size)
    every = [(level, c, r) for c in range(cols) for r in range(rows)]
    return rng.sample(every, min(n, len(every)))


def _signed_in(url: str, user: str, password: str) -> urllib.request.OpenerDirector:
    jar = http.cookiejar.CookieJar()
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar))
    page = opener.open(f"{url}/login").read().decode()
    token = re.search(r'name="csrf_token" value="([^"]+)"', page)
    form = {"username": user, "password": password, "csrf_token": token.group(1) if token else "", "next": "/"}
    opener.open(f"{url}/login", urllib.parse.urlencode(form).encode()).read()
    return opener


def _http(root: Path, written: WrittenSlide, chosen: dict[str, list[tuple[int, int, int]]]) -> None:
    """The same tiles from a daemon's review page, over HTTP."""
    from model_build.demo import make_tiny_bundle
    from tests.support.processes import DaemonProcess, free_port, storescu, wait_for_port

    bundle = make_tiny_bundle(root / "bundle")
    daemon = DaemonProcess(
        workdir=root / "daemon",
        bundle=bundle,
        web_port=free_port(),
        extra_config="[slides]\nquiet_s = 1\n[reports]\ncase_sr = false\n",
    )
    daemon.start()
    try:
        wait_for_port(daemon.web_port, proc=daemon.proc)
        daemon.cli("user", "add", "bench", "--password-stdin", stdin="a long bench password")
        if storescu(daemon.port, *written.paths, extra=("-xy",)).returncode != 0:
            raise RuntimeError("storescu failed")
        deadline = time.monotonic() + 900
        while not json.loads(daemon.cli("worklist", "list", "--json").stdout)["items"]:
            if time.monotonic() > deadline:
                raise TimeoutError("the slide did not reach the worklist")
            time.sleep(0.5)
        url = f"http://127.0.0.1:{daemon.web_port}"
        opener = _signed_in(url, "bench", "a long bench password")
        t0 = time.perf_counter()
        opener.open(f"{url}/slides/{written.series_uid}.dzi").read()
        print(f"{'HTTP: the .dzi, first (opens the slide)':44s} {(time.perf_counter() - t0) * 1000:7.2f} ms")
        for name, tiles in chosen.items():
            paths = [f"{url}/slides/{written.series_uid}_files/{lv}/{c}_{r}.jpeg" for lv, c, r in tiles]
            for when in ("cold", "warm"):
                ms = _timed([lambda p=p: opener.open(p).read() for p in paths])  # type: ignore[misc]
                print(f"{'HTTP: ' + name + ', ' + when:44s} {_ms(ms)}")
    finally:
        daemon.stop()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--width", type=int, default=40_000)
    ap.add_argument("--height", type=int, default=30_000)
    ap.add_argument("--tiles", type=int, default=200)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--no-http", action="store_true", help="the tile source only, no daemon")
    args = ap.parse_args()
    rng = random.Random(args.seed)
    with tempfile.TemporaryDirectory(prefix="bench-tiles-", dir=Path(__file__).resolve().parents[1] / "var") as tmp:
        smear = make_smear("malignant", 7, grid=(1, 2), cell_patches=1, blood_patches=1)
        t0 = time.perf_counter()
        written = write_large_wsm(smear, Path(tmp) / "slide", args.width, args.height)
        size = sum(p.stat().st_size for p in written.paths) / 2**30
        print(
            f"slide {args.width} x {args.height} px, {len(written.paths)} levels, {size:.2f} GiB JPEG "
            f"(written in {time.perf_counter() - t0:.0f} s)"
        )

        tiles = SlideTiles(Path(tmp) / "scratch")
        t0 = time.perf_counter()
        dz = tiles.slide("bench", lambda: (list(written.paths), None))
        first = dz.tile(dz.max_level, 1, 1)
        print(f"first request (open the slide, read its headers, one tile): {(time.perf_counter() - t0) * 1000:.0f} ms")
        assert first.stored
        kinds = {
            "stored (top level, interior)": _tiles(dz, dz.max_level, args.tiles, rng, True),
            "made, level lacking (1/2)": _tiles(dz, dz.max_level - 1, args.tiles, rng, False),
            "made, level lacking (1/8)": _tiles(dz, dz.max_level - 3, args.tiles, rng, False),
            f"made, coarsest served (level {dz.min_level})": _tiles(dz, dz.min_level, args.tiles, rng, False),
        }
        base = kinds["stored (top level, interior)"]
        wsi = dz.image.wsi
        baseline = _timed([lambda c=c, r=r: wsi.read_encoded_tile(0, (c, r)) for _, c, r in base])  # type: ignore[misc]
        print(f"{'baseline: wsidicom read_encoded_tile':44s} {_ms(baseline)}")
        for name, chosen in kinds.items():
            fresh = SlideTiles(Path(tmp) / "scratch")
            fresh._open["bench"] = dz  # the slide open, its tile cache empty
            cold = _timed([lambda t=t, f=fresh: f.tile("bench", dz, *t) for t in chosen])  # type: ignore[misc]
            warm = _timed([lambda t=t, f=fresh: f.tile("bench", dz, *t) for t in chosen])  # type: ignore[misc]
            print(f"{name + ', cold':44s} {_ms(cold)}")
            print(f"{name + ', warm':44s} {_ms(warm)}")
        tiles.close()
        if not args.no_http:
            _http(Path(tmp), written, kinds)


if __name__ == "__main__":
    main()

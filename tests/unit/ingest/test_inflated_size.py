"""The deflate-bomb check counts inflated bytes without holding them, and ends on real streams."""

from __future__ import annotations

import zlib

from cds_daemon.ingest.listener import inflated_size


def _raw_deflate(data: bytes) -> bytes:
    packer = zlib.compressobj(6, zlib.DEFLATED, -zlib.MAX_WBITS)
    return packer.compress(data) + packer.flush()


def test_counts_the_inflated_size_and_stops_at_a_trailing_pad_byte() -> None:
    data = bytes(range(256)) * 10_000  # 2.5 MiB: more than one 1 MiB step
    stream = _raw_deflate(data)
    assert inflated_size(stream, 2**30) == len(data)
    assert inflated_size(stream + b"\x00", 2**30) == len(data)  # DICOM pads odd-length values to even


def test_a_bomb_is_cut_just_past_the_limit() -> None:
    stream = _raw_deflate(bytes(256 * 2**20))  # 256 MiB of zeros: about 256 KiB deflated
    counted = inflated_size(stream, 16 * 2**20)
    assert 16 * 2**20 < counted <= 17 * 2**20

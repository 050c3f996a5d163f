"""Codestream headers of encapsulated pixel data, read without decoding.

At C-STORE time each frame's header is parsed and compared with the image attributes, so a frame
that no decoder could turn into the declared image is refused while the sender is still connected.
This reads a few dozen bytes per frame (microseconds); the entropy-coded data are not touched, so
a frame with a sound header but damaged scan data still fails later, in the decoder.

- JPEG (ISO 10918-1): SOI, then the SOFn segment (precision, lines, samples per line, components);
  for the sequential DCT processes also the first SOS (spectral selection must be 0..63).
- JPEG-LS (ISO 14495-1): SOI, then SOF55 (same layout as SOFn).
- JPEG 2000 and HTJ2K (ISO 15444-1/-15): SOC then SIZ (Xsiz - XOsiz, Ysiz - YOsiz, Csiz, Ssiz),
  optionally inside a JP2 file-format wrapper (jp2c box).
- RLE (PS3.5 Annex G): the 64-byte header (number of segments, increasing offsets inside the frame).
"""

from __future__ import annotations

import itertools
import struct
from dataclasses import dataclass

_SOF_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}  # DHT, JPG and DAC are not SOFs
_SEQUENTIAL_DCT = frozenset({0xC0, 0xC1, 0xC5, 0xC9, 0xCD})
_SOF55 = 0xF7
_STANDALONE = frozenset({0x01, *range(0xD0, 0xD8)})  # TEM, RSTn: markers without a length


class CodestreamError(ValueError):
    """The frame's header cannot be parsed, or says something else than the DICOM attributes."""


@dataclass(frozen=True)
class FrameHeader:
    """What a codestream header declares about its image."""

    rows: int
    columns: int
    components: int
    precision: int  # bits per sample (the largest component's, for J2K)


def _u16(data: bytes, offset: int) -> int:
    if offset + 2 > len(data):
        raise CodestreamError("header ends early")
    return int(struct.unpack_from(">H", data, offset)[0])


def jpeg_header(frame: bytes) -> FrameHeader:
    """SOFn (JPEG) or SOF55 (JPEG-LS) of one frame."""
    if frame[:2] != b"\xff\xd8":
        raise CodestreamError("JPEG frame does not start with SOI")
    offset = 2
    header: FrameHeader | None = None
    sof = 0
    while offset + 4 <= len(frame):
        if frame[offset] != 0xFF:
            raise CodestreamError(f"JPEG marker expected at byte {offset}")
        marker = frame[offset + 1]
        if marker == 0xFF:  # fill byte
            offset += 1
            continue
        if marker in _STANDALONE:
            offset += 2
            continue
        length = _u16(frame, offset + 2)
        if length < 2 or offset + 2 + length > len(frame):
            raise CodestreamError(f"JPEG segment 0xFF{marker:02X} is longer than the frame")
        if marker in _SOF_MARKERS or marker == _SOF55:
            if header is not None:
                raise CodestreamError("JPEG frame has a second SOF segment before its scan")
            if length < 8:
                raise CodestreamError("JPEG SOF segment too short")
            precision = frame[offset + 4]
            rows, columns = _u16(frame, offset + 5), _u16(frame, offset + 7)
            components = frame[offset + 9]
            if length != 8 + 3 * components:
                raise CodestreamError("JPEG SOF length does not match its component count")
            header, sof = FrameHeader(rows, columns, components, precision), marker
        elif marker == 0xDA:  # SOS: the scan follows; nothing after this is a header
            if header is None:
                raise CodestreamError("JPEG scan before any SOF segment")
            if sof in _SEQUENTIAL_DCT:
                count = frame[offset + 4]
                spectral = offset + 5 + 2 * count
                if spectral + 2 > len(frame) or (frame[spectral], frame[spectral + 1]) != (0, 63):
                    raise CodestreamError("JPEG sequential scan must select coefficients 0..63")
            return header
        elif marker == 0xD9:
            break
        offset += 2 + length
    raise CodestreamError("JPEG frame has no SOF and scan")


def _j2k_start(frame: bytes) -> int:
    """Offset of the J2K codestream: 0, or the start of the jp2c box of a JP2 file."""
    if frame[:2] == b"\xff\x4f":
        return 0
    if frame[4:8] != b"jP  ":
        raise CodestreamError("JPEG 2000 frame starts with neither SOC nor a JP2 signature box")
    offset = 0
    while offset + 8 <= len(frame):
        length = int(struct.unpack_from(">I", frame, offset)[0])
        kind = frame[offset + 4 : offset + 8]
        header = 8
        if length == 1:  # 64-bit box length follows
            if offset + 16 > len(frame):
                break
            length, header = int(struct.unpack_from(">Q", frame, offset + 8)[0]), 16
        if kind == b"jp2c":
            return offset + header
        if length == 0 or length < header:
            break
        offset += length
    raise CodestreamError("JP2 file has no codestream box")


def j2k_header(frame: bytes) -> FrameHeader:
    """SIZ of one JPEG 2000 / HTJ2K frame (raw codestream or JP2 file)."""
    start = _j2k_start(frame)
    if frame[start : start + 4] != b"\xff\x4f\xff\x51":
        raise CodestreamError("JPEG 2000 codestream does not start with SOC, SIZ")
    if start + 42 > len(frame):
        raise CodestreamError("JPEG 2000 SIZ segment ends early")
    lsiz, _rsiz, xsiz, ysiz, xosiz, yosiz, _xt, _yt, _xto, _yto, csiz = struct.unpack_from(
        ">HHIIIIIIIIH", frame, start + 4
    )
    if not 1 <= csiz <= 16384 or lsiz != 38 + 3 * csiz or start + 4 + lsiz > len(frame):
        raise CodestreamError("JPEG 2000 SIZ segment is malformed")
    if xsiz <= xosiz or ysiz <= yosiz:
        raise CodestreamError("JPEG 2000 SIZ declares an empty image")
    precision = 0
    for c in range(csiz):
        ssiz, xr, yr = frame[start + 42 + 3 * c : start + 45 + 3 * c]
        if xr == 0 or yr == 0:
            raise CodestreamError("JPEG 2000 SIZ has a zero sub-sampling factor")
        precision = max(precision, (ssiz & 0x7F) + 1)
    return FrameHeader(ysiz - yosiz, xsiz - xosiz, csiz, precision)


def rle_segments(frame: bytes) -> int:
    """Number of segments in an RLE frame's header, after checking its offsets."""
    if len(frame) < 64:
        raise CodestreamError("RLE frame is shorter than its 64-byte header")
    count, *offsets = struct.unpack_from("<16I", frame, 0)
    if not 1 <= count <= 15:
        raise CodestreamError(f"RLE header declares {count} segments")
    used = offsets[:count]
    if used[0] != 64 or any(b <= a for a, b in itertools.pairwise(used)) or used[-1] >= len(frame):
        raise CodestreamError("RLE segment offsets are not increasing offsets inside the frame")
    return int(count)

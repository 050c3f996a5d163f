"""Pixel Data encoding for each supported transfer syntax.

Lossless codecs (RLE, JPEG-LS, JPEG 2000) go through ``pydicom.pixels.compress`` with the
pylibjpeg/pyjpegls plugins; JPEG Baseline is encoded by Pillow as YCbCr 4:2:2 and
encapsulated, which is what pydicom cannot encode itself.
"""

import io

import numpy as np
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate
from pydicom.pixels import compress
from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGLSLossless,
    RLELossless,
)

TRANSFER_SYNTAXES: dict[str, str] = {
    "explicit": ExplicitVRLittleEndian,
    "implicit": ImplicitVRLittleEndian,
    "jpeg-baseline": JPEGBaseline8Bit,
    "jpeg2000": JPEG2000Lossless,
    "rle": RLELossless,
    "jpeg-ls": JPEGLSLossless,
    "deflated": DeflatedExplicitVRLittleEndian,
}

# Photometric Interpretation of the stored pixel data for RGB input (PS3.5 8.2).
PHOTOMETRIC = {
    "jpeg-baseline": "YBR_FULL_422",
    "jpeg2000": "YBR_RCT",  # lossless JPEG 2000 with the reversible colour transform
}
JPEG_QUALITY = 92

# dcmtk storescu proposes only uncompressed syntaxes by default and cannot convert
# compressed files without codecs; these options make it propose the file's own syntax.
STORESCU_OPTIONS: dict[str, str] = {
    "explicit": "-x=",
    "implicit": "-xi",
    "jpeg-baseline": "-xy",
    "jpeg2000": "-xv",
    "rle": "-xr",
    "jpeg-ls": "-xt",
    "deflated": "-xd",
}


def photometric_for(ts: str) -> str:
    return PHOTOMETRIC.get(ts, "RGB")


def jpeg_baseline_frame(rgb: np.ndarray, quality: int = JPEG_QUALITY) -> bytes:
    """Encode one HxWx3 uint8 frame as a baseline JPEG (YCbCr, 4:2:2 chroma subsampling)."""
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(rgb)).save(buf, format="JPEG", quality=quality, subsampling=1)
    return buf.getvalue()


def set_pixel_data(ds: Dataset, frames: np.ndarray, ts: str) -> None:
    """Store ``frames`` (FxHxWx3 uint8) in ``ds`` encoded for transfer syntax short name ``ts``.

    Image Pixel attributes must already describe the stored data, including the
    Photometric Interpretation from :func:`photometric_for`.
    """
    uid = UID(TRANSFER_SYNTAXES[ts])
    ds.file_meta.TransferSyntaxUID = uid
    arr = frames[0] if len(frames) == 1 else frames
    if ts in ("explicit", "implicit", "deflated"):
        ds.PixelData = np.ascontiguousarray(frames).tobytes()
        ds["PixelData"].VR = "OB"
    elif ts == "jpeg-baseline":
        encoded = [jpeg_baseline_frame(f) for f in frames]
        ds.PixelData = encapsulate(encoded)
        ds["PixelData"].VR = "OB"
        ds["PixelData"].is_undefined_length = True
        ratio = frames[0].nbytes * len(frames) / sum(len(e) for e in encoded)
        ds.LossyImageCompression = "01"
        ds.LossyImageCompressionRatio = f"{ratio:.2f}"
        ds.LossyImageCompressionMethod = "ISO_10918_1"
    else:
        compress(ds, uid, np.ascontiguousarray(arr), generate_instance_uid=False)

"""CAM heatmap as a Secondary Capture image, and the same picture for the reviewer web page.

The CAM (e.g. 21x28) is upsampled bilinearly to the image, mapped through a viridis-like
colour table and blended over the image at 45% opacity. A header and a footer strip carry
the burned-in "NOT FOR DIAGNOSIS" notice, the model, the predicted class with its
probability and a 0..1 colour bar, so the picture explains itself wherever it is shown.
No patient data is burned in.
"""

from __future__ import annotations

import functools

import highdicom as hd
import numpy as np
from PIL import Image, ImageDraw, ImageFont
from pydicom import Dataset
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, JPEGBaseline8Bit

from cds_daemon.common.vocabulary import SERIES_NUMBER, OutputKind
from cds_daemon.reports import codes
from cds_daemon.reports.result import AIResult
from cds_daemon.reports.source import (
    DEFAULT_MANUFACTURER,
    character_set,
    contributing_equipment,
    copy_patient_study,
    equipment,
    evidence_of,
    now,
    series_description,
)
from cds_daemon.reports.uids import derived_uid

NOT_FOR_DIAGNOSIS = "NOT FOR DIAGNOSIS"
ALPHA = 0.45
MAX_SIDE = 1024

# Viridis sampled at 0, 0.1, ..., 1 (matplotlib's published values); linear in between.
_VIRIDIS_ANCHORS = np.array(
    [
        [68, 1, 84],
        [72, 36, 117],
        [65, 68, 135],
        [53, 95, 141],
        [42, 120, 142],
        [33, 145, 140],
        [34, 168, 132],
        [68, 191, 112],
        [122, 209, 81],
        [189, 223, 38],
        [253, 231, 37],
    ],
    dtype=np.float64,
)


def _make_lut() -> np.ndarray:
    x = np.linspace(0.0, 1.0, 256)
    xp = np.linspace(0.0, 1.0, len(_VIRIDIS_ANCHORS))
    channels = [np.interp(x, xp, _VIRIDIS_ANCHORS[:, c]) for c in range(3)]
    return np.stack(channels, axis=1).round().astype(np.uint8)


#: (256, 3) uint8 colour table: index round(255 * value) for value in [0, 1].
LUT = _make_lut()
_PALETTE = LUT.reshape(-1).tolist()

_WHITE = (255, 255, 255)
_GREY = (200, 200, 200)
_WARN = (255, 64, 64)
_BG = (0, 0, 0)


def colorize(values: np.ndarray) -> np.ndarray:
    """Map values in [0, 1] (clipped) to RGB uint8 through :data:`LUT`."""
    idx = np.rint(np.clip(np.nan_to_num(values), 0.0, 1.0) * 255.0).astype(np.intp)
    return np.asarray(LUT[idx])


def _axis_weights(n_out: int, n_in: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    # Pixel-centre alignment: output pixel i samples input coordinate (i + 0.5) * n_in / n_out - 0.5.
    pos = np.clip((np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5, 0.0, n_in - 1)
    lo = np.floor(pos).astype(np.intp)
    hi = np.minimum(lo + 1, n_in - 1)
    return lo, hi, (pos - lo).astype(np.float32)


def upsample_bilinear(cam: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of a 2-D map to ``shape`` (rows, cols), float32."""
    cam = np.asarray(cam, dtype=np.float32)
    if cam.ndim != 2 or cam.size == 0:
        raise ValueError(f"cam must be a non-empty 2-D map, got shape {cam.shape}")
    r0, r1, wr = _axis_weights(shape[0], cam.shape[0])
    c0, c1, wc = _axis_weights(shape[1], cam.shape[1])
    rows = cam[r0] * (1.0 - wr)[:, None] + cam[r1] * wr[:, None]
    return np.asarray(rows[:, c0] * (1.0 - wc)[None, :] + rows[:, c1] * wc[None, :])


def _palette_image(cam: np.ndarray, shape: tuple[int, int]) -> Image.Image:
    """The CAM upsampled to ``shape`` and coloured through :data:`LUT`, as a Pillow RGB image.

    The small map is cleaned and clipped first; bilinear interpolation stays inside [0, 1], so the
    full-size map only needs one scale-and-round pass to become LUT indices.
    """
    small = np.clip(np.nan_to_num(np.asarray(cam, dtype=np.float32)), 0.0, 1.0)
    index = upsample_bilinear(small, shape)
    index *= 255.0
    index += 0.5
    indexed = Image.fromarray(index.astype(np.uint8), "L")
    indexed.putpalette(_PALETTE)
    return indexed.convert("RGB")


def render_overlay(pixels: np.ndarray, cam: np.ndarray, *, alpha: float = ALPHA) -> np.ndarray:
    """The image with the CAM (values in [0, 1]) blended over it; same size as ``pixels``."""
    if pixels.ndim != 3 or pixels.shape[2] != 3 or pixels.dtype != np.uint8:
        raise ValueError(f"pixels must be (H, W, 3) uint8, got {pixels.shape} {pixels.dtype}")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError("alpha must lie in [0, 1]")
    colours = _palette_image(cam, pixels.shape[:2])
    return np.asarray(Image.blend(Image.fromarray(np.ascontiguousarray(pixels), "RGB"), colours, alpha))


@functools.lru_cache(maxsize=64)
def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    return ImageFont.load_default(size=size)


def _text_width(draw: ImageDraw.ImageDraw, text: str, font: ImageFont.FreeTypeFont | ImageFont.ImageFont) -> int:
    left, _, right, _ = draw.textbbox((0, 0), text, font=font)
    return int(right - left)


def _fitted(text: str, size: int, width: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    """The largest font up to ``size`` (not below 10 px) that fits ``text`` into ``width``."""
    return _font(_fitted_size(text, size, width))


@functools.lru_cache(maxsize=1024)
def _fitted_size(text: str, size: int, width: int) -> int:
    draw = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    while size > 10 and _text_width(draw, text, _font(size)) > width:
        size -= 1
    return size


def _layout(h: int, w: int) -> tuple[int, int, int, int]:
    """(image rows, image cols, header rows, footer rows) with the long side of the whole picture <= 1024."""
    font = 20
    header, footer = 2 * font + 8, 4 * font + 16
    scale = min(MAX_SIDE / w, (MAX_SIDE - header - footer) / h)
    return max(1, round(h * scale)), max(1, round(w * scale)), header, footer


def _draw_header(draw: ImageDraw.ImageDraw, width: int, height: int, result: AIResult) -> None:
    pad = 10
    notice = _fitted(NOT_FOR_DIAGNOSIS, 26, width // 2 - pad)
    draw.text(
        (pad, height // 2),
        NOT_FOR_DIAGNOSIS,
        font=notice,
        fill=_WARN,
        anchor="lm",
        stroke_width=1,
        stroke_fill=_WARN,
    )
    label = f"AI heatmap - {result.model_label}"
    font = _fitted(label, 18, width // 2 - 2 * pad)
    draw.text((width - pad, height // 2), label, font=font, fill=_WHITE, anchor="rm")


def _draw_footer(canvas: Image.Image, top: int, width: int, height: int, result: AIResult) -> None:
    draw = ImageDraw.Draw(canvas)
    pad = 10
    bar_w, bar_h = max(60, width // 4), 18
    small = _font(15)
    draw.text((pad, top + 6), "Heatmap", font=small, fill=_GREY)
    bar_top = top + 28
    ramp = colorize(np.linspace(0.0, 1.0, bar_w))[None, :, :].repeat(bar_h, axis=0)
    canvas.paste(Image.fromarray(ramp, "RGB"), (pad, bar_top))
    draw.rectangle((pad - 1, bar_top - 1, pad + bar_w, bar_top + bar_h), outline=_GREY)
    draw.text((pad, bar_top + bar_h + 4), "0 low", font=small, fill=_WHITE)
    draw.text((pad + bar_w, bar_top + bar_h + 4), "high 1", font=small, fill=_WHITE, anchor="ra")

    x = pad + bar_w + 3 * pad
    room = width - x - pad
    predicted = f"Predicted: {result.display_name(result.predicted)}  p = {result.probability(result.predicted):.2f}"
    draw.text((x, top + 8), predicted, font=_fitted(predicted, 20, room), fill=_WHITE)
    status = "Referred for expert review" if result.referred else "Not referred"
    second = f"{status}. Brighter = more influence on this class. {NOT_FOR_DIAGNOSIS}."
    draw.text((x, top + 8 + height // 2), second, font=_fitted(second, 16, room), fill=_GREY)


def render_heatmap(pixels: np.ndarray, result: AIResult) -> np.ndarray:
    """The full annotated picture stored in the Secondary Capture (long side <= 1024)."""
    result.validate()
    if result.cam is None:
        raise ValueError("the result has no CAM: there is no heatmap to render")
    if pixels.ndim != 3 or pixels.shape[2] != 3 or pixels.dtype != np.uint8:
        raise ValueError(f"pixels must be (H, W, 3) uint8, got {pixels.shape} {pixels.dtype}")
    rows, cols, header, footer = _layout(*pixels.shape[:2])
    image = pixels
    if (rows, cols) != pixels.shape[:2]:
        image = np.asarray(Image.fromarray(pixels, "RGB").resize((cols, rows), Image.Resampling.BILINEAR))
    canvas = Image.new("RGB", (cols, header + rows + footer), _BG)
    canvas.paste(Image.fromarray(render_overlay(image, result.cam), "RGB"), (0, header))
    _draw_header(ImageDraw.Draw(canvas), cols, header, result)
    _draw_footer(canvas, header + rows, cols, footer, result)
    return np.asarray(canvas)


#: Fields a slide's mosaic shows at most, and how many per row.
MOSAIC_FIELDS, MOSAIC_COLUMNS = 6, 3
_CAPTION = 24


def render_mosaic(tiles: list[tuple[np.ndarray, np.ndarray, str]], result: AIResult) -> np.ndarray:
    """A slide's top fields, each with its CAM blended over it and a caption, under the slide's header and over
    its footer (the same as an image's heatmap); long side 1024. ``tiles``: (pixels, cam, caption)."""
    if not tiles:
        raise ValueError("a mosaic needs at least one field")
    tiles = tiles[:MOSAIC_FIELDS]
    columns = min(MOSAIC_COLUMNS, len(tiles))
    rows = -(-len(tiles) // columns)
    tile_w = MAX_SIDE // columns
    tile_h = round(tile_w * 3 / 4)
    _, _, header, footer = _layout(tile_h, tile_w)
    width = tile_w * columns
    canvas = Image.new("RGB", (width, header + rows * (tile_h + _CAPTION) + footer), _BG)
    draw = ImageDraw.Draw(canvas)
    for n, (pixels, cam, caption) in enumerate(tiles):
        r, c = divmod(n, columns)
        small = np.asarray(Image.fromarray(np.ascontiguousarray(pixels), "RGB").resize((tile_w, tile_h)))
        top = header + r * (tile_h + _CAPTION)
        canvas.paste(Image.fromarray(render_overlay(small, cam), "RGB"), (c * tile_w, top))
        draw.text((c * tile_w + 6, top + tile_h + 3), caption, font=_fitted(caption, 16, tile_w - 12), fill=_WHITE)
    _draw_header(draw, width, header, result)
    _draw_footer(canvas, header + rows * (tile_h + _CAPTION), width, footer, result)
    return np.asarray(canvas)


#: Lossy transfer syntaxes -> Lossy Image Compression Method (PS3.3 C.7.6.1.1.5.1).
_LOSSY_SYNTAXES = {
    "1.2.840.10008.1.2.4.50": "ISO_10918_1",
    "1.2.840.10008.1.2.4.51": "ISO_10918_1",
    "1.2.840.10008.1.2.4.81": "ISO_14495_1",
    "1.2.840.10008.1.2.4.91": "ISO_15444_1",
    "1.2.840.10008.1.2.4.93": "ISO_15444_1",
    "1.2.840.10008.1.2.4.203": "ISO_15444_15",
}


def _lossy_attributes(source: Dataset, ours: float | None) -> dict[str, object]:
    """Once lossy-compressed, always flagged (PS3.3 C.7.6.1.1.5), whether the source says so or its transfer
    syntax does (a camera JPEG). ``ours``: the ratio of our own JPEG encoding of the picture, one more lossy
    step after the source's (ratio and method then have a value per step, the source's first)."""
    syntax = str(getattr(getattr(source, "file_meta", None), "TransferSyntaxUID", "") or "")
    source_lossy = str(source.get("LossyImageCompression", "")) == "01" or syntax in _LOSSY_SYNTAXES
    if not source_lossy and ours is None:
        return {"LossyImageCompression": "00"}
    ratios: list[str] = []
    methods: list[str] = []
    if source_lossy:
        ratios = [str(v) for v in _values(source.get("LossyImageCompressionRatio"))]
        methods = [str(v) for v in _values(source.get("LossyImageCompressionMethod"))]
        if not methods and syntax in _LOSSY_SYNTAXES:
            methods = [_LOSSY_SYNTAXES[syntax]]
    if ours is not None:
        if len(ratios) != len(methods):  # the source's history is incomplete: only our step can be stated
            ratios, methods = [], []
        ratios.append(f"{ours:.2f}")
        methods.append("ISO_10918_1")
    attrs: dict[str, object] = {"LossyImageCompression": "01"}
    if ratios:
        attrs["LossyImageCompressionRatio"] = ratios if len(ratios) > 1 else ratios[0]
    if methods:
        attrs["LossyImageCompressionMethod"] = methods if len(methods) > 1 else methods[0]
    return attrs


def _values(element: object) -> list[object]:
    if element is None or element == "":
        return []
    return list(element) if isinstance(element, list | tuple | MultiValue) else [element]


def build_heatmap_sc(
    source: Dataset,
    source_pixels: np.ndarray,
    result: AIResult,
    *,
    manufacturer: str = DEFAULT_MANUFACTURER,
    jpeg: bool = True,
) -> Dataset:
    """The heatmap as a Secondary Capture image in the source study (new series, deterministic UIDs).

    ``jpeg``: JPEG Baseline (quality 95, libjpeg-turbo through Pillow), about 16x smaller than the
    uncompressed picture (2.8 MB) to write, fsync and send; a destination that does not accept it gets it
    decompressed (``egress.sender``). The picture is a rendering, not a diagnostic image, and says so.
    """
    picture = render_heatmap(np.ascontiguousarray(source_pixels), result)
    derivation = (
        f"Class activation map of {result.model_label} for class '{result.predicted}' "
        f"(p={result.probability(result.predicted):.3f}), bilinear upsampled, viridis colour map "
        f"at {round(ALPHA * 100)}% opacity over the source image; legend and notice burned in. "
        f"{NOT_FOR_DIAGNOSIS}."
    )
    return heatmap_picture_sc(source, picture, result, derivation, manufacturer=manufacturer, jpeg=jpeg)


def heatmap_picture_sc(
    source: Dataset,
    picture: np.ndarray,
    result: AIResult,
    derivation: str,
    *,
    manufacturer: str = DEFAULT_MANUFACTURER,
    jpeg: bool = True,
) -> Dataset:
    """A rendered heatmap picture (an image's, or a slide's mosaic of fields) as the source's heatmap SC."""
    header = evidence_of(source)
    created = now()
    sc = hd.sc.SCImage.from_ref_dataset(
        ref_dataset=header,
        pixel_array=picture,
        photometric_interpretation="YBR_FULL_422" if jpeg else "RGB",
        bits_allocated=8,
        coordinate_system="PATIENT",
        patient_orientation=("L", "F"),
        series_instance_uid=derived_uid(header.SOPInstanceUID, result.model_version, "sc-series"),
        series_number=SERIES_NUMBER[OutputKind.SC],
        sop_instance_uid=derived_uid(header.SOPInstanceUID, result.model_version, "sc"),
        instance_number=1,
        transfer_syntax_uid=JPEGBaseline8Bit if jpeg else ExplicitVRLittleEndian,
        series_description=series_description("AI heatmap", result, NOT_FOR_DIAGNOSIS),
        specific_character_set=character_set(header, result, manufacturer),
        content_date=created.date(),
        content_time=created.time(),
        series_date=created.date(),
        series_time=created.time(),
        **equipment(result, manufacturer),
    )
    copy_patient_study(sc, header)
    sc.PatientOrientation = ""  # type: ignore[assignment]  # a photomicrograph has none (type 2: empty)
    sc.ConversionType = "WSD"  # made by software from a stored image, not captured from a video interface
    sc.ImageType = ["DERIVED", "SECONDARY"]
    # Thyroid is an unpaired structure: with BodyPartExamined, Laterality (type 2C) is rightly absent.
    sc.BodyPartExamined = str(header.get("BodyPartExamined", "") or "THYROID")
    sc.BurnedInAnnotation = "YES"
    sc.ImageComments = f"{NOT_FOR_DIAGNOSIS}. AI class activation map, {result.model_label}."
    sc.DerivationDescription = derivation[:1024]
    reference = Dataset()
    reference.ReferencedSOPClassUID = header.SOPClassUID
    reference.ReferencedSOPInstanceUID = header.SOPInstanceUID
    if int(header.get("NumberOfFrames", 1) or 1) > 1:
        reference.ReferencedFrameNumber = 1
    reference.PurposeOfReferenceCodeSequence = [hd.sr.CodedConcept.from_code(codes.SOURCE_IMAGE_FOR_PROCESSING)]
    sc.SourceImageSequence = Sequence([reference])
    ratio = picture.nbytes / len(sc.PixelData) if jpeg else None
    for keyword, value in _lossy_attributes(source, ratio).items():
        setattr(sc, keyword, value)
    sc.ContributingEquipmentSequence = [contributing_equipment(result, manufacturer)]
    return sc

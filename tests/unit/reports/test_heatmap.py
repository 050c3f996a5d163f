from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cds_daemon.reports import codes
from cds_daemon.reports.heatmap import (
    LUT,
    build_heatmap_sc,
    render_heatmap,
    render_overlay,
    upsample_bilinear,
)
from cds_daemon.reports.result import AIResult
from cds_daemon.reports.uids import derived_uid
from tests.support.reports import (
    HOT,
    SOURCES,
    assert_valid,
    field_pixels,
    make_result,
    minimal_sc,
    pixels_of,
    vl_microscopic,
)

EXAMPLE = Path(__file__).resolve().parents[3] / "docs" / "heatmap_example.png"
HEADER_ROWS = 48  # _layout: 2 * 20 + 8


def cell_block(image: np.ndarray, rows: slice, cols: slice, grid: tuple[int, int] = (21, 28)) -> np.ndarray:
    """The pixels under CAM cells ``rows`` x ``cols``, one pixel in from each edge (bilinear blur)."""
    h, w = image.shape[:2]
    r0, r1 = rows.start * h // grid[0] + 20, rows.stop * h // grid[0] - 20
    c0, c1 = cols.start * w // grid[1] + 20, cols.stop * w // grid[1] - 20
    return image[r0:r1, c0:c1].astype(np.int16)


def test_upsample_bilinear() -> None:
    assert np.allclose(upsample_bilinear(np.full((3, 4), 0.7), (30, 40)), 0.7)
    ramp = np.array([[0.0, 1.0]], np.float32)
    row = upsample_bilinear(ramp, (1, 8))[0]
    assert row[0] == 0.0 and row[-1] == 1.0
    assert np.all(np.diff(row) >= 0)
    assert row[3] == pytest.approx(0.375)  # pixel centres: (3 + 0.5) * 2 / 8 - 0.5
    cam = np.random.default_rng(0).random((21, 28)).astype(np.float32)
    up = upsample_bilinear(cam, (768, 1024))
    assert up.shape == (768, 1024) and up.dtype == np.float32
    assert up.min() >= cam.min() and up.max() <= cam.max()
    assert up[0, 0] == pytest.approx(cam[0, 0]) and up[-1, -1] == pytest.approx(cam[-1, -1])


def test_lut_is_viridis_like_and_perceptually_ordered() -> None:
    assert LUT.shape == (256, 3) and LUT.dtype == np.uint8
    assert tuple(LUT[0]) == (68, 1, 84) and tuple(LUT[-1]) == (253, 231, 37)
    luminance = LUT.astype(np.float64) @ np.array([0.2126, 0.7152, 0.0722])
    assert np.all(np.diff(luminance) >= 0)
    assert np.all(np.diff(luminance[::4]) > 0)


def test_render_overlay_follows_the_cam() -> None:
    pixels = np.full((210, 280, 3), 128, np.uint8)
    cam = np.zeros((21, 28), np.float32)
    cam[HOT] = 1.0
    out = render_overlay(pixels, cam)
    assert out.shape == pixels.shape and out.dtype == np.uint8
    hot = out[100, 160].astype(int)
    cold = out[10, 10].astype(int)
    expected_hot = np.rint(0.55 * 128 + 0.45 * LUT[255]).astype(int)
    expected_cold = np.rint(0.55 * 128 + 0.45 * LUT[0]).astype(int)
    assert np.abs(hot - expected_hot).max() <= 1
    assert np.abs(cold - expected_cold).max() <= 1
    assert np.array_equal(render_overlay(pixels, cam, alpha=0.0), pixels)
    with pytest.raises(ValueError):
        render_overlay(pixels[..., 0], cam)


@pytest.mark.parametrize("kind", sorted(SOURCES))
def test_heatmap_sc_passes_dciodvfy(kind: str, tmp_path: Path) -> None:
    source = SOURCES[kind]()
    sc = build_heatmap_sc(source, pixels_of(source), make_result())
    assert_valid(sc, tmp_path, kind)


def test_heatmap_sc_header() -> None:
    source = vl_microscopic()
    sc = build_heatmap_sc(source, pixels_of(source), make_result())
    assert "NOT FOR DIAGNOSIS" in sc.SeriesDescription
    assert sc.SeriesDescription == "AI heatmap (ThyroidEffi 0.1.0+demo) - NOT FOR DIAGNOSIS"
    assert sc.SOPClassUID == "1.2.840.10008.5.1.4.1.1.7"
    assert sc.BurnedInAnnotation == "YES"
    assert list(sc.ImageType) == ["DERIVED", "SECONDARY"]
    assert "NOT FOR DIAGNOSIS" in sc.DerivationDescription
    assert (sc.PhotometricInterpretation, sc.SamplesPerPixel, sc.BitsAllocated) == ("YBR_FULL_422", 3, 8)
    assert sc.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.4.50"
    (ref,) = sc.SourceImageSequence
    assert ref.ReferencedSOPInstanceUID == source.SOPInstanceUID
    assert ref.ReferencedSOPClassUID == source.SOPClassUID
    assert ref.PurposeOfReferenceCodeSequence[0].CodeValue == codes.SOURCE_IMAGE_FOR_PROCESSING.value
    for keyword in ("PatientName", "PatientID", "PatientBirthDate", "StudyInstanceUID", "AccessionNumber"):
        assert sc[keyword].value == source[keyword].value, keyword
    assert sc.SeriesInstanceUID != source.SeriesInstanceUID
    assert sc.SOPInstanceUID == derived_uid(source.SOPInstanceUID, "0.1.0+demo", "sc")
    assert sc.SeriesInstanceUID == derived_uid(source.SOPInstanceUID, "0.1.0+demo", "sc-series")
    assert sc.LossyImageCompression == "01" and sc.LossyImageCompressionMethod == "ISO_10918_1"
    assert float(sc.LossyImageCompressionRatio) > 5
    assert max(sc.Rows, sc.Columns) <= 1024


def test_uncompressed_heatmap_is_not_flagged_lossy() -> None:
    source = vl_microscopic()
    sc = build_heatmap_sc(source, pixels_of(source), make_result(), jpeg=False)
    assert (sc.PhotometricInterpretation, sc.file_meta.TransferSyntaxUID) == ("RGB", "1.2.840.10008.1.2.1")
    assert sc.LossyImageCompression == "00" and "LossyImageCompressionRatio" not in sc


def test_jpeg_heatmap_is_the_picture_within_jpeg_error() -> None:
    source = vl_microscopic()
    plain = build_heatmap_sc(source, pixels_of(source), make_result(), jpeg=False).pixel_array.astype(int)
    jpeg = build_heatmap_sc(source, pixels_of(source), make_result()).pixel_array.astype(int)
    assert plain.shape == jpeg.shape
    assert np.abs(plain - jpeg).mean() < 3


def test_a_lossy_source_with_its_history_gets_our_step_appended() -> None:
    source = minimal_sc(jpeg=True)
    source.LossyImageCompression = "01"
    source.LossyImageCompressionRatio = "12.5"
    source.LossyImageCompressionMethod = "ISO_10918_1"
    sc = build_heatmap_sc(source, pixels_of(source), make_result())
    assert list(sc.LossyImageCompressionMethod) == ["ISO_10918_1", "ISO_10918_1"]
    assert float(sc.LossyImageCompressionRatio[0]) == 12.5 and float(sc.LossyImageCompressionRatio[1]) > 5


def test_heatmap_pixels_differ_where_cam_is_high() -> None:
    source = vl_microscopic()
    original = pixels_of(source)
    shown = build_heatmap_sc(source, original, make_result()).pixel_array
    image = shown[HEADER_ROWS : HEADER_ROWS + 768]
    assert image.shape == original.shape  # 1024x768 fits without scaling
    hot_diff = np.abs(cell_block(image, *HOT) - cell_block(original, *HOT)).mean()
    assert hot_diff > 25
    hot = cell_block(image, *HOT).reshape(-1, 3).mean(axis=0)
    cold = cell_block(image, slice(0, 4), slice(0, 6)).reshape(-1, 3).mean(axis=0)
    assert hot[1] - hot[2] > cold[1] - cold[2] + 60  # yellow (high) vs purple (low) tint
    header = shown[:HEADER_ROWS].reshape(-1, 3).astype(int)
    red_text = (header[:, 0] > 200) & (header[:, 1] < 120) & (header[:, 2] < 120)
    assert red_text.sum() > 300  # the burned-in NOT FOR DIAGNOSIS


@pytest.mark.parametrize("shape", [(2000, 1500), (224, 224), (768, 1024), (300, 2400)])
def test_heatmap_size_is_bounded(shape: tuple[int, int]) -> None:
    pixels = np.full((*shape, 3), 200, np.uint8)
    picture = render_heatmap(pixels, make_result())
    assert max(picture.shape[:2]) <= 1024
    assert picture.shape[2] == 3 and picture.dtype == np.uint8


def test_heatmap_keeps_lossy_flag_of_a_jpeg_source() -> None:
    source = minimal_sc(jpeg=True)
    sc = build_heatmap_sc(source, pixels_of(source), make_result())
    assert sc.LossyImageCompression == "01"
    assert sc.LossyImageCompressionMethod == "ISO_10918_1"


def test_heatmap_without_cam_is_refused() -> None:
    source = vl_microscopic()
    result = AIResult(**{**make_result().__dict__, "cam": None})
    with pytest.raises(ValueError, match="CAM"):
        build_heatmap_sc(source, pixels_of(source), result)


def _example_cam(pixels: np.ndarray) -> np.ndarray:
    """A plausible 21x28 CAM for the docs picture: where the stained cells are densest."""
    stain = 1.0 - pixels.astype(np.float32).mean(axis=2) / 255.0
    cells = np.array([[b.mean() for b in np.array_split(r, 28, axis=1)] for r in np.array_split(stain, 21)])
    cells = (cells - cells.min()) / max(float(np.ptp(cells)), 1e-6)
    return (cells**2).astype(np.float32)


def test_writes_docs_example_png() -> None:
    """docs/heatmap_example.png: the SC picture for a synthetic malignant field (rewritten only on change)."""
    pixels = field_pixels("malignant", seed=1)
    result = AIResult(**{**make_result(probabilities=(0.04, 0.09, 0.87)).__dict__, "cam": _example_cam(pixels)})
    picture = render_heatmap(pixels, result)
    buf = io.BytesIO()
    Image.fromarray(picture).save(buf, format="PNG", optimize=True)
    if not EXAMPLE.exists() or EXAMPLE.read_bytes() != buf.getvalue():
        EXAMPLE.parent.mkdir(exist_ok=True)
        EXAMPLE.write_bytes(buf.getvalue())
    with Image.open(EXAMPLE) as saved:
        assert saved.size == (picture.shape[1], picture.shape[0])

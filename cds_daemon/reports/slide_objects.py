"""What WSI viewers show of a slide's AI result, beside its 3D SR (``reports.slide_sr``):

- Microscopy Bulk Simple Annotations: one annotation group per category, a polygon (the box) per field
  in slide coordinates (the slide's Frame of Reference), the class probabilities as measurements. Slim
  draws them over the slide. (A slide without a Frame of Reference gets neither this nor the map: both
  IODs require one; its 3D SR then holds 2D regions on the base level.)
- the heatmap as a Parametric Map (Content Label ``HEATMAP``), tiled on a low pyramid level of the slide:
  each field's Grad-CAM (0-1, for its predicted class) over its box, 0 elsewhere. A Parametric Map, not a
  fractional SEG: the value is a continuous activation, not the probability of a segment, and Slim
  shows Parametric Maps with a colour map.
- a Secondary Capture mosaic of the top fields with their heatmaps, for PACS viewers without WSI support.
"""

from __future__ import annotations

import highdicom as hd
import numpy as np
from pydicom import Dataset
from pydicom.sr.coding import Code
from pydicom.uid import ExplicitVRLittleEndian

from cds_daemon.common.vocabulary import SERIES_NUMBER, OutputKind
from cds_daemon.reports import codes
from cds_daemon.reports.heatmap import NOT_FOR_DIAGNOSIS, heatmap_picture_sc, render_mosaic, upsample_bilinear
from cds_daemon.reports.result import AIResult
from cds_daemon.reports.slide_sr import SlideFinding, SlideFrame
from cds_daemon.reports.source import (
    DEFAULT_MANUFACTURER,
    contributing_equipment,
    equipment,
    evidence_of,
    series_description,
)
from cds_daemon.reports.uids import derived_uid

CELLS = Code("4421005", "SCT", "Cell")
ARTIFICIAL_INTELLIGENCE = Code("123109", "DCM", "Artificial Intelligence")
NO_UNITS = Code("1", "UCUM", "no units")


def _identity(uid_source: str, result: AIResult, kind: str, manufacturer: str) -> dict[str, object]:
    """The series, instance and equipment arguments of a slide object of ``kind`` ("ann", "pm")."""
    kit = equipment(result, manufacturer)
    return {
        "series_instance_uid": derived_uid(uid_source, result.model_version, f"{kind}-series"),
        "sop_instance_uid": derived_uid(uid_source, result.model_version, kind),
        "instance_number": 1,
        "manufacturer": kit["manufacturer"],
        "manufacturer_model_name": kit["manufacturer_model_name"],
        "software_versions": kit["software_versions"],
        "device_serial_number": result.model_sha256[:64],
        "contributing_equipment": [contributing_equipment(result, manufacturer)],
    }


def _algorithm(result: AIResult) -> hd.AlgorithmIdentificationSequence:
    return hd.AlgorithmIdentificationSequence(
        name=result.model_name[:64], family=ARTIFICIAL_INTELLIGENCE, version=result.model_version[:64]
    )


def build_slide_annotations(
    base_level: Dataset,
    result: AIResult,
    frame: SlideFrame,
    findings: list[SlideFinding],
    *,
    uid_source: str,
    manufacturer: str = DEFAULT_MANUFACTURER,
) -> Dataset:
    """The analysed fields as Microscopy Bulk Simple Annotations on the slide's base level.

    ``uid_source``: the level that carries the slide's result; every slide object's UIDs derive from it.
    """
    header = evidence_of(base_level)
    three_d = frame.frame_of_reference_uid is not None  # the caller makes none without one (see the module)
    groups = []
    for number, cls in enumerate((c for c in result.classes if any(f.result.predicted == c for f in findings)), 1):
        members = [f for f in findings if f.result.predicted == cls]
        shapes = [frame.to_slide(f.corners(), f.z_um) if three_d else f.corners() for f in members]
        measurements = [
            hd.ann.Measurements(
                name=codes.probability_concept(c, result.display_name(c)),
                values=np.array([f.result.probability(c) for f in members], dtype=np.float32),
                unit=codes.PROBABILITY_UNIT,
            )
            for c in result.classes
        ]
        groups.append(
            hd.ann.AnnotationGroup(
                number=number,
                uid=derived_uid(uid_source, result.model_version, f"field:{1000 + number}"),
                label=f"AI fields: {result.display_name(cls)}"[:64],
                annotated_property_category=CELLS,
                annotated_property_type=codes.class_code(cls, result.display_name(cls)),
                graphic_type=hd.ann.GraphicTypeValues.POLYGON,  # wsidicom reads no RECTANGLE
                graphic_data=shapes,
                algorithm_type=hd.ann.AnnotationGroupGenerationTypeValues.AUTOMATIC,
                algorithm_identification=_algorithm(result),
                measurements=measurements,
                description=f"Fields the AI analysed and put in {result.display_name(cls)}"[:64],
            )
        )
    ann = hd.ann.MicroscopyBulkSimpleAnnotations(
        source_images=[header],
        annotation_coordinate_type="3D" if three_d else "2D",
        annotation_groups=groups,
        series_number=SERIES_NUMBER[OutputKind.ANNOTATIONS],
        content_description="AI fields (PRELIMINARY)",
        content_label="AI_FIELDS",
        **_identity(uid_source, result, "ann", manufacturer),  # type: ignore[arg-type]
    )
    ann.SeriesDescription = series_description("AI slide fields", result, "PRELIMINARY")
    return ann


def heatmap_array(frame: SlideFrame, level_size: tuple[int, int], findings: list[SlideFinding]) -> np.ndarray:
    """(rows, cols) float32 map at a level of ``level_size`` (width, height): each field's CAM over its box."""
    width, height = level_size
    out = np.zeros((height, width), np.float32)
    sx, sy = width / frame.width, height / frame.height
    for f in findings:
        if f.result.cam is None:
            continue
        x, y, w, h = f.box
        x0, y0 = int(x * sx), int(y * sy)
        x1, y1 = min(width, max(x0 + 1, round((x + w) * sx))), min(height, max(y0 + 1, round((y + h) * sy)))
        cam = np.clip(np.nan_to_num(np.asarray(f.result.cam, np.float32)), 0.0, 1.0)
        out[y0:y1, x0:x1] = np.maximum(out[y0:y1, x0:x1], upsample_bilinear(cam, (y1 - y0, x1 - x0)))
    return out


def build_slide_heatmap(
    level: Dataset,
    result: AIResult,
    frame: SlideFrame,
    findings: list[SlideFinding],
    *,
    uid_source: str,
    manufacturer: str = DEFAULT_MANUFACTURER,
) -> Dataset:
    """The fields' heatmaps as a tiled Parametric Map on ``level`` (a low pyramid level of the slide)."""
    header = evidence_of(level)
    size = (int(header.TotalPixelMatrixColumns), int(header.TotalPixelMatrixRows))
    values = heatmap_array(frame, size, findings)
    mapping = hd.pm.RealWorldValueMapping(
        lut_label="HEATMAP",
        lut_explanation="Grad-CAM activation of each field's predicted class (0-1)",
        unit=NO_UNITS,
        value_range=(0.0, 1.0),
        slope=1.0,
        intercept=0.0,
    )
    pm = hd.pm.ParametricMap(
        source_images=[header],
        pixel_array=values,
        series_number=SERIES_NUMBER[OutputKind.HEATMAP_MAP],
        contains_recognizable_visual_features=False,
        real_world_value_mappings=[mapping],
        voi_lut_transformations=[hd.VOILUTTransformation(window_center=0.5, window_width=1.0)],
        transfer_syntax_uid=ExplicitVRLittleEndian,
        content_description="AI heatmap (NOT FOR DIAGNOSIS)",
        content_label="HEATMAP",
        tile_pixel_array=True,
        **_identity(uid_source, result, "pm", manufacturer),  # type: ignore[arg-type]
    )
    pm.SeriesDescription = series_description("AI slide heatmap", result, NOT_FOR_DIAGNOSIS)
    return pm


def build_slide_mosaic(
    source: Dataset,
    result: AIResult,
    findings: list[SlideFinding],
    pixels: list[np.ndarray],
    *,
    manufacturer: str = DEFAULT_MANUFACTURER,
    jpeg: bool = True,
) -> Dataset:
    """The top fields (selection order) with their heatmaps as the slide's heatmap Secondary Capture;
    ``pixels``: those of the first fields (at most ``MOSAIC_FIELDS`` are shown)."""
    tiles = [
        (
            p,
            f.result.cam,
            f"Field {n}: {f.result.display_name(f.result.predicted)} p={f.result.probability(f.result.predicted):.2f}",
        )
        for n, (f, p) in enumerate(zip(findings[: len(pixels)], pixels, strict=True), start=1)
        if f.result.cam is not None
    ]
    picture = render_mosaic([(p, c, t) for p, c, t in tiles if c is not None], result)
    derivation = (
        f"The {min(len(tiles), 6)} most cellular fields of the slide analysed by {result.model_label}, each with "
        "its class activation map for its predicted class blended over it. NOT FOR DIAGNOSIS."
    )
    return heatmap_picture_sc(source, picture, result, derivation, manufacturer=manufacturer, jpeg=jpeg)

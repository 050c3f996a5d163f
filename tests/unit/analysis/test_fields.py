"""Field selection on whole slides (analysis.fields) and the slide rule (analysis.slide_result.aggregate)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cds_daemon.analysis.decode import DecodeError
from cds_daemon.analysis.fields import FIELD_COLUMNS, FIELD_ROWS, select_fields
from cds_daemon.analysis.slide_reader import SlideImage, SlideUnreadable, level_spacing
from cds_daemon.analysis.slide_result import NoInformativeField, aggregate, prepare_slide
from cds_daemon.common.config import Settings
from cds_daemon.common.vocabulary import ReferralReason
from cds_daemon.reports.result import AIResult
from tests.support.slides import dicomize_with_orthanc, hit_rate, overlaps, write_slide

SLIDES = [("benign", 21), ("malignant", 22), ("indeterminate", 23), ("benign", 24), ("malignant", 25)]


def _select(paths: list[Path], scratch: Path, max_fields: int = 24) -> list[tuple[int, int, int, int]]:
    with SlideImage(list(paths), scratch) as slide:
        return [f.box for f in select_fields(slide, 0.25, max_fields, 0.02).fields]


def test_fields_lie_on_the_cells_and_not_on_blood_or_glass(tmp_path: Path) -> None:
    """Five synthetic slides (3 x 4 cells, 4 fields of follicular cells, 2 of blood each)."""
    rates, found, blood = [], [], 0
    for label, seed in SLIDES:
        written, smear = write_slide(tmp_path / f"s{seed}", label, seed)
        boxes = _select(list(written.paths), tmp_path / "scratch")
        rates.append(hit_rate(boxes, smear))
        found.append(sum(any(overlaps(b, p) >= 0.5 for b in boxes) for p in smear.informative()) / 4)
        blood += sum(1 for b in boxes for p in smear.patches if p.kind == "blood" and overlaps(b, p) >= 0.5)
        assert all((w, h) == (FIELD_COLUMNS, FIELD_ROWS) for _, _, w, h in boxes)  # the bundle's 0.25 µm/px
    print(f"hit rate (fields mostly on cells) {np.mean(rates):.2f}, cell fields found {np.mean(found):.2f}")
    assert np.mean(rates) >= 0.9 and min(rates) >= 0.75
    assert np.mean(found) >= 0.9
    assert blood == 0


def test_fields_do_not_overlap_and_are_capped(tmp_path: Path) -> None:
    written, _ = write_slide(tmp_path / "s", "benign", 26, grid=(3, 4), cells=6, blood=2)
    boxes = _select(list(written.paths), tmp_path / "scratch", max_fields=3)
    assert len(boxes) == 3
    for i, (x, y, w, h) in enumerate(boxes):
        for x2, y2, w2, h2 in boxes[i + 1 :]:
            assert x + w <= x2 or x2 + w2 <= x or y + h <= y2 or y2 + h2 <= y


def test_the_sharpest_focal_plane_is_taken(tmp_path: Path) -> None:
    written, _ = write_slide(tmp_path / "s", "malignant", 27, focal_planes=3)
    with SlideImage(list(written.paths), tmp_path / "scratch") as slide:
        fields = select_fields(slide, 0.25, 24, 0.02).fields
    assert fields and {f.z for f in fields} == {1.0}


def test_a_slide_of_blood_and_glass_has_no_informative_field(tmp_path: Path) -> None:
    written, _ = write_slide(tmp_path / "s", "benign", 28, cells=0, blood=3)
    levels = [(str(i), p) for i, p in enumerate(written.paths)]
    with pytest.raises(NoInformativeField, match="no informative field"):
        prepare_slide(levels, Settings(), 0.25)
    with pytest.raises(DecodeError, match=r"preprocessing\.mpp"):
        prepare_slide(levels, Settings(), None)


def test_a_slide_smaller_than_a_field_has_none(tmp_path: Path) -> None:
    from dicom_fixtures.smear import make_smear
    from dicom_fixtures.wsm import write_large_wsm

    smear = make_smear("benign", 32, grid=(1, 1), cell_patches=1, blood_patches=0)
    written = write_large_wsm(smear, tmp_path / "tiny", 640, 512, downsamples=(1, 4))
    levels = [(str(i), p) for i, p in enumerate(written.paths)]
    with pytest.raises(NoInformativeField, match="smaller than one"):
        prepare_slide(levels, Settings(), 0.25)


def test_a_third_party_pyramid_and_a_base_level_alone_give_the_same_fields(tmp_path: Path) -> None:
    written, smear = write_slide(tmp_path / "s", "indeterminate", 29)
    ours = _select(list(written.paths), tmp_path / "scratch")
    orthanc = _select(dicomize_with_orthanc(smear, tmp_path / "orthanc"), tmp_path / "scratch")
    base_only = _select([written.paths[0]], tmp_path / "scratch")  # the lower levels never arrived
    assert len(ours) == len(orthanc) == len(base_only)
    for a, b, c in zip(ours, orthanc, base_only, strict=True):
        assert max(abs(a[0] - b[0]), abs(a[1] - b[1]), abs(a[0] - c[0]), abs(a[1] - c[1])) <= 256


def test_micrometres_per_pixel_come_from_pixel_spacing_or_the_imaged_volume(tmp_path: Path) -> None:
    written, _ = write_slide(tmp_path / "s", "benign", 30, pixel_spacing=False)
    import pydicom

    ds = pydicom.dcmread(written.paths[0], stop_before_pixels=True)
    spacing, repair = level_spacing(ds)
    assert spacing == pytest.approx((0.00025, 0.00025), rel=1e-4) and "missing" in str(repair)
    del ds.ImagedVolumeWidth
    with pytest.raises(SlideUnreadable, match="µm/px is unknown"):
        level_spacing(ds)


def _result(predicted: str, probs: tuple[float, float, float], reasons: tuple[str, ...] = ()) -> AIResult:
    return AIResult(
        classes=("benign", "indeterminate", "malignant"),
        display_names=("Benign", "Indeterminate/Suspicious", "Malignant"),
        probabilities=probs,
        predicted=predicted,
        conformal_set=(predicted,),
        referred=bool(reasons),
        reasons=reasons,
        reason_texts=tuple(f"text of {r}" for r in reasons),
        model_name="m",
        model_version="1",
        model_sha256="0" * 64,
        cam=None,
    )


def test_the_slide_takes_the_worst_field_and_is_always_referred() -> None:
    fields = [
        _result("benign", (0.9, 0.05, 0.05)),
        _result("malignant", (0.2, 0.2, 0.6), (ReferralReason.LOW_CONFIDENCE,)),
        _result("malignant", (0.1, 0.1, 0.8)),
        _result("indeterminate", (0.1, 0.8, 0.1), (ReferralReason.INDETERMINATE,)),
    ]
    slide = aggregate(fields)
    assert slide.predicted == "malignant" and slide.probabilities == (0.1, 0.1, 0.8)
    assert slide.referred
    assert slide.reasons == (
        ReferralReason.INDETERMINATE,
        ReferralReason.LOW_CONFIDENCE,
        ReferralReason.SLIDE_VALIDATION,
    )
    assert slide.reason_texts[0] == "1 of 4 fields: text of indeterminate_class"
    assert slide.conformal_set == ("benign", "indeterminate", "malignant")
    slide.validate()

"""Whole-slide images for the tests: our synthetic smears as DICOM WSM, and the same smear dicomized by
Debian's Orthanc WSI dicomizer (a writer that is not ours, with its quirks)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from PIL import Image

from dicom_fixtures.smear import Patch, Smear, make_smear
from dicom_fixtures.wsm import WrittenSlide, write_wsm

DICOMIZER = "OrthancWSIDicomizer"


def write_slide(
    out: Path,
    label: str = "malignant",
    seed: int = 0,
    *,
    grid: tuple[int, int] = (3, 4),
    cells: int = 4,
    blood: int = 2,
    focal_planes: int = 1,
    pixel_spacing: bool = True,
    jpeg: bool = True,
) -> tuple[WrittenSlide, Smear]:
    smear = make_smear(label, seed, grid=grid, cell_patches=cells, blood_patches=blood, focal_planes=focal_planes)
    return write_wsm(smear, out, seed=seed, pixel_spacing=pixel_spacing, jpeg=jpeg), smear


def dicomize_with_orthanc(
    smear: Smear, out: Path, *, accession: str = "FXA-77700001", frame_of_reference_uid: str | None = None
) -> list[Path]:
    """The smear's focused plane through OrthancWSIDicomizer (JPEG tiles, a 3-level pyramid): no Image Type,
    Pixel Spacing from the imaged size with rows and columns swapped, and no Frame of Reference unless one
    is given in its ``--dataset`` (as a site would configure it)."""
    out.mkdir(parents=True, exist_ok=True)
    png = out.parent / f"{out.name}-source.png"
    Image.fromarray(smear.planes[smear.sharpest]).save(png)
    dataset = out.parent / f"{out.name}-dataset.json"
    dataset.write_text(
        json.dumps(
            {
                "PatientID": "FXP-770001",
                "PatientName": "FIXTURE^ORTHANC^WSI",
                "PatientBirthDate": "19700101",
                "PatientSex": "F",
                "AccessionNumber": accession,
                "StudyID": "FX-WSI",
                "SeriesNumber": "20",
                "ReferringPhysicianName": "FIXTURE^REFERRER",
                "ContainerIdentifier": f"{accession}-SLIDE",
                **({"FrameOfReferenceUID": frame_of_reference_uid} if frame_of_reference_uid else {}),
            }
        )
    )
    rows, cols = smear.shape
    mm = smear.mpp / 1000.0
    cmd = [
        DICOMIZER,
        "--folder",
        str(out),
        "--dataset",
        str(dataset),
        "--compression",
        "jpeg",
        "--pyramid",
        "1",
        "--levels",
        "3",
        "--tile-width",
        "512",
        "--tile-height",
        "512",
        "--imaged-width",
        f"{cols * mm:.6f}",
        "--imaged-height",
        f"{rows * mm:.6f}",
        str(png),
    ]
    subprocess.run(cmd, check=True, capture_output=True, timeout=300)
    return sorted(out.glob("*.dcm"))


def overlaps(box: tuple[int, int, int, int], patch: Patch) -> float:
    """Share of the box's area that lies on the patch."""
    x, y, w, h = box
    dx = max(0, min(x + w, patch.x + patch.width) - max(x, patch.x))
    dy = max(0, min(y + h, patch.y + patch.height) - max(y, patch.y))
    return dx * dy / float(w * h)


def hit_rate(boxes: list[tuple[int, int, int, int]], smear: Smear, min_share: float = 0.5) -> float:
    """Share of the chosen fields that lie mostly (``min_share`` of their area) on the smear's fields of cells
    (patches never overlap, so their shares add up)."""
    if not boxes:
        return 0.0
    hits = sum(1 for b in boxes if sum(overlaps(b, p) for p in smear.informative()) >= min_share)
    return hits / len(boxes)

"""DICOM wrappers: every IOD x transfer syntax validates with dciodvfy and round-trips."""

import io
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest

from dicom_fixtures.identity import FAKE_ACCESSION_RE, FAKE_NAME_PREFIX, FAKE_PATIENT_ID_RE
from dicom_fixtures.synth import make_field
from dicom_fixtures.wrap import IODS, TRANSFER_SYNTAXES, fake_patient, wrap_image, write_dicom

HAVE_DCIODVFY = shutil.which("dciodvfy") is not None
HAVE_DCMTK = shutil.which("dcmconv") is not None
EXPECTED_PHOTOMETRIC = {"jpeg-baseline": "YBR_FULL_422", "jpeg2000": "YBR_RCT"}
DCMTK_DECODER = {"jpeg-baseline": "dcmdjpeg", "jpeg-ls": "dcmdjpls", "rle": "dcmdrle"}


@pytest.fixture(scope="module")
def small_field() -> np.ndarray:
    return make_field("malignant", 11, size=(96, 128))


def _pixels_for(iod: str, field: np.ndarray) -> np.ndarray:
    return np.stack([field, field[::-1], field[:, ::-1]]) if iod == "mf-true-color-sc" else field


def dciodvfy_errors(path: Path) -> list[str]:
    out = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, errors="replace")
    return [line for line in (out.stdout + out.stderr).splitlines() if line.startswith("Error")]


def dciodvfy_warnings(path: Path) -> list[str]:
    out = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, errors="replace")
    return [line for line in (out.stdout + out.stderr).splitlines() if line.startswith("Warning")]


def validate(path: Path, ts: str, tmp_path: Path) -> list[str]:
    """dciodvfy findings for a file; deflated files are inflated by dcmtk first.

    This dicom3tools build cannot read Deflated Explicit VR (it fails on dcmtk's own
    deflated output too), so the dataset is inflated with dcmconv and validated as explicit
    VR; that dcmtk reads the deflated stream at all is part of the check.
    """
    if ts != "deflated":
        return dciodvfy_errors(path)
    if not HAVE_DCMTK:
        pytest.skip("dcmconv (dcmtk) is needed to inflate deflated files for dciodvfy")
    inflated = tmp_path / "inflated.dcm"
    subprocess.run(["dcmconv", "+te", str(path), str(inflated)], check=True, capture_output=True)
    return dciodvfy_errors(inflated)


@pytest.mark.skipif(not HAVE_DCIODVFY, reason="dciodvfy (dicom3tools) not installed")
@pytest.mark.parametrize("ts", list(TRANSFER_SYNTAXES))
@pytest.mark.parametrize("iod", list(IODS))
def test_wrapper_passes_dciodvfy(iod: str, ts: str, small_field: np.ndarray, tmp_path: Path) -> None:
    path = write_dicom(wrap_image(_pixels_for(iod, small_field), iod, ts, seed=5), tmp_path / f"{iod}-{ts}.dcm")
    assert validate(path, ts, tmp_path) == []


@pytest.mark.skipif(not HAVE_DCIODVFY, reason="dciodvfy (dicom3tools) not installed")
def test_dciodvfy_check_detects_a_broken_dataset(small_field: np.ndarray, tmp_path: Path) -> None:
    ds = wrap_image(small_field, "vl-slide-microscopic", "explicit")
    del ds.SpecimenDescriptionSequence  # Type 1 in the Specimen module
    assert dciodvfy_errors(write_dicom(ds, tmp_path / "broken.dcm"))


@pytest.mark.parametrize("ts", list(TRANSFER_SYNTAXES))
@pytest.mark.parametrize("iod", list(IODS))
def test_wrapper_round_trips_through_pydicom(iod: str, ts: str, small_field: np.ndarray, tmp_path: Path) -> None:
    pixels = _pixels_for(iod, small_field)
    path = write_dicom(wrap_image(pixels, iod, ts, seed=5), tmp_path / f"{iod}-{ts}.dcm")
    ds = pydicom.dcmread(path)
    assert ds.file_meta.TransferSyntaxUID == TRANSFER_SYNTAXES[ts]
    assert ds.SOPClassUID == IODS[iod] == ds.file_meta.MediaStorageSOPClassUID
    assert ds.PhotometricInterpretation == EXPECTED_PHOTOMETRIC.get(ts, "RGB")
    decoded = ds.pixel_array
    assert decoded.shape == pixels.shape
    diff = np.abs(decoded.astype(int) - pixels.astype(int))
    if ts == "jpeg-baseline":
        assert diff.mean() < 4
        assert ds.LossyImageCompression == "01"
    else:
        assert diff.max() == 0


@pytest.mark.parametrize("ts", list(DCMTK_DECODER))
def test_dcmtk_decodes_compressed(ts: str, small_field: np.ndarray, tmp_path: Path) -> None:
    tool = DCMTK_DECODER[ts]
    if shutil.which(tool) is None:
        pytest.skip(f"{tool} (dcmtk) not installed")
    src = write_dicom(wrap_image(small_field, "vl-microscopic", ts), tmp_path / "in.dcm")
    dst = tmp_path / "out.dcm"
    subprocess.run([tool, str(src), str(dst)], check=True, capture_output=True)
    by_dcmtk = pydicom.dcmread(dst)
    assert by_dcmtk.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
    assert by_dcmtk.PhotometricInterpretation == "RGB"
    diff = np.abs(by_dcmtk.pixel_array.astype(int) - small_field.astype(int))
    assert diff.mean() < 4 if ts == "jpeg-baseline" else diff.max() == 0


@pytest.mark.skipif(not HAVE_DCIODVFY, reason="dciodvfy (dicom3tools) not installed")
def test_full_size_field_has_no_warnings(tmp_path: Path) -> None:
    field = make_field("benign", 2)
    for iod in ("vl-microscopic", "vl-slide-microscopic"):
        path = write_dicom(wrap_image(field, iod, "jpeg-baseline", seed=2), tmp_path / f"{iod}.dcm")
        assert dciodvfy_errors(path) == []
        assert dciodvfy_warnings(path) == []
        assert pydicom.dcmread(path).pixel_array.shape == (768, 1024, 3)


def _bytes(ds: pydicom.Dataset) -> bytes:
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


@pytest.mark.parametrize("ts", list(TRANSFER_SYNTAXES))
def test_same_seed_same_bytes(ts: str, small_field: np.ndarray) -> None:
    a = _bytes(wrap_image(small_field, "vl-slide-microscopic", ts, seed=9))
    assert a == _bytes(wrap_image(small_field, "vl-slide-microscopic", ts, seed=9))
    assert a != _bytes(wrap_image(small_field, "vl-slide-microscopic", ts, seed=10))


def test_identity_comes_from_fake_patient(small_field: np.ndarray) -> None:
    for seed in (0, 123, 999_999):
        ds = wrap_image(small_field, "sc", "explicit", seed=seed)
        patient = fake_patient(seed)
        assert (ds.PatientName, ds.PatientID, ds.PatientBirthDate) == (
            patient.name,
            patient.patient_id,
            patient.birth_date,
        )
        assert str(ds.PatientName).startswith(FAKE_NAME_PREFIX)
        assert FAKE_PATIENT_ID_RE.fullmatch(ds.PatientID)
        assert FAKE_ACCESSION_RE.fullmatch(ds.AccessionNumber)
        assert str(ds.ReferringPhysicianName).startswith(FAKE_NAME_PREFIX)
    assert fake_patient(123).patient_id == "FXP-000123"
    assert fake_patient(1) != fake_patient(2)


def test_specimen_and_frame_of_reference(small_field: np.ndarray) -> None:
    micro = wrap_image(small_field, "vl-microscopic", seed=1)
    slide = wrap_image(small_field, "vl-slide-microscopic", seed=1)
    photo = wrap_image(small_field, "vl-photographic", seed=1)
    for ds in (micro, slide):
        assert ds.ContainerIdentifier.startswith("FXS-")
        spec = ds.SpecimenDescriptionSequence[0]
        assert spec.SpecimenIdentifier.startswith(ds.ContainerIdentifier)
        assert len(spec.SpecimenPreparationSequence) == 2
    assert "FrameOfReferenceUID" in slide and "ImageCenterPointCoordinatesSequence" in slide
    assert "FrameOfReferenceUID" not in micro
    assert (micro.Modality, slide.Modality, photo.Modality) == ("GM", "SM", "XC")
    assert "SpecimenDescriptionSequence" not in photo and "AnatomicRegionSequence" in photo


def test_images_of_one_study_agree(small_field: np.ndarray) -> None:
    patient = fake_patient(42)
    study_uid = "1.2.826.0.1.3680043.8.498.4242"
    a = wrap_image(small_field, "vl-microscopic", seed=1, patient=patient, study_uid=study_uid)
    b = wrap_image(small_field[::-1], "vl-microscopic", seed=2, patient=patient, study_uid=study_uid, instance_number=2)
    shared = "StudyInstanceUID StudyDate StudyTime AccessionNumber StudyID SeriesInstanceUID ContainerIdentifier"
    for keyword in [*shared.split(), "PatientID"]:
        assert a[keyword].value == b[keyword].value, keyword
    assert a.SOPInstanceUID != b.SOPInstanceUID


def test_multiframe_only_for_mf_iod(small_field: np.ndarray) -> None:
    stack = np.stack([small_field, small_field])
    for iod in ("vl-microscopic", "vl-slide-microscopic", "vl-photographic", "sc"):
        with pytest.raises(ValueError, match="single-frame"):
            wrap_image(stack, iod)
    ds = wrap_image(stack, "mf-true-color-sc")
    assert ds.NumberOfFrames == 2 and list(ds.FrameLabelVector) == ["FIELD 001", "FIELD 002"]


@pytest.mark.parametrize(
    ("pixels", "kwargs", "message"),
    [
        (np.zeros((8, 8, 3), np.uint16), {}, "uint8"),
        (np.zeros((8, 8), np.uint8), {}, "HxWx3"),
        (np.zeros((8, 8, 3), np.uint8), {"iod": "ct"}, "unknown IOD"),
        (np.zeros((8, 8, 3), np.uint8), {"transfer_syntax": "jpeg-xl"}, "unknown transfer syntax"),
    ],
)
def test_wrap_rejects_bad_input(pixels: np.ndarray, kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        wrap_image(pixels, **kwargs)

"""Builders for the DICOM information-object modules used by the fixture IODs (PS3.3).

Each function adds one module's attributes to a dataset. Values are realistic but fake
and come from the arguments only, so datasets are reproducible byte for byte.
"""

import datetime as dt
import hashlib
from dataclasses import dataclass

import highdicom as hd
from pydicom.dataset import Dataset
from pydicom.sr.coding import Code

from .identity import FAKE_NAME_PREFIX, PatientInfo, age_string

INSTITUTION = "Fixture General Hospital"
DEPARTMENT = "Cytopathology"
MANUFACTURER = "dicom_fixtures"
MODEL = "Synthetic Diff-Quik Field Generator"
SOFTWARE_VERSION = "0.1.0"
THYROID = Code("69748006", "SCT", "Thyroid structure")
FNA_PROCEDURE = Code("15719007", "SCT", "Fine needle aspiration biopsy")
SLIDE = Code("433466003", "SCT", "Microscope slide")
#: Micrometres per pixel of every synthetic field (40x): camera images and whole slides alike.
FIELD_MPP = 0.25
PIXEL_SPACING_MM = FIELD_MPP / 1000


@dataclass(frozen=True)
class StudyInfo:
    uid: str
    when: dt.datetime
    accession: str
    study_id: str


def _da(d: dt.date | dt.datetime) -> str:
    return d.strftime("%Y%m%d")


def _tm(t: dt.datetime) -> str:
    return t.strftime("%H%M%S")


def add_patient(ds: Dataset, patient: PatientInfo) -> None:
    ds.PatientName = patient.name
    ds.PatientID = patient.patient_id
    ds.IssuerOfPatientID = "FIXTURE-MRN"
    ds.PatientBirthDate = patient.birth_date
    ds.PatientSex = patient.sex


def add_study(ds: Dataset, study: StudyInfo, patient: PatientInfo) -> None:
    ds.StudyInstanceUID = study.uid
    ds.StudyDate = _da(study.when)
    ds.StudyTime = _tm(study.when)
    ds.ReferringPhysicianName = f"{FAKE_NAME_PREFIX}REFERRER"
    ds.StudyID = study.study_id
    ds.AccessionNumber = study.accession
    ds.StudyDescription = "Thyroid FNAB cytology"
    ds.PatientAge = age_string(patient.birth_date, study.when.date())  # Patient Study module


def add_series(ds: Dataset, series_uid: str, modality: str, number: int, description: str) -> None:
    ds.Modality = modality
    ds.SeriesInstanceUID = series_uid
    ds.SeriesNumber = number
    ds.SeriesDescription = description
    ds.BodyPartExamined = "THYROID"


def add_equipment(ds: Dataset) -> None:
    ds.Manufacturer = MANUFACTURER
    ds.InstitutionName = INSTITUTION
    ds.InstitutionalDepartmentName = DEPARTMENT
    ds.StationName = "FXMICRO01"
    ds.ManufacturerModelName = MODEL
    ds.DeviceSerialNumber = "FX-0001"
    ds.SoftwareVersions = SOFTWARE_VERSION


def add_general_image(ds: Dataset, instance_number: int, when: dt.datetime, comment: str | None) -> None:
    ds.InstanceNumber = instance_number
    ds.PatientOrientation = ""
    ds.ContentDate = _da(when)
    ds.ContentTime = _tm(when)
    ds.AcquisitionDateTime = when.strftime("%Y%m%d%H%M%S")
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    ds.BurnedInAnnotation = "NO"
    ds.LossyImageCompression = "00"
    if comment:
        ds.ImageComments = comment


def add_image_pixel(ds: Dataset, rows: int, cols: int, frames: int | None, photometric: str) -> None:
    """8-bit, 3-sample colour Image Pixel attributes; ``frames`` None for single-frame IODs."""
    ds.SamplesPerPixel = 3
    ds.PhotometricInterpretation = photometric
    ds.PlanarConfiguration = 0
    ds.Rows = rows
    ds.Columns = cols
    ds.BitsAllocated = 8
    ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    if frames is not None:
        ds.NumberOfFrames = frames


def add_vl_image(ds: Dataset, with_anatomy: bool) -> None:
    """VL Image and Acquisition Context modules."""
    ds.AcquisitionContextSequence = []
    if with_anatomy:
        item = Dataset()
        item.CodeValue = THYROID.value
        item.CodingSchemeDesignator = THYROID.scheme_designator
        item.CodeMeaning = THYROID.meaning
        ds.AnatomicRegionSequence = [item]


def add_specimen(ds: Dataset, container_id: str, specimen_id: str, specimen_uid: str) -> None:
    """Specimen module: one Diff-Quik stained FNA smear on a slide, described per TID 8001."""
    issuer = hd.IssuerOfIdentifier(INSTITUTION)
    ds.ContainerIdentifier = container_id
    ds.IssuerOfTheContainerIdentifierSequence = [issuer]
    container_type = Dataset()
    container_type.CodeValue = SLIDE.value
    container_type.CodingSchemeDesignator = SLIDE.scheme_designator
    container_type.CodeMeaning = SLIDE.meaning
    ds.ContainerTypeCodeSequence = [container_type]
    steps = [
        hd.SpecimenPreparationStep(specimen_id, processing_procedure=hd.SpecimenCollection(procedure=FNA_PROCEDURE)),
        hd.SpecimenPreparationStep(
            specimen_id,
            processing_procedure=hd.SpecimenStaining(substances=["Diff-Quik (Romanowsky-type) stain"]),
        ),
    ]
    description = hd.SpecimenDescription(
        specimen_id=specimen_id,
        specimen_uid=specimen_uid,
        specimen_preparation_steps=steps,
        issuer_of_specimen_id=issuer,
        primary_anatomic_structures=[THYROID],
        specimen_short_description="Thyroid FNA smear, air-dried, Diff-Quik",
    )
    ds.SpecimenDescriptionSequence = [description]


def add_slide_coordinates(ds: Dataset, frame_of_reference_uid: str, x_mm: float, y_mm: float) -> None:
    """Frame of Reference and Slide Coordinates modules: where on the slide the field centre lies."""
    ds.FrameOfReferenceUID = frame_of_reference_uid
    ds.PositionReferenceIndicator = "SLIDE_CORNER"
    centre = Dataset()
    centre.XOffsetInSlideCoordinateSystem = f"{x_mm:.4f}"
    centre.YOffsetInSlideCoordinateSystem = f"{y_mm:.4f}"
    centre.ZOffsetInSlideCoordinateSystem = "0.0"
    ds.ImageCenterPointCoordinatesSequence = [centre]
    ds.PixelSpacing = [f"{PIXEL_SPACING_MM:.5f}", f"{PIXEL_SPACING_MM:.5f}"]


def add_sc_equipment(ds: Dataset, when: dt.datetime) -> None:
    """SC Equipment and SC Image modules."""
    ds.ConversionType = "DI"  # digital interface: the microscope camera
    ds.SecondaryCaptureDeviceManufacturer = MANUFACTURER
    ds.SecondaryCaptureDeviceManufacturerModelName = MODEL
    ds.SecondaryCaptureDeviceSoftwareVersions = SOFTWARE_VERSION
    ds.DateOfSecondaryCapture = _da(when)
    ds.TimeOfSecondaryCapture = _tm(when)


def add_sc_multiframe(ds: Dataset, frames: int) -> None:
    """SC Multi-frame Image and SC Multi-frame Vector modules: frames labelled as fields."""
    ds.FrameIncrementPointer = 0x00182002  # Frame Label Vector
    ds.FrameLabelVector = [f"FIELD {i + 1:03d}" for i in range(frames)]


def add_sop_common(ds: Dataset, sop_class_uid: str, sop_instance_uid: str, when: dt.datetime) -> None:
    ds.SOPClassUID = sop_class_uid
    ds.SOPInstanceUID = sop_instance_uid
    ds.InstanceCreationDate = _da(when)
    ds.InstanceCreationTime = _tm(when)


def study_for(study_uid: str) -> StudyInfo:
    """The study's date, accession and ID, derived from its UID: images wrapped into one study agree."""
    from .identity import accession_number, study_datetime

    study_key = int(hashlib.blake2b(study_uid.encode(), digest_size=6).hexdigest(), 16)
    return StudyInfo(
        uid=study_uid,
        when=study_datetime(study_key),
        accession=accession_number(study_key),
        study_id=f"FX{study_key % 10**8:08d}",
    )

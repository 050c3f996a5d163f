"""The case-level SR against a daemon process and Orthanc: images grouped by specimen, one case SR after the
quiet period, a late image makes the next version, and the timer survives a restart (it is in the store).
``CDS_UPDATE_SCREENSHOT=1`` also writes the dsrdump of a case SR to docs/case_sr.dsrdump.txt."""

from __future__ import annotations

import io
import json
import os
import subprocess
from collections.abc import Callable
from pathlib import Path

import pydicom
import pytest
from highdicom.sr.utils import find_content_items
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import generate_uid

from cds_daemon.common.manifest import read_manifest
from cds_daemon.reports import codes
from cds_daemon.reports.uids import case_uid, derived_uid
from tests.support.dicom_files import write_images
from tests.support.processes import REPO, DaemonProcess, OrthancProcess, storescu
from tests.support.waiting import wait_until

pytestmark = pytest.mark.integration

CONFIG = "[egress]\nretry_base_s = 0.3\nretry_max_s = 1.0\npoll_s = 0.5\ntimeout_s = 5\n[reports]\ncase_quiet_s = 4\n"


def _on_slide(files: list[Path], specimen: str) -> list[Path]:
    """Give the images a Specimen module: one specimen (the case) on one slide."""
    for path in files:
        ds = pydicom.dcmread(path)
        ds.ContainerIdentifier = f"SLIDE-{specimen}"
        ds.IssuerOfTheContainerIdentifierSequence = Sequence()
        ds.ContainerTypeCodeSequence = Sequence()
        item = Dataset()
        item.SpecimenIdentifier = specimen
        item.SpecimenUID = generate_uid(entropy_srcs=[specimen])
        item.IssuerOfTheSpecimenIdentifierSequence = Sequence()
        item.SpecimenPreparationSequence = Sequence()
        ds.SpecimenDescriptionSequence = Sequence([item])
        ds.save_as(path, enforce_file_format=True)
    return files


def _uids(files: list[Path]) -> list[str]:
    return [str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID) for f in files]


def _case_sr(pacs: OrthancProcess, specimen: str, version: str, n: int) -> Dataset | None:
    found = pacs.instance_id(case_uid(f"specimen:{specimen}", version, f"case-sr:{n}"))
    return None if found is None else pydicom.dcmread(io.BytesIO(pacs.file(found)))


def _referenced(sr: Dataset) -> set[str]:
    return {i.ReferencedSOPSequence[0].ReferencedSOPInstanceUID for i in find_content_items(
        sr, name=codes.IMAGE_RESULT, recursive=True
    )}  # fmt: skip


def test_one_case_sr_per_specimen_then_a_new_version_for_a_late_image(
    make_daemon: Callable[..., DaemonProcess], orthanc: OrthancProcess, tiny_bundle: Path, tmp_path: Path
) -> None:
    version = read_manifest(tiny_bundle).version
    daemon = make_daemon(
        bundle=tiny_bundle, destinations=[("pacs", "ORTHANC", orthanc.dicom_port)], extra_config=CONFIG
    ).start()
    case_a = _on_slide(write_images(tmp_path / "a", 2, seed=5300), "FNA-A")
    case_b = _on_slide(write_images(tmp_path / "b", 1, seed=5400, label="malignant"), "FNA-B")
    assert storescu(daemon.port, *case_a, *case_b).returncode == 0
    wait_until(lambda: _case_sr(orthanc, "FNA-A", version, 1) is not None, 90, "case A's SR in the PACS")
    wait_until(lambda: _case_sr(orthanc, "FNA-B", version, 1) is not None, 90, "case B's SR in the PACS")
    first = _case_sr(orthanc, "FNA-A", version, 1)
    assert first is not None
    assert _referenced(first) == {derived_uid(u, version, "sr") for u in _uids(case_a)}
    assert first.SeriesNumber == 905 and first.VerificationFlag == "UNVERIFIED"

    late = _on_slide(write_images(tmp_path / "late", 1, seed=5500), "FNA-A")
    assert storescu(daemon.port, *late).returncode == 0
    wait_until(lambda: _case_sr(orthanc, "FNA-A", version, 2) is not None, 90, "case A's second version")
    second = _case_sr(orthanc, "FNA-A", version, 2)
    assert second is not None
    assert _referenced(second) == {derived_uid(u, version, "sr") for u in _uids(case_a + late)}
    (previous,) = second.PredecessorDocumentsSequence[0].ReferencedSeriesSequence[0].ReferencedSOPSequence
    assert previous.ReferencedSOPInstanceUID == first.SOPInstanceUID
    if os.environ.get("CDS_UPDATE_SCREENSHOT") == "1":  # the example in the docs: what the PACS received
        second.save_as(tmp_path / "case_sr.dcm", enforce_file_format=True)
        dump = subprocess.run(["dsrdump", str(tmp_path / "case_sr.dcm")], capture_output=True, text=True, check=True)
        (REPO / "docs" / "case_sr.dsrdump.txt").write_text(dump.stdout)
    assert _case_sr(orthanc, "FNA-A", version, 3) is None and _case_sr(orthanc, "FNA-B", version, 2) is None
    worklist = json.loads(daemon.cli("worklist", "list", "--json").stdout)["items"]
    assert all(len(item["images"]) >= 1 for item in worklist)  # the worklist shows cases (specimens)
    keys = {item["case_key"] for item in worklist}
    assert keys <= {"specimen:FNA-A", "specimen:FNA-B"}


def test_the_quiet_period_survives_a_restart(
    make_daemon: Callable[..., DaemonProcess], orthanc: OrthancProcess, tiny_bundle: Path, tmp_path: Path
) -> None:
    version = read_manifest(tiny_bundle).version
    slow = CONFIG.replace("case_quiet_s = 4", "case_quiet_s = 15")
    daemon = make_daemon(
        bundle=tiny_bundle, destinations=[("pacs", "ORTHANC", orthanc.dicom_port)], extra_config=slow
    ).start()
    files = _on_slide(write_images(tmp_path / "c", 1, seed=5600), "FNA-C")
    assert storescu(daemon.port, *files).returncode == 0

    def reported() -> bool:
        return json.loads(daemon.cli("status", "--json").stdout)["instances"]["received"] == 0 and any(
            e["event"] == "instance_reported" for e in daemon.log_events()
        )

    wait_until(reported, 60, "the image analysed")
    assert daemon.stop() == 0  # inside the 15 s quiet period: no case SR yet
    assert not any(e["event"] == "case_reported" for e in daemon.log_events())
    daemon.start()
    wait_until(lambda: _case_sr(orthanc, "FNA-C", version, 1) is not None, 90, "the case SR after the restart")

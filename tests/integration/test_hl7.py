"""Issue 25: results to the laboratory information system as HL7 v2.5.1 ORU^R01 over MLLP.

A daemon process sends to an MLLP receiver run by the test (hl7apy's, another implementation than ours, which
validates each message against the 2.5.1 structures): the AI's preliminary result, then the reviewer's final
one, each once; an AE is retried, an AR dead-lettered; a restart resends nothing.
"""

from __future__ import annotations

import json
import os
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from cds_daemon.common.manifest import read_manifest
from cds_daemon.egress.hl7_message import control_id
from cds_daemon.reports.uids import derived_uid
from dicom_fixtures.synth import make_field
from dicom_fixtures.wrap import wrap_image, write_dicom
from tests.integration.test_browser import FAST_EGRESS, PASSWORD, _cli
from tests.support.fhirpeer import FHIRPeer
from tests.support.hl7peer import LISPeer
from tests.support.processes import REPO, DaemonProcess, storescu
from tests.support.waiting import wait_until

pytestmark = pytest.mark.integration


@pytest.fixture
def lis() -> Iterator[LISPeer]:
    peer = LISPeer().start()
    yield peer
    peer.stop()


@pytest.fixture
def fhir() -> Iterator[FHIRPeer]:
    peer = FHIRPeer().start()
    yield peer
    peer.stop()


def _outbox(daemon: DaemonProcess, kind: str, destination: str = "lis") -> list[tuple[str, str, str | None]]:
    with sqlite3.connect(daemon.data_dir / "cds.sqlite3") as db:
        return list(
            db.execute(
                "SELECT object_uid, state, last_error FROM outbox WHERE destination = ? AND kind = ? ORDER BY id",
                (destination, kind),
            )
        )


def _send(daemon: DaemonProcess, out: Path, seed: int) -> str:
    ds = wrap_image(make_field("malignant", seed), "vl-microscopic", "explicit", seed=seed, instance_number=1)
    path = write_dicom(ds, out / f"{seed}.dcm")
    assert storescu(daemon.port, path).returncode == 0
    return str(ds.SOPInstanceUID)


def test_preliminary_then_final_results_reach_the_lis_and_the_fhir_server_once_each(
    make_daemon: Callable[..., DaemonProcess], tiny_bundle: Path, lis: LISPeer, fhir: FHIRPeer, tmp_path: Path
) -> None:
    version = read_manifest(tiny_bundle).version
    lis.script = ["AE"]  # the first message is refused for now: it is sent again
    fhir.script = [503, 200, 200, 400]  # the first transaction too; the third image's is refused for good
    daemon = make_daemon(
        bundle=tiny_bundle,
        web_destinations=[
            {"name": "lis", "kind": "hl7", "host": "127.0.0.1", "port": lis.port},
            {"name": "ehr", "kind": "fhir", "url": fhir.url},
        ],
        extra_config=FAST_EGRESS + "[reports]\ncase_sr = false\n",
        triage_mode="shadow",  # every image is reviewed
    ).start()
    added = _cli(daemon, "user", "add", "dr.ana", "--full-name", "Smith^Ana", "--password-stdin", stdin=PASSWORD)
    assert added.returncode == 0, added.stderr
    uid = _send(daemon, tmp_path, 7100)
    sr_uid = derived_uid(uid, version, "sr")
    wait_until(lambda: [s for _, s, _ in _outbox(daemon, "sr")] == ["delivered"], 120, "the preliminary result")
    assert not lis.invalid, lis.invalid
    assert [(r.control_id, r.answered) for r in lis.received] == [(control_id(sr_uid), "AE")] * 1 + [
        (control_id(sr_uid), "AA")
    ], "refused with AE, then sent again with the same control ID"
    (obr,) = lis.segments(1, "OBR")
    assert obr[25] == "P" and obr[3]  # preliminary; the accession as the filler order number
    obx = lis.segments(1, "OBX")
    assert all(o[11] == "P" for o in obx)
    assert any(o[3].startswith("CATEGORY^") for o in obx)
    assert [o[5] for o in obx if o[3].startswith("SR-UID^")] == [sr_uid]
    assert sum(1 for o in obx if o[2] == "NM") == 3, "each class's calibrated probability"
    (pid,) = lis.segments(1, "PID")
    assert pid[3].startswith("FXP-")

    items = json.loads(_cli(daemon, "worklist", "list", "--json").stdout)["items"]
    (item,) = [i for i in items if i["images"] == [uid]]
    args = ("--item", str(item["id"]), "--decision", "change", "--class", "benign", "--comment", "Benign | follicular")
    made = _cli(daemon, "worklist", "decide", *args, "--reviewer", "dr.ana", "--password-stdin", stdin=PASSWORD)
    assert made.returncode == 0, made.stderr
    review_uid = derived_uid(uid, version, "review-sr:1")
    wait_until(lambda: [s for _, s, _ in _outbox(daemon, "review-sr")] == ["delivered"], 60, "the final result")
    final = lis.received[-1]
    assert final.control_id == control_id(review_uid) and not lis.invalid
    (obr,) = lis.segments(-1, "OBR")
    assert obr[25] == "C", "the reviewer changed the AI's category: corrected"
    (nte,) = lis.segments(-1, "NTE")
    assert nte[3] == "Benign \\F\\ follicular", "the comment, escaped"
    obx = lis.segments(-1, "OBX")
    assert [o[5] for o in obx if o[3].startswith("CATEGORY^")] == ["30807003^Benign^SCT"]
    assert next(o[5] for o in obx if o[3].startswith("REVIEW-DECISION^")).startswith("CHANGE^")
    assert all("Smith^Ana" in o[16] for o in obx), "the reviewer as responsible observer"
    assert len(lis.received) == 3, "one message per event (the AE's retry aside)"
    if os.environ.get("CDS_UPDATE_EXAMPLES") == "1":
        text = "\n\n".join(r.text.replace("\r", "\n").strip() for r in lis.received[1:])
        (REPO / "docs" / "hl7_messages.txt").write_text(text + "\n")

    _fhir_results(fhir, daemon, uid, version)

    lis.script = ["AR"]  # refused for good: dead-lettered, not retried
    other = _send(daemon, tmp_path, 7200)
    wait_until(lambda: len(_outbox(daemon, "sr")) == 2 and _outbox(daemon, "sr")[1][1] == "dead", 120, "a dead letter")
    assert "AR" in str(_outbox(daemon, "sr")[1][2])
    assert [r.answered for r in lis.received].count("AR") == 1
    assert derived_uid(other, version, "sr") == _outbox(daemon, "sr")[1][0]

    wait_until(lambda: len(fhir.statuses) == 4, 60, "the third transaction")
    assert "refused by the test (400)" in str(_outbox(daemon, "sr", "ehr")[1][2])
    assert _outbox(daemon, "sr", "ehr")[1][1] == "dead"

    daemon.stop()
    daemon.start()  # nothing is sent again after a restart
    wait_until(lambda: json.loads(daemon.cli("status", "--json").stdout)["outbox"]["pending"] == 0, 30, "idle")
    assert len(lis.received) == 4 and len(fhir.statuses) == 4


def _fhir_results(fhir: FHIRPeer, daemon: DaemonProcess, uid: str, version: str) -> None:
    """The same two results as FHIR transactions: retried after a 503, AI-asserted, then the reviewer's."""
    wait_until(lambda: [s for _, s, _ in _outbox(daemon, "review-sr", "ehr")] == ["delivered"], 60, "FHIR final")
    assert not fhir.invalid, fhir.invalid
    assert fhir.statuses[:3] == [503, 200, 200]
    (report,) = fhir.resources(1, "DiagnosticReport")
    assert report.status == "preliminary" and report.meta.security[0].code == "AIAST"
    assert report.identifier[0].value == "urn:oid:" + derived_uid(uid, version, "sr")
    (observation,) = fhir.resources(1, "Observation")
    assert observation.valueCodeableConcept.coding[0].system == "http://snomed.info/sct"
    (device,) = [e for e in fhir.received[1].entry if e.resource.get_resource_type() == "Device"]
    assert observation.device.reference == device.fullUrl and device.request.ifNoneExist.startswith("identifier=")
    (provenance,) = fhir.resources(1, "Provenance")
    assert provenance.agent[0].type.coding[0].code == "author"
    (final,) = fhir.resources(2, "DiagnosticReport")
    assert final.status == "corrected" and not final.meta and final.conclusion == "Benign | follicular"
    (verifier,) = fhir.resources(2, "Provenance")
    assert verifier.agent[0].type.coding[0].code == "verifier" and "Smith" in verifier.agent[0].who.display


def _order(port: int, text: str) -> str:
    """Send one message to the daemon's HL7 listener; its answer (ER7, segments by CR)."""
    import asyncio

    import hl7
    import hl7.mllp

    async def exchange() -> str:
        reader, writer = await hl7.mllp.open_hl7_connection("127.0.0.1", port)
        writer.writemessage(hl7.parse(text))
        await writer.drain()
        answer = await asyncio.wait_for(reader.readmessage(), 10)
        writer.close()
        return str(answer)

    return asyncio.run(exchange())


def test_an_order_before_the_images_gives_the_results_the_lis_numbers(
    make_daemon: Callable[..., DaemonProcess], tiny_bundle: Path, lis: LISPeer, tmp_path: Path
) -> None:
    from tests.support.processes import free_port, wait_for_port

    port = free_port()
    daemon = make_daemon(
        bundle=tiny_bundle,
        web_destinations=[{"name": "lis", "kind": "hl7", "host": "127.0.0.1", "port": lis.port}],
        extra_config=FAST_EGRESS + f"[reports]\ncase_sr = false\n[hl7_listener]\nenabled = true\nport = {port}\n",
    ).start()
    wait_for_port(port, proc=daemon.proc)
    ds = wrap_image(make_field("benign", 7300), "vl-microscopic", "explicit", seed=7300, instance_number=1)
    specimen = str(ds.SpecimenDescriptionSequence[0].SpecimenIdentifier)
    msh = "MSH|^~\\&|LIS|LAB|THYROID_CDS|CDS|20261202101500||OML^O21^OML_O21|{}|P|2.5.1"
    order = "\r".join(
        [
            msh.format("ORD-1"),
            "PID|1||FXP-007300^^^FIXTURE-MRN||FIXTURE^ORDER",
            "ORC|NW|PL-777^LIS|FI-888^LAB|||||||||1234^WELBY^MARCUS",
            "OBR|1|PL-777^LIS|FI-888^LAB|THYFNA^Thyroid FNA cytology^L",
            f"SPM|1|^{specimen}||ASP^Aspirate^HL70487",
        ]
    )
    answer = _order(port, order)
    assert "ORL^O22" in answer and "MSA|AA|ORD-1" in answer
    refused = _order(port, "\r".join([msh.format("ORD-2"), "PID|1||X"]))  # no ORC: nothing is registered
    assert "MSA|AE|ORD-2|" in refused and "ORC" in refused
    wrong = _order(port, msh.format("ORD-3").replace("OML^O21^OML_O21", "ORU^R01^ORU_R01"))
    assert "MSA|AR|ORD-3|" in wrong
    with sqlite3.connect(daemon.data_dir / "cds.sqlite3") as db:
        assert db.execute("SELECT placer_order, filler_order, specimen_id FROM orders").fetchall() == [
            ("PL-777", "FI-888", specimen)
        ]

    path = write_dicom(ds, tmp_path / "ordered.dcm")
    assert storescu(daemon.port, path).returncode == 0
    wait_until(lambda: lis.received, 120, "the result at the LIS")
    assert not lis.invalid, lis.invalid
    (orc,) = lis.segments(0, "ORC")
    (obr,) = lis.segments(0, "OBR")
    assert orc[2:4] == ["PL-777", "FI-888"] and obr[2:4] == ["PL-777", "FI-888"], "the LIS's own order numbers"
    assert obr[16] == "^WELBY^MARCUS", "the ordering provider"

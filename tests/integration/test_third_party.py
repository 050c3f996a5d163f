"""Files written by other toolkits (pydicom's test files, dcmtk, GDCM) against a daemon process.

Every file is sent with dcmtk's storescu; the daemon's answer and the image's end (an AI SR, a
refusal with its code, or a refusal at negotiation) must be what the corpus says. The same run
writes the table in docs/conformance.md (set CDS_WRITE_DOCS=1 to rewrite it after a change).
"""

from __future__ import annotations

import json
import os
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom.uid import UID

from cds_daemon.ingest.acceptance import ACCEPTED_SOP_CLASSES
from tests.support.processes import REPO, STORESCU_PROPOSE_UID, DaemonProcess, send_raw, storescu
from tests.support.third_party import ThirdPartyFile, build_corpus, missing_tools
from tests.support.waiting import wait_until

pytestmark = pytest.mark.integration

DOC = REPO / "docs" / "conformance.md"
START, END = "<!-- third-party-table:start -->", "<!-- third-party-table:end -->"


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> list[ThirdPartyFile]:
    missing = missing_tools()
    if missing:
        pytest.fail(f"install {', '.join(missing)} (bash deploy/setup.sh does)")
    return build_corpus(tmp_path_factory.mktemp("third-party"))


def _send(port: int, f: ThirdPartyFile) -> int:
    """0 when the C-STORE succeeded (storescu's exit code, or pynetdicom's status for raw sends)."""
    if f.sender == "raw":
        return send_raw(port, f.path)
    syntax = str(f.header.file_meta.TransferSyntaxUID)
    return storescu(port, f.path, extra=STORESCU_PROPOSE_UID[syntax]).returncode


@pytest.fixture(scope="module")
def results(
    corpus: list[ThirdPartyFile], tiny_bundle: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, dict[str, object]]]:
    """Send every file to one daemon; per file: the answer, the refusal code, and how it ended."""
    daemon = DaemonProcess(workdir=tmp_path_factory.mktemp("daemon"), bundle=tiny_bundle, destinations=[])
    daemon.start()
    try:
        sent = {f.name: _send(daemon.port, f) for f in corpus}
        uids = {f.name: str(f.header.SOPInstanceUID) for f in corpus}
        db = daemon.data_dir / "cds.sqlite3"

        def query(sql: str, *args: object) -> list[tuple[object, ...]]:
            with sqlite3.connect(db) as con:
                return con.execute(sql, args).fetchall()

        def settled() -> bool:
            return not query("SELECT 1 FROM instances WHERE state IN ('received', 'processing')")

        wait_until(settled, 180, "every acknowledged file analysed or failed")
        out: dict[str, dict[str, object]] = {}
        for f in corpus:
            uid = uids[f.name]
            refused = query("SELECT status, code, reason FROM rejections WHERE sop_instance_uid = ?", uid)
            instance = query("SELECT state, state_reason FROM instances WHERE sop_instance_uid = ?", uid)
            prediction = query("SELECT detail FROM predictions WHERE sop_instance_uid = ?", uid)
            if refused:
                status, code, reason = refused[0]
                out[f.name] = {"status": f"0x{status:04X}", "code": code, "outcome": "refused", "reason": reason}
            elif instance:
                objects = json.loads(str(prediction[0][0]))["objects"] if prediction else {}
                outcome = "classified" if "sr" in objects else f"{instance[0][0]}: {instance[0][1]}"
                out[f.name] = {"status": "0x0000", "code": None, "outcome": outcome}
            else:
                out[f.name] = {"status": "not-negotiated", "code": None, "outcome": "not-negotiated"}
            out[f.name]["sender_rc"] = sent[f.name]
        yield out
    finally:
        daemon.stop()


def test_every_file_gets_the_expected_answer_and_end(
    corpus: list[ThirdPartyFile], results: dict[str, dict[str, object]]
) -> None:
    wrong = {
        f.name: results[f.name]
        for f in corpus
        if (results[f.name]["status"], results[f.name]["code"], results[f.name]["outcome"])
        != (f.status, f.code, f.outcome)
    }
    assert not wrong, wrong
    for f in corpus:  # the sender saw success exactly when the daemon acknowledged
        assert (results[f.name]["sender_rc"] == 0) == (f.status == "0x0000"), f.name


@pytest.mark.parametrize(
    "name",
    [
        "pydicom/SC_ybr_full_422_uncompressed.dcm",
        "dcmtk/JPEG without Planar Configuration",
        "gdcm/JPEG 2000 without Planar Configuration",
    ],
)
def test_formats_that_other_toolkits_write_are_classified(results: dict[str, dict[str, object]], name: str) -> None:
    assert results[name]["outcome"] == "classified"


def test_missing_study_and_series_uids_are_named_in_the_refusal(results: dict[str, dict[str, object]]) -> None:
    result = results["dcmtk/no Study or Series Instance UID"]
    assert result["status"] == "0xA900"
    assert result["reason"] == "missing Type 1 attributes: StudyInstanceUID, SeriesInstanceUID"


def test_broken_codestreams_are_refused_with_a_reason(results: dict[str, dict[str, object]]) -> None:
    reason = str(results["pydicom/JPEG2000-embedded-sequence-delimiter.dcm"]["reason"])
    assert "codestream is 3722445056x1024" in reason and "the header says 256x1024" in reason
    assert "RLE header declares 16 segments" in str(results["broken/RLE header segment count"]["reason"])


def _row(f: ThirdPartyFile, result: dict[str, object]) -> str:
    header = f.header
    sop = str(header.get("SOPClassUID", ""))
    iod = ACCEPTED_SOP_CLASSES.get(sop) or UID(sop).name.removesuffix(" Storage")
    syntax = UID(str(header.file_meta.TransferSyntaxUID)).name
    photometric = str(header.get("PhotometricInterpretation", ""))
    answer = str(result["status"]) + (f" `{result['code']}`" if result["code"] else "")
    classified = "yes" if result["outcome"] == "classified" else "no"
    return f"| {iod} | {syntax} | {photometric} | {f.name} ({f.origin}) | {answer} | {classified} |"


def test_conformance_table_is_current(
    corpus: list[ThirdPartyFile], results: dict[str, dict[str, object]], request: pytest.FixtureRequest
) -> None:
    rows = sorted(_row(f, results[f.name]) for f in corpus)
    table = "\n".join(
        [
            START,
            "| IOD | Transfer syntax | Photometric | File (written by) | C-STORE answer | Classified |",
            "| --- | --- | --- | --- | --- | --- |",
            *rows,
            END,
        ]
    )
    text = DOC.read_text(encoding="utf-8")
    current = text[text.index(START) : text.index(END) + len(END)] if START in text else None
    if current == table:
        return
    if os.environ.get("CDS_WRITE_DOCS") == "1":
        DOC.write_text(text.replace(current, table) if current else text.rstrip("\n") + "\n\n" + table + "\n")
        return
    pytest.fail("docs/conformance.md's third-party table is out of date: rerun with CDS_WRITE_DOCS=1")

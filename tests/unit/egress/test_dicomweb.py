"""STOW-RS over https with a bearer token, against a small archive stand-in served here (Orthanc's DICOMweb
plugin has no bearer tokens; basic auth against it is tested in tests/integration/test_dicomweb.py)."""

from __future__ import annotations

import http.server
import json
import ssl
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

from cds_daemon.common.config import Destination
from cds_daemon.egress.dicomweb import check, stow_batch
from cds_daemon.store import OutboxItem
from tests.support.pki import TestPKI, make_pki

TOKEN = "s3cret-token"


@dataclass
class Archive:
    """Answers QIDO-RS and STOW-RS; stores nothing; lists the known UIDs found in a request as stored, or as
    failed (0xA700) for those in ``refuse``."""

    port: int
    known: list[str] = field(default_factory=list)
    seen_auth: list[str] = field(default_factory=list)
    refuse: set[str] = field(default_factory=set)


def _response(stored: list[str], failed: list[str]) -> dict[str, Any]:
    def item(uid: str, reason: int | None = None) -> dict[str, Any]:
        out: dict[str, Any] = {
            "00081150": {"vr": "UI", "Value": [str(SecondaryCaptureImageStorage)]},
            "00081155": {"vr": "UI", "Value": [uid]},
        }
        if reason is not None:
            out["00081197"] = {"vr": "US", "Value": [reason]}
        return out

    body: dict[str, Any] = {}
    if stored:
        body["00081199"] = {"vr": "SQ", "Value": [item(u) for u in stored]}
    if failed:
        body["00081198"] = {"vr": "SQ", "Value": [item(u, 0xA700) for u in failed]}
    return body


@pytest.fixture
def archive(tmp_path: Path) -> Iterator[tuple[Archive, TestPKI]]:
    pki = make_pki(tmp_path / "pki")
    state = Archive(port=0)

    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def _authorised(self) -> bool:
            auth = self.headers.get("Authorization", "")
            state.seen_auth.append(auth)
            if auth == f"Bearer {TOKEN}":
                return True
            self.send_response(401)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return False

        def do_GET(self) -> None:
            if self._authorised():
                self.send_response(204)
                self.end_headers()

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            if not self._authorised():
                return
            present = [u for u in state.known if u.encode() in body]
            stored = [u for u in present if u not in state.refuse]
            failed = [u for u in present if u in state.refuse]
            data = json.dumps(_response(stored, failed)).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/dicom+json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(pki.server.cert, pki.server.key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    state.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield state, pki
    server.shutdown()
    server.server_close()


def _items(archive: Archive, tmp_path: Path, n: int) -> list[OutboxItem]:
    items = []
    for i in range(n):
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.SOPClassUID = SecondaryCaptureImageStorage
        ds.SOPInstanceUID = generate_uid()
        ds.StudyInstanceUID = generate_uid()
        ds.SeriesInstanceUID = generate_uid()
        ds.Modality = "OT"
        path = tmp_path / f"{i}.dcm"
        ds.save_as(path, enforce_file_format=True)
        archive.known.append(str(ds.SOPInstanceUID))
        uid = str(ds.SOPInstanceUID)
        items.append(OutboxItem(i + 1, "src", "sc", uid, str(ds.SOPClassUID), "web", str(path), "pending", 0, "", None))
    return items


def _destination(archive: Archive, pki: TestPKI, tmp_path: Path, token: str, ca: Path | None = None) -> Destination:
    token_file = tmp_path / "token"
    token_file.write_text(token + "\n")
    return Destination(
        name="web",
        kind="dicomweb",
        url=f"https://localhost:{archive.port}/dicom-web",
        token_file=token_file,
        tls={"enabled": True, "ca_file": ca or pki.ca.cert},
    )


def test_bearer_token_over_verified_tls_stores_and_reports_failures(
    archive: tuple[Archive, TestPKI], tmp_path: Path
) -> None:
    state, pki = archive
    destination = _destination(state, pki, tmp_path, TOKEN)
    assert check(destination).ok
    first, second = _items(state, tmp_path, 2)
    state.refuse.add(second.object_uid)
    outcomes = {o.item_id: o for o in stow_batch(destination, [first, second], timeout_s=10)}
    assert outcomes[first.id].ok and outcomes[first.id].detail == "STOW-RS stored"
    assert not outcomes[second.id].ok and "0xA700" in outcomes[second.id].detail
    assert set(state.seen_auth) == {f"Bearer {TOKEN}"}  # the token went with every request, over TLS


def test_a_wrong_token_or_an_unknown_server_certificate_is_not_delivered(
    archive: tuple[Archive, TestPKI], tmp_path: Path
) -> None:
    state, pki = archive
    (item,) = _items(state, tmp_path, 1)
    wrong = _destination(state, pki, tmp_path, "not-the-token")
    assert not check(wrong).ok
    (outcome,) = stow_batch(wrong, [item], timeout_s=10)
    assert not outcome.ok and outcome.detail == "STOW-RS HTTP 401"
    untrusted = _destination(state, pki, tmp_path, TOKEN, ca=pki.rogue_ca.cert)
    (outcome,) = stow_batch(untrusted, [item], timeout_s=10)
    assert not outcome.ok and "SSLError" in outcome.detail
    assert "cannot reach it" in check(untrusted).detail

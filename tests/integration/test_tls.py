"""DICOM TLS (PS3.15 Annex B) as real processes: dcmtk clients against the daemon's listener,
the daemon's egress against Orthanc and dcmtk ``storescp`` with TLS."""

from __future__ import annotations

import json
import socket
import sqlite3
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pydicom
import pytest

from cds_daemon.common.manifest import read_manifest
from cds_daemon.reports.uids import derived_uid
from tests.support.dicom_files import dataset_bytes, write_images
from tests.support.pki import TestPKI, make_pki
from tests.support.processes import (
    SENDER_AE,
    DaemonProcess,
    OrthancProcess,
    OrthancTLS,
    StoreSCPProcess,
    echoscu,
    storescu,
)
from tests.support.waiting import wait_until

pytestmark = pytest.mark.integration

FAST_EGRESS = "[egress]\nretry_base_s = 0.3\nretry_max_s = 1.0\npoll_s = 0.5\ntimeout_s = 5\nmax_attempts = 1000\n"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> TestPKI:
    return make_pki(tmp_path_factory.mktemp("pki"))


def _listener_tls(pki: TestPKI, *, require_peer_cert: bool = True) -> dict[str, object]:
    return {
        "enabled": True,
        "cert_file": pki.server.cert,
        "key_file": pki.server.key,
        "ca_file": pki.ca.cert,
        "require_peer_cert": require_peer_cert,
    }


def _trusted_client(pki: TestPKI) -> tuple[str, ...]:
    """dcmtk: present the client certificate of the trusted CA, verify the server against that CA."""
    return (*pki.client.dcmtk_args(), "+cf", str(pki.ca.cert))


def _anonymous_client(pki: TestPKI) -> tuple[str, ...]:
    """dcmtk: TLS without a client certificate, still verifying the server."""
    return ("+tla", "+cf", str(pki.ca.cert))


def _rows(d: DaemonProcess, sql: str) -> list[tuple]:
    db = sqlite3.connect(d.data_dir / "cds.sqlite3")
    try:
        return db.execute(sql).fetchall()
    finally:
        db.close()


def _spooled(d: DaemonProcess) -> list[Path]:
    return list((d.data_dir / "spool" / "objects").rglob("*.dcm"))


def _handshake_failures(d: DaemonProcess) -> list[str]:
    return [str(e["reason"]) for e in d.log_events() if e["event"] == "tls_handshake_failed"]


# --- the listener -------------------------------------------------------------------------------


def test_mutual_tls_echo_and_store(make_daemon: Callable[..., DaemonProcess], pki: TestPKI, tmp_path: Path) -> None:
    d = make_daemon(listener_tls=_listener_tls(pki)).start()
    echo = echoscu(d.port, extra=_trusted_client(pki))
    assert echo.returncode == 0, echo.stderr
    files = write_images(tmp_path / "in", 2, seed=11)
    r = storescu(d.port, *files, extra=_trusted_client(pki))
    assert r.returncode == 0, r.stderr
    rows = _rows(d, "SELECT sop_instance_uid, spool_path, state, calling_ae FROM instances ORDER BY id")
    assert [(uid, state, calling) for uid, _, state, calling in rows] == [
        (str(pydicom.dcmread(f).SOPInstanceUID), "received", SENDER_AE) for f in files
    ]
    for path, (_, spool_path, _, _) in zip(files, rows, strict=True):
        assert dataset_bytes(Path(spool_path).read_bytes()) == dataset_bytes(path.read_bytes())


@pytest.mark.parametrize(
    ("client", "reason"),
    [
        ("anonymous", "PEER_DID_NOT_RETURN_A_CERTIFICATE"),
        ("untrusted-ca", "CERTIFICATE_VERIFY_FAILED"),
        ("plain", "WRONG_VERSION_NUMBER"),
    ],
)
def test_refused_at_the_handshake_and_still_serving(
    make_daemon: Callable[..., DaemonProcess], pki: TestPKI, tmp_path: Path, client: str, reason: str
) -> None:
    d = make_daemon(listener_tls=_listener_tls(pki)).start()
    extra = {
        "anonymous": _anonymous_client(pki),
        "untrusted-ca": (*pki.rogue_client.dcmtk_args(), "+cf", str(pki.ca.cert)),
        "plain": (),
    }[client]
    files = write_images(tmp_path / "in", 1, seed=21)
    r = storescu(d.port, *files, extra=extra)
    assert r.returncode != 0
    assert _rows(d, "SELECT COUNT(*) FROM instances") == [(0,)]
    assert _spooled(d) == []
    wait_until(lambda: any(f.startswith(reason) for f in _handshake_failures(d)), 5, f"a {reason} handshake failure")
    assert not any(e["event"] in ("association_rejected", "echo", "instance_received") for e in d.log_events())
    # The daemon keeps serving: a trusted caller stores right after.
    assert d.proc is not None and d.proc.poll() is None
    r = storescu(d.port, *files, extra=_trusted_client(pki))
    assert r.returncode == 0, r.stderr
    assert _rows(d, "SELECT COUNT(*) FROM instances") == [(1,)]


def test_optional_client_certificate(make_daemon: Callable[..., DaemonProcess], pki: TestPKI, tmp_path: Path) -> None:
    """require_peer_cert = false: server-authenticated TLS; a caller without a certificate is served."""
    d = make_daemon(listener_tls=_listener_tls(pki, require_peer_cert=False)).start()
    files = write_images(tmp_path / "in", 2, seed=31)
    r = storescu(d.port, files[0], extra=_anonymous_client(pki))
    assert r.returncode == 0, r.stderr
    r = storescu(d.port, files[1], extra=_trusted_client(pki))
    assert r.returncode == 0, r.stderr
    assert _rows(d, "SELECT COUNT(*) FROM instances") == [(2,)]
    # Still TLS only.
    assert echoscu(d.port).returncode != 0


def test_tls_profiles_and_versions(make_daemon: Callable[..., DaemonProcess], pki: TestPKI) -> None:
    """dcmtk's BCP 195 profiles connect; the retired AES and NULL profiles and TLS < 1.2 do not."""
    d = make_daemon(listener_tls=_listener_tls(pki)).start()
    for profile in ("+py", "+px", "+pz"):  # BCP 195 non-downgrading (dcmtk default), BCP 195, extended
        r = echoscu(d.port, extra=(*_trusted_client(pki), profile))
        assert r.returncode == 0, f"{profile}: {r.stderr}"
    for profile in ("+pa", "+pn"):  # retired: AES (TLS_RSA_WITH_AES_128_CBC_SHA), NULL (no encryption)
        assert echoscu(d.port, extra=(*_trusted_client(pki), profile)).returncode != 0, profile
    s_client = ["openssl", "s_client", "-connect", f"127.0.0.1:{d.port}", "-cipher", "DEFAULT:@SECLEVEL=0", "-brief"]
    s_client += ["-cert", str(pki.client.cert), "-key", str(pki.client.key), "-CAfile", str(pki.ca.cert)]
    s_client += ["-verify_return_error"]
    for version, accepted in (("-tls1", False), ("-tls1_1", False), ("-tls1_2", True), ("-tls1_3", True)):
        r = subprocess.run(
            [*s_client, version],
            input="",
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert (r.returncode == 0) == accepted, f"{version}: {r.stderr}"
    wait_until(lambda: "UNSUPPORTED_PROTOCOL" in _handshake_failures(d), 5, "an UNSUPPORTED_PROTOCOL handshake failure")


def test_silent_connection_blocks_nobody(make_daemon: Callable[..., DaemonProcess], pki: TestPKI) -> None:
    """A caller that connects and never starts the handshake holds neither other callers nor the shutdown."""
    d = make_daemon(listener_tls=_listener_tls(pki)).start()
    with socket.create_connection(("127.0.0.1", d.port)):
        started = time.monotonic()
        r = echoscu(d.port, extra=("-to", "10", "-ta", "10", *_trusted_client(pki)))
        assert r.returncode == 0, r.stderr
        assert time.monotonic() - started < 5
        started = time.monotonic()
        assert d.stop() == 0
        assert time.monotonic() - started < 10


# --- egress -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tls_pacs(pki: TestPKI, tmp_path_factory: pytest.TempPathFactory) -> Iterator[OrthancProcess]:
    """Orthanc with DICOM TLS that requires a client certificate from the trusted CA."""
    pacs = OrthancProcess(
        workdir=tmp_path_factory.mktemp("orthanc-tls"),
        tls=OrthancTLS(cert=pki.server.cert, key=pki.server.key, trusted=pki.ca.cert, require_client_cert=True),
    ).start()
    yield pacs
    pacs.stop()


@pytest.fixture(scope="module")
def tls_archive(pki: TestPKI, tmp_path_factory: pytest.TempPathFactory) -> Iterator[StoreSCPProcess]:
    """storescp with TLS, server certificate from the trusted CA, no client certificate asked for."""
    scp = StoreSCPProcess(workdir=tmp_path_factory.mktemp("archive"), extra=(*pki.server.dcmtk_args(), "-ic"))
    yield scp.start()
    scp.stop()


@pytest.fixture(scope="module")
def rogue_scp(pki: TestPKI, tmp_path_factory: pytest.TempPathFactory) -> Iterator[StoreSCPProcess]:
    """storescp with TLS and a server certificate that our ca_file does not trust."""
    scp = StoreSCPProcess(workdir=tmp_path_factory.mktemp("rogue"), extra=(*pki.rogue_server.dcmtk_args(), "-ic"))
    yield scp.start()
    scp.stop()


Destinations = list[tuple[str, str, int]]
DestinationTLS = dict[str, dict[str, object]]


def _destinations(
    pki: TestPKI, pacs: OrthancProcess, archive: StoreSCPProcess, rogue: StoreSCPProcess
) -> tuple[Destinations, DestinationTLS]:
    """The PACS with mutual TLS, the archive with server-only TLS, the rogue SCP that we do not trust."""
    mutual = {"enabled": True, "cert_file": pki.client.cert, "key_file": pki.client.key, "ca_file": pki.ca.cert}
    server_only = {"enabled": True, "ca_file": pki.ca.cert}
    destinations = [
        ("pacs", "ORTHANC", pacs.dicom_port),
        ("archive", archive.ae_title, archive.port),
        ("rogue", rogue.ae_title, rogue.port),
    ]
    return destinations, {"pacs": mutual, "archive": server_only, "rogue": mutual}


def test_check_echoes_destinations_over_tls(
    make_daemon: Callable[..., DaemonProcess],
    pki: TestPKI,
    tls_pacs: OrthancProcess,
    tls_archive: StoreSCPProcess,
    rogue_scp: StoreSCPProcess,
) -> None:
    # The PACS really insists on a client certificate (so a success below is mutual TLS).
    assert echoscu(tls_pacs.dicom_port, called="ORTHANC", extra=_anonymous_client(pki)).returncode != 0
    destinations, destination_tls = _destinations(pki, tls_pacs, tls_archive, rogue_scp)
    destinations.append(("pacs-no-cert", "ORTHANC", tls_pacs.dicom_port))
    destination_tls["pacs-no-cert"] = {"enabled": True, "ca_file": pki.ca.cert}
    d = make_daemon(destinations=destinations, destination_tls=destination_tls)
    d.workdir.mkdir(parents=True)
    d.write_config()
    r = d.cli("check", "--json")
    assert r.returncode != 0
    checks = {c["check"]: c for c in json.loads(r.stdout)["checks"]}
    assert checks["destination:pacs"]["ok"], checks["destination:pacs"]
    assert checks["destination:archive"]["ok"], checks["destination:archive"]
    assert not checks["destination:rogue"]["ok"]
    assert "TLS failed: CERTIFICATE_VERIFY_FAILED" in checks["destination:rogue"]["detail"]
    assert not checks["destination:pacs-no-cert"]["ok"]
    assert "TLS failed: TLSV13_ALERT_CERTIFICATE_REQUIRED" in checks["destination:pacs-no-cert"]["detail"]


def test_reports_are_sent_over_tls(
    make_daemon: Callable[..., DaemonProcess],
    tiny_bundle: Path,
    pki: TestPKI,
    tls_pacs: OrthancProcess,
    tls_archive: StoreSCPProcess,
    rogue_scp: StoreSCPProcess,
    tmp_path: Path,
) -> None:
    """TLS in (mutual) and out: SR and SC reach the PACS (mutual TLS) and the archive (server-only TLS);
    a destination whose certificate our ca_file does not trust gets nothing and stays queued."""
    version = read_manifest(tiny_bundle).version
    destinations, destination_tls = _destinations(pki, tls_pacs, tls_archive, rogue_scp)
    d = make_daemon(
        bundle=tiny_bundle,
        listener_tls=_listener_tls(pki),
        destinations=destinations,
        destination_tls=destination_tls,
        extra_config=FAST_EGRESS,
    ).start()
    (source,) = write_images(tmp_path / "in", 1, seed=41)
    r = storescu(d.port, source, extra=_trusted_client(pki))
    assert r.returncode == 0, r.stderr
    uid = str(pydicom.dcmread(source).SOPInstanceUID)
    sr_uid, sc_uid = derived_uid(uid, version, "sr"), derived_uid(uid, version, "sc")

    wait_until(lambda: all(tls_pacs.instance_id(u) for u in (sr_uid, sc_uid)), 60, "SR and SC in the PACS")
    wait_until(lambda: {sr_uid, sc_uid} <= _received_uids(tls_archive), 30, "SR and SC in the archive")

    def outbox() -> dict[str, list[tuple[str, int, str | None]]]:
        by_dest: dict[str, list[tuple[str, int, str | None]]] = {}
        for dest, state, attempts, error in _rows(d, "SELECT destination, state, attempts, last_error FROM outbox"):
            by_dest.setdefault(dest, []).append((state, attempts, error))
        return by_dest

    def rogue_retried() -> bool:
        rows = outbox().get("rogue", [])
        return bool(rows) and all(attempts >= 2 for _, attempts, _ in rows)

    wait_until(rogue_retried, 30, "retries to the rogue destination")
    rows = outbox()
    assert {s for s, _, _ in rows["pacs"]} == {"delivered"}
    assert {s for s, _, _ in rows["archive"]} == {"delivered"}
    assert all(s == "pending" and "CERTIFICATE_VERIFY_FAILED" in (e or "") for s, _, e in rows["rogue"])
    assert rogue_scp.received() == []
    assert _rows(d, "SELECT state FROM instances") == [("reported",)]  # not delivered everywhere


def _received_uids(scp: StoreSCPProcess) -> set[str]:
    uids = set()
    for path in scp.received():
        try:
            uids.add(str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID))
        except Exception:  # still being written
            continue
    return uids


def test_tls12_cbc_suites_are_refused_and_certificates_bind_ae_titles(
    make_daemon: Callable[..., DaemonProcess], pki: TestPKI
) -> None:
    """BCP 195: AEAD suites only; a caller whose certificate is not its AE title's is refused."""
    bound = (
        '[[listener.allowed_callers]]\nae_title = "STORESCU"\naddresses = ["127.0.0.1/32"]\n'
        'tls_common_name = "client"\n'
        '[[listener.allowed_callers]]\nae_title = "MODALITY"\naddresses = ["127.0.0.1/32"]\n'
        'tls_common_name = "modality-7"\n'
    )
    d = make_daemon(listener_tls=_listener_tls(pki), allowed=[], extra_config=bound).start()
    s_client = ["openssl", "s_client", "-connect", f"127.0.0.1:{d.port}", "-brief", "-tls1_2"]
    s_client += ["-cert", str(pki.client.cert), "-key", str(pki.client.key), "-CAfile", str(pki.ca.cert)]
    for cipher, accepted in (
        ("ECDHE-RSA-AES128-SHA256:AES128-SHA256:AES256-SHA", False),
        ("ECDHE-RSA-AES128-GCM-SHA256", True),
    ):
        r = subprocess.run([*s_client, "-cipher", cipher], input="", capture_output=True, text=True, timeout=30)
        assert (r.returncode == 0) == accepted, f"{cipher}: {r.stderr}"
    assert echoscu(d.port, extra=_trusted_client(pki)).returncode == 0  # certificate CN "client" is STORESCU's
    r = echoscu(d.port, calling="MODALITY", extra=_trusted_client(pki))  # same certificate, another AE title
    assert r.returncode != 0
    assert ("caller_certificate",) in _rows(d, "SELECT code FROM rejections")

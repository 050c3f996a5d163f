"""Results by STOW-RS to Orthanc's DICOMweb plugin (Debian's orthanc-dicomweb), with HTTP basic auth."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path

import pydicom
import pytest

from cds_daemon.common.manifest import read_manifest
from cds_daemon.reports.uids import derived_uid
from tests.support.dicom_files import write_images
from tests.support.processes import DaemonProcess, OrthancProcess, storescu
from tests.support.waiting import wait_until

pytestmark = pytest.mark.integration

FAST_EGRESS = "[egress]\nretry_base_s = 0.3\nretry_max_s = 1.0\npoll_s = 0.5\ntimeout_s = 5\nmax_attempts = 3\n"


@pytest.fixture
def web_pacs(tmp_path: Path) -> Iterator[OrthancProcess]:
    pacs = OrthancProcess(workdir=tmp_path / "orthanc", dicomweb=True, users={"cds": "stow secret"}).start()
    yield pacs
    pacs.stop()


def _destination(pacs: OrthancProcess, password_file: Path) -> dict[str, object]:
    return {
        "name": "archive",
        "kind": "dicomweb",
        "url": f"http://127.0.0.1:{pacs.http_port}/dicom-web",
        "username": "cds",
        "password_file": password_file,
    }


def test_results_reach_a_dicomweb_archive_once(
    make_daemon: Callable[..., DaemonProcess], web_pacs: OrthancProcess, tiny_bundle: Path, tmp_path: Path
) -> None:
    secret = tmp_path / "password"
    secret.write_text("stow secret\n")
    daemon = make_daemon(
        bundle=tiny_bundle, web_destinations=[_destination(web_pacs, secret)], extra_config=FAST_EGRESS
    ).start()
    check = daemon.cli("check")
    assert check.returncode == 0 and "QIDO-RS answered" in check.stdout, check.stdout
    files = write_images(tmp_path / "in", 3, seed=5100)
    assert storescu(daemon.port, *files).returncode == 0
    version = read_manifest(tiny_bundle).version
    uids = [str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID) for f in files]

    def delivered() -> bool:
        return json.loads(daemon.cli("status", "--json").stdout)["instances"]["delivered"] == 3

    wait_until(delivered, 120, "all three images' results stored by STOW-RS")
    for uid in uids:
        for kind in ("sr", "sc", "kos"):
            assert web_pacs.instance_id(derived_uid(uid, version, kind)) is not None, (uid, kind)
    assert len(web_pacs.instances()) == 9
    events = [e for e in daemon.log_events() if e["event"] == "object_delivered"]
    assert {e["detail"] for e in events} == {"STOW-RS stored"}


def test_a_refused_login_is_retried_then_dead_lettered(
    make_daemon: Callable[..., DaemonProcess], web_pacs: OrthancProcess, tiny_bundle: Path, tmp_path: Path
) -> None:
    wrong = tmp_path / "password"
    wrong.write_text("not the password")
    daemon = make_daemon(
        bundle=tiny_bundle, web_destinations=[_destination(web_pacs, wrong)], extra_config=FAST_EGRESS
    ).start()
    assert daemon.cli("check").returncode != 0
    files = write_images(tmp_path / "in", 1, seed=5200)
    assert storescu(daemon.port, *files).returncode == 0

    def dead() -> bool:
        return json.loads(daemon.cli("status", "--json").stdout)["outbox"]["dead"] == 3

    wait_until(dead, 120, "the three objects dead-lettered after max_attempts")
    failures = [e for e in daemon.log_events() if e["event"] == "object_send_failed"]
    assert failures and all("HTTP 401" in e["reason"] for e in failures)
    assert web_pacs.instances() == []

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.support.dicom_files import write_images
from tests.support.processes import DaemonProcess, OrthancProcess, free_port, storescu

pytestmark = pytest.mark.integration


def test_status_counts(daemon: DaemonProcess, tmp_path: Path) -> None:
    assert storescu(daemon.port, *write_images(tmp_path / "in", 3)).returncode == 0
    r = daemon.cli("status", "--json")
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    assert report["instances"]["received"] == 3
    assert report["instances"]["delivered"] == 0
    human = daemon.cli("status")
    assert "received" in human.stdout and "3" in human.stdout


def test_status_without_database_fails_clearly(make_daemon: Callable[..., DaemonProcess]) -> None:
    d = make_daemon()
    d.workdir.mkdir(parents=True)
    d.write_config()
    r = d.cli("status")
    assert r.returncode == 1 and "no database" in r.stderr


def test_check_passes_against_orthanc_and_fails_on_closed_port(
    make_daemon: Callable[..., DaemonProcess], orthanc: OrthancProcess
) -> None:
    good = make_daemon(destinations=[("pacs", "ORTHANC", orthanc.dicom_port)])
    good.workdir.mkdir(parents=True)
    good.write_config()
    r = good.cli("check", "--json")
    assert r.returncode == 0, r.stdout + r.stderr
    checks = {c["check"]: c for c in json.loads(r.stdout)["checks"]}
    assert checks["destination:pacs"]["ok"] and checks["data_dir"]["ok"]

    bad = make_daemon(destinations=[("pacs", "ORTHANC", orthanc.dicom_port), ("gone", "NOBODY", free_port())])
    bad.workdir.mkdir(parents=True)
    bad.write_config()
    r = bad.cli("check", "--timeout", "3")
    assert r.returncode == 1
    assert "FAIL  destination:gone" in r.stdout and "PASS  destination:pacs" in r.stdout

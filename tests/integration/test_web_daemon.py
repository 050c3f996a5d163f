"""The review page and worklist jobs inside the real daemon process."""

from __future__ import annotations

import json
import socket
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest

from dicom_fixtures.synth import make_bad_field
from dicom_fixtures.wrap import wrap_image, write_dicom
from tests.support.processes import DaemonProcess, free_port, storescu, wait_for_port
from tests.support.waiting import wait_until

pytestmark = pytest.mark.integration


def test_busy_web_port_keeps_dicom_running_but_makes_the_daemon_not_ready(
    make_daemon: Callable[..., DaemonProcess],
) -> None:
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", 0))
        blocker.listen()
        busy = blocker.getsockname()[1]
        daemon = make_daemon(web_port=busy).start()
        wait_for_port(daemon.health_port, proc=daemon.proc)
        status, body = daemon.http("/healthz/ready")
        assert status == 503 and f"review web page cannot listen on 127.0.0.1:{busy}" in body
        assert any(e["event"] == "web_failed" for e in daemon.log_events())
        assert daemon.proc is not None and daemon.proc.poll() is None


def test_daemon_serves_the_page_and_escalates_overdue_cases(
    make_daemon: Callable[..., DaemonProcess], tiny_bundle: Path, tmp_path: Path
) -> None:
    web_port = free_port()
    daemon = make_daemon(
        bundle=tiny_bundle,
        web_port=web_port,
        extra_config="[worklist]\nescalate_after_hours = 0.0005\nescalation_check_minutes = 0.02\n",
    ).start()
    wait_for_port(web_port, proc=daemon.proc)
    with urllib.request.urlopen(f"http://127.0.0.1:{web_port}/login", timeout=10) as rsp:
        assert rsp.status == 200 and b"Sign in" in rsp.read()
    assert any(e["event"] == "no_review_users" for e in daemon.log_events())

    blank = write_dicom(wrap_image(make_bad_field("blank", 5), seed=5), tmp_path / "blank.dcm")
    assert storescu(daemon.port, blank).returncode == 0

    def escalated() -> bool:
        return json.loads(daemon.cli("worklist", "list", "--json").stdout)["counts"]["escalated"] == 1

    wait_until(escalated, 120, "the referred case to be escalated")
    events = [e for e in daemon.log_events() if e["event"] == "worklist_escalated"]
    assert len(events) == 1 and events[0]["level"] == "warning" and len(events[0]["items"]) == 1
    status = daemon.cli("status")
    assert "escalated 1" in status.stdout and "review agreement: 0 decisions" in status.stdout

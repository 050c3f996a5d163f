"""Health endpoints and Prometheus metrics of a running daemon."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.support.dicom_files import write_images
from tests.support.processes import DaemonProcess, storescu

pytestmark = pytest.mark.integration


def test_live_ready_and_metrics(daemon: DaemonProcess, tmp_path: Path) -> None:
    status, body = daemon.http("/healthz/live")
    assert status == 200 and json.loads(body)["ok"] is True
    status, body = daemon.http("/healthz/ready")
    ready = json.loads(body)
    assert status == 503 and any("no model bundle" in r for r in ready["reasons"])  # ingest-only daemon

    assert storescu(daemon.port, *write_images(tmp_path / "in", 2)).returncode == 0
    status, text = daemon.http("/metrics")
    assert status == 200
    metrics = {line.split(" ")[0]: line.split(" ")[1] for line in text.splitlines() if line and line[0] != "#"}
    assert float(metrics["cds_instances_received_total"]) == 2
    assert float(metrics['cds_instances{state="received"}']) == 2
    assert float(metrics["cds_disk_free_bytes"]) > 0
    assert 'cds_outbox_objects{state="dead"}' in metrics
    assert "cds_store_handler_seconds_bucket" in text
    assert daemon.http("/nope")[0] == 404

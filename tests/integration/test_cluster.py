"""Two daemon processes on one PostgreSQL store and one shared data directory, with Orthanc as the PACS.

Chaos (a node SIGKILLed mid-burst, several times), takeover of a dead node's claims after its lease,
a database restart while images arrive, and the once-per-cluster jobs.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pydicom
import pytest

from cds_daemon.common.manifest import read_manifest
from cds_daemon.reports.uids import derived_uid
from tests.support.dicom_files import write_images
from tests.support.postgres import PostgresServer
from tests.support.processes import DaemonProcess, OrthancProcess, storescu
from tests.support.waiting import wait_until

pytestmark = pytest.mark.integration

FAST_EGRESS = "[egress]\nretry_base_s = 0.3\nretry_max_s = 1.0\npoll_s = 0.5\ntimeout_s = 5\n"


@pytest.fixture
def node(
    make_daemon: Callable[..., DaemonProcess],
    postgres: PostgresServer,
    orthanc: OrthancProcess,
    tiny_bundle: Path,
    tmp_path: Path,
) -> Callable[[str], DaemonProcess]:
    """``node(name)``: a daemon (not started) of this test's cluster: one new database, one shared data dir."""
    url, shared = postgres.new_database(), tmp_path / "shared"

    def make(name: str) -> DaemonProcess:
        return make_daemon(
            bundle=tiny_bundle,
            destinations=[("pacs", "ORTHANC", orthanc.dicom_port)],
            extra_config=FAST_EGRESS,
            shared_data=shared,
            database_url=url,
            node_id=name,
        )

    return make


def _status(d: DaemonProcess) -> dict:
    return dict(json.loads(d.cli("status", "--json").stdout))


def _uid(path: Path) -> str:
    return str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)


def _all_delivered_once(d: DaemonProcess, pacs: OrthancProcess, uids: list[str], version: str) -> None:
    """Every acknowledged image delivered, with exactly its SR, SC and KOS in the PACS and nothing else."""

    def done() -> bool:
        s = _status(d)["instances"]
        return s["delivered"] == len(uids) and sum(s.values()) == len(uids)

    wait_until(done, 240, f"all {len(uids)} acknowledged images delivered")
    for uid in uids:
        for kind in ("sr", "sc", "kos"):
            assert pacs.instance_id(derived_uid(uid, version, kind)) is not None, (uid, kind)
    assert len(pacs.instances()) == 3 * len(uids)  # no duplicate under another UID


def _send_one_by_one(port_of: Callable[[int], int], files: list[Path], acknowledged: list[str]) -> None:
    for i, f in enumerate(files):
        if storescu(port_of(i), f).returncode == 0:
            acknowledged.append(_uid(f))


def test_chaos_a_node_killed_mid_burst_loses_and_duplicates_nothing(
    node: Callable[[str], DaemonProcess], orthanc: OrthancProcess, tiny_bundle: Path, tmp_path: Path
) -> None:
    a = node("node-a").start()
    b = node("node-b").start()
    version = read_manifest(tiny_bundle).version
    acknowledged: list[str] = []
    for burst in range(3):
        files = write_images(tmp_path / f"burst{burst}", 12, seed=4000 + 100 * burst)
        ports = (a.port, b.port)
        sender = threading.Thread(target=_send_one_by_one, args=(lambda i, p=ports: p[i % 2], files, acknowledged))
        sender.start()
        time.sleep(1.5 + burst)  # mid-burst, while images arrive and are being analysed
        a.kill()
        sender.join(120)
        a.start()
    events = [e for e in b.log_events() + a.log_events() if e["event"] == "instance_reported"]
    assert events, "both nodes analysed images"
    assert len(acknowledged) >= 24  # B always answered; A answered until it was killed
    _all_delivered_once(b, orthanc, acknowledged, version)
    nodes = {n["node_id"] for n in _status(b)["nodes"]}
    assert nodes == {"node-a", "node-b"}


def test_a_dead_nodes_claims_are_finished_by_another_after_the_lease(
    node: Callable[[str], DaemonProcess], orthanc: OrthancProcess, tiny_bundle: Path, tmp_path: Path
) -> None:
    a = node("node-a").start()
    files = write_images(tmp_path / "in", 10, seed=4500)
    assert storescu(a.port, *files).returncode == 0
    wait_until(lambda: _status(a)["instances"]["processing"] > 0, 60, "node-a holding claims")
    a.kill()
    held = next(n for n in _status(a)["nodes"] if n["node_id"] == "node-a")["claims"]
    assert held.get("instances", 0) > 0
    b = node("node-b").start()
    _all_delivered_once(b, orthanc, [_uid(f) for f in files], read_manifest(tiny_bundle).version)
    import psycopg

    assert b.database_url is not None
    with psycopg.connect(b.database_url) as conn:
        taken = conn.execute(
            "SELECT COUNT(*) FROM audit WHERE action = 'state:processing->processing' AND actor = 'worker'"
        ).fetchone()
    assert taken is not None and taken[0] >= 1  # node-b took node-a's claims over once they ran out


def test_database_restart_refuses_then_resumes(
    node: Callable[[str], DaemonProcess],
    postgres: PostgresServer,
    orthanc: OrthancProcess,
    tiny_bundle: Path,
    tmp_path: Path,
) -> None:
    a = node("node-a").start()
    before = write_images(tmp_path / "before", 3, seed=4600)
    assert storescu(a.port, *before).returncode == 0
    postgres.stop()
    try:
        during = write_images(tmp_path / "during", 1, seed=4700)
        r = storescu(a.port, *during, extra=("-v",))
        assert r.returncode != 0 and "refused: outofresources" in r.stderr.lower(), r.stderr[-500:]  # 0xA700
        assert any(e["event"] == "store_unavailable" and e["stage"] == "c-store" for e in a.log_events())
        assert a.http("/healthz/ready")[0] == 503
    finally:
        postgres.start()
    wait_until(lambda: a.http("/healthz/ready")[0] == 200, 60, "ready again once the database is back")
    after = write_images(tmp_path / "after", 3, seed=4800)
    assert storescu(a.port, *after).returncode == 0
    uids = [_uid(f) for f in before + after]
    _all_delivered_once(a, orthanc, uids, read_manifest(tiny_bundle).version)
    assert any(e["event"] == "store_unavailable" for e in a.log_events())


def test_once_per_cluster_jobs_run_on_one_node(node: Callable[[str], DaemonProcess]) -> None:
    nodes = [node(f"node-{n}").start() for n in "ab"]
    wait_until(lambda: len(_status(nodes[0])["nodes"]) == 2, 30, "both nodes registered")
    time.sleep(3)
    for job in ("retention", "worklist-escalation"):
        runs = [e for d in nodes for e in d.log_events() if e["event"] == "cluster_job" and e["name"] == job]
        assert len(runs) == 1, (job, runs)
    assert all(d.http("/healthz/ready")[0] == 200 for d in nodes)

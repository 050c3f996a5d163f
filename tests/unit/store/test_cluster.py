"""Claims with leases, takeover, once-per-cluster jobs and shared web sessions, on both backends."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from cds_daemon.store import LostClaim, PredictionRecord, Store
from tests.unit.store.test_store import _new

RECORD = PredictionRecord("m", "1", "0" * 64, "benign", [0.9, 0.05, 0.05], False, [], {}, 9)


def _fill(store: Store, n: int) -> list[str]:
    uids = [f"1.9.{i}" for i in range(1, n + 1)]
    for uid in uids:
        store.record_received(_new(uid, path=f"/{uid}"), actor="T")
    return uids


def test_nodes_claiming_at_once_get_different_images(store_target: str | Path) -> None:
    stores = [Store(store_target) for _ in range(2)]
    _fill(stores[0], 40)
    taken: dict[str, list[str]] = {"a": [], "b": []}

    def drain(node: str, store: Store) -> None:
        while (inst := store.claim_next(actor="worker", node=node, lease_s=60)) is not None:
            taken[node].append(inst.sop_instance_uid)
            store.record_result(inst.sop_instance_uid, RECORD, [], [], actor="worker", holder=node)

    threads = [threading.Thread(target=drain, args=(n, s)) for n, s in zip("ab", stores, strict=True)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sorted(taken["a"] + taken["b"]) == sorted(f"1.9.{i}" for i in range(1, 41))  # each exactly once
    assert stores[0].counts_by_state()["reported"] == 40
    for s in stores:
        s.close()


def test_an_expired_lease_is_taken_over_and_the_old_holder_cannot_report(store_target: str | Path) -> None:
    store = Store(store_target)
    (uid,) = _fill(store, 1)
    first = store.claim_next(actor="worker", node="node-a", lease_s=5)
    assert first is not None and first.claimed_by == "node-a"
    assert store.claim_next(actor="worker", node="node-b", lease_s=5) is None  # a live claim is not taken
    assert store.renew_leases("node-a", 0.001, [uid]) == 1  # as if node-a had stopped renewing it
    time.sleep(0.05)
    taken = store.claim_next(actor="worker", node="node-b", lease_s=60)
    assert taken is not None and taken.sop_instance_uid == uid and taken.claimed_by == "node-b"
    with pytest.raises(LostClaim):
        store.record_result(uid, RECORD, [], [], actor="worker", holder="node-a")
    store.record_result(uid, RECORD, [], [], actor="worker", holder="node-b")
    assert store.get_instance(uid).state == "reported"  # type: ignore[union-attr]
    assert "state:processing->processing" in [a["action"] for a in store.audit_trail(uid)]
    store.close()


def test_restart_requeues_only_this_nodes_claims(store_target: str | Path) -> None:
    store = Store(store_target)
    _fill(store, 2)
    store.claim_next(actor="w", node="node-a")
    store.claim_next(actor="w", node="node-b")
    assert store.requeue_interrupted(actor="restart", node="node-a") == 1
    assert store.counts_by_state()["processing"] == 1
    assert store.claims() == {"node-b": {"instances": 1, "outbox": 0}}
    store.close()


def test_once_per_cluster_job_runs_once_per_period(store_target: str | Path) -> None:
    a, b = Store(store_target), Store(store_target)
    ran: list[str] = []
    for node, store in (("a", a), ("b", b), ("a", a)):
        with store.cluster_job("retention", 3600, node) as mine:
            if mine:
                ran.append(node)
    expected = ["a"] if a.postgres else ["a", "b", "a"]  # SQLite: one node, the scheduler's interval decides
    assert ran == expected
    if a.postgres:
        with a.cluster_job("escalation", 3600, "a") as outer, b.cluster_job("escalation", 3600, "b") as inner:
            assert outer and not inner  # while a runs it, b does not
    a.close()
    b.close()


def test_web_sessions_are_shared_and_end(store_target: str | Path) -> None:
    from cds_daemon.common.clock import timestamp_in

    a, b = Store(store_target), Store(store_target)
    a.session_open("f" * 64, "dr.ana", timestamp_in(60))
    assert b.session_user("f" * 64) == "dr.ana"  # another node serves the same session
    a.session_open("e" * 64, "dr.ana", timestamp_in(-1))
    assert b.session_user("e" * 64) is None  # expired
    b.session_close("f" * 64)
    assert a.session_user("f" * 64) is None
    a.close()
    b.close()


def test_outbox_items_are_claimed_by_one_node(store_target: str | Path) -> None:
    from cds_daemon.store import OutputObject

    store = Store(store_target)
    (uid,) = _fill(store, 1)
    store.claim_next(actor="w", node="a")
    out = [OutputObject("sr", "1.2.3.9", "1.2.840.10008.5.1.4.1.1.88.22", "/r/1.dcm")]
    store.record_result(uid, RECORD, out, ["pacs"], actor="w", holder="a")
    first = store.due_outbox(node="a", lease_s=60)
    assert [i.object_uid for i in first] == ["1.2.3.9"]
    assert store.due_outbox(node="b", lease_s=60) == []  # a holds it while it sends
    store.mark_retry(first[0].id, "refused", timestamp_in_past())
    assert [i.object_uid for i in store.due_outbox(node="b", lease_s=60)] == ["1.2.3.9"]
    store.close()


def timestamp_in_past() -> str:
    from cds_daemon.common.clock import timestamp_in

    return timestamp_in(-1)

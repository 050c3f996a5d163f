from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from cds_daemon.review.cases import case_key
from cds_daemon.store import NewInstance, StateError, Store


def _new(uid: str, path: str = "/x") -> NewInstance:
    return NewInstance(
        sop_instance_uid=uid,
        sop_class_uid="1.2.840.10008.5.1.4.1.1.77.1.2",
        study_instance_uid="1.2.3",
        series_instance_uid="1.2.3.4",
        accession_number="A1",
        transfer_syntax_uid="1.2.840.10008.1.2.1",
        calling_ae="STORESCU",
        peer_address="127.0.0.1",
        spool_path=path,
        size_bytes=10,
        sha256="0" * 64,
        case_key=case_key(accession_number="A1", study_instance_uid="1.2.3", sop_instance_uid=uid),
    )


def test_migrations_set_version_and_wal(tmp_path: Path) -> None:
    store = Store(tmp_path / "db.sqlite3")
    assert store.schema_version >= 1
    store.close()
    db = sqlite3.connect(tmp_path / "db.sqlite3")
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    db.close()
    Store(tmp_path / "db.sqlite3").close()  # re-opening is a no-op migration


def test_runs_beside_a_newer_additive_schema_but_not_a_breaking_one(tmp_path: Path) -> None:
    """Rolling upgrades: a node may run on a schema one version ahead as long as that version says it may."""
    Store(tmp_path / "db.sqlite3").close()
    db = sqlite3.connect(tmp_path / "db.sqlite3", isolation_level=None)
    db.execute("PRAGMA user_version=999")  # a later version, whose migrations were all additive
    db.close()
    Store(tmp_path / "db.sqlite3").close()
    db = sqlite3.connect(tmp_path / "db.sqlite3", isolation_level=None)
    db.execute("UPDATE store_meta SET value = '999' WHERE key = 'min_reader'")  # a breaking one
    db.close()
    with pytest.raises(RuntimeError, match="needs software that knows schema 999"):
        Store(tmp_path / "db.sqlite3")


def test_duplicate_uid_is_one_row(store_target: str | Path) -> None:
    store = Store(store_target)
    assert store.record_received(_new("1.2.3.4.5"), actor="T") is True
    assert store.record_received(_new("1.2.3.4.5"), actor="T") is False
    assert store.counts_by_state()["received"] == 1
    actions = [a["action"] for a in store.audit_trail("1.2.3.4.5")]
    assert actions == ["received", "received-duplicate"]


def test_state_machine(store_target: str | Path) -> None:
    store = Store(store_target)
    store.record_received(_new("1.1"), actor="T")
    with pytest.raises(StateError):
        store.set_state("1.1", "delivered", actor="T")
    with pytest.raises(StateError):
        store.set_state("1.1", "bogus", actor="T")
    claimed = store.claim_next(actor="worker")
    assert claimed is not None and claimed.state == "processing" and claimed.attempts == 1
    assert store.claim_next(actor="worker") is None
    store.set_state("1.1", "reported", actor="worker")
    store.set_state("1.1", "delivered", actor="egress")
    assert store.get_instance("1.1").state == "delivered"  # type: ignore[union-attr]


def test_requeue_after_restart(store_target: str | Path) -> None:
    store = Store(store_target)
    for uid in ("1.1", "1.2", "1.3"):
        store.record_received(_new(uid, path=f"/{uid}"), actor="T")
    store.claim_next(actor="w")
    store.claim_next(actor="w")
    store.close()
    store = Store(store_target)
    assert store.requeue_interrupted(actor="restart") == 2
    assert store.counts_by_state()["received"] == 3
    assert store.known_spool_paths() == {"/1.1", "/1.2", "/1.3"}


def test_rejection_counts(store_target: str | Path) -> None:
    store = Store(store_target)
    for _ in range(2):
        store.record_rejection(
            status=0xA900, code="no_pixel_data", reason="no pixel data", calling_ae="A", peer_address="127.0.0.1"
        )
    store.record_rejection(
        status=0xC000, code="unreadable_dataset", reason="unreadable dataset: x", calling_ae="A", peer_address="1"
    )
    assert store.rejection_counts() == {"0xA900 no_pixel_data": 2, "0xC000 unreadable_dataset": 1}
    assert [r["code"] for r in store.recent_rejections()] == ["unreadable_dataset", "no_pixel_data", "no_pixel_data"]


def _referred(store: Store, uid: str, accession: str | None, priority: int) -> None:
    from dataclasses import replace

    from cds_daemon.store import PredictionRecord

    key = case_key(accession_number=accession, study_instance_uid="1.2.3", sop_instance_uid=uid)
    store.record_received(replace(_new(uid, path=f"/{uid}"), accession_number=accession, case_key=key), actor="T")
    store.claim_next(actor="w")
    record = PredictionRecord(
        "m", "1", "0" * 64, "indeterminate", [0.2, 0.6, 0.2], True, ["indeterminate_class"], {}, priority
    )
    store.record_result(uid, record, [], [], actor="w")


def test_worklist_groups_by_case_and_closes_when_all_decided(store_target: str | Path) -> None:
    store = Store(store_target)
    _referred(store, "1.1", "ACC1", 3)
    _referred(store, "1.2", "ACC1", 1)
    _referred(store, "1.3", "ACC2", 5)
    items = store.worklist()
    assert [i.case_key for i in items] == ["accession:ACC1", "accession:ACC2"]  # priority 1 first
    first = items[0]
    assert first.images == ("1.1", "1.2") and first.priority == 1 and first.reasons == ("indeterminate_class",)
    store.worklist_assign(first.id, "dr_a")
    assert store.worklist_get(first.id).status == "in_review"  # type: ignore[union-attr]
    with pytest.raises(StateError):
        store.record_decision(
            worklist_id=first.id,
            sop_instance_uid="1.3",
            reviewer="dr_a",
            decision="confirm",
            ai_class="indeterminate",
            final_class="indeterminate",
            comment=None,
            review_sr=None,
            destinations=[],
        )
    for uid, decision, final in (("1.1", "confirm", "indeterminate"), ("1.2", "change", "malignant")):
        store.record_decision(
            worklist_id=first.id,
            sop_instance_uid=uid,
            reviewer="dr_a",
            decision=decision,
            ai_class="indeterminate",
            final_class=final,
            comment=None,
            review_sr=None,
            destinations=[],
        )
    assert store.worklist_get(first.id).status == "done"  # type: ignore[union-attr]
    assert store.worklist_counts() == {"open": 1, "in_review": 0, "done": 1, "escalated": 0}
    stats = store.agreement()
    assert stats["decisions"] == 2 and stats["overrides"] == 1 and stats["override_rate"] == 0.5
    assert stats["pairs"]["indeterminate"] == {"indeterminate": 1, "malignant": 1}


def test_escalation(store_target: str | Path) -> None:
    store = Store(store_target)
    _referred(store, "2.1", None, 3)
    assert store.escalate_overdue("0000", actor="scheduler") == []
    assert store.escalate_overdue("9999", actor="scheduler") == [store.worklist()[0].id]
    assert store.worklist_counts()["escalated"] == 1


def test_retention_candidates_are_delivered_and_old(store_target: str | Path) -> None:
    store = Store(store_target)
    _referred(store, "3.1", None, 5)  # reported, not delivered
    assert store.purgeable("9999") == []
    store.set_state("3.1", "delivered", actor="egress")
    assert store.purgeable("0000") == []  # not old enough
    assert store.purgeable("9999") == [("3.1", ["/3.1"])]
    store.mark_purged("3.1", actor="retention")
    assert store.purgeable("9999") == []
    assert store.get_instance("3.1").purged_at is not None  # type: ignore[union-attr]

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

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
    )


def test_migrations_set_version_and_wal(tmp_path: Path) -> None:
    store = Store(tmp_path / "db.sqlite3")
    assert store.schema_version >= 1
    store.close()
    db = sqlite3.connect(tmp_path / "db.sqlite3")
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    db.close()
    Store(tmp_path / "db.sqlite3").close()  # re-opening is a no-op migration


def test_refuses_newer_schema(tmp_path: Path) -> None:
    Store(tmp_path / "db.sqlite3").close()
    db = sqlite3.connect(tmp_path / "db.sqlite3")
    db.execute("PRAGMA user_version=999")
    db.close()
    with pytest.raises(RuntimeError, match="newer than this software"):
        Store(tmp_path / "db.sqlite3")


def test_duplicate_uid_is_one_row(tmp_path: Path) -> None:
    store = Store(tmp_path / "db.sqlite3")
    assert store.record_received(_new("1.2.3.4.5"), actor="T") is True
    assert store.record_received(_new("1.2.3.4.5"), actor="T") is False
    assert store.counts_by_state()["received"] == 1
    actions = [a["action"] for a in store.audit_trail("1.2.3.4.5")]
    assert actions == ["received", "received-duplicate"]


def test_state_machine(tmp_path: Path) -> None:
    store = Store(tmp_path / "db.sqlite3")
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


def test_requeue_after_restart(tmp_path: Path) -> None:
    store = Store(tmp_path / "db.sqlite3")
    for uid in ("1.1", "1.2", "1.3"):
        store.record_received(_new(uid, path=f"/{uid}"), actor="T")
    store.claim_next(actor="w")
    store.claim_next(actor="w")
    store.close()
    store = Store(tmp_path / "db.sqlite3")
    assert store.requeue_interrupted(actor="restart") == 2
    assert store.counts_by_state()["received"] == 3
    assert store.known_spool_paths() == {"/1.1", "/1.2", "/1.3"}


def test_rejection_counts(tmp_path: Path) -> None:
    store = Store(tmp_path / "db.sqlite3")
    store.record_rejection(status=0xA900, reason="no pixel data", calling_ae="A", peer_address="127.0.0.1")
    store.record_rejection(status=0xA900, reason="no pixel data", calling_ae="A", peer_address="127.0.0.1")
    store.record_rejection(status=0xC000, reason="unreadable dataset: x", calling_ae="A", peer_address="1")
    assert store.rejection_counts() == {"0xA900 no pixel data": 2, "0xC000 unreadable dataset": 1}

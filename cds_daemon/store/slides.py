"""Whole slides: a slide is a series of levels (instances) that is analysed once, when it is complete.

Each level is an ``instances`` row with its slide's key. The ``slides`` row holds the quiet-period timer
(``due_at``, restarted by every level that arrives, so it survives restarts and any node may act on it).
When it runs out, one received level becomes the slide's *representative*: the worker claims it like any
image, analyses the whole slide, and records the slide's result on it. The other levels it read are
reported (and later delivered) with it; a level that arrives later makes the slide due again.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from cds_daemon.common.clock import timestamp
from cds_daemon.store.database import Session, StoreBase
from cds_daemon.store.records import Instance


@dataclass(frozen=True)
class SlideField:
    """One analysed field of a slide: its number (as in the slide SR), features and Grad-CAM (uint8 bytes)."""

    number: int
    vector: bytes | None
    cam: bytes | None
    cam_rows: int
    cam_columns: int


class SlideStore(StoreBase):
    def _release_due_slides(self, db: Session, now: str, actor: str) -> None:
        """Slides past their quiet period: choose each one's representative (its first received level)."""
        due = db.execute(
            "SELECT slide_key FROM slides WHERE due_at IS NOT NULL AND due_at <= ?" + self._skip_locked, (now,)
        ).fetchall()
        for (key,) in due:
            first = db.execute(
                "SELECT sop_instance_uid FROM instances WHERE slide_key = ? AND state = 'received' ORDER BY id LIMIT 1",
                (key,),
            ).fetchone()
            db.execute(
                "UPDATE slides SET due_at = NULL, representative = COALESCE(?, representative), updated_at = ?"
                " WHERE slide_key = ?",
                (None if first is None else first[0], now, key),
            )
            if first is not None:
                self._audit(db, actor, "slide-complete", first[0], {"slide_key": key})

    def slide_parts(self, slide_key: str) -> list[Instance]:
        """Every level of a slide received so far, oldest first."""
        with self._lock:
            rows = self._db.execute("SELECT * FROM instances WHERE slide_key = ? ORDER BY id", (slide_key,)).fetchall()
        return [Instance(**dict(r)) for r in rows]

    def slides_waiting(self) -> int:
        """Slides still in their quiet period (``status`` and health show it)."""
        with self._lock:
            return int(self._db.execute("SELECT COUNT(*) FROM slides WHERE due_at IS NOT NULL").fetchone()[0])

    def _complete_parts(self, db: Session, parts: list[str], new_state: str, representative: str, actor: str) -> None:
        """The levels the representative's analysis read end with it (``received -> reported|failed``)."""
        now = timestamp()
        for uid in parts:
            cur = db.execute(
                "UPDATE instances SET state = ?, state_reason = ?, updated_at = ? WHERE sop_instance_uid = ?"
                " AND state = 'received' AND slide_key IS NOT NULL",
                (new_state, f"level of the slide analysed as {representative}", now, uid),
            )
            if cur.rowcount:
                self._audit(db, actor, f"state:received->{new_state}", uid, f"slide level of {representative}")

    def _deliver_parts(self, db: Session, representative: str, actor: str) -> None:
        """The representative's objects are all delivered: so are its slide's reported levels."""
        row = db.execute("SELECT slide_key FROM instances WHERE sop_instance_uid = ?", (representative,)).fetchone()
        if row is None or row[0] is None:
            return
        now = timestamp()
        parts = db.execute(
            "SELECT sop_instance_uid FROM instances i WHERE slide_key = ? AND state = 'reported'"
            " AND sop_instance_uid != ? AND NOT EXISTS (SELECT 1 FROM outbox o"
            " WHERE o.sop_instance_uid = i.sop_instance_uid)",
            (row[0], representative),
        ).fetchall()
        for (uid,) in parts:
            db.execute(
                "UPDATE instances SET state = 'delivered', updated_at = ? WHERE sop_instance_uid = ?", (now, uid)
            )
            self._audit(db, actor, "state:reported->delivered", uid, f"slide level of {representative}")

    @staticmethod
    def _save_slide_fields(db: Session, uid: str, model_sha256: str, fields: Sequence[SlideField]) -> None:
        db.execute("DELETE FROM slide_fields WHERE sop_instance_uid = ?", (uid,))
        for f in fields:
            db.execute(
                "INSERT INTO slide_fields (sop_instance_uid, field_number, model_sha256, vector, cam, cam_rows,"
                " cam_columns) VALUES (?,?,?,?,?,?,?)",
                (uid, f.number, model_sha256, f.vector, f.cam, f.cam_rows, f.cam_columns),
            )

    def slide_fields(self, sop_instance_uid: str) -> list[SlideField]:
        """The analysed fields of the slide that ``sop_instance_uid`` represents, by number."""
        with self._lock:
            rows = self._db.execute(
                "SELECT field_number, vector, cam, cam_rows, cam_columns FROM slide_fields"
                " WHERE sop_instance_uid = ? ORDER BY field_number",
                (sop_instance_uid,),
            ).fetchall()
        return [
            SlideField(
                int(r[0]),
                None if r[1] is None else bytes(r[1]),
                None if r[2] is None else bytes(r[2]),
                int(r[3]),
                int(r[4]),
            )
            for r in rows
        ]

    def slide_of_series(self, series_instance_uid: str) -> tuple[str, list[Instance]] | None:
        """(representative, levels) of the analysed slide in this series; None when there is none."""
        with self._lock:
            row = self._db.execute(
                "SELECT s.slide_key, s.representative FROM slides s JOIN instances i ON i.slide_key = s.slide_key"
                " WHERE i.series_instance_uid = ? AND s.representative IS NOT NULL ORDER BY s.updated_at DESC LIMIT 1",
                (series_instance_uid,),
            ).fetchone()
        if row is None:
            return None
        return str(row[1]), self.slide_parts(str(row[0]))

    @staticmethod
    def _diagnostic_example(db: Session, uid: str, number: int) -> None:
        """The slide's features become its diagnostic field's: what similar cases compare with."""
        db.execute(
            "UPDATE embeddings SET vector = (SELECT f.vector FROM slide_fields f WHERE f.sop_instance_uid = ?"
            " AND f.field_number = ?) WHERE sop_instance_uid = ? AND EXISTS (SELECT 1 FROM slide_fields f"
            " WHERE f.sop_instance_uid = ? AND f.field_number = ? AND f.vector IS NOT NULL)",
            (uid, number, uid, uid, number),
        )

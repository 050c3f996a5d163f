"""Features of analysed images, and the reviewer-confirmed ones among them: the index of similar cases."""

from __future__ import annotations

from dataclasses import dataclass

from cds_daemon.store.database import Session, StoreBase


@dataclass(frozen=True)
class Confirmed:
    """An image whose category a reviewer confirmed or corrected: its latest decision and its features."""

    sop_instance_uid: str
    case_key: str
    final_class: str
    reviewer: str
    decided_at: str
    vector: bytes
    diagnostic_field: int | None = None  # a slide's: the field its reviewer marked (its features stand for it)


class SimilarStore(StoreBase):
    @staticmethod
    def _save_embedding(db: Session, uid: str, model_sha256: str, vector: bytes) -> None:
        db.execute(
            "INSERT INTO embeddings (sop_instance_uid, model_sha256, vector) VALUES (?,?,?)"
            " ON CONFLICT (sop_instance_uid) DO UPDATE SET model_sha256 = excluded.model_sha256,"
            " vector = excluded.vector",
            (uid, model_sha256, vector),
        )

    def embedding(self, sop_instance_uid: str) -> tuple[str, bytes] | None:
        """(model hash, float32 bytes) of an analysed image."""
        with self._lock:
            row = self._db.execute(
                "SELECT model_sha256, vector FROM embeddings WHERE sop_instance_uid = ?", (sop_instance_uid,)
            ).fetchone()
        return None if row is None else (str(row[0]), bytes(row[1]))

    def confirmed_version(self) -> int:
        """Changes whenever a decision is recorded: the similar-case index reloads when it moves."""
        with self._lock:
            row = self._db.execute("SELECT COALESCE(MAX(id), 0) FROM decisions").fetchone()
        return int(row[0])

    def confirmed(self, model_sha256: str) -> list[Confirmed]:
        """Images with a reviewer's category (confirm or change; their latest decision) and features of this model."""
        with self._lock:
            rows = self._db.execute(
                "SELECT d.sop_instance_uid, i.case_key, d.final_class, d.reviewer, d.decided_at, e.vector,"
                " d.diagnostic_field"
                " FROM decisions d JOIN embeddings e ON e.sop_instance_uid = d.sop_instance_uid"
                " JOIN instances i ON i.sop_instance_uid = d.sop_instance_uid"
                " WHERE e.model_sha256 = ? AND d.final_class IS NOT NULL AND d.id = (SELECT MAX(d2.id)"
                " FROM decisions d2 WHERE d2.sop_instance_uid = d.sop_instance_uid) ORDER BY d.id",
                (model_sha256,),
            ).fetchall()
        return [
            Confirmed(
                str(r[0]),
                str(r[1] or ""),
                str(r[2]),
                str(r[3]),
                str(r[4]),
                bytes(r[5]),
                None if r[6] is None else int(r[6]),
            )
            for r in rows
        ]

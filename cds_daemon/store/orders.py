"""Orders from the laboratory information system (HL7 OML^O21): what a result's accession, specimen or
container was ordered as, so the result carries the LIS's own order numbers."""

from __future__ import annotations

from dataclasses import dataclass

from cds_daemon.common.clock import timestamp
from cds_daemon.store.database import StoreBase


@dataclass(frozen=True)
class Order:
    placer_order: str
    filler_order: str
    accession_number: str | None
    specimen_id: str | None
    container_id: str | None
    ordering_provider: str | None
    control_id: str


class OrderStore(StoreBase):
    def record_order(self, order: Order, *, actor: str) -> bool:
        """Register (or update: same placer and filler numbers) an order; True when it is new."""
        with self._tx() as db:
            existing = db.execute(
                "SELECT id FROM orders WHERE placer_order = ? AND filler_order = ?",
                (order.placer_order, order.filler_order),
            ).fetchone()
            values = (
                order.accession_number,
                order.specimen_id,
                order.container_id,
                order.ordering_provider,
                order.control_id,
                timestamp(),
            )
            if existing is None:
                db.execute(
                    "INSERT INTO orders (accession_number, specimen_id, container_id, ordering_provider, control_id,"
                    " received_at, placer_order, filler_order) VALUES (?,?,?,?,?,?,?,?)",
                    (*values, order.placer_order, order.filler_order),
                )
            else:
                db.execute(
                    "UPDATE orders SET accession_number = ?, specimen_id = ?, container_id = ?, ordering_provider = ?,"
                    " control_id = ?, received_at = ? WHERE id = ?",
                    (*values, existing[0]),
                )
            self._audit(
                db, actor, "order:new" if existing is None else "order:update", None, {"control_id": order.control_id}
            )
            return existing is None

    def order_for(self, accession: str | None, specimen: str | None, container: str | None) -> Order | None:
        """The latest order for this specimen, else container, else accession (the most specific match)."""
        with self._lock:
            for column, value in (
                ("specimen_id", specimen),
                ("container_id", container),
                ("accession_number", accession),
            ):
                if not value:
                    continue
                row = self._db.execute(
                    "SELECT placer_order, filler_order, accession_number, specimen_id, container_id,"
                    f" ordering_provider, control_id FROM orders WHERE {column} = ? ORDER BY id DESC LIMIT 1",
                    (value,),
                ).fetchone()
                if row is not None:
                    return Order(*(r if r is None else str(r) for r in row))  # type: ignore[arg-type]
        return None

"""The nodes that share this store: their heartbeats (``cds-daemon status`` shows them with their claims)."""

from __future__ import annotations

from typing import Any

from cds_daemon.common.clock import timestamp
from cds_daemon.store.database import StoreBase


class ClusterStore(StoreBase):
    def node_heartbeat(
        self, node_id: str, host: str, pid: int, version: str, started_at: str, runtime: str | None = None
    ) -> None:
        """``runtime``: how this node runs the model (runtime, threads chosen, cores), for ``status``."""
        with self._tx() as db:
            db.execute(
                "INSERT INTO nodes (node_id, host, pid, version, started_at, last_seen, runtime)"
                " VALUES (?,?,?,?,?,?,?) ON CONFLICT (node_id) DO UPDATE SET host = excluded.host,"
                " pid = excluded.pid, version = excluded.version, started_at = excluded.started_at,"
                " last_seen = excluded.last_seen, runtime = excluded.runtime",
                (node_id, host, pid, version, started_at, timestamp(), runtime),
            )

    def nodes(self) -> list[dict[str, Any]]:
        with self._lock:
            rows = self._db.execute("SELECT * FROM nodes ORDER BY node_id").fetchall()
        return [dict(r) for r in rows]

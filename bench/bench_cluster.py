"""Several nodes on one PostgreSQL store: throughput of 1 node against 2, and what a claim costs.

    .venv/bin/python bench/bench_cluster.py [--bundle DIR] [--n 60] [--claims 300]

1. Per claim, store only: record_received + claim_next + record_result (the queue's round trip for one
   image) on SQLite and on PostgreSQL (loopback, fsync on), ms per image, in the same run.
2. Daemon processes with a tiny bundle: ``--n`` images sent (storescu) to one node, then split between
   two nodes on one PostgreSQL database and one data directory; images/s until all are reported.
Needs Debian's PostgreSQL 15 (started here in a temporary directory). Prints figures.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cds_daemon.store import PredictionRecord, Store
from tests.support.dicom_files import write_images
from tests.support.postgres import PostgresServer
from tests.support.processes import DaemonProcess, storescu
from tests.unit.store.test_store import _new

RECORD = PredictionRecord("m", "1", "0" * 64, "benign", [0.9, 0.05, 0.05], False, [], {}, 9)


def per_claim_ms(target: str | Path, n: int) -> float:
    store = Store(target)
    t0 = time.perf_counter()
    for i in range(n):
        uid = f"1.8.{i + 1}"
        store.record_received(_new(uid, path=f"/{uid}"), actor="bench")
        inst = store.claim_next(actor="worker", node="bench", lease_s=60)
        assert inst is not None
        store.record_result(inst.sop_instance_uid, RECORD, [], [], actor="worker", holder="bench")
    elapsed = time.perf_counter() - t0
    store.close()
    return elapsed / n * 1000


def _reported(target: str) -> int:
    import psycopg

    with psycopg.connect(target) as conn:
        row = conn.execute("SELECT COUNT(*) FROM instances WHERE state IN ('reported', 'delivered')").fetchone()
    return int(row[0]) if row else 0


def nodes_rate(pg: PostgresServer, bundle: Path, files: list[Path], root: Path, nodes: int) -> float:
    url, shared = pg.new_database(), root / f"shared{nodes}"
    daemons = [
        DaemonProcess(
            workdir=root / f"n{nodes}-{i}", bundle=bundle, shared_data=shared, database_url=url, node_id=f"node-{i}"
        ).start()
        for i in range(nodes)
    ]
    try:
        time.sleep(2)
        t0 = time.perf_counter()
        senders = [threading.Thread(target=storescu, args=(d.port, *files[i::nodes])) for i, d in enumerate(daemons)]
        for s in senders:
            s.start()
        for s in senders:
            s.join()
        while _reported(url) < len(files):
            if time.perf_counter() - t0 > 900:
                raise TimeoutError("not all images were reported")
            time.sleep(0.1)
        return len(files) / (time.perf_counter() - t0)
    finally:
        for d in daemons:
            d.stop()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bundle", type=Path)
    ap.add_argument("--n", type=int, default=60)
    ap.add_argument("--claims", type=int, default=300)
    args = ap.parse_args()
    pg = PostgresServer().start()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            root = Path(tmp)
            sqlite_ms = per_claim_ms(root / "claims.sqlite3", args.claims)
            pg_ms = per_claim_ms(pg.new_database(), args.claims)
            print(f"per image, store only (received + claim + result, {args.claims} images, fsync on):")
            print(f"  SQLite {sqlite_ms:.2f} ms; PostgreSQL {pg_ms:.2f} ms ({pg_ms / sqlite_ms:.2f}x)")
            bundle = args.bundle
            if bundle is None:
                from model_build.demo import make_tiny_bundle

                bundle = make_tiny_bundle(root / "bundle")
            files = write_images(root / "in", args.n, seed=7000)
            one = nodes_rate(pg, bundle, files, root, 1)
            two = nodes_rate(pg, bundle, files, root, 2)
            print(f"daemons on one PostgreSQL, {args.n} images, {os.cpu_count()} CPUs:")
            print(f"  1 node {one:.2f} images/s; 2 nodes {two:.2f} images/s ({two / one:.2f}x)")
    finally:
        pg.remove()


if __name__ == "__main__":
    main()

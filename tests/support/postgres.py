"""Debian's PostgreSQL 15, started for the tests: ``initdb`` and ``pg_ctl`` in a temporary directory, on a
loopback port, as an unprivileged user (``postgres`` when the tests run as root: initdb refuses root)."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from tests.support.processes import free_port, wait_for_port

PG_BIN = Path("/usr/lib/postgresql/15/bin")
USER = "cds"


def available() -> bool:
    return (PG_BIN / "initdb").exists()


def _as_owner(cmd: list[str]) -> list[str]:
    if os.geteuid() != 0:
        return cmd
    return ["runuser", "-u", "postgres", "--", *cmd]


@dataclass
class PostgresServer:
    """One server for the whole test session; each test gets a database of its own (:meth:`new_database`)."""

    root: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="cds-pg-")))
    port: int = field(default_factory=free_port)

    @property
    def data(self) -> Path:
        return self.root / "data"

    def start(self) -> PostgresServer:
        if os.geteuid() == 0:
            shutil.chown(self.root, "postgres", "postgres")
        if not self.data.exists():
            subprocess.run(
                _as_owner([str(PG_BIN / "initdb"), "-D", str(self.data), "-U", USER, "-A", "trust", "-E", "UTF8"]),
                check=True,
                capture_output=True,
                timeout=120,
            )
        self._pg_ctl(
            "start",
            "-w",
            "-l",
            str(self.root / "server.log"),
            "-o",
            f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c max_connections=200",
        )
        wait_for_port(self.port)
        return self

    def stop(self, mode: str = "fast") -> None:
        self._pg_ctl("stop", "-w", "-m", mode)

    def restart(self) -> None:
        self.stop()
        self.start()

    def _pg_ctl(self, *args: str) -> None:
        cmd = _as_owner([str(PG_BIN / "pg_ctl"), "-D", str(self.data), *args])
        subprocess.run(cmd, check=True, capture_output=True, timeout=120)

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://{USER}@127.0.0.1:{self.port}/{database}"

    def new_database(self) -> str:
        """A fresh, empty database; its URL."""
        import psycopg

        name = f"t_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name}")
        return self.url(name)

    def remove(self) -> None:
        try:
            self.stop("immediate")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)

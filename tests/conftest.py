from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from dicom_fixtures.identity import FAKE_NAME_PREFIX, FAKE_PATIENT_ID_RE
from tests.support.postgres import PostgresServer
from tests.support.postgres import available as postgres_available
from tests.support.processes import DaemonProcess, OrthancProcess


@pytest.fixture
def make_daemon(tmp_path: Path) -> Iterator[Callable[..., DaemonProcess]]:
    """Factory: ``make_daemon(**fields).start()``; every daemon is killed at teardown."""
    made: list[DaemonProcess] = []

    def factory(**kwargs: object) -> DaemonProcess:
        d = DaemonProcess(workdir=tmp_path / f"daemon{len(made)}", **kwargs)  # type: ignore[arg-type]
        made.append(d)
        return d

    yield factory
    for d in made:
        if d.proc is not None and d.proc.poll() is None:
            d.kill()
    for d in made:
        assert_no_patient_identifiers(d.log_path)


def assert_no_patient_identifiers(log_path: Path) -> None:
    """Privacy: no fixture patient name or ID in any line the daemon logged."""
    if not log_path.exists():
        return
    for number, line in enumerate(log_path.read_text(errors="replace").splitlines(), 1):
        leaked = FAKE_NAME_PREFIX in line or FAKE_PATIENT_ID_RE.search(line)
        assert not leaked, f"{log_path}:{number} logs a patient identifier: {line[:300]}"


@pytest.fixture
def daemon(make_daemon: Callable[..., DaemonProcess]) -> DaemonProcess:
    return make_daemon().start()


@pytest.fixture
def orthanc(tmp_path: Path) -> Iterator[OrthancProcess]:
    pacs = OrthancProcess(workdir=tmp_path / "orthanc").start()
    yield pacs
    pacs.stop()


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A genuinely trained (barely) ThyroidEffi bundle, built once per test session."""
    from model_build.demo import make_tiny_bundle

    return make_tiny_bundle(tmp_path_factory.mktemp("bundle") / "tiny")


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    """Debian's PostgreSQL 15 in a temporary directory on a loopback port, for the whole session."""
    if not postgres_available():
        pytest.fail("PostgreSQL 15 is not installed (bash deploy/setup.sh installs postgresql-15)")
    server = PostgresServer().start()
    yield server
    server.remove()


@pytest.fixture(params=["sqlite", "postgresql"])
def store_target(request: pytest.FixtureRequest, tmp_path: Path) -> str | Path:
    """Where a store lives, once per backend: an SQLite file, or a fresh PostgreSQL database."""
    if request.param == "sqlite":
        return tmp_path / "db.sqlite3"
    server: PostgresServer = request.getfixturevalue("postgres")
    return server.new_database()

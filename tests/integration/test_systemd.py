"""The unit file passes systemd-analyze verify and keeps a low security exposure."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

UNIT = Path(__file__).resolve().parents[2] / "systemd" / "thyroid-cds.service"
pytestmark = pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")


def _local_unit(tmp_path: Path) -> Path:
    """The unit with its ExecStart pointing at this venv's cds-daemon (verify checks the binary exists)."""
    daemon = Path(sys.executable).with_name("cds-daemon")
    unit = tmp_path / UNIT.name
    unit.write_text(UNIT.read_text().replace("/opt/thyroid-cds/venv/bin/cds-daemon", str(daemon)))
    return unit


def test_unit_verifies(tmp_path: Path) -> None:
    r = subprocess.run(["systemd-analyze", "verify", str(_local_unit(tmp_path))], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_security_exposure_is_low(tmp_path: Path) -> None:
    r = subprocess.run(
        ["systemd-analyze", "security", "--offline=true", str(_local_unit(tmp_path))], capture_output=True, text=True
    )
    m = re.search(r"Overall exposure level for \S+: ([0-9.]+)", r.stdout)
    assert m, r.stdout[-500:] + r.stderr
    assert float(m.group(1)) <= 2.0


def test_unit_is_hardened_as_specified() -> None:
    text = UNIT.read_text()
    for line in (
        "Type=notify",
        "WatchdogSec=",
        "Restart=on-failure",
        "ProtectSystem=strict",
        "ProtectHome=yes",
        "PrivateTmp=yes",
        "NoNewPrivileges=yes",
        "CapabilityBoundingSet=\n",
        "RestrictAddressFamilies=",
        "SystemCallFilter=@system-service",
        "ReadWritePaths=/var/lib/thyroid-cds",
    ):
        assert line in text, line

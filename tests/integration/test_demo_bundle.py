"""The demo's bundle: what ``model_build demo-bundle`` writes is what demo.sh and the daemon load."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from tests.support.processes import REPO

DEMO = REPO / "deploy" / "demo.sh"


def _run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *args], capture_output=True, text=True, cwd=REPO, env={**os.environ, **(env or {})}
    )


def test_demo_bundle_command_writes_the_bundle_the_daemon_checks(tmp_path: Path) -> None:
    bundle = tmp_path / "var" / "demo-bundle-tiny"
    built = _run("-m", "model_build", "demo-bundle", str(bundle), "--tiny")
    assert built.returncode == 0, built.stderr
    assert (bundle / "manifest.json").is_file()
    assert not any(p.name.startswith(".") for p in bundle.parent.iterdir()), "no staging folder is left behind"
    check = _run("-m", "cds_daemon", "check", "--offline", env={"CDS_MODEL_BUNDLE": str(bundle)})
    assert check.returncode == 0, check.stdout + check.stderr
    assert "PASS  model_bundle" in check.stdout

    manifest = (bundle / "manifest.json").read_bytes()
    again = _run("-m", "model_build", "demo-bundle", str(bundle), "--tiny")
    assert again.returncode == 0, again.stderr
    assert (bundle / "manifest.json").read_bytes() == manifest, "a second run reuses the bundle"
    assert not (bundle / "bundle").exists()


def test_demo_script_builds_and_loads_the_same_path() -> None:
    script = DEMO.read_text()
    built = re.search(r'model_build demo-bundle "\$BUNDLE"', script)
    loaded = re.search(r"export CDS_MODEL_BUNDLE=\$BUNDLE\n", script)
    assert built and loaded, "demo.sh must build the bundle at $BUNDLE and point the daemon at $BUNDLE"
    assert set(re.findall(r"BUNDLE=(var/[\w-]+)", script)) == {"var/demo-bundle", "var/demo-bundle-tiny"}

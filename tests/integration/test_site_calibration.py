"""Going live on a site's own cases, with real daemon processes: shadow mode refers everything, the reviews
fill the pool, an admin certifies and activates a rule, the running daemon (and a second node) finalises
with it, injected audit errors send it back to shadow, and a new bundle starts in shadow again.

The rule is certified at alpha 0.2, delta 0.2 (8 error-free candidates suffice) so that a test can review
enough images; the triage switches that would refer a barely trained bundle's fields for other reasons are
off, so that the fields are candidates. The arithmetic at clinical alpha is tested in tests/unit.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pydicom
import pytest

from cds_daemon.store import Store
from tests.support.dicom_files import write_images
from tests.support.postgres import PostgresServer
from tests.support.processes import DaemonProcess, storescu
from tests.support.waiting import wait_until

pytestmark = pytest.mark.integration

CONFIG = """
[triage]
risk_alpha = 0.2
risk_delta = 0.2
refer_conformal_not_singleton = false
refer_ensemble_disagreement = false
refer_ood = false
refer_indeterminate = false
[audit]
initial_rate = 1.0
min_audited = 3
[worklist]
monitor_minutes = 0.02
"""
ADMIN_PW, REVIEWER_PW = "an admin's long password\n", "a reviewer's long password\n"


def _ok(proc: object) -> str:
    assert getattr(proc, "returncode", 1) == 0, getattr(proc, "stderr", "")
    return str(getattr(proc, "stdout", ""))


def _users(d: DaemonProcess) -> str:
    """An admin and a reviewer; the reviewer's CLI token."""
    _ok(d.cli("user", "add", "boss", "--role", "admin", "--password-stdin", stdin=ADMIN_PW))
    _ok(d.cli("user", "add", "dr.jo", "--full-name", "Doe, Jo", "--password-stdin", stdin=REVIEWER_PW))
    return _ok(d.cli("user", "token", "dr.jo", "--password-stdin", stdin=REVIEWER_PW)).strip()


def _send(d: DaemonProcess, files: list[Path]) -> list[str]:
    assert storescu(d.port, *files).returncode == 0
    uids = [str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID) for f in files]
    store = Store(d.data_dir / "cds.sqlite3") if d.database_url is None else Store(d.database_url)
    try:
        wait_until(lambda: all(store.get_prediction(u) is not None for u in uids), 180, "the images analysed")
        return uids
    finally:
        store.close()


def _predictions(d: DaemonProcess, uids: list[str]) -> list:
    store = Store(d.data_dir / "cds.sqlite3") if d.database_url is None else Store(d.database_url)
    try:
        return [store.get_prediction(u) for u in uids]
    finally:
        store.close()


def _decide_all(d: DaemonProcess, token: str, *, change: bool = False) -> int:
    """Decide every open case from the CLI: confirm the AI, or (``change``) call every image another class."""
    items = json.loads(_ok(d.cli("worklist", "list", "--json")))["items"]
    for item in items:
        args = ["worklist", "decide", "--item", str(item["id"]), "--reviewer", "dr.jo", "--token", token]
        if change:
            shown = json.loads(_ok(d.cli("worklist", "show", str(item["id"]), "--json")))
            ai = {img["predicted"] for img in shown["image_details"]}
            other = "malignant" if "malignant" not in ai else "benign"
            args += ["--decision", "change", "--class", other]
        else:
            args += ["--decision", "confirm"]
        _ok(d.cli(*args))
    return len(items)


def _triage(d: DaemonProcess) -> dict:
    _, body = d.http("/healthz/ready")
    return dict(json.loads(body)["triage"])


def _certify_and_activate(d: DaemonProcess) -> int:
    certified = json.loads(
        _ok(d.cli("calibration", "certify", "--admin", "boss", "--password-stdin", "--json", stdin=ADMIN_PW))
    )
    assert certified["active"] is False and certified["threshold"] is not None and certified["alpha"] == 0.2
    rule_id = int(certified["id"])
    _ok(d.cli("calibration", "activate", str(rule_id), "--admin", "boss", "--password-stdin", stdin=ADMIN_PW))
    return rule_id


def test_shadow_certify_live_fallback_and_a_new_bundle(
    make_daemon: Callable[..., DaemonProcess], tiny_bundle: Path, tmp_path: Path
) -> None:
    d = make_daemon(bundle=tiny_bundle, triage_mode="live", extra_config=CONFIG).start()
    token = _users(d)
    assert _triage(d)["mode"] == "shadow" and "no site rule is active" in _triage(d)["why"]
    _, body = d.http("/healthz/ready")
    assert "1 model thread(s) (set), helper process on another core" in json.loads(body)["runtime"]
    assert "  model: onnxruntime " in _ok(d.cli("status"))
    check = d.cli("check", "--offline")
    assert "WARN  triage: live mode, but no site rule is active" in check.stdout

    # Shadow: every image is referred, with its own reason, and every review enters the pool.
    shadow = _send(d, write_images(tmp_path / "shadow", 10, seed=300, label="benign"))
    for p in _predictions(d, shadow):
        assert p.referred and "site_validation" in p.reasons and p.triage_mode == "shadow"
    assert _decide_all(d, token) == 10
    status = json.loads(_ok(d.cli("calibration", "status", "--json")))
    assert status["pool"]["size"] == 10 and status["mode"] == "shadow"

    # Certify and activate need an admin who proves it: a wrong password, or a reviewer, changes nothing.
    wrong = d.cli("calibration", "certify", "--admin", "boss", "--password-stdin", stdin="guess\n")
    assert wrong.returncode == 1 and "password is wrong" in wrong.stderr
    reviewer = d.cli("calibration", "certify", "--admin", "dr.jo", "--token", token)
    assert reviewer.returncode == 1 and "not an admin" in reviewer.stderr
    assert json.loads(_ok(d.cli("calibration", "status", "--json")))["rules"] == []
    rule_id = _certify_and_activate(d)

    # The running daemon finalises with it from the next image on, and its SR names the rule.
    wait_until(lambda: _triage(d)["mode"] == "live", 10, "live mode on the health endpoint")
    live = _send(d, write_images(tmp_path / "live", 4, seed=400, label="benign"))
    predictions = _predictions(d, live)
    assert all(not p.referred and p.triage_mode == "live" and p.rule_id == rule_id for p in predictions)
    sr_uid = predictions[0].detail["objects"]["sr"]
    (sr_file,) = list((d.data_dir / "results").rglob(f"{sr_uid}.dcm"))
    assert f"site rule {rule_id} (bundle" in sr_file.read_bytes().decode("latin-1")
    assert json.loads(_ok(d.cli("calibration", "status", "--json")))["pool"]["size"] == 10  # live: not pooled

    # Every finalised image was audited (initial_rate 1.0): reviewers disagree with all of them.
    assert _decide_all(d, token, change=True) == 4
    wait_until(lambda: _triage(d)["mode"] == "shadow", 30, "the fail-safe's return to shadow mode")
    assert "withdrawn by the fail-safe" in _triage(d)["why"]
    assert any(e["event"] == "triage_fallback" and e["rule_id"] == rule_id for e in d.log_events())
    _, metrics = d.http("/metrics")
    assert "cds_triage_fallbacks_total 1.0" in metrics
    (after,) = _predictions(d, _send(d, write_images(tmp_path / "after", 1, seed=500)))
    assert after.referred and "site_validation" in after.reasons
    assert "fail-safe" in _ok(d.cli("status"))

    # A new bundle (another hash) has no rule: shadow until it is certified on its own pool.
    d.stop()
    other = tmp_path / "bundle-b"
    shutil.copytree(tiny_bundle, other)
    manifest = json.loads((other / "manifest.json").read_text())
    manifest["version"] += "+site-b"
    (other / "manifest.json").write_text(json.dumps(manifest))
    d.bundle = other
    d.start()
    assert _triage(d)["mode"] == "shadow" and "until one is certified" in _triage(d)["why"]
    assert json.loads(_ok(d.cli("calibration", "status", "--json")))["pool"]["size"] == 0


def test_an_activation_on_one_node_applies_on_the_other(
    make_daemon: Callable[..., DaemonProcess], postgres: PostgresServer, tiny_bundle: Path, tmp_path: Path
) -> None:
    url, shared = postgres.new_database(), tmp_path / "shared"
    a, b = (
        make_daemon(
            bundle=tiny_bundle, triage_mode="live", extra_config=CONFIG, shared_data=shared, database_url=url,
            node_id=name,
        ).start()
        for name in ("node-a", "node-b")
    )  # fmt: skip
    token = _users(a)
    _send(a, write_images(tmp_path / "shadow", 10, seed=600, label="malignant"))
    assert _decide_all(a, token) == 10
    rule_id = _certify_and_activate(a)
    wait_until(lambda: _triage(b)["mode"] == "live", 10, "node b in live mode")
    (p,) = _predictions(b, _send(b, write_images(tmp_path / "on-b", 1, seed=700, label="malignant")))
    assert not p.referred and p.rule_id == rule_id

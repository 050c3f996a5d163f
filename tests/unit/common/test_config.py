from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from cds_daemon.common.config import ConfigError, load_settings
from tests.support.processes import REPO


def test_embedded_defaults_are_valid() -> None:
    s = load_settings(None)
    assert s.listener.ae_title == "THYROID_CDS"
    assert s.listener.max_pdu_size == 131072
    assert s.destinations[0].ae_title == "ORTHANC"


def test_toml_then_environment_override(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text('[listener]\nport = 2000\nae_title = "FROM_FILE"\n[storage]\ndata_dir = "/tmp/x"\n')
    monkeypatch.setenv("CDS_LISTENER__PORT", "3000")
    s = load_settings(cfg)
    assert s.listener.port == 3000
    assert s.listener.ae_title == "FROM_FILE"
    assert s.storage.data_dir == Path("/tmp/x")


def test_config_path_from_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text("worker_threads = 1\n")
    monkeypatch.setenv("CDS_CONFIG", str(cfg))
    assert load_settings().worker_threads == 1


@pytest.mark.parametrize(
    ("text", "field"),
    [
        ("[listener]\nport = 70000\n", "listener.port"),
        ('[listener]\nae_title = "MUCH_TOO_LONG_AE_TITLE"\n', "listener.ae_title"),
        (
            '[[listener.allowed_callers]]\nae_title = "X"\naddresses = ["not-an-ip"]\n',
            "listener.allowed_callers.0",
        ),
        ("[listener]\nprot = 1\n", "listener.prot"),
        ("[listener.tls]\nenabled = true\n", "listener.tls"),
        (
            '[listener.tls]\nenabled = true\ncert_file = "s.crt"\nkey_file = "s.key"\n',  # mutual TLS, no CA
            "listener.tls",
        ),
        (
            '[[destinations]]\nname = "p"\nae_title = "P"\nhost = "h"\nport = 1\n[destinations.tls]\nenabled = true\n',
            "destinations.0.tls",
        ),
        (
            '[[destinations]]\nname = "p"\nae_title = "P"\nhost = "h"\nport = 1\n'
            '[destinations.tls]\nenabled = true\nca_file = "ca.crt"\ncert_file = "c.crt"\n',
            "destinations.0.tls",
        ),
        ("worker_threads = -1\n", "worker_threads"),
    ],
)
def test_invalid_value_names_the_field(tmp_path: Path, text: str, field: str) -> None:
    cfg = tmp_path / "bad.toml"
    cfg.write_text(text)
    with pytest.raises(ConfigError) as exc:
        load_settings(cfg)
    assert field in str(exc.value)


def test_unparseable_and_missing_files(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[listener\n")
    with pytest.raises(ConfigError, match="cannot read"):
        load_settings(bad)
    with pytest.raises(ConfigError, match="not found"):
        load_settings(tmp_path / "nope.toml")


def test_cli_exits_2_with_field_name_on_bad_config(tmp_path: Path) -> None:
    cfg = tmp_path / "bad.toml"
    cfg.write_text("[listener]\nport = -1\n")
    r = subprocess.run(
        [sys.executable, "-m", "cds_daemon", "--config", str(cfg), "serve"], capture_output=True, text=True
    )
    assert r.returncode == 2
    assert "listener.port" in r.stderr


def test_example_config_is_valid() -> None:
    example = REPO / "deploy" / "config.example.toml"
    s = load_settings(example)
    assert s.listener.allowed_callers


def test_two_node_example_is_valid() -> None:
    s = load_settings(REPO / "deploy" / "cluster" / "node-a.toml")
    assert s.node_id == "cds-a" and str(s.storage.database).startswith("postgresql://")
    assert s.spool_node == "cds-a"


def test_tls_settings_that_are_valid(tmp_path: Path) -> None:
    cfg = tmp_path / "tls.toml"
    cfg.write_text(
        "[listener.tls]\n"
        'enabled = true\ncert_file = "s.crt"\nkey_file = "s.key"\nrequire_peer_cert = false\n'
        '[[destinations]]\nname = "verified"\nae_title = "P"\nhost = "h"\nport = 1\n'
        '[destinations.tls]\nenabled = true\nca_file = "ca.crt"\n'
        '[[destinations]]\nname = "mutual"\nae_title = "P"\nhost = "h"\nport = 1\n'
        '[destinations.tls]\nenabled = true\nca_file = "ca.crt"\ncert_file = "c.crt"\nkey_file = "c.key"\n'
    )
    s = load_settings(cfg)
    assert s.listener.tls.enabled and not s.listener.tls.require_peer_cert and s.listener.tls.ca_file is None
    verified, mutual = s.destinations
    assert verified.tls.ca_file == Path("ca.crt") and verified.tls.cert_file is None
    assert mutual.tls.cert_file == Path("c.crt") and mutual.tls.key_file == Path("c.key")


def test_destinations_are_dimse_dicomweb_or_hl7_and_say_what_is_missing() -> None:
    from pydantic import ValidationError

    from cds_daemon.common.config import Destination

    web = Destination(name="archive", kind="dicomweb", url="https://a.example.org/dicom-web")
    assert web.address == "https://a.example.org/dicom-web"
    assert Destination(name="pacs", ae_title="PACS", host="h", port=104).address == "PACS@h:104"
    assert Destination(name="lis", kind="hl7", host="lis", port=2575).address == "mllp://lis:2575"
    for bad, message in (
        ({"name": "l", "kind": "hl7", "host": "lis"}, "needs host and port"),
        ({"name": "l", "kind": "hl7", "host": "lis", "port": 1, "sending_facility": "A|B"}, "String should match"),
        ({"name": "p", "ae_title": "PACS"}, "needs ae_title, host and port"),
        ({"name": "w", "kind": "dicomweb"}, "needs url"),
        ({"name": "w", "kind": "dicomweb", "url": "ftp://x"}, "needs url"),
        ({"name": "w", "kind": "dicomweb", "url": "http://x", "storage_commitment": True}, "DIMSE service"),
    ):
        with pytest.raises(ValidationError, match=message):
            Destination(**bad)  # type: ignore[arg-type]


@pytest.mark.parametrize(("cores", "configured", "threads"), [(2, 0, 1), (1, 0, 1), (8, 0, 7), (8, 3, 3), (2, 2, 2)])
def test_model_threads_leave_the_helper_a_core_unless_set(
    monkeypatch: pytest.MonkeyPatch, cores: int, configured: int, threads: int
) -> None:
    import os

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(cores)))
    assert load_settings(None, worker_threads=configured).model_threads() == threads

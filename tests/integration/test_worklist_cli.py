"""``cds-daemon worklist`` and ``cds-daemon user`` as an operator runs them, and the additions to ``status``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from cds_daemon.analysis.engine import Engine
from cds_daemon.store import Store, WorklistItem
from tests.support.processes import toml_value
from tests.support.review_case import referred_case, review_settings


def _cli(config: Path, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "CDS_CONFIG": str(config)}
    return subprocess.run(
        [sys.executable, "-m", "cds_daemon", *args], env=env, input=stdin, capture_output=True, text=True, timeout=120
    )


@pytest.fixture
def case(tmp_path: Path, tiny_bundle: Path) -> tuple[Path, WorklistItem]:
    settings = review_settings(tmp_path / "data", tiny_bundle)
    store = Store(settings.storage.database)
    item = referred_case(store, settings, Engine(tiny_bundle, threads=2))
    store.close()
    config = tmp_path / "config.toml"
    config.write_text(
        f"model_bundle = {toml_value(tiny_bundle)}\n"
        f"[storage]\ndata_dir = {toml_value(settings.storage.data_dir)}\nmin_free_mb = 1\nmax_used_percent = 100\n"
        '[[destinations]]\nname = "pacs"\nae_title = "ORTHANC"\nhost = "127.0.0.1"\nport = 4242\n'
    )
    return config, item


def test_users_are_added_listed_and_disabled(case: tuple[Path, WorklistItem]) -> None:
    config, _item = case
    short = _cli(config, "user", "add", "dr.jo", "--password-stdin", stdin="short\n")
    assert short.returncode == 1 and "at least" in short.stderr
    added = _cli(
        config, "user", "add", "dr.jo", "--full-name", "Doe, Jo", "--password-stdin", stdin="a long password\n"
    )
    assert added.returncode == 0, added.stderr
    assert (
        _cli(
            config, "user", "add", "boss", "--role", "admin", "--password-stdin", stdin="another long one\n"
        ).returncode
        == 0
    )
    users = json.loads(_cli(config, "user", "list", "--json").stdout)
    assert [(u["username"], u["role"], u["disabled"]) for u in users] == [
        ("boss", "admin", False),
        ("dr.jo", "reviewer", False),
    ]
    assert "a long password" not in json.dumps(users)
    assert _cli(config, "user", "disable", "dr.jo").returncode == 0
    assert "disabled" in _cli(config, "user", "list").stdout
    assert _cli(config, "user", "disable", "nobody").returncode == 1


def test_list_show_decide_and_status(case: tuple[Path, WorklistItem]) -> None:
    config, item = case
    assert (
        _cli(
            config, "user", "add", "dr.jo", "--full-name", "Doe, Jo", "--password-stdin", stdin="a long password\n"
        ).returncode
        == 0
    )

    listed = json.loads(_cli(config, "worklist", "list", "--json").stdout)
    assert listed["counts"]["open"] == 1
    (row,) = listed["items"]
    assert (row["id"], row["images"], row["decided"]) == (item.id, list(item.images), [])
    human = _cli(config, "worklist", "list").stdout
    assert f"{item.id:>5}" in human and "quality_empty_field" in human

    shown = _cli(config, "worklist", "show", str(item.id))
    assert shown.returncode == 0 and "AI: " in shown.stdout and "flagged:" in shown.stdout
    details = json.loads(_cli(config, "worklist", "show", str(item.id), "--json").stdout)["image_details"]
    ai_class = details[0]["predicted"]

    pw = "a long password\n"
    decide = ("worklist", "decide", "--item", str(item.id))
    anonymous = _cli(config, *decide, "--decision", "confirm", "--reviewer", "dr.jo")  # no password, no token
    assert anonymous.returncode == 1 and "--password-stdin" in anonymous.stderr
    wrong = _cli(config, *decide, "--decision", "confirm", "--reviewer", "dr.jo", "--password-stdin", stdin="guess\n")
    assert wrong.returncode == 1 and "password is wrong" in wrong.stderr
    refused = _cli(config, *decide, "--decision", "change", "--reviewer", "dr.jo", "--password-stdin", stdin=pw)
    assert refused.returncode == 1 and "change needs --class" in refused.stderr
    unknown = _cli(config, *decide, "--decision", "confirm", "--reviewer", "x.y", "--password-stdin", stdin=pw)
    assert unknown.returncode == 1 and "not an active user" in unknown.stderr

    one = _cli(
        config, *decide, "--image", item.images[1], "--decision", "non_diagnostic", "--comment", "empty field",
        "--reviewer", "dr.jo", "--password-stdin", stdin=pw,
    )  # fmt: skip
    assert one.returncode == 0, one.stderr
    token = _cli(config, "user", "token", "dr.jo", "--hours", "1", "--password-stdin", stdin=pw)
    assert token.returncode == 0, token.stderr
    stolen = _cli(config, *decide, "--decision", "confirm", "--reviewer", "dr.b", "--token", token.stdout.strip())
    assert stolen.returncode == 1 and "not dr.b's" in stolen.stderr
    rest = _cli(
        config, *decide, "--decision", "confirm", "--reviewer", "dr.jo", "--token", token.stdout.strip(), "--json"
    )
    assert rest.returncode == 0, rest.stderr
    (made,) = json.loads(rest.stdout)
    assert (made["sop_instance_uid"], made["final_class"], made["reviewer"]) == (item.images[0], ai_class, "dr.jo")
    assert made["review_sr_uid"]

    status = json.loads(_cli(config, "status", "--json").stdout)
    assert status["worklist"]["done"] == 1
    assert status["review_agreement"]["decisions"] == 2 and status["review_agreement"]["overrides"] == 1
    assert status["outbox"]["pending"] >= 2  # the two verified SRs wait for the daemon's egress
    text = _cli(config, "status").stdout
    assert "review agreement: 2 decisions, 1 overrides, override rate 50.0%" in text
    assert f"AI {ai_class}" in text

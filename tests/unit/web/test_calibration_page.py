"""The admin page "Site calibration": what it shows, and certify / activate / deactivate behind the admin's
password, audited; reviewers cannot reach it; the banner says why every case is reviewed."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from flask.testing import FlaskClient

from cds_daemon.analysis.engine import Engine
from cds_daemon.common.config import TriageSettings
from cds_daemon.common.vocabulary import TriageMode
from cds_daemon.review.auth import add_user
from cds_daemon.review.service import ReviewService
from cds_daemon.store import OutputObject, PredictionRecord, Store
from cds_daemon.web.app import WebContext, create_app
from tests.support.review_case import review_settings
from tests.unit.store.test_store import _new
from tests.unit.web.test_web import PASSWORD, login, token


@pytest.fixture
def admin_client(tmp_path: Path, tiny_bundle: Path) -> Iterator[tuple[FlaskClient, Store, str]]:
    engine = Engine(tiny_bundle, threads=1)
    settings = review_settings(tmp_path / "data", tiny_bundle)
    settings = settings.model_copy(
        update={"triage": TriageSettings(mode=TriageMode.LIVE, risk_alpha=0.2, risk_delta=0.2)}
    )
    store = Store(settings.storage.database)
    add_user(store, "boss", PASSWORD, "admin", "Jones, Bo", actor="test")
    add_user(store, "dr.ana", PASSWORD, "reviewer", "Smith, Ana", actor="test")
    for i in range(20):  # shadow reviews of images the AI got right
        uid = f"1.2.7.{i}"
        store.record_received(_new(uid, path=f"/{uid}"), actor="T")
        store.claim_next(actor="worker")
        record = PredictionRecord(
            "m", "1", engine.identity, "benign", [0.9, 0.05, 0.05], True, ["site_validation"], {}, 9,
            triage_mode="shadow", finalisation_confidence=0.6 + i / 50, candidate=True,
        )  # fmt: skip
        store.record_result(uid, record, [], [], actor="worker")
        (item,) = [w for w in store.worklist() if uid in w.images]
        store.record_decision(
            worklist_id=item.id, sop_instance_uid=uid, reviewer="dr.ana", decision="confirm", ai_class="benign",
            final_class="benign", comment=None, review_sr=OutputObject("review-sr", f"2.7.{i}", "1.2", "/x"),
            destinations=[],
        )  # fmt: skip
    app = create_app(WebContext(settings, store, ReviewService(settings, store), engine))
    app.testing = True
    client = app.test_client()
    assert login(client, "boss")[0] == 302
    yield client, store, engine.identity
    store.close()


def _post(client: FlaskClient, path: str, **form: str) -> str:
    page = client.get("/admin/calibration").get_data(as_text=True)
    rsp = client.post(path, data={"csrf_token": token(page), **form}, follow_redirects=True)
    assert rsp.status_code == 200
    return rsp.get_data(as_text=True)


def test_certify_and_activate_need_the_admins_password(admin_client: tuple[FlaskClient, Store, str]) -> None:
    client, store, sha = admin_client
    page = client.get("/admin/calibration").get_data(as_text=True)
    assert 'id="pool-size">20<' in page and "<svg" in page and "Every case is reviewed:" in page
    assert "live mode, but no site rule is active" in page
    refused = _post(client, "/admin/calibration/certify", alpha="0.2", delta="0.2", password="wrong")
    assert "Wrong password: nothing was changed." in refused and store.site_rules(sha) == []
    done = _post(client, "/admin/calibration/certify", alpha="0.2", delta="0.2", password=PASSWORD)
    (rule,) = store.site_rules(sha)
    assert f"Site rule {rule.id} certified" in done and rule.certified_by == "boss (web)" and not rule.active
    assert _post(client, "/admin/calibration/activate", rule_id=str(rule.id), password="wrong").count("Wrong") == 1
    assert store.active_rule(sha) is None
    active = _post(client, "/admin/calibration/activate", rule_id=str(rule.id), password=PASSWORD)
    assert f"Site rule {rule.id} is active" in active and "Every case is reviewed:" not in active
    assert store.active_rule(sha) is not None
    off = _post(client, "/admin/calibration/deactivate", reason="new camera", password=PASSWORD)
    assert "deactivated" in off and store.active_rule(sha) is None and "withdrawn by boss (web)" in off
    actions = store.audit_actions()
    assert "web:calibration-certify-refused" in actions and "calibration:certify" in actions
    assert "calibration:activate" in actions and "calibration:deactivated" in actions


def test_reviewers_cannot_open_or_post(admin_client: tuple[FlaskClient, Store, str], tiny_bundle: Path) -> None:
    client, store, sha = admin_client
    client.post("/logout", data={"csrf_token": token(client.get("/admin/calibration").get_data(as_text=True))})
    assert login(client, "dr.ana")[0] == 302
    assert client.get("/admin/calibration").status_code == 403
    page = client.get("/worklist").get_data(as_text=True)
    rsp = client.post("/admin/calibration/certify", data={"csrf_token": token(page), "password": PASSWORD})
    assert rsp.status_code == 403 and store.site_rules(sha) == []

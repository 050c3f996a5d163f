"""HTTP tests of the review web page: login, sessions, roles, CSRF, case view, decisions, audit."""

from __future__ import annotations

import io
import re
import socket
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
import pytest
from flask import Flask
from flask.testing import FlaskClient
from PIL import Image

from cds_daemon.analysis.engine import Engine
from cds_daemon.common.config import Settings
from cds_daemon.common.vocabulary import OutputKind
from cds_daemon.review.auth import add_user
from cds_daemon.review.service import ReviewService
from cds_daemon.review.similar import SimilarIndex
from cds_daemon.store import Store, WorklistItem
from cds_daemon.web.app import WebContext, create_app
from cds_daemon.web.imaging import read_header
from cds_daemon.web.server import WebServer
from tests.support.review_case import referred_case, review_settings

PASSWORD = "correct horse battery"


@pytest.fixture(scope="module")
def engine(tiny_bundle: Path) -> Engine:
    return Engine(tiny_bundle, threads=2)


@dataclass
class Site:
    settings: Settings
    store: Store
    item: WorklistItem
    app: Flask

    def client(self) -> FlaskClient:
        return self.app.test_client()

    def actions(self) -> list[str]:
        return self.store.audit_actions()


@pytest.fixture
def site(tmp_path: Path, tiny_bundle: Path, engine: Engine, store_target: str | Path) -> Iterator[Site]:
    """The review page on each store backend (PostgreSQL: any node serves any reviewer's session)."""
    url = store_target if isinstance(store_target, str) else None
    settings = review_settings(tmp_path / "data", tiny_bundle, database_url=url)
    store = Store(settings.storage.database)
    add_user(store, "dr.ana", PASSWORD, "reviewer", "Smith, Ana", actor="test")
    add_user(store, "boss", PASSWORD, "admin", "Jones, Bo", actor="test")
    item = referred_case(store, settings, engine)
    app = create_app(WebContext(settings, store, ReviewService(settings, store), engine))
    app.testing = True
    yield Site(settings, store, item, app)
    store.close()


def token(html: str) -> str:
    match = re.search(r'name="csrf-token" content="([^"]+)"', html)
    assert match, "every page carries the CSRF token"
    return match.group(1)


def login(client: FlaskClient, username: str, password: str = PASSWORD) -> tuple[int, str]:
    page = client.get("/login").get_data(as_text=True)
    rsp = client.post("/login", data={"username": username, "password": password, "csrf_token": token(page)})
    return rsp.status_code, rsp.headers.get("Location", "")


def test_anonymous_sees_nothing_but_the_login_page(site: Site) -> None:
    c = site.client()
    uid = site.item.images[0]
    for path in ("/worklist", f"/case/{site.item.id}", "/admin"):
        rsp = c.get(path)
        assert rsp.status_code == 302 and rsp.headers["Location"].startswith("/login?next=")
    assert c.get(f"/case/{site.item.id}/image/{uid}.png").status_code == 401
    assert c.get(f"/case/{site.item.id}/heatmap/{uid}.png").status_code == 401
    page = c.get("/login")
    assert page.status_code == 200 and b"FIXTURE" not in page.data
    assert "default-src 'self'" in page.headers["Content-Security-Policy"]


def test_login_failure_success_and_logout_revokes_the_cookie(site: Site) -> None:
    c = site.client()
    assert login(c, "dr.ana", "wrong password!")[0] == 401
    status, location = login(c, "dr.ana")
    assert status == 302 and location == "/worklist"
    cookie = c.get_cookie("cds_session")
    assert cookie is not None and cookie.http_only and cookie.same_site == "Strict"
    page = c.get("/worklist").get_data(as_text=True)
    header = read_header(site.store.get_instance(site.item.images[0]).spool_path)  # type: ignore[union-attr]
    assert header.patient_name in page and header.patient_id in page  # identifiers for a logged-in user

    assert c.post("/logout", data={"csrf_token": token(page)}).status_code == 302
    c.set_cookie("cds_session", cookie.value)  # replaying the old cookie does not bring the session back
    assert c.get("/worklist").status_code == 302
    actions = site.actions()
    assert {"web:login-failed", "web:login", "web:worklist", "web:logout"} <= set(actions)


def test_repeated_failures_make_that_address_wait_but_lock_nobody_out(site: Site) -> None:
    c = site.client()
    for _ in range(site.settings.web.max_failed_logins):
        assert login(c, "dr.ana", "wrong password!")[0] == 401
    assert login(c, "dr.ana")[0] == 429  # from this address, even the right password waits (1 s, then 2 s, ...)
    assert "web:login-throttled" in site.actions()
    elsewhere = site.app.test_client()
    elsewhere.environ_base["REMOTE_ADDR"] = "10.20.30.40"
    assert login(elsewhere, "dr.ana")[0] == 302  # someone guessing elsewhere never locks the user out
    for name in ("no.such.user", "x" * 500):
        assert login(c, name, "pw")[0] in (401, 429)
    details = site.store.audit_details()
    assert not any("no.such.user" in d or "xxxx" in d for d in details)  # unknown names are never stored


def test_next_parameter_never_leaves_the_site(site: Site) -> None:
    for target, expected in (
        ("https://evil.example/x", "/worklist"),
        ("//evil.example", "/worklist"),
        ("/admin", "/admin"),
    ):
        c = site.client()
        page = c.get("/login").get_data(as_text=True)
        rsp = c.post(
            "/login", data={"username": "boss", "password": PASSWORD, "next": target, "csrf_token": token(page)}
        )
        assert rsp.headers["Location"] == expected


def test_post_without_csrf_token_is_refused(site: Site) -> None:
    c = site.client()
    c.get("/login")
    assert c.post("/login", data={"username": "dr.ana", "password": PASSWORD}).status_code == 400
    assert login(c, "dr.ana")[0] == 302
    uid = site.item.images[0]
    for forged in (None, "forged", "é"):  # a non-ASCII token is refused too, not a server error
        data = {"image": uid, "choice": "confirm"} | ({"csrf_token": forged} if forged else {})
        assert c.post(f"/case/{site.item.id}/decide", data=data).status_code == 400
    assert site.store.decisions(site.item.id) == []
    assert site.actions().count("web:csrf-refused") == 4


def test_reviewer_cannot_open_admin_but_admin_can(site: Site) -> None:
    reviewer, admin = site.client(), site.client()
    login(reviewer, "dr.ana")
    login(admin, "boss")
    assert reviewer.get("/admin").status_code == 403
    assert "web:forbidden" in site.actions()
    page = admin.get("/admin")
    assert page.status_code == 200
    text = page.get_data(as_text=True)
    assert "override rate" in text and "dr.ana" in text
    page = reviewer.get(f"/case/{site.item.id}")
    assert page.status_code == 200
    claimed = reviewer.post(f"/case/{site.item.id}/claim", data={"csrf_token": token(page.get_data(as_text=True))})
    assert claimed.status_code == 302
    page = admin.get(f"/case/{site.item.id}")  # an admin may review too, without taking the case over
    assert page.status_code == 200 and "in review by dr.ana" in page.get_data(as_text=True)
    assert site.store.worklist_get(site.item.id).assignee == "dr.ana"  # type: ignore[union-attr]


def test_disabling_a_user_ends_their_session(site: Site) -> None:
    c = site.client()
    login(c, "dr.ana")
    assert c.get("/worklist").status_code == 200
    site.store.disable_user("dr.ana", actor="test")
    assert c.get("/worklist").status_code == 302


def test_case_view_shows_the_result_and_serves_image_and_heatmap(site: Site) -> None:
    c = site.client()
    login(c, "dr.ana")
    item, uid = site.item, site.item.images[0]
    page = c.get(f"/case/{item.id}?image={uid}")
    assert page.status_code == 200 and page.headers["Cache-Control"] == "no-store"
    html = page.get_data(as_text=True)
    review = ReviewService(site.settings, site.store)
    result = review.ai_result(uid)
    assert result.model_version in html
    for code, p in zip(result.classes, result.probabilities, strict=True):
        assert f'<span class="prob-name">{review.labels.short(code)}' in html and f"{p * 100:.1f}%" in html
    for text in result.reason_texts:
        assert text in html
    looked = site.store.worklist_get(item.id)
    assert looked is not None and (looked.status, looked.assignee) == ("open", None)  # looking claims nothing
    assert c.post(f"/case/{item.id}/claim", data={"csrf_token": token(html)}).status_code == 302
    opened = site.store.worklist_get(item.id)
    assert opened is not None and (opened.status, opened.assignee) == ("in_review", "dr.ana")
    assert "web:view-case" in site.actions()

    image = c.get(f"/case/{item.id}/image/{uid}.png")
    assert image.mimetype == "image/png"
    with Image.open(io.BytesIO(image.data)) as im:
        assert (im.size, im.mode) == ((1024, 768), "RGB")
    heat = c.get(f"/case/{item.id}/heatmap/{uid}.png")
    with Image.open(io.BytesIO(heat.data)) as im:
        assert (im.size, im.mode) == ((256, 192), "RGBA")
    assert {"web:view-image", "web:view-heatmap"} <= set(site.actions())  # who saw which patient's image
    assert c.get(f"/case/{item.id}/image/1.2.3.png").status_code == 404  # only images of this case
    assert c.get(f"/case/{item.id + 1}").status_code == 404


def test_decisions_from_the_page_reach_the_outbox_as_verified_srs(site: Site) -> None:
    c = site.client()
    login(c, "dr.ana")
    item = site.item
    first, second = item.images
    page = c.get(f"/case/{item.id}?image={first}").get_data(as_text=True)
    review = ReviewService(site.settings, site.store)
    ai_class = review.ai_result(first).predicted
    other = next(k for k in review.labels.classes if k != ai_class)
    rsp = c.post(
        f"/case/{item.id}/decide",
        data={"image": first, "choice": f"change:{other}", "comment": "  atypia  ", "csrf_token": token(page)},
    )
    assert rsp.status_code == 302 and rsp.headers["Location"] == f"/case/{item.id}?image={second}"
    (decision,) = site.store.decisions(item.id)
    assert (decision.decision, decision.final_class, decision.comment) == ("change", other, "atypia")

    page = c.get(rsp.headers["Location"]).get_data(as_text=True)
    bad = c.post(f"/case/{item.id}/decide", data={"image": second, "choice": "change:", "csrf_token": token(page)})
    assert bad.status_code == 302 and len(site.store.decisions(item.id)) == 1  # refused with a message
    assert "change needs" in c.get(bad.headers["Location"]).get_data(as_text=True)

    rsp = c.post(f"/case/{item.id}/decide", data={"image": second, "choice": "confirm", "csrf_token": token(page)})
    assert rsp.headers["Location"] == "/worklist"  # the case is done and nothing else waits
    assert site.store.worklist_get(item.id).status == "done"  # type: ignore[union-attr]
    for uid in (first, second):
        (row,) = [o for o in site.store.outbox_items(uid) if o.kind == OutputKind.REVIEW_SR]
        sr = pydicom.dcmread(row.path)
        assert sr.VerificationFlag == "VERIFIED"
        assert str(sr.VerifyingObserverSequence[0].VerifyingObserverName) == "Smith^Ana"
    assert site.actions().count("decision:change") == 1 and site.actions().count("decision:confirm") == 1


def test_one_decision_in_the_worklist_can_cover_the_whole_case(site: Site) -> None:
    c = site.client()
    login(c, "dr.ana")
    item = site.item
    first, second = item.images
    page = c.get(f"/case/{item.id}?image={first}").get_data(as_text=True)
    assert 'name="scope" value="case"' in page and "1 other undecided image" in page
    rsp = c.post(
        f"/case/{item.id}/decide",
        data={"image": first, "choice": "non_diagnostic", "scope": "case", "csrf_token": token(page)},
    )
    assert rsp.status_code == 302 and rsp.headers["Location"] == "/worklist"
    decisions = site.store.decisions(item.id)
    assert sorted(d.sop_instance_uid for d in decisions) == sorted(item.images)
    assert {d.decision for d in decisions} == {"non_diagnostic"}
    assert site.store.worklist_get(item.id).status == "done"  # type: ignore[union-attr]
    for uid in (first, second):
        assert [o for o in site.store.outbox_items(uid) if o.kind == OutputKind.REVIEW_SR]
    page = c.get(f"/case/{item.id}?image={second}").get_data(as_text=True)
    assert 'name="scope"' not in page  # nothing left for a case-wide decision to cover


def test_no_patient_identifier_in_log_lines(site: Site, capsys: pytest.CaptureFixture[str]) -> None:
    header = read_header(site.store.get_instance(site.item.images[0]).spool_path)  # type: ignore[union-attr]
    c = site.client()
    login(c, "dr.ana", "wrong password!")
    login(c, "dr.ana")
    page = c.get(f"/case/{site.item.id}").get_data(as_text=True)
    data = {"image": site.item.images[0], "choice": "non_diagnostic", "csrf_token": token(page)}
    assert c.post(f"/case/{site.item.id}/decide", data=data).status_code == 302
    out = capsys.readouterr().out
    assert "review_decision" in out and "web_login" in out
    for value in (header.patient_name, header.patient_id, header.birth_date.replace("-", ""), "FIXTURE"):
        assert value and value not in out


def test_server_thread_serves_and_stops_cleanly(site: Site) -> None:
    server = WebServer(WebContext(site.settings, site.store, ReviewService(site.settings, site.store)))
    server.start()
    with urllib.request.urlopen(f"http://127.0.0.1:{server.port}/login", timeout=10) as rsp:
        assert rsp.status == 200 and rsp.headers["X-Frame-Options"] == "DENY"
    server.stop()
    assert not server.running
    with pytest.raises(OSError), socket.create_connection(("127.0.0.1", server.port), timeout=2):
        pass


def test_a_login_on_one_node_is_valid_on_another(site: Site, engine: Engine) -> None:
    """Sessions live in the store and the cookie key in the shared data directory: any node serves the page."""
    other_store = Store(site.settings.storage.database)
    other = create_app(WebContext(site.settings, other_store, ReviewService(site.settings, other_store), engine))
    other.testing = True
    c = site.client()
    assert login(c, "dr.ana")[0] == 302
    cookie = c.get_cookie("cds_session")
    assert cookie is not None
    elsewhere = other.test_client()
    elsewhere.set_cookie("cds_session", cookie.value)
    page = elsewhere.get("/worklist")
    assert page.status_code == 200
    assert elsewhere.post("/logout", data={"csrf_token": token(page.get_data(as_text=True))}).status_code == 302
    assert c.get("/worklist").status_code == 302  # logged out on one node: out on every node
    other_store.close()


def test_case_view_shows_similar_confirmed_cases(site: Site, engine: Engine) -> None:
    """After reviewers confirm or correct cases, a near copy of one of them finds it first, with its category."""
    from dicom_fixtures.synth import make_field
    from tests.support.review_case import receive_and_process

    def case_of(uid: str) -> WorklistItem:
        found = [i for i in site.store.worklist() if uid in i.images]
        assert found, "the barely trained test model refers every image"
        return found[0]

    review = ReviewService(site.settings, site.store)
    confirmed = {}
    for seed, label in ((701, "benign"), (702, "malignant"), (703, "indeterminate")):
        (uid,) = receive_and_process(site.store, site.settings, engine, [make_field(label, seed=seed)], seed)
        ai = review.ai_result(uid).predicted
        final = None if ai == label else label
        review.decide(case_of(uid).id, "confirm" if final is None else "change", "dr.ana", final_class=final)
        confirmed[label] = uid
    near = np.roll(make_field("malignant", seed=702), 3, axis=1)  # the same smear, moved three pixels
    (query,) = receive_and_process(site.store, site.settings, engine, [near], 704)
    neighbours = SimilarIndex(site.store).neighbours(query, 5)
    assert [n.final_class for n in neighbours][:1] == ["malignant"]
    assert neighbours[0].sop_instance_uid == confirmed["malignant"] and neighbours[0].reviewer == "dr.ana"
    assert len(neighbours) == 3

    c = site.client()
    login(c, "dr.ana")
    html = c.get(f"/case/{case_of(query).id}?image={query}").get_data(as_text=True)
    assert "Similar confirmed cases" in html
    assert html.index(f"/similar/{confirmed['malignant']}.png") < html.index(f"/similar/{confirmed['benign']}.png")
    thumb = c.get(f"/similar/{confirmed['malignant']}.png")
    assert thumb.status_code == 200 and thumb.mimetype == "image/png"
    assert c.get(f"/similar/{query}.png").status_code == 404  # only reviewer-confirmed images are served
    assert "web:view-similar" in site.actions()

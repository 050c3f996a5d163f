"""Review decisions (the service the web page and the CLI share), worklist jobs and accounts."""

from __future__ import annotations

import io
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image

from cds_daemon.analysis.decode import decode
from cds_daemon.analysis.engine import Engine
from cds_daemon.analysis.pipeline import process_image
from cds_daemon.common.config import Settings
from cds_daemon.common.vocabulary import OutputKind
from cds_daemon.review.auth import AuthError, LoginThrottle, add_user, authenticate, hash_password, verify_password
from cds_daemon.review.jobs import age_text, escalate_overdue, log_daily_summary, worklist_summary
from cds_daemon.review.service import ReviewError, ReviewService, rebuild_ai_result
from cds_daemon.store import Store, WorklistItem
from cds_daemon.web.imaging import image_png
from tests.support.review_case import referred_case, review_settings


@pytest.fixture(scope="module")
def engine(tiny_bundle: Path) -> Engine:
    return Engine(tiny_bundle, threads=2)


@pytest.fixture
def setup(tmp_path: Path, tiny_bundle: Path, engine: Engine) -> Iterator[tuple[Settings, Store, WorklistItem]]:
    settings = review_settings(tmp_path / "data", tiny_bundle)
    store = Store(settings.storage.database)
    add_user(store, "dr.ana", "correct horse battery", "reviewer", "Smith, Ana", actor="test")
    item = referred_case(store, settings, engine)
    yield settings, store, item
    store.close()


def test_password_hash_is_salted_scrypt_and_verifies() -> None:
    a, b = hash_password("correct horse battery"), hash_password("correct horse battery")
    assert a.startswith("scrypt$") and a != b
    assert verify_password("correct horse battery", a)
    assert not verify_password("correct horse batterY", a)
    assert not verify_password("x", "md5$abc")


def test_users_need_a_valid_name_role_and_long_password(tmp_path: Path) -> None:
    store = Store(tmp_path / "db.sqlite3")
    with pytest.raises(AuthError, match="at least"):
        add_user(store, "dr.b", "short", "reviewer", actor="t")
    with pytest.raises(AuthError, match="role"):
        add_user(store, "dr.b", "long enough pw", "owner", actor="t")
    with pytest.raises(AuthError, match="user name"):
        add_user(store, "Dr B", "long enough pw", "reviewer", actor="t")
    add_user(store, "dr.b", "long enough pw", "admin", actor="t")
    assert authenticate(store, "dr.b", "long enough pw").role == "admin"  # type: ignore[union-attr]
    assert authenticate(store, "dr.b", "wrong password") is None
    assert authenticate(store, "nobody", "long enough pw") is None
    store.disable_user("dr.b", actor="t")
    assert authenticate(store, "dr.b", "long enough pw") is None
    store.close()


def test_login_throttle_backs_off_per_address_and_name_and_forgets() -> None:
    throttle = LoginThrottle(2, address_free=4, base_s=10.0, max_s=60.0, capacity=8)
    throttle.failed("10.0.0.1", "dr.a")
    assert throttle.wait_s("10.0.0.1", "dr.a") == 0.0  # within the free attempts
    throttle.failed("10.0.0.1", "dr.a")
    assert 9.0 < throttle.wait_s("10.0.0.1", "dr.a") <= 10.0  # base_s * 2**0
    throttle.failed("10.0.0.1", "dr.a")
    assert 19.0 < throttle.wait_s("10.0.0.1", "dr.a") <= 20.0  # doubles
    assert throttle.wait_s("10.0.0.2", "dr.a") == 0.0  # someone else's failures never delay the user elsewhere
    assert throttle.wait_s("10.0.0.1", "dr.b") == 0.0  # another name from the address: not yet sprayed
    throttle.failed("10.0.0.1", "dr.c")
    assert throttle.wait_s("10.0.0.1", "dr.b") > 0.0  # 4 failures from the address: the whole address waits
    throttle.succeeded("10.0.0.1", "dr.a")
    assert throttle.wait_s("10.0.0.2", "dr.a") == 0.0
    for i in range(100):  # any number of made-up names: the counters stay bounded
        throttle.failed(f"10.1.{i}.1", f"name{i}")
    assert len(throttle._failures) <= 8


def test_rebuilt_result_matches_what_the_worker_made(
    setup: tuple[Settings, Store, WorklistItem], engine: Engine
) -> None:
    settings, store, item = setup
    uid = item.images[0]
    instance = store.get_instance(uid)
    assert instance is not None
    made = process_image(Path(instance.spool_path), engine, settings).result
    rebuilt = ReviewService(settings, store).ai_result(uid)
    assert rebuilt == made  # cam is excluded from equality; every other field must round-trip
    assert rebuilt.cam is None
    prediction = store.get_prediction(uid)
    assert prediction is not None
    assert rebuild_ai_result(prediction, ReviewService(settings, store).labels).classes == tuple(engine.classes)


def test_decision_makes_a_verified_sr_with_the_ai_sr_as_predecessor(
    setup: tuple[Settings, Store, WorklistItem],
) -> None:
    settings, store, item = setup
    queued: list[int] = []
    review = ReviewService(settings, store, on_queued=lambda: queued.append(1))
    uid = item.images[0]
    ai_class = review.ai_result(uid).predicted
    other = next(c for c in review.labels.classes if c != ai_class)
    (decision,) = review.decide(item.id, "change", "dr.ana", images=[uid], final_class=other, comment="Hürthle cells")
    assert queued == [1]
    assert (decision.ai_class, decision.final_class, decision.reviewer) == (ai_class, other, "dr.ana")

    rows = [o for o in store.outbox_items(uid) if o.kind == OutputKind.REVIEW_SR]
    assert [(o.object_uid, o.destination, o.state) for o in rows] == [(decision.review_sr_uid, "pacs", "pending")]
    sr = pydicom.dcmread(rows[0].path)
    ai_sr = pydicom.dcmread(review.ai_sr_path(uid))
    assert sr.VerificationFlag == "VERIFIED" and sr.CompletionFlag == "COMPLETE"
    assert str(sr.VerifyingObserverSequence[0].VerifyingObserverName) == "Smith^Ana"
    predecessor = sr.PredecessorDocumentsSequence[0].ReferencedSeriesSequence[0].ReferencedSOPSequence[0]
    assert predecessor.ReferencedSOPInstanceUID == ai_sr.SOPInstanceUID
    assert sr.StudyInstanceUID == ai_sr.StudyInstanceUID
    assert "Hürthle cells" in str(sr.ContentSequence)
    assert store.worklist_get(item.id).status != "done"  # type: ignore[union-attr]


def test_default_images_are_the_undecided_ones_and_the_case_closes(setup: tuple[Settings, Store, WorklistItem]) -> None:
    settings, store, item = setup
    review = ReviewService(settings, store)
    first = review.decide(item.id, "non_diagnostic", "dr.ana", images=[item.images[0]])
    rest = review.decide(item.id, "confirm", "dr.ana")
    assert [d.sop_instance_uid for d in first + rest] == list(item.images)
    assert store.worklist_get(item.id).status == "done"  # type: ignore[union-attr]
    with pytest.raises(ReviewError, match="already has a decision"):
        review.decide(item.id, "confirm", "dr.ana")
    assert (store.agreement()["decisions"], store.agreement()["overrides"]) == (2, 1)
    # An amendment is a further SR (next sequence number, new UID), not a replacement of the first.
    (again,) = review.decide(item.id, "confirm", "dr.ana", images=[item.images[0]])
    assert again.review_sr_uid not in {d.review_sr_uid for d in first + rest}
    assert pydicom.dcmread(review.results.path_for(again.review_sr_uid)).InstanceNumber == 2
    assert (store.agreement()["decisions"], store.agreement()["overrides"]) == (2, 0)  # the latest decision counts


def test_a_case_wide_change_confirms_the_images_already_in_that_class(
    setup: tuple[Settings, Store, WorklistItem],
) -> None:
    settings, store, item = setup
    review = ReviewService(settings, store)
    ai_first = review.ai_result(item.images[0]).predicted
    assert ai_first is not None
    made = review.decide(item.id, "change", "dr.ana", final_class=ai_first)  # "the whole case is <first's class>"
    assert [d.final_class for d in made] == [ai_first] * len(item.images)
    expected = ["confirm" if review.ai_result(u).predicted == ai_first else "change" for u in item.images]
    assert [d.decision for d in made] == expected
    assert store.worklist_get(item.id).status == "done"  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("decision", "reviewer", "final_class", "message"),
    [
        ("confirm", "nobody", None, "not an active user"),
        ("approve", "dr.ana", None, "decision must be one of"),
        ("change", "dr.ana", None, "change needs --class"),
        ("change", "dr.ana", "AI", "is the AI class"),
        ("non_diagnostic", "dr.ana", "benign", "has no class"),
        ("confirm", "dr.ana", "OTHER", "confirm keeps the AI class"),
    ],
)
def test_invalid_decisions_are_refused_and_change_nothing(
    setup: tuple[Settings, Store, WorklistItem], decision: str, reviewer: str, final_class: str | None, message: str
) -> None:
    settings, store, item = setup
    review = ReviewService(settings, store)
    ai_class = review.ai_result(item.images[0]).predicted
    if final_class == "AI":
        final_class = ai_class
    elif final_class == "OTHER":
        final_class = next(c for c in review.labels.classes if c != ai_class)
    with pytest.raises(ReviewError, match=message):
        review.decide(item.id, decision, reviewer, images=[item.images[0]], final_class=final_class)
    assert store.decisions(item.id) == []
    assert not [o for o in store.outbox_items(item.images[0]) if o.kind == OutputKind.REVIEW_SR]


def test_image_of_another_case_and_purged_source_are_refused(setup: tuple[Settings, Store, WorklistItem]) -> None:
    settings, store, item = setup
    review = ReviewService(settings, store)
    with pytest.raises(ReviewError, match="not in worklist item"):
        review.decide(item.id, "confirm", "dr.ana", images=["1.2.3.4"])
    with pytest.raises(ReviewError, match="no worklist item"):
        review.decide(9999, "confirm", "dr.ana")
    instance = store.get_instance(item.images[0])
    assert instance is not None
    Path(instance.spool_path).unlink()
    with pytest.raises(ReviewError, match="no longer on disk"):
        review.decide(item.id, "non_diagnostic", "dr.ana", images=[item.images[0]])


def test_escalation_and_summary(
    setup: tuple[Settings, Store, WorklistItem], capsys: pytest.CaptureFixture[str]
) -> None:
    _settings, store, item = setup
    assert escalate_overdue(store, 24.0) == []
    assert escalate_overdue(store, 24.0, now=datetime.now(UTC) + timedelta(hours=25)) == [item.id]
    escalated = store.worklist_get(item.id)
    assert escalated is not None and escalated.status == "escalated" and escalated.escalated_at
    assert "worklist_escalated" in capsys.readouterr().out
    summary = worklist_summary(store)
    assert summary["worklist"]["escalated"] == 1 and summary["decisions"] == 0
    assert summary["referral"]["referred"] >= 1
    assert log_daily_summary(store) == summary
    assert "worklist_summary" in capsys.readouterr().out


def test_age_text() -> None:
    now = datetime(2026, 1, 10, 12, 0, tzinfo=UTC)
    assert age_text("2026-01-10T11:18:00+00:00", now) == "42 min"
    assert age_text("2026-01-10T06:57:00+00:00", now) == "5 h 03 min"
    assert age_text("2026-01-07T10:00:00+00:00", now) == "3 d 2 h"


def test_source_pixels_are_what_the_case_view_serves(setup: tuple[Settings, Store, WorklistItem]) -> None:
    _settings, store, item = setup
    instance = store.get_instance(item.images[0])
    assert instance is not None
    with Image.open(io.BytesIO(image_png(Path(instance.spool_path)))) as im:
        assert im.size == (1024, 768) and im.mode == "RGB"
        assert (np.asarray(im) == decode(Path(instance.spool_path)).rgb).all()

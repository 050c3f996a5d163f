"""Reviewer decisions: one code path for the web page and the CLI.

A decision on a referred image becomes a verified TID 1500 SR whose predecessor is the AI
SR; it is written durably to the results spool, recorded with its outbox rows in one store
transaction, and egress sends it like any other result. Also the scheduled worklist jobs.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pydicom

from cds_daemon.bundle import read_manifest
from cds_daemon.config import Settings
from cds_daemon.logs import get_logger
from cds_daemon.spool import Spool
from cds_daemon.store import Decision, OutputObject, PredictionRecord, Store, User, WorklistItem

if TYPE_CHECKING:  # the report builders pull in highdicom: loaded when a decision is made, not by every CLI call
    from cds_daemon.reports.result import AIResult

log = get_logger("review")

DECISIONS = ("confirm", "change", "non_diagnostic")
DECISION_LABELS = {"confirm": "Confirmed", "change": "Changed", "non_diagnostic": "Non-diagnostic / unsatisfactory"}
MAX_COMMENT = 2000
REVIEW_SR_KIND = "review-sr"


class ReviewError(Exception):
    """A decision that cannot be made (unknown item, wrong class, missing file...); the message says why."""


@dataclass(frozen=True)
class Labels:
    """Class codes and display names, in the model's order."""

    classes: tuple[str, ...]
    display_names: tuple[str, ...]

    def display(self, code: str | None) -> str:
        if code is None:
            return "—"
        return dict(zip(self.classes, self.display_names, strict=True)).get(code, code)

    def short(self, code: str | None) -> str:
        """The display name without its parenthesis: "Malignant (Bethesda VI)" -> "Malignant"."""
        return self.display(code).split(" (", 1)[0]

    def detail(self, code: str | None) -> str:
        """The parenthesis of the display name, if any: "Bethesda VI"."""
        name = self.display(code)
        return name.split(" (", 1)[1].rstrip(")") if " (" in name else ""


@functools.lru_cache(maxsize=4)
def _labels_from_bundle(bundle_dir: Path) -> Labels:
    manifest = read_manifest(bundle_dir)
    return Labels(tuple(manifest.classes), tuple(manifest.display_names))


def labels_for(settings: Settings) -> Labels:
    if settings.model_bundle is None:
        raise ReviewError("model_bundle is not configured: the class names of the predictions are unknown")
    return _labels_from_bundle(settings.model_bundle)


def rebuild_ai_result(prediction: PredictionRecord, labels: Labels) -> AIResult:
    """The AIResult the worker made, from the stored prediction (the CAM is not stored and not needed)."""
    from cds_daemon.reports.result import AIResult

    probs = prediction.probabilities or [0.0] * len(labels.classes)
    if len(probs) != len(labels.classes):
        raise ReviewError(
            f"the prediction has {len(probs)} probabilities but the bundle has {len(labels.classes)} classes"
        )
    detail = prediction.detail
    basic = detail.get("basic", {}).get("probabilities") or None
    premium = detail.get("premium", {}).get("probabilities") or None
    return AIResult(
        classes=labels.classes,
        display_names=labels.display_names,
        probabilities=tuple(float(p) for p in probs),
        predicted=prediction.predicted or "",
        conformal_set=tuple(detail.get("conformal_set", ())),
        referred=prediction.referred,
        reasons=tuple(prediction.reasons),
        reason_texts=tuple(detail.get("reason_texts", ())),
        model_name=prediction.model_name,
        model_version=prediction.model_version,
        model_sha256=prediction.model_sha256,
        cam=None,
        basic_probabilities=None if basic is None else tuple(float(p) for p in basic),
        premium_probabilities=None if premium is None else tuple(float(p) for p in premium),
    )


def person_name(full_name: str) -> str:
    """The reviewer's name as a DICOM PN: "Smith, Ana" -> "Smith^Ana"; a name with carets is kept as it is."""
    if "^" in full_name or "," not in full_name:
        return full_name.strip()
    family, given = (part.strip() for part in full_name.split(",", 1))
    return f"{family}^{given}"


class ReviewService:
    """Validates and records decisions; ``on_queued`` is called when a review SR is waiting in the outbox."""

    def __init__(self, settings: Settings, store: Store, *, on_queued: Callable[[], None] = lambda: None) -> None:
        self.settings = settings
        self.store = store
        self.results = Spool(settings.storage.results_dir)
        self.on_queued = on_queued
        self._lock = threading.Lock()  # two reviewers on one image must not get the same SR sequence number

    @property
    def labels(self) -> Labels:
        return labels_for(self.settings)

    def item(self, item_id: int) -> WorklistItem:
        item = self.store.worklist_get(item_id)
        if item is None:
            raise ReviewError(f"no worklist item {item_id}")
        return item

    def ai_result(self, sop_instance_uid: str) -> AIResult:
        prediction = self.store.get_prediction(sop_instance_uid)
        if prediction is None:
            raise ReviewError(f"no prediction for image {sop_instance_uid}")
        return rebuild_ai_result(prediction, self.labels)

    def ai_sr_path(self, sop_instance_uid: str) -> Path:
        """The AI SR file: from its outbox row, else where the worker spooled it."""
        for out in self.store.outbox_items(sop_instance_uid):
            if out.kind == "sr" and Path(out.path).is_file():
                return Path(out.path)
        prediction = self.store.get_prediction(sop_instance_uid)
        uid = (prediction.detail.get("objects", {}) if prediction else {}).get("sr")
        if uid and self.results.path_for(uid).is_file():
            return self.results.path_for(uid)
        raise ReviewError(f"the AI SR of image {sop_instance_uid} is no longer on disk")

    def decide(
        self,
        item_id: int,
        decision: str,
        reviewer: str,
        *,
        images: Sequence[str] | None = None,
        final_class: str | None = None,
        comment: str | None = None,
    ) -> list[Decision]:
        """Record ``decision`` for the given images of the item (default: every undecided one)."""
        user = self.store.get_user(reviewer)
        if user is None or user.disabled:
            raise ReviewError(f"{reviewer!r} is not an active user")
        if decision not in DECISIONS:
            raise ReviewError(f"decision must be one of {', '.join(DECISIONS)}")
        comment = (comment or "").strip() or None
        if comment is not None and len(comment) > MAX_COMMENT:
            raise ReviewError(f"a comment has at most {MAX_COMMENT} characters")
        item = self.item(item_id)
        targets = list(images) if images else [u for u in item.images if u not in item.decided]
        if not targets:
            raise ReviewError(f"every image of worklist item {item_id} already has a decision")
        unknown = [u for u in targets if u not in item.images]
        if unknown:
            raise ReviewError(f"not in worklist item {item_id}: {', '.join(unknown)}")
        plans = [(uid, self._final_class(uid, decision, final_class)) for uid in targets]
        with self._lock:
            made = [self._decide_one(item, uid, decision, final, comment, user) for uid, final in plans]
        self.on_queued()
        return made

    def _final_class(self, uid: str, decision: str, final_class: str | None) -> tuple[str | None, str | None]:
        """(AI class, reviewer's class) after checking that the decision makes sense for this image."""
        ai_class = self.ai_result(uid).predicted or None
        if decision == "confirm":
            if ai_class is None:
                raise ReviewError(f"image {uid} has no AI class to confirm")
            if final_class not in (None, ai_class):
                raise ReviewError("confirm keeps the AI class: use decision 'change' for another class")
            return ai_class, ai_class
        if decision == "change":
            if final_class not in self.labels.classes:
                raise ReviewError(f"change needs --class, one of {', '.join(self.labels.classes)}")
            if final_class == ai_class:
                raise ReviewError(f"{final_class} is the AI class: use decision 'confirm'")
            return ai_class, final_class
        if final_class is not None:
            raise ReviewError("a non-diagnostic decision has no class")
        return ai_class, None

    def _decide_one(
        self,
        item: WorklistItem,
        uid: str,
        decision: str,
        classes: tuple[str | None, str | None],
        comment: str | None,
        user: User,
    ) -> Decision:
        from cds_daemon.reports.sr import build_review_sr
        from cds_daemon.steps import encode

        ai_class, final_class = classes
        instance = self.store.get_instance(uid)
        if instance is None or instance.purged_at or not Path(instance.spool_path).is_file():
            raise ReviewError(f"the source image {uid} is no longer on disk")
        source = pydicom.dcmread(instance.spool_path, stop_before_pixels=True)
        ai_sr = pydicom.dcmread(self.ai_sr_path(uid))
        sequence = 1 + sum(d.sop_instance_uid == uid for d in self.store.decisions(item.id))
        sr = build_review_sr(
            source,
            ai_sr,
            reviewer_name=person_name(user.full_name) or user.username,
            reviewer_role="Cytopathologist",
            decision=decision,
            final_class=final_class,
            comment=comment,
            decided_at=datetime.now(UTC),
            sequence=sequence,
            result=self.ai_result(uid),
        )
        sr_uid = str(sr.SOPInstanceUID)
        spooled = self.results.write(sr_uid, encode(sr))
        made = self.store.record_decision(
            worklist_id=item.id,
            sop_instance_uid=uid,
            reviewer=user.username,
            decision=decision,
            ai_class=ai_class,
            final_class=final_class,
            comment=comment,
            review_sr=OutputObject(REVIEW_SR_KIND, sr_uid, str(sr.SOPClassUID), str(spooled.path)),
            destinations=[d.name for d in self.settings.destinations],
        )
        log.info(
            "review_decision",
            worklist_id=item.id,
            sop_instance_uid=uid,
            reviewer=user.username,
            decision=decision,
            ai_class=ai_class,
            final_class=final_class,
            review_sr_uid=sr_uid,
            sequence=sequence,
        )
        return made


def age_text(since: str, now: datetime | None = None) -> str:
    """How long a case has waited, for people: "42 min", "5 h 03 min", "3 d 2 h"."""
    when = datetime.fromisoformat(since)
    when = when if when.tzinfo else when.replace(tzinfo=UTC)
    minutes = int(((now or datetime.now(UTC)) - when).total_seconds() // 60)
    if minutes < 60:
        return f"{max(minutes, 0)} min"
    if minutes < 48 * 60:
        return f"{minutes // 60} h {minutes % 60:02d} min"
    return f"{minutes // 1440} d {minutes % 1440 // 60} h"


def escalate_overdue(store: Store, hours: float, *, now: datetime | None = None) -> list[int]:
    """Escalate items waiting longer than ``hours``; one log line names them."""
    cutoff = (now or datetime.now(UTC)) - timedelta(hours=hours)
    ids = store.escalate_overdue(cutoff.isoformat(timespec="milliseconds"), actor="scheduler")
    if ids:
        log.warning("worklist_escalated", items=ids, waiting_longer_than_hours=hours)
    return ids


def worklist_summary(store: Store) -> dict[str, Any]:
    """Counts for the daily summary line and ``cds-daemon status``."""
    agreement = store.agreement()
    return {
        "worklist": store.worklist_counts(),
        "decisions": agreement["decisions"],
        "overrides": agreement["overrides"],
        "override_rate": agreement["override_rate"],
        "referral": store.referral_stats(),
    }


def log_daily_summary(store: Store) -> dict[str, Any]:
    summary = worklist_summary(store)
    log.info("worklist_summary", **summary)
    return summary

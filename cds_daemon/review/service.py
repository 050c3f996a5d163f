"""Reviewer decisions: one code path for the web page and the CLI.

A decision on a referred image becomes a verified TID 1500 SR whose predecessor is the AI
SR; it is written durably to the results spool, recorded with its outbox rows in one store
transaction, and egress sends it like any other result. The scheduled worklist jobs are in
:mod:`cds_daemon.review.jobs`.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pydicom

from cds_daemon.common.config import Settings
from cds_daemon.common.manifest import read_manifest
from cds_daemon.common.vocabulary import OutputKind, ReviewDecision
from cds_daemon.ops.logs import get_logger
from cds_daemon.store import Decision, PredictionRecord, StateError, Store, User, WorklistItem
from cds_daemon.store.spool import Spool

if TYPE_CHECKING:  # the report builders pull in highdicom: loaded when a decision is made, not by every CLI call
    from cds_daemon.reports.result import AIResult

log = get_logger("review")

MAX_COMMENT = 2000


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


def slide_fields(prediction: PredictionRecord) -> list[dict[str, Any]]:
    """A slide's analysed fields as the worker recorded them (box, z, category, probabilities, reasons); []
    for a camera image. Field n of the slide SR is element n - 1."""
    slide = prediction.detail.get("slide")
    return list(slide.get("fields") or []) if isinstance(slide, dict) else []


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


class ReviewService:
    """Validates and records decisions; ``on_queued`` is called when a review SR is waiting in the outbox."""

    def __init__(self, settings: Settings, store: Store, *, on_queued: Callable[[], None] = lambda: None) -> None:
        self.settings = settings
        self.store = store
        self.results = Spool(settings.storage.results_dir, node=settings.spool_node)
        self.on_queued = on_queued
        self._lock = threading.Lock()  # one decision at a time from this process (the store serialises nodes)

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
            if out.kind == OutputKind.SR and Path(out.path).is_file():
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
        actor: str | None = None,
        fields_viewed: Sequence[int] = (),
        diagnostic_field: int | None = None,
    ) -> list[Decision]:
        """Record ``decision`` for the given images of the item (default: every undecided one). A "change"
        over several images confirms those whose AI class already is the chosen one.

        ``actor`` names the channel in the audit trail when it is not the reviewer's own web session
        (``cli:<os user>`` for the command line). ``fields_viewed`` and ``diagnostic_field`` (field numbers,
        from 1) belong to a whole slide: its verified SR names the fields the reviewer examined.
        """
        user = self.store.get_user(reviewer)
        if user is None or user.disabled:
            raise ReviewError(f"{reviewer!r} is not an active user")
        if decision not in {str(d) for d in ReviewDecision}:
            raise ReviewError(f"decision must be one of {', '.join(ReviewDecision)}")
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
        fields = self._slide_fields_of(targets, fields_viewed, diagnostic_field)
        plans = []
        for uid in targets:
            chosen = decision
            if decision == ReviewDecision.CHANGE and len(targets) > 1 and self.ai_result(uid).predicted == final_class:
                chosen = str(ReviewDecision.CONFIRM)  # "the case is X" confirms the images the AI already called X
            final = self._final_class(uid, chosen, final_class if chosen == decision else None)
            plans.append((uid, chosen, final))
        with self._lock:
            made = [
                self._decide_one(item, uid, chosen, final, comment, user, actor, fields.get(uid, ((), None)))
                for uid, chosen, final in plans
            ]
        self.on_queued()
        return made

    def _slide_fields_of(
        self, targets: list[str], viewed: Sequence[int], diagnostic: int | None
    ) -> dict[str, tuple[tuple[int, ...], int | None]]:
        """(examined fields, diagnostic field) of the one slide among ``targets``, checked against its fields."""
        if not viewed and diagnostic is None:
            return {}
        slides = [(uid, p) for uid in targets if (p := self.store.get_prediction(uid)) is not None and slide_fields(p)]
        if len(slides) != 1:
            raise ReviewError("examined and diagnostic fields belong to a decision on one whole slide")
        uid, prediction = slides[0]
        count = len(slide_fields(prediction))
        numbers = set(viewed) | ({diagnostic} if diagnostic is not None else set())
        wrong = sorted(n for n in numbers if not 1 <= n <= count)
        if wrong:
            raise ReviewError(f"the slide has fields 1 to {count}, not {', '.join(map(str, wrong))}")
        return {uid: (tuple(sorted(numbers)), diagnostic)}

    def _final_class(self, uid: str, decision: str, final_class: str | None) -> tuple[str | None, str | None]:
        """(AI class, reviewer's class) after checking that the decision makes sense for this image."""
        result = self.ai_result(uid)
        try:
            return result.predicted or None, result.final_class(decision, final_class)
        except ValueError as exc:
            raise ReviewError(f"image {uid}: {exc}") from exc

    def _decide_one(
        self,
        item: WorklistItem,
        uid: str,
        decision: str,
        classes: tuple[str | None, str | None],
        comment: str | None,
        user: User,
        actor: str | None = None,
        examined: tuple[tuple[int, ...], int | None] = ((), None),
    ) -> Decision:
        from cds_daemon.reports.files import write_objects
        from cds_daemon.reports.sr import build_review_sr

        ai_class, final_class = classes
        instance = self.store.get_instance(uid)
        if instance is None or not instance.on_disk:
            raise ReviewError(f"the source image {uid} is no longer on disk")
        source = pydicom.dcmread(instance.spool_path, stop_before_pixels=True)
        ai_sr = pydicom.dcmread(self.ai_sr_path(uid))
        result = self.ai_result(uid)
        viewed, diagnostic = examined
        prediction = self.store.get_prediction(uid)
        regions = slide_regions(source, prediction, result, viewed, diagnostic) if prediction is not None else {}
        try:
            # One decision on an image at a time, on every node: the slot holds its sequence number (and so
            # the review SR's UID) until the decision, its SR in the outbox and its pool row are committed.
            with self.store.deciding(uid) as slot:
                sequence = slot.sequence
                sr = build_review_sr(
                    source,
                    ai_sr,
                    reviewer_name=user.full_name or user.username,
                    reviewer_role="Cytopathologist",
                    decision=decision,
                    final_class=final_class,
                    comment=comment,
                    decided_at=datetime.now(UTC),
                    sequence=sequence,
                    result=result,
                    **regions,
                )
                (review_sr,) = write_objects(self.results, [(OutputKind.REVIEW_SR, sr)])
                made = slot.record(
                    worklist_id=item.id,
                    reviewer=user.username,
                    decision=decision,
                    ai_class=ai_class,
                    final_class=final_class,
                    comment=comment,
                    review_sr=review_sr,
                    destinations=[d.name for d in self.settings.destinations],
                    actor=actor,
                    fields_viewed=viewed,
                    diagnostic_field=diagnostic,
                )
        except StateError as exc:
            raise ReviewError(str(exc)) from exc
        log.info(
            "review_decision",
            worklist_id=item.id,
            sop_instance_uid=uid,
            reviewer=user.username,
            decision=decision,
            ai_class=ai_class,
            final_class=final_class,
            review_sr_uid=review_sr.object_uid,
            sequence=sequence,
            fields_viewed=list(viewed),
            diagnostic_field=diagnostic,
        )
        return made


def slide_regions(
    source: pydicom.Dataset,
    prediction: PredictionRecord,
    result: AIResult,
    viewed: Sequence[int],
    diagnostic: int | None,
) -> dict[str, Any]:
    """``build_review_sr``'s extra arguments for a whole slide: a 3D SR (as the AI's) with the examined fields;
    {} for a camera image."""
    import highdicom as hd

    from cds_daemon.reports.result import AIResult
    from cds_daemon.reports.slide_sr import SlideFinding, SlideFrame, examined_field_groups

    fields = slide_fields(prediction)
    if not fields:
        return {}
    slide = prediction.detail["slide"]
    frame = SlideFrame(
        int(slide["width"]),
        int(slide["height"]),
        float(slide["mpp"]),
        tuple(slide.get("origin_mm") or (0.0, 0.0)),
        tuple(float(v) for v in slide.get("orientation") or (0, -1, 0, -1, 0, 0)),
        slide.get("frame_of_reference_uid"),
    )
    examined = {}
    for number in viewed:
        f = fields[number - 1]
        probabilities = tuple(float(p) for p in f.get("probabilities") or ())
        field_result = AIResult(
            classes=result.classes,
            display_names=result.display_names,
            probabilities=probabilities,
            predicted=str(f.get("predicted") or ""),
            conformal_set=(),
            referred=bool(f.get("referred")),
            reasons=tuple(f.get("reasons") or ()),
            reason_texts=(),
            model_name=result.model_name,
            model_version=result.model_version,
            model_sha256=result.model_sha256,
            cam=None,
        )
        box = tuple(int(v) for v in f["box"])
        examined[number] = SlideFinding(box, f.get("z"), field_result)  # type: ignore[arg-type]
    document = hd.sr.Comprehensive3DSR if frame.frame_of_reference_uid else hd.sr.ComprehensiveSR
    groups = examined_field_groups(source, frame, result, examined, diagnostic)
    return {"regions": groups, "document": document}

"""Store records turned into what the worklist and case pages show."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from cds_daemon.common.vocabulary import DECISIONS, REASONS, WorklistStatus
from cds_daemon.review.jobs import age_text
from cds_daemon.review.service import Labels, ReviewError, rebuild_ai_result
from cds_daemon.store import Decision, Store, WorklistItem
from cds_daemon.web.imaging import Header, read_header

REASON_LABELS = {str(reason): info.label for reason, info in REASONS.items()}
DECISION_LABELS = {str(decision): info.label for decision, info in DECISIONS.items()}
PRIORITY_LABELS = {1: "Urgent", 2: "High", 3: "Indeterminate", 4: "Uncertain", 5: "Low confidence"}
STATUS_LABELS = {
    WorklistStatus.OPEN: "Open",
    WorklistStatus.IN_REVIEW: "In review",
    WorklistStatus.ESCALATED: "Escalated",
    WorklistStatus.DONE: "Done",
}
SORTS = {"priority": "Priority", "oldest": "Oldest first", "newest": "Newest first"}


def reason_label(code: str) -> str:
    return REASON_LABELS.get(code, code.replace("_", " ").capitalize())


def _header(store: Store, uid: str) -> Header | None:
    instance = store.get_instance(uid)
    if instance is None or not instance.on_disk:
        return None
    try:
        return read_header(instance.spool_path)
    except (OSError, ValueError):
        return None


@dataclass(frozen=True)
class Row:
    """One case in the worklist table."""

    item: WorklistItem
    header: Header | None
    ai_classes: tuple[str, ...]
    reasons: tuple[str, ...]
    age: str

    @property
    def priority_label(self) -> str:
        return PRIORITY_LABELS.get(self.item.priority, "Routine")

    def matches(self, query: str) -> bool:
        q = query.strip().lower()
        if not q:
            return True
        h = self.header
        fields = [self.item.accession_number or "", str(self.item.id)]
        if h is not None:
            fields += [h.patient_name, h.patient_id, h.accession, h.specimen]
        return any(q in f.lower() for f in fields)


def worklist_rows(store: Store, labels: Labels, items: list[WorklistItem]) -> list[Row]:
    now = datetime.now(UTC)
    rows = []
    for item in items:
        classes: list[str] = []
        for uid in item.images:
            prediction = store.get_prediction(uid)
            name = labels.short(prediction.predicted if prediction else None)
            if name not in classes:
                classes.append(name)
        reasons = tuple(dict.fromkeys(reason_label(r) for r in item.reasons))
        header = _header(store, item.images[0]) if item.images else None
        rows.append(Row(item, header, tuple(classes), reasons, age_text(item.created_at, now)))
    return rows


def sort_rows(rows: list[Row], sort: str) -> list[Row]:
    if sort == "oldest":
        return sorted(rows, key=lambda r: r.item.created_at)
    if sort == "newest":
        return sorted(rows, key=lambda r: r.item.created_at, reverse=True)
    return sorted(rows, key=lambda r: (r.item.priority, r.item.created_at))


@dataclass(frozen=True)
class Probability:
    code: str
    name: str
    detail: str
    value: float
    predicted: bool
    in_set: bool


@dataclass(frozen=True)
class DecisionView:
    reviewer: str
    decision: str
    final_class: str
    comment: str | None
    decided_at: str


@dataclass
class ImagePanel:
    """Everything the case view shows about one image."""

    uid: str
    index: int
    header: Header | None
    decided: bool
    predicted: str = ""
    predicted_name: str = "—"
    predicted_detail: str = ""
    confidence: float | None = None
    probabilities: list[Probability] = field(default_factory=list)
    conformal_set: list[str] = field(default_factory=list)
    reason_texts: list[str] = field(default_factory=list)
    members: list[tuple[str, str, float | None]] = field(default_factory=list)
    model: str = ""
    model_sha: str = ""
    quality: dict[str, Any] = field(default_factory=dict)
    ood: dict[str, Any] = field(default_factory=dict)
    decisions: list[DecisionView] = field(default_factory=list)
    error: str | None = None
    not_analysed: bool = False  # the AI could not analyse it: no class to confirm, reason_texts say why


def _member(labels: Labels, detail: dict[str, Any], key: str) -> tuple[str, str, float | None]:
    member = detail.get(key) or {}
    label = member.get("label")
    probs = member.get("probabilities") or []
    p = probs[labels.classes.index(label)] if label in labels.classes and len(probs) == len(labels.classes) else None
    return key.capitalize(), labels.short(label), p


def image_panel(store: Store, labels: Labels, item: WorklistItem, uid: str, decisions: list[Decision]) -> ImagePanel:
    panel = ImagePanel(uid=uid, index=item.images.index(uid), header=_header(store, uid), decided=uid in item.decided)
    panel.decisions = [
        DecisionView(
            d.reviewer,
            DECISION_LABELS.get(d.decision, d.decision),
            labels.display(d.final_class) if d.final_class else "—",
            d.comment,
            d.decided_at[:16].replace("T", " ") + " UTC",
        )
        for d in decisions
        if d.sop_instance_uid == uid
    ]
    prediction = store.get_prediction(uid)
    if prediction is None:
        panel.error = "No AI result is stored for this image."
        return panel
    try:
        result = rebuild_ai_result(prediction, labels)
    except ReviewError as exc:
        panel.error = str(exc)
        return panel
    detail = prediction.detail
    panel.reason_texts = list(result.reason_texts) or [reason_label(r) for r in result.reasons]
    if not result.analysed:
        panel.not_analysed = True
        panel.model = f"{result.model_name} {result.model_version}"
        return panel
    panel.predicted = result.predicted
    panel.predicted_name = labels.short(result.predicted)
    panel.predicted_detail = labels.detail(result.predicted)
    panel.confidence = detail.get("confidence")
    panel.probabilities = [
        Probability(
            code, labels.short(code), labels.detail(code), p, code == result.predicted, code in result.conformal_set
        )
        for code, p in zip(labels.classes, result.probabilities, strict=True)
    ]
    panel.conformal_set = [labels.short(c) for c in result.conformal_set]
    panel.members = [_member(labels, detail, "basic"), _member(labels, detail, "premium")]
    panel.model = f"{result.model_name} {result.model_version}"
    panel.model_sha = result.model_sha256[:12]
    panel.quality = dict(detail.get("quality") or {})
    panel.ood = dict(detail.get("ood") or {})
    return panel

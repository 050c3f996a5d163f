"""What the store hands out and takes in: plain frozen records, no SQL."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cds_daemon.common.vocabulary import ROUTINE_PRIORITY


class StateError(Exception):
    """An instance was asked to make a transition the state machine does not allow."""


class LostClaim(StateError):
    """A node's claim on an instance ran out and another node took the work over: its result is dropped
    (the other node makes the same objects, with the same UIDs)."""


@dataclass(frozen=True)
class Instance:
    id: int
    sop_instance_uid: str
    sop_class_uid: str
    study_instance_uid: str | None
    series_instance_uid: str | None
    accession_number: str | None
    transfer_syntax_uid: str
    calling_ae: str
    peer_address: str
    spool_path: str
    size_bytes: int
    sha256: str
    state: str
    state_reason: str | None
    attempts: int
    received_at: str
    updated_at: str
    purged_at: str | None = None
    case_key: str | None = None
    claimed_by: str | None = None  # the node processing it, while ``processing``
    lease_until: str | None = None
    slide_key: str | None = None  # a level of a whole slide (see store.slides)

    @property
    def on_disk(self) -> bool:
        """The received file is still there: not purged by retention, not removed by hand."""
        return self.purged_at is None and Path(self.spool_path).is_file()


@dataclass(frozen=True)
class OutputObject:
    """A DICOM object made for a source instance, waiting in the outbox."""

    kind: str
    object_uid: str
    sop_class_uid: str
    path: str


@dataclass(frozen=True)
class OutboxItem:
    id: int
    sop_instance_uid: str
    kind: str
    object_uid: str
    sop_class_uid: str
    destination: str
    path: str
    state: str
    attempts: int
    next_attempt_at: str
    last_error: str | None
    commit_txn: str | None = None  # stored, waiting for the PACS's storage commitment report


@dataclass(frozen=True)
class PredictionRecord:
    model_name: str
    model_version: str
    model_sha256: str
    predicted: str | None
    probabilities: list[float] | None
    referred: bool
    reasons: list[str]
    detail: dict[str, Any]
    priority: int = ROUTINE_PRIORITY  # worklist priority when referred (triage decides it)
    triage_mode: str | None = None  # the mode that decided it: shadow (reviews enter the pool), live, bundle
    rule_id: int | None = None  # the site rule in force (live mode)
    finalisation_confidence: float | None = None  # what the finalisation threshold applies to
    candidate: bool | None = None  # nothing but the threshold (or shadow mode) referred it


@dataclass(frozen=True)
class WorklistItem:
    id: int
    case_key: str
    study_instance_uid: str | None
    accession_number: str | None
    priority: int
    status: str
    assignee: str | None
    created_at: str
    updated_at: str
    escalated_at: str | None
    images: tuple[str, ...]  # source SOPInstanceUIDs
    decided: tuple[str, ...]  # those with a decision
    reasons: tuple[str, ...]  # union of the images' referral reasons


@dataclass(frozen=True)
class Decision:
    id: int
    worklist_id: int
    sop_instance_uid: str
    reviewer: str
    decision: str
    ai_class: str | None
    final_class: str | None
    comment: str | None
    review_sr_uid: str | None
    decided_at: str
    sequence: int | None = None  # 1, 2, ... per image: the review SR's instance number
    fields_viewed: str | None = None  # a slide's: JSON list of the field numbers the reviewer opened
    diagnostic_field: int | None = None  # a slide's: the field the reviewer marked as diagnostic


@dataclass(frozen=True)
class User:
    username: str
    password_hash: str
    role: str
    full_name: str
    created_at: str
    disabled: bool


@dataclass(frozen=True)
class NewInstance:
    """What ingest knows about a received object once its file is durable."""

    sop_instance_uid: str
    sop_class_uid: str
    study_instance_uid: str | None
    series_instance_uid: str | None
    accession_number: str | None
    transfer_syntax_uid: str
    calling_ae: str
    peer_address: str
    spool_path: str
    size_bytes: int
    sha256: str
    case_key: str  # the worklist case this image belongs to (review.cases decides)
    slide_key: str | None = None  # a whole-slide level: the slide (series / Frame of Reference) it is part of


@dataclass(frozen=True)
class PoolRow:
    """One image reviewed in shadow mode: the site calibration pool a site rule is certified on."""

    id: int
    model_sha256: str
    sop_instance_uid: str
    decision_id: int
    confidence: float
    candidate: bool
    ai_class: str
    final_class: str | None  # None: non-diagnostic (counts as an error of the AI)
    added_at: str

    @property
    def error(self) -> bool:
        return self.final_class != self.ai_class


@dataclass(frozen=True)
class SiteRule:
    """A finalisation rule certified on a site's own pool, bound to one bundle."""

    id: int
    model_sha256: str
    alpha: float
    delta: float
    threshold: float | None
    n_pool: int
    n_candidates: int
    n_finalised: int
    errors: int
    upper_bound: float
    method: str
    pool_max_id: int
    certified_by: str
    certified_at: str
    active: bool
    activated_by: str | None
    activated_at: str | None
    deactivated_by: str | None
    deactivated_at: str | None
    deactivation_reason: str | None
    reference: dict[str, Any] | None = None  # the pool's predicted-class mix and OOD rate: drift is measured from it


@dataclass(frozen=True)
class TriageEvent:
    """A change of what is finalised: certified, activated, deactivated, fallback."""

    id: int
    at: str
    model_sha256: str
    rule_id: int | None
    event: str
    actor: str
    reason: str | None

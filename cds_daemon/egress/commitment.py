"""Storage Commitment Push Model (PS3.4 Annex J), the SCU side: what egress asks and what the PACS answers.

After a batch is stored, egress sends an N-ACTION (Request Storage Commitment) with a new
Transaction UID listing the objects. The PACS answers later with an N-EVENT-REPORT, on that
association if it is still open or, as most PACS (Orthanc among them) do, on a new association
to our listener. Event type 1: every listed object is committed; 2: the Failed SOP Sequence
names those that are not, with a reason. Only then does an object count as delivered.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from pydicom import Dataset
from pydicom.uid import generate_uid
from pynetdicom.sop_class import (  # type: ignore[attr-defined]  # made at import
    StorageCommitmentPushModel,
    StorageCommitmentPushModelInstance,
)

STORAGE_COMMITMENT_PUSH = StorageCommitmentPushModel
#: The well-known SOP Instance of the Storage Commitment Push Model.
STORAGE_COMMITMENT_INSTANCE = StorageCommitmentPushModelInstance
REQUEST_ACTION = 1
EVENT_ALL_COMMITTED = 1
EVENT_SOME_FAILED = 2

#: Failure Reason (0008,1197) values, PS3.3 C.14.1.1.
FAILURE_REASONS = {
    0x0110: "processing failure",
    0x0112: "no such object instance",
    0x0213: "resource limitation",
    0x0122: "referenced SOP class not supported",
    0x0119: "class / instance conflict",
    0x0131: "duplicate transaction UID",
}


@dataclass(frozen=True)
class CommitmentReport:
    transaction_uid: str
    committed: tuple[str, ...]
    failed: dict[str, str] = field(default_factory=dict)  # SOP Instance UID -> reason


def new_transaction_uid() -> str:
    return generate_uid(prefix=None)


def request_dataset(transaction_uid: str, objects: Iterable[tuple[str, str]]) -> Dataset:
    """N-ACTION Action Information for (SOP Class UID, SOP Instance UID) pairs."""
    ds = Dataset()
    ds.TransactionUID = transaction_uid
    refs = []
    for sop_class, sop_instance in objects:
        ref = Dataset()
        ref.ReferencedSOPClassUID = sop_class
        ref.ReferencedSOPInstanceUID = sop_instance
        refs.append(ref)
    if not refs:
        raise ValueError("a storage commitment request needs at least one object")
    ds.ReferencedSOPSequence = refs
    return ds


def parse_report(event_type: int, ds: Dataset) -> CommitmentReport:
    """The PACS's N-EVENT-REPORT; raises ValueError when it is not a storage commitment result."""
    if event_type not in (EVENT_ALL_COMMITTED, EVENT_SOME_FAILED):
        raise ValueError(f"event type {event_type} is not a storage commitment result")
    txn = str(ds.get("TransactionUID", "") or "")
    if not txn:
        raise ValueError("the report has no Transaction UID")
    committed = tuple(str(r.ReferencedSOPInstanceUID) for r in ds.get("ReferencedSOPSequence", []))
    failed: dict[str, str] = {}
    for item in ds.get("FailedSOPSequence", []):
        code = int(item.get("FailureReason", 0x0110))
        failed[str(item.ReferencedSOPInstanceUID)] = f"not committed: {FAILURE_REASONS.get(code, f'0x{code:04X}')}"
    return CommitmentReport(txn, committed, failed)

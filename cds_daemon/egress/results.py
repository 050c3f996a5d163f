"""What sending one object came to, whatever the protocol (C-STORE or STOW-RS), and reading a batch to send."""

from __future__ import annotations

from dataclasses import dataclass

import pydicom

from cds_daemon.store import OutboxItem


@dataclass(frozen=True)
class SendOutcome:
    item_id: int
    ok: bool
    detail: str
    permanent: bool = False  # the peer will never take it (HL7 AR): dead-lettered without retries


def read_batch(items: list[OutboxItem]) -> tuple[dict[int, pydicom.Dataset], list[SendOutcome]]:
    """The batch's files by outbox id, and a failed outcome for each one that cannot be read."""
    datasets: dict[int, pydicom.Dataset] = {}
    outcomes: list[SendOutcome] = []
    for item in items:
        try:
            datasets[item.id] = pydicom.dcmread(item.path)
        except (OSError, pydicom.errors.InvalidDicomError) as exc:
            outcomes.append(SendOutcome(item.id, False, f"cannot read {item.path}: {exc}"))
    return datasets, outcomes

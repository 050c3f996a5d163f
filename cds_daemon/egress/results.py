"""What sending one object came to, whatever the protocol (C-STORE or STOW-RS)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class SendOutcome:
    item_id: int
    ok: bool
    detail: str

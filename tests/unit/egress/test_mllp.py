"""MLLP out, against hl7apy's MLLP server: what each answer (or none) comes to."""

from __future__ import annotations

import datetime

from cds_daemon.common.config import Destination
from cds_daemon.egress.hl7_message import control_id, oru_r01
from cds_daemon.egress.mllp import check, exchange
from cds_daemon.egress.sr_content import Coded, SRContent
from tests.support.hl7peer import LISPeer
from tests.support.processes import free_port


def _message(uid: str) -> tuple[str, str]:
    content = SRContent(uid, "1.2.840.10008.5.1.4.1.1.88.33", "1.2.3", False, "20261202102900", patient_id="P1")
    content.category = Coded("21594007", "SCT", "Malignant")
    destination = Destination(name="lis", kind="hl7", host="127.0.0.1", port=1)
    return control_id(uid), oru_r01(content, destination, scope="image", now=datetime.datetime(2026, 12, 2))


def test_each_answer_and_its_absence() -> None:
    peer = LISPeer(script=["AA", "AE", "AR", None]).start()
    try:
        lis = Destination(name="lis", kind="hl7", host="127.0.0.1", port=peer.port)
        assert check(lis, 2).ok
        acks = exchange(lis, [_message(f"2.25.{n}") for n in range(4)], timeout_s=1.0)
        assert [(a.code, a.accepted, a.rejected) for a in acks[:3]] == [
            ("AA", True, False),
            ("AE", False, False),
            ("AR", False, True),
        ]
        assert acks[3].code is None and "no ACK within 1 s" in acks[3].text
        assert [r.control_id for r in peer.received] == [control_id(f"2.25.{n}") for n in range(4)]
        assert not peer.invalid
    finally:
        peer.stop()
    down = Destination(name="lis", kind="hl7", host="127.0.0.1", port=free_port())
    (ack,) = exchange(down, [_message("2.25.9")], timeout_s=1.0)
    assert ack.code is None and ack.text.startswith("cannot connect")
    assert not check(down, 1).ok

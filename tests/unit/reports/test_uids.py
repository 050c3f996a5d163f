from __future__ import annotations

import pytest
from pydicom.uid import UID

from cds_daemon.reports.uids import derived_uid, device_uid

SOURCE = "1.2.826.0.1.3680043.8.498.1"


def test_same_input_same_uid() -> None:
    assert derived_uid(SOURCE, "0.1.0", "sr") == derived_uid(SOURCE, "0.1.0", "sr")


@pytest.mark.parametrize(
    ("source", "version", "kind"),
    [
        (SOURCE + "1", "0.1.0", "sr"),
        (SOURCE, "0.1.1", "sr"),
        (SOURCE, "0.1.0", "sc"),
        (SOURCE, "0.1.0", "sr-series"),
    ],
)
def test_any_change_gives_another_uid(source: str, version: str, kind: str) -> None:
    assert derived_uid(source, version, kind) != derived_uid(SOURCE, "0.1.0", "sr")


def test_uids_are_valid_and_distinct_per_kind() -> None:
    kinds = ["sr", "sc", "kos", "sr-series", "sc-series", "kos-series", "review-sr-series", "finding"]
    kinds += ["review-sr:1", "review-sr:2", "review-sr:10"]
    uids = [derived_uid(SOURCE, "0.1.0+demo", k) for k in kinds]
    assert len(set(uids)) == len(kinds)
    for uid in uids:
        assert UID(uid).is_valid
        assert uid.startswith("2.25.")
        assert len(uid) <= 64


@pytest.mark.parametrize("kind", ["SR", "heatmap", "review-sr:0", "review-sr:", "review-sr:x", "sr "])
def test_unknown_kind_is_refused(kind: str) -> None:
    with pytest.raises(ValueError, match="kind"):
        derived_uid(SOURCE, "0.1.0", kind)


def test_empty_inputs_are_refused() -> None:
    with pytest.raises(ValueError):
        derived_uid("", "0.1.0", "sr")
    with pytest.raises(ValueError):
        derived_uid(SOURCE, "", "sr")


def test_device_uid_is_stable_per_model() -> None:
    one = device_uid("Thyroid CDS", "ThyroidEffi", "a" * 64)
    assert one == device_uid("Thyroid CDS", "ThyroidEffi", "a" * 64)
    assert one != device_uid("Thyroid CDS", "Other", "a" * 64)
    assert one != device_uid("Thyroid CDS", "ThyroidEffi", "b" * 64)  # retrained: a new device UID
    assert UID(one).is_valid

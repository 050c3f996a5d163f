"""TID 1004 device observer: the daemon running one model, shared by the AI SR and the KOS."""

from __future__ import annotations

import highdicom as hd
from pydicom.sr.codedict import codes as std

from cds_daemon.reports.result import AIResult
from cds_daemon.reports.uids import device_uid

_LO_MAX = 64


def device_observer(result: AIResult, manufacturer: str, uid: str | None = None) -> hd.sr.ObserverContext:
    """Observer context naming the device; its UID is stable per trained model (bundle hash) unless given."""
    return hd.sr.ObserverContext(
        observer_type=std.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=uid or device_uid(manufacturer, result.model_name, result.model_sha256),
            name=f"{manufacturer} {result.model_name}"[:_LO_MAX],
            manufacturer_name=manufacturer[:_LO_MAX],
            model_name=result.model_name[:_LO_MAX],
        ),
    )

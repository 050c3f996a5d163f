"""Structured JSON logging to stdout (journald picks it up).

Log lines never carry patient data, by construction:
- our events pass identifiers of objects (UIDs, AE titles, codes), never values read from a data set;
  an exception is logged as its type and a fixed event name, its text goes to the database only
  (where the review page shows it to logged-in users);
- a processor drops any key that looks like a patient attribute, so a mistake cannot leak one;
- the libraries' messages (pydicom, highdicom, pynetdicom, Python warnings) can quote the values they
  could not parse ("Invalid value for DA: '31.01.1970'"): every quoted literal in them is replaced by
  '...', and their tracebacks by the exception's type.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import MutableMapping
from typing import Any, TextIO

import structlog

_PHI_KEYS = frozenset(
    {
        "patient_name",
        "patientname",
        "patient_id",
        "patientid",
        "patient_birth_date",
        "patientbirthdate",
        "birth_date",
        "other_patient_ids",
        "patient_address",
    }
)


_QUOTED = re.compile(r"""'[^']*'|"[^"]*"|b'[^']*'""")


def _drop_phi(_logger: Any, _method: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    for key in [k for k in event if k.lower() in _PHI_KEYS]:
        event[key] = "[removed]"
    return event


def _scrub_foreign(_logger: Any, _method: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """A library's log record: quoted literals out of the message, the traceback reduced to its type."""
    message = event.get("event")
    if isinstance(message, str):
        event["event"] = _QUOTED.sub("'...'", message)[:300]
    exc_info = event.pop("exc_info", None)
    if exc_info:
        exc = sys.exc_info()[1] if exc_info is True else (exc_info[1] if isinstance(exc_info, tuple) else exc_info)
        event["error_type"] = type(exc).__name__ if exc is not None else "unknown"
    return event


def configure_logging(level: str = "info", stream: TextIO | None = None) -> None:
    """JSON lines on stdout, our events and the libraries' stdlib logging alike.

    Everything goes through one stdlib handler, so lines written by different threads
    never interleave (two writers with two locks would).
    """
    numeric = logging.getLevelName(level.upper())
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.stdlib.LoggerFactory(),
        cache_logger_on_first_use=False,
    )
    handler = logging.StreamHandler(stream or sys.stdout)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                _drop_phi,
                structlog.processors.format_exc_info,
                structlog.processors.JSONRenderer(),
            ],
            foreign_pre_chain=[*shared, structlog.stdlib.add_logger_name, _scrub_foreign],
        )
    )
    logging.captureWarnings(True)  # pydicom's warnings too go through the scrubbing handler, not raw stderr
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(numeric)
    # pynetdicom's INFO lines are per-PDU chatter, apscheduler's a line per job run (every
    # second for egress), highdicom's a line per copied module; our own events cover what
    # operators need.
    for chatty in ("pynetdicom", "apscheduler", "highdicom"):
        logging.getLogger(chatty).setLevel(max(numeric, logging.WARNING))


def get_logger(name: str) -> Any:
    """A bound logger whose lines carry ``component=name``."""
    return structlog.get_logger(component=name)

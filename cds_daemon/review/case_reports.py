"""The case-level result: for each case past its quiet period, the case SR (``reports.case_sr``) from the
stored results of its images, written durably and queued for the destinations. Runs as a
once-per-cluster job; a case changed while its SR was being made is simply due again."""

from __future__ import annotations

from collections.abc import Callable

import pydicom

from cds_daemon.common.clock import timestamp_in
from cds_daemon.common.config import Settings
from cds_daemon.common.vocabulary import OutputKind
from cds_daemon.ops.logs import get_logger
from cds_daemon.reports.case_sr import CaseMember, build_case_sr, case_category
from cds_daemon.reports.files import write_objects
from cds_daemon.review.service import Labels, labels_for, rebuild_ai_result
from cds_daemon.store import CaseReport, Store
from cds_daemon.store.spool import Spool

log = get_logger("cases")
RETRY_S = 300.0  # a case whose SR could not be made is tried again this much later


def write_due_case_reports(store: Store, settings: Settings, *, on_queued: Callable[[], None] = lambda: None) -> int:
    """Write the case SR of every case that is due; returns how many were written."""
    if settings.model_bundle is None:
        return 0
    labels = labels_for(settings)
    results = Spool(settings.storage.results_dir, node=settings.spool_node)
    destinations = [d.name for d in settings.destinations]
    written = 0
    for case in store.due_cases():
        try:
            written += _write(store, case, labels, results, destinations)
        except Exception as exc:  # one unreadable case must not stop the others; it is tried again later
            log.error("case_report_failed", error_type=type(exc).__name__, version=case.version + 1)
            store.postpone_case(case.case_key, timestamp_in(RETRY_S))
    if written:
        on_queued()
    return written


def _write(store: Store, case: CaseReport, labels: Labels, results: Spool, destinations: list[str]) -> int:
    members = []
    for instance in store.case_members(case.case_key):
        prediction = store.get_prediction(instance.sop_instance_uid)
        if prediction is None or not instance.on_disk:
            continue  # its files were purged by retention: the others still make the case
        header = pydicom.dcmread(instance.spool_path, stop_before_pixels=True)
        members.append(CaseMember(header, rebuild_ai_result(prediction, labels)))
    if not members:
        store.postpone_case(case.case_key, None)  # nothing left to report on
        return 0
    sr = build_case_sr(case.case_key, members, case.version + 1)
    (out,) = write_objects(results, [(OutputKind.CASE_SR, sr)])
    anchor = str(members[0].header.SOPInstanceUID)
    if not store.record_case_report(case, out, len(members), anchor, destinations, actor="case-reports"):
        return 0
    category, probability = case_category(members)
    log.info(
        "case_reported",
        case_sr_uid=out.object_uid,
        version=case.version + 1,
        images=len(members),
        category=category,
        probability=None if probability is None else round(probability, 4),
        referred=any(m.result.referred or not m.result.analysed for m in members),
    )
    return 1

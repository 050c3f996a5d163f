"""DICOM result objects written back into the source study: AI SR, heatmap SC, review KOS, review SR."""

from cds_daemon.reports.heatmap import build_heatmap_sc, render_heatmap, render_overlay
from cds_daemon.reports.kos import build_review_kos
from cds_daemon.reports.result import AIResult
from cds_daemon.reports.sr import build_ai_sr, build_review_sr
from cds_daemon.reports.uids import derived_uid

__all__ = [
    "AIResult",
    "build_ai_sr",
    "build_heatmap_sc",
    "build_review_kos",
    "build_review_sr",
    "derived_uid",
    "render_heatmap",
    "render_overlay",
]

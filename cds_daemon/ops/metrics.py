"""Prometheus metrics: in-process counters and histograms, plus gauges read from the store at scrape time."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from cds_daemon.store import Store

REGISTRY = CollectorRegistry(auto_describe=True)

RECEIVED = Counter("cds_instances_received", "Instances acknowledged (stored durably)", registry=REGISTRY)
DUPLICATES = Counter("cds_instances_duplicate", "Resends of known SOPInstanceUIDs", registry=REGISTRY)
REJECTED = Counter(
    "cds_stores_rejected",
    "Associations and C-STOREs refused, by status and code",
    ["status", "code"],
    registry=REGISTRY,
)
STORE_SECONDS = Histogram(
    "cds_store_handler_seconds",
    "C-STORE handler time until the response (durable write included)",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
    registry=REGISTRY,
)
INFERENCE_SECONDS = Histogram(
    "cds_inference_seconds",
    "Model time per image (13 views, ensemble, CAM)",
    buckets=(0.05, 0.1, 0.15, 0.2, 0.3, 0.5, 1, 2, 5),
    registry=REGISTRY,
)
HELPER_RESTARTS = Counter(
    "cds_helper_restarts", "Times the worker's helper process died and was started again", registry=REGISTRY
)
PIPELINE_SECONDS = Histogram(
    "cds_pipeline_seconds",
    "Per image, from claim to recorded: decode, quality, model, reports, durable outputs",
    buckets=(0.1, 0.2, 0.3, 0.5, 1, 2, 5, 10),
    registry=REGISTRY,
)


MONITOR_ALERT = Gauge(
    "cds_monitor_alert",
    "1 while a production check fails (audit_bound, site_rule_audit, ood_drift, class_mix_drift), else 0",
    ["kind"],
    registry=REGISTRY,
)
TRIAGE_FINALISING = Gauge(
    "cds_triage_finalising",
    "1 while images may be finalised without review (live with an active site rule, or bundle mode), else 0",
    ["configured", "mode"],
    registry=REGISTRY,
)
TRIAGE_FALLBACKS = Counter(
    "cds_triage_fallbacks",
    "Site rules withdrawn by the fail-safe (audit or drift alarm): back to shadow mode",
    registry=REGISTRY,
)
AUDIT_UPPER_BOUND = Gauge(
    "cds_audit_error_upper_bound",
    "Upper confidence bound of the error among finalised images, from the blind audit sample",
    ["model_version"],
    registry=REGISTRY,
)


class StoreCollector(Collector):
    """Gauges computed from the store and the disk when Prometheus scrapes."""

    def __init__(self, store: Store, data_dir: Path, node_id: str = "local") -> None:
        self.store = store
        self.data_dir = data_dir
        self.node_id = node_id

    def collect(self) -> Iterator[GaugeMetricFamily]:
        """Store-wide gauges (the same on every node of a cluster), and this node's id and database link."""
        info = GaugeMetricFamily("cds_node_info", "This node (one per daemon process)", labels=["node_id"])
        info.add_metric([self.node_id], 1)
        yield info
        down = self.store.ping()
        yield GaugeMetricFamily("cds_store_up", "1 when the database answers", value=0 if down else 1)
        if down:
            return
        states = GaugeMetricFamily("cds_instances", "Instances by state", labels=["state"])
        for state, n in self.store.counts_by_state().items():
            states.add_metric([state], n)
        yield states
        yield GaugeMetricFamily(
            "cds_slides_waiting", "Whole slides in their quiet period", value=self.store.slides_waiting()
        )
        outbox = GaugeMetricFamily("cds_outbox_objects", "Outbox objects by state", labels=["state"])
        for state, n in self.store.outbox_counts().items():
            outbox.add_metric([state], n)
        yield outbox
        worklist = GaugeMetricFamily("cds_worklist_items", "Review worklist items by status", labels=["status"])
        for status, n in self.store.worklist_counts().items():
            worklist.add_metric([status], n)
        yield worklist
        rejections = GaugeMetricFamily(
            "cds_rejections", "Refused stores and associations (all time) by status and code", labels=["status", "code"]
        )
        for key, n in self.store.rejection_counts().items():
            status, code = key.split(" ", 1)
            rejections.add_metric([status, code], n)
        yield rejections
        rates = self.store.referral_stats()
        yield GaugeMetricFamily(
            "cds_referral_rate", "Share of analysed images referred for review", value=rates["rate"]
        )
        mix = GaugeMetricFamily("cds_predicted_class", "Analysed images by predicted class", labels=["class"])
        for cls, n in rates["classes"].items():
            mix.add_metric([cls], n)
        yield mix
        usage = shutil.disk_usage(self.data_dir)
        yield GaugeMetricFamily(
            "cds_disk_free_bytes", "Free bytes on the data directory's file system", value=usage.free
        )
        yield GaugeMetricFamily(
            "cds_disk_used_ratio", "Used share of the data file system", value=usage.used / usage.total
        )

"""Configuration: one TOML file overridden by ``CDS_*`` environment variables.

Precedence (highest first): keyword arguments, environment (``CDS_LISTENER__PORT=11113``),
the TOML file (``--config`` or ``CDS_CONFIG``), embedded defaults. The embedded defaults run
the demo on loopback without any file.
"""

from __future__ import annotations

import ipaddress
import os
import re
import socket
from contextvars import ContextVar
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from cds_daemon.common.vocabulary import WHOLE_SLIDE_SOP_CLASS, TriageMode

_AE_RE = re.compile(r"^[\x20-\x5b\x5d-\x7e]{1,16}$")
_config_file: ContextVar[Path | None] = ContextVar("cds_config_file", default=None)


def _check_ae(value: str) -> str:
    stripped = value.strip()
    if not stripped or not _AE_RE.match(value) or len(value) > 16:
        raise ValueError("an AE title is 1-16 printable ASCII characters, no backslash")
    return stripped


AETitle = Annotated[str, AfterValidator(_check_ae)]


def _check_ip(value: str) -> str:
    ipaddress.ip_address(value)
    return value


#: An address to listen on: an IP address (0.0.0.0 or :: for all).
BindAddress = Annotated[str, AfterValidator(_check_ip)]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class AllowedCaller(_Section):
    """A calling AE title and the source networks it may connect from."""

    ae_title: AETitle
    addresses: list[str] = Field(default_factory=lambda: ["127.0.0.1/32", "::1/128"])
    tls_common_name: str | None = Field(
        None,
        description="with TLS: the common name the caller's certificate must carry for this AE title "
        "(empty: any certificate the CA signed)",
    )

    @field_validator("addresses")
    @classmethod
    def _networks(cls, values: list[str]) -> list[str]:
        if not values:
            raise ValueError("list at least one address or network (e.g. 10.1.2.0/24)")
        for v in values:
            ipaddress.ip_network(v, strict=False)
        return values

    def permits(self, address: str) -> bool:
        """True if ``address`` lies in one of the configured networks."""
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
            ip = ip.ipv4_mapped
        return any(ip in ipaddress.ip_network(n, strict=False) for n in self.addresses)


class TLSSettings(_Section):
    """DICOM TLS on the listener: we present ``cert_file``; mutual TLS verifies callers against ``ca_file``."""

    enabled: bool = False
    cert_file: Path | None = Field(None, description="our certificate (PEM), chain after it")
    key_file: Path | None = Field(None, description="its private key (PEM, unencrypted)")
    ca_file: Path | None = Field(None, description="CA bundle used to verify the peer")
    require_peer_cert: bool = Field(True, description="mutual TLS: the peer must present a certificate")

    @model_validator(mode="after")
    def _files_when_enabled(self) -> TLSSettings:
        if self.enabled:
            missing = [n for n in ("cert_file", "key_file") if getattr(self, n) is None]
            if missing:
                raise ValueError(f"TLS is enabled but {', '.join(missing)} is not set")
            if self.require_peer_cert and self.ca_file is None:
                raise ValueError("require_peer_cert needs ca_file")
        return self


class DestinationTLSSettings(_Section):
    """DICOM TLS towards a destination: its certificate is always verified against ``ca_file``.

    ``cert_file`` and ``key_file`` are our client certificate, for a PACS that requires mutual TLS;
    leave both empty when it does not.
    """

    enabled: bool = False
    cert_file: Path | None = Field(None, description="our client certificate (PEM), for mutual TLS")
    key_file: Path | None = Field(None, description="its private key (PEM, unencrypted)")
    ca_file: Path | None = Field(None, description="CA bundle that the destination's certificate must verify against")

    @model_validator(mode="after")
    def _files_when_enabled(self) -> DestinationTLSSettings:
        if self.enabled:
            if self.ca_file is None:
                raise ValueError("TLS is enabled but ca_file (to verify the destination) is not set")
            if (self.cert_file is None) != (self.key_file is None):
                raise ValueError("set both cert_file and key_file (mutual TLS) or neither")
        return self


class ListenerSettings(_Section):
    """The DICOM listener (C-ECHO, C-STORE SCP)."""

    ae_title: AETitle = "THYROID_CDS"
    bind_address: BindAddress = "127.0.0.1"
    port: int = Field(11112, ge=1, le=65535)
    allowed_callers: list[AllowedCaller] = Field(
        default_factory=lambda: [AllowedCaller(ae_title="STORESCU"), AllowedCaller(ae_title="ORTHANC")]
    )
    max_associations: int = Field(
        16, ge=1, le=512, description="open connections at once (each is two threads), associations or not"
    )
    max_connections_per_address: int = Field(4, ge=1, le=512, description="open connections from one address")
    max_dataset_mb: int = Field(
        256, ge=1, description="encoded data set of one message, and a deflated one once inflated; more: refused"
    )
    max_pdu_size: int = Field(131072, ge=4096, le=2**26)
    acse_timeout_s: float = Field(30.0, gt=0)
    dimse_timeout_s: float = Field(60.0, gt=0)
    network_timeout_s: float = Field(60.0, gt=0)
    max_image_pixels: int = Field(64_000_000, ge=1, description="rows x columns x frames above this: 0xA900")
    max_dataset_mb_by_sop_class: dict[str, int] = Field(
        default_factory=lambda: {WHOLE_SLIDE_SOP_CLASS: 8192},
        description="max_dataset_mb for these SOP classes (a whole-slide level is received to disk, never held)",
    )
    max_slide_pixels: int = Field(
        20_000_000_000, ge=1, description="a whole-slide level's total pixel matrix x focal planes above this: 0xA900"
    )
    stop_grace_s: float = Field(20.0, ge=0, description="on SIGTERM, wait this long for open associations")
    tls: TLSSettings = Field(default_factory=TLSSettings)

    @field_validator("max_dataset_mb_by_sop_class")
    @classmethod
    def _limits(cls, v: dict[str, int]) -> dict[str, int]:
        bad = [k for k, mb in v.items() if mb < 1 or not k.replace(".", "").isdigit()]
        if bad:
            raise ValueError(f"max_dataset_mb_by_sop_class: a SOP class UID and a size >= 1 MiB, not {bad}")
        return v

    def max_dataset_mb_for(self, sop_class_uid: str) -> int:
        return self.max_dataset_mb_by_sop_class.get(sop_class_uid, self.max_dataset_mb)


HL7Name = Annotated[str, Field(min_length=1, max_length=180, pattern=r"^[^|^~\\&\r\n]+$")]


class Destination(_Section):
    """A PACS (or other archive) that receives our reports: by C-STORE (``kind = "dimse"``: AE title, host
    and port) or by STOW-RS (``kind = "dicomweb"``: the DICOMweb base URL); or a laboratory information
    system that receives the results as HL7 v2.5.1 messages over MLLP (``kind = "hl7"``: host and port), or
    a FHIR server that receives them as transactions (``kind = "fhir"``: its base URL)."""

    name: str = Field(min_length=1)
    kind: Literal["dimse", "dicomweb", "hl7", "fhir"] = "dimse"
    ae_title: AETitle | None = None
    host: str | None = Field(None, min_length=1)
    port: int | None = Field(None, ge=1, le=65535)
    url: str | None = Field(
        None, description="DICOMweb or FHIR base URL, e.g. https://pacs.example.org/dicom-web, https://ehr/fhir"
    )
    username: str | None = Field(None, description="DICOMweb basic auth user (password in password_file)")
    password_file: Path | None = Field(None, description="file holding the basic auth password")
    token_file: Path | None = Field(None, description="file holding a bearer token (instead of basic auth)")
    tls: DestinationTLSSettings = Field(default_factory=DestinationTLSSettings)
    storage_commitment: bool = Field(
        False,
        description="ask for storage commitment after each batch; an object is delivered only once committed "
        "(the PACS must know our AE title, host and port to send its report)",
    )
    sending_application: HL7Name = Field("THYROID_CDS", description="HL7: MSH-3")
    sending_facility: HL7Name = Field("CDS", description="HL7: MSH-4")
    receiving_application: HL7Name = Field("LIS", description="HL7: MSH-5")
    receiving_facility: HL7Name = Field("LAB", description="HL7: MSH-6")
    message: Literal["ORU^R01"] = Field("ORU^R01", description="HL7: the result message type")

    @model_validator(mode="after")
    def _addressed(self) -> Destination:
        if self.kind == "hl7":
            if self.host is None or self.port is None:
                raise ValueError(f"destination {self.name!r}: an HL7 destination needs host and port (MLLP)")
            if self.storage_commitment:
                raise ValueError(f"destination {self.name!r}: storage commitment is a DIMSE service")
        elif self.kind == "dimse":
            if self.ae_title is None or self.host is None or self.port is None:
                raise ValueError(f"destination {self.name!r}: a DIMSE destination needs ae_title, host and port")
        else:
            if not self.url or not self.url.startswith(("http://", "https://")):
                what = "FHIR" if self.kind == "fhir" else "DICOMweb"
                raise ValueError(f"destination {self.name!r}: a {what} destination needs url = http(s)://...")
            if self.storage_commitment:
                raise ValueError(f"destination {self.name!r}: storage commitment is a DIMSE service")
            if self.password_file is not None and self.username is None:
                raise ValueError(f"destination {self.name!r}: password_file needs username")
        return self

    @property
    def peer(self) -> tuple[str, str, int]:
        """(AE title, host, port) of a DIMSE destination."""
        if self.ae_title is None or self.host is None or self.port is None:
            raise ValueError(f"destination {self.name!r} is not a DIMSE destination")
        return self.ae_title, self.host, self.port

    @property
    def address(self) -> str:
        """Where it is, for messages: ``AE@host:port``, ``mllp://host:port`` or the URL."""
        if self.kind == "hl7":
            return f"mllp://{self.host}:{self.port}"
        return self.url or "{}@{}:{}".format(*self.peer)


class EgressSettings(_Section):
    """Sending results to the destinations (the outbox)."""

    timeout_s: float = Field(30.0, gt=0, description="connect / ACSE / DIMSE timeout per association")
    batch_size: int = Field(50, ge=1, le=1000, description="objects per association")
    max_attempts: int = Field(12, ge=1, description="after this many failed attempts: dead letter")
    retry_base_s: float = Field(2.0, gt=0, description="first retry delay; doubles each attempt")
    retry_max_s: float = Field(600.0, gt=0, description="longest delay between attempts")
    poll_s: float = Field(2.0, gt=0, description="how often the outbox is scanned for due retries")
    commitment_timeout_s: float = Field(
        600.0, gt=0, description="no storage commitment report this long after the request: send the objects again"
    )


class QualitySettings(_Section):
    """Input-quality gate thresholds (statistics on a 512 px copy of the image)."""

    min_side_px: int = Field(224, ge=1, description="shorter side below this: too small")
    min_colourfulness: float = Field(0.04, ge=0, description="mean HSV saturation below this: not colour")
    max_brightness: float = Field(240.0, description="mean luminance above this: overexposed")
    min_brightness: float = Field(40.0, description="mean luminance below this: underexposed")
    max_clipped_fraction: float = Field(0.5, gt=0, le=1, description="share of clipped pixels tolerated")
    tissue_saturation: float = Field(0.12, ge=0, le=1, description="saturation that counts as stained")
    min_tissue_fraction: float = Field(0.01, ge=0, le=1, description="stained share below this: empty field")
    min_sharpness: float = Field(8.0, ge=0, description="Laplacian variance below this: out of focus")


DEFAULT_RISK_ALPHA, DEFAULT_RISK_DELTA = 0.02, 0.1


class TriageSettings(_Section):
    """When a prediction goes to the expert-review worklist. Every reason that applies is recorded."""

    mode: TriageMode = Field(
        TriageMode.SHADOW,
        description="shadow: nothing is finalised, every image is reviewed and the reviews build the site "
        "calibration pool; live: finalise with the site rule certified and activated for the loaded bundle "
        "(shadow while there is none); bundle: the rule fitted on the bundle's own calibration split (demos)",
    )

    risk_alpha: float | None = Field(
        None,
        gt=0,
        lt=1,
        description="bundle mode: error rate allowed among fields finalised without review; empty = the "
        "bundle's (0.02); the threshold is refitted from the bundle's calibration split. Also the default "
        "alpha of 'calibration certify'",
    )
    risk_delta: float | None = Field(
        None, gt=0, lt=1, description="chance the finalised error rate exceeds risk_alpha; empty = the bundle's (0.1)"
    )
    confidence_threshold: float | None = Field(
        None,
        ge=0,
        le=1,
        description="bundle mode: a fixed finalisation threshold instead of the fitted one (voids the guarantee); "
        "empty = fitted",
    )
    refer_indeterminate: bool = True
    refer_ensemble_disagreement: bool = True

    def risk_levels(self) -> tuple[float, float]:
        """(alpha, delta) a site rule is certified and shown at: the configured ones, else 0.02 and 0.1."""
        return (
            DEFAULT_RISK_ALPHA if self.risk_alpha is None else self.risk_alpha,
            DEFAULT_RISK_DELTA if self.risk_delta is None else self.risk_delta,
        )

    refer_conformal_not_singleton: bool = True
    refer_ood: bool = True
    refer_quality: bool = True


class ReportsSettings(_Section):
    """The result objects written back to the PACS."""

    not_analysed_sr: bool = Field(
        True,
        description="when an acknowledged image cannot be analysed (decoding or report building failed), send an "
        "SR that says so and why, besides its 'not analysed' worklist entry",
    )
    case_sr: bool = Field(True, description="write a case-level SR for each case (a specimen's images)")
    templates: bool = Field(
        True,
        description="build the AI SR and KOS of each image from a template highdicom made for the first one of "
        "its kind and that was checked against highdicom's own (about 3x cheaper); false: highdicom builds each",
    )
    heatmap_jpeg: bool = Field(
        True,
        description="heatmap Secondary Capture as JPEG Baseline (about 16x smaller to write and send; a peer "
        "that takes only uncompressed gets it decoded); false: uncompressed RGB",
    )
    case_quiet_s: float = Field(
        600.0,
        gt=0,
        description="write the case-level SR once no image of the case has arrived for this long; a later image "
        "makes its next version",
    )


class HealthSettings(_Section):
    """HTTP health (/healthz/live, /healthz/ready) and Prometheus metrics (/metrics)."""

    enabled: bool = True
    bind_address: BindAddress = "127.0.0.1"
    port: int = Field(8044, ge=0, le=65535, description="0 = any free port (tests)")
    worker_stall_s: float = Field(120.0, gt=0, description="not ready when the worker loop is silent this long")


class WorklistSettings(_Section):
    """The expert-review worklist: escalation of waiting cases and the daily summary log line."""

    escalate_after_hours: float = Field(24.0, gt=0, description="open or in review longer than this: escalated")
    escalation_check_minutes: float = Field(5.0, gt=0, description="how often overdue items are looked for")
    summary_hour_utc: int = Field(6, ge=0, le=23, description="hour (UTC) of the daily worklist summary log line")
    audit_fraction: float = Field(
        0.02,
        ge=0,
        le=1,
        description="share of finalised images that also go to the worklist, unmarked, so the error among "
        "finalised is measured in production (0 = none)",
    )
    monitor_minutes: float = Field(60.0, gt=0, description="how often the audit bound and drift are checked")
    drift_window: int = Field(200, ge=20, description="recent analysed images compared with the bundle's reference")


class AuditSettings(_Section):
    """The blind audit of what a certified site rule finalises (live mode), and the fail-safe it drives."""

    initial_rate: float = Field(
        0.2,
        ge=0,
        le=1,
        description="share of finalised images audited while a site rule is young (its first initial_images); "
        "after that worklist.audit_fraction",
    )
    initial_images: int = Field(200, ge=0, description="finalised images of a new site rule audited at initial_rate")
    min_audited: int = Field(
        10,
        ge=1,
        description="decided audit images before the audit may raise its alarm: one early error is a fact about "
        "one image, not yet about the rule (the test stays valid: waiting only lowers false alarms)",
    )
    fallback_on_drift: bool = Field(
        True, description="a drift alarm (out-of-distribution share, class mix) also returns live mode to shadow"
    )


class WebSettings(_Section):
    """The reviewers' web page (worklist, case view, decisions, admin statistics)."""

    enabled: bool = True
    bind_address: BindAddress = "127.0.0.1"
    port: int = Field(8043, ge=0, le=65535, description="0 = any free port (tests)")
    threads: int = Field(4, ge=1, le=64, description="request threads of the WSGI server")
    session_minutes: float = Field(480.0, gt=0, description="a login lasts this long")
    secret_key_file: Path | None = Field(
        None, description="key that signs session cookies; empty = web-secret.key in the data directory"
    )
    cookie_secure: bool = Field(False, description="send the session cookie over HTTPS only (behind a TLS proxy)")
    max_failed_logins: int = Field(
        5, ge=1, description="failed logins for a name from one address before attempts from there back off"
    )
    wsi_viewer_url: str | None = Field(
        None,
        description="link from the slide view to the PACS's own WSI viewer; {orthanc_series_id}, {series_uid} and "
        "{study_uid} are filled in, e.g. http://pacs:8042/wsi/app/viewer.html?series={orthanc_series_id} "
        "(Orthanc with its WSI plug-in)",
    )
    slide_cache_mb: int = Field(64, ge=1, le=4096, description="slide tiles kept in memory for the viewer, MiB")

    @field_validator("wsi_viewer_url")
    @classmethod
    def _viewer_url(cls, v: str | None) -> str | None:
        if not v:
            return None
        if not v.startswith(("http://", "https://")):
            raise ValueError("wsi_viewer_url must be an http:// or https:// URL")
        try:
            v.format(series_uid="", study_uid="", orthanc_series_id="")
        except (KeyError, IndexError, ValueError) as exc:
            raise ValueError(
                f"wsi_viewer_url: only {{orthanc_series_id}}, {{series_uid}} and {{study_uid}} are filled in ({exc})"
            ) from exc
        return v


class HL7ListenerSettings(_Section):
    """Orders from the laboratory information system: HL7 v2.5.1 OML^O21 over MLLP, answered ORL^O22. The
    results for images whose accession, specimen or container matches an order carry its numbers."""

    enabled: bool = False
    bind_address: BindAddress = "127.0.0.1"
    port: int = Field(2576, ge=0, le=65535, description="0 = any free port (tests)")
    allowed_peers: list[str] = Field(
        default_factory=lambda: ["127.0.0.1/32", "::1/128"], description="networks the LIS may connect from"
    )
    tls: TLSSettings = Field(default_factory=TLSSettings)
    timeout_s: float = Field(30.0, gt=0, description="an idle connection is closed after this long")

    @field_validator("allowed_peers")
    @classmethod
    def _networks(cls, values: list[str]) -> list[str]:
        for v in values:
            ipaddress.ip_network(v, strict=False)
        return values

    def permits(self, address: str) -> bool:
        """True if ``address`` lies in one of ``allowed_peers``."""
        return AllowedCaller(ae_title="HL7", addresses=self.allowed_peers or ["0.0.0.0/32"]).permits(address)


class StorageSettings(_Section):
    """Where received files and the database live."""

    data_dir: Path = Path("var/data")
    database_url: str | None = Field(
        None,
        description="postgresql://user@host/db to share one store between nodes (docs/operations.md); "
        "empty = SQLite in data_dir, one node",
    )
    min_free_mb: int = Field(512, ge=0, description="below this free space new stores get 0xA700")
    max_used_percent: float = Field(95.0, gt=0, le=100, description="disk usage above this: new stores get 0xA700")
    retention_days: float | None = Field(
        30, gt=0, description="delete delivered images and results after this many days (rows stay); empty = never"
    )

    @property
    def spool_dir(self) -> Path:
        return self.data_dir / "spool"

    @property
    def results_dir(self) -> Path:
        """The SR, heatmap and KOS files the worker made, until egress has delivered them."""
        return self.data_dir / "results"

    @property
    def work_dir(self) -> Path:
        """Scratch space of the worker (a slide's repaired headers while it is read); emptied at start."""
        return self.data_dir / "work"

    @property
    def database(self) -> Path | str:
        """What the store opens: the PostgreSQL URL, else the SQLite file in ``data_dir``."""
        return self.database_url or self.data_dir / "cds.sqlite3"

    @field_validator("database_url")
    @classmethod
    def _url(cls, v: str | None) -> str | None:
        if v is not None and not v.startswith(("postgresql://", "postgres://")):
            raise ValueError("must start with postgresql:// (or leave it empty for SQLite)")
        return v or None


class SlideSettings(_Section):
    """Whole-slide images (VL Whole Slide Microscopy): when a slide is analysed, and how many fields."""

    quiet_s: float = Field(
        120.0, gt=0, description="analyse a slide once none of its instances has arrived for this long"
    )
    max_fields: int = Field(24, ge=1, le=200, description="informative fields analysed per slide, at most")
    min_cellularity: float = Field(
        0.02,
        ge=0.0,
        le=1.0,
        description="a proposed field needs at least this share of its area stained by nuclei to count",
    )


class ClusterSettings(_Section):
    """Several nodes on one PostgreSQL store (``storage.database_url``) and one shared ``data_dir``."""

    node_id: str | None = Field(
        None, max_length=64, description="this node's name in the store (default: host name and DICOM port)"
    )
    lease_s: float = Field(
        60.0, ge=5, description="a claim on work not renewed for this long is taken over by another node"
    )
    heartbeat_s: float = Field(10.0, gt=0, description="how often a node renews its claims and reports itself")


def usable_cores() -> int:
    """CPU cores this process may run on (its affinity mask, which systemd's CPUAffinity= and cgroups set)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


class Settings(BaseSettings):
    """All daemon settings. ``deploy/config.example.toml`` documents every field."""

    model_config = SettingsConfigDict(
        env_prefix="CDS_", env_nested_delimiter="__", extra="forbid", validate_default=True
    )

    listener: ListenerSettings = Field(default_factory=ListenerSettings)
    storage: StorageSettings = Field(default_factory=StorageSettings)
    destinations: list[Destination] = Field(
        default_factory=lambda: [Destination(name="pacs", ae_title="ORTHANC", host="127.0.0.1", port=4242)]
    )
    egress: EgressSettings = Field(default_factory=EgressSettings)
    quality: QualitySettings = Field(default_factory=QualitySettings)
    health: HealthSettings = Field(default_factory=HealthSettings)
    triage: TriageSettings = Field(default_factory=TriageSettings)
    reports: ReportsSettings = Field(default_factory=ReportsSettings)
    worklist: WorklistSettings = Field(default_factory=WorklistSettings)
    audit: AuditSettings = Field(default_factory=AuditSettings)
    web: WebSettings = Field(default_factory=WebSettings)
    cluster: ClusterSettings = Field(default_factory=ClusterSettings)
    slides: SlideSettings = Field(default_factory=SlideSettings)
    hl7_listener: HL7ListenerSettings = Field(default_factory=HL7ListenerSettings)
    model_bundle: Path | None = Field(None, description="directory holding manifest.json and the ONNX files")
    worker_threads: int = Field(
        0,
        ge=0,
        le=64,
        description="ONNX Runtime intra-op threads; 0 chooses at start: the usable cores less the one the "
        "worker's helper process takes, at least 1",
    )
    backbone_chunk: int = Field(
        4, ge=1, le=64, description="views per backbone run: bounds ONNX Runtime's memory arena (bench_model.py)"
    )
    log_level: Literal["debug", "info", "warning", "error"] = "info"

    def model_threads(self) -> int:
        """ONNX Runtime threads for the model: ``worker_threads``, or (0) one per usable core but the helper's."""
        return self.worker_threads or max(1, usable_cores() - 1)

    @property
    def node_id(self) -> str:
        """This node's name in a shared store: ``cluster.node_id``, else host name and DICOM port."""
        return self.cluster.node_id or f"{socket.gethostname()}:{self.listener.port}"

    @property
    def web_scratch(self) -> Path:
        """The review page's scratch directory (repaired slide headers while the viewer reads a slide)."""
        return self.storage.work_dir / f"web-{self.spool_node or 'local'}"

    @property
    def worker_scratch(self) -> Path:
        """This node's scratch directory (a slide's repaired level headers while it is read)."""
        return self.storage.work_dir / (self.spool_node or "local")

    @property
    def spool_node(self) -> str | None:
        """With a shared store (and so a shared data_dir), files in progress go to this node's own folder."""
        return self.node_id if self.storage.database_url else None

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        path = _config_file.get()
        if path is not None:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=path))
        return tuple(sources)


class ConfigError(Exception):
    """Invalid configuration; the message names every offending field."""


def load_settings(config_file: Path | str | None = None, **overrides: Any) -> Settings:
    """Load settings from ``config_file`` (or ``$CDS_CONFIG``), the environment and defaults."""
    path_value = config_file if config_file is not None else os.environ.get("CDS_CONFIG")
    path = Path(path_value) if path_value else None
    if path is not None and not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    token = _config_file.set(path)
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            field = ".".join(str(p) for p in err["loc"]) or "(top level)"
            lines.append(f"  {field}: {err['msg']}")
        origin = f" in {path}" if path else ""
        raise ConfigError(f"invalid configuration{origin}:\n" + "\n".join(lines)) from None
    except Exception as exc:  # tomllib.TOMLDecodeError and friends
        raise ConfigError(f"cannot read configuration {path}: {exc}") from None
    finally:
        _config_file.reset(token)

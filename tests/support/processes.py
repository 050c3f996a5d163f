"""Real peers for the tests: the daemon as a process, Orthanc as the PACS, dcmtk as clients."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
DAEMON_AE = "THYROID_CDS"
SENDER_AE = "STORESCU"


_ISSUED: set[int] = set()


def free_port() -> int:
    """A loopback port nothing listens on, never one this test process handed out before: a daemon's
    DICOM, health and web ports must differ, or a test would talk to the wrong server."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if port not in _ISSUED:
            _ISSUED.add(port)
            return port


def wait_for_port(port: int, timeout: float = 20.0, proc: subprocess.Popen[Any] | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before listening on {port}")
        with socket.socket() as s:
            s.settimeout(0.2)
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listening on port {port} after {timeout} s")


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    return json.dumps(str(value))


def _toml_pairs(values: dict[str, Any]) -> list[str]:
    return [f"{key} = {toml_value(value)}" for key, value in values.items()]


@dataclass
class DaemonProcess:
    """``python -m cds_daemon serve`` with a config file written for the test."""

    workdir: Path
    port: int = field(default_factory=free_port)
    health_port: int = field(default_factory=free_port)
    web_port: int = field(default_factory=free_port)
    allowed: list[tuple[str, list[str]]] = field(
        default_factory=lambda: [(SENDER_AE, ["127.0.0.1/32"]), ("ORTHANC", ["127.0.0.1/32"])]
    )
    destinations: list[tuple[str, str, int]] = field(default_factory=list)
    listener_tls: dict[str, Any] | None = None
    listener_options: dict[str, Any] = field(default_factory=dict)
    destination_tls: dict[str, dict[str, Any]] = field(default_factory=dict)
    destination_options: dict[str, dict[str, Any]] = field(default_factory=dict)
    web_destinations: list[dict[str, Any]] = field(default_factory=list)  # [[destinations]] tables as written
    bundle: Path | None = None
    extra_env: dict[str, str] = field(default_factory=dict)
    extra_config: str = ""
    # The installation default is shadow (everything reviewed); most tests exercise finalisation with the
    # bundle's own rule. An environment variable, so that extra_config may still hold a [triage] table.
    triage_mode: str = "bundle"
    shared_data: Path | None = None  # a data directory other daemons use too (a cluster)
    database_url: str | None = None
    node_id: str | None = None
    proc: subprocess.Popen[bytes] | None = None
    starts: int = 0

    @property
    def data_dir(self) -> Path:
        return self.shared_data or self.workdir / "data"

    @property
    def config_path(self) -> Path:
        return self.workdir / "config.toml"

    @property
    def log_path(self) -> Path:
        return self.workdir / "daemon.log"

    def write_config(self) -> None:
        lines = [
            'log_level = "info"',
            "worker_threads = 1",
        ]
        if self.bundle is not None:
            lines.append(f"model_bundle = {toml_value(self.bundle)}")
        lines += [
            "[listener]",
            f'ae_title = "{DAEMON_AE}"',
            'bind_address = "127.0.0.1"',
            f"port = {self.port}",
            "stop_grace_s = 5",
            *_toml_pairs(self.listener_options),
        ]
        if self.listener_tls is not None:
            lines += ["[listener.tls]", *_toml_pairs(self.listener_tls)]
        lines += [
            "[storage]",
            f"data_dir = {toml_value(self.data_dir)}",
            "min_free_mb = 1",
            "max_used_percent = 100",
            *([f"database_url = {toml_value(self.database_url)}"] if self.database_url else []),
            "[health]",
            f"port = {self.health_port}",
            "[web]",
            f"port = {self.web_port}",
            "[cluster]",
            "lease_s = 5",
            "heartbeat_s = 1",
            *([f"node_id = {toml_value(self.node_id)}"] if self.node_id else []),
        ]
        for ae, addresses in self.allowed:
            lines += [
                "[[listener.allowed_callers]]",
                f'ae_title = "{ae}"',
                f"addresses = {toml_value(addresses)}",
            ]
        for name, ae, port in self.destinations:
            lines += [
                "[[destinations]]",
                f'name = "{name}"',
                f'ae_title = "{ae}"',
                'host = "127.0.0.1"',
                f"port = {port}",
                *_toml_pairs(self.destination_options.get(name, {})),
            ]
            if name in self.destination_tls:
                lines += ["[destinations.tls]", *_toml_pairs(self.destination_tls[name])]
        for table in self.web_destinations:
            lines += ["[[destinations]]", *_toml_pairs(table)]
        if not self.destinations and not self.web_destinations:
            lines.insert(0, "destinations = []")
        self.config_path.write_text("\n".join(lines) + "\n" + self.extra_config)

    def start(self) -> DaemonProcess:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.write_config()
        env = {
            **os.environ,
            "CDS_CONFIG": str(self.config_path),
            "CDS_TRIAGE__MODE": self.triage_mode,
            **self.extra_env,
        }
        log = open(self.log_path, "ab")  # noqa: SIM115 - owned by the child for its lifetime
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "cds_daemon", "serve"], cwd=self.workdir, env=env, stdout=log, stderr=log
        )
        log.close()
        self.starts += 1
        wait_for_port(self.port, proc=self.proc)
        self._wait_listening()
        return self

    def _wait_listening(self, timeout: float = 20.0) -> None:
        """The port answering is not enough (another server could hold it): wait for this start's
        ``listener_started`` line, so a daemon that failed to start is reported as such."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            started = []
            for line in self.log_path.read_text(errors="replace").splitlines():
                if '"listener_started"' in line:
                    with contextlib.suppress(json.JSONDecodeError):  # a line still being written
                        started.append(json.loads(line))
            if len(started) >= self.starts and started[-1].get("port") == self.port:
                return
            assert self.proc is not None
            if self.proc.poll() is not None:
                tail = self.log_path.read_text(errors="replace")[-2000:]
                raise RuntimeError(f"daemon exited with {self.proc.returncode} during start:\n{tail}")
            time.sleep(0.05)
        raise TimeoutError(f"daemon did not report listening on {self.port} after {timeout} s")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20.0) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        rc = self.proc.wait(timeout=timeout)
        self.proc = None
        return rc

    def kill(self) -> None:
        self.stop(signal.SIGKILL)

    def http(self, path: str) -> tuple[int, str]:
        """GET from the health/metrics endpoint: (status, body)."""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.health_port}{path}", timeout=10) as rsp:
                return rsp.status, rsp.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()

    def log_events(self) -> list[dict[str, Any]]:
        events = []
        for line in self.log_path.read_text(errors="replace").splitlines():
            if line.startswith("{"):
                events.append(json.loads(line))
        return events

    def cli(self, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "CDS_CONFIG": str(self.config_path), "CDS_TRIAGE__MODE": self.triage_mode}
        return subprocess.run(
            [sys.executable, "-m", "cds_daemon", *args],
            cwd=self.workdir,
            env={**env, **self.extra_env},
            capture_output=True,
            text=True,
            input=stdin,
        )


def dcmtk(tool: str, *args: str, timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
    """Run a dcmtk tool: Debian's, by its path first (with a venv on PATH, "storescu" and "echoscu" are
    pynetdicom's console scripts, which take other options)."""
    path = f"/usr/bin/{tool}" if Path(f"/usr/bin/{tool}").is_file() else shutil.which(tool)
    if path is None:
        raise RuntimeError(f"{tool} not found: install Debian's dcmtk")
    return subprocess.run([path, *args], capture_output=True, text=True, timeout=timeout)


#: storescu proposes only uncompressed syntaxes unless told; the option that proposes each one.
STORESCU_PROPOSE = {
    "explicit": (),
    "implicit": (),
    "jpeg-baseline": ("-xy",),
    "jpeg2000": ("-xv",),
    "rle": ("-xr",),
    "jpeg-ls": ("-xt",),
    "deflated": ("-xd",),
}


#: The storescu option that proposes a file's own transfer syntax, by transfer syntax UID.
STORESCU_PROPOSE_UID = {
    "1.2.840.10008.1.2": ("-xi",),
    "1.2.840.10008.1.2.1": (),
    "1.2.840.10008.1.2.1.99": ("-xd",),
    "1.2.840.10008.1.2.2": ("-xb",),
    "1.2.840.10008.1.2.4.50": ("-xy",),
    "1.2.840.10008.1.2.4.51": ("-xx",),
    "1.2.840.10008.1.2.4.57": ("-xs",),
    "1.2.840.10008.1.2.4.70": ("-xs",),
    "1.2.840.10008.1.2.4.80": ("-xt",),
    "1.2.840.10008.1.2.4.81": ("-xu",),
    "1.2.840.10008.1.2.4.90": ("-xv",),
    "1.2.840.10008.1.2.4.91": ("-xw",),
    "1.2.840.10008.1.2.5": ("-xr",),
}


def storescu(port: int, *files: Path, calling: str = SENDER_AE, called: str = DAEMON_AE, extra: tuple[str, ...] = ()):
    """Send files in one association. ``extra`` e.g. ``("-xy",)`` proposes JPEG baseline.

    ``-R`` proposes only the SOP classes and transfer syntaxes the files need, so compressed
    files go as they are instead of storescu's default list of uncompressed syntaxes.
    """
    return dcmtk("storescu", "-R", "-aet", calling, "-aec", called, *extra, "127.0.0.1", str(port), *map(str, files))


def send_raw(port: int, path: Path, calling: str = SENDER_AE, called: str = DAEMON_AE) -> int:
    """Send a file's bytes as they are (pynetdicom, no decoding): for inputs dcmtk refuses to read.

    Returns the C-STORE status, or -2 when no presentation context was accepted (refused at
    negotiation), -1 when no association, -3 when no response.
    """
    from pydicom.filereader import read_file_meta_info
    from pynetdicom import AE, _config

    _config.STORE_SEND_CHUNKED_DATASET = True
    meta = read_file_meta_info(path)
    ae = AE(ae_title=calling)
    ae.add_requested_context(str(meta.MediaStorageSOPClassUID), str(meta.TransferSyntaxUID))
    assoc = ae.associate("127.0.0.1", port, ae_title=called)
    if not assoc.is_established:
        return -1
    try:
        status = assoc.send_c_store(path)
    except ValueError:
        return -2
    finally:
        if assoc.is_established:
            assoc.release()
    return int(status.Status) if status is not None and "Status" in status else -3


def echoscu(port: int, calling: str = SENDER_AE, called: str = DAEMON_AE, extra: tuple[str, ...] = ()):
    """C-ECHO; ``extra`` e.g. dcmtk's TLS options (``+tls KEY CERT +cf CA``)."""
    return dcmtk("echoscu", "-aet", calling, "-aec", called, *extra, "127.0.0.1", str(port))


@dataclass
class StoreSCPProcess:
    """dcmtk's ``storescp`` writing what it receives into ``workdir/received`` (``extra``: e.g. TLS)."""

    workdir: Path
    ae_title: str = "STORESCP"
    port: int = field(default_factory=free_port)
    extra: tuple[str, ...] = ()
    accept_all: bool = True  # every transfer syntax (+xa); else storescp's default, uncompressed only
    proc: subprocess.Popen[bytes] | None = None

    @property
    def received_dir(self) -> Path:
        return self.workdir / "received"

    def start(self) -> StoreSCPProcess:
        if shutil.which("storescp") is None:
            raise RuntimeError("storescp not found: install Debian's dcmtk")
        self.received_dir.mkdir(parents=True, exist_ok=True)
        log = open(self.workdir / "storescp.log", "ab")  # noqa: SIM115 - owned by the child
        self.proc = subprocess.Popen(
            [
                "storescp",
                "-aet",
                self.ae_title,
                *(["+xa"] if self.accept_all else []),
                "-od",
                str(self.received_dir),
                *self.extra,
                str(self.port),
            ],
            stdout=log,
            stderr=log,
        )
        log.close()
        wait_for_port(self.port, proc=self.proc)
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def received(self) -> list[Path]:
        return sorted(p for p in self.received_dir.iterdir() if p.is_file())


@dataclass(frozen=True)
class OrthancTLS:
    """DICOM TLS for Orthanc's DICOM port (Orthanc 1.9+ ``DicomTls*`` options)."""

    cert: Path
    key: Path
    trusted: Path
    require_client_cert: bool = True


@dataclass
class OrthancProcess:
    """Debian's Orthanc in the foreground with its own config, storage and ports."""

    workdir: Path
    dicom_port: int = field(default_factory=free_port)
    http_port: int = field(default_factory=free_port)
    modalities: dict[str, tuple[str, int]] = field(default_factory=dict)
    tls: OrthancTLS | None = None
    dicomweb: bool = False  # the DICOMweb plugin (Debian's orthanc-dicomweb) on /dicom-web/
    users: dict[str, str] = field(default_factory=dict)  # HTTP basic auth users; none: no authentication
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> OrthancProcess:
        binary = shutil.which("Orthanc") or "/usr/sbin/Orthanc"
        if not Path(binary).exists():
            raise RuntimeError("Orthanc not found: install Debian's orthanc")
        self.workdir.mkdir(parents=True, exist_ok=True)
        config = {
            "Name": "test-pacs",
            "StorageDirectory": str(self.workdir / "storage"),
            "IndexDirectory": str(self.workdir / "index"),
            "DicomAet": "ORTHANC",
            "DicomPort": self.dicom_port,
            "HttpPort": self.http_port,
            "HttpBindAddress": "127.0.0.1",  # 1.10 ignores unknown keys
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "DicomCheckCalledAet": False,
            "DicomModalities": {k: [ae, "127.0.0.1", port] for k, (ae, port) in self.modalities.items()},
            "Plugins": [],
            "StableAge": 1,
        }
        if self.dicomweb:
            config |= {
                "Plugins": ["/usr/share/orthanc/plugins/libOrthancDicomWeb.so"],
                "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
            }
        if self.users:
            config |= {"AuthenticationEnabled": True, "RegisteredUsers": self.users}
        if self.tls is not None:
            config |= {
                "DicomTlsEnabled": True,
                "DicomTlsCertificate": str(self.tls.cert),
                "DicomTlsPrivateKey": str(self.tls.key),
                "DicomTlsTrustedCertificates": str(self.tls.trusted),
                "DicomTlsRemoteCertificateRequired": self.tls.require_client_cert,
            }
        path = self.workdir / "orthanc.json"
        path.write_text(json.dumps(config, indent=2))
        log = open(self.workdir / "orthanc.log", "ab")  # noqa: SIM115
        self.proc = subprocess.Popen([binary, str(path)], stdout=log, stderr=log, cwd=self.workdir)
        log.close()
        wait_for_port(self.http_port, proc=self.proc)
        wait_for_port(self.dicom_port, proc=self.proc)
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def _open(self, req: urllib.request.Request | str) -> Any:
        if not isinstance(req, urllib.request.Request):
            req = urllib.request.Request(req)
        if self.users:
            user, password = next(iter(self.users.items()))
            token = base64.b64encode(f"{user}:{password}".encode()).decode()
            req.add_header("Authorization", f"Basic {token}")
        return urllib.request.urlopen(req, timeout=10)

    def get(self, path: str) -> Any:
        with self._open(f"http://127.0.0.1:{self.http_port}{path}") as rsp:
            return json.loads(rsp.read())

    def lookup(self, dicom_uid: str) -> list[dict[str, Any]]:
        """Orthanc resources whose DICOM UID is ``dicom_uid`` (POST /tools/lookup)."""
        req = urllib.request.Request(
            f"http://127.0.0.1:{self.http_port}/tools/lookup", data=dicom_uid.encode(), method="POST"
        )
        with self._open(req) as rsp:
            return list(json.loads(rsp.read()))

    def instance_id(self, sop_instance_uid: str) -> str | None:
        for res in self.lookup(sop_instance_uid):
            if res.get("Type") == "Instance":
                return str(res["ID"])
        return None

    def instances(self) -> list[str]:
        return list(self.get("/instances"))

    def tags(self, orthanc_id: str) -> dict[str, Any]:
        return self.get(f"/instances/{orthanc_id}/simplified-tags")

    def file(self, orthanc_id: str) -> bytes:
        with self._open(f"http://127.0.0.1:{self.http_port}/instances/{orthanc_id}/file") as rsp:
            return bytes(rsp.read())

    def alive(self) -> bool:
        try:
            self.get("/system")
            return True
        except (urllib.error.URLError, OSError):
            return False

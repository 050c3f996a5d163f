"""Throwaway X.509 material for the DICOM TLS tests, made with the ``openssl`` command."""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Issued:
    """A leaf certificate and its unencrypted private key (PEM files)."""

    cert: Path
    key: Path

    def dcmtk_args(self) -> tuple[str, str, str]:
        """dcmtk's ``+tls KEY CERT``: authenticated TLS presenting this certificate."""
        return ("+tls", str(self.key), str(self.cert))


@dataclass(frozen=True)
class CertificateAuthority:
    """A self-signed CA that issues leaf certificates into its directory."""

    cert: Path
    key: Path

    @classmethod
    def create(cls, directory: Path, name: str) -> CertificateAuthority:
        directory.mkdir(parents=True, exist_ok=True)
        cert, key = directory / f"{name}.crt", directory / f"{name}.key"
        _openssl(
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-sha256",
            "-days",
            "2",
            "-keyout",
            str(key),
            "-out",
            str(cert),
            "-subj",
            f"/CN={name}",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        )
        return cls(cert, key)

    def issue(self, name: str, *, server: bool) -> Issued:
        """A certificate for ``name``: TLS server (SAN 127.0.0.1, localhost) or TLS client."""
        directory = self.cert.parent
        cert, key, csr, ext = (directory / f"{name}.{s}" for s in ("crt", "key", "csr", "ext"))
        usage = "serverAuth" if server else "clientAuth"
        lines = [
            "basicConstraints=critical,CA:FALSE",
            "keyUsage=critical,digitalSignature,keyEncipherment",
            f"extendedKeyUsage={usage}",
        ]
        if server:
            lines.append("subjectAltName=IP:127.0.0.1,DNS:localhost")
        ext.write_text("\n".join(lines) + "\n")
        _openssl(
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-sha256",
            "-keyout",
            str(key),
            "-out",
            str(csr),
            "-subj",
            f"/CN={name}",
        )
        _openssl(
            "x509",
            "-req",
            "-sha256",
            "-days",
            "2",
            "-in",
            str(csr),
            "-CA",
            str(self.cert),
            "-CAkey",
            str(self.key),
            "-CAcreateserial",
            "-extfile",
            str(ext),
            "-out",
            str(cert),
        )
        return Issued(cert, key)


@dataclass(frozen=True)
class TestPKI:
    """A trusted CA with a server and a client certificate, and an untrusted CA with a client."""

    __test__ = False  # not a pytest test class

    ca: CertificateAuthority
    server: Issued
    client: Issued
    rogue_ca: CertificateAuthority
    rogue_client: Issued
    rogue_server: Issued


def make_pki(directory: Path) -> TestPKI:
    """Every certificate the TLS tests need, under ``directory`` (valid for two days)."""
    ca = CertificateAuthority.create(directory / "trusted", "test-ca")
    rogue = CertificateAuthority.create(directory / "rogue", "rogue-ca")
    return TestPKI(
        ca=ca,
        server=ca.issue("server", server=True),
        client=ca.issue("client", server=False),
        rogue_ca=rogue,
        rogue_client=rogue.issue("rogue-client", server=False),
        rogue_server=rogue.issue("rogue-server", server=True),
    )


def _openssl(*args: str) -> None:
    if shutil.which("openssl") is None:
        raise RuntimeError("openssl not found: install Debian's openssl")
    r = subprocess.run(["openssl", *args], capture_output=True, text=True, timeout=60)
    if r.returncode != 0:
        raise RuntimeError(f"openssl {args[0]} failed: {r.stderr.strip()}")

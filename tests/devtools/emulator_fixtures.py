"""Helpers for the emulator tests: processes, a temporary CA and an OIDC issuer.

The issuer is a tiny HTTPS server with its own throwaway CA, so the STS
emulator's discovery runs over real TLS without the project's local PKI.
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import os
import selectors
import signal
import ssl
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import IO, Any

import requests
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

REPO_ROOT = Path(__file__).resolve().parents[2]
START_TIMEOUT_SECONDS = 20.0
STOP_TIMEOUT_SECONDS = 10.0
# Port 9 (discard) on loopback: google-auth never reaches a metadata server.
UNREACHABLE_METADATA = "127.0.0.1:9"


def safe_environment(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """Return an environment that keeps google-auth away from real endpoints."""
    environment = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(("GOOGLE_", "CLOUDSDK_", "GCE_"))
    }
    environment.update(
        {
            "NO_GCE_CHECK": "true",
            "GCE_METADATA_HOST": UNREACHABLE_METADATA,
            "GCE_METADATA_IP": UNREACHABLE_METADATA,
            "PYTHONUNBUFFERED": "1",
        }
    )
    environment.update(extra or {})
    return environment


class EmulatorProcess:
    """One emulator started with ``python -m`` and its control API."""

    def __init__(self, module: str, arguments: list[str], log_path: Path) -> None:
        self.module = module
        self.log_path = log_path
        self._log: IO[bytes] = log_path.open("ab")
        self.process = subprocess.Popen(  # noqa: S603 - fixed interpreter and module
            [sys.executable, "-m", f"deploy.local.emulators.{module}", *arguments],
            cwd=REPO_ROOT,
            env=safe_environment(),
            stdout=subprocess.PIPE,
            stderr=self._log,
        )
        try:
            self.ready_line = self._read_ready_line()
        except Exception:
            self.stop()
            raise
        self.url = self.ready_line.rsplit(" ", 1)[-1]
        self.port = int(self.url.rsplit(":", 1)[-1])

    def _read_ready_line(self) -> str:
        assert self.process.stdout is not None
        selector = selectors.DefaultSelector()
        selector.register(self.process.stdout, selectors.EVENT_READ)
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        try:
            while time.monotonic() < deadline:
                if selector.select(timeout=0.2):
                    line = self.process.stdout.readline().decode().strip()
                    if line:
                        return line
                if self.process.poll() is not None:
                    break
        finally:
            selector.close()
        raise RuntimeError(
            f"{self.module} emulator did not start: {self.log_text()[-2000:]}"
        )

    def log_text(self) -> str:
        """Return everything the emulator wrote to stderr so far."""
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def control(self, method: str, name: str, body: object = None) -> Any:
        """Call the control API and return its JSON response body."""
        response = requests.request(
            method, f"{self.url}/__emulator/{name}", json=body, timeout=5
        )
        response.raise_for_status()
        return response.json()

    def stats(self) -> dict[str, Any]:
        """Return ``GET /__emulator/stats``."""
        document: dict[str, Any] = self.control("GET", "stats")
        return document

    def reset(self) -> None:
        """Zero the counters and clear the faults."""
        self.control("POST", "reset")

    def add_fault(self, **spec: object) -> None:
        """Add one fault, e.g. ``add_fault(method="*", fault="reset")``."""
        self.control("POST", "faults", spec)

    def stop(self) -> int:
        """Send SIGTERM, wait for the exit and return the exit status."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=STOP_TIMEOUT_SECONDS)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=STOP_TIMEOUT_SECONDS)
        if self.process.stdout is not None:
            self.process.stdout.close()
        self._log.close()
        return self.process.returncode


def start_expecting_failure(module: str, arguments: list[str]) -> tuple[int, str]:
    """Run an emulator that should reject its arguments; return (status, stderr)."""
    completed = subprocess.run(  # noqa: S603 - fixed interpreter and module
        [sys.executable, "-m", f"deploy.local.emulators.{module}", *arguments],
        cwd=REPO_ROOT,
        env=safe_environment(),
        capture_output=True,
        timeout=START_TIMEOUT_SECONDS,
        check=False,
    )
    return completed.returncode, completed.stderr.decode(errors="replace")


def _validity(builder: x509.CertificateBuilder) -> x509.CertificateBuilder:
    now = datetime.datetime.now(datetime.UTC)
    return builder.not_valid_before(
        now - datetime.timedelta(minutes=5)
    ).not_valid_after(now + datetime.timedelta(days=1))


def _make_ca(key: ec.EllipticCurvePrivateKey) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Emulator test CA")])
    usage = x509.KeyUsage(
        digital_signature=False,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=True,
        crl_sign=True,
        encipher_only=False,
        decipher_only=False,
    )
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(usage, critical=True)
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False
        )
    )
    return _validity(builder).sign(key, hashes.SHA256())


def _make_server_certificate(
    key: ec.EllipticCurvePrivateKey,
    ca_certificate: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey,
) -> x509.Certificate:
    names = x509.SubjectAlternativeName(
        [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]
    )
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
        .issuer_name(ca_certificate.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .add_extension(names, critical=False)
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
    )
    return _validity(builder).sign(ca_key, hashes.SHA256())


class TemporaryCa:
    """A throwaway CA and a server certificate for 127.0.0.1 and localhost."""

    def __init__(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        ca_key = ec.generate_private_key(ec.SECP256R1())
        ca_certificate = _make_ca(ca_key)
        server_key = ec.generate_private_key(ec.SECP256R1())
        server_certificate = _make_server_certificate(
            server_key, ca_certificate, ca_key
        )

        self.ca_file = directory / "ca.pem"
        self.cert_file = directory / "server.pem"
        self.key_file = directory / "server-key.pem"
        pem = serialization.Encoding.PEM
        self.ca_file.write_bytes(ca_certificate.public_bytes(pem))
        self.cert_file.write_bytes(server_certificate.public_bytes(pem))
        self.key_file.write_bytes(
            server_key.private_bytes(
                pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )


class DiscoveryServer:
    """An HTTPS OIDC issuer serving a discovery document and, optionally, a JWKS.

    ``document_issuer`` and ``jwks_uri`` go into the discovery document;
    ``jwks`` is served at ``/jwks`` for tests that sign with their own keys.
    """

    def __init__(self, ca: TemporaryCa) -> None:
        self.hits: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _DiscoveryHandler)
        self._server.daemon_threads = True
        self._server.discovery = self  # type: ignore[attr-defined]
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(ca.cert_file, ca.key_file)
        self._server.socket = context.wrap_socket(self._server.socket, server_side=True)
        self.issuer = f"https://127.0.0.1:{self._server.server_address[1]}"
        self.local_jwks_uri = f"{self.issuer}/jwks"
        self.default_jwks_uri = ""
        self.document_issuer = self.issuer
        self.jwks_uri = ""
        self.jwks: dict[str, Any] = {"keys": []}
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.1},
            daemon=True,
        )
        self._thread.start()

    def restore(self) -> None:
        """Return to the default document and zero the hit counters."""
        with self._lock:
            self.hits.clear()
            self.document_issuer = self.issuer
            self.jwks_uri = self.default_jwks_uri
            self.jwks = {"keys": []}

    def count(self, path: str) -> None:
        """Count one request for ``path``."""
        with self._lock:
            self.hits[path] += 1

    def document(self) -> dict[str, Any]:
        """Return the discovery document as currently configured."""
        return {
            "issuer": self.document_issuer,
            "jwks_uri": self.jwks_uri,
            "token_endpoint": f"{self.issuer}/token",
            "response_types_supported": ["id_token"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": ["RS256"],
        }

    def close(self) -> None:
        """Stop serving."""
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


class _DiscoveryHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:  # noqa: N802 - name fixed by BaseHTTPRequestHandler
        discovery: DiscoveryServer = self.server.discovery  # type: ignore[attr-defined]
        discovery.count(self.path)
        if self.path == "/.well-known/openid-configuration":
            self._send(200, discovery.document())
        elif self.path == "/jwks":
            self._send(200, discovery.jwks)
        else:
            self._send(404, {"error": "not found"})

    def _send(self, status: int, document: object) -> None:
        body = json.dumps(document).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        """Keep the test output quiet."""

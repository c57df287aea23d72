"""Fixtures for every test: a loopback-only network, test keys and function apps.

The environment variables below are set at import time, before any test module
can import google-auth, so that no test probes a real metadata server.
"""

from __future__ import annotations

import os

os.environ["NO_GCE_CHECK"] = "true"
os.environ["GCE_METADATA_HOST"] = "127.0.0.1:9"
os.environ["GCE_METADATA_IP"] = "127.0.0.1:9"

import base64  # noqa: E402
import datetime  # noqa: E402
import hashlib  # noqa: E402
import ipaddress  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import socket  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable, Iterator, Mapping  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import flask  # noqa: E402
import functions_framework  # noqa: E402
import pytest  # noqa: E402
from cryptography import x509  # noqa: E402
from cryptography.hazmat.primitives import hashes, serialization  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa  # noqa: E402
from cryptography.x509.oid import NameOID  # noqa: E402
from flask.testing import FlaskClient  # noqa: E402
from werkzeug.test import TestResponse  # noqa: E402

from shared import lb_headers  # noqa: E402

# Fails the session when any log line of the suite leaks a token or a key.
pytest_plugins = ("tests.log_hygiene",)

REPO_ROOT = Path(__file__).resolve().parents[1]
MAIN_SOURCE = str(REPO_ROOT / "main.py")
FORM_CONTENT_TYPE = "application/x-www-form-urlencoded"

PROJECT_NUMBER = "123456789012"
POOL_ID = "client-pool"
PROVIDER_ID = "mtls-provider"
TOKEN_AUDIENCE = (
    f"https://iam.googleapis.com/projects/{PROJECT_NUMBER}/locations/global"
    f"/workloadIdentityPools/{POOL_ID}/providers/{PROVIDER_ID}"
)
ISSUER = "https://token.example.com"
XLB_MTLS_FLOW = "xlb-mtls-client-credentials"

# Every variable the service reads. Each test starts from none of them set,
# whatever the machine's environment holds.
SERVICE_VARIABLES = (
    "AUTH_FLOWS",
    "TOKEN_VALIDITY",
    "TOKEN_ISSUER",
    "SIGNING_KEY_FILE",
    "SERVICE_ACCOUNT_EMAIL",
    "IAM_CREDENTIALS_ENDPOINT",
    "STS_ENDPOINT",
    "JWKS_URI",
    "UPSTREAM_TIMEOUT_SECONDS",
    "UPSTREAM_MAX_RETRIES",
    "UPSTREAM_DEADLINE_SECONDS",
    "GOOGLE_CLOUD_PROJECT",
    "LOG_EXECUTION_ID",
    "WORKLOAD_IDENITY_PROJECT_NUMBER",
    "WORKLOAD_IDENTITY_PROJECT_NUMBER",
    "WORKLOAD_IDENITY_POOL_ID",
    "WORKLOAD_IDENTITY_POOL_ID",
    "WORKLOAD_IDENITY_PROVIDER_ID",
    "WORKLOAD_IDENTITY_PROVIDER_ID",
    lb_headers.CLIENT_ID_SETTING,
    *(header.setting for header in lb_headers.CERTIFICATE_HEADERS),
)

# A fingerprint and a serial number in the format the load balancer sends:
# unpadded standard base64, and lowercase hex bytes joined by ":".
LB_FINGERPRINT = "om8vGt3r6eTx5TI1kCeNKRJYZTUreIbHGu+Gu8FN8To"
LB_SERIAL = "00:ad:3e:0e:bc:c3:d4:f4:2d:ae:5b:21:3b:e4:cb:8b:f4:9d:49:a1"

CLIENT_SPIFFE_ID = "spiffe://example.org/ns/prod/sa/client-1"
CLIENT_URI_SANS = ("https://client-1.example.com/id", "urn:example:client-1")
CLIENT_DNS_SANS = ("client-1.example.com", "client-1.internal.example.com")


# --- Network guard ---------------------------------------------------------


def _is_loopback_host(host: object) -> bool:
    if host in (None, "localhost", "", b"localhost"):
        return True
    text = host.decode() if isinstance(host, bytes) else str(host)
    try:
        return ipaddress.ip_address(text.strip("[]").split("%")[0]).is_loopback
    except ValueError:
        return False


def _check_address(address: object) -> None:
    if isinstance(address, str | bytes):
        return  # AF_UNIX path
    if isinstance(address, tuple) and address and _is_loopback_host(address[0]):
        return
    raise OSError(f"tests may only connect to loopback addresses, not {address!r}")


@pytest.fixture(autouse=True)
def _loopback_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """Reject connections and name lookups outside the loopback range."""
    real_connect = socket.socket.connect
    real_connect_ex = socket.socket.connect_ex
    real_getaddrinfo = socket.getaddrinfo

    def connect(self: socket.socket, address: Any) -> None:
        _check_address(address)
        real_connect(self, address)

    def connect_ex(self: socket.socket, address: Any) -> int:
        _check_address(address)
        return real_connect_ex(self, address)

    def getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
        if not _is_loopback_host(host):
            raise OSError(f"tests may only resolve loopback names, not {host!r}")
        return real_getaddrinfo(host, *args, **kwargs)

    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setattr(socket.socket, "connect_ex", connect_ex)
    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)


def free_loopback_port() -> int:
    """Return a TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


# --- Keys and certificates -------------------------------------------------


def _write_private_key(
    path: Path,
    key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey,
    encryption: serialization.KeySerializationEncryption | None = None,
) -> Path:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            encryption or serialization.NoEncryption(),
        )
    )
    return path


@pytest.fixture(scope="session")
def key_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Write PEM files, supported and unsupported, named by what they contain."""
    folder = tmp_path_factory.mktemp("keys")
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    files = {
        "rsa2048": _write_private_key(folder / "rsa2048.pem", rsa_key),
        "rsa2048_next": _write_private_key(
            folder / "rsa2048-next.pem",
            rsa.generate_private_key(public_exponent=65537, key_size=2048),
        ),
        "ec_p256": _write_private_key(
            folder / "ec-p256.pem", ec.generate_private_key(ec.SECP256R1())
        ),
        "rsa1024": _write_private_key(
            folder / "rsa1024.pem",
            rsa.generate_private_key(public_exponent=65537, key_size=1024),  # noqa: S505
        ),
        "ec_p384": _write_private_key(
            folder / "ec-p384.pem", ec.generate_private_key(ec.SECP384R1())
        ),
        "ed25519": _write_private_key(
            folder / "ed25519.pem", ed25519.Ed25519PrivateKey.generate()
        ),
        "encrypted": _write_private_key(
            folder / "encrypted.pem",
            rsa_key,
            serialization.BestAvailableEncryption(b"passphrase"),
        ),
    }
    public = folder / "public-only.pem"
    public.write_bytes(
        rsa_key.public_key().public_bytes(
            serialization.Encoding.PEM,
            serialization.PublicFormat.SubjectPublicKeyInfo,
        )
    )
    files["public_only"] = public
    garbage = folder / "garbage.pem"
    garbage.write_text(
        "-----BEGIN PRIVATE KEY-----\nbm90IGEga2V5\n-----END PRIVATE KEY-----\n"
    )
    files["garbage"] = garbage
    return files


@dataclass(frozen=True)
class ClientCertificateFacts:
    """A generated client certificate and the header values an LB derives."""

    certificate: x509.Certificate
    fingerprint: str
    serial: str
    not_before: str
    not_after: str


def lb_serial(serial_number: int) -> str:
    """Format a serial as the load balancer does: DER INTEGER bytes, hex, ':'."""
    data = serial_number.to_bytes(serial_number.bit_length() // 8 + 1, "big")
    return ":".join(f"{byte:02x}" for byte in data)


def lb_fingerprint(certificate: x509.Certificate) -> str:
    """Return the SHA-256 of the DER certificate, standard base64, unpadded."""
    der = certificate.public_bytes(serialization.Encoding.DER)
    digest = hashlib.sha256(der).digest()
    return base64.b64encode(digest).decode("ascii").rstrip("=")


def b64(text: str) -> str:
    """Return the standard, padded base64 of ASCII ``text``."""
    return base64.b64encode(text.encode("ascii")).decode("ascii")


@pytest.fixture(scope="session")
def client_certificate() -> ClientCertificateFacts:
    """Generate a client certificate with SPIFFE, URI and DNS SANs."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "client-1")])
    now = datetime.datetime.now(datetime.UTC).replace(microsecond=0)
    sans: list[x509.GeneralName] = [
        x509.UniformResourceIdentifier(CLIENT_SPIFFE_ID),
        *(x509.UniformResourceIdentifier(uri) for uri in CLIENT_URI_SANS),
        *(x509.DNSName(dns) for dns in CLIENT_DNS_SANS),
    ]
    # 19 bytes with the top bit set, so the DER INTEGER gains a leading 00
    # byte that the header value must keep.
    serial_number = (1 << 151) | (x509.random_serial_number() % (1 << 151))
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(serial_number)
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .sign(key, hashes.SHA256())
    )
    return ClientCertificateFacts(
        certificate=certificate,
        fingerprint=lb_fingerprint(certificate),
        serial=lb_serial(certificate.serial_number),
        not_before=certificate.not_valid_before_utc.isoformat(),
        not_after=certificate.not_valid_after_utc.isoformat(),
    )


@pytest.fixture()
def mtls_headers(client_certificate: ClientCertificateFacts) -> dict[str, str]:
    """Headers an LB sends for the client certificate after verifying it.

    URI and DNS SANs use the per-entry reading of the LB's base64 format.
    """
    facts = client_certificate
    return {
        "X-Client-Cert-Present": "true",
        "X-Client-Cert-Chain-Verified": "true",
        "X-Client-Cert-Error": "",
        "X-Client-Cert-Hash": facts.fingerprint,
        "X-Client-Cert-Serial-Number": facts.serial,
        "X-Client-Cert-Spiffe": CLIENT_SPIFFE_ID,
        "X-Client-Cert-URI-SANs": ",".join(b64(uri) for uri in CLIENT_URI_SANS),
        "X-Client-Cert-DNSName-SANs": ",".join(b64(dns) for dns in CLIENT_DNS_SANS),
        "X-Client-Cert-Valid-Not-Before": facts.not_before,
        "X-Client-Cert-Valid-Not-After": facts.not_after,
    }


# --- Configuration and function apps ---------------------------------------


@pytest.fixture()
def service_env(key_files: dict[str, Path]) -> dict[str, str]:
    """A valid configuration that signs with a local RSA key."""
    return {
        "AUTH_FLOWS": XLB_MTLS_FLOW,
        "WORKLOAD_IDENITY_PROJECT_NUMBER": PROJECT_NUMBER,
        "WORKLOAD_IDENITY_POOL_ID": POOL_ID,
        "WORKLOAD_IDENITY_PROVIDER_ID": PROVIDER_ID,
        "TOKEN_ISSUER": ISSUER,
        "SIGNING_KEY_FILE": str(key_files["rsa2048"]),
    }


@pytest.fixture()
def clean_service_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """Unset every variable the service reads, for the length of the test."""
    for variable in SERVICE_VARIABLES:
        monkeypatch.delenv(variable, raising=False)
    return monkeypatch


@dataclass
class _LoggingState:
    handlers: list[logging.Handler]
    level: int
    disabled: dict[str, bool]


def _save_logging() -> _LoggingState:
    root = logging.getLogger()
    loggers = logging.Logger.manager.loggerDict.items()
    return _LoggingState(
        handlers=list(root.handlers),
        level=root.level,
        disabled={
            name: logger.disabled
            for name, logger in loggers
            if isinstance(logger, logging.Logger)
        },
    )


def _restore_logging(state: _LoggingState) -> None:
    root = logging.getLogger()
    root.handlers[:] = state.handlers
    root.setLevel(state.level)
    for name, disabled in state.disabled.items():
        logging.getLogger(name).disabled = disabled


AppFactory = Callable[[str, Mapping[str, str]], FlaskClient]


@pytest.fixture()
def make_client(clean_service_env: pytest.MonkeyPatch) -> Iterator[AppFactory]:
    """Create a function app from ``main.py`` with exactly ``env`` configured.

    main.py loads the settings when it is imported, so the environment is set
    before ``create_app``. The root logger is restored afterwards, because
    each import of main.py installs its own stdout handler.
    """
    monkeypatch = clean_service_env
    saved = _save_logging()
    # create_app writes both variables. Setting them first lets monkeypatch
    # restore them after the test.
    monkeypatch.setenv("FUNCTION_TARGET", "")
    monkeypatch.setenv("FUNCTION_SIGNATURE_TYPE", "http")

    def make(target: str, env: Mapping[str, str]) -> FlaskClient:
        for variable, value in env.items():
            monkeypatch.setenv(variable, value)
        app: flask.Flask = functions_framework.create_app(  # type: ignore[no-untyped-call]
            target=target, source=MAIN_SOURCE
        )
        return app.test_client()

    yield make
    _restore_logging(saved)


def post_token(
    client: FlaskClient,
    body: str | bytes,
    headers: Mapping[str, str] | None = None,
    content_type: str | None = FORM_CONTENT_TYPE,
) -> TestResponse:
    """POST ``body`` to /token with the given headers and content type."""
    all_headers = dict(headers or {})
    if content_type is not None:
        all_headers["Content-Type"] = content_type
    return client.post("/token", data=body, headers=all_headers)


def log_entries(text: str) -> list[dict[str, Any]]:
    """Parse captured stdout into JSON log entries; fail on any other line."""
    entries = []
    for line in text.splitlines():
        if not line.strip():
            continue
        entry = json.loads(line)
        assert isinstance(entry, dict), line
        entries.append(entry)
    return entries


def labels_of(entry: Mapping[str, Any]) -> dict[str, str]:
    """Return the Cloud Logging labels of a log entry."""
    labels = entry.get("logging.googleapis.com/labels", {})
    assert isinstance(labels, dict)
    return labels


# --- functions-framework as a subprocess -----------------------------------

PROCESS_TIMEOUT_SECS = 30.0


def functions_framework_command(target: str, port: int) -> list[str]:
    """Return the argv that serves ``target`` from main.py on 127.0.0.1:port."""
    script = Path(sys.executable).with_name("functions-framework")
    launcher = (
        [str(script)]
        if script.exists()
        else [sys.executable, "-m", "functions_framework"]
    )
    return [
        *launcher,
        "--target",
        target,
        "--source",
        MAIN_SOURCE,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]


def subprocess_environment(home: Path, env: Mapping[str, str]) -> dict[str, str]:
    """Return a minimal environment: loopback-only GCE, no ambient credentials.

    HOME and CLOUDSDK_CONFIG point at an empty folder, so Application Default
    Credentials find nothing on the machine.
    """
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(home),
        "CLOUDSDK_CONFIG": str(home / "gcloud"),
        "NO_GCE_CHECK": "true",
        "GCE_METADATA_HOST": "127.0.0.1:9",
        "GCE_METADATA_IP": "127.0.0.1:9",
        "PYTHONUNBUFFERED": "1",
        "WORKERS": "1",
        "THREADS": "2",
        **env,
    }


@dataclass
class FunctionProcess:
    """A functions-framework process with its output captured in files."""

    process: subprocess.Popen[bytes]
    port: int
    stdout_path: Path
    stderr_path: Path

    def stdout(self) -> str:
        """Return what the process wrote to stdout so far."""
        return self.stdout_path.read_text(encoding="utf-8", errors="replace")

    def stderr(self) -> str:
        """Return what the process wrote to stderr so far."""
        return self.stderr_path.read_text(encoding="utf-8", errors="replace")

    def stop(self) -> None:
        """Terminate the process, and kill it if it does not exit in time."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=PROCESS_TIMEOUT_SECS)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=PROCESS_TIMEOUT_SECS)


FunctionStarter = Callable[[str, Mapping[str, str]], FunctionProcess]


@pytest.fixture()
def start_function(tmp_path: Path) -> Iterator[FunctionStarter]:
    """Start functions-framework processes, each stopped after the test."""
    started: list[FunctionProcess] = []
    home = tmp_path / "home"
    home.mkdir()

    def start(target: str, env: Mapping[str, str]) -> FunctionProcess:
        port = free_loopback_port()
        index = len(started)
        stdout_path = tmp_path / f"function-{index}.out"
        stderr_path = tmp_path / f"function-{index}.err"
        with stdout_path.open("wb") as stdout, stderr_path.open("wb") as stderr:
            process = subprocess.Popen(  # noqa: S603 - fixed argv, no shell
                functions_framework_command(target, port),
                cwd=REPO_ROOT,
                env=subprocess_environment(home, env),
                stdin=subprocess.DEVNULL,
                stdout=stdout,
                stderr=stderr,
            )
        handle = FunctionProcess(process, port, stdout_path, stderr_path)
        started.append(handle)
        return handle

    yield start
    for handle in started:
        handle.stop()


def wait_until_listening(handle: FunctionProcess, timeout: float = 20.0) -> None:
    """Wait until the process accepts connections; fail if it exits first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if handle.process.poll() is not None:
            pytest.fail(f"the function exited early: {handle.stderr()}")
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            probe.settimeout(0.5)
            if probe.connect_ex(("127.0.0.1", handle.port)) == 0:
                return
        time.sleep(0.1)
    pytest.fail(f"the function did not listen within {timeout} s")

"""Tests for the development mTLS gateway, over real TLS to real processes."""

from __future__ import annotations

import base64
import datetime
import re
import socket
import ssl
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import ExtendedKeyUsageOID

from deploy.local import gateway, pki

from .conftest import StartEcho, ToolProcess

pytestmark = pytest.mark.e2e

StartTool = Callable[[Sequence[str], Mapping[str, str] | None], ToolProcess]
CertPair = tuple[str, str]

DEMO_SPIFFE_ID = "spiffe://demo.example.com/device/demo-client"
DEMO_URI = "https://devices.example.com/demo-client"
DEMO_DNS_NAME = "demo-client.example.com"
MULTI_DNS_NAMES = ("client-1.example.com", "client-1.internal.example.com")
MULTI_URIS = ("https://a.example.com/client-1", "https://b.example.com/client-1")
CUSTOM_SPIFFE_HEADER = "X-Device-Spiffe"
TIMEOUT_SECS = 10


@dataclass
class Gateway:
    """A running gateway process and the files its clients need."""

    url: str
    ca_file: str
    tool: ToolProcess


@dataclass
class Echo:
    """A backend's view of one forwarded request."""

    backend: str
    path: str
    body: str
    peer_port: int
    header_list: list[tuple[str, str]]

    def values(self, name: str) -> list[str]:
        """Return every value of header ``name``, matched case-insensitively."""
        return [v for n, v in self.header_list if n.lower() == name.lower()]

    def header(self, name: str) -> str:
        """Return the single value of header ``name``."""
        values = self.values(name)
        assert len(values) == 1, f"{name}: {values}"
        return values[0]


def _echo(response: requests.Response) -> Echo:
    assert response.status_code == 200, response.text
    data: dict[str, Any] = response.json()
    return Echo(
        data["backend"],
        data["path"],
        data["body"],
        data["peer_port"],
        [(name, value) for name, value in data["headers"]],
    )


def _write_pair(directory: Path, name: str, issued: pki.IssuedCertificate) -> CertPair:
    cert_path, key_path = directory / f"{name}.pem", directory / f"{name}-key.pem"
    pki.write_certificate(cert_path, issued.certificate)
    pki.write_private_key(key_path, issued.private_key)
    return str(cert_path), str(key_path)


def _b64decode(value: str) -> str:
    return base64.b64decode(value + "=" * (-len(value) % 4)).decode()


def _start_gateway(
    start_tool: StartTool,
    pki_dir: Path,
    backends: Mapping[str, str],
    *extra_args: str,
    env: Mapping[str, str] | None = None,
) -> Gateway:
    args = [
        "deploy.local.gateway",
        "--listen",
        "127.0.0.1:0",
        "--cert",
        str(pki_dir / "server-cert.pem"),
        "--key",
        str(pki_dir / "server-key.pem"),
        "--client-ca",
        str(pki_dir / "ca.pem"),
        *extra_args,
    ]
    for name, url in backends.items():
        args += ["--backend", f"{name}={url}"]
    tool = start_tool(args, env)
    match = re.fullmatch(
        r"gateway listening on (https://127\.0\.0\.1:\d+)", tool.first_line
    )
    assert match, tool.first_line
    return Gateway(match.group(1), str(pki_dir / "ca.pem"), tool)


@pytest.fixture(scope="module")
def backends(
    echo_backend_factory: StartEcho,
) -> dict[str, str]:
    return {name: echo_backend_factory(name).url for name in ("token", "metadata")}


@pytest.fixture(scope="module")
def root_gateway(
    tool_process_factory: StartTool, pki_dir: Path, backends: dict[str, str]
) -> Gateway:
    """A gateway with the defaults: root routing, per-entry SAN encoding."""
    return _start_gateway(tool_process_factory, pki_dir, backends)


@pytest.fixture(scope="module")
def mask_gateway(
    tool_process_factory: StartTool, pki_dir: Path, backends: dict[str, str]
) -> Gateway:
    """A gateway with URL-mask routing, whole-list SANs and a renamed header."""
    return _start_gateway(
        tool_process_factory,
        pki_dir,
        backends,
        "--routing",
        "url-mask",
        "--san-encoding",
        "whole-list",
        env={"MTLS_HEADER_CLIENT_CERT_SPIFFE_ID": CUSTOM_SPIFFE_HEADER},
    )


@pytest.fixture(scope="module")
def demo_client(pki_dir: Path) -> CertPair:
    return str(pki_dir / "client-cert.pem"), str(pki_dir / "client-key.pem")


@pytest.fixture(scope="module")
def demo_cert(pki_dir: Path) -> x509.Certificate:
    return pki.load_certificate(pki_dir / "client-cert.pem")


@pytest.fixture(scope="module")
def demo_ca(pki_dir: Path) -> pki.IssuedCertificate:
    return pki.IssuedCertificate(
        pki.load_certificate(pki_dir / "ca.pem"),
        pki.load_private_key(pki_dir / "ca-key.pem"),
    )


@pytest.fixture(scope="module")
def multi_san_client(
    tmp_path_factory: pytest.TempPathFactory, demo_ca: pki.IssuedCertificate
) -> CertPair:
    issued = pki.issue_client_certificate(
        demo_ca.certificate,
        demo_ca.private_key,
        common_name="client-1",
        dns_names=MULTI_DNS_NAMES,
        uris=MULTI_URIS,
    )
    return _write_pair(tmp_path_factory.mktemp("multi"), "multi", issued)


def _get(
    gw: Gateway,
    path: str,
    cert: CertPair | None = None,
    headers: Mapping[str, str] | None = None,
    session: requests.Session | None = None,
) -> requests.Response:
    client = session or requests
    return client.get(
        gw.url + path,
        verify=gw.ca_file,
        cert=cert,
        headers=headers,
        timeout=TIMEOUT_SECS,
    )


@pytest.fixture(scope="module")
def demo_echo(root_gateway: Gateway, demo_client: CertPair) -> Echo:
    return _echo(_get(root_gateway, "/token", demo_client))


@pytest.fixture(scope="module")
def anonymous_echo(root_gateway: Gateway) -> Echo:
    return _echo(_get(root_gateway, "/.well-known/openid-configuration"))


@pytest.fixture(scope="module")
def other_ca_echo(root_gateway: Gateway, pki_dir: Path) -> Echo:
    cert = (
        str(pki_dir / "other-client-cert.pem"),
        str(pki_dir / "other-client-key.pem"),
    )
    return _echo(_get(root_gateway, "/token", cert))


# --- A certificate from the demo CA ----------------------------------------


def test_demo_cert_present(demo_echo: Echo) -> None:
    assert demo_echo.header("X-Client-Cert-Present") == "true"


def test_demo_cert_chain_verified(demo_echo: Echo) -> None:
    assert demo_echo.header("X-Client-Cert-Chain-Verified") == "true"


def test_demo_cert_error_empty(demo_echo: Echo) -> None:
    assert demo_echo.header("X-Client-Cert-Error") == ""


def test_demo_cert_fingerprint_unpadded_sha256(
    demo_echo: Echo, demo_cert: x509.Certificate
) -> None:
    der = demo_cert.public_bytes(serialization.Encoding.DER)
    digest = hashes.Hash(hashes.SHA256())
    digest.update(der)
    expected = base64.b64encode(digest.finalize()).decode().rstrip("=")

    fingerprint = demo_echo.header("X-Client-Cert-Hash")

    assert fingerprint == expected
    assert len(fingerprint) == 43
    assert "=" not in fingerprint


def test_demo_cert_serial_colon_hex(
    demo_echo: Echo, demo_cert: x509.Certificate
) -> None:
    serial = demo_cert.serial_number
    der_content = serial.to_bytes((serial.bit_length() + 8) // 8, "big")
    expected = ":".join(f"{byte:02x}" for byte in der_content)

    header = demo_echo.header("X-Client-Cert-Serial-Number")

    assert header == expected
    assert header.startswith("00:")
    assert re.fullmatch(r"([0-9a-f]{2}:)+[0-9a-f]{2}", header)


def test_demo_cert_spiffe_plain_text(demo_echo: Echo) -> None:
    assert demo_echo.header("X-Client-Cert-Spiffe") == DEMO_SPIFFE_ID


def test_demo_cert_uri_sans_exclude_spiffe(demo_echo: Echo) -> None:
    header = demo_echo.header("X-Client-Cert-URI-SANs")
    assert [_b64decode(part) for part in header.split(",")] == [DEMO_URI]


def test_demo_cert_dnsname_sans(demo_echo: Echo) -> None:
    header = demo_echo.header("X-Client-Cert-DNSName-SANs")
    assert header == base64.b64encode(DEMO_DNS_NAME.encode()).decode()
    assert _b64decode(header) == DEMO_DNS_NAME


def test_demo_cert_validity_dates_rfc3339(
    demo_echo: Echo, demo_cert: x509.Certificate
) -> None:
    not_before = demo_echo.header("X-Client-Cert-Valid-Not-Before")
    not_after = demo_echo.header("X-Client-Cert-Valid-Not-After")

    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\+00:00", not_before)
    assert datetime.datetime.fromisoformat(not_before) == demo_cert.not_valid_before_utc
    assert datetime.datetime.fromisoformat(not_after) == demo_cert.not_valid_after_utc


# --- Several SANs, in both encodings -----------------------------------------


def test_per_entry_encoding_multiple_sans(
    root_gateway: Gateway, multi_san_client: CertPair
) -> None:
    echo = _echo(_get(root_gateway, "/token", multi_san_client))

    dns_header = echo.header("X-Client-Cert-DNSName-SANs")
    uri_header = echo.header("X-Client-Cert-URI-SANs")

    # Each SAN is base64'd on its own, then the results are joined by commas.
    assert dns_header == (
        "Y2xpZW50LTEuZXhhbXBsZS5jb20=,Y2xpZW50LTEuaW50ZXJuYWwuZXhhbXBsZS5jb20="
    )
    assert [_b64decode(part) for part in uri_header.split(",")] == list(MULTI_URIS)
    assert echo.header("X-Client-Cert-Spiffe") == ""


def test_whole_list_encoding_multiple_sans(
    mask_gateway: Gateway, multi_san_client: CertPair
) -> None:
    echo = _echo(_get(mask_gateway, "/token", multi_san_client))

    dns_header = echo.header("X-Client-Cert-DNSName-SANs")
    uri_header = echo.header("X-Client-Cert-URI-SANs")

    # The SANs are joined by commas, then the joined string is base64'd.
    assert (
        dns_header
        == "Y2xpZW50LTEuZXhhbXBsZS5jb20sY2xpZW50LTEuaW50ZXJuYWwuZXhhbXBsZS5jb20="
    )
    assert _b64decode(uri_header).split(",") == list(MULTI_URIS)


def test_whole_list_encoding_demo_cert(
    mask_gateway: Gateway, demo_client: CertPair
) -> None:
    echo = _echo(_get(mask_gateway, "/token", demo_client))
    assert _b64decode(echo.header("X-Client-Cert-URI-SANs")) == DEMO_URI
    assert _b64decode(echo.header("X-Client-Cert-DNSName-SANs")) == DEMO_DNS_NAME


# --- No certificate ----------------------------------------------------------


def test_no_cert_not_present(anonymous_echo: Echo) -> None:
    assert anonymous_echo.header("X-Client-Cert-Present") == "false"


def test_no_cert_not_verified(anonymous_echo: Echo) -> None:
    assert anonymous_echo.header("X-Client-Cert-Chain-Verified") == "false"


def test_no_cert_error_not_provided(anonymous_echo: Echo) -> None:
    assert anonymous_echo.header("X-Client-Cert-Error") == "client_cert_not_provided"


@pytest.mark.parametrize(
    "name",
    [
        "X-Client-Cert-Hash",
        "X-Client-Cert-Serial-Number",
        "X-Client-Cert-Spiffe",
        "X-Client-Cert-URI-SANs",
        "X-Client-Cert-DNSName-SANs",
        "X-Client-Cert-Valid-Not-Before",
        "X-Client-Cert-Valid-Not-After",
    ],
)
def test_no_cert_other_headers_empty(anonymous_echo: Echo, name: str) -> None:
    assert anonymous_echo.header(name) == ""


# --- A certificate from an unknown CA ----------------------------------------


def test_other_ca_present(other_ca_echo: Echo) -> None:
    assert other_ca_echo.header("X-Client-Cert-Present") == "true"


def test_other_ca_not_verified(other_ca_echo: Echo) -> None:
    assert other_ca_echo.header("X-Client-Cert-Chain-Verified") == "false"


def test_other_ca_error_validation_failed(other_ca_echo: Echo) -> None:
    assert (
        other_ca_echo.header("X-Client-Cert-Error") == "client_cert_validation_failed"
    )


def test_other_ca_fingerprint_set(other_ca_echo: Echo, pki_dir: Path) -> None:
    other = pki.load_certificate(pki_dir / "other-client-cert.pem")
    assert other_ca_echo.header("X-Client-Cert-Hash") == gateway.sha256_fingerprint(
        other
    )


@pytest.mark.parametrize(
    "name",
    [
        "X-Client-Cert-Serial-Number",
        "X-Client-Cert-Spiffe",
        "X-Client-Cert-URI-SANs",
        "X-Client-Cert-DNSName-SANs",
        "X-Client-Cert-Valid-Not-Before",
        "X-Client-Cert-Valid-Not-After",
    ],
)
def test_other_ca_other_headers_empty(other_ca_echo: Echo, name: str) -> None:
    assert other_ca_echo.header(name) == ""


# --- Certificates the load balancer rejects ----------------------------------


def _echo_with_new_cert(
    gw: Gateway, tmp_path: Path, issuer: pki.IssuedCertificate, **options: Any
) -> Echo:
    issued = pki.issue_client_certificate(
        issuer.certificate,
        issuer.private_key,
        common_name="rejected",
        spiffe_id="spiffe://demo.example.com/device/rejected",
        **options,
    )
    return _echo(_get(gw, "/token", _write_pair(tmp_path, "rejected", issued)))


def test_server_auth_eku_reports_invalid_eku(
    root_gateway: Gateway, tmp_path: Path, demo_ca: pki.IssuedCertificate
) -> None:
    echo = _echo_with_new_cert(
        root_gateway,
        tmp_path,
        demo_ca,
        extended_key_usage=(ExtendedKeyUsageOID.SERVER_AUTH,),
    )
    assert echo.header("X-Client-Cert-Chain-Verified") == "false"
    assert echo.header("X-Client-Cert-Error") == "client_cert_chain_invalid_eku"


def test_missing_eku_reports_invalid_eku(
    root_gateway: Gateway, tmp_path: Path, demo_ca: pki.IssuedCertificate
) -> None:
    echo = _echo_with_new_cert(root_gateway, tmp_path, demo_ca, extended_key_usage=None)
    assert echo.header("X-Client-Cert-Error") == "client_cert_chain_invalid_eku"


def test_ca_leaf_fails_validation(
    root_gateway: Gateway, tmp_path: Path, demo_ca: pki.IssuedCertificate
) -> None:
    echo = _echo_with_new_cert(root_gateway, tmp_path, demo_ca, ca=True)
    assert echo.header("X-Client-Cert-Chain-Verified") == "false"
    assert echo.header("X-Client-Cert-Error") == "client_cert_validation_failed"


def test_expired_cert_fails_validation(
    root_gateway: Gateway, tmp_path: Path, demo_ca: pki.IssuedCertificate
) -> None:
    now = datetime.datetime.now(datetime.UTC)
    echo = _echo_with_new_cert(
        root_gateway,
        tmp_path,
        demo_ca,
        not_before=now - datetime.timedelta(days=10),
        not_after=now - datetime.timedelta(days=1),
    )
    assert echo.header("X-Client-Cert-Present") == "true"
    assert echo.header("X-Client-Cert-Error") == "client_cert_validation_failed"
    assert echo.header("X-Client-Cert-Valid-Not-After") == ""


# --- Spoofed headers ---------------------------------------------------------


def test_spoofed_headers_replaced_without_cert(root_gateway: Gateway) -> None:
    spoofed = {
        "X-Client-Cert-Chain-Verified": "true",
        "X-Client-Cert-Present": "true",
        "X-Client-Cert-Spiffe": "spiffe://evil.example.com/admin",
        "x-client-cert-extra": "injected",
    }
    echo = _echo(_get(root_gateway, "/token", headers=spoofed))

    assert echo.values("X-Client-Cert-Chain-Verified") == ["false"]
    assert echo.values("X-Client-Cert-Present") == ["false"]
    assert echo.values("X-Client-Cert-Spiffe") == [""]
    assert echo.values("X-Client-Cert-Extra") == []


def test_spoofed_spiffe_replaced_with_cert(
    root_gateway: Gateway, demo_client: CertPair
) -> None:
    spoofed = {"X-Client-Cert-Spiffe": "spiffe://evil.example.com/admin"}
    echo = _echo(_get(root_gateway, "/token", demo_client, headers=spoofed))
    assert echo.values("X-Client-Cert-Spiffe") == [DEMO_SPIFFE_ID]


def test_renamed_header_replaces_client_value(
    mask_gateway: Gateway, demo_client: CertPair
) -> None:
    spoofed = {
        CUSTOM_SPIFFE_HEADER: "spiffe://evil.example.com/admin",
        "X-Client-Cert-Spiffe": "spiffe://evil.example.com/admin",
    }
    echo = _echo(_get(mask_gateway, "/token", demo_client, headers=spoofed))

    assert echo.values(CUSTOM_SPIFFE_HEADER) == [DEMO_SPIFFE_ID]
    assert echo.values("X-Client-Cert-Spiffe") == []


# --- Routing -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "backend"),
    [
        ("/token", "token"),
        ("/token/", "token"),
        ("/token/sub", "token"),
        ("/token?grant_type=client_credentials", "token"),
        ("/tokens", "metadata"),
        ("/", "metadata"),
        ("/.well-known/openid-configuration", "metadata"),
    ],
)
def test_root_routing(root_gateway: Gateway, path: str, backend: str) -> None:
    assert _echo(_get(root_gateway, path)).backend == backend


@pytest.mark.parametrize(
    ("path", "backend"),
    [
        ("/token", "token"),
        ("/token?x=1", "token"),
        ("/metadata/.well-known/openid-configuration", "metadata"),
    ],
)
def test_url_mask_routing(mask_gateway: Gateway, path: str, backend: str) -> None:
    echo = _echo(_get(mask_gateway, path))
    assert echo.backend == backend
    assert echo.path == path


@pytest.mark.parametrize("path", ["/", "/unknown", "/.well-known/openid-configuration"])
def test_url_mask_unknown_segment_404(mask_gateway: Gateway, path: str) -> None:
    response = _get(mask_gateway, path)
    assert response.status_code == 404
    assert response.json()["error"] == "not_found"


@pytest.fixture(scope="module")
def stripping_gateway(
    tool_process_factory: StartTool, pki_dir: Path, backends: dict[str, str]
) -> Gateway:
    """A URL-mask gateway that forwards paths without their first segment."""
    return _start_gateway(
        tool_process_factory,
        pki_dir,
        backends,
        "--routing",
        "url-mask",
        "--strip-mask-segment",
    )


@pytest.mark.parametrize(
    ("path", "backend", "forwarded"),
    [
        ("/token", "token", "/"),
        ("/token?x=1", "token", "/?x=1"),
        ("/metadata/", "metadata", "/"),
        (
            "/metadata/.well-known/openid-configuration",
            "metadata",
            "/.well-known/openid-configuration",
        ),
    ],
)
def test_url_mask_strips_segment(
    stripping_gateway: Gateway, path: str, backend: str, forwarded: str
) -> None:
    echo = _echo(_get(stripping_gateway, path))
    assert echo.backend == backend
    assert echo.path == forwarded


@pytest.mark.parametrize(
    ("target", "stripped"),
    [
        ("/token", "/"),
        ("/token/", "/"),
        ("/metadata/jwks?a=/b", "/jwks?a=/b"),
        ("/a/b/c", "/b/c"),
        ("/", "/"),
    ],
)
def test_strip_first_segment(target: str, stripped: str) -> None:
    assert gateway.strip_first_segment(target) == stripped


def test_strip_needs_url_mask() -> None:
    with pytest.raises(SystemExit):
        gateway.parse_args(["--strip-mask-segment"])


def test_path_and_query_unchanged(root_gateway: Gateway) -> None:
    path = "/token/a%2Fb?scope=a%20b&x=1&x=2"
    assert _echo(_get(root_gateway, path)).path == path


# --- Proxying ----------------------------------------------------------------


def test_host_header_kept(root_gateway: Gateway) -> None:
    echo = _echo(_get(root_gateway, "/", headers={"Host": "broker.example.com"}))
    assert echo.header("Host") == "broker.example.com"


def test_forwarded_headers_set(root_gateway: Gateway) -> None:
    echo = _echo(_get(root_gateway, "/", headers={"X-Forwarded-Proto": "http"}))

    assert echo.values("X-Forwarded-Proto") == ["https"]
    assert echo.header("X-Forwarded-For").startswith("127.0.0.1")
    assert re.fullmatch(r"[0-9a-f]{32}/\d+;o=1", echo.header("X-Cloud-Trace-Context"))


def test_client_trace_context_kept(root_gateway: Gateway) -> None:
    trace = "0af7651916cd43dd8448eb211c80319c/74;o=1"
    echo = _echo(_get(root_gateway, "/", headers={"X-Cloud-Trace-Context": trace}))
    assert echo.values("X-Cloud-Trace-Context") == [trace]


def test_client_forwarded_for_extended(root_gateway: Gateway) -> None:
    echo = _echo(_get(root_gateway, "/", headers={"X-Forwarded-For": "203.0.113.7"}))
    assert echo.header("X-Forwarded-For").startswith("203.0.113.7, 127.0.0.1")


def test_post_body_forwarded(root_gateway: Gateway, demo_client: CertPair) -> None:
    response = requests.post(
        root_gateway.url + "/token",
        data={"grant_type": "client_credentials", "scope": "a b"},
        verify=root_gateway.ca_file,
        cert=demo_client,
        timeout=TIMEOUT_SECS,
    )
    echo = _echo(response)

    assert echo.body == "grant_type=client_credentials&scope=a+b"
    assert echo.header("Content-Length") == str(len(echo.body))


def test_chunked_body_forwarded(root_gateway: Gateway) -> None:
    def chunks() -> Iterator[bytes]:
        yield b"grant_type="
        yield b"client_credentials"

    response = requests.post(
        root_gateway.url + "/token",
        data=chunks(),
        verify=root_gateway.ca_file,
        timeout=TIMEOUT_SECS,
    )
    echo = _echo(response)

    assert echo.body == "grant_type=client_credentials"
    assert echo.header("Content-Length") == "29"
    assert echo.values("Transfer-Encoding") == []


def test_keep_alive_two_requests(root_gateway: Gateway, demo_client: CertPair) -> None:
    with requests.Session() as session:
        first = _get(root_gateway, "/token", demo_client, session=session)
        second = _get(root_gateway, "/token", demo_client, session=session)

    # The gateway opens backend connections per client connection, so the
    # same backend-side peer port means both requests shared one connection
    # from the client and one to the backend.
    assert first.headers.get("Connection", "").lower() != "close"
    assert _echo(first).peer_port == _echo(second).peer_port
    assert _echo(second).header("X-Client-Cert-Chain-Verified") == "true"


def test_backend_idle_close_reconnects(
    tool_process_factory: StartTool, echo_backend_factory: StartEcho, pki_dir: Path
) -> None:
    url = echo_backend_factory("token", idle_timeout=0.2).url
    gw = _start_gateway(tool_process_factory, pki_dir, {"token": url, "metadata": url})

    with requests.Session() as session:
        first = _echo(_get(gw, "/token", session=session))
        time.sleep(0.6)
        second = _echo(_get(gw, "/token", session=session))

    # The backend closed the idle connection, so the gateway opened another.
    assert first.peer_port != second.peer_port
    assert second.header("X-Client-Cert-Present") == "false"


def _raw_tls(gw: Gateway) -> ssl.SSLSocket:
    host, port = gw.url.removeprefix("https://").split(":")
    context = ssl.create_default_context(cafile=gw.ca_file)
    sock = socket.create_connection((host, int(port)), timeout=TIMEOUT_SECS)
    return context.wrap_socket(sock, server_hostname=host)


def _raw_exchange(gw: Gateway, request: bytes) -> bytes:
    # The requests carry no body bytes: a socket closed with unread input
    # sends a TCP reset, which may discard the response on the client side.
    with _raw_tls(gw) as tls:
        tls.sendall(request)
        response = b""
        while chunk := tls.recv(65536):
            response += chunk
    return response


def test_oversized_body_rejected_413(root_gateway: Gateway) -> None:
    request = b"POST /token HTTP/1.1\r\nHost: x\r\nContent-Length: 40000000\r\n\r\n"
    response = _raw_exchange(root_gateway, request)

    assert response.startswith(b"HTTP/1.1 413 ")
    assert b"Connection: close" in response


def test_content_length_with_chunked_rejected_400(root_gateway: Gateway) -> None:
    request = (
        b"POST /token HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n"
    )
    response = _raw_exchange(root_gateway, request)

    assert response.startswith(b"HTTP/1.1 400 ")
    assert b"Connection: close" in response


def test_idle_client_connection_closed(
    tool_process_factory: StartTool, pki_dir: Path, backends: dict[str, str]
) -> None:
    gw = _start_gateway(
        tool_process_factory, pki_dir, backends, "--idle-timeout", "0.3"
    )
    with _raw_tls(gw) as tls:
        started = time.monotonic()
        assert tls.recv(1) == b""
        assert time.monotonic() - started < TIMEOUT_SECS


def test_port_probe_handled_quietly(root_gateway: Gateway) -> None:
    host, port = root_gateway.url.removeprefix("https://").split(":")
    with socket.create_connection((host, int(port)), timeout=TIMEOUT_SECS):
        pass
    with socket.create_connection((host, int(port)), timeout=TIMEOUT_SECS) as probe:
        probe.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")

    assert _get(root_gateway, "/").status_code == 200
    assert "Traceback" not in root_gateway.tool.stderr_text()


def test_log_line_without_secrets(root_gateway: Gateway, demo_client: CertPair) -> None:
    requests.post(
        root_gateway.url + "/token?code=query-secret",
        data={"client_secret": "body-secret"},
        headers={"Authorization": "Bearer header-secret"},
        verify=root_gateway.ca_file,
        cert=demo_client,
        timeout=TIMEOUT_SECS,
    )
    fingerprint = gateway.sha256_fingerprint(pki.load_certificate(Path(demo_client[0])))

    log = root_gateway.tool.stderr_text()

    assert "POST /token -> token 200 present=true verified=true" in log
    assert fingerprint in log
    assert "header-secret" not in log
    assert "body-secret" not in log
    assert "query-secret" not in log


def test_backend_down_returns_502(
    tool_process_factory: StartTool, pki_dir: Path
) -> None:
    with socket.socket() as placeholder:
        placeholder.bind(("127.0.0.1", 0))
        closed_port = placeholder.getsockname()[1]
    url = f"http://127.0.0.1:{closed_port}"
    gw = _start_gateway(tool_process_factory, pki_dir, {"token": url, "metadata": url})

    response = _get(gw, "/token")

    assert response.status_code == 502
    assert response.json()["error"] == "bad_gateway"


# --- Encoders, in process ----------------------------------------------------


@pytest.mark.parametrize(
    ("serial", "expected"),
    [
        (1, "01"),
        (0x7F, "7f"),
        (0x80, "00:80"),  # top bit set: DER adds a leading 00
        (0x0100, "01:00"),
    ],
)
def test_format_serial_number(
    demo_ca: pki.IssuedCertificate, serial: int, expected: str
) -> None:
    cert = pki.issue_client_certificate(
        demo_ca.certificate,
        demo_ca.private_key,
        common_name="serial",
        serial_number=serial,
    ).certificate
    assert gateway.format_serial_number(gateway.serial_number_bytes(cert)) == expected


@pytest.mark.parametrize(
    ("value", "valid"),
    [
        ("spiffe://demo.example.com/device/demo-client", True),
        ("spiffe://demo.example.com", True),
        ("spiffe://Demo.example.com/x", False),  # trust domain must be lowercase
        ("spiffe://demo.example.com/a//b", False),  # empty segment
        ("spiffe://demo.example.com/a/../b", False),  # dot segment
        ("spiffe://demo.example.com:443/x", False),  # port
        ("spiffe://demo.example.com/x?q=1", False),  # query
    ],
)
def test_is_valid_spiffe_id(value: str, valid: bool) -> None:
    assert gateway.is_valid_spiffe_id(value) is valid


def test_encode_sans_empty_list() -> None:
    assert gateway.encode_sans([], "per-entry") == ""
    assert gateway.encode_sans([], "whole-list") == ""

"""Fixtures for the hardening tests: stub Google APIs, real servers, raw HTTP, oracles.

The token function runs either in process, with its STS and IAM Credentials
endpoints pointed at a stub on loopback, or as a real gunicorn server started
by functions-framework. Only the real server applies gunicorn's own request
limits and joins repeated header fields the way gunicorn does.
"""

from __future__ import annotations

import base64
import contextlib
import datetime
import http.client
import http.server
import json
import socket
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import (
    FORM_CONTENT_TYPE,
    ISSUER,
    POOL_ID,
    PROJECT_NUMBER,
    PROVIDER_ID,
    XLB_MTLS_FLOW,
    free_loopback_port,
    subprocess_environment,
)
from tests.e2e.conftest import function_command, running_process

# Access tokens of the stub carry the ya29. prefix, so that the log hygiene
# plugin reports any log line that repeats one.
STUB_STS_TOKEN = "ya29.stub-sts-token"  # noqa: S105 - a fake token
STUB_IAM_TOKEN = "ya29.stub-iam-token"  # noqa: S105 - a fake token
STUB_EXPIRES_IN = 300
# Nothing listens on port 9 (discard) of loopback: calls fail at once.
UNREACHABLE_ENDPOINT = "http://127.0.0.1:9"
HTTP_TIMEOUT_SECONDS = 15.0


class _StubUpstreamHandler(http.server.BaseHTTPRequestHandler):
    """Handler that returns fixed tokens for STS exchanges and generateAccessToken."""

    protocol_version = "HTTP/1.1"

    def do_POST(self) -> None:  # noqa: N802 - name fixed by BaseHTTPRequestHandler
        length = int(self.headers.get("Content-Length") or 0)
        self.rfile.read(length)
        if self.path.split("?")[0] == "/v1/token":
            body: dict[str, Any] = {
                "access_token": STUB_STS_TOKEN,
                "issued_token_type": "urn:ietf:params:oauth:token-type:access_token",
                "token_type": "Bearer",
                "expires_in": STUB_EXPIRES_IN,
            }
            self._send(200, body)
        elif ":generateAccessToken" in self.path:
            expires = datetime.datetime.now(datetime.UTC) + datetime.timedelta(
                seconds=STUB_EXPIRES_IN
            )
            self._send(
                200,
                {
                    "accessToken": STUB_IAM_TOKEN,
                    "expireTime": expires.strftime("%Y-%m-%dT%H:%M:%SZ"),
                },
            )
        else:
            self._send(404, {"error": {"code": 404, "message": "not found"}})

    def _send(self, status: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        """Keep the test output quiet."""


@dataclass(frozen=True)
class StubUpstream:
    """A loopback server standing in for STS and IAM Credentials."""

    base_url: str

    @property
    def sts_endpoint(self) -> str:
        """The STS token endpoint of the stub."""
        return self.base_url + "/v1/token"


@pytest.fixture(scope="session")
def stub_upstream() -> Iterator[StubUpstream]:
    """Serve successful STS and generateAccessToken responses on loopback."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _StubUpstreamHandler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield StubUpstream(f"http://127.0.0.1:{server.server_address[1]}")
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def function_settings(signing_key: Path, client_id_header: str) -> dict[str, str]:
    """Return a local-key configuration whose upstream calls stay on loopback."""
    return {
        "AUTH_FLOWS": XLB_MTLS_FLOW,
        "WORKLOAD_IDENITY_PROJECT_NUMBER": PROJECT_NUMBER,
        "WORKLOAD_IDENITY_POOL_ID": POOL_ID,
        "WORKLOAD_IDENITY_PROVIDER_ID": PROVIDER_ID,
        "TOKEN_ISSUER": ISSUER,
        "SIGNING_KEY_FILE": str(signing_key),
        "MTLS_HEADER_CLIENT_ID": client_id_header,
        "STS_ENDPOINT": UNREACHABLE_ENDPOINT + "/v1/token",
        "IAM_CREDENTIALS_ENDPOINT": UNREACHABLE_ENDPOINT,
    }


def decoded_sans(value: str) -> tuple[str, ...]:
    """Decode a SAN header as base64 parts joined by commas, each a SAN list.

    An oracle for the tests, written apart from ``shared.client_cert``.

    Raises:
        binascii.Error: A part is not base64.
        UnicodeDecodeError: A part does not decode to ASCII.
    """
    sans: list[str] = []
    for part in value.split(","):
        unpadded = part.strip().rstrip("=")
        padded = unpadded + "=" * (-len(unpadded) % 4)
        text = base64.b64decode(padded, validate=True).decode("ascii")
        sans.extend(san.strip() for san in text.split(","))
    return tuple(sans)


def leaf_der(value: str | None) -> bytes | None:
    """Decode an RFC 9440 byte sequence, ``:base64:``, whose padding may be missing.

    An oracle for the tests, written apart from ``shared.leaf_cert``.
    """
    text = (value or "").strip()
    if len(text) < 3 or text[0] != ":" or text[-1] != ":":
        return None
    body = text[1:-1].rstrip("=")
    try:
        return base64.b64decode(body + "=" * (-len(body) % 4), validate=True)
    except ValueError:
        return None


@dataclass(frozen=True)
class FunctionServer:
    """A token function served by gunicorn on a loopback port."""

    port: int
    log_path: Path


ServerFactory = Callable[[str], FunctionServer]


@pytest.fixture(scope="session")
def token_server_factory(
    tmp_path_factory: pytest.TempPathFactory, key_files: dict[str, Path]
) -> Iterator[ServerFactory]:
    """Start token servers on demand, one per client id header, for the session.

    Each server writes its output to a ``*.log`` file under the base
    temporary directory, where the log hygiene plugin scans it.
    """
    folder = tmp_path_factory.mktemp("token-servers")
    home = folder / "home"
    home.mkdir()
    servers: dict[str, FunctionServer] = {}
    with contextlib.ExitStack() as stack:

        def start(client_id_header: str) -> FunctionServer:
            if client_id_header not in servers:
                port = free_loopback_port()
                log_path = folder / f"token-{client_id_header.lower()}.log"
                env = subprocess_environment(
                    home, function_settings(key_files["rsa2048"], client_id_header)
                )
                stack.enter_context(
                    running_process(
                        function_command("token", port), env, port, log_path
                    )
                )
                servers[client_id_header] = FunctionServer(port, log_path)
            return servers[client_id_header]

        yield start


@pytest.fixture(scope="session")
def token_server(token_server_factory: ServerFactory) -> FunctionServer:
    """The token function under gunicorn, with the default SPIFFE client id."""
    return token_server_factory("X-Client-Cert-Spiffe")


@dataclass(frozen=True)
class RawResponse:
    """A response read from a raw HTTP/1.1 exchange."""

    status: int
    headers: http.client.HTTPMessage
    body: bytes

    def json(self) -> dict[str, Any]:
        """Return the body parsed as a JSON object."""
        parsed = json.loads(self.body)
        assert isinstance(parsed, dict), self.body[:200]
        return parsed


HeaderList = Sequence[tuple[str, str | bytes]]


def raw_request(
    port: int,
    method: str,
    target: str,
    headers: HeaderList,
    body: bytes = b"",
) -> RawResponse:
    """Send exactly the given request line, header fields and body.

    Nothing is added, so header counts and sizes are exact: callers send
    Host, Content-Length and ``Connection: close`` themselves, as
    ``form_headers`` does. Header values may be bytes, to send bytes that are
    not ASCII.
    """
    lines = [f"{method} {target} HTTP/1.1".encode("latin-1")]
    for name, value in headers:
        raw = value if isinstance(value, bytes) else value.encode("latin-1")
        lines.append(name.encode("latin-1") + b": " + raw)
    head = b"\r\n".join(lines) + b"\r\n\r\n"
    with socket.create_connection(("127.0.0.1", port), HTTP_TIMEOUT_SECONDS) as sock:
        sock.sendall(head + body)
        response = http.client.HTTPResponse(sock, method=method)
        response.begin()
        return RawResponse(response.status, response.headers, response.read())


def form_headers(
    port: int, body: bytes, extra: HeaderList = ()
) -> list[tuple[str, str | bytes]]:
    """Return Host, Content-Type, Content-Length and Connection, then ``extra``."""
    return [
        ("Host", f"127.0.0.1:{port}"),
        ("Content-Type", FORM_CONTENT_TYPE),
        ("Content-Length", str(len(body))),
        ("Connection", "close"),
        *extra,
    ]

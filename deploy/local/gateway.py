"""Development mTLS gateway that emulates the external Application Load Balancer.

Development tool only, never a security boundary. It terminates TLS the way a
ServerTlsPolicy in ALLOW_INVALID_OR_MISSING_CLIENT_CERT mode does: a client
certificate is optional, and one that fails validation is still let through.
Each request then reaches a local backend with the certificate facts in the
custom request headers of ``shared.lb_headers``, encoded as the load balancer
encodes them (https://cloud.google.com/load-balancing/docs/https/custom-headers-global).

Python's ``ssl`` module aborts the handshake when a presented certificate fails
verification, so TLS is done with pyOpenSSL and the chain is verified after the
handshake with ``cryptography.x509.verification``.

Like a TrustConfig's ``allowlistedCertificates``, ``--allowlist-cert`` names
certificates that count as verified whatever their chain or dates. The opt-in
DN, leaf and chain headers and the load balancer secret are sent when the
environment configures them with the variables the functions read.
"""

from __future__ import annotations

import argparse
import base64
import http.client
import http.server
import io
import ipaddress
import json
import logging
import math
import os
import re
import secrets
import select
import signal
import socket
import socketserver
import sys
import time
import types
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal, NoReturn, cast
from urllib.parse import urlsplit

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID
from cryptography.x509.verification import (
    Criticality,
    ExtensionPolicy,
    PolicyBuilder,
    Store,
    VerificationError,
)
from OpenSSL import SSL

from shared import lb_headers
from shared.discovery import first_segment

if TYPE_CHECKING:
    from _typeshed import ReadableBuffer, WriteableBuffer

_LOGGER = logging.getLogger("deploy.local.gateway")

Routing = Literal["root", "url-mask"]
SanEncoding = Literal["per-entry", "whole-list"]

# Error strings of the load balancer's {client_cert_error} variable, from
# https://cloud.google.com/load-balancing/docs/https/https-logging-monitoring.
NOT_PROVIDED = "client_cert_not_provided"
VALIDATION_FAILED = "client_cert_validation_failed"
INVALID_EKU = "client_cert_chain_invalid_eku"
INVALID_RSA_KEY_SIZE = "client_cert_invalid_rsa_key_size"
UNSUPPORTED_CURVE = "client_cert_unsupported_elliptic_curve_key"
UNSUPPORTED_KEY_ALGORITHM = "client_cert_unsupported_key_algorithm"
SERIAL_TOO_LARGE = "client_cert_serial_number_exceeded_size_limit"
SPIFFE_TOO_LARGE = "client_cert_spiffe_id_exceeded_size_limit"
URI_SANS_TOO_LARGE = "client_cert_uri_sans_exceeded_size_limit"
DNSNAME_SANS_TOO_LARGE = "client_cert_dnsname_sans_exceeded_size_limit"
SUBJECT_DN_TOO_LARGE = "client_cert_subject_dn_exceeded_size_limit"
ISSUER_DN_TOO_LARGE = "client_cert_issuer_dn_exceeded_size_limit"
LEAF_TOO_LARGE = "client_cert_validated_leaf_exceeded_size_limit"
CHAIN_TOO_LARGE = "client_cert_validated_chain_exceeded_size_limit"

# Size limits of the load balancer's header variables, in bytes.
MAX_SERIAL_BYTES = 50
MAX_SPIFFE_ID_BYTES = 2048
MAX_SAN_HEADER_BYTES = 512
MAX_DN_HEADER_BYTES = 512
# Leaf alone, and leaf plus chain, in DER bytes before encoding.
MAX_CERTIFICATE_BYTES = 16 * 1024

# The load balancer accepts RSA keys of 2048 to 4096 bits, P-256 and P-384
# keys, and signatures hashed with SHA-256 or stronger.
_RSA_KEY_BITS = range(2048, 4097)
_CURVES = (ec.SECP256R1, ec.SECP384R1)
_SIGNATURE_HASHES = (hashes.SHA256, hashes.SHA384, hashes.SHA512)

# A SPIFFE ID has no port, user info, query or fragment, per
# https://github.com/spiffe/spiffe/blob/main/standards/SPIFFE-ID.md. The
# character sets are those that SPIFFE's own parsers accept: [a-z0-9._-] for
# the trust domain and [A-Za-z0-9._-] for each non-empty path segment.
# NOTE: the load balancer does not document what it treats as invalid.
_SPIFFE_ID = re.compile(r"spiffe://[a-z0-9._-]+(?:/[A-Za-z0-9._-]+)*")

HOP_BY_HOP_HEADERS = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)
CLIENT_CERT_HEADER_PREFIX = "x-client-cert-"
TRACE_HEADER = "X-Cloud-Trace-Context"
# Request bodies are buffered in memory before forwarding, so their size is
# capped. Token requests are a few hundred bytes.
MAX_BODY_BYTES = 32 * 1024 * 1024
_MAX_CHUNK_LINE = 1024
_IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE"})
HANDSHAKE_TIMEOUT_SECS = 10.0


# --- Certificate facts -------------------------------------------------------


def sha256_fingerprint(cert: x509.Certificate) -> str:
    """Return standard base64 of SHA-256 over the DER certificate, unpadded."""
    digest = cert.fingerprint(hashes.SHA256())
    return base64.b64encode(digest).decode("ascii").rstrip("=")


def serial_number_bytes(cert: x509.Certificate) -> bytes:
    """Return the content bytes of the serial number's DER INTEGER."""
    serial = cert.serial_number
    magnitude = serial if serial >= 0 else ~serial
    # One bit more than the magnitude leaves room for the sign bit, so a
    # positive serial whose top bit is set gets a leading 00 byte.
    return serial.to_bytes((magnitude.bit_length() + 8) // 8, "big", signed=True)


def format_serial_number(serial: bytes) -> str:
    """Format serial bytes as lowercase hex pairs joined by ``:``."""
    return ":".join(f"{byte:02x}" for byte in serial)


def encode_sans(values: Sequence[str], encoding: SanEncoding) -> str:
    """Encode SANs as the load balancer's "comma-separated Base64-encoded list".

    ``per-entry`` encodes each SAN and joins the results with commas.
    ``whole-list`` joins the SANs with commas and encodes the joined string.
    """

    def b64(text: str) -> str:
        return base64.b64encode(text.encode("utf-8")).decode("ascii")

    if not values:
        return ""
    if encoding == "whole-list":
        return b64(",".join(values))
    return ",".join(b64(value) for value in values)


def split_sans(cert: x509.Certificate) -> tuple[list[str], list[str], list[str]]:
    """Return the certificate's SPIFFE URI SANs, other URI SANs and DNS SANs."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        return [], [], []
    uris = san.value.get_values_for_type(x509.UniformResourceIdentifier)
    spiffe = [uri for uri in uris if uri.lower().startswith("spiffe://")]
    others = [uri for uri in uris if not uri.lower().startswith("spiffe://")]
    return spiffe, others, san.value.get_values_for_type(x509.DNSName)


def is_valid_spiffe_id(value: str) -> bool:
    """Check the SPIFFE ID syntax: no port, query, or ``.`` segments."""
    if not _SPIFFE_ID.fullmatch(value):
        return False
    segments = value[len("spiffe://") :].split("/")[1:]
    return all(segment not in (".", "..") for segment in segments)


def _key_error(cert: x509.Certificate) -> str | None:
    try:
        key = cert.public_key()
    except (ValueError, UnsupportedAlgorithm):
        return UNSUPPORTED_KEY_ALGORITHM
    if isinstance(key, rsa.RSAPublicKey):
        return None if key.key_size in _RSA_KEY_BITS else INVALID_RSA_KEY_SIZE
    if isinstance(key, ec.EllipticCurvePublicKey):
        return None if isinstance(key.curve, _CURVES) else UNSUPPORTED_CURVE
    return UNSUPPORTED_KEY_ALGORITHM


def _has_strong_signature_hash(cert: x509.Certificate) -> bool:
    try:
        algorithm = cert.signature_hash_algorithm
    except UnsupportedAlgorithm:
        return False
    return isinstance(algorithm, _SIGNATURE_HASHES)


def _extended_key_usage(cert: x509.Certificate) -> x509.ExtendedKeyUsage | None:
    try:
        return cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        return None


def _eku_error(
    leaf: x509.Certificate, intermediates: Sequence[x509.Certificate]
) -> str | None:
    leaf_eku = _extended_key_usage(leaf)
    if leaf_eku is None or ExtendedKeyUsageOID.CLIENT_AUTH not in leaf_eku:
        return INVALID_EKU
    # A CA without the extension may issue for any purpose.
    for cert in intermediates:
        eku = _extended_key_usage(cert)
        if eku is not None and ExtendedKeyUsageOID.CLIENT_AUTH not in eku:
            return INVALID_EKU
    return None


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints)
    except x509.ExtensionNotFound:
        return False
    return constraints.value.ca


def client_policy_builder(trust_anchors: Sequence[x509.Certificate]) -> PolicyBuilder:
    """Return a policy builder for client chains that end at ``trust_anchors``.

    NOTE: Web PKI requires a SAN in end-entity certificates. The load
    balancer's documented certificate requirements (EKU clientAuth, CA=false,
    SHA-256 or stronger) do not mention one, so this policy accepts
    certificates without a SAN.
    """
    end_entity = ExtensionPolicy.webpki_defaults_ee().may_be_present(
        x509.SubjectAlternativeName, Criticality.AGNOSTIC, None
    )
    return (
        PolicyBuilder()
        .store(Store(list(trust_anchors)))
        .extension_policies(
            ca_policy=ExtensionPolicy.webpki_defaults_ca(), ee_policy=end_entity
        )
    )


def validate_client_chain(
    leaf: x509.Certificate,
    intermediates: Sequence[x509.Certificate],
    policy: PolicyBuilder,
) -> str | None:
    """Validate a client chain as the load balancer does.

    Returns:
        None if the chain is valid, else the load balancer's error string.
    """
    presented = [leaf, *intermediates]
    for cert in presented:
        error = _key_error(cert)
        if error:
            return error
    if not all(_has_strong_signature_hash(cert) for cert in presented):
        return VALIDATION_FAILED
    if _is_ca(leaf):
        return VALIDATION_FAILED
    eku_error = _eku_error(leaf, intermediates)
    if eku_error:
        return eku_error

    try:
        policy.build_client_verifier().verify(leaf, list(intermediates))
    except VerificationError as error:
        _LOGGER.info("client chain rejected: %s", error)
        return VALIDATION_FAILED
    return None


def describe_client_certificate(
    leaf: x509.Certificate | None,
    intermediates: Sequence[x509.Certificate],
    policy: PolicyBuilder,
    san_encoding: SanEncoding,
    allowlist: Collection[bytes] = (),
) -> dict[str, str]:
    """Compute every header value, keyed by ``MtlsHeader.key``.

    Without a certificate only present, verified and error are set. With a
    chain that fails validation the fingerprint is set as well. Every other
    value stays empty, because the load balancer sends those only for a
    verified chain. A leaf whose DER is in ``allowlist`` counts as verified
    without any check, as a TrustConfig's allowlisted certificates do.
    """
    headers = lb_headers.CERTIFICATE_HEADERS + lb_headers.OPTIONAL_HEADERS
    values = {header.key: "" for header in headers}
    values[lb_headers.PRESENT.key] = "false"
    values[lb_headers.CHAIN_VERIFIED.key] = "false"
    if leaf is None:
        values[lb_headers.ERROR.key] = NOT_PROVIDED
        return values

    values[lb_headers.PRESENT.key] = "true"
    values[lb_headers.SHA256_FINGERPRINT.key] = sha256_fingerprint(leaf)
    allowlisted = leaf.public_bytes(serialization.Encoding.DER) in allowlist
    error = None if allowlisted else validate_client_chain(leaf, intermediates, policy)
    if error:
        values[lb_headers.ERROR.key] = error
        return values

    values[lb_headers.CHAIN_VERIFIED.key] = "true"
    values.update(_verified_values(leaf, san_encoding))
    certificate_values = _certificate_values(leaf, intermediates)
    errors = [values[lb_headers.ERROR.key], certificate_values.pop("errors")]
    values.update(certificate_values)
    values[lb_headers.ERROR.key] = ",".join(error for error in errors if error)
    return values


def byte_sequence(data: bytes) -> str:
    """Encode bytes as an RFC 8941 byte sequence: ``:`` base64 ``:``."""
    return ":" + base64.b64encode(data).decode("ascii") + ":"


def _certificate_values(
    leaf: x509.Certificate, intermediates: Sequence[x509.Certificate]
) -> dict[str, str]:
    """Return the DN, leaf and chain values, and the errors of their limits."""
    errors: list[str] = []
    values = {}
    for header, name, too_large in (
        (lb_headers.SUBJECT_DN, leaf.subject, SUBJECT_DN_TOO_LARGE),
        (lb_headers.ISSUER_DN, leaf.issuer, ISSUER_DN_TOO_LARGE),
    ):
        encoded = base64.b64encode(name.public_bytes()).decode("ascii")
        if len(encoded) > MAX_DN_HEADER_BYTES:
            encoded = ""
            errors.append(too_large)
        values[header.key] = encoded

    leaf_der = leaf.public_bytes(serialization.Encoding.DER)
    chain_der = [
        cert.public_bytes(serialization.Encoding.DER) for cert in intermediates
    ]
    values[lb_headers.LEAF.key] = byte_sequence(leaf_der)
    values[lb_headers.CHAIN.key] = ",".join(byte_sequence(der) for der in chain_der)
    if len(leaf_der) > MAX_CERTIFICATE_BYTES:
        values[lb_headers.LEAF.key] = ""
        errors.append(LEAF_TOO_LARGE)
    if len(leaf_der) + sum(map(len, chain_der)) > MAX_CERTIFICATE_BYTES:
        values[lb_headers.CHAIN.key] = ""
        errors.append(CHAIN_TOO_LARGE)
    values["errors"] = ",".join(errors)
    return values


def _verified_values(
    leaf: x509.Certificate, san_encoding: SanEncoding
) -> dict[str, str]:
    errors: list[str] = []
    serial = serial_number_bytes(leaf)
    serial_text = format_serial_number(serial)
    if len(serial) > MAX_SERIAL_BYTES:
        serial_text = ""
        errors.append(SERIAL_TOO_LARGE)

    spiffe_uris, other_uris, dns_names = split_sans(leaf)
    spiffe_id = spiffe_uris[0] if len(spiffe_uris) == 1 else ""
    if len(spiffe_id.encode("utf-8")) > MAX_SPIFFE_ID_BYTES:
        spiffe_id = ""
        errors.append(SPIFFE_TOO_LARGE)
    elif not is_valid_spiffe_id(spiffe_id):
        spiffe_id = ""

    uri_sans = encode_sans(other_uris, san_encoding)
    if len(uri_sans) > MAX_SAN_HEADER_BYTES:
        uri_sans = ""
        errors.append(URI_SANS_TOO_LARGE)
    dns_sans = encode_sans(dns_names, san_encoding)
    if len(dns_sans) > MAX_SAN_HEADER_BYTES:
        dns_sans = ""
        errors.append(DNSNAME_SANS_TOO_LARGE)

    # NOTE: the documentation does not say how several errors are combined,
    # nor whether the size limits apply before or after base64. This joins
    # errors with commas and measures the encoded header value.
    return {
        lb_headers.ERROR.key: ",".join(errors),
        lb_headers.SERIAL_NUMBER.key: serial_text,
        lb_headers.SPIFFE_ID.key: spiffe_id,
        lb_headers.URI_SANS.key: uri_sans,
        lb_headers.DNSNAME_SANS.key: dns_sans,
        lb_headers.VALID_NOT_BEFORE.key: leaf.not_valid_before_utc.isoformat(),
        lb_headers.VALID_NOT_AFTER.key: leaf.not_valid_after_utc.isoformat(),
    }


# --- Routing -----------------------------------------------------------------


def route_request(path: str, routing: Routing, backends: Iterable[str]) -> str | None:
    """Return the name of the backend for ``path``, or None for a 404.

    ``root`` sends ``/token`` and everything below it to ``token`` and all
    other paths to ``metadata``. ``url-mask`` acts like a serverless NEG with
    the URL mask ``/<function>``: the first path segment names the backend.
    """
    if routing == "root":
        is_token = path == "/token" or path.startswith("/token/")
        return "token" if is_token else "metadata"
    segment = first_segment(path).removeprefix("/")
    return segment if segment and segment in set(backends) else None


def _request_path(target: str) -> str:
    if target.startswith("/"):
        return target.split("?", 1)[0]
    return urlsplit(target).path or "/"


def _origin_form(target: str) -> str:
    if target.startswith("/") or target == "*":
        return target
    parts = urlsplit(target)
    return (parts.path or "/") + (f"?{parts.query}" if parts.query else "")


def strip_first_segment(target: str) -> str:
    """Return an origin-form target without its first path segment.

    ``/metadata/jwks?x=1`` becomes ``/jwks?x=1`` and ``/token`` becomes ``/``.
    This emulates the other reading of how a URL mask passes the path on.
    """
    path, mark, query = target.partition("?")
    return (path.removeprefix(first_segment(path)) or "/") + mark + query


# --- Configuration -----------------------------------------------------------


@dataclass(frozen=True)
class Backend:
    """An HTTP backend that requests are forwarded to."""

    name: str
    host: str
    port: int


@dataclass(frozen=True)
class GatewayConfig:
    """Settings of one gateway process."""

    listen_host: str
    listen_port: int
    cert_file: Path
    key_file: Path
    client_ca_file: Path
    backends: Mapping[str, Backend]
    routing: Routing = "root"
    strip_mask_segment: bool = False
    san_encoding: SanEncoding = "per-entry"
    idle_timeout_secs: float = 600.0
    backend_timeout_secs: float = 60.0
    header_names: Mapping[str, str] = field(
        default_factory=lambda: lb_headers.header_names()
    )
    optional_header_names: Mapping[str, str] = field(default_factory=dict)
    allowlist: frozenset[bytes] = frozenset()
    lb_secret: tuple[str, str] | None = None


def parse_backend(text: str) -> Backend:
    """Parse ``NAME=http://HOST:PORT`` into a backend."""
    name, sep, url = text.partition("=")
    if not sep or not re.fullmatch(r"[a-z][a-z0-9_-]*", name):
        raise ValueError(f"invalid backend {text!r}: expected NAME=http://HOST:PORT")
    parts = urlsplit(url)
    if parts.scheme != "http" or not parts.hostname:
        raise ValueError(f"invalid backend URL {url!r}: expected http://HOST:PORT")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ValueError(
            f"invalid backend URL {url!r}: the request path is forwarded "
            "unchanged, so the URL must not have a path or query"
        )
    return Backend(name, parts.hostname, parts.port or 80)


def parse_listen(text: str) -> tuple[str, int]:
    """Parse ``HOST:PORT`` or ``[IPV6]:PORT``. Port 0 picks a free port."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535:
        raise ValueError(f"invalid listen address {text!r}: expected HOST:PORT")
    return host.strip("[]") or "127.0.0.1", int(port)


# --- TLS ---------------------------------------------------------------------


def _accept_any_certificate(
    connection: SSL.Connection, cert: object, errnum: int, depth: int, ok: int
) -> bool:
    # The chain is verified after the handshake, as the load balancer does in
    # ALLOW_INVALID_OR_MISSING_CLIENT_CERT mode.
    return True


def create_tls_context(cert_file: Path, key_file: Path) -> SSL.Context:
    """Create a server context that requests but never requires a certificate."""
    context = SSL.Context(SSL.TLS_SERVER_METHOD)
    context.set_min_proto_version(SSL.TLS1_2_VERSION)
    context.use_certificate_chain_file(str(cert_file))
    context.use_privatekey_file(str(key_file))
    context.check_privatekey()
    # Without VERIFY_FAIL_IF_NO_PEER_CERT the certificate is optional.
    context.set_verify(SSL.VERIFY_PEER, _accept_any_certificate)
    # A resumed session skips the certificate, so every connection must run a
    # full handshake.
    context.set_session_cache_mode(SSL.SESS_CACHE_OFF)
    context.set_options(SSL.OP_NO_TICKET | SSL.OP_NO_RENEGOTIATION)
    return context


def _handshake(connection: SSL.Connection, sock: socket.socket) -> None:
    # The handshake runs on a non-blocking socket so that a silent client
    # cannot hold the thread. Afterwards the socket blocks again, because
    # pyOpenSSL raises WantReadError on sockets with a timeout.
    deadline = time.monotonic() + HANDSHAKE_TIMEOUT_SECS
    sock.setblocking(False)
    while True:
        try:
            connection.do_handshake()
            break
        except SSL.WantReadError:
            readable, writable = [sock], []
        except SSL.WantWriteError:
            readable, writable = [], [sock]
        remaining = deadline - time.monotonic()
        if remaining <= 0 or not any(select.select(readable, writable, [], remaining)):
            raise TimeoutError("TLS handshake timed out")
    sock.setblocking(True)


class TlsStream(io.RawIOBase):
    """Raw binary stream over an established ``SSL.Connection``.

    ``SSL.Connection`` has no ``makefile()``, so this adapter lets
    ``http.server`` read and write through buffered IO. A connection that is
    closed, reset, or idle for longer than ``idle_timeout`` seconds reads as
    end of stream.
    """

    def __init__(self, connection: SSL.Connection, idle_timeout: float) -> None:
        super().__init__()
        self._connection = connection
        self._idle_timeout = idle_timeout

    def readable(self) -> bool:
        return True

    def writable(self) -> bool:
        return True

    def readinto(self, buffer: WriteableBuffer) -> int:
        if self._connection.pending() == 0:
            ready, _, _ = select.select([self._connection], [], [], self._idle_timeout)
            if not ready:
                _LOGGER.debug("closing a client connection idle for too long")
                return 0
        try:
            return self._connection.recv_into(buffer)
        except (SSL.ZeroReturnError, SSL.SysCallError):
            return 0
        except SSL.Error as error:
            raise ConnectionError(f"TLS error: {error}") from error

    def write(self, data: ReadableBuffer) -> int:
        view = memoryview(data)
        try:
            self._connection.sendall(view.tobytes())
        except SSL.Error as error:
            raise ConnectionError(f"TLS error: {error}") from error
        return view.nbytes


# --- HTTP proxy --------------------------------------------------------------


class _RequestError(Exception):
    """An error that the gateway returns itself, as a status and a JSON body."""

    def __init__(self, status: int, error: str, description: str) -> None:
        super().__init__(description)
        self.status = status
        self.error = error
        self.description = description


@dataclass
class _BackendResponse:
    status: int
    reason: str
    headers: list[tuple[str, str]]
    body: bytes


class GatewayServer(socketserver.ThreadingTCPServer):
    """A threaded TCP server that runs one TLS proxy handler per connection."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, config: GatewayConfig) -> None:
        self.config = config
        self.tls_context = create_tls_context(config.cert_file, config.key_file)
        anchors = x509.load_pem_x509_certificates(config.client_ca_file.read_bytes())
        self.client_policy = client_policy_builder(anchors)
        is_ipv6 = ":" in config.listen_host
        self.address_family = socket.AF_INET6 if is_ipv6 else socket.AF_INET
        super().__init__((config.listen_host, config.listen_port), ProxyHandler)

    @property
    def port(self) -> int:
        """The bound port, which differs from the configured one for port 0."""
        return int(self.server_address[1])


class ProxyHandler(http.server.BaseHTTPRequestHandler):
    """Handle one client connection: TLS handshake, then proxied requests."""

    protocol_version = "HTTP/1.1"
    server_version = "token-service-dev-gateway"

    _tls: SSL.Connection | None = None
    _cert_values: dict[str, str]
    _backend_connections: dict[str, http.client.HTTPConnection]

    @property
    def gateway(self) -> GatewayServer:
        """The server this handler belongs to."""
        return cast(GatewayServer, self.server)

    def setup(self) -> None:
        """Run the TLS handshake and describe the client certificate."""
        sock = cast(socket.socket, self.request)
        self.connection = sock
        self._backend_connections = {}
        tls = SSL.Connection(self.gateway.tls_context, sock)
        tls.set_accept_state()
        try:
            _handshake(tls, sock)
        except (SSL.Error, OSError) as error:
            # Port probes and plain-HTTP clients end up here.
            _LOGGER.debug(
                "TLS handshake with %s failed: %r", self.client_address, error
            )
            return

        leaf = tls.get_peer_certificate(as_cryptography=True)
        chain = tls.get_peer_cert_chain(as_cryptography=True) or []
        # The server-side chain omits the leaf, but drop it in case it shows up.
        intermediates = [cert for cert in chain if cert != leaf]
        config = self.gateway.config
        self._cert_values = describe_client_certificate(
            leaf,
            intermediates,
            self.gateway.client_policy,
            config.san_encoding,
            config.allowlist,
        )
        stream = TlsStream(tls, config.idle_timeout_secs)
        self.rfile = io.BufferedReader(stream)
        self.wfile = io.BufferedWriter(stream)
        self._tls = tls

    def handle(self) -> None:
        """Serve requests until the client closes the connection."""
        if self._tls is None:
            return
        try:
            super().handle()
        except (ConnectionError, SSL.Error, OSError) as error:
            _LOGGER.debug("connection from %s ended: %r", self.client_address, error)

    def finish(self) -> None:
        """Close the backend connections and shut the TLS connection down."""
        for connection in self._backend_connections.values():
            connection.close()
        if self._tls is None:
            return
        try:
            super().finish()
            self._tls.shutdown()
        except (SSL.Error, OSError, ValueError):
            pass

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        """Skip the default access log, because ``_log_exchange`` writes one."""

    def log_message(self, format: str, *args: object) -> None:
        """Send http.server's own messages, such as parse errors, to the log."""
        _LOGGER.warning("%s: %s", self.client_address[0], format % args)

    def do_GET(self) -> None:
        """Forward the request."""
        self._proxy()

    do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = do_OPTIONS = do_GET

    def _proxy(self) -> None:
        try:
            body = self._read_body()
        except _RequestError as error:
            # Whatever is left of a rejected body would be parsed as the next
            # request, so the connection must end.
            self.close_connection = True
            self._send_error_json(error)
            self._log_exchange("-", error.status)
            return

        backend_name = "-"
        try:
            backend_name = self._route()
            response = self._forward(self.gateway.config.backends[backend_name], body)
        except _RequestError as error:
            self._send_error_json(error)
            self._log_exchange(backend_name, error.status)
            return
        self._send_backend_response(response)
        self._log_exchange(backend_name, response.status)

    def _route(self) -> str:
        config = self.gateway.config
        path = _request_path(self.path)
        name = route_request(path, config.routing, config.backends)
        if name is None or name not in config.backends:
            raise _RequestError(404, "not_found", "No backend serves this path.")
        return name

    def _read_body(self) -> bytes | None:
        transfer_encoding = self.headers.get("Transfer-Encoding")
        content_length = self.headers.get("Content-Length")
        if transfer_encoding is not None:
            # A request with both headers is a request-smuggling vector
            # (RFC 9112, section 6.1).
            if content_length is not None:
                raise _RequestError(
                    400, "bad_request", "Content-Length with Transfer-Encoding."
                )
            if transfer_encoding.strip().lower() != "chunked":
                raise _RequestError(
                    501, "not_implemented", "Only chunked transfer coding is supported."
                )
            return self._read_chunked()
        if content_length is None:
            return None
        if not content_length.isdigit():
            raise _RequestError(400, "bad_request", "Invalid Content-Length.")
        length = int(content_length)
        if length > MAX_BODY_BYTES:
            raise _RequestError(413, "payload_too_large", "Request body too large.")
        body = self.rfile.read(length)
        if len(body) != length:
            raise _RequestError(400, "bad_request", "Request body truncated.")
        return body

    def _read_chunked(self) -> bytes:
        chunks: list[bytes] = []
        total = 0
        while True:
            line = self.rfile.readline(_MAX_CHUNK_LINE)
            size_text = line.split(b";", 1)[0].strip()
            if not line.endswith(b"\n") or not re.fullmatch(
                rb"[0-9a-fA-F]+", size_text
            ):
                raise _RequestError(400, "bad_request", "Invalid chunked body.")
            size = int(size_text, 16)
            if size == 0:
                break
            total += size
            if total > MAX_BODY_BYTES:
                raise _RequestError(413, "payload_too_large", "Request body too large.")
            chunk = self.rfile.read(size)
            if len(chunk) != size or self.rfile.read(2) != b"\r\n":
                raise _RequestError(400, "bad_request", "Invalid chunked body.")
            chunks.append(chunk)
        # Trailer fields end with an empty line. They are read and dropped.
        while self.rfile.readline(_MAX_CHUNK_LINE) not in (b"\r\n", b"\n", b""):
            pass
        return b"".join(chunks)

    def _backend_headers(
        self, backend: Backend, body: bytes | None
    ) -> list[tuple[str, str]]:
        config = self.gateway.config
        names = config.header_names
        trusted = [*names.values(), *config.optional_header_names.values()]
        if config.lb_secret is not None:
            trusted.append(config.lb_secret[0])
        removed = set(HOP_BY_HOP_HEADERS) | {name.lower() for name in trusted}
        removed |= {"content-length", "expect", "x-forwarded-proto", "x-forwarded-for"}
        for value in self.headers.get_all("Connection", []):
            removed |= {token.strip().lower() for token in value.split(",")}

        headers = [
            (name, value)
            for name, value in self.headers.items()
            if name.lower() not in removed
            and not name.lower().startswith(CLIENT_CERT_HEADER_PREFIX)
        ]
        if "Host" not in self.headers:
            headers.append(("Host", f"{backend.host}:{backend.port}"))
        for header in lb_headers.CERTIFICATE_HEADERS:
            headers.append((names[header.key], self._cert_values[header.key]))
        for key, name in config.optional_header_names.items():
            headers.append((name, self._cert_values[key]))
        if config.lb_secret is not None:
            headers.append(config.lb_secret)

        forwarded_for = self.headers.get_all("X-Forwarded-For", [])
        local_address = cast(socket.socket, self.request).getsockname()[0]
        forwarded_for += [self.client_address[0], local_address]
        headers.append(("X-Forwarded-For", ", ".join(forwarded_for)))
        headers.append(("X-Forwarded-Proto", "https"))
        if TRACE_HEADER not in self.headers:
            headers.append((TRACE_HEADER, new_trace_context()))
        if body is not None:
            headers.append(("Content-Length", str(len(body))))
        return headers

    def _forward(self, backend: Backend, body: bytes | None) -> _BackendResponse:
        headers = self._backend_headers(backend, body)
        target = _origin_form(self.path)
        if self.gateway.config.strip_mask_segment:
            target = strip_first_segment(target)
        for attempt in (1, 2):
            connection, reused = self._backend_connection(backend)
            try:
                return self._exchange(connection, backend, target, headers, body)
            except TimeoutError as error:
                self._drop_backend_connection(backend)
                raise _RequestError(
                    504, "gateway_timeout", f"Backend {backend.name} timed out."
                ) from error
            except ValueError as error:
                # http.client rejects header values it cannot send safely.
                self._drop_backend_connection(backend)
                raise _RequestError(400, "bad_request", "Invalid header.") from error
            except (OSError, http.client.HTTPException) as error:
                self._drop_backend_connection(backend)
                # A kept-alive connection that the backend closed while idle
                # fails on first use. Retry once where a replay is safe.
                stale = isinstance(error, ConnectionResetError | BrokenPipeError)
                if (
                    attempt == 1
                    and reused
                    and stale
                    and self.command in _IDEMPOTENT_METHODS
                ):
                    continue
                _LOGGER.warning("backend %s failed: %r", backend.name, error)
                raise _RequestError(
                    502, "bad_gateway", f"Backend {backend.name} is unreachable."
                ) from error
        raise AssertionError("unreachable")

    def _exchange(
        self,
        connection: http.client.HTTPConnection,
        backend: Backend,
        target: str,
        headers: Sequence[tuple[str, str]],
        body: bytes | None,
    ) -> _BackendResponse:
        connection.putrequest(
            self.command, target, skip_host=True, skip_accept_encoding=True
        )
        for name, value in headers:
            connection.putheader(name, value)
        connection.endheaders(body)
        response = connection.getresponse()
        data = response.read()
        if response.will_close:
            self._drop_backend_connection(backend)
        return _BackendResponse(
            response.status, response.reason, response.getheaders(), data
        )

    def _backend_connection(
        self, backend: Backend
    ) -> tuple[http.client.HTTPConnection, bool]:
        connection = self._backend_connections.get(backend.name)
        if connection is not None and connection.sock is not None:
            # An idle connection that reads as ready has been closed by the
            # backend (or sent unrequested data), so it cannot be reused.
            ready, _, _ = select.select([connection.sock], [], [], 0)
            if not ready:
                return connection, True
            self._drop_backend_connection(backend)
        connection = http.client.HTTPConnection(
            backend.host, backend.port, timeout=self.gateway.config.backend_timeout_secs
        )
        self._backend_connections[backend.name] = connection
        return connection, False

    def _drop_backend_connection(self, backend: Backend) -> None:
        connection = self._backend_connections.pop(backend.name, None)
        if connection is not None:
            connection.close()

    def _send_backend_response(self, response: _BackendResponse) -> None:
        removed = set(HOP_BY_HOP_HEADERS) | {"content-length"}
        for name, value in response.headers:
            if name.lower() == "connection":
                removed |= {token.strip().lower() for token in value.split(",")}
        has_body = self.command != "HEAD" and response.status not in (204, 304)

        self.send_response_only(response.status, response.reason)
        for name, value in response.headers:
            if name.lower() not in removed:
                self.send_header(name, value)
            elif name.lower() == "content-length" and not has_body:
                # A HEAD response announces the length of the body it omits.
                self.send_header(name, value)
        if has_body:
            self.send_header("Content-Length", str(len(response.body)))
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if has_body:
            self.wfile.write(response.body)

    def _send_error_json(self, error: _RequestError) -> None:
        body = json.dumps(
            {"error": error.error, "error_description": error.description}
        ).encode()
        self.send_response_only(error.status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _log_exchange(self, backend_name: str, status: int) -> None:
        # The query string is left out because it may carry credentials.
        values = self._cert_values
        _LOGGER.info(
            "%s %s -> %s %d present=%s verified=%s error=%s sha256=%s",
            self.command,
            _request_path(self.path),
            backend_name,
            status,
            values[lb_headers.PRESENT.key],
            values[lb_headers.CHAIN_VERIFIED.key],
            values[lb_headers.ERROR.key] or "-",
            values[lb_headers.SHA256_FINGERPRINT.key] or "-",
        )


def new_trace_context() -> str:
    """Return a new ``X-Cloud-Trace-Context``: hex trace id, decimal span id."""
    return f"{secrets.token_hex(16)}/{secrets.randbelow(2**63) + 1};o=1"


# --- Command line ------------------------------------------------------------


def _positive_seconds(text: str) -> float:
    try:
        seconds = float(text)
    except ValueError:
        seconds = math.nan
    if not (math.isfinite(seconds) and seconds > 0):
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text}")
    return seconds


def parse_args(argv: Sequence[str] | None) -> GatewayConfig:
    parser = argparse.ArgumentParser(
        prog="python -m deploy.local.gateway",
        description=(
            "Development mTLS gateway that emulates the external Application "
            "Load Balancer in ALLOW_INVALID_OR_MISSING_CLIENT_CERT mode. "
            "Not a security boundary."
        ),
    )
    parser.add_argument(
        "--listen",
        default="127.0.0.1:8443",
        metavar="HOST:PORT",
        help="HOST:PORT to listen on. Port 0 picks a free port (default: %(default)s)",
    )
    parser.add_argument(
        "--cert",
        type=Path,
        default=Path(".local/pki/server-cert.pem"),
        help="server certificate chain, PEM (default: %(default)s)",
    )
    parser.add_argument(
        "--key",
        type=Path,
        default=Path(".local/pki/server-key.pem"),
        help="server private key, PEM (default: %(default)s)",
    )
    parser.add_argument(
        "--client-ca",
        type=Path,
        default=Path(".local/pki/ca.pem"),
        help="trust anchors for client certificates, PEM bundle (default: %(default)s)",
    )
    parser.add_argument(
        "--backend",
        action="append",
        metavar="NAME=URL",
        help="backend, repeatable (default: token=http://127.0.0.1:8081 "
        "and metadata=http://127.0.0.1:8082)",
    )
    parser.add_argument(
        "--routing",
        choices=("root", "url-mask"),
        default="root",
        help="root sends /token to the 'token' backend and other paths to "
        "'metadata'. url-mask takes the backend name from the first path "
        "segment (default: %(default)s)",
    )
    parser.add_argument(
        "--strip-mask-segment",
        action="store_true",
        help="with --routing url-mask, forward the path without the segment "
        "that named the backend (/metadata/jwks reaches it as /jwks)",
    )
    parser.add_argument(
        "--san-encoding",
        choices=("per-entry", "whole-list"),
        default="per-entry",
        help="base64 each SAN, or the comma-joined list (default: %(default)s)",
    )
    parser.add_argument(
        "--idle-timeout",
        type=_positive_seconds,
        default=600.0,
        metavar="SECS",
        help="close client connections idle this long (default: %(default)s)",
    )
    parser.add_argument(
        "--backend-timeout",
        type=_positive_seconds,
        default=60.0,
        metavar="SECS",
        help="respond with 504 when a backend takes longer (default: %(default)s)",
    )
    parser.add_argument(
        "--allowlist-cert",
        action="append",
        type=Path,
        default=[],
        metavar="PEM",
        help="a client certificate that always counts as verified, even when "
        "expired or self-signed, like a TrustConfig allowlisted certificate; "
        "repeatable",
    )
    parser.add_argument("--verbose", action="store_true", help="log at DEBUG level")
    args = parser.parse_args(argv)

    try:
        host, port = parse_listen(args.listen)
        specs = args.backend or [
            "token=http://127.0.0.1:8081",
            "metadata=http://127.0.0.1:8082",
        ]
        backends = {backend.name: backend for backend in map(parse_backend, specs)}
        allowlist = _load_allowlist(args.allowlist_cert)
    except ValueError as error:
        parser.error(str(error))
    missing = {"token", "metadata"} - backends.keys()
    if args.routing == "root" and missing:
        parser.error(f"--routing root needs the backends {', '.join(sorted(missing))}")
    if args.strip_mask_segment and args.routing != "url-mask":
        parser.error("--strip-mask-segment needs --routing url-mask")

    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s gateway %(levelname)s %(message)s",
        stream=sys.stderr,
    )
    return GatewayConfig(
        listen_host=host,
        listen_port=port,
        cert_file=args.cert,
        key_file=args.key,
        client_ca_file=args.client_ca,
        backends=backends,
        routing=args.routing,
        strip_mask_segment=args.strip_mask_segment,
        san_encoding=args.san_encoding,
        idle_timeout_secs=args.idle_timeout,
        backend_timeout_secs=args.backend_timeout,
        header_names=lb_headers.header_names(dict(os.environ)),
        optional_header_names=lb_headers.optional_header_names(os.environ),
        allowlist=allowlist,
        lb_secret=_lb_secret(os.environ),
    )


def _load_allowlist(paths: Sequence[Path]) -> frozenset[bytes]:
    allowlist: set[bytes] = set()
    for path in paths:
        try:
            certificates = x509.load_pem_x509_certificates(path.read_bytes())
        except (OSError, ValueError) as error:
            raise ValueError(
                f"--allowlist-cert {path}: not a readable PEM certificate ({error})"
            ) from None
        allowlist.update(
            cert.public_bytes(serialization.Encoding.DER) for cert in certificates
        )
    return frozenset(allowlist)


def _lb_secret(environ: Mapping[str, str]) -> tuple[str, str] | None:
    """Return the secret header to send, as the URL map adds it, or None.

    During a rotation ``LB_SECRET`` lists the new secret first, and the load
    balancer sends only that one.
    """
    header = environ.get("LB_SECRET_HEADER", "").strip()
    secret = environ.get("LB_SECRET", "").split(",")[0].strip()
    if not header or not secret:
        return None
    return header, secret


def _warn_about_client_id_header(header_names: Mapping[str, str]) -> None:
    name = os.environ.get(lb_headers.CLIENT_ID_SETTING, "").strip()
    known = {value.lower() for value in header_names.values()}
    if name and name.lower() not in known:
        _LOGGER.warning(
            "%s=%s names none of the ten certificate headers, so neither the "
            "load balancer nor this gateway sets it. Point it at one of them",
            lb_headers.CLIENT_ID_SETTING,
            name,
        )


def _stop(signum: int, frame: types.FrameType | None) -> NoReturn:
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    """Run the gateway until Ctrl-C or SIGTERM."""
    config = parse_args(argv)
    _warn_about_client_id_header(config.header_names)
    for path in (config.cert_file, config.key_file, config.client_ca_file):
        if not path.is_file():
            print(
                f"error: {path} not found. Create the demo PKI with "
                "`python -m deploy.local.pki`, or pass --cert, --key and --client-ca",
                file=sys.stderr,
            )
            return 1
    try:
        server = GatewayServer(config)
    except (OSError, SSL.Error, ValueError) as error:
        print(f"error: cannot start the gateway: {error}", file=sys.stderr)
        return 1

    host = str(server.server_address[0])
    shown_host = f"[{host}]" if ":" in host else host
    if not ipaddress.ip_address(host).is_loopback:
        _LOGGER.warning("listening on %s, which is not a loopback address", host)
    signal.signal(signal.SIGTERM, _stop)
    print(f"gateway listening on https://{shown_host}:{server.port}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
        _LOGGER.info("gateway stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())

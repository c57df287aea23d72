"""gunicorn's header size limit, measured through the real server.

functions-framework runs gunicorn with ``limit_request_field_size`` at its
default, 8190 bytes per header line including ``Name: `` and CRLF. For the
leaf header under the name X-Client-Cert-Leaf that leaves 8168 characters of
value, which is a DER certificate of at most 6123 bytes in RFC 9440 form.
"""

from __future__ import annotations

import http.client
import math
from collections.abc import Mapping

import pytest
from cryptography.hazmat.primitives import serialization

from deploy.local import pki
from tests.conftest import (
    FORM_CONTENT_TYPE,
    FunctionProcess,
    FunctionStarter,
    wait_until_listening,
)
from tests.policy.conftest import (
    CHAIN_HEADER,
    GRANT,
    LEAF_HEADER,
    OPTIONAL_HEADER_ENV,
    lb_headers_for,
)

pytestmark = pytest.mark.e2e

# gunicorn 27's DEFAULT_MAX_HEADERFIELD_SIZE, compared with len(line) + 2.
MAX_HEADER_LINE = 8190
MAX_LEAF_VALUE = MAX_HEADER_LINE - len(f"{LEAF_HEADER}: ") - 2
MAX_LEAF_DER = (MAX_LEAF_VALUE - 2) // 4 * 3


def test_limit_arithmetic() -> None:
    # The numbers docs/policy.md quotes.
    assert MAX_LEAF_VALUE == 8168
    assert MAX_LEAF_DER == 6123
    assert 4 * math.ceil(MAX_LEAF_DER / 3) + 2 <= MAX_LEAF_VALUE
    assert 4 * math.ceil((MAX_LEAF_DER + 1) / 3) + 2 > MAX_LEAF_VALUE


def certificate_of_size(ca: pki.IssuedCertificate, size: int) -> pki.IssuedCertificate:
    """Issue a certificate whose DER is exactly ``size`` bytes.

    DNS SANs pad it; ECDSA signatures vary by a byte or two in length, so
    the padding is adjusted until the size is exact.
    """
    padding = size - 600
    for _ in range(100):
        names = [f"p{i:04d}.example.com" for i in range(padding // 19)]
        names.append("x" * max(1, padding % 19) + ".example.com")
        issued = pki.issue_client_certificate(
            ca.certificate,
            ca.private_key,
            common_name="sized",
            spiffe_id="spiffe://demo.example.com/device/sized",
            dns_names=names,
        )
        actual = len(issued.certificate.public_bytes(serialization.Encoding.DER))
        if actual == size:
            return issued
        padding += size - actual
    raise AssertionError(f"no certificate of {size} bytes")


@pytest.fixture(scope="module")
def sized(demo_ca: pki.IssuedCertificate) -> dict[str, pki.IssuedCertificate]:
    return {
        "fits": certificate_of_size(demo_ca, MAX_LEAF_DER),
        "too_large": certificate_of_size(demo_ca, MAX_LEAF_DER + 1),
    }


@pytest.fixture()
def server(
    start_function: FunctionStarter, service_env: dict[str, str]
) -> FunctionProcess:
    handle = start_function("token", {**service_env, **OPTIONAL_HEADER_ENV})
    wait_until_listening(handle)
    return handle


def post(server: FunctionProcess, headers: Mapping[str, str]) -> tuple[int, bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=15)
    try:
        connection.request(
            "POST",
            "/token",
            body=GRANT,
            headers={**headers, "Content-Type": FORM_CONTENT_TYPE},
        )
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def test_largest_leaf_passes_gunicorn(
    server: FunctionProcess, sized: dict[str, pki.IssuedCertificate]
) -> None:
    headers = lb_headers_for(sized["fits"].certificate, optional=True)
    assert len(headers[LEAF_HEADER]) in (
        MAX_LEAF_VALUE - 2,
        MAX_LEAF_VALUE - 1,
        MAX_LEAF_VALUE,
    )
    status, body = post(server, headers)
    assert status == 200, body


def test_one_byte_more_rejected_by_gunicorn(
    server: FunctionProcess, sized: dict[str, pki.IssuedCertificate]
) -> None:
    headers = lb_headers_for(sized["too_large"].certificate, optional=True)
    assert len(headers[LEAF_HEADER]) > MAX_LEAF_VALUE
    status, body = post(server, headers)
    # gunicorn responds with 431 before the function runs, so the body is not OAuth
    # JSON and the function logs nothing.
    assert status == 431
    assert b"invalid_client" not in body
    assert "Token request" not in server.stdout()


@pytest.mark.parametrize(
    ("extra", "status"),
    [
        pytest.param(0, 200, id="at-limit"),
        pytest.param(1, 431, id="one-over"),
    ],
)
def test_chain_header_limit(
    server: FunctionProcess,
    demo_ca: pki.IssuedCertificate,
    extra: int,
    status: int,
) -> None:
    # Without TRUSTED_CA_FILE the chain is not used, so any value of the
    # right length shows where gunicorn cuts off.
    leaf = pki.issue_client_certificate(
        demo_ca.certificate,
        demo_ca.private_key,
        common_name="chain-limit",
        spiffe_id="spiffe://demo.example.com/device/chain-limit",
    )
    headers = lb_headers_for(leaf.certificate, optional=True)
    length = MAX_HEADER_LINE - len(f"{CHAIN_HEADER}: ") - 2 + extra
    headers[CHAIN_HEADER] = ":" + "A" * (length - 2) + ":"
    assert post(server, headers)[0] == status

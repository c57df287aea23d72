"""The local gateway's allowlist and opt-in headers, as the policy tests use them."""

from __future__ import annotations

import base64
import datetime

import pytest
from cryptography.hazmat.primitives import serialization

from deploy.local import gateway, pki
from shared.leaf_cert import parse_chain_header, parse_dn_header, parse_leaf_header
from tests.policy.conftest import Mint, utc_now


def describe(
    leaf: pki.IssuedCertificate,
    anchor: pki.IssuedCertificate,
    intermediates: tuple[pki.IssuedCertificate, ...] = (),
    allowlist: tuple[bytes, ...] = (),
) -> dict[str, str]:
    return gateway.describe_client_certificate(
        leaf.certificate,
        [issued.certificate for issued in intermediates],
        gateway.client_policy_builder([anchor.certificate]),
        "per-entry",
        allowlist,
    )


def der(issued: pki.IssuedCertificate) -> bytes:
    return issued.certificate.public_bytes(serialization.Encoding.DER)


@pytest.fixture(scope="module")
def expired(mint: Mint) -> pki.IssuedCertificate:
    now = utc_now()
    return mint(
        "expired",
        not_before=now - datetime.timedelta(days=30),
        not_after=now - datetime.timedelta(days=1),
    )


def test_expired_not_verified(
    expired: pki.IssuedCertificate, demo_ca: pki.IssuedCertificate
) -> None:
    values = describe(expired, demo_ca)
    assert values["chain_verified"] == "false"
    assert values["valid_not_after"] == ""


def test_allowlisted_expired_verified(
    expired: pki.IssuedCertificate, demo_ca: pki.IssuedCertificate
) -> None:
    values = describe(expired, demo_ca, allowlist=(der(expired),))
    assert values["chain_verified"] == "true"
    assert values["error"] == ""
    assert (
        values["valid_not_after"] == expired.certificate.not_valid_after_utc.isoformat()
    )


def test_allowlist_covers_only_listed(
    mint: Mint,
    demo_ca: pki.IssuedCertificate,
    other_ca: pki.IssuedCertificate,
    expired: pki.IssuedCertificate,
) -> None:
    stranger = mint("stranger", ca=other_ca)
    values = describe(stranger, demo_ca, allowlist=(der(expired),))
    assert values["chain_verified"] == "false"


def test_optional_values_encoded(demo_ca: pki.IssuedCertificate, mint: Mint) -> None:
    intermediate = pki.create_intermediate_authority(demo_ca, "gateway test issuing CA")
    leaf = mint("chained", ca=intermediate)
    values = describe(leaf, demo_ca, (intermediate,))
    assert values["chain_verified"] == "true"
    assert parse_leaf_header(values["leaf"]) == leaf.certificate
    assert parse_chain_header(values["chain"]) == (intermediate.certificate,)
    assert parse_dn_header(values["subject_dn"]) == leaf.certificate.subject
    assert parse_dn_header(values["issuer_dn"]) == intermediate.certificate.subject


def test_optional_values_empty_unverified(
    other_ca: pki.IssuedCertificate, demo_ca: pki.IssuedCertificate, mint: Mint
) -> None:
    values = describe(mint("stranger", ca=other_ca), demo_ca)
    assert values["leaf"] == values["chain"] == values["subject_dn"] == ""


def test_long_dn_emptied(demo_ca: pki.IssuedCertificate, mint: Mint) -> None:
    leaf = mint("long-dn", organization="O" * 400)
    assert len(base64.b64encode(leaf.certificate.subject.public_bytes())) > 512
    values = describe(leaf, demo_ca)
    assert values["subject_dn"] == ""
    assert gateway.SUBJECT_DN_TOO_LARGE in values["error"].split(",")


def test_large_leaf_emptied(demo_ca: pki.IssuedCertificate, mint: Mint) -> None:
    leaf = mint("large", dns_names=[f"host-{i}.example.com" for i in range(900)])
    assert len(der(leaf)) > 16 * 1024
    values = describe(leaf, demo_ca, allowlist=(der(leaf),))
    assert values["leaf"] == ""
    assert values["chain"] == ""
    errors = values["error"].split(",")
    assert gateway.LEAF_TOO_LARGE in errors
    assert gateway.CHAIN_TOO_LARGE in errors

"""Tests for shared.policy rules: every condition type, decisions and limits."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from cryptography import x509

from shared import lb_headers
from shared.client_cert import ClientCertificate
from shared.config import ConfigurationError, HeaderNames
from shared.errors import InvalidClientError, InvalidScopeError, UnauthorizedClientError
from shared.policy import ClientPolicy, dns_name_matches, load_policy
from shared.token_request import TokenRequest
from tests.policy.conftest import rule, write_policy

FINGERPRINT = "om8vGt3r6eTx5TI1kCeNKRJYZTUreIbHGu+Gu8FN8To"
OTHER_FINGERPRINT = "G+SrKkjfs6Kom73j7sp+hY6/5kZ+UjPdBDEyiaOUk08"
SERIAL = "00:ad:3e:0e:bc:c3:d4:f4:2d:ae:5b:21:3b:e4:cb:8b:f4:9d:49:a1"
SPIFFE_ID = "spiffe://example.org/ns/prod/sa/client-1"
SUBJECT = x509.Name.from_rfc4514_string("CN=client-1,O=Example")
ISSUER = x509.Name.from_rfc4514_string("CN=Example Issuing CA,O=Example")

CERT = ClientCertificate(
    present=True,
    chain_verified=True,
    sha256_fingerprint=FINGERPRINT,
    serial_number=SERIAL,
    spiffe_id=SPIFFE_ID,
    uri_sans=("https://devices.example.com/client-1", "urn:example:client-1"),
    dns_sans=("client-1.example.com", "client-1.internal.example.org"),
    subject=SUBJECT,
    issuer=ISSUER,
)


def policy_of(tmp_path: Path, *rules: dict[str, Any], **extra: Any) -> ClientPolicy:
    return load_policy(write_policy(tmp_path, {"rules": list(rules), **extra}))


def matches(tmp_path: Path, cert: ClientCertificate = CERT, **match: Any) -> bool:
    policy = policy_of(tmp_path, rule("r", match=match))
    try:
        policy.decide(cert)
    except InvalidClientError as error:
        assert error.reason == "policy_no_match"
        return False
    return True


def with_facts(**facts: Any) -> ClientCertificate:
    fields = {**CERT.__dict__, **facts}
    return ClientCertificate(**fields)


# --- Conditions --------------------------------------------------------------


@pytest.mark.parametrize(
    ("match", "expected"),
    [
        ({"sha256_fingerprint": FINGERPRINT}, True),
        ({"sha256_fingerprint": [OTHER_FINGERPRINT, FINGERPRINT]}, True),
        ({"sha256_fingerprint": OTHER_FINGERPRINT}, False),
        ({"serial_number": SERIAL}, True),
        ({"serial_number": SERIAL.upper()}, True),  # hex compares case-insensitively
        ({"serial_number": SERIAL[3:]}, False),  # the leading 00 is part of it
        ({"spiffe_id": SPIFFE_ID}, True),
        ({"spiffe_id": SPIFFE_ID + "x"}, False),
        ({"spiffe_trust_domain": "example.org"}, True),
        ({"spiffe_trust_domain": "example.com"}, False),
        (
            {"spiffe_trust_domain": "example.org", "spiffe_path_prefix": "/ns/prod"},
            True,
        ),
        (
            {"spiffe_trust_domain": "example.org", "spiffe_path_prefix": "/ns/prod/"},
            True,
        ),
        # Prefixes match whole path segments.
        (
            {"spiffe_trust_domain": "example.org", "spiffe_path_prefix": "/ns/pro"},
            False,
        ),
        (
            {
                "spiffe_trust_domain": "example.org",
                "spiffe_path_prefix": ["/ns/dev", "/ns"],
            },
            True,
        ),
        ({"dns_san": "client-1.example.com"}, True),
        ({"dns_san": "CLIENT-1.example.com"}, True),  # DNS names ignore case
        ({"dns_san": "*.example.com"}, True),
        # Any of the certificate's DNS SANs may match; this is the second.
        ({"dns_san": "*.internal.example.org"}, True),
        ({"dns_san": "*.other.example.com"}, False),
        ({"uri_san_prefix": "https://devices.example.com/"}, True),
        ({"uri_san_prefix": "urn:example:"}, True),
        ({"uri_san_prefix": "https://devices.example.org/"}, False),
        ({"subject_dn": "CN=client-1,O=Example"}, True),
        ({"subject_dn": "2.5.4.3=client-1,O=Example"}, True),  # normalized on load
        ({"subject_dn": "CN=client-2,O=Example"}, False),
        ({"issuer_dn": "CN=Example Issuing CA,O=Example"}, True),
        ({"issuer_dn": "CN=Other CA"}, False),
        # Conditions combine with AND.
        ({"dns_san": "*.example.com", "spiffe_trust_domain": "example.org"}, True),
        ({"dns_san": "*.example.com", "spiffe_trust_domain": "example.com"}, False),
    ],
)
def test_condition_matches(
    tmp_path: Path, match: dict[str, Any], expected: bool
) -> None:
    assert matches(tmp_path, **match) is expected


@pytest.mark.parametrize(
    ("name", "pattern", "expected"),
    [
        ("a.example.com", "*.example.com", True),  # one label
        ("a.b.example.com", "*.example.com", True),  # more labels
        ("example.com", "*.example.com", False),  # no label before the suffix
        ("aexample.com", "*.example.com", False),  # not at a label boundary
        ("A.Example.COM.", "*.example.com", True),  # case and a trailing dot
        ("a.example.com", "a.example.com", True),
        ("b.a.example.com", "a.example.com", False),  # exact names stay exact
    ],
)
def test_dns_name_wildcard(name: str, pattern: str, expected: bool) -> None:
    assert dns_name_matches(name, pattern) is expected


@pytest.mark.parametrize(
    "facts",
    [
        pytest.param({"spiffe_id": ""}, id="no-spiffe-id"),
        pytest.param({"dns_sans": ()}, id="no-dns-sans"),
        pytest.param({"uri_sans": ()}, id="no-uri-sans"),
        pytest.param({"subject": None}, id="no-subject"),
        pytest.param({"issuer": None}, id="no-issuer"),
        pytest.param({"sha256_fingerprint": ""}, id="no-fingerprint"),
        pytest.param({"serial_number": ""}, id="no-serial"),
    ],
)
def test_absent_fact_never_matches(tmp_path: Path, facts: dict[str, Any]) -> None:
    conditions = {
        "spiffe_id": {"spiffe_trust_domain": "example.org"},
        "dns_sans": {"dns_san": "*.example.com"},
        "uri_sans": {"uri_san_prefix": "https://"},
        "subject": {"subject_dn": "CN=client-1,O=Example"},
        "issuer": {"issuer_dn": "CN=Example Issuing CA,O=Example"},
        "sha256_fingerprint": {"sha256_fingerprint": FINGERPRINT},
        "serial_number": {"serial_number": SERIAL},
    }
    (fact,) = facts
    assert matches(tmp_path, **conditions[fact])
    assert not matches(tmp_path, with_facts(**facts), **conditions[fact])


def test_spiffe_domain_not_a_prefix(tmp_path: Path) -> None:
    cert = with_facts(spiffe_id="spiffe://example.org.evil.com/ns/prod")
    assert not matches(tmp_path, cert, spiffe_trust_domain="example.org")


# --- Decisions ---------------------------------------------------------------


def test_first_matching_rule_wins(tmp_path: Path) -> None:
    policy = policy_of(
        tmp_path,
        rule("other", match={"dns_san": "*.other.example.com"}),
        rule("devices", match={"dns_san": "*.example.com"}, claims={"tier": "1"}),
        rule("fallback", claims={"tier": "2"}),
    )
    decision = policy.decide(CERT)
    assert decision.rule is not None
    assert decision.rule.id == "devices"
    assert decision.claims == {"tier": "1"}


def test_deny_rule_before_allow(tmp_path: Path) -> None:
    policy = policy_of(
        tmp_path,
        rule("blocked", "deny", match={"spiffe_id": SPIFFE_ID}),
        rule("everyone"),
    )
    with pytest.raises(InvalidClientError) as caught:
        policy.decide(CERT)
    assert caught.value.reason == "policy_denied"
    assert caught.value.log_labels == {
        "policy_rule": "blocked",
        "policy_matched": f"spiffe_id={SPIFFE_ID}",
    }


def test_no_matching_rule_denies(tmp_path: Path) -> None:
    policy = policy_of(tmp_path, rule("a", match={"dns_san": "*.example.net"}))
    with pytest.raises(InvalidClientError) as caught:
        policy.decide(CERT)
    assert caught.value.reason == "policy_no_match"
    assert caught.value.status_code == 401


def test_rule_without_match_matches_all(tmp_path: Path) -> None:
    decision = policy_of(tmp_path, rule("everyone")).decide(CERT)
    assert decision.log_labels == {
        "policy_rule": "everyone",
        "policy_matched": "(any certificate)",
    }


def test_matched_facts_labelled(tmp_path: Path) -> None:
    decision = policy_of(
        tmp_path,
        rule(
            "r",
            match={"dns_san": "*.internal.example.org", "uri_san_prefix": "urn:"},
        ),
    ).decide(CERT)
    assert decision.log_labels["policy_matched"] == (
        "dns_san=client-1.internal.example.org; uri_san_prefix=urn:example:client-1"
    )


# --- Limits of allow rules ---------------------------------------------------


def decision_for(tmp_path: Path, **limits: Any) -> Any:
    return policy_of(tmp_path, rule("limited", **limits)).decide(CERT)


@pytest.mark.parametrize(
    "scopes",
    [(), ("https://www.googleapis.com/auth/cloud-platform",), ("a", "b")],
)
def test_allowed_scopes_pass(tmp_path: Path, scopes: tuple[str, ...]) -> None:
    decision = decision_for(
        tmp_path, scopes=["a", "b", "https://www.googleapis.com/auth/cloud-platform"]
    )
    decision.check_request(TokenRequest(scopes=scopes))


def test_other_scope_invalid_scope(tmp_path: Path) -> None:
    decision = decision_for(tmp_path, scopes=["a"])
    with pytest.raises(InvalidScopeError) as caught:
        decision.check_request(TokenRequest(scopes=("a", "b")))
    assert caught.value.reason == "scope_not_allowed"
    assert caught.value.log_labels["scope_denied"] == "b"
    assert caught.value.log_labels["policy_rule"] == "limited"


@pytest.mark.parametrize(
    ("patterns", "account", "allowed"),
    [
        (["sa@p.iam.gserviceaccount.com"], "sa@p.iam.gserviceaccount.com", True),
        (["*@p.iam.gserviceaccount.com"], "any@p.iam.gserviceaccount.com", True),
        (["*@p.iam.gserviceaccount.com"], "sa@q.iam.gserviceaccount.com", False),
        # Matching is case-sensitive, as service account emails are lowercase.
        (["sa@p.iam.gserviceaccount.com"], "SA@p.iam.gserviceaccount.com", False),
        (["ci-?@p.iam.gserviceaccount.com"], "ci-1@p.iam.gserviceaccount.com", True),
    ],
)
def test_service_account_patterns(
    tmp_path: Path, patterns: list[str], account: str, allowed: bool
) -> None:
    decision = decision_for(tmp_path, service_accounts=patterns)
    request = TokenRequest(scopes=("s",), service_account=account)
    if allowed:
        decision.check_request(request)
        return
    with pytest.raises(UnauthorizedClientError) as caught:
        decision.check_request(request)
    assert caught.value.reason == "service_account_not_allowed"
    assert caught.value.status_code == 400


def test_no_service_account_passes(tmp_path: Path) -> None:
    decision = decision_for(tmp_path, service_accounts=["a@p.iam.gserviceaccount.com"])
    decision.check_request(TokenRequest(scopes=("s",)))


@pytest.mark.parametrize(
    ("cap_minutes", "validity_seconds", "expected"),
    [
        (None, 300, 300),  # no cap: TOKEN_VALIDITY
        (10, 300, 300),  # a cap above TOKEN_VALIDITY changes nothing
        (5, 300, 300),  # equal
        (1, 300, 60),  # a cap below TOKEN_VALIDITY wins
    ],
)
def test_lifetime_capped(
    tmp_path: Path, cap_minutes: int | None, validity_seconds: int, expected: int
) -> None:
    limits = {} if cap_minutes is None else {"max_token_lifetime_minutes": cap_minutes}
    decision = decision_for(tmp_path, **limits)
    assert decision.lifetime_seconds(validity_seconds) == expected


# --- Facts the configured headers can provide --------------------------------


@pytest.mark.parametrize("condition", ["subject_dn", "issuer_dn"])
@pytest.mark.parametrize("effect", ["allow", "deny"])
def test_dn_rule_without_dn_source_rejected(
    tmp_path: Path, condition: str, effect: str
) -> None:
    policy = policy_of(
        tmp_path, rule("x"), rule("dn", effect, match={condition: "CN=Example"})
    )
    names = HeaderNames(lb_headers.header_names(), "spiffe_id")
    with pytest.raises(ConfigurationError, match=rf"rules\[1\]\.match\.{condition}"):
        policy.check_available_facts(names)


@pytest.mark.parametrize(
    "optional",
    [
        {"leaf": "X-Client-Cert-Leaf"},
        {
            "subject_dn": "X-Client-Cert-Subject-DN",
            "issuer_dn": "X-Client-Cert-Issuer-DN",
        },
    ],
)
def test_dn_rule_with_dn_source_accepted(
    tmp_path: Path, optional: dict[str, str]
) -> None:
    policy = policy_of(
        tmp_path,
        rule("dn", match={"subject_dn": "CN=a", "issuer_dn": "CN=b"}),
    )
    policy.check_available_facts(
        HeaderNames(lb_headers.header_names(), "spiffe_id", optional)
    )

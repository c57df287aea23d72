"""Tests for shared.policy.load_policy: the file format and its error messages."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from shared.config import ConfigurationError
from shared.policy import load_policy
from tests.policy.conftest import rule, write_policy

EXAMPLE_POLICY = (
    Path(__file__).resolve().parents[2] / "deploy/local/example-policy.yaml"
)
FINGERPRINT = "om8vGt3r6eTx5TI1kCeNKRJYZTUreIbHGu+Gu8FN8To"


def load_error(tmp_path: Path, policy: Any) -> ConfigurationError:
    path = write_policy(tmp_path, policy)
    with pytest.raises(ConfigurationError) as caught:
        load_policy(path)
    assert caught.value.variable == "CLIENT_POLICY_FILE"
    assert str(path) in str(caught.value)
    return caught.value


def test_example_policy_loads() -> None:
    policy = load_policy(EXAMPLE_POLICY)
    assert [r.id for r in policy.rules] == ["quarantined-devices", "demo-devices"]
    assert policy.rules[1].claims == {"environment": "local-demo"}
    assert policy.rules[1].max_lifetime_seconds == 3600


def test_yaml_and_json_load_alike(tmp_path: Path) -> None:
    yaml_path = tmp_path / "policy.yaml"
    yaml_path.write_text(
        "rules:\n"
        "  - id: devices\n"
        "    effect: allow\n"
        "    match:\n"
        "      dns_san: ['*.example.com', host.example.org]\n"
    )
    json_path = write_policy(
        tmp_path,
        {
            "rules": [
                rule(
                    "devices", match={"dns_san": ["*.example.com", "host.example.org"]}
                )
            ]
        },
        "policy.json",
    )
    from_yaml, from_json = load_policy(yaml_path), load_policy(json_path)
    assert from_yaml.rules[0].conditions[0].values == (
        "*.example.com",
        "host.example.org",
    )
    assert from_json.rules == from_yaml.rules


# (policy, field path in the message, text the reason contains)
INVALID_POLICIES: list[tuple[str, Any, str, str]] = [
    ("not-a-mapping", ["rules"], "(top level)", "must be a mapping"),
    ("rules-missing", {}, "rules", "missing"),
    ("rules-empty", {"rules": []}, "rules", "non-empty list"),
    ("unknown-top-key", {"rules": [rule()], "rulez": []}, "rulez", "unknown key"),
    ("rule-not-mapping", {"rules": ["allow"]}, "rules[0]", "must be a mapping"),
    (
        "unknown-rule-key",
        {"rules": [rule(scope=["a"])]},
        "rules[0].scope",
        "unknown key",
    ),
    (
        "id-missing",
        {"rules": [{"effect": "allow"}]},
        "rules[0].id",
        "missing or invalid",
    ),
    ("id-invalid", {"rules": [rule("has space")]}, "rules[0].id", "missing or invalid"),
    (
        "id-duplicate",
        {"rules": [rule("a"), rule("b"), rule("a")]},
        "rules[2].id",
        "already the id of rules[0]",
    ),
    ("effect-missing", {"rules": [{"id": "a"}]}, "rules[0].effect", "allow or deny"),
    (
        "effect-unknown",
        {"rules": [rule(effect="permit")]},
        "rules[0].effect",
        "allow or deny",
    ),
    (
        "deny-with-scopes",
        {"rules": [rule(effect="deny", scopes=["a"])]},
        "rules[0].scopes",
        "only an allow rule",
    ),
    (
        "deny-with-claims",
        {"rules": [rule(effect="deny", claims={"team": "x"})]},
        "rules[0].claims",
        "only an allow rule",
    ),
    ("match-empty", {"rules": [rule(match={})]}, "rules[0].match", "empty"),
    (
        "match-unknown-key",
        {"rules": [rule(match={"dns": "a.example.com"})]},
        "rules[0].match.dns",
        "unknown key",
    ),
    (
        "match-value-number",
        {"rules": [rule(match={"serial_number": 5025})]},
        "rules[0].match.serial_number",
        "quote values",
    ),
    (
        "match-list-empty",
        {"rules": [rule(match={"dns_san": []})]},
        "rules[0].match.dns_san",
        "matches nothing",
    ),
    (
        "dns-san-invalid-in-list",
        {
            "rules": [
                rule(),
                rule("b"),
                rule("c", match={"dns_san": ["ok.example.com", "bad_name"]}),
            ]
        },
        "rules[2].match.dns_san[1]",
        "not a DNS name",
    ),
    (
        "dns-san-wildcard-tld",
        {"rules": [rule(match={"dns_san": "*.com"})]},
        "rules[0].match.dns_san",
        "wildcard",
    ),
    (
        "dns-san-wildcard-inside",
        {"rules": [rule(match={"dns_san": "a.*.example.com"})]},
        "rules[0].match.dns_san",
        "whole first label",
    ),
    (
        "fingerprint-hex",
        {"rules": [rule(match={"sha256_fingerprint": "ab" * 32})]},
        "rules[0].match.sha256_fingerprint",
        "load balancer's format",
    ),
    (
        "serial-without-colons",
        {"rules": [rule(match={"serial_number": "00ad3e0e"})]},
        "rules[0].match.serial_number",
        "joined by ':'",
    ),
    (
        "spiffe-id-invalid",
        {"rules": [rule(match={"spiffe_id": "https://example.org/x"})]},
        "rules[0].match.spiffe_id",
        "SPIFFE ID",
    ),
    (
        "trust-domain-with-scheme",
        {"rules": [rule(match={"spiffe_trust_domain": "spiffe://example.org"})]},
        "rules[0].match.spiffe_trust_domain",
        "trust domain",
    ),
    (
        "path-prefix-alone",
        {"rules": [rule(match={"spiffe_path_prefix": "/ns"})]},
        "rules[0].match.spiffe_path_prefix",
        "needs spiffe_trust_domain",
    ),
    (
        "path-prefix-relative",
        {
            "rules": [
                rule(match={"spiffe_trust_domain": "a.org", "spiffe_path_prefix": "ns"})
            ]
        },
        "rules[0].match.spiffe_path_prefix",
        "SPIFFE ID path",
    ),
    (
        "uri-prefix-without-scheme",
        {"rules": [rule(match={"uri_san_prefix": "devices.example.com"})]},
        "rules[0].match.uri_san_prefix",
        "URI prefix",
    ),
    (
        "subject-dn-invalid",
        {"rules": [rule(match={"subject_dn": "not a dn"})]},
        "rules[0].match.subject_dn",
        "RFC 4514",
    ),
    ("scopes-empty", {"rules": [rule(scopes=[])]}, "rules[0].scopes", "non-empty list"),
    (
        "scopes-string",
        {"rules": [rule(scopes="a b")]},
        "rules[0].scopes",
        "list of strings",
    ),
    (
        "scope-invalid",
        {"rules": [rule(scopes=["ok", 'bad"scope'])]},
        "rules[0].scopes[1]",
        "scope token",
    ),
    (
        "account-invalid",
        {"rules": [rule(service_accounts=["a b@x.com"])]},
        "rules[0].service_accounts[0]",
        "service account",
    ),
    (
        "lifetime-zero",
        {"rules": [rule(max_token_lifetime_minutes=0)]},
        "rules[0].max_token_lifetime_minutes",
        "out of range",
    ),
    (
        "lifetime-721",
        {"rules": [rule(max_token_lifetime_minutes=721)]},
        "rules[0].max_token_lifetime_minutes",
        "out of range",
    ),
    (
        "lifetime-text",
        {"rules": [rule(max_token_lifetime_minutes="5")]},
        "rules[0].max_token_lifetime_minutes",
        "whole number",
    ),
    (
        "lifetime-boolean",
        {"rules": [rule(max_token_lifetime_minutes=True)]},
        "rules[0].max_token_lifetime_minutes",
        "whole number",
    ),
    (
        "claim-overrides-x5-sha256",
        {"rules": [rule(claims={"x5_sha256": "forged"})]},
        "rules[0].claims.x5_sha256",
        "reserved",
    ),
    (
        "claim-new-x5-key",
        {"rules": [rule(claims={"x5_issuer": "x"})]},
        "rules[0].claims.x5_issuer",
        "reserved",
    ),
    (
        "claim-not-string",
        {"rules": [rule(claims={"tier": 1})]},
        "rules[0].claims.tier",
        "must be a string",
    ),
    (
        "claim-name-invalid",
        {"rules": [rule(claims={"team-name": "x"})]},
        "rules[0].claims.team-name",
        "not a claim name",
    ),
    (
        "revoked-unknown-key",
        {"rules": [rule()], "revoked": {"serials": []}},
        "revoked.serials",
        "unknown key",
    ),
    (
        "revoked-serial-invalid",
        {"rules": [rule()], "revoked": {"serial_numbers": ["00:zz"]}},
        "revoked.serial_numbers[0]",
        "serial number",
    ),
    (
        "revoked-fingerprint-invalid",
        {"rules": [rule()], "revoked": {"sha256_fingerprints": [FINGERPRINT[:-1]]}},
        "revoked.sha256_fingerprints[0]",
        "fingerprint",
    ),
]


@pytest.mark.parametrize(
    ("policy", "field", "reason"),
    [
        pytest.param(policy, field, reason, id=name)
        for name, policy, field, reason in INVALID_POLICIES
    ],
)
def test_invalid_policy_names_field(
    tmp_path: Path, policy: Any, field: str, reason: str
) -> None:
    message = str(load_error(tmp_path, policy))
    assert f": {field}: " in message
    assert reason in message


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        pytest.param("rules: [\n", "not valid YAML", id="syntax"),
        pytest.param(
            "rules:\n  - id: a\n    effect: allow\n    effect: deny\n",
            "duplicate key 'effect'",
            id="duplicate-key",
        ),
        pytest.param("rules:\n  - {1: a}\n", "is not a string", id="number-key"),
        pytest.param(
            "rules:\n  - !!python/object:os.system {}\n", "not valid YAML", id="tag"
        ),
    ],
)
def test_unparsable_policy_rejected(tmp_path: Path, text: str, reason: str) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text(text)
    with pytest.raises(ConfigurationError, match=reason):
        load_policy(path)


def test_yaml_sexagesimal_serial_rejected(tmp_path: Path) -> None:
    # YAML 1.1 reads 10:23:45 as the sexagesimal number 37425; the loader
    # must not accept it as a serial that then matches nothing.
    path = tmp_path / "policy.yaml"
    path.write_text(
        "rules:\n  - id: a\n    effect: allow\n"
        "    match:\n      serial_number: 10:23:45\n"
    )
    with pytest.raises(ConfigurationError, match="quote values"):
        load_policy(path)


def test_oversized_policy_rejected(tmp_path: Path) -> None:
    path = tmp_path / "policy.yaml"
    path.write_bytes(b"#" * (1024 * 1024 + 1))
    with pytest.raises(ConfigurationError, match="exceeds"):
        load_policy(path)


def test_values_normalized(tmp_path: Path) -> None:
    policy = load_policy(
        write_policy(
            tmp_path,
            {
                "rules": [
                    rule(
                        match={
                            "serial_number": "00:AD:3E",
                            "dns_san": "*.Example.COM",
                            "sha256_fingerprint": FINGERPRINT + "=",
                            "subject_dn": "2.5.4.3=device-1,O=Example",
                        }
                    )
                ],
                "revoked": {"serial_numbers": ["0A:FF"]},
            },
        )
    )
    values = {c.name: c.values for c in policy.rules[0].conditions}
    assert values["serial_number"] == ("00:ad:3e",)
    assert values["dns_san"] == ("*.example.com",)
    assert values["sha256_fingerprint"] == (FINGERPRINT,)
    assert values["subject_dn"] == ("CN=device-1,O=Example",)
    assert policy.revoked.serial_numbers == frozenset({"0a:ff"})

"""Client policy: which verified certificates get tokens, and for what.

``CLIENT_POLICY_FILE`` names a YAML (or JSON) file, read once at cold start.
Its rules are tried in order and the first rule whose ``match`` is met
decides: ``deny`` rejects the client, ``allow`` issues tokens within the
rule's limits on scopes, service accounts and lifetime, and adds its static
claims. A certificate that no rule matches is rejected. Without a policy
file every verified certificate is allowed. docs/policy.md describes the
file format.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography import x509

from shared import lb_headers
from shared.claims import CLIENT_CLAIM_KEYS, RESERVED_CLIENT_CLAIM_PREFIX
from shared.client_cert import ClientCertificate, parse_fingerprint
from shared.config import (
    CLIENT_POLICY_FILE,
    MAX_TOKEN_VALIDITY_MINUTES,
    MIN_TOKEN_VALIDITY_MINUTES,
    ConfigurationError,
    HeaderNames,
)
from shared.errors import InvalidClientError, InvalidScopeError, UnauthorizedClientError
from shared.revocation import RevokedCertificates
from shared.token_request import TokenRequest

# A policy is a few kilobytes; this bounds what is read at start-up.
MAX_POLICY_FILE_BYTES = 1024 * 1024
MAX_CLAIM_VALUE_LENGTH = 256

_POLICY_KEYS = ("rules", "revoked")
_REVOKED_KEYS = ("serial_numbers", "sha256_fingerprints")
_RULE_KEYS = (
    "id",
    "description",
    "match",
    "effect",
    "scopes",
    "service_accounts",
    "max_token_lifetime_minutes",
    "claims",
)
_ALLOW_ONLY_KEYS = _RULE_KEYS[4:]
_EFFECTS = ("allow", "deny")

_RULE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_SERIAL = re.compile(r"[0-9a-f]{2}(?::[0-9a-f]{2}){0,49}")
_SPIFFE_ID = re.compile(r"spiffe://[a-z0-9._-]+(?:/[A-Za-z0-9._-]+)*")
_TRUST_DOMAIN = re.compile(r"[a-z0-9._-]+")
_SPIFFE_PATH_PREFIX = re.compile(r"(?:/[A-Za-z0-9._-]+)+/?")
_DNS_LABEL = re.compile(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?")
_URI_PREFIX = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*:[\x21-\x7e]*")
# RFC 6749 §3.3 scope-token.
_SCOPE_TOKEN = re.compile(r"[\x21\x23-\x5b\x5d-\x7e]+")
# A service account email or unique ID, with fnmatch's * ? [ ] allowed.
_ACCOUNT_PATTERN = re.compile(r"[A-Za-z0-9._%+@*?\[\]!-]+")
# The claim becomes assertion.client.KEY in a CEL attribute mapping, so the
# key must be a CEL identifier.
_CLAIM_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")


class _FieldError(Exception):
    """A policy field is invalid; ``path`` is like ``rules[2].match.dns_san``."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason


# --- Conditions --------------------------------------------------------------

_Matcher = Callable[[ClientCertificate], str | None]


@dataclass(frozen=True)
class Condition:
    """One condition of a rule's ``match``: a fact and its accepted values."""

    name: str
    values: tuple[str, ...]
    matcher: _Matcher = field(repr=False, compare=False)

    def matched_value(self, cert: ClientCertificate) -> str | None:
        """Return the certificate's value that meets the condition, or None."""
        return self.matcher(cert)


def _exact(
    values: tuple[str, ...], fact: Callable[[ClientCertificate], str]
) -> _Matcher:
    def match(cert: ClientCertificate) -> str | None:
        value = fact(cert)
        return value if value and value in values else None

    return match


def _spiffe(domains: tuple[str, ...], prefixes: tuple[str, ...]) -> _Matcher:
    def match(cert: ClientCertificate) -> str | None:
        rest = cert.spiffe_id.removeprefix("spiffe://")
        if not cert.spiffe_id or rest == cert.spiffe_id:
            return None
        domain, slash, path = rest.partition("/")
        if domain not in domains:
            return None
        if prefixes and not any(_path_has_prefix(slash + path, p) for p in prefixes):
            return None
        return cert.spiffe_id

    return match


def _path_has_prefix(path: str, prefix: str) -> bool:
    """Match whole path segments: ``/a`` matches ``/a`` and ``/a/b``, not ``/ab``."""
    if prefix.endswith("/"):
        return path.startswith(prefix)
    return path == prefix or path.startswith(prefix + "/")


def dns_name_matches(name: str, pattern: str) -> bool:
    """Match a DNS SAN against ``host.example.com`` or ``*.example.com``.

    Names compare case-insensitively. ``*.example.com`` matches a name with
    one or more labels before ``.example.com`` (``a.example.com`` and
    ``a.b.example.com``), but not ``example.com`` itself.
    """
    name = name.lower().rstrip(".")
    if pattern.startswith("*."):
        suffix = pattern[1:]
        return name.endswith(suffix) and len(name) > len(suffix)
    return name == pattern


def _dns(patterns: tuple[str, ...]) -> _Matcher:
    def match(cert: ClientCertificate) -> str | None:
        for name in cert.dns_sans:
            if any(dns_name_matches(name, pattern) for pattern in patterns):
                return name
        return None

    return match


def _uri_prefix(prefixes: tuple[str, ...]) -> _Matcher:
    def match(cert: ClientCertificate) -> str | None:
        for uri in cert.uri_sans:
            if any(uri.startswith(prefix) for prefix in prefixes):
                return uri
        return None

    return match


def _dn(
    names: tuple[str, ...], fact: Callable[[ClientCertificate], x509.Name | None]
) -> _Matcher:
    def match(cert: ClientCertificate) -> str | None:
        name = fact(cert)
        text = None if name is None else name.rfc4514_string()
        return text if text is not None and text in names else None

    return match


# --- Rules and decisions -----------------------------------------------------


@dataclass(frozen=True)
class PolicyRule:
    """One rule of the client policy.

    ``scopes`` and ``service_accounts`` are None when the rule does not limit
    them; ``max_lifetime_seconds`` is None when it does not cap lifetimes.
    """

    id: str
    effect: str
    conditions: tuple[Condition, ...] = ()
    scopes: frozenset[str] | None = None
    service_accounts: tuple[str, ...] | None = None
    max_lifetime_seconds: int | None = None
    claims: Mapping[str, str] = field(default_factory=dict)

    def match(self, cert: ClientCertificate) -> tuple[str, ...] | None:
        """Return ``name=value`` for each condition met, or None if one fails."""
        matched: list[str] = []
        for condition in self.conditions:
            value = condition.matched_value(cert)
            if value is None:
                return None
            matched.append(f"{condition.name}={value}")
        return tuple(matched)


@dataclass(frozen=True)
class PolicyDecision:
    """The allow rule that matched a certificate, or no rule without a policy."""

    rule: PolicyRule | None = None
    matched: tuple[str, ...] = ()

    @property
    def log_labels(self) -> dict[str, str]:
        """Labels naming the rule and the facts it matched on."""
        if self.rule is None:
            return {}
        return _rule_labels(self.rule, self.matched)

    @property
    def claims(self) -> Mapping[str, str]:
        """Static claims of the rule, added to the ``client`` claim."""
        return {} if self.rule is None else self.rule.claims

    def lifetime_seconds(self, default: int) -> int:
        """Cap ``default`` (TOKEN_VALIDITY) at the rule's maximum lifetime."""
        cap = None if self.rule is None else self.rule.max_lifetime_seconds
        return default if cap is None else min(default, cap)

    def check_request(self, request: TokenRequest) -> None:
        """Check the requested scopes and service account against the rule.

        Raises:
            InvalidScopeError: A requested scope is not in the rule's scopes.
            UnauthorizedClientError: The service account matches none of the
                rule's patterns.
        """
        rule = self.rule
        if rule is None:
            return
        if rule.scopes is not None:
            denied = [scope for scope in request.scopes if scope not in rule.scopes]
            if denied:
                raise InvalidScopeError(
                    "The requested scope is not allowed for this client.",
                    reason="scope_not_allowed",
                    log_labels={**self.log_labels, "scope_denied": " ".join(denied)},
                )
        account = request.service_account
        if account is not None and rule.service_accounts is not None:
            if not any(fnmatch.fnmatchcase(account, p) for p in rule.service_accounts):
                raise UnauthorizedClientError(
                    "The client may not impersonate this service account.",
                    reason="service_account_not_allowed",
                    log_labels=self.log_labels,
                )


ALLOW_ALL = PolicyDecision()


def _rule_labels(rule: PolicyRule, matched: tuple[str, ...]) -> dict[str, str]:
    return {
        "policy_rule": rule.id,
        "policy_matched": "; ".join(matched) if matched else "(any certificate)",
    }


@dataclass(frozen=True)
class ClientPolicy:
    """The parsed client policy: revoked certificates and ordered rules."""

    source: Path
    rules: tuple[PolicyRule, ...]
    revoked: RevokedCertificates = field(default_factory=RevokedCertificates)

    def decide(self, cert: ClientCertificate) -> PolicyDecision:
        """Find the first rule that matches ``cert``.

        Raises:
            InvalidClientError: The certificate is listed as revoked, the
                first matching rule denies it, or no rule matches.
        """
        self.revoked.check(cert)
        for rule in self.rules:
            matched = rule.match(cert)
            if matched is None:
                continue
            if rule.effect == "deny":
                raise InvalidClientError(
                    reason="policy_denied",
                    log_labels=_rule_labels(rule, matched),
                    detail=f"client policy rule {rule.id} denies this certificate",
                )
            return PolicyDecision(rule, matched)
        raise InvalidClientError(
            reason="policy_no_match",
            detail="no rule of the client policy matches this certificate",
        )

    def check_available_facts(self, headers: HeaderNames) -> None:
        """Reject rules on DNs that the configured headers can never provide.

        A deny rule that silently never matches would let its clients in.

        Raises:
            ConfigurationError: A rule uses ``subject_dn`` or ``issuer_dn``
                but neither that DN header nor the leaf header is set.
        """
        leaf = headers.optional_name(lb_headers.LEAF.key)
        sources = {
            "subject_dn": lb_headers.SUBJECT_DN,
            "issuer_dn": lb_headers.ISSUER_DN,
        }
        for index, rule in enumerate(self.rules):
            for condition in rule.conditions:
                header = sources.get(condition.name)
                if header is None or leaf or headers.optional_name(header.key):
                    continue
                raise ConfigurationError(
                    CLIENT_POLICY_FILE,
                    f"{self.source}: rules[{index}].match.{condition.name}: no "
                    f"request can carry this fact; set {header.setting} or "
                    f"{lb_headers.LEAF.setting}, or remove the condition.",
                )


# --- Loading -----------------------------------------------------------------


def load_policy(path: Path) -> ClientPolicy:
    """Read and validate a client policy file.

    Raises:
        ConfigurationError: The file is unreadable, is not YAML or JSON, or
            a field is invalid. The message names the file, the field's path
            (such as ``rules[2].match.dns_san``) and the reason.
    """
    document = _read_document(path)
    try:
        return _parse_policy(path, document)
    except _FieldError as error:
        raise ConfigurationError(CLIENT_POLICY_FILE, f"{path}: {error}") from None


def _read_document(path: Path) -> object:
    try:
        with path.open("rb") as stream:
            data = stream.read(MAX_POLICY_FILE_BYTES + 1)
    except OSError as error:
        raise ConfigurationError(
            CLIENT_POLICY_FILE, f"cannot read {str(path)!r} ({type(error).__name__})."
        ) from None
    if len(data) > MAX_POLICY_FILE_BYTES:
        raise ConfigurationError(
            CLIENT_POLICY_FILE,
            f"{path}: the file exceeds {MAX_POLICY_FILE_BYTES} bytes.",
        )
    # Imported here: PyYAML costs about 9 ms of a cold start that a service
    # without a policy file never needs.
    from shared.policy_yaml import PolicyYamlError, load_policy_yaml

    try:
        return load_policy_yaml(data)
    except PolicyYamlError as error:
        raise ConfigurationError(
            CLIENT_POLICY_FILE, f"{path}: not valid YAML or JSON: {error}"
        ) from None


def _parse_policy(path: Path, document: object) -> ClientPolicy:
    top = _mapping(document, "(top level)", _POLICY_KEYS)
    if "rules" not in top:
        raise _FieldError("rules", "missing; list at least one rule")
    rules = _list(top["rules"], "rules")
    parsed = tuple(_parse_rule(rule, f"rules[{i}]") for i, rule in enumerate(rules))
    seen: dict[str, int] = {}
    for index, rule in enumerate(parsed):
        if rule.id in seen:
            raise _FieldError(
                f"rules[{index}].id",
                f"{rule.id!r} is already the id of rules[{seen[rule.id]}]",
            )
        seen[rule.id] = index
    revoked = _parse_revoked(top.get("revoked", {}), "revoked")
    return ClientPolicy(source=path, rules=parsed, revoked=revoked)


def _parse_revoked(value: object, path: str) -> RevokedCertificates:
    section = _mapping(value, path, _REVOKED_KEYS)
    serials = _strings(section.get("serial_numbers", []), f"{path}.serial_numbers")
    fingerprints = _strings(
        section.get("sha256_fingerprints", []), f"{path}.sha256_fingerprints"
    )
    return RevokedCertificates(
        serial_numbers=frozenset(
            _serial(v, f"{path}.serial_numbers[{i}]") for i, v in enumerate(serials)
        ),
        sha256_fingerprints=frozenset(
            _fingerprint(v, f"{path}.sha256_fingerprints[{i}]")
            for i, v in enumerate(fingerprints)
        ),
    )


def _parse_rule(value: object, path: str) -> PolicyRule:
    rule = _mapping(value, path, _RULE_KEYS)
    rule_id = rule.get("id")
    if not isinstance(rule_id, str) or not _RULE_ID.fullmatch(rule_id):
        raise _FieldError(
            f"{path}.id",
            "missing or invalid; set an id of letters, digits, '.', '_' and "
            "'-' (at most 64), which log entries name as policy_rule",
        )
    if not isinstance(rule.get("description", ""), str):
        raise _FieldError(f"{path}.description", "must be a string")
    effect = rule.get("effect")
    if effect not in _EFFECTS:
        raise _FieldError(f"{path}.effect", "missing or invalid; set allow or deny")
    if effect == "deny":
        for key in _ALLOW_ONLY_KEYS:
            if key in rule:
                raise _FieldError(f"{path}.{key}", "only an allow rule can set it")

    conditions: tuple[Condition, ...] = ()
    if "match" in rule:
        conditions = _parse_match(rule["match"], f"{path}.match")
    return PolicyRule(
        id=rule_id,
        effect=str(effect),
        conditions=conditions,
        scopes=_optional(rule, "scopes", path, _parse_scopes),
        service_accounts=_optional(rule, "service_accounts", path, _parse_accounts),
        max_lifetime_seconds=_optional(
            rule, "max_token_lifetime_minutes", path, _parse_lifetime
        ),
        claims=_optional(rule, "claims", path, _parse_claims) or {},
    )


def _optional(
    rule: Mapping[str, object],
    key: str,
    path: str,
    parse: Callable[[object, str], Any],
) -> Any:
    return parse(rule[key], f"{path}.{key}") if key in rule else None


_MATCH_KEYS = (
    "sha256_fingerprint",
    "serial_number",
    "spiffe_id",
    "spiffe_trust_domain",
    "spiffe_path_prefix",
    "dns_san",
    "uri_san_prefix",
    "subject_dn",
    "issuer_dn",
)


def _parse_match(value: object, path: str) -> tuple[Condition, ...]:
    match = _mapping(value, path, _MATCH_KEYS)
    if not match:
        raise _FieldError(path, "empty; remove match to match every certificate")
    if "spiffe_path_prefix" in match and "spiffe_trust_domain" not in match:
        raise _FieldError(
            f"{path}.spiffe_path_prefix", "needs spiffe_trust_domain in the same match"
        )
    values = {
        key: tuple(
            _VALUE_CHECKS[key](item, item_path)
            for item, item_path in _one_or_many(raw, f"{path}.{key}")
        )
        for key, raw in match.items()
    }
    conditions = (_condition(key, items, values) for key, items in values.items())
    return tuple(condition for condition in conditions if condition is not None)


def _condition(
    key: str, items: tuple[str, ...], values: Mapping[str, tuple[str, ...]]
) -> Condition | None:
    if key == "spiffe_path_prefix":
        return None  # Part of the spiffe_trust_domain condition.
    matcher: _Matcher
    if key == "sha256_fingerprint":
        matcher = _exact(items, lambda cert: cert.sha256_fingerprint)
    elif key == "serial_number":
        matcher = _exact(items, lambda cert: cert.serial_number.lower())
    elif key == "spiffe_id":
        matcher = _exact(items, lambda cert: cert.spiffe_id)
    elif key == "spiffe_trust_domain":
        prefixes = values.get("spiffe_path_prefix", ())
        matcher = _spiffe(items, prefixes)
    elif key == "dns_san":
        matcher = _dns(items)
    elif key == "uri_san_prefix":
        matcher = _uri_prefix(items)
    elif key == "subject_dn":
        matcher = _dn(items, lambda cert: cert.subject)
    else:
        matcher = _dn(items, lambda cert: cert.issuer)
    return Condition(key, items, matcher)


def _fingerprint(value: str, path: str) -> str:
    parsed = parse_fingerprint(value)
    if parsed is None:
        raise _FieldError(
            path,
            "not a SHA-256 fingerprint in the load balancer's format (43 "
            "characters of standard base64, as X-Client-Cert-Hash shows)",
        )
    return parsed


def _serial(value: str, path: str) -> str:
    serial = value.lower()
    if not _SERIAL.fullmatch(serial):
        raise _FieldError(
            path,
            "not a serial number in the load balancer's format: hex bytes joined "
            "by ':', such as 00:ad:3e:0e (a leading 00 when the top bit is set)",
        )
    return serial


def _spiffe_id(value: str, path: str) -> str:
    if not _SPIFFE_ID.fullmatch(value):
        raise _FieldError(path, "not a SPIFFE ID such as spiffe://example.org/workload")
    return value


def _trust_domain(value: str, path: str) -> str:
    if not _TRUST_DOMAIN.fullmatch(value):
        raise _FieldError(
            path, "not a SPIFFE trust domain such as example.org (no scheme or path)"
        )
    return value


def _path_prefix(value: str, path: str) -> str:
    if not _SPIFFE_PATH_PREFIX.fullmatch(value):
        raise _FieldError(path, "not a SPIFFE ID path such as /ns/prod or /ns/prod/")
    return value


def _dns_pattern(value: str, path: str) -> str:
    pattern = value.lower().rstrip(".")
    labels = pattern.split(".")
    wildcard = labels[0] == "*"
    names = labels[1:] if wildcard else labels
    # A wildcard needs at least two labels after it, so that *.com is rejected.
    if (wildcard and len(names) < 2) or not all(_DNS_LABEL.fullmatch(n) for n in names):
        raise _FieldError(
            path,
            "not a DNS name such as host.example.com, or a wildcard such as "
            "*.example.com (only as the whole first label)",
        )
    return pattern


def _uri(value: str, path: str) -> str:
    if not _URI_PREFIX.fullmatch(value):
        raise _FieldError(path, "not a URI prefix such as https://devices.example.com/")
    return value


def _distinguished_name(value: str, path: str) -> str:
    try:
        return x509.Name.from_rfc4514_string(value).rfc4514_string()
    except ValueError:
        raise _FieldError(
            path,
            "not an RFC 4514 distinguished name such as CN=client,O=Example "
            "(attribute types in capitals or as OIDs, no space after commas)",
        ) from None


_VALUE_CHECKS: dict[str, Callable[[str, str], str]] = {
    "sha256_fingerprint": _fingerprint,
    "serial_number": _serial,
    "spiffe_id": _spiffe_id,
    "spiffe_trust_domain": _trust_domain,
    "spiffe_path_prefix": _path_prefix,
    "dns_san": _dns_pattern,
    "uri_san_prefix": _uri,
    "subject_dn": _distinguished_name,
    "issuer_dn": _distinguished_name,
}


def _parse_scopes(value: object, path: str) -> frozenset[str]:
    scopes = _strings(value, path, non_empty=True)
    for index, scope in enumerate(scopes):
        if not _SCOPE_TOKEN.fullmatch(scope):
            raise _FieldError(f"{path}[{index}]", "not an OAuth scope token")
    return frozenset(scopes)


def _parse_accounts(value: object, path: str) -> tuple[str, ...]:
    accounts = _strings(value, path, non_empty=True)
    for index, account in enumerate(accounts):
        if not _ACCOUNT_PATTERN.fullmatch(account):
            raise _FieldError(
                f"{path}[{index}]",
                "not a service account email or pattern such as "
                "*@project.iam.gserviceaccount.com",
            )
    return tuple(accounts)


def _parse_lifetime(value: object, path: str) -> int:
    bounds = f"{MIN_TOKEN_VALIDITY_MINUTES} to {MAX_TOKEN_VALIDITY_MINUTES}"
    if isinstance(value, bool) or not isinstance(value, int):
        raise _FieldError(path, f"must be a whole number of minutes from {bounds}")
    if not MIN_TOKEN_VALIDITY_MINUTES <= value <= MAX_TOKEN_VALIDITY_MINUTES:
        raise _FieldError(path, f"{value} is out of range: set {bounds} minutes")
    return value * 60


def _parse_claims(value: object, path: str) -> dict[str, str]:
    claims = _mapping(value, path, None)
    for key, claim in claims.items():
        if not _CLAIM_KEY.fullmatch(key):
            raise _FieldError(
                f"{path}.{key}", "not a claim name: use letters, digits and '_'"
            )
        if key.startswith(RESERVED_CLIENT_CLAIM_PREFIX) or key in CLIENT_CLAIM_KEYS:
            raise _FieldError(
                f"{path}.{key}",
                f"reserved: claims starting with {RESERVED_CLIENT_CLAIM_PREFIX} "
                "carry certificate facts and cannot be set by the policy",
            )
        if not isinstance(claim, str) or len(claim) > MAX_CLAIM_VALUE_LENGTH:
            raise _FieldError(
                f"{path}.{key}",
                f"must be a string of at most {MAX_CLAIM_VALUE_LENGTH} characters "
                "(quote numbers and booleans)",
            )
    return dict(claims)


# --- Generic shape checks ----------------------------------------------------


def _mapping(value: object, path: str, allowed: Sequence[str] | None) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise _FieldError(path, f"must be a mapping, not {_kind(value)}")
    if allowed is not None:
        for key in value:
            if key not in allowed:
                raise _FieldError(
                    _join(path, key),
                    f"unknown key; the allowed keys are {', '.join(allowed)}",
                )
    return value


def _list(value: object, path: str) -> list[Any]:
    if not isinstance(value, list) or not value:
        raise _FieldError(path, f"must be a non-empty list, not {_kind(value)}")
    return value


def _strings(value: object, path: str, *, non_empty: bool = False) -> list[str]:
    if not isinstance(value, list) or (non_empty and not value):
        wanted = "a non-empty list" if non_empty else "a list"
        raise _FieldError(path, f"must be {wanted} of strings, not {_kind(value)}")
    for index, item in enumerate(value):
        _string(item, f"{path}[{index}]")
    return value


def _one_or_many(value: object, path: str) -> list[tuple[str, str]]:
    """Return each string of a string-or-list value with its field path."""
    if not isinstance(value, list):
        return [(_string(value, path), path)]
    if not value:
        raise _FieldError(path, "an empty list matches nothing; remove the key")
    return [
        (_string(item, f"{path}[{i}]"), f"{path}[{i}]") for i, item in enumerate(value)
    ]


def _string(value: object, path: str) -> str:
    if not isinstance(value, str) or not value:
        raise _FieldError(
            path,
            f"must be a non-empty string, not {_kind(value)}; quote values such "
            "as serial numbers, which YAML may read as numbers",
        )
    return value


def _join(path: str, key: str) -> str:
    return key if path == "(top level)" else f"{path}.{key}"


def _kind(value: object) -> str:
    if value is None:
        return "an empty value"
    names = {bool: "a boolean", int: "a number", float: "a number", str: "a string"}
    names.update({list: "a list", dict: "a mapping"})
    return names.get(type(value), type(value).__name__)

"""Parsing of ``POST /token`` bodies, following RFC 6749 strictly.

The body must be ``application/x-www-form-urlencoded`` (RFC 6749 §4.4.2),
no parameter may appear twice (§3.2), and a parameter sent without a value
counts as omitted (§3.1).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import parse_qsl

from shared.errors import (
    InvalidRequestError,
    InvalidScopeError,
    UnsupportedGrantTypeError,
)

# A token request is a few short parameters; this bounds what is read and
# parsed. Larger bodies get invalid_request.
MAX_BODY_BYTES = 8192
_MAX_FIELDS = 16

FORM_CONTENT_TYPE = "application/x-www-form-urlencoded"
EXTERNAL_CREDENTIAL_FORMAT = "external_credential"
_FORMATS = (EXTERNAL_CREDENTIAL_FORMAT,)
# Percent-decoded bytes are read as UTF-8, of which US-ASCII is a subset.
_CHARSETS = ("utf-8", "utf8", "us-ascii", "ascii")
_KNOWN_PARAMETERS = frozenset(
    {"grant_type", "scope", "service_account", "format", "client_id"}
)

# RFC 6749 §3.3: scope-token = 1*( %x21 / %x23-5B / %x5D-7E ).
_SCOPE_TOKEN = re.compile(r"[\x21\x23-\x5b\x5d-\x7e]+")
# A service account email, or its 21-digit unique ID.
_SERVICE_ACCOUNT = re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}|\d{21}")


@dataclass(frozen=True)
class TokenRequest:
    """A syntactically valid client-credentials token request."""

    scopes: tuple[str, ...] = ()
    service_account: str | None = None
    response_format: str = "json"
    client_id: str | None = None

    @property
    def wants_external_credential(self) -> bool:
        """Whether the response uses the executable-sourced credential format."""
        return self.response_format == EXTERNAL_CREDENTIAL_FORMAT


def requests_external_credential(body: bytes) -> bool:
    """Tell from a raw body, even an invalid one, whether errors use that format."""
    text = body[:MAX_BODY_BYTES].decode("utf-8", errors="replace")
    pairs = parse_qsl(text, keep_blank_values=True, errors="replace")
    return ("format", EXTERNAL_CREDENTIAL_FORMAT) in pairs


def check_content_type(content_type: str | None) -> None:
    """Accept only the form media type, with at most a UTF-8 charset parameter.

    Raises:
        InvalidRequestError: Any other media type or parameter.
    """
    media_type, _, parameters = (content_type or "").partition(";")
    if media_type.strip().lower() != FORM_CONTENT_TYPE:
        raise InvalidRequestError(
            f"The request body must be {FORM_CONTENT_TYPE}.",
            reason="unsupported_content_type",
        )
    for parameter in filter(None, (p.strip() for p in parameters.split(";"))):
        name, _, value = parameter.partition("=")
        charset = value.strip().strip('"').lower()
        if name.strip().lower() != "charset" or charset not in _CHARSETS:
            raise InvalidRequestError(
                "Only a UTF-8 or US-ASCII charset is allowed on the content type.",
                reason="unsupported_content_type",
            )


def parse_token_request(body: bytes) -> TokenRequest:
    """Parse and validate a form-encoded token request body.

    Raises:
        InvalidRequestError: The body is malformed, repeats a parameter,
            lacks ``grant_type`` or names an unknown ``format``.
        UnsupportedGrantTypeError: ``grant_type`` is not client_credentials.
        InvalidScopeError: ``scope`` is not a list of RFC 6749 scope tokens.
    """
    parameters = _parse_form(body)
    grant_type = parameters.get("grant_type")
    if grant_type is None:
        raise InvalidRequestError(
            "The grant_type parameter is missing.", reason="missing_grant_type"
        )
    if grant_type != "client_credentials":
        raise UnsupportedGrantTypeError(reason="unsupported_grant_type")

    response_format = parameters.get("format", "json")
    if "format" in parameters and response_format not in _FORMATS:
        raise InvalidRequestError(
            "The format parameter must be external_credential when present.",
            reason="unknown_format",
        )
    return TokenRequest(
        scopes=_scopes(parameters.get("scope")),
        service_account=_service_account(parameters.get("service_account")),
        response_format=response_format,
        client_id=parameters.get("client_id"),
    )


def _parse_form(body: bytes) -> dict[str, str]:
    if len(body) > MAX_BODY_BYTES:
        raise InvalidRequestError(
            f"The request body exceeds {MAX_BODY_BYTES} bytes.",
            reason="body_too_large",
        )
    try:
        text = body.decode("utf-8")
        pairs = parse_qsl(
            text,
            keep_blank_values=True,
            strict_parsing=bool(text),
            encoding="utf-8",
            errors="strict",
            max_num_fields=_MAX_FIELDS,
        )
    except (UnicodeDecodeError, ValueError):
        raise InvalidRequestError(
            "The request body is not valid form encoding.", reason="malformed_body"
        ) from None

    parameters: dict[str, str] = {}
    seen: set[str] = set()
    for name, value in pairs:
        if name in seen:
            raise InvalidRequestError(
                f"The {_shown(name)} parameter is repeated.",
                reason="repeated_parameter",
            )
        seen.add(name)
        if "\x00" in name or "\x00" in value:
            raise InvalidRequestError(
                "The request body contains a NUL character.", reason="malformed_body"
            )
        if value and name in _KNOWN_PARAMETERS:
            parameters[name] = value
    return parameters


def _shown(name: str) -> str:
    return name if name in _KNOWN_PARAMETERS else "same"


def _scopes(raw: str | None) -> tuple[str, ...]:
    if raw is None:
        return ()
    scopes = tuple(raw.split(" "))
    if not all(_SCOPE_TOKEN.fullmatch(scope) for scope in scopes):
        raise InvalidScopeError(
            "The scope parameter must be space-separated scope tokens.",
            reason="malformed_scope",
        )
    return tuple(dict.fromkeys(scopes))


def _service_account(raw: str | None) -> str | None:
    if raw is None:
        return None
    if not _SERVICE_ACCOUNT.fullmatch(raw):
        raise InvalidRequestError(
            "The service_account parameter must be a service account email.",
            reason="malformed_service_account",
        )
    return raw

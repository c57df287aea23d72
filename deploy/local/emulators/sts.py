"""Emulator of Google STS ``POST /v1/token`` for one OIDC workload identity provider.

It takes the RFC 8693 token exchange that ``google.oauth2.sts.Client`` sends.
It checks the request, then checks the subject token as Workload Identity
Federation does for an OIDC provider: discovery over HTTPS, the JWKS, ``iss``,
``aud``, ``iat``, ``exp`` and the attribute mapping. It returns a federated
access token that the IAM Credentials emulator accepts. Errors are OAuth JSON
bodies with STS's wording.
Run with ``python -m deploy.local.emulators.sts``.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import time
from collections.abc import Iterable, Mapping
from http import HTTPStatus
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import parse_qs, unquote

import jwt

from deploy.local.emulators import federated_tokens
from deploy.local.emulators.attribute_mapping import (
    DEFAULT_MAPPING,
    SUBJECT,
    AttributeMapping,
    AttributeMappingError,
    parse_attribute_mapping,
)
from deploy.local.emulators.common import (
    EmulatorApp,
    JsonObject,
    Request,
    Response,
    add_common_arguments,
    run_main,
)
from deploy.local.emulators.oidc_discovery import (
    SUPPORTED_ALGORITHMS,
    IssuerKeyCache,
    IssuerUnavailableError,
    normalize_issuer,
)

_LOGGER = logging.getLogger(__name__)

GRANT_TYPE = "urn:ietf:params:oauth:grant-type:token-exchange"
ACCESS_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:access_token"  # noqa: S105
SUBJECT_TOKEN_TYPES = (
    "urn:ietf:params:oauth:token-type:jwt",
    "urn:ietf:params:oauth:token-type:id_token",
)
MAX_OPTIONS_CHARS = 4096
MAX_ACCESS_TOKEN_SECONDS = 3600
# WIF was measured to accept iat up to about 60 s ahead and exp up to about
# 60 s behind the clock, so the emulator allows the same skew.
CLOCK_SKEW_SECONDS = 60
# The STS reference requires exp to be less than 48 hours after iat.
MAX_SUBJECT_TOKEN_SECONDS = 48 * 3600

_WORKLOAD_PROVIDER = re.compile(
    r"^//iam\.googleapis\.com/projects/\d+/locations/global/"
    r"workloadIdentityPools/[a-z0-9-]+/providers/[a-z0-9-]+$"
)
_WORKFORCE_PROVIDER = re.compile(
    r"^//iam\.googleapis\.com/locations/global/workforcePools/[a-z0-9-]+/"
    r"providers/[a-z0-9-]+$"
)
_FORM_FIELDS = (
    "grant_type",
    "audience",
    "scope",
    "requested_token_type",
    "subject_token",
    "subject_token_type",
    "options",
)
# The JSON body of the REST reference uses camelCase; snake_case also parses.
_JSON_FIELDS = {
    **{name: name for name in _FORM_FIELDS},
    "grantType": "grant_type",
    "requestedTokenType": "requested_token_type",
    "subjectToken": "subject_token",
    "subjectTokenType": "subject_token_type",
}

AUDIENCE_FORMAT_MESSAGE = (
    'Invalid value for "audience". This value should be the full resource name '
    "of the Identity Provider. See https://cloud.google.com/iam/docs/reference/"
    "sts/rest/v1/TopLevel/token for the list of possible formats."
)
UNKNOWN_PROVIDER_MESSAGE = (
    'The target service indicated by the "audience" parameters is invalid. This '
    "might either be because the pool or provider is disabled or deleted or "
    "because it doesn't exist."
)
ISSUER_UNAVAILABLE_MESSAGE = "Error connecting to the given credential's issuer."
BAD_SIGNATURE_MESSAGE = "Unable to verify the ID Token signature."
REJECTED_BY_CONDITION_MESSAGE = (
    "The given credential is rejected by the attribute condition."
)
_NO_STORE = (("Cache-Control", "no-store"), ("Pragma", "no-cache"))

_FAULT_ERRORS = {
    400: ("invalid_request", "The request is invalid."),
    401: ("invalid_client", "The client is not authorized."),
    403: ("access_denied", "The caller does not have permission."),
    429: ("temporarily_unavailable", "Too many requests; retry later."),
    500: ("server_error", "Internal error encountered."),
    503: ("temporarily_unavailable", "The service is currently unavailable."),
}


class OAuthError(Exception):
    """An error that the handler turns into an OAuth JSON error body."""

    def __init__(self, error: str, description: str, status: int = 400) -> None:
        super().__init__(f"{error}: {description}")
        self.error = error
        self.description = description
        self.status = status

    def response(self) -> Response:
        """Return the error as STS's JSON error response."""
        body = {"error": self.error, "error_description": self.description}
        return Response.json(self.status, body, _NO_STORE)


def _invalid_request(description: str) -> OAuthError:
    return OAuthError("invalid_request", description)


def _invalid_grant(description: str) -> OAuthError:
    return OAuthError("invalid_grant", description)


def provider_resource_path(audience: str) -> str:
    """Return the provider name without its leading ``//`` host part."""
    return audience.removeprefix("//iam.googleapis.com/")


def _format_claim(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _number_claim(claims: Mapping[str, Any], name: str) -> float | None:
    value = claims.get(name)
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    return None


class TokenExchangeRequest:
    """The fields of one exchange request, parsed from form or JSON."""

    def __init__(self, fields: Mapping[str, str]) -> None:
        self.fields = dict(fields)

    def get(self, name: str) -> str:
        """Return a field's value, or an empty string when it is absent."""
        return self.fields.get(name, "")

    @classmethod
    def parse(cls, request: Request) -> TokenExchangeRequest:
        """Parse the body according to its Content-Type.

        Raises:
            OAuthError: the body is not a form or JSON object of known string
                fields, or a field is repeated.
        """
        content_type = (request.header("Content-Type") or "").split(";")[0].strip()
        try:
            text = request.body.decode("utf-8")
        except UnicodeDecodeError:
            raise _invalid_request("The request body is not UTF-8.") from None
        if content_type == "application/x-www-form-urlencoded":
            return cls(_parse_form(text))
        if content_type == "application/json":
            return cls(_parse_json(text))
        raise _invalid_request(
            "Unsupported Content-Type; send application/x-www-form-urlencoded "
            "or application/json."
        )


def _parse_form(text: str) -> dict[str, str]:
    fields: dict[str, str] = {}
    for name, values in parse_qs(text, keep_blank_values=True).items():
        if name not in _FORM_FIELDS:
            raise _invalid_request(f"Unsupported parameter: {name}.")
        if len(values) > 1:
            raise _invalid_request(f"Duplicate parameter: {name}.")
        fields[name] = values[0]
    return fields


def _parse_json(text: str) -> dict[str, str]:
    try:
        document = json.loads(text or "{}")
    except ValueError:
        raise _invalid_request("The request body is not valid JSON.") from None
    if not isinstance(document, dict):
        raise _invalid_request("The request body must be a JSON object.")
    fields: dict[str, str] = {}
    for name, value in document.items():
        if name not in _JSON_FIELDS:
            raise _invalid_request(f"Unsupported parameter: {name}.")
        if not isinstance(value, str):
            raise _invalid_request(f"Invalid value for {name}: expected a string.")
        fields[_JSON_FIELDS[name]] = value
    return fields


def _check_options(options: str) -> None:
    if not options:
        return
    if len(options) > MAX_OPTIONS_CHARS:
        raise _invalid_request(
            f"The options parameter exceeds {MAX_OPTIONS_CHARS} characters."
        )
    # google-auth percent-encodes the JSON before form encoding, so accept
    # the decoded form too.
    for candidate in (options, unquote(options)):
        try:
            if isinstance(json.loads(candidate), dict):
                return
        except ValueError:
            continue
    raise _invalid_request(
        "Invalid value for options: expected a serialized JSON object."
    )


class StsApp(EmulatorApp):
    """STS for one workload identity pool provider with an OIDC issuer."""

    name: ClassVar[str] = "sts"
    server_header: ClassVar[str] = "ESF"
    api_methods: ClassVar[tuple[str, ...]] = ("token",)

    def __init__(
        self,
        audience: str,
        issuer: str,
        ca_file: Path,
        federated_key: bytes,
        mapping: AttributeMapping,
        rejected_subjects: Iterable[str] = (),
    ) -> None:
        super().__init__()
        if not _WORKLOAD_PROVIDER.match(audience):
            raise ValueError(
                f"invalid --audience {audience!r}: expected //iam.googleapis.com/"
                "projects/NUMBER/locations/global/workloadIdentityPools/POOL/"
                "providers/PROVIDER"
            )
        self.audience = audience
        provider = provider_resource_path(audience)
        # A provider's default audiences: its name with or without https:.
        self.allowed_token_audiences = frozenset(
            {audience, f"https://iam.googleapis.com/{provider}"}
        )
        self.issuer = issuer
        self.keys = IssuerKeyCache(issuer, ca_file, self.stats)
        self.federated_key = federated_key
        self.mapping = mapping
        self.rejected_subjects = frozenset(rejected_subjects)

    def match(self, method: str, path: str) -> str | None:
        """Route ``POST /v1/token``."""
        return "token" if (method, path) == ("POST", "/v1/token") else None

    def handle(self, api_method: str, request: Request) -> Response:
        """Run one token exchange."""
        try:
            response = self._exchange(request)
        except OAuthError as error:
            self.stats.count("exchanges", error.error)
            _LOGGER.info("sts: token exchange rejected: %s", error)
            return error.response()
        self.stats.count("exchanges", "ok")
        return response

    def not_found(self, request: Request) -> Response:
        """Return Google's front-end 404 page."""
        return Response.text(404, "Not Found", "text/html; charset=UTF-8")

    def error_response(self, status: int) -> Response:
        """Return an OAuth error body for a status fault."""
        error, description = _FAULT_ERRORS.get(
            status, ("server_error", HTTPStatus(status).phrase)
        )
        return OAuthError(error, description, status).response()

    def malformed_response(self) -> Response:
        """Return a token-response-shaped body cut off mid-string."""
        return Response(200, b'{"access_token":"ya29.', "application/json")

    def reset(self) -> None:
        """Forget the cached discovery document and JWKS."""
        self.keys.clear()

    # Request checks ----------------------------------------------------------

    def _exchange(self, request: Request) -> Response:
        if request.header("Authorization") is not None:
            raise _invalid_request(
                "The Authorization header must not be sent to the token endpoint."
            )
        exchange = TokenExchangeRequest.parse(request)
        self._check_fields(exchange)
        claims = self._verify_subject_token(exchange.get("subject_token"))
        try:
            attributes = self.mapping.apply(claims)
        except AttributeMappingError as error:
            raise _invalid_request(str(error)) from None
        subject = str(attributes[SUBJECT])
        if subject in self.rejected_subjects:
            raise OAuthError("unauthorized_client", REJECTED_BY_CONDITION_MESSAGE)
        return self._issue(subject, exchange.get("scope").split(), claims)

    def _check_fields(self, exchange: TokenExchangeRequest) -> None:
        grant_type = exchange.get("grant_type")
        if not grant_type:
            raise _invalid_request("Missing required parameter: grant_type.")
        if grant_type != GRANT_TYPE:
            raise OAuthError(
                "unsupported_grant_type", f"Unsupported grant_type: {grant_type}."
            )
        audience = exchange.get("audience")
        if not (
            _WORKLOAD_PROVIDER.match(audience) or _WORKFORCE_PROVIDER.match(audience)
        ):
            raise _invalid_request(AUDIENCE_FORMAT_MESSAGE)
        if audience != self.audience:
            raise OAuthError("invalid_target", UNKNOWN_PROVIDER_MESSAGE)
        if exchange.get("requested_token_type") != ACCESS_TOKEN_TYPE:
            raise _invalid_request("Invalid value of requested_token_type in request.")
        if exchange.get("subject_token_type") not in SUBJECT_TOKEN_TYPES:
            raise _invalid_request("Invalid value of subject_token_type in request.")
        if not exchange.get("subject_token"):
            raise _invalid_request("Missing required parameter: subject_token.")
        if not exchange.get("scope").split():
            raise _invalid_request("Scope(s) must be provided.")
        _check_options(exchange.get("options"))

    # Subject token checks ----------------------------------------------------

    def _verify_subject_token(self, token: str) -> JsonObject:
        try:
            header = jwt.get_unverified_header(token)
            claims = jwt.decode(token, options={"verify_signature": False})
        except jwt.DecodeError:
            raise _invalid_grant("Unable to parse the ID Token.") from None
        algorithm = header.get("alg")
        key_id = header.get("kid")
        if algorithm not in SUPPORTED_ALGORITHMS:
            raise _invalid_grant("The ID Token must be signed with RS256 or ES256.")
        if not isinstance(key_id, str) or not key_id:
            raise _invalid_grant("The ID Token header must contain a kid.")

        self._check_issuer(claims.get("iss"))
        self._check_signature(token, key_id, str(algorithm))
        self._check_audience(claims.get("aud"))
        self._check_lifetime(claims, time.time())
        subject = claims.get("sub")
        if not isinstance(subject, str) or not subject:
            # NOTE: the STS reference lists sub as required. It is not confirmed
            # that STS rejects a token without sub when google.subject maps
            # another claim, so this check and its wording are the emulator's.
            raise _invalid_grant("The ID Token must contain a sub claim.")
        return claims

    def _check_issuer(self, issuer: object) -> None:
        if isinstance(issuer, str) and normalize_issuer(issuer) == normalize_issuer(
            self.issuer
        ):
            return
        raise _invalid_grant(
            f"The issuer in ID Token {_format_claim(issuer)} does not match the "
            "expected one in config"
        )

    def _check_signature(self, token: str, key_id: str, algorithm: str) -> None:
        try:
            key = self.keys.find_key(key_id, algorithm)
        except IssuerUnavailableError as error:
            _LOGGER.warning("sts: issuer keys unavailable: %s", error)
            raise _invalid_grant(ISSUER_UNAVAILABLE_MESSAGE) from None
        try:
            jwt.PyJWS().decode_complete(token, key, algorithms=[algorithm])
        except jwt.InvalidSignatureError:
            raise _invalid_grant(BAD_SIGNATURE_MESSAGE) from None
        except jwt.PyJWTError:
            raise _invalid_grant("Unable to parse the ID Token.") from None

    def _check_audience(self, audience: object) -> None:
        values = audience if isinstance(audience, list) else [audience]
        values = [value for value in values if value is not None]
        if any(value in self.allowed_token_audiences for value in values):
            return
        listed = ", ".join(str(value) for value in values)
        raise _invalid_grant(
            f"The audience in ID Token [{listed}] does not match the expected audience."
        )

    def _check_lifetime(self, claims: Mapping[str, Any], now: float) -> None:
        issued_at = _number_claim(claims, "iat")
        stale = _invalid_grant(
            f"ID Token issued at {_format_claim(issued_at)} is stale to sign-in."
        )
        if issued_at is None or issued_at > now + CLOCK_SKEW_SECONDS:
            raise stale
        expires_at = _number_claim(claims, "exp")
        if expires_at is None or expires_at < now - CLOCK_SKEW_SECONDS:
            raise stale
        if expires_at - issued_at >= MAX_SUBJECT_TOKEN_SECONDS:
            raise _invalid_grant(
                "The ID Token's lifetime (exp - iat) must be less than 48 hours."
            )

    # Issuing -----------------------------------------------------------------

    def _issue(self, subject: str, scopes: list[str], claims: JsonObject) -> Response:
        now = int(time.time())
        expires_in = max(0, min(int(claims["exp"]) - now, MAX_ACCESS_TOKEN_SECONDS))
        token = federated_tokens.encode(
            self.federated_key,
            federated_tokens.FederatedToken(
                subject=subject,
                scopes=tuple(scopes),
                audience=self.audience,
                issued_at=now,
                expires_at=now + expires_in,
            ),
        )
        _LOGGER.info("sts: issued a federated token for subject %s", subject)
        body = {
            "access_token": token,
            "issued_token_type": ACCESS_TOKEN_TYPE,
            "token_type": "Bearer",
            "expires_in": expires_in,
        }
        return Response.json(200, body, _NO_STORE)


def build_parser() -> argparse.ArgumentParser:
    """Return the command-line parser of the STS emulator."""
    parser = argparse.ArgumentParser(
        prog="python -m deploy.local.emulators.sts",
        description="Emulate Google STS token exchange on a loopback port.",
    )
    add_common_arguments(parser, default_port=8086)
    parser.add_argument(
        "--audience",
        required=True,
        help="provider resource name: //iam.googleapis.com/projects/NUMBER/"
        "locations/global/workloadIdentityPools/POOL/providers/PROVIDER",
    )
    parser.add_argument(
        "--issuer-uri",
        required=True,
        help="the provider's OIDC issuer, an https URL on loopback",
    )
    parser.add_argument(
        "--ca-file",
        type=Path,
        required=True,
        help="PEM CA bundle trusted for the issuer's discovery and JWKS",
    )
    parser.add_argument(
        "--state-dir",
        type=Path,
        required=True,
        help="directory holding the key shared with the IAM Credentials emulator",
    )
    parser.add_argument(
        "--attribute-mapping",
        default=DEFAULT_MAPPING,
        help="TARGET=assertion.PATH pairs, comma-separated (default: the token "
        "broker's client certificate mapping)",
    )
    parser.add_argument(
        "--reject-subject",
        action="extend",
        nargs="+",
        default=[],
        metavar="VALUE",
        help="google.subject values that the attribute condition rejects",
    )
    return parser


def build_app(args: argparse.Namespace) -> StsApp:
    """Validate the configuration and load the shared key."""
    ca_file: Path = args.ca_file
    if not ca_file.is_file():
        raise ValueError(f"--ca-file {ca_file} does not exist")
    return StsApp(
        audience=args.audience,
        issuer=args.issuer_uri,
        ca_file=ca_file,
        federated_key=federated_tokens.load_key(args.state_dir),
        mapping=parse_attribute_mapping(args.attribute_mapping),
        rejected_subjects=args.reject_subject,
    )


def main(argv: list[str] | None = None) -> int:
    """Run the emulator until SIGTERM or Ctrl-C."""
    return run_main(build_app, build_parser(), argv)


if __name__ == "__main__":
    raise SystemExit(main())

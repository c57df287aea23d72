"""Emulator of the IAM Service Account Credentials API (signJwt, generateAccessToken).

It serves the REST surface that ``iam_credentials_v1.IAMCredentialsClient``
uses with ``transport="rest"``, plus the service-account JWKS endpoint of
``www.googleapis.com``. Errors use Google's JSON shape
``{"error": {"code", "message", "status", "details"}}``. Unlike Google,
signJwt needs no credentials.
Run with ``python -m deploy.local.emulators.iam_credentials``.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import secrets
import time
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from http import HTTPStatus
from pathlib import Path
from typing import ClassVar
from urllib.parse import unquote

import jwt

from deploy.local.emulators import federated_tokens
from deploy.local.emulators.common import (
    EmulatorApp,
    JsonObject,
    Request,
    Response,
    add_common_arguments,
    run_main,
)
from deploy.local.emulators.signing_keys import (
    SigningKey,
    load_signing_key,
    normalize_email,
)

_LOGGER = logging.getLogger(__name__)

ACCESS_TOKEN_PREFIX = "ya29.iam-emulator."  # noqa: S105 - a public prefix
# Scopes that let a federated token call generateAccessToken.
IMPERSONATION_SCOPES = frozenset(
    {
        "https://www.googleapis.com/auth/cloud-platform",
        "https://www.googleapis.com/auth/iam",
    }
)
DEFAULT_SCOPE = "https://www.googleapis.com/auth/cloud-platform"
# OpenID scopes have no URL form; every other Google scope is an https URL.
_SHORT_SCOPES = frozenset({"openid", "email", "profile"})
MAX_JWT_EXP_AHEAD_SECONDS = 12 * 3600
DEFAULT_LIFETIME_SECONDS = 3600
MAX_LIFETIME_SECONDS = 3600
# Stats group counting the bearer kind of each generateAccessToken call.
BEARER_STATS_GROUP = "generateAccessToken_bearer"

_API_PATH = re.compile(
    r"^/v1/projects/(?P<project>[^/]+)/serviceAccounts/(?P<account>[^/]+)"
    r":(?P<verb>signJwt|generateAccessToken)$"
)
_JWKS_PATH = re.compile(r"^/service_accounts/v1/metadata/jwk/(?P<account>[^/]+)$")
_DELEGATE = re.compile(r"^projects/-/serviceAccounts/[^/]+$")
# google.protobuf.Duration in JSON: seconds with up to 9 fractional digits.
_DURATION = re.compile(r"^(?P<sign>-?)(?P<seconds>\d+)(?:\.(?P<fraction>\d{1,9}))?s$")

_STATUS_NAMES = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    409: "ABORTED",
    412: "FAILED_PRECONDITION",
    429: "RESOURCE_EXHAUSTED",
    499: "CANCELLED",
    500: "INTERNAL",
    501: "UNIMPLEMENTED",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}
# Google's generic messages for each status, used by status faults.
_FAULT_MESSAGES = {
    400: "Request contains an invalid argument.",
    403: "The caller does not have permission",
    404: "Requested entity was not found.",
    429: "Resource has been exhausted (e.g. check quota).",
    500: "Internal error encountered.",
    503: "The service is currently unavailable.",
    504: "Deadline expired before operation could complete.",
}

_AUTH_HELP = (
    "Expected OAuth 2 access token, login cookie or other valid authentication "
    "credential. See https://developers.google.com/identity/sign-in/web/"
    "devconsole-project."
)
MISSING_CREDENTIALS_MESSAGE = (
    f"Request is missing required authentication credential. {_AUTH_HELP}"
)
INVALID_CREDENTIALS_MESSAGE = (
    f"Request had invalid authentication credentials. {_AUTH_HELP}"
)
INSUFFICIENT_SCOPES_MESSAGE = "Request had insufficient authentication scopes."
IMPERSONATION_DENIED_MESSAGE = (
    "Permission 'iam.serviceAccounts.getAccessToken' denied on resource "
    "(or it may not exist)."
)
ZERO_LIFETIME_MESSAGE = "Lifetime of access token must be larger then zero."
LONG_LIFETIME_MESSAGE = (
    "can not have lifetimes of more than 1 hour. Use the Org Policy Constraint "
    "constraints/iam.allowServiceAccountCredentialLifetimeExtension to allow "
    "up to 12 hours."
)
_RPC_PREFIX = "google.iam.credentials.v1.IAMCredentials."
_ERROR_INFO = "type.googleapis.com/google.rpc.ErrorInfo"


class GoogleApiError(Exception):
    """An error that the handler turns into Google's JSON error body."""

    def __init__(
        self,
        code: int,
        message: str,
        *,
        reason: str | None = None,
        domain: str = "googleapis.com",
        metadata: Mapping[str, str] | None = None,
        headers: Iterable[tuple[str, str]] = (),
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.reason = reason
        self.domain = domain
        self.metadata = dict(metadata or {})
        self.headers = tuple(headers)

    def response(self) -> Response:
        """Return the error as Google's JSON error response."""
        error: JsonObject = {
            "code": self.code,
            "message": self.message,
            "status": _STATUS_NAMES.get(self.code, "UNKNOWN"),
        }
        if self.reason is not None:
            info: JsonObject = {
                "@type": _ERROR_INFO,
                "reason": self.reason,
                "domain": self.domain,
            }
            if self.metadata:
                info["metadata"] = self.metadata
            error["details"] = [info]
        return Response.json(self.code, {"error": error}, self.headers)


def _invalid_argument(message: str) -> GoogleApiError:
    return GoogleApiError(400, message)


def _parse_json_body(body: bytes, fields: Mapping[str, str]) -> JsonObject:
    """Parse a protobuf-JSON request body, accepting camelCase and snake_case.

    ``fields`` maps every accepted JSON name to the field's canonical name.
    """
    try:
        document = json.loads(body or b"{}")
    except ValueError:
        raise _invalid_argument(
            "Invalid JSON payload received. Unexpected token."
        ) from None
    if not isinstance(document, dict):
        raise _invalid_argument(
            "Invalid JSON payload received. Expected an object at the top level."
        )
    parsed: JsonObject = {}
    for name, value in document.items():
        if name not in fields:
            raise _invalid_argument(
                f'Invalid JSON payload received. Unknown name "{name}": '
                "Cannot find field."
            )
        parsed[fields[name]] = value
    return parsed


def _string_field(document: JsonObject, name: str) -> str:
    value = document.get(name, "")
    if not isinstance(value, str):
        raise _invalid_argument(
            f"Invalid value at '{name}' (TYPE_STRING), {json.dumps(value)}"
        )
    return value


def _string_list_field(document: JsonObject, name: str) -> list[str]:
    # Proto3 JSON reads null as the field's default, an empty list;
    # google-auth's impersonated credentials send "delegates": null.
    value = document.get(name)
    if value is None:
        return []
    if not isinstance(value, list):
        raise _invalid_argument(
            f"Invalid value at '{name}' (TYPE_STRING), {json.dumps(value)}"
        )
    for item in value:
        if not isinstance(item, str):
            raise _invalid_argument(
                f"Invalid value at '{name}' (TYPE_STRING), {json.dumps(item)}"
            )
    return list(value)


def _check_delegates(document: JsonObject) -> None:
    for delegate in _string_list_field(document, "delegates"):
        if not _DELEGATE.match(delegate):
            raise _invalid_argument(
                f"Invalid delegate {delegate!r}: expected "
                "projects/-/serviceAccounts/EMAIL_OR_UNIQUE_ID."
            )


def parse_duration_seconds(text: str) -> int:
    """Parse a google.protobuf.Duration JSON string, truncated to whole seconds.

    Raises:
        GoogleApiError: the text is not a duration such as ``"600s"``.
    """
    match = _DURATION.match(text)
    if match is None:
        raise _invalid_argument(
            "Invalid value at 'lifetime' (type.googleapis.com/google.protobuf."
            f"Duration), {json.dumps(text)}"
        )
    seconds = int(match["seconds"])
    return -seconds if match["sign"] else seconds


def _check_exp_claim(claims: JsonObject, now: int) -> None:
    if "exp" not in claims:
        return
    exp = claims["exp"]
    if not isinstance(exp, int) or isinstance(exp, bool):
        raise _invalid_argument(
            "Invalid JWT payload: the exp claim must be an integer."
        )
    if exp < now:
        raise _invalid_argument("Invalid JWT payload: the exp claim is in the past.")
    if exp > now + MAX_JWT_EXP_AHEAD_SECONDS:
        raise _invalid_argument(
            "Invalid JWT payload: the exp claim is more than 12 hours in the future."
        )


def _requested_scopes(document: JsonObject) -> list[str]:
    scopes = _string_list_field(document, "scope")
    if not scopes:
        raise _invalid_argument("At least one scope must be provided.")
    # Google treats a list of empty strings as a request for cloud-platform.
    scopes = [scope for scope in scopes if scope] or [DEFAULT_SCOPE]
    for scope in scopes:
        if scope not in _SHORT_SCOPES and not scope.startswith("https://"):
            raise _invalid_argument(f"Invalid OAuth scope: {scope!r}.")
    return scopes


def _requested_lifetime(document: JsonObject) -> int:
    if "lifetime" not in document:
        return DEFAULT_LIFETIME_SECONDS
    lifetime = parse_duration_seconds(_string_field(document, "lifetime"))
    if lifetime <= 0:
        raise _invalid_argument(ZERO_LIFETIME_MESSAGE)
    if lifetime > MAX_LIFETIME_SECONDS:
        raise _invalid_argument(LONG_LIFETIME_MESSAGE)
    return lifetime


def format_rfc3339(epoch_seconds: int) -> str:
    """Format whole seconds as RFC 3339 UTC with a ``Z`` suffix."""
    moment = datetime.fromtimestamp(epoch_seconds, tz=UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


class IamCredentialsApp(EmulatorApp):
    """The IAM Credentials API for a fixed set of service accounts."""

    name: ClassVar[str] = "iam-credentials"
    server_header: ClassVar[str] = "ESF"
    api_methods: ClassVar[tuple[str, ...]] = ("signJwt", "generateAccessToken", "jwks")

    def __init__(
        self,
        keys: Mapping[str, SigningKey],
        federated_key: bytes,
        denied_accounts: Iterable[str] = (),
    ) -> None:
        super().__init__()
        self.keys = dict(keys)
        self.federated_key = federated_key
        self.denied_accounts = frozenset(denied_accounts)

    def match(self, method: str, path: str) -> str | None:
        """Route signJwt, generateAccessToken and the JWKS endpoint."""
        api = _API_PATH.match(path)
        if api is not None and method == "POST":
            return api["verb"]
        if _JWKS_PATH.match(path) and method == "GET":
            return "jwks"
        return None

    def handle(self, api_method: str, request: Request) -> Response:
        """Serve one routed request, turning GoogleApiError into its body."""
        try:
            if api_method == "signJwt":
                return self._sign_jwt(request)
            if api_method == "generateAccessToken":
                return self._generate_access_token(request)
            return self._jwks(request)
        except GoogleApiError as error:
            _LOGGER.info(
                "iam-credentials: %s rejected: %d %s", api_method, error.code, error
            )
            return error.response()

    def not_found(self, request: Request) -> Response:
        """Return Google's 404 for a path that no method serves."""
        return GoogleApiError(404, "Requested entity was not found.").response()

    def error_response(self, status: int) -> Response:
        """Return Google's error body for a status fault."""
        message = _FAULT_MESSAGES.get(status, HTTPStatus(status).phrase)
        return GoogleApiError(status, message).response()

    def malformed_response(self) -> Response:
        """Return a signJwt-shaped body cut off mid-string."""
        return Response(200, b'{\n  "keyId": "0123456789abcdef', "application/json")

    # signJwt ---------------------------------------------------------------

    def _sign_jwt(self, request: Request) -> Response:
        email = self._account_from_name(request.path)
        document = _parse_json_body(
            request.body, {"payload": "payload", "delegates": "delegates"}
        )
        _check_delegates(document)
        payload = _string_field(document, "payload")
        if not payload:
            raise _invalid_argument("The payload to sign must not be empty.")
        try:
            claims = json.loads(payload)
        except ValueError:
            claims = None
        if not isinstance(claims, dict):
            raise _invalid_argument("The payload to sign must be a JSON object.")
        _check_exp_claim(claims, int(time.time()))

        key = self.keys[email]
        signed = jwt.PyJWS().encode(
            payload.encode(),
            key.private_key,
            algorithm="RS256",
            headers={"kid": key.key_id, "typ": "JWT"},
        )
        return Response.json(200, {"keyId": key.key_id, "signedJwt": signed})

    # generateAccessToken ---------------------------------------------------

    def _generate_access_token(self, request: Request) -> Response:
        self._authorize_federated_bearer(request)
        email = self._account_from_name(request.path)
        if email in self.denied_accounts:
            raise GoogleApiError(
                403,
                IMPERSONATION_DENIED_MESSAGE,
                reason="IAM_PERMISSION_DENIED",
                domain="iam.googleapis.com",
                metadata={"permission": "iam.serviceAccounts.getAccessToken"},
            )
        document = _parse_json_body(
            request.body,
            {"scope": "scope", "lifetime": "lifetime", "delegates": "delegates"},
        )
        _check_delegates(document)
        _requested_scopes(document)
        lifetime = _requested_lifetime(document)

        expires_at = int(time.time()) + lifetime
        token = ACCESS_TOKEN_PREFIX + secrets.token_urlsafe(48)
        return Response.json(
            200, {"accessToken": token, "expireTime": format_rfc3339(expires_at)}
        )

    def _authorize_federated_bearer(self, request: Request) -> None:
        authorization = request.header("Authorization")
        if authorization is None:
            self.stats.count(BEARER_STATS_GROUP, "none")
            raise self._unauthenticated(
                MISSING_CREDENTIALS_MESSAGE, "CREDENTIALS_MISSING"
            )
        scheme, _, token = authorization.strip().partition(" ")
        token = token.strip()
        kind = "sts" if token.startswith(federated_tokens.TOKEN_PREFIX) else "other"
        self.stats.count(BEARER_STATS_GROUP, kind)
        if scheme.lower() != "bearer" or not token:
            raise self._unauthenticated(
                INVALID_CREDENTIALS_MESSAGE, "ACCESS_TOKEN_TYPE_UNSUPPORTED"
            )
        try:
            federated = federated_tokens.decode(self.federated_key, token, time.time())
        except federated_tokens.ExpiredFederatedTokenError:
            raise self._unauthenticated(
                INVALID_CREDENTIALS_MESSAGE, "ACCESS_TOKEN_EXPIRED"
            ) from None
        except federated_tokens.InvalidFederatedTokenError:
            raise self._unauthenticated(
                INVALID_CREDENTIALS_MESSAGE, "ACCESS_TOKEN_TYPE_UNSUPPORTED"
            ) from None
        if not IMPERSONATION_SCOPES.intersection(federated.scopes):
            raise GoogleApiError(
                403,
                INSUFFICIENT_SCOPES_MESSAGE,
                reason="ACCESS_TOKEN_SCOPE_INSUFFICIENT",
                metadata=self._rpc_metadata("GenerateAccessToken"),
                headers=[
                    (
                        "WWW-Authenticate",
                        'Bearer realm="https://accounts.google.com/", '
                        'error="insufficient_scope", '
                        f'scope="{DEFAULT_SCOPE}"',
                    )
                ],
            )

    def _unauthenticated(self, message: str, reason: str) -> GoogleApiError:
        return GoogleApiError(
            401,
            message,
            reason=reason,
            metadata=self._rpc_metadata("GenerateAccessToken"),
            headers=[
                ("WWW-Authenticate", 'Bearer realm="https://accounts.google.com/"')
            ],
        )

    @staticmethod
    def _rpc_metadata(rpc: str) -> dict[str, str]:
        return {"service": "iamcredentials.googleapis.com", "method": _RPC_PREFIX + rpc}

    # JWKS and names ----------------------------------------------------------

    def _jwks(self, request: Request) -> Response:
        match = _JWKS_PATH.match(request.path)
        email = unquote(match["account"]).lower() if match else ""
        key = self.keys.get(email)
        if key is None:
            raise GoogleApiError(404, f"Not found; Gaia id not found for email {email}")
        return Response.json(
            200,
            {"keys": [key.public_jwk()]},
            headers=[("Cache-Control", "public, max-age=300")],
        )

    def _account_from_name(self, path: str) -> str:
        match = _API_PATH.match(path)
        if match is None:  # match() routes only paths of this form here
            raise GoogleApiError(404, "Requested entity was not found.")
        email = unquote(match["account"]).lower()
        if match["project"] != "-":
            raise _invalid_argument(
                f"Invalid resource name projects/{unquote(match['project'])}/"
                f"serviceAccounts/{email}: the project must be the wildcard '-'."
            )
        if email not in self.keys:
            raise GoogleApiError(404, f"Not found; Gaia id not found for email {email}")
        return email


def build_parser() -> argparse.ArgumentParser:
    """Return the command-line parser of the IAM Credentials emulator."""
    parser = argparse.ArgumentParser(
        prog="python -m deploy.local.emulators.iam_credentials",
        description="Emulate the IAM Credentials API on a loopback port.",
    )
    add_common_arguments(parser, default_port=8085)
    parser.add_argument(
        "--service-account",
        action="append",
        required=True,
        metavar="EMAIL",
        help="service account to emulate; repeat for several",
    )
    parser.add_argument(
        "--state-dir",
        type=Path,
        required=True,
        help="directory for the signing keys and the key shared with the STS emulator",
    )
    parser.add_argument(
        "--deny-impersonation",
        action="append",
        default=[],
        metavar="EMAIL",
        help="return 403 PERMISSION_DENIED from generateAccessToken for this "
        "account; repeat for several",
    )
    return parser


def build_app(args: argparse.Namespace) -> IamCredentialsApp:
    """Load or create the keys named on the command line."""
    state_dir: Path = args.state_dir
    emails = [normalize_email(email) for email in args.service_account]
    denied = [normalize_email(email) for email in args.deny_impersonation]
    unknown = sorted(set(denied) - set(emails))
    if unknown:
        raise ValueError(f"--deny-impersonation names unknown accounts: {unknown}")
    keys = {email: load_signing_key(state_dir, email) for email in emails}
    return IamCredentialsApp(keys, federated_tokens.load_key(state_dir), denied)


def main(argv: list[str] | None = None) -> int:
    """Run the emulator until SIGTERM or Ctrl-C."""
    return run_main(build_app, build_parser(), argv)


if __name__ == "__main__":
    raise SystemExit(main())

"""IAM Credentials: ``signJwt`` as this service, ``generateAccessToken`` for clients.

Both go through ``IAMCredentialsClient`` from ``google-cloud-iam`` with the
REST transport, one client per process. The library's default retry (up to
60 s) is replaced by ``shared.upstream``'s deadline and bounded retries.

API reference: https://cloud.google.com/iam/docs/reference/credentials/rest
"""

from __future__ import annotations

import contextvars
import datetime
import json
import logging
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import google.auth
import google.auth.credentials
import google.auth.exceptions
import google.auth.transport.requests
import requests

from shared.config import (
    SERVICE_ACCOUNT_EMAIL,
    ConfigurationError,
    Settings,
    UpstreamPolicy,
)
from shared.errors import AccessDeniedError, OAuthError, ServerError, safe_description
from shared.federation import AccessToken
from shared.upstream import (
    Deadline,
    ProcessLocal,
    RetryableUpstreamError,
    call_with_retries,
)

if TYPE_CHECKING:
    from google.cloud.iam_credentials_v1 import IAMCredentialsClient

_LOGGER = logging.getLogger(__name__)

CLOUD_PLATFORM_SCOPE = "https://www.googleapis.com/auth/cloud-platform"
GOOGLE_JWKS_URL = "https://www.googleapis.com/service_accounts/v1/metadata/jwk/"
JWKS_PATH = "/service_accounts/v1/metadata/jwk/"
# generateAccessToken's default and maximum lifetime without the org policy
# constraints/iam.allowServiceAccountCredentialLifetimeExtension.
MAX_ACCESS_TOKEN_LIFETIME_SECONDS = 3600
_RETRYABLE_STATUS = frozenset({429, 500, 502, 503, 504})


def service_account_name(email: str) -> str:
    """Return the resource name; the ``-`` project wildcard is required."""
    return f"projects/-/serviceAccounts/{email}"


def resolve_service_account_email(settings: Settings) -> str:
    """Return the account that signs: ``SERVICE_ACCOUNT_EMAIL``, or ADC's.

    On Cloud Run, Application Default Credentials come from the metadata
    server, which names the attached service account.

    Raises:
        ConfigurationError: Neither source names a service account.
    """
    if settings.service_account_email:
        return settings.service_account_email
    fix = (
        f"set {SERVICE_ACCOUNT_EMAIL} to the service account that signs tokens, "
        "or SIGNING_KEY_FILE to sign with a local key"
    )
    try:
        credentials, _ = google.auth.default(scopes=[CLOUD_PLATFORM_SCOPE])
        email = getattr(credentials, "service_account_email", None)
        if email in (None, "default"):
            with requests.Session() as session:
                credentials.refresh(google.auth.transport.requests.Request(session))
            email = getattr(credentials, "service_account_email", None)
    except google.auth.exceptions.GoogleAuthError as error:
        raise ConfigurationError(
            SERVICE_ACCOUNT_EMAIL,
            f"not set, and Application Default Credentials found no service "
            f"account ({type(error).__name__}); {fix}.",
        ) from None
    if not isinstance(email, str) or "@" not in email:
        raise ConfigurationError(
            SERVICE_ACCOUNT_EMAIL,
            f"not set, and Application Default Credentials are not a service "
            f"account; {fix}.",
        )
    return email


def _new_client(
    endpoint: str | None,
    credentials: google.auth.credentials.Credentials | None,
) -> IAMCredentialsClient:
    # Imported here: the package costs about 165 ms to import, which a
    # local-key instance never needs to pay.
    from google.api_core.client_options import ClientOptions
    from google.cloud.iam_credentials_v1 import IAMCredentialsClient

    options = ClientOptions(api_endpoint=endpoint) if endpoint else None
    return IAMCredentialsClient(
        credentials=credentials, transport="rest", client_options=options
    )


class IamSigner:
    """Signs ID tokens with ``signJwt`` as the service's own account.

    Google generates the JWT header (RS256, with ``kid`` set to ``keyId``)
    and publishes the public keys at the account's JWKS URL.
    """

    def __init__(
        self,
        email: str,
        endpoint: str | None,
        policy: UpstreamPolicy,
    ) -> None:
        self._email = email
        self._endpoint = endpoint
        self._policy = policy
        self._client: ProcessLocal[IAMCredentialsClient] = ProcessLocal(
            self._create_client
        )

    def _create_client(self) -> IAMCredentialsClient:
        # An overridden endpoint is the local emulator, which needs no
        # credentials; otherwise Application Default Credentials sign.
        credentials: google.auth.credentials.Credentials | None = None
        if self._endpoint:
            credentials = google.auth.credentials.AnonymousCredentials()
        return _new_client(self._endpoint, credentials)

    @property
    def algorithms(self) -> tuple[str, ...]:
        return ("RS256",)

    @property
    def published_jwks_uri(self) -> str:
        base = self._endpoint + JWKS_PATH if self._endpoint else GOOGLE_JWKS_URL
        return base + self._email

    def public_jwks(self) -> None:
        return None

    def sign(self, claims: Mapping[str, Any], deadline: Deadline) -> str:
        payload = json.dumps(dict(claims), separators=(",", ":"))

        def attempt(timeout: float) -> str:
            response = _call(
                "signJwt",
                lambda: self._client.get().sign_jwt(
                    name=service_account_name(self._email),
                    payload=payload,
                    retry=None,
                    timeout=timeout,
                ),
                self._sign_error,
            )
            return str(response.signed_jwt)

        return call_with_retries(
            "signJwt", attempt, policy=self._policy, deadline=deadline
        )

    def _sign_error(self, status: int, message: str) -> OAuthError:
        if status == 403:
            detail = (
                f"signJwt was denied: grant {self._email} the Service Account "
                "Token Creator role (roles/iam.serviceAccountTokenCreator) on "
                "itself"
            )
        else:
            detail = f"signJwt failed with HTTP {status}"
        return ServerError(
            reason="sign_jwt_failed",
            log_labels={"upstream_status": str(status), "upstream_message": message},
            detail=detail,
        )


_CALLER_TOKEN: contextvars.ContextVar[str] = contextvars.ContextVar("caller_token")


class _CallerTokenCredentials(google.auth.credentials.Credentials):
    """Sends the federated token of the current call as the bearer token.

    The REST transport lets its credentials set ``Authorization`` after any
    per-call header, so a per-call token has to come through credentials.
    One client with these credentials keeps one connection pool for all
    callers; each thread's call sees its own token through a context variable.
    """

    def refresh(self, request: object) -> None:
        # A 401 means the federated token was rejected; there is nothing to
        # refresh, and raising stops the session from resending it.
        raise google.auth.exceptions.RefreshError("federated token rejected")

    def before_request(
        self, request: object, method: str, url: str, headers: dict[str, str]
    ) -> None:
        headers["authorization"] = "Bearer " + _CALLER_TOKEN.get()


class Impersonator:
    """Calls ``generateAccessToken`` with a client's federated token."""

    def __init__(self, endpoint: str | None, policy: UpstreamPolicy) -> None:
        self._endpoint = endpoint
        self._policy = policy
        self._client: ProcessLocal[IAMCredentialsClient] = ProcessLocal(
            lambda: _new_client(
                self._endpoint,
                _CallerTokenCredentials(),
            )
        )

    def generate_access_token(
        self,
        federated_token: str,
        service_account: str,
        scopes: tuple[str, ...],
        lifetime_seconds: int,
        deadline: Deadline,
    ) -> AccessToken:
        """Return a token for ``service_account``, capped at the API's 1 h."""
        from google.protobuf import duration_pb2

        lifetime = duration_pb2.Duration(
            seconds=min(max(1, lifetime_seconds), MAX_ACCESS_TOKEN_LIFETIME_SECONDS)
        )

        def attempt(timeout: float) -> AccessToken:
            marker = _CALLER_TOKEN.set(federated_token)
            try:
                response = _call(
                    "generateAccessToken",
                    lambda: self._client.get().generate_access_token(
                        name=service_account_name(service_account),
                        scope=list(scopes),
                        lifetime=lifetime,
                        retry=None,
                        timeout=timeout,
                    ),
                    _impersonation_error,
                )
            finally:
                _CALLER_TOKEN.reset(marker)
            expire_time = response.expire_time
            now = datetime.datetime.now(datetime.UTC)
            expires_in = int((expire_time - now).total_seconds())
            return AccessToken(str(response.access_token), max(0, expires_in))

        return call_with_retries(
            "generateAccessToken", attempt, policy=self._policy, deadline=deadline
        )


def _impersonation_error(status: int, message: str) -> OAuthError:
    # 403: the federated principal lacks roles/iam.workloadIdentityUser on
    # the account, or the account does not exist.
    return AccessDeniedError(
        "generateAccessToken rejected the request: " + message,
        reason="impersonation_denied",
        log_labels={"upstream_status": str(status)},
    )


def _upstream_message(error: Any) -> str:
    """Return Google's error message, without the request URL the library adds."""
    message = ""
    response = getattr(error, "response", None)
    if response is not None:
        try:
            message = str(response.json()["error"]["message"])
        except (ValueError, KeyError, TypeError):
            message = ""
    if not message:
        message = str(getattr(error, "message", "") or "").rpartition(": ")[2]
    return safe_description(message, 200)


def _call(
    upstream: str,
    operation: Callable[[], Any],
    refusal: Callable[[int, str], OAuthError],
) -> Any:
    """Run one API call, sorting failures into retryable and final ones."""
    from google.api_core import exceptions as core_exceptions
    from google.protobuf.json_format import ParseError

    try:
        return operation()
    except core_exceptions.GoogleAPICallError as error:
        status = int(error.code or 0)
        if status in _RETRYABLE_STATUS or status == 0:
            raise RetryableUpstreamError(upstream, f"HTTP {status}") from None
        raise refusal(status, _upstream_message(error)) from None
    except google.auth.exceptions.RefreshError:
        raise refusal(401, "the federated token was rejected") from None
    except requests.Timeout:
        raise RetryableUpstreamError(upstream, "timed out") from None
    except (requests.ConnectionError, google.auth.exceptions.TransportError) as error:
        raise RetryableUpstreamError(upstream, type(error).__name__) from None
    except (ParseError, ValueError) as error:
        raise RetryableUpstreamError(
            upstream, f"malformed response ({type(error).__name__})"
        ) from None

"""Token exchange at Google STS (RFC 8693) through google-auth's STS client.

``google.oauth2.sts.Client`` passes no timeout to its transport and reports
only the error body, not the HTTP status. ``_DeadlineRequest`` wraps the
transport so that each attempt has a timeout and a 429 or 5xx is distinguished
from a rejection. STS API reference:
https://cloud.google.com/iam/docs/reference/sts/rest/v1/TopLevel/token
"""

from __future__ import annotations

import json
import logging
from typing import Any

import google.auth.exceptions
import google.auth.transport
import google.auth.transport.requests
import requests
from google.oauth2 import sts

from shared.config import UpstreamPolicy
from shared.errors import AccessDeniedError, safe_description
from shared.federation import AccessToken
from shared.upstream import (
    Deadline,
    ProcessLocal,
    RetryableUpstreamError,
    call_with_retries,
)

_LOGGER = logging.getLogger(__name__)

TOKEN_EXCHANGE_GRANT = "urn:ietf:params:oauth:grant-type:token-exchange"
ID_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:id_token"
ACCESS_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:access_token"
MAX_EXPIRES_IN_SECONDS = 3600
_UPSTREAM = "STS"
_MAX_UPSTREAM_DESCRIPTION = 300


class _DeadlineRequest:
    """A google-auth transport request with a fixed timeout and status checks.

    Attributes:
        error_body: The decoded JSON error body of the last refusal, if any.
    """

    def __init__(
        self, inner: google.auth.transport.requests.Request, timeout: float
    ) -> None:
        self._inner = inner
        self._timeout = timeout
        self.error_body: dict[str, Any] = {}

    def __call__(
        self,
        url: str,
        method: str = "GET",
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
        timeout: float | None = None,
        **kwargs: Any,
    ) -> google.auth.transport.Response:
        del timeout  # The deadline decides, not the caller.
        try:
            response = self._inner(
                url, method=method, body=body, headers=headers, timeout=self._timeout
            )
        except google.auth.exceptions.TransportError as error:
            cause = error.__cause__
            detail = "timed out" if isinstance(cause, requests.Timeout) else "failed"
            raise RetryableUpstreamError(_UPSTREAM, f"connection {detail}") from None

        status = int(response.status)
        if status == 429 or status >= 500:
            raise RetryableUpstreamError(_UPSTREAM, f"HTTP {status}")
        if status != 200:
            self.error_body = _json_object(response.data)
        return response


class StsClient:
    """Exchanges this service's ID tokens for federated access tokens."""

    def __init__(self, endpoint: str, audience: str, policy: UpstreamPolicy) -> None:
        self._audience = audience
        self._policy = policy
        self._client = sts.Client(endpoint)
        # One transport per process, reused: google-auth's Request closes its
        # session when the object is garbage-collected (google-auth 2.63,
        # Request.__del__), so a Request per call would drop the connection
        # pool after every exchange.
        self._transport: ProcessLocal[google.auth.transport.requests.Request] = (
            ProcessLocal(
                lambda: google.auth.transport.requests.Request(requests.Session())
            )
        )

    def exchange(
        self, id_token: str, scopes: tuple[str, ...], deadline: Deadline
    ) -> AccessToken:
        """Exchange ``id_token`` for an access token with ``scopes``.

        Raises:
            AccessDeniedError: STS refused the token, with its error code and
                description, which tell an operator what to fix.
            TemporarilyUnavailableError: STS failed, timed out or was slow.
        """

        def attempt(timeout: float) -> AccessToken:
            request = _DeadlineRequest(self._transport.get(), timeout)
            try:
                response = self._client.exchange_token(
                    request=request,
                    grant_type=TOKEN_EXCHANGE_GRANT,
                    subject_token=id_token,
                    subject_token_type=ID_TOKEN_TYPE,
                    audience=self._audience,
                    scopes=list(scopes),
                    requested_token_type=ACCESS_TOKEN_TYPE,
                )
            except google.auth.exceptions.OAuthError:
                raise _rejection_error(request.error_body) from None
            except ValueError:
                # A 200 response whose body is not JSON.
                raise RetryableUpstreamError(_UPSTREAM, "malformed response") from None
            return _access_token(response)

        return call_with_retries(
            _UPSTREAM, attempt, policy=self._policy, deadline=deadline
        )


def _access_token(response: Any) -> AccessToken:
    token = response.get("access_token") if isinstance(response, dict) else None
    if not isinstance(token, str) or not token:
        raise RetryableUpstreamError(_UPSTREAM, "response without access_token")
    expires_in = response.get("expires_in", MAX_EXPIRES_IN_SECONDS)
    try:
        seconds = int(expires_in)
    except (TypeError, ValueError):
        seconds = MAX_EXPIRES_IN_SECONDS
    return AccessToken(token, max(0, min(seconds, MAX_EXPIRES_IN_SECONDS)))


def _rejection_error(body: dict[str, Any]) -> AccessDeniedError:
    code = str(body.get("error") or "unknown_error")
    description = str(body.get("error_description") or "")
    text = safe_description(
        f"STS rejected the token: {code}: {description}".rstrip(": "),
        _MAX_UPSTREAM_DESCRIPTION,
    )
    return AccessDeniedError(
        text,
        reason="sts_refused",
        log_labels={"sts_error": safe_description(code, 64)},
    )


def _json_object(data: Any) -> dict[str, Any]:
    try:
        text = data.decode("utf-8") if isinstance(data, bytes) else str(data)
        parsed = json.loads(text)
    except (UnicodeDecodeError, ValueError):
        return {}
    return parsed if isinstance(parsed, dict) else {}

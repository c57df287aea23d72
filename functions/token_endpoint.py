"""The ``token`` function: ``POST /token`` with a client certificate.

The request is parsed, the client authenticated from the load balancer's
certificate headers, an ID token built and signed, and, when the client
asks for ``scope``, exchanged for Google access tokens. Every step lives in
``shared``; this module orders them and writes one log entry per decision.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import flask

from shared import responses
from shared.claims import IdTokenRequest, build_id_token_claims
from shared.client_cert import (
    ClientCertificate,
    authenticate_client,
    certificate_labels,
    parse_certificate_headers,
)
from shared.config import Settings
from shared.discovery import TOKEN_PATH, resolve_issuer
from shared.errors import (
    InvalidClientError,
    InvalidRequestError,
    MethodNotAllowedError,
    NotFoundError,
    OAuthError,
    ServerError,
)
from shared.federation import AccessToken, TokenExchanger
from shared.signing import Signer
from shared.structured_log import (
    RequestLogContext,
    parse_trace_context,
    request_context,
)
from shared.token_request import (
    MAX_BODY_BYTES,
    TokenRequest,
    check_content_type,
    parse_token_request,
    requests_external_credential,
)
from shared.upstream import Deadline

_LOGGER = logging.getLogger(__name__)
_ALLOWED_METHODS = ("POST",)


class TokenEndpoint:
    """Issues ID tokens, and optionally Google access tokens, to mTLS clients."""

    def __init__(
        self, settings: Settings, signer: Signer, exchanger: TokenExchanger
    ) -> None:
        self._settings = settings
        self._signer = signer
        self._exchanger = exchanger
        self._issuer_warning_logged = False

    def handle(self, request: flask.Request) -> flask.Response:
        """Answer one token request; never raises."""
        context = RequestLogContext(
            trace=parse_trace_context(request.headers),
            execution_id=_execution_id(request, self._settings),
        )
        labels: dict[str, str] = {"event": "token.request"}
        external = False
        with request_context(context):
            try:
                body = self._read_body(request)
                external = requests_external_credential(body)
                return self._issue(request, body, labels)
            except OAuthError as error:
                _log_refusal(error, labels)
                if external:
                    return responses.external_credential_error(error)
                return responses.oauth_error_response(error)
            except Exception:
                _LOGGER.exception(
                    "Token request failed unexpectedly",
                    extra={"labels": {**labels, "event": "token.server_error"}},
                )
                failure = ServerError()
                if external:
                    return responses.external_credential_error(failure)
                return responses.oauth_error_response(failure)

    def _read_body(self, request: flask.Request) -> bytes:
        if request.path != TOKEN_PATH:
            raise NotFoundError(reason="unknown_path")
        if request.method not in _ALLOWED_METHODS:
            raise MethodNotAllowedError(_ALLOWED_METHODS, reason="method_not_allowed")
        if (request.content_length or 0) > MAX_BODY_BYTES:
            raise InvalidRequestError(
                f"The request body exceeds {MAX_BODY_BYTES} bytes.",
                reason="body_too_large",
            )
        body = request.stream.read(MAX_BODY_BYTES + 1)
        if len(body) > MAX_BODY_BYTES:
            raise InvalidRequestError(
                f"The request body exceeds {MAX_BODY_BYTES} bytes.",
                reason="body_too_large",
            )
        return body

    def _issue(
        self, request: flask.Request, body: bytes, labels: dict[str, str]
    ) -> flask.Response:
        check_content_type(request.headers.get("Content-Type"))
        token_request = parse_token_request(body)
        labels.update(_request_labels(token_request))

        cert = parse_certificate_headers(request.headers, self._settings.headers)
        labels.update(certificate_labels(cert))
        client_id = authenticate_client(cert, self._settings.headers)
        labels["client_id"] = client_id
        _check_request_for_client(token_request, client_id)

        issuer = self._issuer(request)
        deadline = Deadline(self._settings.upstream.deadline_seconds)
        claims = self._claims(issuer, client_id, cert)
        id_token = self._signer.sign(claims, deadline)

        if token_request.wants_external_credential:
            # Client libraries exchange and impersonate on their own from
            # this output, so no STS or IAM call is made here.
            _log_issued("Issued ID token in the executable format", labels)
            return responses.external_credential(id_token, claims["exp"])
        if not token_request.scopes:
            _log_issued("Issued ID token", labels)
            return responses.token_response(
                {"id_token": id_token, "expires_in": claims["exp"] - claims["iat"]}
            )

        access = self._exchange(token_request, id_token, claims, deadline)
        _log_issued("Issued ID token and access token", labels)
        return responses.token_response(
            {
                "id_token": id_token,
                "access_token": access.token,
                "token_type": "Bearer",
                "expires_in": access.expires_in,
                "scope": " ".join(token_request.scopes),
            }
        )

    def _issuer(self, request: flask.Request) -> str:
        issuer = resolve_issuer(self._settings.issuer, request.headers.get("Host"))
        if self._settings.issuer is None and not self._issuer_warning_logged:
            self._issuer_warning_logged = True
            _LOGGER.warning(
                "TOKEN_ISSUER is not set, so the issuer %s comes from the Host "
                "header; set TOKEN_ISSUER to the public URL so that the issuer "
                "cannot change with the Host a client sends",
                issuer,
                extra={"labels": {"event": "config.issuer_from_host"}},
            )
        return issuer

    def _claims(
        self, issuer: str, client_id: str, cert: ClientCertificate
    ) -> dict[str, Any]:
        return build_id_token_claims(
            IdTokenRequest(
                issuer=issuer,
                audience=self._settings.workload_identity.token_audience,
                client_id=client_id,
                certificate=cert,
                issued_at=int(time.time()),
                lifetime_seconds=self._settings.token_validity_seconds,
            )
        )

    def _exchange(
        self,
        token_request: TokenRequest,
        id_token: str,
        claims: dict[str, Any],
        deadline: Deadline,
    ) -> AccessToken:
        if token_request.service_account is None:
            return self._exchanger.federated_token(
                id_token, token_request.scopes, deadline
            )
        lifetime = max(1, int(claims["exp"]) - int(time.time()))
        return self._exchanger.service_account_token(
            id_token,
            token_request.scopes,
            token_request.service_account,
            lifetime,
            deadline,
        )


def _check_request_for_client(token_request: TokenRequest, client_id: str) -> None:
    # RFC 8705 §2: a client_id parameter, when sent, must name the client
    # that the certificate authenticates.
    if token_request.client_id is not None and token_request.client_id != client_id:
        raise InvalidClientError(
            "The client_id parameter does not match the client certificate.",
            reason="client_id_mismatch",
        )
    if token_request.service_account and not token_request.scopes:
        raise InvalidRequestError(
            "The service_account parameter requires the scope parameter.",
            reason="service_account_without_scope",
        )


def _request_labels(token_request: TokenRequest) -> dict[str, str]:
    labels = {"format": token_request.response_format}
    if token_request.scopes:
        labels["scope"] = " ".join(token_request.scopes)
    if token_request.service_account:
        labels["service_account"] = token_request.service_account
    return labels


def _execution_id(request: flask.Request, settings: Settings) -> str | None:
    if not settings.log_execution_id:
        return None
    return request.headers.get("Function-Execution-Id")


def _log_issued(message: str, labels: dict[str, str]) -> None:
    _LOGGER.info(message, extra={"labels": {**labels, "event": "token.issued"}})


def _log_refusal(error: OAuthError, labels: dict[str, str]) -> None:
    level = logging.ERROR if error.status_code == 500 else logging.WARNING
    _LOGGER.log(
        level,
        "Token request refused: %s (%s)%s",
        error.error,
        error.reason,
        f": {error.detail}" if error.detail else "",
        extra={
            "labels": {
                **labels,
                **error.log_labels,
                "event": "token.refused",
                "error": error.error,
                "reason": error.reason,
            }
        },
    )

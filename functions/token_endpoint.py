"""The ``token`` function: ``POST /token`` with a client certificate.

The request is parsed, the client authenticated from the load balancer's
certificate headers, checked for validity, revocation and against the client
policy, an ID token built and signed, and, when the client asks for
``scope``, exchanged for Google access tokens. Every step lives in
``shared``; this module orders them and writes one log entry per decision.
"""

from __future__ import annotations

import datetime
import logging
import time
from dataclasses import dataclass
from typing import Any

import flask

from shared import responses
from shared.claims import IdTokenRequest, build_id_token_claims
from shared.client_cert import (
    CertificateHeaderParser,
    ClientCertificate,
    apply_leaf,
    authenticate_client,
    certificate_labels,
    check_lb_secret,
    check_validity,
)
from shared.config import Settings
from shared.discovery import TOKEN_PATH, IssuerResolver, routed_paths
from shared.errors import (
    InvalidClientError,
    InvalidRequestError,
    MethodNotAllowedError,
    NotFoundError,
    OAuthError,
    ServerError,
    challenge_scheme,
)
from shared.federation import AccessToken, TokenExchanger
from shared.leaf_cert import ChainVerifier
from shared.policy import ALLOW_ALL, ClientPolicy, PolicyDecision
from shared.revocation import RevocationLists
from shared.signing import Signer
from shared.structured_log import (
    RequestLogContext,
    exception_summary,
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


@dataclass(frozen=True)
class ClientControls:
    """The optional checks on each client, loaded at cold start.

    Each one is off when None: without a policy every verified certificate
    is allowed, as without a CRL or trust anchors nothing more is checked.
    """

    policy: ClientPolicy | None = None
    revocation_lists: RevocationLists | None = None
    verifier: ChainVerifier | None = None


class TokenEndpoint:
    """Issues ID tokens, and optionally Google access tokens, to mTLS clients."""

    def __init__(
        self,
        settings: Settings,
        signer: Signer,
        exchanger: TokenExchanger,
        controls: ClientControls | None = None,
    ) -> None:
        self._settings = settings
        self._signer = signer
        self._exchanger = exchanger
        self._controls = controls or ClientControls()
        self._certificate_parser = CertificateHeaderParser(settings.headers)
        self._issuers = IssuerResolver(settings.issuer)

    def handle(self, request: flask.Request) -> flask.Response:
        """Handle one token request and return its response; never raises."""
        context = RequestLogContext(
            trace=parse_trace_context(request.headers),
            execution_id=_execution_id(request, self._settings),
        )
        labels: dict[str, str] = {"event": "token.request"}
        external = False
        with request_context(context):
            try:
                # Every refusal, even of a malformed request, names the client
                # by the certificate facts the load balancer sent.
                labels.update(self.certificate_labels(request))
                body = self._read_body(request)
                external = requests_external_credential(body)
                return self._issue(request, body, labels)
            except OAuthError as error:
                _log_refusal(error, labels)
                if isinstance(error, InvalidClientError):
                    error.challenge_scheme = challenge_scheme(
                        request.headers.get("Authorization")
                    )
                if external:
                    return responses.external_credential_error(error)
                return responses.oauth_error_response(error)
            except Exception as unexpected:
                _LOGGER.error(
                    "Token request failed unexpectedly: %s",
                    exception_summary(unexpected),
                    extra={"labels": {**labels, "event": "token.server_error"}},
                )
                failure = ServerError()
                if external:
                    return responses.external_credential_error(failure)
                return responses.oauth_error_response(failure)

    def certificate_labels(self, request: flask.Request) -> dict[str, str]:
        """Return the log labels of the certificate headers, unverified."""
        return certificate_labels(self._certificate_parser.parse(request.headers))

    def _read_body(self, request: flask.Request) -> bytes:
        if TOKEN_PATH not in routed_paths(request.path, TOKEN_PATH):
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

        now = time.time()
        cert, client_id = self._authenticate(request, labels, now)
        decision = self._authorize(cert, token_request, labels)
        _check_request_for_client(token_request, client_id)

        issuer = self._issuers.resolve(request.headers.get("Host"))
        deadline = Deadline(self._settings.upstream.deadline_seconds)
        claims = self._claims(issuer, client_id, cert, decision, int(now))
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

    def _authenticate(
        self, request: flask.Request, labels: dict[str, str], now: float
    ) -> tuple[ClientCertificate, str]:
        """Establish who the client is and that its certificate is valid now."""
        settings = self._settings
        cert = self._certificate_parser.parse(request.headers)
        # handle() has already labelled the entry with these header facts, so
        # even a request that bypassed the load balancer shows what it claimed.
        header_labels = certificate_labels(cert)
        if settings.lb_secret is not None:
            check_lb_secret(request.headers, settings.lb_secret)

        moment = datetime.datetime.fromtimestamp(now, datetime.UTC)
        cert = apply_leaf(cert, settings.headers, self._controls.verifier, moment)
        for key in header_labels:
            del labels[key]
        labels.update(certificate_labels(cert))
        client_id = authenticate_client(cert, settings.headers)
        labels["client_id"] = client_id
        check_validity(cert, moment)
        return cert, client_id

    def _authorize(
        self,
        cert: ClientCertificate,
        token_request: TokenRequest,
        labels: dict[str, str],
    ) -> PolicyDecision:
        """Check revocation and the client policy for this request."""
        controls = self._controls
        if controls.revocation_lists is not None:
            controls.revocation_lists.check(cert)
        if controls.policy is None:
            return ALLOW_ALL
        decision = controls.policy.decide(cert)
        labels.update(decision.log_labels)
        decision.check_request(token_request)
        return decision

    def _claims(
        self,
        issuer: str,
        client_id: str,
        cert: ClientCertificate,
        decision: PolicyDecision,
        issued_at: int,
    ) -> dict[str, Any]:
        lifetime = decision.lifetime_seconds(self._settings.token_validity_seconds)
        return build_id_token_claims(
            IdTokenRequest(
                issuer=issuer,
                audience=self._settings.workload_identity.token_audience,
                client_id=client_id,
                certificate=cert,
                issued_at=issued_at,
                lifetime_seconds=_capped_lifetime(lifetime, cert, issued_at),
                client_claims=decision.claims,
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


def _capped_lifetime(lifetime: int, cert: ClientCertificate, issued_at: int) -> int:
    """Shorten ``lifetime`` so that the token expires by the cert's notAfter.

    Raises:
        InvalidClientError: The certificate expires before any token could
            be valid, which happens only within the clock-skew allowance
            after its notAfter.
    """
    if cert.not_after is None:
        return lifetime
    remaining = int(cert.not_after.timestamp()) - issued_at
    if remaining < 1:
        raise InvalidClientError(
            reason="certificate_expired",
            log_labels={"cert_not_after": cert.not_after.isoformat()},
            detail="the certificate expires before a token issued now could be "
            "valid, and a token never outlives its certificate",
        )
    return min(lifetime, remaining)


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

"""Exchange of an issued ID token for Google access tokens.

With ``scope`` the ID token is exchanged at STS for a federated access
token. With ``service_account`` that federated token is then used to
impersonate the account through IAM Credentials ``generateAccessToken``.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from shared.upstream import Deadline

if TYPE_CHECKING:
    from shared.iam_credentials import Impersonator
    from shared.sts_exchange import StsClient


@dataclass(frozen=True)
class AccessToken:
    """A Google access token and its remaining lifetime."""

    token: str
    expires_in: int


class TokenExchanger(Protocol):
    """Turns an ID token into Google access tokens."""

    def federated_token(
        self, id_token: str, scopes: tuple[str, ...], deadline: Deadline
    ) -> AccessToken:
        """Exchange ``id_token`` at STS for a token with ``scopes``."""
        ...

    def service_account_token(
        self,
        id_token: str,
        scopes: tuple[str, ...],
        service_account: str,
        lifetime_seconds: int,
        deadline: Deadline,
    ) -> AccessToken:
        """Exchange ``id_token``, then impersonate ``service_account``."""
        ...


class GoogleTokenExchanger:
    """Exchanges at STS and impersonates through IAM Credentials."""

    # The federated token that calls generateAccessToken needs a scope that
    # IAM Credentials accepts; this is the narrower of the two it documents.
    IAM_SCOPE = "https://www.googleapis.com/auth/iam"

    def __init__(self, sts: StsClient, impersonator: Impersonator) -> None:
        self._sts = sts
        self._impersonator = impersonator

    def federated_token(
        self, id_token: str, scopes: tuple[str, ...], deadline: Deadline
    ) -> AccessToken:
        return self._sts.exchange(id_token, scopes, deadline)

    def service_account_token(
        self,
        id_token: str,
        scopes: tuple[str, ...],
        service_account: str,
        lifetime_seconds: int,
        deadline: Deadline,
    ) -> AccessToken:
        federated = self._sts.exchange(id_token, (self.IAM_SCOPE,), deadline)
        return self._impersonator.generate_access_token(
            federated.token, service_account, scopes, lifetime_seconds, deadline
        )


class LazyTokenExchanger:
    """Builds the real exchanger on first use.

    An instance that only issues ID tokens never imports the STS and IAM
    client code, which keeps its cold start short.
    """

    def __init__(self, factory: Callable[[], TokenExchanger]) -> None:
        self._factory = factory
        self._lock = threading.Lock()
        self._exchanger: TokenExchanger | None = None

    def _get(self) -> TokenExchanger:
        if self._exchanger is None:
            with self._lock:
                if self._exchanger is None:
                    self._exchanger = self._factory()
        return self._exchanger

    def federated_token(
        self, id_token: str, scopes: tuple[str, ...], deadline: Deadline
    ) -> AccessToken:
        return self._get().federated_token(id_token, scopes, deadline)

    def service_account_token(
        self,
        id_token: str,
        scopes: tuple[str, ...],
        service_account: str,
        lifetime_seconds: int,
        deadline: Deadline,
    ) -> AccessToken:
        return self._get().service_account_token(
            id_token, scopes, service_account, lifetime_seconds, deadline
        )

"""Exchange of an issued ID token for Google access tokens.

With ``scope`` the ID token is exchanged at STS for a federated access
token. With ``service_account`` that federated token is then used to
impersonate the account through IAM Credentials ``generateAccessToken``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from shared.upstream import Deadline


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

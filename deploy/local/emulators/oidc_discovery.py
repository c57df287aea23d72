"""Fetch and cache an OIDC issuer's signing keys, as WIF does for a provider.

The issuer's ``/.well-known/openid-configuration`` is fetched over HTTPS,
trusting only ``--ca-file``. Its ``issuer`` must match the configured one and
its ``jwks_uri`` names the JWKS, which may be plain HTTP on loopback. Both
are cached for ``ttl_seconds``, and an unknown ``kid`` triggers one refetch.
Every fetch goes to loopback only, so a token cannot point the emulator at
another host.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import jwt
import requests
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from deploy.local.emulators.common import LOOPBACK_HOSTS, Stats

_LOGGER = logging.getLogger(__name__)

DEFAULT_TTL_SECONDS = 300.0
FETCH_TIMEOUT_SECONDS = 5.0
MAX_DOCUMENT_BYTES = 256 * 1024
DISCOVERY_PATH = "/.well-known/openid-configuration"
SUPPORTED_ALGORITHMS = ("RS256", "ES256")


class IssuerUnavailableError(Exception):
    """The issuer's discovery document or JWKS cannot be used.

    The message is for the emulator's log; clients get STS's fixed wording.
    """


def normalize_issuer(issuer: str) -> str:
    """Drop one trailing ``/``, which WIF does not treat as significant."""
    return issuer.removesuffix("/")


def is_loopback_url(url: str, schemes: tuple[str, ...]) -> bool:
    """Return True when ``url`` uses one of ``schemes`` and a loopback host."""
    parts = urlsplit(url)
    return parts.scheme in schemes and parts.hostname in LOOPBACK_HOSTS


@dataclass(frozen=True)
class _CachedKeys:
    keys: dict[str, list[jwt.PyJWK]]
    fetched_at: float


class IssuerKeyCache:
    """The signing keys of one configured issuer, fetched on demand."""

    def __init__(
        self,
        issuer: str,
        ca_file: Path,
        stats: Stats,
        ttl_seconds: float = DEFAULT_TTL_SECONDS,
    ) -> None:
        if not is_loopback_url(issuer, ("https",)):
            raise ValueError(
                f"invalid issuer {issuer!r}: expected an https URL on a loopback "
                "host (127.0.0.1, ::1 or localhost)"
            )
        self.issuer = issuer
        self.ca_file = ca_file
        self.stats = stats
        self.ttl_seconds = ttl_seconds
        self._lock = threading.Lock()
        self._cached: _CachedKeys | None = None

    def clear(self) -> None:
        """Forget the cached discovery document and keys."""
        with self._lock:
            self._cached = None

    def find_key(self, key_id: str, algorithm: str) -> Any:
        """Return the public key for ``key_id`` that can verify ``algorithm``.

        Raises:
            IssuerUnavailableError: discovery or the JWKS failed, or no key
                with that ID and a matching key type exists, even after a
                refetch.
        """
        with self._lock:
            fresh = False
            if self._cached is None or self._expired(self._cached):
                self._cached = self._fetch()
                fresh = True
            key = _pick_key(self._cached.keys.get(key_id, []), algorithm)
            if key is None and not fresh:
                self._cached = self._fetch()
                key = _pick_key(self._cached.keys.get(key_id, []), algorithm)
        if key is None:
            raise IssuerUnavailableError(
                f"the JWKS has no {algorithm} key with kid {key_id!r}"
            )
        return key

    def _expired(self, cached: _CachedKeys) -> bool:
        return time.monotonic() - cached.fetched_at >= self.ttl_seconds

    def _fetch(self) -> _CachedKeys:
        discovery_url = normalize_issuer(self.issuer) + DISCOVERY_PATH
        self.stats.count("issuer_fetches", "discovery")
        discovery = self._get_json(discovery_url)
        advertised = discovery.get("issuer")
        if not isinstance(advertised, str) or normalize_issuer(
            advertised
        ) != normalize_issuer(self.issuer):
            raise IssuerUnavailableError(
                f"the discovery document's issuer {advertised!r} does not match "
                f"{self.issuer!r}"
            )
        jwks_uri = discovery.get("jwks_uri")
        if not isinstance(jwks_uri, str) or not is_loopback_url(
            jwks_uri, ("https", "http")
        ):
            raise IssuerUnavailableError(
                f"the jwks_uri {jwks_uri!r} is not an http(s) URL on loopback"
            )

        self.stats.count("issuer_fetches", "jwks")
        jwks = self._get_json(jwks_uri)
        raw_keys = jwks.get("keys")
        if not isinstance(raw_keys, list):
            raise IssuerUnavailableError(f"{jwks_uri} has no keys list")
        return _CachedKeys(_index_keys(raw_keys), time.monotonic())

    def _get_json(self, url: str) -> dict[str, Any]:
        try:
            response = requests.get(
                url,
                verify=str(self.ca_file),
                timeout=FETCH_TIMEOUT_SECONDS,
                allow_redirects=False,
            )
        except requests.RequestException as error:
            raise IssuerUnavailableError(f"GET {url} failed: {error}") from error
        if response.status_code != 200:
            raise IssuerUnavailableError(
                f"GET {url} returned HTTP {response.status_code}"
            )
        if len(response.content) > MAX_DOCUMENT_BYTES:
            raise IssuerUnavailableError(f"GET {url} returned more than 256 KB")
        try:
            document = response.json()
        except ValueError:
            raise IssuerUnavailableError(f"GET {url} did not return JSON") from None
        if not isinstance(document, dict):
            raise IssuerUnavailableError(f"GET {url} did not return a JSON object")
        return document


def _index_keys(raw_keys: list[object]) -> dict[str, list[jwt.PyJWK]]:
    keys: dict[str, list[jwt.PyJWK]] = {}
    for raw in raw_keys:
        if not isinstance(raw, dict) or not isinstance(raw.get("kid"), str):
            continue
        try:
            key = jwt.PyJWK(raw)
        except (jwt.PyJWKError, jwt.InvalidKeyError, ValueError) as error:
            # WIF accepts only RSA and P-256 keys; others are skipped here.
            _LOGGER.warning("skipping unusable JWK %r: %s", raw.get("kid"), error)
            continue
        keys.setdefault(raw["kid"], []).append(key)
    return keys


def _pick_key(candidates: list[jwt.PyJWK], algorithm: str) -> Any:
    for candidate in candidates:
        key = candidate.key
        if algorithm == "RS256" and isinstance(key, rsa.RSAPublicKey):
            return key
        if (
            algorithm == "ES256"
            and isinstance(key, ec.EllipticCurvePublicKey)
            and isinstance(key.curve, ec.SECP256R1)
        ):
            return key
    return None

"""Cold-start wiring: settings, logging, signer and exchanger for both functions.

``load_service`` runs when functions-framework imports ``main.py``, which
gunicorn does in its master process before it forks the workers. It checks
the whole configuration there, so a mistake stops the function at start-up.
Anything with sockets or threads (HTTP sessions, API clients) is created
lazily, in the worker that first needs it.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass

from functions.metadata_endpoint import MetadataEndpoint
from functions.token_endpoint import TokenEndpoint
from shared.config import ConfigurationError, Settings, load_settings
from shared.federation import GoogleTokenExchanger, TokenExchanger
from shared.iam_credentials import (
    IamSigner,
    Impersonator,
    resolve_service_account_email,
)
from shared.signing import LocalKeySigner, Signer
from shared.structured_log import configure_logging
from shared.sts_exchange import StsClient

_LOGGER = logging.getLogger(__name__)


@dataclass(frozen=True)
class Service:
    """The two endpoints of one process, sharing settings and signer."""

    settings: Settings
    token: TokenEndpoint
    metadata: MetadataEndpoint


def load_service(environ: Mapping[str, str] | None = None) -> Service:
    """Build both endpoints from the environment.

    Raises:
        ConfigurationError: The configuration is invalid; the error is also
            logged as a structured ERROR entry.
    """
    environ = os.environ if environ is None else environ
    configure_logging(environ.get("GOOGLE_CLOUD_PROJECT", "").strip() or None)
    try:
        settings = load_settings(environ)
        signer = _build_signer(settings)
        exchanger = _build_exchanger(settings)
    except ConfigurationError as error:
        _LOGGER.error(
            "Invalid configuration, the function cannot start: %s",
            error,
            extra={"labels": {"event": "config.invalid", "variable": error.variable}},
        )
        raise

    _LOGGER.info(
        "Token service configured",
        extra={
            "labels": {
                "event": "config.loaded",
                "signing": "local_key" if settings.uses_local_key else "iam_signjwt",
                "issuer": settings.issuer or "(from Host header)",
                "client_id_header": settings.headers.client_id,
            }
        },
    )
    return Service(
        settings=settings,
        token=TokenEndpoint(settings, signer, exchanger),
        metadata=MetadataEndpoint(settings, signer),
    )


def _build_signer(settings: Settings) -> Signer:
    if settings.uses_local_key:
        return LocalKeySigner.from_files(settings.signing_key_files)
    email = resolve_service_account_email(settings)
    return IamSigner(email, settings.iam_credentials_endpoint, settings.upstream)


def _build_exchanger(settings: Settings) -> TokenExchanger:
    sts = StsClient(
        settings.sts_endpoint,
        settings.workload_identity.resource_name,
        settings.upstream,
    )
    impersonator = Impersonator(settings.iam_credentials_endpoint, settings.upstream)
    return GoogleTokenExchanger(sts, impersonator)

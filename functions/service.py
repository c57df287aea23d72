"""Cold-start wiring: settings, logging, signer and exchanger for both functions.

``load_service`` runs when functions-framework imports ``main.py``, which
gunicorn does in its master process before it forks the workers. It checks
the whole configuration there, including the client policy, CRL and trust
anchor files, so a mistake stops the function at start-up.
Anything with sockets or threads (HTTP sessions, API clients) is created
lazily, in the worker that first needs it.
"""

from __future__ import annotations

import datetime
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass

from functions.metadata_endpoint import MetadataEndpoint
from functions.token_endpoint import ClientControls, TokenEndpoint
from shared.config import ConfigurationError, Settings, load_settings
from shared.federation import LazyTokenExchanger, TokenExchanger
from shared.leaf_cert import ChainVerifier
from shared.policy import load_policy
from shared.revocation import RevocationLists
from shared.signing import LocalKeySigner, Signer
from shared.structured_log import configure_logging

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
        controls = _build_controls(settings)
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
                **_control_labels(settings, controls),
            }
        },
    )
    _warn_about_stale_crls(controls)
    return Service(
        settings=settings,
        token=TokenEndpoint(settings, signer, exchanger, controls),
        metadata=MetadataEndpoint(settings, signer),
    )


def _build_controls(settings: Settings) -> ClientControls:
    files = settings.policy_files
    policy = None
    if files.client_policy is not None:
        policy = load_policy(files.client_policy)
        policy.check_available_facts(settings.headers)
    verifier = None
    if files.trusted_ca is not None:
        verifier = ChainVerifier.from_file(files.trusted_ca)
    revocation_lists = None
    if files.crl is not None:
        anchors = verifier.anchors if verifier is not None else ()
        revocation_lists = RevocationLists.from_file(files.crl, anchors)
    return ClientControls(policy, revocation_lists, verifier)


def _control_labels(settings: Settings, controls: ClientControls) -> dict[str, str]:
    labels = {
        "client_policy": "off",
        "crl": "off",
        "trusted_ca": "off",
        "lb_secret": "off" if settings.lb_secret is None else "on",
        "optional_headers": ",".join(sorted(settings.headers.optional)) or "none",
    }
    if controls.policy is not None:
        labels["client_policy"] = f"{len(controls.policy.rules)} rules"
    if controls.revocation_lists is not None:
        labels["crl"] = "; ".join(controls.revocation_lists.issuers)
    if controls.verifier is not None:
        labels["trusted_ca"] = f"{len(controls.verifier.anchors)} anchors"
    return labels


def _warn_about_stale_crls(controls: ClientControls) -> None:
    if controls.revocation_lists is None:
        return
    now = datetime.datetime.now(datetime.UTC)
    for stale in controls.revocation_lists.stale(now):
        # An outdated CRL still lists what was revoked until it was issued,
        # which is better than none, so the service keeps serving.
        _LOGGER.warning(
            "The CRL of %s was due for an update at %s; the service keeps "
            "using it. Add the new CRL as a new Secret Manager version and "
            "redeploy the token function",
            stale.issuer,
            stale.next_update.isoformat(),
            extra={
                "labels": {
                    "event": "config.crl_stale",
                    "crl_issuer": stale.issuer,
                    "next_update": stale.next_update.isoformat(),
                }
            },
        )


def _build_signer(settings: Settings) -> Signer:
    if settings.uses_local_key:
        return LocalKeySigner.from_files(settings.signing_key_files)
    from shared.iam_credentials import IamSigner, resolve_service_account_email

    email = resolve_service_account_email(settings)
    return IamSigner(email, settings.iam_credentials_endpoint, settings.upstream)


def _build_exchanger(settings: Settings) -> TokenExchanger:
    def build() -> TokenExchanger:
        # Imported on the first exchange: ID-token-only instances never need
        # google-auth's STS client or the IAM Credentials client.
        from shared.federation import GoogleTokenExchanger
        from shared.iam_credentials import Impersonator
        from shared.sts_exchange import StsClient

        sts = StsClient(
            settings.sts_endpoint,
            settings.workload_identity.resource_name,
            settings.upstream,
        )
        impersonator = Impersonator(
            settings.iam_credentials_endpoint, settings.upstream
        )
        return GoogleTokenExchanger(sts, impersonator)

    return LazyTokenExchanger(build)

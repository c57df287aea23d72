"""Entry points for functions-framework: ``--target=token`` or ``--target=metadata``.

Importing this module loads and checks the configuration; an invalid one
raises ``ConfigurationError``, which stops the function at start-up.
"""

from __future__ import annotations

import flask
import functions_framework

from functions.service import load_service

_SERVICE = load_service()


@functions_framework.http
def token(request: flask.Request) -> flask.Response:
    """Issue an ID token, and optionally access tokens, to an mTLS client."""
    return _SERVICE.token.handle(request)


@functions_framework.http
def metadata(request: flask.Request) -> flask.Response:
    """Serve OIDC discovery metadata and the JWKS."""
    return _SERVICE.metadata.handle(request)

"""Entry points for functions-framework: ``--target=token`` or ``--target=metadata``.

Importing this module loads and checks the configuration; an invalid one
raises ``ConfigurationError``, which stops the function at start-up.
"""

from __future__ import annotations

import flask
import functions_framework
from werkzeug.exceptions import HTTPException

from functions.service import load_service
from shared.responses import framework_error_response

_SERVICE = load_service()


@functions_framework.http
def token(request: flask.Request) -> flask.Response:
    """Issue an ID token, and optionally access tokens, to an mTLS client."""
    return _SERVICE.token.handle(request)


@functions_framework.http
def metadata(request: flask.Request) -> flask.Response:
    """Serve OIDC discovery metadata and the JWKS."""
    return _SERVICE.metadata.handle(request)


@functions_framework.errorhandler(HTTPException)  # type: ignore[untyped-decorator]
def framework_error(error: HTTPException) -> flask.Response:
    """Return errors raised before the function runs as OAuth JSON."""
    labels = _SERVICE.token.certificate_labels(flask.request)
    return framework_error_response(error.code or 500, labels)

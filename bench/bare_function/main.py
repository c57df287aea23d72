"""Baseline function: the token function's parsing with no signing or logging.

It reads the same form body and certificate headers as ``main.token`` and
returns a constant JSON body, so its CPU time per request is what
functions-framework, gunicorn and Flask cost before any token work.
"""

from __future__ import annotations

from urllib.parse import parse_qsl

import flask
import functions_framework

from shared import lb_headers

_HEADER_NAMES = tuple(header.default_name for header in lb_headers.CERTIFICATE_HEADERS)
_BODY = b'{"id_token":"constant","expires_in":300}'
_MAX_BODY_BYTES = 8192


@functions_framework.http
def token(request: flask.Request) -> flask.Response:
    """Parse the form and certificate headers, then return a constant body."""
    form = dict(parse_qsl(request.stream.read(_MAX_BODY_BYTES).decode("utf-8")))
    certificate = {name: request.headers.get(name, "") for name in _HEADER_NAMES}
    verified = certificate[lb_headers.CHAIN_VERIFIED.default_name] == "true"
    if form.get("grant_type") != "client_credentials" or not verified:
        return flask.Response(b'{"error":"invalid_request"}', 400)
    return flask.Response(_BODY, 200, content_type="application/json")

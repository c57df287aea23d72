"""Stand-in for the GCE metadata server, enough for google-auth's ADC.

With ``GCE_METADATA_HOST`` and ``GCE_METADATA_IP`` set to this server,
google-auth pings ``/``, reads ``project/project-id`` and
``instance/service-accounts/default/?recursive=true`` and fetches
``.../default/token``. Every response carries ``Metadata-Flavor: Google``,
and ``/computeMetadata/`` requests must send it. Run with
``python -m deploy.local.emulators.gce_metadata``.
"""

from __future__ import annotations

import argparse
import logging
import secrets
from http import HTTPStatus
from typing import ClassVar

from deploy.local.emulators.common import (
    EmulatorApp,
    Request,
    Response,
    add_common_arguments,
    run_main,
)
from deploy.local.emulators.signing_keys import normalize_email

_LOGGER = logging.getLogger(__name__)

ACCESS_TOKEN_PREFIX = "ya29.metadata-emulator."  # noqa: S105 - a public prefix
TOKEN_EXPIRES_IN_SECONDS = 3599
DEFAULT_SCOPES = ("https://www.googleapis.com/auth/cloud-platform",)
ROOT = "/computeMetadata/v1/"
ACCOUNTS = "instance/service-accounts/"
# The metadata server labels plain-text values with this Content-Type.
TEXT_TYPE = "application/text"
# Leaves of a service-account directory, mapped to their API method names.
_ACCOUNT_LEAVES = {
    "email": "email",
    "aliases": "aliases",
    "scopes": "scopes",
    "token": "token",
}
_PROJECT_PATHS = {
    "project/project-id": "projectId",
    "universe/universe-domain": "universeDomain",
}


def _html_error(status: int, detail: str) -> Response:
    phrase = HTTPStatus(status).phrase
    page = (
        "<!DOCTYPE html>\n<html lang=en>\n"
        f"<title>Error {status} ({phrase})</title>\n"
        f"<p><b>{status}.</b> <ins>That's an error.</ins>\n<p>{detail}\n"
    )
    return Response.text(status, page, "text/html; charset=UTF-8")


class GceMetadataApp(EmulatorApp):
    """Metadata for one instance with one default service account."""

    name: ClassVar[str] = "gce-metadata"
    server_header: ClassVar[str] = "Metadata Server for VM"
    api_methods: ClassVar[tuple[str, ...]] = (
        "ping",
        "serviceAccounts",
        "serviceAccountInfo",
        "email",
        "aliases",
        "scopes",
        "token",
        "projectId",
        "universeDomain",
    )
    common_headers: ClassVar[tuple[tuple[str, str], ...]] = (
        ("Metadata-Flavor", "Google"),
    )

    def __init__(self, email: str, project_id: str, scopes: tuple[str, ...]) -> None:
        super().__init__()
        self.email = normalize_email(email)
        self.project_id = project_id
        self.scopes = scopes

    def match(self, method: str, path: str) -> str | None:
        """Route the GET paths that google-auth reads."""
        if method != "GET":
            return None
        if path == "/":
            return "ping"
        if not path.startswith(ROOT):
            return None
        relative = path[len(ROOT) :]
        if relative in _PROJECT_PATHS:
            return _PROJECT_PATHS[relative]
        if relative == ACCOUNTS:
            return "serviceAccounts"
        account, _, leaf = relative.removeprefix(ACCOUNTS).partition("/")
        if not relative.startswith(ACCOUNTS) or not self._is_account(account):
            return None
        if leaf == "":
            return "serviceAccountInfo"
        return _ACCOUNT_LEAVES.get(leaf)

    def handle(self, api_method: str, request: Request) -> Response:
        """Check the request headers and serve one metadata value."""
        if api_method == "ping":
            return Response.text(200, "computeMetadata/\n", TEXT_TYPE)
        if request.header("Metadata-Flavor") != "Google":
            _LOGGER.info("gce-metadata: %s rejected: no Metadata-Flavor", api_method)
            return _html_error(
                403,
                "Your client does not have permission to get URL "
                f"<code>{request.path}</code> from this server. "
                "Missing Metadata-Flavor:Google header.",
            )
        if request.header("X-Forwarded-For") is not None:
            _LOGGER.info("gce-metadata: %s rejected: X-Forwarded-For", api_method)
            # The real server rejects proxied requests the same way.
            return _html_error(403, "Requests with X-Forwarded-For are rejected.")
        return self._serve_value(api_method, request)

    def _serve_value(self, api_method: str, request: Request) -> Response:
        if api_method == "projectId":
            return Response.text(200, self.project_id, TEXT_TYPE)
        if api_method == "universeDomain":
            return Response.text(200, "googleapis.com", TEXT_TYPE)
        if api_method == "serviceAccounts":
            return Response.text(200, f"default/\n{self.email}/\n", TEXT_TYPE)
        if api_method == "email":
            return Response.text(200, self.email, TEXT_TYPE)
        if api_method == "aliases":
            return Response.text(200, "default\n", TEXT_TYPE)
        if api_method == "scopes":
            return Response.text(200, "".join(f"{s}\n" for s in self.scopes), TEXT_TYPE)
        if api_method == "token":
            return self._token()
        return self._account_info(request)

    def _account_info(self, request: Request) -> Response:
        if request.path.endswith("/") and request.query.get("recursive") == ["true"]:
            info = {
                "aliases": ["default"],
                "email": self.email,
                "scopes": list(self.scopes),
            }
            return Response.json(200, info)
        return Response.text(
            200, "aliases\nemail\nidentity\nscopes\ntoken\n", TEXT_TYPE
        )

    def _token(self) -> Response:
        token = ACCESS_TOKEN_PREFIX + secrets.token_urlsafe(48)
        return Response.json(
            200,
            {
                "access_token": token,
                "expires_in": TOKEN_EXPIRES_IN_SECONDS,
                "token_type": "Bearer",
            },
        )

    def _is_account(self, account: str) -> bool:
        return account in ("default", self.email)

    def not_found(self, request: Request) -> Response:
        """Return the metadata server's 404 page."""
        return _html_error(
            404, f"The requested URL <code>{request.path}</code> was not found."
        )

    def error_response(self, status: int) -> Response:
        """Return an HTML error page for a status fault."""
        return _html_error(status, HTTPStatus(status).description)

    def malformed_response(self) -> Response:
        """Return a token-shaped JSON body cut off mid-string."""
        return Response(
            200, b'{"access_token":"ya29.metadata-emulator.', "application/json"
        )


def build_parser() -> argparse.ArgumentParser:
    """Return the command-line parser of the metadata stand-in."""
    parser = argparse.ArgumentParser(
        prog="python -m deploy.local.emulators.gce_metadata",
        description="Serve GCE metadata for google-auth on a loopback port.",
    )
    add_common_arguments(parser, default_port=8087)
    parser.add_argument("--email", required=True, help="the default service account")
    parser.add_argument("--project-id", required=True, help="the project ID")
    parser.add_argument(
        "--scope",
        action="append",
        dest="scopes",
        metavar="SCOPE",
        help="OAuth scope of the default account; repeat for several "
        "(default cloud-platform)",
    )
    return parser


def build_app(args: argparse.Namespace) -> GceMetadataApp:
    """Build the app from the command line."""
    scopes = tuple(args.scopes or DEFAULT_SCOPES)
    return GceMetadataApp(args.email, args.project_id, scopes)


def main(argv: list[str] | None = None) -> int:
    """Run the stand-in until SIGTERM or Ctrl-C."""
    return run_main(build_app, build_parser(), argv)


if __name__ == "__main__":
    raise SystemExit(main())

"""Tests of the IAM Credentials, STS and GCE metadata emulators.

Each emulator runs as a subprocess on a free loopback port, and the tests call
it through the real client libraries: ``IAMCredentialsClient`` over REST,
``google.oauth2.sts.Client`` and google-auth's ADC.
"""

from __future__ import annotations

import os

# google-auth reads these at import time; keep it away from real metadata.
os.environ["NO_GCE_CHECK"] = "true"
os.environ["GCE_METADATA_HOST"] = "127.0.0.1:9"
os.environ["GCE_METADATA_IP"] = "127.0.0.1:9"

import base64  # noqa: E402
import json  # noqa: E402
import re  # noqa: E402
import socket  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable, Iterator  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import google.auth.credentials  # noqa: E402
import google.auth.exceptions  # noqa: E402
import google.auth.transport.requests  # noqa: E402
import google.oauth2.credentials  # noqa: E402
import jwt  # noqa: E402
import pytest  # noqa: E402
import requests  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import ec, rsa  # noqa: E402
from google.api_core import exceptions as core_exceptions  # noqa: E402
from google.cloud import iam_credentials_v1  # noqa: E402
from google.oauth2 import sts as google_sts  # noqa: E402
from google.protobuf import duration_pb2  # noqa: E402
from jwt.algorithms import ECAlgorithm, RSAAlgorithm  # noqa: E402

from deploy.local.emulators import federated_tokens, state_files  # noqa: E402
from deploy.local.emulators.attribute_mapping import (  # noqa: E402
    DEFAULT_MAPPING,
    SUBJECT_TOO_LONG_MESSAGE,
    AttributeMappingError,
    parse_attribute_mapping,
)
from tests.devtools.emulator_fixtures import (  # noqa: E402
    REPO_ROOT,
    DiscoveryServer,
    EmulatorProcess,
    TemporaryCa,
    safe_environment,
    start_expecting_failure,
)

SERVICE_ACCOUNT = "token-service@demo-project.iam.gserviceaccount.com"
DENIED_ACCOUNT = "denied@demo-project.iam.gserviceaccount.com"
SA_NAME = f"projects/-/serviceAccounts/{SERVICE_ACCOUNT}"
PROVIDER = (
    "iam.googleapis.com/projects/123456789012/locations/global/"
    "workloadIdentityPools/demo-pool/providers/demo-provider"
)
AUDIENCE = f"//{PROVIDER}"
TOKEN_AUDIENCE = f"https://{PROVIDER}"
CLOUD_PLATFORM = "https://www.googleapis.com/auth/cloud-platform"
USERINFO_EMAIL = "https://www.googleapis.com/auth/userinfo.email"
GRANT_TYPE = "urn:ietf:params:oauth:grant-type:token-exchange"
ACCESS_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:access_token"
ID_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:id_token"
JWT_TYPE = "urn:ietf:params:oauth:token-type:jwt"
REJECTED_SUBJECT = "rejected-client"
METADATA_EMAIL = "runtime@demo-project.iam.gserviceaccount.com"
LISTENING_LINE = re.compile(r"^[a-z-]+ emulator listening on http://127\.0\.0\.1:\d+$")


# Processes and servers ---------------------------------------------------------


@pytest.fixture(scope="module")
def state_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("emulator-state")


@pytest.fixture(scope="module")
def log_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("emulator-logs")


def _iam_arguments(state_dir: Path) -> list[str]:
    return [
        "--listen",
        "127.0.0.1:0",
        "--service-account",
        SERVICE_ACCOUNT,
        "--service-account",
        DENIED_ACCOUNT,
        "--deny-impersonation",
        DENIED_ACCOUNT,
        "--state-dir",
        str(state_dir),
    ]


@pytest.fixture(scope="module")
def iam_process(state_dir: Path, log_dir: Path) -> Iterator[EmulatorProcess]:
    process = EmulatorProcess(
        "iam_credentials", _iam_arguments(state_dir), log_dir / "iam.log"
    )
    yield process
    assert process.stop() == 0


@pytest.fixture
def iam(iam_process: EmulatorProcess) -> EmulatorProcess:
    iam_process.reset()
    return iam_process


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> TemporaryCa:
    return TemporaryCa(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def discovery_server(
    ca: TemporaryCa, iam_process: EmulatorProcess
) -> Iterator[DiscoveryServer]:
    server = DiscoveryServer(ca)
    # Plain HTTP on loopback, as the IAM emulator serves its JWKS.
    server.default_jwks_uri = (
        f"{iam_process.url}/service_accounts/v1/metadata/jwk/{SERVICE_ACCOUNT}"
    )
    server.restore()
    yield server
    server.close()


@pytest.fixture
def discovery(discovery_server: DiscoveryServer) -> DiscoveryServer:
    discovery_server.restore()
    return discovery_server


@pytest.fixture(scope="module")
def sts_process(
    discovery_server: DiscoveryServer, ca: TemporaryCa, state_dir: Path, log_dir: Path
) -> Iterator[EmulatorProcess]:
    arguments = [
        "--listen",
        "127.0.0.1:0",
        "--audience",
        AUDIENCE,
        # The trailing slash differs from the discovery document on purpose.
        "--issuer-uri",
        f"{discovery_server.issuer}/",
        "--ca-file",
        str(ca.ca_file),
        "--state-dir",
        str(state_dir),
        "--reject-subject",
        REJECTED_SUBJECT,
    ]
    process = EmulatorProcess("sts", arguments, log_dir / "sts.log")
    yield process
    assert process.stop() == 0


@pytest.fixture
def sts(sts_process: EmulatorProcess, discovery: DiscoveryServer) -> EmulatorProcess:
    # Reset also empties the STS discovery cache, so tests may change the issuer.
    sts_process.reset()
    return sts_process


@pytest.fixture(scope="module")
def metadata_process(log_dir: Path) -> Iterator[EmulatorProcess]:
    arguments = [
        "--listen",
        "127.0.0.1:0",
        "--email",
        METADATA_EMAIL,
        "--project-id",
        "demo-project",
    ]
    process = EmulatorProcess("gce_metadata", arguments, log_dir / "metadata.log")
    yield process
    assert process.stop() == 0


@pytest.fixture
def metadata(metadata_process: EmulatorProcess) -> EmulatorProcess:
    metadata_process.reset()
    return metadata_process


# Client helpers ----------------------------------------------------------------


def bearer_credentials(token: str) -> google.auth.credentials.Credentials:
    """Return credentials that send ``token`` as the bearer and cannot refresh."""
    return google.oauth2.credentials.Credentials(token)  # type: ignore[no-untyped-call]


def iam_client(
    iam: EmulatorProcess, credentials: google.auth.credentials.Credentials | None = None
) -> iam_credentials_v1.IAMCredentialsClient:
    anonymous = google.auth.credentials.AnonymousCredentials()  # type: ignore[no-untyped-call]
    return iam_credentials_v1.IAMCredentialsClient(
        credentials=credentials or anonymous,
        transport="rest",
        client_options={"api_endpoint": iam.url},
    )


def make_claims(
    issuer: str, drop: tuple[str, ...] = (), **overrides: Any
) -> dict[str, Any]:
    now = int(time.time())
    claims: dict[str, Any] = {
        "iss": issuer,
        "sub": "client-1",
        "aud": TOKEN_AUDIENCE,
        "iat": now,
        "exp": now + 300,
        "jti": "5f1e6a9e-0000-4000-8000-000000000001",
        "client_id": "client-1",
        "client": {
            "x5_spiffe": "spiffe://demo/client-1",
            "x5_dnssan": "client-1.example.com",
            "x5_urisan": "https://client-1.example.com",
            "x5_sha256": "om8vGt3r6eTx5TI1kCeNKRJYZTUreIbHGu-Gu8FN8To",
            "x5_serial": "00:ad:3e:0e",
        },
    }
    claims.update(overrides)
    for name in drop:
        claims.pop(name, None)
    return claims


def sign_with_iam(iam: EmulatorProcess, claims: dict[str, Any]) -> str:
    response = iam_client(iam).sign_jwt(name=SA_NAME, payload=json.dumps(claims))
    return str(response.signed_jwt)


def exchange(
    sts: EmulatorProcess,
    subject_token: str,
    *,
    subject_token_type: str = JWT_TYPE,
    audience: str = AUDIENCE,
    scopes: list[str] | None = None,
    requested_token_type: str | None = ACCESS_TOKEN_TYPE,
    grant_type: str = GRANT_TYPE,
    **extra: Any,
) -> dict[str, Any]:
    # google-auth's STS client is not annotated.
    client = google_sts.Client(f"{sts.url}/v1/token")  # type: ignore[no-untyped-call]
    result: dict[str, Any] = client.exchange_token(  # type: ignore[no-untyped-call]
        google.auth.transport.requests.Request(),
        grant_type=grant_type,
        subject_token=subject_token,
        subject_token_type=subject_token_type,
        audience=audience,
        scopes=[CLOUD_PLATFORM] if scopes is None else scopes,
        requested_token_type=requested_token_type,
        **extra,
    )
    return result


def exchange_error(
    sts: EmulatorProcess, subject_token: str, **kwargs: Any
) -> tuple[str, str]:
    """Run an exchange that must fail; return its OAuth error and description."""
    with pytest.raises(google.auth.exceptions.OAuthError) as caught:
        exchange(sts, subject_token, **kwargs)
    body = json.loads(caught.value.args[1])
    return body["error"], body["error_description"]


def federated_token(
    iam: EmulatorProcess,
    sts: EmulatorProcess,
    discovery: DiscoveryServer,
    scopes: list[str] | None = None,
) -> str:
    subject_token = sign_with_iam(iam, make_claims(discovery.issuer))
    return str(exchange(sts, subject_token, scopes=scopes)["access_token"])


def raw_token_request(
    sts: EmulatorProcess, body: bytes | str, content_type: str
) -> requests.Response:
    return requests.post(
        f"{sts.url}/v1/token",
        data=body,
        headers={"Content-Type": content_type},
        timeout=10,
    )


def valid_form(subject_token: str) -> dict[str, str]:
    return {
        "grant_type": GRANT_TYPE,
        "audience": AUDIENCE,
        "scope": CLOUD_PLATFORM,
        "requested_token_type": ACCESS_TOKEN_TYPE,
        "subject_token": subject_token,
        "subject_token_type": JWT_TYPE,
    }


class LocalSigner:
    """Keys the test controls, published through the discovery server's /jwks."""

    def __init__(self) -> None:
        self.rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.other_rsa_key = rsa.generate_private_key(
            public_exponent=65537, key_size=2048
        )
        self.ec_key = ec.generate_private_key(ec.SECP256R1())

    def jwks(self) -> dict[str, Any]:
        rsa_jwk: dict[str, Any] = RSAAlgorithm.to_jwk(
            self.rsa_key.public_key(), as_dict=True
        )
        ec_jwk: dict[str, Any] = ECAlgorithm.to_jwk(
            self.ec_key.public_key(), as_dict=True
        )
        rsa_jwk.update({"kid": "local-rsa", "alg": "RS256", "use": "sig"})
        ec_jwk.update({"kid": "local-ec", "alg": "ES256", "use": "sig"})
        return {"keys": [rsa_jwk, ec_jwk]}

    def publish(self, discovery: DiscoveryServer) -> None:
        discovery.jwks = self.jwks()
        discovery.jwks_uri = discovery.local_jwks_uri

    def sign(
        self,
        claims: dict[str, Any],
        kid: str | None = "local-rsa",
        key: Any = None,
        algorithm: str = "RS256",
    ) -> str:
        headers = {} if kid is None else {"kid": kid}
        signing_key = key if key is not None else self.rsa_key
        return jwt.encode(claims, signing_key, algorithm=algorithm, headers=headers)


@pytest.fixture(scope="module")
def local_signer() -> LocalSigner:
    return LocalSigner()


@pytest.fixture
def local_keys(local_signer: LocalSigner, discovery: DiscoveryServer) -> LocalSigner:
    local_signer.publish(discovery)
    return local_signer


def jwt_segments(token: str) -> tuple[dict[str, Any], dict[str, Any]]:
    header_b64, payload_b64, _ = token.split(".")

    def decode(part: str) -> dict[str, Any]:
        value: dict[str, Any] = json.loads(
            base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))
        )
        return value

    return decode(header_b64), decode(payload_b64)


# Common server behaviour -------------------------------------------------------


def test_startup_line_names_emulator_and_url(
    iam: EmulatorProcess, sts: EmulatorProcess, metadata: EmulatorProcess
) -> None:
    assert LISTENING_LINE.match(iam.ready_line)
    assert iam.ready_line.startswith("iam-credentials emulator listening on ")
    assert sts.ready_line.startswith("sts emulator listening on ")
    assert metadata.ready_line.startswith("gce-metadata emulator listening on ")


def test_stats_after_reset_are_zero(iam: EmulatorProcess) -> None:
    session = requests.Session()
    stats = session.get(f"{iam.url}/__emulator/stats", timeout=5).json()
    assert stats["requests"] == {}
    # Only the connection that carries this stats call.
    assert stats["connections_accepted"] == 1


def test_keep_alive_connection_counted_once(iam: EmulatorProcess) -> None:
    jwks_url = f"{iam.url}/service_accounts/v1/metadata/jwk/{SERVICE_ACCOUNT}"
    with requests.Session() as session:
        for _ in range(3):
            assert session.get(jwks_url, timeout=5).status_code == 200
        stats = session.get(f"{iam.url}/__emulator/stats", timeout=5).json()
    assert stats["connections_accepted"] == 1
    assert stats["requests"] == {"jwks": 3}

    with requests.Session() as session:
        session.get(jwks_url, timeout=5)
        stats = session.get(f"{iam.url}/__emulator/stats", timeout=5).json()
    assert stats["connections_accepted"] == 2


def test_connection_close_opens_new_connections(iam: EmulatorProcess) -> None:
    jwks_url = f"{iam.url}/service_accounts/v1/metadata/jwk/{SERVICE_ACCOUNT}"
    for _ in range(2):
        response = requests.get(jwks_url, headers={"Connection": "close"}, timeout=5)
        assert response.headers["Connection"] == "close"
    assert iam.stats()["connections_accepted"] == 3


def test_iam_client_reuses_one_connection(iam: EmulatorProcess) -> None:
    client = iam_client(iam)
    for _ in range(3):
        client.sign_jwt(name=SA_NAME, payload='{"sub": "x"}')
    stats = iam.stats()
    # One connection for the client and one for the stats call.
    assert stats["connections_accepted"] == 2
    assert stats["requests"] == {"signJwt": 3}


def test_reset_zeroes_counters_and_clears_faults(iam: EmulatorProcess) -> None:
    iam.add_fault(method="jwks", fault="status", status=500)
    requests.get(
        f"{iam.url}/service_accounts/v1/metadata/jwk/{SERVICE_ACCOUNT}", timeout=5
    )
    iam.reset()
    assert iam.control("GET", "faults") == {"faults": []}
    assert iam.stats()["requests"] == {}


# Fault injection ---------------------------------------------------------------


def test_status_fault_returns_google_error_body(iam: EmulatorProcess) -> None:
    iam.add_fault(method="signJwt", fault="status", status=429, times=1)
    response = requests.post(
        f"{iam.url}/v1/{SA_NAME}:signJwt", json={"payload": "{}"}, timeout=5
    )
    assert response.status_code == 429
    assert response.json() == {
        "error": {
            "code": 429,
            "message": "Resource has been exhausted (e.g. check quota).",
            "status": "RESOURCE_EXHAUSTED",
        }
    }


@pytest.mark.parametrize(
    ("status", "exception", "status_name"),
    [
        (500, core_exceptions.InternalServerError, "INTERNAL"),
        (503, core_exceptions.ServiceUnavailable, "UNAVAILABLE"),
        (403, core_exceptions.Forbidden, "PERMISSION_DENIED"),
        (429, core_exceptions.TooManyRequests, "RESOURCE_EXHAUSTED"),
    ],
)
def test_status_fault_raises_client_exception(
    iam: EmulatorProcess,
    status: int,
    exception: type[core_exceptions.GoogleAPICallError],
    status_name: str,
) -> None:
    iam.add_fault(method="signJwt", fault="status", status=status, times=2)
    response = requests.post(
        f"{iam.url}/v1/{SA_NAME}:signJwt", json={"payload": "{}"}, timeout=5
    )
    assert response.status_code == status
    assert response.json()["error"]["status"] == status_name
    with pytest.raises(exception) as caught:
        iam_client(iam).sign_jwt(name=SA_NAME, payload="{}", retry=None)
    assert caught.value.code == status
    assert iam.stats()["requests"] == {"signJwt": 2}


def test_status_fault_times_lets_client_retry(iam: EmulatorProcess) -> None:
    iam.add_fault(method="signJwt", fault="status", status=503, times=2)
    # The client's default retry treats 503 as transient.
    response = iam_client(iam).sign_jwt(name=SA_NAME, payload="{}", timeout=10)
    assert response.key_id
    stats = iam.stats()
    assert stats["requests"] == {"signJwt": 3}
    assert stats["faults_applied"] == {"status": 2}


def test_sts_status_fault_returns_oauth_body(
    sts: EmulatorProcess, iam: EmulatorProcess, discovery: DiscoveryServer
) -> None:
    sts.add_fault(method="token", fault="status", status=503)
    error, description = exchange_error(sts, "x.y.z")
    assert error == "temporarily_unavailable"
    assert description == "The service is currently unavailable."


def test_latency_fault_delays_then_answers(iam: EmulatorProcess) -> None:
    iam.add_fault(method="jwks", fault="latency", latency_ms=300, times=1)
    url = f"{iam.url}/service_accounts/v1/metadata/jwk/{SERVICE_ACCOUNT}"
    started = time.monotonic()
    response = requests.get(url, timeout=5)
    assert response.status_code == 200
    assert time.monotonic() - started >= 0.3


def test_reset_fault_aborts_connection(iam: EmulatorProcess) -> None:
    iam.add_fault(method="signJwt", fault="reset")
    with pytest.raises(requests.exceptions.ConnectionError):
        iam_client(iam).sign_jwt(name=SA_NAME, payload="{}", retry=None)
    with socket.create_connection(("127.0.0.1", iam.port), timeout=5) as connection:
        request = (
            f"POST /v1/{SA_NAME}:signJwt HTTP/1.1\r\nHost: x\r\n"
            "Content-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"
        )
        connection.sendall(request.encode())
        with pytest.raises(ConnectionResetError):
            connection.recv(1024)
    assert iam.stats()["requests"] == {"signJwt": 2}


def test_malformed_fault_returns_invalid_json(iam: EmulatorProcess) -> None:
    iam.add_fault(method="signJwt", fault="malformed", times=1)
    response = requests.post(
        f"{iam.url}/v1/{SA_NAME}:signJwt", json={"payload": "{}"}, timeout=5
    )
    assert response.status_code == 200
    with pytest.raises(ValueError):
        response.json()

    iam.add_fault(method="signJwt", fault="malformed", times=1)
    with pytest.raises(Exception):  # noqa: B017 - protobuf's parse error type
        iam_client(iam).sign_jwt(name=SA_NAME, payload="{}", retry=None)


def test_hang_fault_times_out_until_cleared(iam: EmulatorProcess) -> None:
    iam.add_fault(method="*", fault="hang")
    url = f"{iam.url}/service_accounts/v1/metadata/jwk/{SERVICE_ACCOUNT}"
    with pytest.raises(requests.exceptions.ReadTimeout):
        requests.get(url, timeout=0.5)
    iam.control("DELETE", "faults")
    assert requests.get(url, timeout=5).status_code == 200


def test_hang_fault_bounded_by_latency_ms(iam: EmulatorProcess) -> None:
    iam.add_fault(method="jwks", fault="hang", latency_ms=200, times=1)
    url = f"{iam.url}/service_accounts/v1/metadata/jwk/{SERVICE_ACCOUNT}"
    started = time.monotonic()
    # The server closes the connection without a response once the hang ends.
    with pytest.raises(requests.exceptions.ConnectionError):
        requests.get(url, timeout=5)
    assert time.monotonic() - started < 4


def test_wildcard_fault_matches_every_method(iam: EmulatorProcess) -> None:
    iam.add_fault(method="*", fault="status", status=500, times=2)
    jwks = requests.get(
        f"{iam.url}/service_accounts/v1/metadata/jwk/{SERVICE_ACCOUNT}", timeout=5
    )
    sign = requests.post(
        f"{iam.url}/v1/{SA_NAME}:signJwt", json={"payload": "{}"}, timeout=5
    )
    assert (jwks.status_code, sign.status_code) == (500, 500)
    assert iam.control("GET", "faults") == {"faults": []}


def test_fault_list_reports_remaining_times(iam: EmulatorProcess) -> None:
    iam.add_fault(method="jwks", fault="latency", latency_ms=1, times=2)
    requests.get(
        f"{iam.url}/service_accounts/v1/metadata/jwk/{SERVICE_ACCOUNT}", timeout=5
    )
    assert iam.control("GET", "faults") == {
        "faults": [{"method": "jwks", "fault": "latency", "latency_ms": 1, "times": 1}]
    }


@pytest.mark.parametrize(
    "spec",
    [
        {"method": "signJWT", "fault": "reset"},  # unknown method
        {"method": "*", "fault": "explode"},  # unknown fault kind
        {"method": "*", "fault": "status"},  # status missing
        {"method": "*", "fault": "status", "status": 200},  # not an error status
        {"method": "*", "fault": "latency"},  # latency_ms missing
        {"method": "*", "fault": "reset", "times": 0},  # times not positive
        {"method": "*", "fault": "reset", "extra": 1},  # unknown field
        ["not", "an", "object"],
    ],
)
def test_invalid_fault_spec_rejected(iam: EmulatorProcess, spec: object) -> None:
    response = requests.post(f"{iam.url}/__emulator/faults", json=spec, timeout=5)
    assert response.status_code == 400
    assert "error" in response.json()
    assert iam.control("GET", "faults") == {"faults": []}


def test_sigterm_stops_cleanly_during_hang(log_dir: Path) -> None:
    process = EmulatorProcess(
        "gce_metadata",
        ["--listen", "127.0.0.1:0", "--email", METADATA_EMAIL, "--project-id", "p"],
        log_dir / "metadata-stop.log",
    )
    try:
        process.add_fault(method="*", fault="hang")
        hung = threading.Thread(
            target=lambda: _swallow(lambda: requests.get(process.url, timeout=15))
        )
        hung.start()
        time.sleep(0.3)
        started = time.monotonic()
        assert process.stop() == 0
        assert time.monotonic() - started < 5
        hung.join(timeout=15)
    finally:
        process.stop()
    assert "gce-metadata: stopped" in process.log_path.read_text()


def _swallow(call: Any) -> None:
    try:
        call()
    except requests.RequestException:
        pass


def test_latency_flag_delays_every_call(log_dir: Path) -> None:
    process = EmulatorProcess(
        "gce_metadata",
        [
            "--listen",
            "127.0.0.1:0",
            "--email",
            METADATA_EMAIL,
            "--project-id",
            "p",
            "--latency-ms",
            "250",
        ],
        log_dir / "metadata-latency.log",
    )
    try:
        started = time.monotonic()
        assert requests.get(process.url, timeout=5).status_code == 200
        assert time.monotonic() - started >= 0.25
        # The control API is never delayed.
        started = time.monotonic()
        process.stats()
        assert time.monotonic() - started < 0.25
    finally:
        assert process.stop() == 0


@pytest.mark.parametrize(
    ("module", "arguments", "message"),
    [
        (
            "gce_metadata",
            ["--listen", "0.0.0.0:0", "--email", METADATA_EMAIL, "--project-id", "p"],
            "loopback only",
        ),
        (
            "iam_credentials",
            [
                "--service-account",
                SERVICE_ACCOUNT,
                "--deny-impersonation",
                "other@demo-project.iam.gserviceaccount.com",
                "--state-dir",
                "{tmp}",
            ],
            "--deny-impersonation names unknown accounts",
        ),
        (
            "sts",
            [
                "--audience",
                AUDIENCE,
                "--issuer-uri",
                "http://127.0.0.1:8443/",
                "--ca-file",
                "{ca}",
                "--state-dir",
                "{tmp}",
            ],
            "expected an https URL on a loopback host",
        ),
        (
            "sts",
            [
                "--audience",
                AUDIENCE,
                "--issuer-uri",
                "https://127.0.0.1:8443/",
                "--ca-file",
                "{ca}",
                "--state-dir",
                "{tmp}",
                "--attribute-mapping",
                "attribute.x=assertion.sub",
            ],
            "must map google.subject",
        ),
        (
            "sts",
            [
                "--audience",
                "https:" + AUDIENCE,
                "--issuer-uri",
                "https://127.0.0.1:8443/",
                "--ca-file",
                "{ca}",
                "--state-dir",
                "{tmp}",
            ],
            "invalid --audience",
        ),
    ],
)
def test_invalid_command_line_exits_with_usage_error(
    tmp_path: Path, ca: TemporaryCa, module: str, arguments: list[str], message: str
) -> None:
    filled = [
        argument.replace("{tmp}", str(tmp_path)).replace("{ca}", str(ca.ca_file))
        for argument in arguments
    ]
    if "--listen" not in filled:
        filled = ["--listen", "127.0.0.1:0", *filled]
    status, stderr = start_expecting_failure(module, filled)
    assert status == 2
    assert message in stderr


# IAM Credentials: signJwt ------------------------------------------------------


def test_sign_jwt_returns_verifiable_rs256_jwt(iam: EmulatorProcess) -> None:
    claims = {
        "iss": "https://broker.example.com",
        "sub": "client-1",
        "exp": int(time.time()) + 60,
    }
    response = iam_client(iam).sign_jwt(name=SA_NAME, payload=json.dumps(claims))

    assert re.fullmatch(r"[0-9a-f]{40}", response.key_id)
    header, payload = jwt_segments(response.signed_jwt)
    assert header == {"alg": "RS256", "kid": response.key_id, "typ": "JWT"}
    assert payload == claims

    jwks = requests.get(
        f"{iam.url}/service_accounts/v1/metadata/jwk/{SERVICE_ACCOUNT}", timeout=5
    ).json()
    key = jwt.PyJWK(jwks["keys"][0])
    decoded = jwt.decode(response.signed_jwt, key, algorithms=["RS256"])
    assert decoded == claims


def test_sign_jwt_accepts_encoded_and_raw_at_sign(iam: EmulatorProcess) -> None:
    for account in (SERVICE_ACCOUNT, SERVICE_ACCOUNT.replace("@", "%40")):
        response = requests.post(
            f"{iam.url}/v1/projects/-/serviceAccounts/{account}:signJwt"
            "?$alt=json;enum-encoding=int",
            json={"payload": '{"sub": "x"}'},
            timeout=5,
        )
        assert response.status_code == 200, response.text
        assert set(response.json()) == {"keyId", "signedJwt"}


def test_sign_jwt_accepts_any_bearer(iam: EmulatorProcess) -> None:
    credentials = bearer_credentials("ya29.anything")
    response = iam_client(iam, credentials).sign_jwt(name=SA_NAME, payload="{}")
    assert response.signed_jwt


def test_sign_jwt_project_id_instead_of_wildcard_rejected(iam: EmulatorProcess) -> None:
    name = f"projects/demo-project/serviceAccounts/{SERVICE_ACCOUNT}"
    with pytest.raises(core_exceptions.BadRequest, match="must be the wildcard '-'"):
        iam_client(iam).sign_jwt(name=name, payload="{}")


def test_sign_jwt_unknown_account_not_found(iam: EmulatorProcess) -> None:
    name = "projects/-/serviceAccounts/nobody@demo-project.iam.gserviceaccount.com"
    with pytest.raises(core_exceptions.NotFound, match="Gaia id not found for email"):
        iam_client(iam).sign_jwt(name=name, payload="{}")


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        ("", "must not be empty"),
        ("not json", "must be a JSON object"),
        ("[1, 2]", "must be a JSON object"),
        ('"a string"', "must be a JSON object"),
    ],
)
def test_sign_jwt_payload_not_json_object_rejected(
    iam: EmulatorProcess, payload: str, message: str
) -> None:
    with pytest.raises(core_exceptions.BadRequest, match=message):
        iam_client(iam).sign_jwt(name=SA_NAME, payload=payload)


@pytest.mark.parametrize(
    ("make_exp", "message"),
    [
        (lambda now: str(now + 60), "must be an integer"),
        (lambda now: now + 60.5, "must be an integer"),
        (lambda now: True, "must be an integer"),
        (lambda now: now - 60, "is in the past"),
        (lambda now: now + 12 * 3600 + 60, "more than 12 hours in the future"),
    ],
    ids=["string", "float", "bool", "past", "beyond-12h"],
)
def test_sign_jwt_bad_exp_rejected(
    iam: EmulatorProcess, make_exp: Callable[[int], object], message: str
) -> None:
    payload = json.dumps({"exp": make_exp(int(time.time()))})
    with pytest.raises(core_exceptions.BadRequest, match=message):
        iam_client(iam).sign_jwt(name=SA_NAME, payload=payload)


def test_sign_jwt_exp_just_under_12_hours_accepted(iam: EmulatorProcess) -> None:
    exp = int(time.time()) + 12 * 3600 - 5
    response = iam_client(iam).sign_jwt(name=SA_NAME, payload=json.dumps({"exp": exp}))
    assert jwt_segments(response.signed_jwt)[1] == {"exp": exp}


def test_sign_jwt_delegates_checked(iam: EmulatorProcess) -> None:
    client = iam_client(iam)
    good = [f"projects/-/serviceAccounts/{DENIED_ACCOUNT}"]
    assert client.sign_jwt(name=SA_NAME, payload="{}", delegates=good).signed_jwt
    with pytest.raises(core_exceptions.BadRequest, match="Invalid delegate"):
        client.sign_jwt(name=SA_NAME, payload="{}", delegates=[DENIED_ACCOUNT])


def test_sign_jwt_unknown_json_field_rejected(iam: EmulatorProcess) -> None:
    response = requests.post(
        f"{iam.url}/v1/{SA_NAME}:signJwt",
        json={"payload": "{}", "paylod": "{}"},
        timeout=5,
    )
    assert response.status_code == 400
    assert response.json()["error"]["status"] == "INVALID_ARGUMENT"
    assert 'Unknown name "paylod"' in response.json()["error"]["message"]


def test_sign_jwt_non_string_payload_rejected(iam: EmulatorProcess) -> None:
    response = requests.post(
        f"{iam.url}/v1/{SA_NAME}:signJwt", json={"payload": {"sub": "x"}}, timeout=5
    )
    assert response.status_code == 400
    assert (
        "Invalid value at 'payload' (TYPE_STRING)"
        in response.json()["error"]["message"]
    )


def test_unknown_path_returns_google_404(iam: EmulatorProcess) -> None:
    response = requests.post(f"{iam.url}/v1/{SA_NAME}:signBlob", json={}, timeout=5)
    assert response.status_code == 404
    assert response.json()["error"]["status"] == "NOT_FOUND"


def test_signing_key_survives_restart(
    iam: EmulatorProcess, state_dir: Path, log_dir: Path
) -> None:
    before = iam_client(iam).sign_jwt(name=SA_NAME, payload="{}").key_id
    second = EmulatorProcess(
        "iam_credentials", _iam_arguments(state_dir), log_dir / "iam-2.log"
    )
    try:
        after = iam_client(second).sign_jwt(name=SA_NAME, payload="{}").key_id
    finally:
        assert second.stop() == 0
    assert after == before


def test_jwks_lists_rsa_key(iam: EmulatorProcess) -> None:
    response = requests.get(
        f"{iam.url}/service_accounts/v1/metadata/jwk/{SERVICE_ACCOUNT}", timeout=5
    )
    keys = response.json()["keys"]
    assert len(keys) == 1
    assert {key: keys[0][key] for key in ("kty", "alg", "use", "e")} == {
        "kty": "RSA",
        "alg": "RS256",
        "use": "sig",
        "e": "AQAB",
    }
    assert re.fullmatch(r"[0-9a-f]{40}", keys[0]["kid"])
    assert keys[0]["n"]
    assert "d" not in keys[0]


def test_jwks_unknown_account_not_found(iam: EmulatorProcess) -> None:
    response = requests.get(
        f"{iam.url}/service_accounts/v1/metadata/jwk/nobody@example.com", timeout=5
    )
    assert response.status_code == 404


# IAM Credentials: generateAccessToken ------------------------------------------


def test_generate_access_token_with_sts_bearer(
    iam: EmulatorProcess, sts: EmulatorProcess, discovery: DiscoveryServer
) -> None:
    credentials = bearer_credentials(federated_token(iam, sts, discovery))
    response = iam_client(iam, credentials).generate_access_token(
        name=SA_NAME,
        scope=[CLOUD_PLATFORM],
        lifetime=duration_pb2.Duration(seconds=600),
    )
    assert response.access_token.startswith("ya29.iam-emulator.")
    remaining = response.expire_time.timestamp() - time.time()
    assert 590 <= remaining <= 601
    assert iam.stats()["generateAccessToken_bearer"] == {"sts": 1}


def test_generate_access_token_expire_time_format(
    iam: EmulatorProcess, sts: EmulatorProcess, discovery: DiscoveryServer
) -> None:
    token = federated_token(iam, sts, discovery)
    response = requests.post(
        f"{iam.url}/v1/{SA_NAME}:generateAccessToken",
        json={"scope": [CLOUD_PLATFORM]},
        headers={"Authorization": f"Bearer {token}"},
        timeout=5,
    )
    assert response.status_code == 200
    expire_time = response.json()["expireTime"]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", expire_time)
    # The default lifetime is one hour.
    expires_at = (
        time.mktime(time.strptime(expire_time, "%Y-%m-%dT%H:%M:%SZ")) - time.timezone
    )
    assert 3590 <= expires_at - time.time() <= 3601


@pytest.mark.parametrize("seconds", [1, 3600])
def test_generate_access_token_lifetime_bounds_accepted(
    iam: EmulatorProcess, sts: EmulatorProcess, discovery: DiscoveryServer, seconds: int
) -> None:
    credentials = bearer_credentials(federated_token(iam, sts, discovery))
    response = iam_client(iam, credentials).generate_access_token(
        name=SA_NAME,
        scope=[CLOUD_PLATFORM],
        lifetime=duration_pb2.Duration(seconds=seconds),
    )
    assert response.access_token


@pytest.mark.parametrize(
    ("lifetime", "message"),
    [
        ("0s", "Lifetime of access token must be larger then zero."),
        ("0.5s", "Lifetime of access token must be larger then zero."),
        ("-5s", "Lifetime of access token must be larger then zero."),
        ("3601s", "can not have lifetimes of more than 1 hour"),
        ("43200s", "can not have lifetimes of more than 1 hour"),
        ("10m", "Invalid value at 'lifetime'"),
    ],
)
def test_generate_access_token_bad_lifetime_rejected(
    iam: EmulatorProcess,
    sts: EmulatorProcess,
    discovery: DiscoveryServer,
    lifetime: str,
    message: str,
) -> None:
    token = federated_token(iam, sts, discovery)
    response = requests.post(
        f"{iam.url}/v1/{SA_NAME}:generateAccessToken",
        json={"scope": [CLOUD_PLATFORM], "lifetime": lifetime},
        headers={"Authorization": f"Bearer {token}"},
        timeout=5,
    )
    assert response.status_code == 400
    assert response.json()["error"]["status"] == "INVALID_ARGUMENT"
    assert message in response.json()["error"]["message"]


def test_generate_access_token_zero_lifetime_via_client(
    iam: EmulatorProcess, sts: EmulatorProcess, discovery: DiscoveryServer
) -> None:
    credentials = bearer_credentials(federated_token(iam, sts, discovery))
    with pytest.raises(core_exceptions.BadRequest, match="larger then zero"):
        iam_client(iam, credentials).generate_access_token(
            name=SA_NAME,
            scope=[CLOUD_PLATFORM],
            lifetime=duration_pb2.Duration(seconds=0),
        )


@pytest.mark.parametrize(
    ("scope", "status"),
    [
        ([], 400),  # at least one scope is required
        (["not-a-scope"], 400),
        ([""], 200),  # Google substitutes cloud-platform
        (["openid", USERINFO_EMAIL], 200),
    ],
)
def test_generate_access_token_scope_checked(
    iam: EmulatorProcess,
    sts: EmulatorProcess,
    discovery: DiscoveryServer,
    scope: list[str],
    status: int,
) -> None:
    token = federated_token(iam, sts, discovery)
    response = requests.post(
        f"{iam.url}/v1/{SA_NAME}:generateAccessToken",
        json={"scope": scope},
        headers={"Authorization": f"Bearer {token}"},
        timeout=5,
    )
    assert response.status_code == status, response.text


def test_generate_access_token_without_bearer_unauthenticated(
    iam: EmulatorProcess,
) -> None:
    response = requests.post(
        f"{iam.url}/v1/{SA_NAME}:generateAccessToken",
        json={"scope": [CLOUD_PLATFORM]},
        timeout=5,
    )
    assert response.status_code == 401
    error = response.json()["error"]
    assert error["status"] == "UNAUTHENTICATED"
    assert error["message"].startswith(
        "Request is missing required authentication credential."
    )
    assert error["details"][0]["reason"] == "CREDENTIALS_MISSING"
    assert response.headers["WWW-Authenticate"].startswith("Bearer ")
    assert iam.stats()["generateAccessToken_bearer"] == {"none": 1}


@pytest.mark.parametrize(
    "authorization",
    [
        "Bearer ya29.metadata-emulator.abc",  # a token from another issuer
        "Bearer ya29.sts-emulator.e30.AAAA",  # the STS prefix with a bad MAC
        "Basic dXNlcjpwYXNz",
        "Bearer",
    ],
)
def test_generate_access_token_invalid_bearer_unauthenticated(
    iam: EmulatorProcess, authorization: str
) -> None:
    response = requests.post(
        f"{iam.url}/v1/{SA_NAME}:generateAccessToken",
        json={"scope": [CLOUD_PLATFORM]},
        headers={"Authorization": authorization},
        timeout=5,
    )
    assert response.status_code == 401
    assert response.json()["error"]["message"].startswith(
        "Request had invalid authentication credentials."
    )


def test_generate_access_token_invalid_bearer_via_client(iam: EmulatorProcess) -> None:
    credentials = bearer_credentials("ya29.other-token")
    # A 401 makes google-auth try to refresh, which a bare token cannot do.
    with pytest.raises(google.auth.exceptions.RefreshError):
        iam_client(iam, credentials).generate_access_token(
            name=SA_NAME, scope=[CLOUD_PLATFORM]
        )
    assert iam.stats()["generateAccessToken_bearer"] == {"other": 1}


def test_generate_access_token_expired_sts_token_unauthenticated(
    iam: EmulatorProcess, state_dir: Path
) -> None:
    now = int(time.time())
    token = federated_tokens.encode(
        federated_tokens.load_key(state_dir),
        federated_tokens.FederatedToken(
            "client-1", (CLOUD_PLATFORM,), AUDIENCE, now - 100, now - 10
        ),
    )
    response = requests.post(
        f"{iam.url}/v1/{SA_NAME}:generateAccessToken",
        json={"scope": [CLOUD_PLATFORM]},
        headers={"Authorization": f"Bearer {token}"},
        timeout=5,
    )
    assert response.status_code == 401
    assert response.json()["error"]["details"][0]["reason"] == "ACCESS_TOKEN_EXPIRED"
    assert iam.stats()["generateAccessToken_bearer"] == {"sts": 1}


def test_generate_access_token_insufficient_scope_denied(
    iam: EmulatorProcess, sts: EmulatorProcess, discovery: DiscoveryServer
) -> None:
    token = federated_token(iam, sts, discovery, scopes=[USERINFO_EMAIL])
    credentials = bearer_credentials(token)
    with pytest.raises(core_exceptions.Forbidden) as caught:
        iam_client(iam, credentials).generate_access_token(
            name=SA_NAME, scope=[CLOUD_PLATFORM]
        )
    assert caught.value.message.endswith(
        ": Request had insufficient authentication scopes."
    )
    assert caught.value.reason == "ACCESS_TOKEN_SCOPE_INSUFFICIENT"


def test_generate_access_token_iam_scope_sufficient(
    iam: EmulatorProcess, sts: EmulatorProcess, discovery: DiscoveryServer
) -> None:
    token = federated_token(
        iam, sts, discovery, scopes=["https://www.googleapis.com/auth/iam"]
    )
    credentials = bearer_credentials(token)
    response = iam_client(iam, credentials).generate_access_token(
        name=SA_NAME, scope=[CLOUD_PLATFORM]
    )
    assert response.access_token


def test_generate_access_token_denied_account_permission_denied(
    iam: EmulatorProcess, sts: EmulatorProcess, discovery: DiscoveryServer
) -> None:
    credentials = bearer_credentials(federated_token(iam, sts, discovery))
    with pytest.raises(core_exceptions.Forbidden) as caught:
        iam_client(iam, credentials).generate_access_token(
            name=f"projects/-/serviceAccounts/{DENIED_ACCOUNT}", scope=[CLOUD_PLATFORM]
        )
    assert caught.value.message.endswith(
        ": Permission 'iam.serviceAccounts.getAccessToken' denied on resource "
        "(or it may not exist)."
    )
    assert caught.value.reason == "IAM_PERMISSION_DENIED"


def test_generate_access_token_unknown_account_not_found(
    iam: EmulatorProcess, sts: EmulatorProcess, discovery: DiscoveryServer
) -> None:
    credentials = bearer_credentials(federated_token(iam, sts, discovery))
    with pytest.raises(core_exceptions.NotFound):
        iam_client(iam, credentials).generate_access_token(
            name="projects/-/serviceAccounts/nobody@demo-project.iam.gserviceaccount.com",
            scope=[CLOUD_PLATFORM],
        )


# STS: successful exchanges -----------------------------------------------------


@pytest.mark.parametrize("token_type", [JWT_TYPE, ID_TOKEN_TYPE])
def test_exchange_returns_federated_token(
    iam: EmulatorProcess,
    sts: EmulatorProcess,
    discovery: DiscoveryServer,
    token_type: str,
) -> None:
    subject_token = sign_with_iam(iam, make_claims(discovery.issuer))
    result = exchange(sts, subject_token, subject_token_type=token_type)
    assert result["access_token"].startswith("ya29.sts-emulator.")
    assert result["issued_token_type"] == ACCESS_TOKEN_TYPE
    assert result["token_type"] == "Bearer"
    assert 295 <= result["expires_in"] <= 300


def test_exchange_response_not_cacheable(
    iam: EmulatorProcess, sts: EmulatorProcess, discovery: DiscoveryServer
) -> None:
    subject_token = sign_with_iam(iam, make_claims(discovery.issuer))
    response = requests.post(
        f"{sts.url}/v1/token", data=valid_form(subject_token), timeout=10
    )
    assert response.status_code == 200
    assert response.headers["Cache-Control"] == "no-store"
    assert response.headers["Pragma"] == "no-cache"


def test_exchange_expires_in_capped_at_one_hour(
    iam: EmulatorProcess, sts: EmulatorProcess, discovery: DiscoveryServer
) -> None:
    now = int(time.time())
    subject_token = sign_with_iam(
        iam, make_claims(discovery.issuer, exp=now + 5 * 3600)
    )
    assert exchange(sts, subject_token)["expires_in"] == 3600


@pytest.mark.parametrize("issuer_suffix", ["", "/"])
def test_exchange_issuer_trailing_slash_ignored(
    iam: EmulatorProcess,
    sts: EmulatorProcess,
    discovery: DiscoveryServer,
    issuer_suffix: str,
) -> None:
    subject_token = sign_with_iam(iam, make_claims(discovery.issuer + issuer_suffix))
    assert exchange(sts, subject_token)["access_token"]


@pytest.mark.parametrize(
    "audience", [TOKEN_AUDIENCE, AUDIENCE, ["other", TOKEN_AUDIENCE]]
)
def test_exchange_default_audiences_accepted(
    iam: EmulatorProcess,
    sts: EmulatorProcess,
    discovery: DiscoveryServer,
    audience: object,
) -> None:
    subject_token = sign_with_iam(iam, make_claims(discovery.issuer, aud=audience))
    assert exchange(sts, subject_token)["access_token"]


def test_exchange_caches_discovery_and_jwks(
    iam: EmulatorProcess, sts: EmulatorProcess, discovery: DiscoveryServer
) -> None:
    for _ in range(3):
        exchange(sts, sign_with_iam(iam, make_claims(discovery.issuer)))
    assert discovery.hits["/.well-known/openid-configuration"] == 1
    assert iam.stats()["requests"]["jwks"] == 1
    stats = sts.stats()
    assert stats["issuer_fetches"] == {"discovery": 1, "jwks": 1}
    assert stats["exchanges"] == {"ok": 3}


def test_exchange_accepts_google_auth_options(
    iam: EmulatorProcess, sts: EmulatorProcess, discovery: DiscoveryServer
) -> None:
    subject_token = sign_with_iam(iam, make_claims(discovery.issuer))
    result = exchange(
        sts, subject_token, additional_options={"userProject": "demo-project"}
    )
    assert result["access_token"]


def test_exchange_accepts_camel_case_json_body(
    iam: EmulatorProcess, sts: EmulatorProcess, discovery: DiscoveryServer
) -> None:
    subject_token = sign_with_iam(iam, make_claims(discovery.issuer))
    body = {
        "grantType": GRANT_TYPE,
        "audience": AUDIENCE,
        "scope": CLOUD_PLATFORM,
        "requestedTokenType": ACCESS_TOKEN_TYPE,
        "subjectToken": subject_token,
        "subjectTokenType": ID_TOKEN_TYPE,
    }
    response = raw_token_request(sts, json.dumps(body), "application/json")
    assert response.status_code == 200, response.text


def test_exchange_with_local_es256_key(
    sts: EmulatorProcess, discovery: DiscoveryServer, local_keys: LocalSigner
) -> None:
    subject_token = local_keys.sign(
        make_claims(discovery.issuer),
        kid="local-ec",
        key=local_keys.ec_key,
        algorithm="ES256",
    )
    assert exchange(sts, subject_token)["access_token"]


# STS: request field checks -----------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "error", "description"),
    [
        (
            {"grant_type": "client_credentials"},
            "unsupported_grant_type",
            "Unsupported grant_type: client_credentials.",
        ),
        (
            {"audience": "https:" + AUDIENCE},
            "invalid_request",
            'Invalid value for "audience". This value should be the full resource name',
        ),
        (
            {"audience": PROVIDER.replace("projects/", "projects-")},
            "invalid_request",
            'Invalid value for "audience".',
        ),
        (
            {"audience": AUDIENCE.replace("demo-provider", "other-provider")},
            "invalid_target",
            'The target service indicated by the "audience" parameters is invalid.',
        ),
        (
            {"requested_token_type": None},
            "invalid_request",
            "Invalid value of requested_token_type in request.",
        ),
        (
            {"requested_token_type": "urn:ietf:params:oauth:token-type:id_token"},
            "invalid_request",
            "Invalid value of requested_token_type in request.",
        ),
        (
            {"subject_token_type": "urn:ietf:params:oauth:token-type:saml2"},
            "invalid_request",
            "Invalid value of subject_token_type in request.",
        ),
        ({"scopes": []}, "invalid_request", "Scope(s) must be provided."),
        (
            {"additional_options": {"padding": "x" * 4100}},
            "invalid_request",
            "The options parameter exceeds 4096 characters.",
        ),
        (
            {"additional_headers": {"Authorization": "Bearer ya29.x"}},
            "invalid_request",
            "The Authorization header must not be sent to the token endpoint.",
        ),
        (
            {"resource": "https://example.com"},
            "invalid_request",
            "Unsupported parameter: resource.",
        ),
        (
            {"actor_token": "x", "actor_token_type": JWT_TYPE},
            "invalid_request",
            "Unsupported parameter: actor_token",
        ),
    ],
)
def test_exchange_bad_request_field_rejected(
    iam: EmulatorProcess,
    sts: EmulatorProcess,
    discovery: DiscoveryServer,
    kwargs: dict[str, Any],
    error: str,
    description: str,
) -> None:
    subject_token = sign_with_iam(iam, make_claims(discovery.issuer))
    actual_error, actual_description = exchange_error(sts, subject_token, **kwargs)
    assert actual_error == error
    assert actual_description.startswith(description)


@pytest.mark.parametrize(
    ("mutate", "description"),
    [
        (
            lambda form: form.pop("subject_token"),
            "Missing required parameter: subject_token.",
        ),
        (
            lambda form: form.pop("grant_type"),
            "Missing required parameter: grant_type.",
        ),
        (lambda form: form.update(options="not json"), "Invalid value for options"),
        (lambda form: form.update(options="[1]"), "Invalid value for options"),
    ],
)
def test_exchange_bad_form_rejected(
    iam: EmulatorProcess,
    sts: EmulatorProcess,
    discovery: DiscoveryServer,
    mutate: Any,
    description: str,
) -> None:
    form = valid_form(sign_with_iam(iam, make_claims(discovery.issuer)))
    mutate(form)
    response = requests.post(f"{sts.url}/v1/token", data=form, timeout=5)
    assert response.status_code == 400
    assert response.json()["error"] == "invalid_request"
    assert response.json()["error_description"].startswith(description)


def test_exchange_duplicate_field_rejected(sts: EmulatorProcess) -> None:
    response = raw_token_request(
        sts,
        f"grant_type={GRANT_TYPE}&grant_type={GRANT_TYPE}",
        "application/x-www-form-urlencoded",
    )
    assert response.status_code == 400
    assert response.json() == {
        "error": "invalid_request",
        "error_description": "Duplicate parameter: grant_type.",
    }


def test_exchange_unsupported_content_type_rejected(sts: EmulatorProcess) -> None:
    response = raw_token_request(sts, "grant_type=x", "text/plain")
    assert response.status_code == 400
    assert response.json()["error"] == "invalid_request"


def test_token_endpoint_rejects_get(sts: EmulatorProcess) -> None:
    response = requests.get(f"{sts.url}/v1/token", timeout=5)
    assert response.status_code == 404


# STS: subject token checks -----------------------------------------------------


def test_exchange_garbage_subject_token_rejected(sts: EmulatorProcess) -> None:
    assert exchange_error(sts, "not-a-jwt") == (
        "invalid_grant",
        "Unable to parse the ID Token.",
    )


def test_exchange_wrong_issuer_rejected(
    iam: EmulatorProcess, sts: EmulatorProcess, discovery: DiscoveryServer
) -> None:
    subject_token = sign_with_iam(iam, make_claims("https://other.example.com"))
    assert exchange_error(sts, subject_token) == (
        "invalid_grant",
        "The issuer in ID Token https://other.example.com does not match the expected "
        "one in config",
    )


def test_exchange_missing_issuer_rejected(
    iam: EmulatorProcess, sts: EmulatorProcess, discovery: DiscoveryServer
) -> None:
    subject_token = sign_with_iam(iam, make_claims(discovery.issuer, drop=("iss",)))
    description = exchange_error(sts, subject_token)[1]
    assert description.startswith("The issuer in ID Token null does not match")


def test_exchange_wrong_audience_rejected(
    iam: EmulatorProcess, sts: EmulatorProcess, discovery: DiscoveryServer
) -> None:
    subject_token = sign_with_iam(
        iam, make_claims(discovery.issuer, aud="https://broker.example.com")
    )
    assert exchange_error(sts, subject_token) == (
        "invalid_grant",
        "The audience in ID Token [https://broker.example.com] does not match the "
        "expected audience.",
    )


def test_exchange_missing_audience_rejected(
    iam: EmulatorProcess, sts: EmulatorProcess, discovery: DiscoveryServer
) -> None:
    subject_token = sign_with_iam(iam, make_claims(discovery.issuer, drop=("aud",)))
    assert exchange_error(sts, subject_token)[1] == (
        "The audience in ID Token [] does not match the expected audience."
    )


@pytest.mark.parametrize(
    ("iat_offset", "exp_offset", "accepted"),
    [
        (30, 300, True),  # iat ahead of the clock, within the 60 s skew
        (120, 300, False),  # iat too far ahead
        (-39 * 3600, 8 * 3600, True),  # exp - iat = 47 h
        (-40 * 3600, 8 * 3600, False),  # exp - iat = 48 h
    ],
)
def test_exchange_iat_and_lifetime_checked(
    iam: EmulatorProcess,
    sts: EmulatorProcess,
    discovery: DiscoveryServer,
    iat_offset: int,
    exp_offset: int,
    accepted: bool,
) -> None:
    now = int(time.time())
    claims = make_claims(discovery.issuer, iat=now + iat_offset, exp=now + exp_offset)
    subject_token = sign_with_iam(iam, claims)
    if accepted:
        assert exchange(sts, subject_token)["access_token"]
    else:
        assert exchange_error(sts, subject_token)[0] == "invalid_grant"


def test_exchange_future_iat_reported_stale(
    iam: EmulatorProcess, sts: EmulatorProcess, discovery: DiscoveryServer
) -> None:
    iat = int(time.time()) + 120
    subject_token = sign_with_iam(iam, make_claims(discovery.issuer, iat=iat))
    assert exchange_error(sts, subject_token) == (
        "invalid_grant",
        f"ID Token issued at {iat} is stale to sign-in.",
    )


@pytest.mark.parametrize(("exp_offset", "accepted"), [(-30, True), (-120, False)])
def test_exchange_expired_token_checked_with_skew(
    sts: EmulatorProcess,
    discovery: DiscoveryServer,
    local_keys: LocalSigner,
    exp_offset: int,
    accepted: bool,
) -> None:
    now = int(time.time())
    claims = make_claims(discovery.issuer, iat=now - 600, exp=now + exp_offset)
    subject_token = local_keys.sign(claims)
    if accepted:
        # The token is already past exp, so the federated token has no life left.
        assert exchange(sts, subject_token)["expires_in"] == 0
    else:
        assert exchange_error(sts, subject_token) == (
            "invalid_grant",
            f"ID Token issued at {now - 600} is stale to sign-in.",
        )


@pytest.mark.parametrize("claim", ["iat", "exp"])
def test_exchange_missing_time_claim_stale(
    iam: EmulatorProcess, sts: EmulatorProcess, discovery: DiscoveryServer, claim: str
) -> None:
    claims = make_claims(discovery.issuer, drop=(claim,))
    subject_token = sign_with_iam(iam, claims)
    issued = "null" if claim == "iat" else str(claims["iat"])
    assert exchange_error(sts, subject_token) == (
        "invalid_grant",
        f"ID Token issued at {issued} is stale to sign-in.",
    )


def test_exchange_hs256_token_rejected(
    sts: EmulatorProcess, discovery: DiscoveryServer
) -> None:
    subject_token = jwt.encode(
        make_claims(discovery.issuer),
        "secret-" * 6,
        algorithm="HS256",
        headers={"kid": "k"},
    )
    assert exchange_error(sts, subject_token) == (
        "invalid_grant",
        "The ID Token must be signed with RS256 or ES256.",
    )


def test_exchange_token_without_kid_rejected(
    sts: EmulatorProcess, discovery: DiscoveryServer, local_keys: LocalSigner
) -> None:
    subject_token = local_keys.sign(make_claims(discovery.issuer), kid=None)
    assert exchange_error(sts, subject_token) == (
        "invalid_grant",
        "The ID Token header must contain a kid.",
    )


def test_exchange_same_kid_other_key_bad_signature(
    sts: EmulatorProcess, discovery: DiscoveryServer, local_keys: LocalSigner
) -> None:
    subject_token = local_keys.sign(
        make_claims(discovery.issuer), key=local_keys.other_rsa_key
    )
    assert exchange_error(sts, subject_token) == (
        "invalid_grant",
        "Unable to verify the ID Token signature.",
    )


def test_exchange_es256_token_for_rsa_kid_rejected(
    sts: EmulatorProcess, discovery: DiscoveryServer, local_keys: LocalSigner
) -> None:
    subject_token = local_keys.sign(
        make_claims(discovery.issuer),
        kid="local-rsa",
        key=local_keys.ec_key,
        algorithm="ES256",
    )
    assert exchange_error(sts, subject_token) == (
        "invalid_grant",
        "Error connecting to the given credential's issuer.",
    )


def test_exchange_unknown_kid_refetches_once(
    iam: EmulatorProcess,
    sts: EmulatorProcess,
    discovery: DiscoveryServer,
    local_signer: LocalSigner,
) -> None:
    exchange(sts, sign_with_iam(iam, make_claims(discovery.issuer)))
    subject_token = local_signer.sign(make_claims(discovery.issuer), kid="unknown-kid")
    assert exchange_error(sts, subject_token) == (
        "invalid_grant",
        "Error connecting to the given credential's issuer.",
    )
    assert discovery.hits["/.well-known/openid-configuration"] == 2
    assert sts.stats()["issuer_fetches"] == {"discovery": 2, "jwks": 2}


def test_exchange_discovery_issuer_mismatch_rejected(
    iam: EmulatorProcess, sts: EmulatorProcess, discovery: DiscoveryServer
) -> None:
    discovery.document_issuer = "https://127.0.0.1:1"
    subject_token = sign_with_iam(iam, make_claims(discovery.issuer))
    assert exchange_error(sts, subject_token) == (
        "invalid_grant",
        "Error connecting to the given credential's issuer.",
    )
    assert iam.stats()["requests"].get("jwks") is None


def test_exchange_non_loopback_jwks_uri_not_fetched(
    iam: EmulatorProcess, sts: EmulatorProcess, discovery: DiscoveryServer
) -> None:
    discovery.jwks_uri = "https://www.googleapis.com/service_accounts/v1/metadata/jwk/x"
    subject_token = sign_with_iam(iam, make_claims(discovery.issuer))
    assert exchange_error(sts, subject_token)[1] == (
        "Error connecting to the given credential's issuer."
    )
    assert sts.stats()["issuer_fetches"] == {"discovery": 1}


@pytest.mark.parametrize("subject", [None, "", 42])
def test_exchange_token_without_sub_rejected(
    iam: EmulatorProcess,
    sts: EmulatorProcess,
    discovery: DiscoveryServer,
    subject: object,
) -> None:
    drop = ("sub",) if subject is None else ()
    claims = make_claims(discovery.issuer, drop=drop)
    if subject is not None:
        claims["sub"] = subject
    assert exchange_error(sts, sign_with_iam(iam, claims)) == (
        "invalid_grant",
        "The ID Token must contain a sub claim.",
    )


# STS: attribute mapping --------------------------------------------------------


def test_exchange_without_mapped_subject_rejected(
    iam: EmulatorProcess, sts: EmulatorProcess, discovery: DiscoveryServer
) -> None:
    subject_token = sign_with_iam(
        iam, make_claims(discovery.issuer, drop=("client_id",))
    )
    assert exchange_error(sts, subject_token) == (
        "invalid_request",
        "The mapped attribute google.subject is missing or empty.",
    )


@pytest.mark.parametrize(("length", "accepted"), [(127, True), (128, False)])
def test_exchange_subject_size_limit(
    iam: EmulatorProcess,
    sts: EmulatorProcess,
    discovery: DiscoveryServer,
    length: int,
    accepted: bool,
) -> None:
    subject_token = sign_with_iam(
        iam, make_claims(discovery.issuer, client_id="c" * length)
    )
    if accepted:
        assert exchange(sts, subject_token)["access_token"]
    else:
        assert exchange_error(sts, subject_token) == (
            "invalid_request",
            SUBJECT_TOO_LONG_MESSAGE,
        )


def test_exchange_rejected_subject_unauthorized(
    iam: EmulatorProcess, sts: EmulatorProcess, discovery: DiscoveryServer
) -> None:
    subject_token = sign_with_iam(
        iam, make_claims(discovery.issuer, client_id=REJECTED_SUBJECT)
    )
    assert exchange_error(sts, subject_token) == (
        "unauthorized_client",
        "The given credential is rejected by the attribute condition.",
    )
    assert sts.stats()["exchanges"] == {"unauthorized_client": 1}


def test_attribute_mapping_default_maps_client_fields() -> None:
    mapping = parse_attribute_mapping(DEFAULT_MAPPING)
    claims = make_claims("https://issuer")
    assert mapping.apply(claims) == {
        "google.subject": "client-1",
        "attribute.client_x5_spiffe": "spiffe://demo/client-1",
        "attribute.client_x5_dnssan": "client-1.example.com",
        "attribute.client_x5_urisan": "https://client-1.example.com",
        "attribute.client_x5_sha256": "om8vGt3r6eTx5TI1kCeNKRJYZTUreIbHGu-Gu8FN8To",
        "attribute.client_x5_serial": "00:ad:3e:0e",
    }


def test_attribute_mapping_missing_claim_maps_nothing() -> None:
    mapping = parse_attribute_mapping(
        "google.subject=assertion.sub,attribute.a=assertion.x.y"
    )
    assert mapping.apply({"sub": "s", "x": None}) == {"google.subject": "s"}


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("attribute.a=assertion.sub", "must map google.subject"),
        ("google.subject=assertion.sub,google.subject=assertion.a", "twice"),
        (
            "google.subject=assertion.sub,Attribute.A=assertion.a",
            "invalid attribute mapping target",
        ),
        ("google.subject=assertion.sub.extract('{x}')", "unsupported expression"),
        ("google.subject='literal'", "unsupported expression"),
        ("google.subject=assertion", "unsupported expression"),
        ("google.subject", "invalid attribute mapping entry"),
        ("google.subject=assertion." + "a" * 2048, "exceeds 2048 characters"),
        (
            "google.subject=assertion.sub,"
            + ",".join(f"attribute.a{i}=assertion.a" for i in range(51)),
            "the maximum is 50",
        ),
    ],
)
def test_attribute_mapping_invalid_spec_rejected(spec: str, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        parse_attribute_mapping(spec)


@pytest.mark.parametrize(
    ("claims", "message"),
    [
        ({"sub": 5}, "must be a string or a list of strings"),
        ({"sub": ["a"]}, "google.subject must be a string"),
        ({"sub": ""}, "missing or empty"),
        ({"sub": "s", "big": "x" * 9000}, "exceed the 8 KB limit"),
    ],
)
def test_attribute_mapping_bad_values_rejected(
    claims: dict[str, Any], message: str
) -> None:
    mapping = parse_attribute_mapping(
        "google.subject=assertion.sub,attribute.big=assertion.big"
    )
    with pytest.raises(AttributeMappingError, match=re.escape(message)):
        mapping.apply(claims)


def test_federated_key_created_once_under_race(tmp_path: Path) -> None:
    keys: list[bytes] = []
    threads = [
        threading.Thread(
            target=lambda: keys.append(federated_tokens.load_key(tmp_path))
        )
        for _ in range(8)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=10)
    assert len(keys) == 8
    assert len(set(keys)) == 1
    assert (tmp_path / federated_tokens.KEY_FILE_NAME).stat().st_mode & 0o777 == 0o600
    assert [path.name for path in tmp_path.iterdir()] == [
        federated_tokens.KEY_FILE_NAME
    ]


def test_state_file_keeps_first_content(tmp_path: Path) -> None:
    path = tmp_path / "nested" / "value"
    assert state_files.read_or_create(path, lambda: b"first") == b"first"
    assert state_files.read_or_create(path, lambda: b"second") == b"first"


# GCE metadata stand-in ---------------------------------------------------------


def _metadata_get(
    metadata: EmulatorProcess, path: str, flavor: str | None = "Google", **headers: str
) -> requests.Response:
    if flavor is not None:
        headers["Metadata-Flavor"] = flavor
    return requests.get(f"{metadata.url}{path}", headers=headers, timeout=5)


def test_metadata_root_answers_ping(metadata: EmulatorProcess) -> None:
    response = _metadata_get(metadata, "/", flavor=None)
    assert response.status_code == 200
    assert response.headers["Metadata-Flavor"] == "Google"
    assert metadata.stats()["requests"] == {"ping": 1}


@pytest.mark.parametrize("flavor", [None, "google", "Googl"])
def test_metadata_requires_flavor_header(
    metadata: EmulatorProcess, flavor: str | None
) -> None:
    response = _metadata_get(
        metadata, "/computeMetadata/v1/project/project-id", flavor=flavor
    )
    assert response.status_code == 403
    assert response.headers["Metadata-Flavor"] == "Google"
    assert "Missing Metadata-Flavor:Google header." in response.text


def test_metadata_rejects_forwarded_requests(metadata: EmulatorProcess) -> None:
    response = _metadata_get(
        metadata,
        "/computeMetadata/v1/project/project-id",
        **{"X-Forwarded-For": "10.0.0.1"},
    )
    assert response.status_code == 403


def test_metadata_serves_account_and_project(metadata: EmulatorProcess) -> None:
    base = "/computeMetadata/v1/instance/service-accounts/default/"
    info = _metadata_get(metadata, f"{base}?recursive=true")
    assert info.headers["Content-Type"].startswith("application/json")
    assert info.json() == {
        "aliases": ["default"],
        "email": METADATA_EMAIL,
        "scopes": [CLOUD_PLATFORM],
    }
    assert _metadata_get(metadata, f"{base}email").text == METADATA_EMAIL
    assert (
        _metadata_get(metadata, "/computeMetadata/v1/project/project-id").text
        == "demo-project"
    )
    token = _metadata_get(metadata, f"{base}token?scopes={CLOUD_PLATFORM}").json()
    assert token["access_token"].startswith("ya29.metadata-emulator.")
    assert token["expires_in"] == 3599
    assert token["token_type"] == "Bearer"
    by_email = _metadata_get(
        metadata,
        f"/computeMetadata/v1/instance/service-accounts/{METADATA_EMAIL}/email",
    )
    assert by_email.text == METADATA_EMAIL


def test_metadata_unknown_path_not_found(metadata: EmulatorProcess) -> None:
    response = _metadata_get(metadata, "/computeMetadata/v1/instance/hostname")
    assert response.status_code == 404
    assert response.headers["Metadata-Flavor"] == "Google"


def test_metadata_feeds_google_auth_default(
    metadata: EmulatorProcess, tmp_path: Path
) -> None:
    script = (
        "import json, google.auth, google.auth.transport.requests\n"
        "credentials, project = google.auth.default()\n"
        "credentials.refresh(google.auth.transport.requests.Request())\n"
        "print(json.dumps({'email': credentials.service_account_email,\n"
        "                  'project': project,\n"
        "                  'prefix': credentials.token.split('.')[1]}))\n"
    )
    environment = safe_environment(
        {
            "GCE_METADATA_HOST": f"127.0.0.1:{metadata.port}",
            "GCE_METADATA_IP": f"127.0.0.1:{metadata.port}",
            "HOME": str(tmp_path),
            "CLOUDSDK_CONFIG": str(tmp_path / "gcloud"),
        }
    )
    del environment["NO_GCE_CHECK"]
    completed = subprocess.run(  # noqa: S603 - fixed interpreter and script
        [sys.executable, "-c", script],
        cwd=REPO_ROOT,
        env=environment,
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr.decode()
    assert json.loads(completed.stdout) == {
        "email": METADATA_EMAIL,
        "project": "demo-project",
        "prefix": "metadata-emulator",
    }
    requested = metadata.stats()["requests"]
    assert requested["ping"] >= 1
    assert requested["token"] == 1


# Logs --------------------------------------------------------------------------


def test_logs_hold_no_tokens_or_jwts(
    iam: EmulatorProcess,
    sts: EmulatorProcess,
    discovery: DiscoveryServer,
    metadata: EmulatorProcess,
) -> None:
    credentials = bearer_credentials(federated_token(iam, sts, discovery))
    iam_client(iam, credentials).generate_access_token(
        name=SA_NAME, scope=[CLOUD_PLATFORM]
    )
    _metadata_get(
        metadata, "/computeMetadata/v1/instance/service-accounts/default/token"
    )
    for process in (iam, sts, metadata):
        text = process.log_text()
        assert "ya29." not in text
        assert "eyJ" not in text
        assert "PRIVATE KEY" not in text
        assert " -> 200 " in text

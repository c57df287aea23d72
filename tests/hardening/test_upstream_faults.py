"""Each Google API failing in each way, against the local stack.

The emulators inject latency, 429, 500, 503, connection resets, truncated
JSON and hangs into signJwt, the STS token exchange and generateAccessToken.
For every pair the token service must respond within its deadline with the
documented OAuth error, try the upstream no more often than its retry
policy allows, call no later upstream, and issue no token. Latency below the
attempt timeout must not fail the request. The stack runs with a 1 s attempt
timeout, 1 retry and a 3 s deadline (``UPSTREAM_ENV``).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import requests

from deploy.local.stack import DEMO_WORKLOAD_ACCOUNT, LocalStack, running_stack
from tests.e2e.conftest import UPSTREAM_ENV, stack_config
from tests.log_hygiene import ACCESS_TOKEN_PATTERN, JWT_PATTERN

pytestmark = pytest.mark.e2e

SCOPE = "https://www.googleapis.com/auth/cloud-platform"
MAX_ATTEMPTS = int(UPSTREAM_ENV["UPSTREAM_MAX_RETRIES"]) + 1
# The 3 s deadline, plus TLS through the gateway and a loaded machine. A
# bound that proves the deadline holds, not a timing measurement.
MAX_RESPONSE_SECONDS = 6.0
# Below the 1 s attempt timeout.
TOLERATED_LATENCY_MS = 300


@dataclass(frozen=True)
class Upstream:
    """One upstream API method: its emulator, and a request that reaches it."""

    emulator: str
    method: str
    form: dict[str, str] = field(default_factory=dict)
    # Emulator methods that the service calls after this one.
    later: tuple[tuple[str, str], ...] = ()


UPSTREAMS = {
    "signJwt": Upstream(
        "iam",
        "signJwt",
        later=(("sts", "token"), ("iam", "generateAccessToken")),
    ),
    "STS token": Upstream(
        "sts",
        "token",
        {"scope": SCOPE, "service_account": DEMO_WORKLOAD_ACCOUNT},
        later=(("iam", "generateAccessToken"),),
    ),
    "generateAccessToken": Upstream(
        "iam",
        "generateAccessToken",
        {"scope": SCOPE, "service_account": DEMO_WORKLOAD_ACCOUNT},
    ),
}

FAILURES: dict[str, dict[str, Any]] = {
    "429": {"fault": "status", "status": 429},
    "500": {"fault": "status", "status": 500},
    "503": {"fault": "status", "status": 503},
    "connection reset": {"fault": "reset"},
    "malformed JSON": {"fault": "malformed"},
    "hang": {"fault": "hang"},
}


@pytest.fixture(scope="module")
def fault_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    """An IAM-signing stack for this module, logging under the base temp dir."""
    state_dir = tmp_path_factory.mktemp("fault-stack-state")
    log_dir = tmp_path_factory.mktemp("fault-stack-logs")
    with running_stack(stack_config(state_dir, log_dir, signing="iam")) as stack:
        yield stack


def emulator_url(stack: LocalStack, emulator: str) -> str:
    """Return the base URL of the ``iam`` or ``sts`` emulator."""
    if emulator == "iam":
        return stack.config.iam_url
    return f"http://127.0.0.1:{stack.config.sts_port}"


@pytest.fixture()
def clean_emulators(fault_stack: LocalStack) -> Iterator[LocalStack]:
    """Clear faults and counters before and after each test, releasing hangs."""
    for emulator in ("iam", "sts"):
        url = emulator_url(fault_stack, emulator) + "/__emulator/reset"
        requests.post(url, timeout=5).raise_for_status()
    yield fault_stack
    for emulator in ("iam", "sts"):
        url = emulator_url(fault_stack, emulator) + "/__emulator/reset"
        requests.post(url, timeout=5).raise_for_status()


def inject(stack: LocalStack, upstream: Upstream, fault: dict[str, Any]) -> None:
    """Apply ``fault`` to every call of the upstream until the reset."""
    url = emulator_url(stack, upstream.emulator) + "/__emulator/faults"
    response = requests.post(url, json={"method": upstream.method, **fault}, timeout=5)
    response.raise_for_status()


def calls(stack: LocalStack, emulator: str, method: str) -> int:
    """Return how many calls of ``method`` the emulator received."""
    url = emulator_url(stack, emulator) + "/__emulator/stats"
    stats = requests.get(url, timeout=5).json()
    count: int = stats["requests"].get(method, 0)
    return count


def request_token(stack: LocalStack, form: dict[str, str]) -> requests.Response:
    """POST /token through the gateway with the demo client certificate."""
    pki = stack.config.pki_dir
    return requests.post(
        stack.config.gateway_url + "/token",
        data={"grant_type": "client_credentials", **form},
        cert=(str(pki / "client-cert.pem"), str(pki / "client-key.pem")),
        verify=str(pki / "ca.pem"),
        timeout=30,
    )


def timed_request(
    stack: LocalStack, form: dict[str, str]
) -> tuple[requests.Response, float]:
    started = time.monotonic()
    response = request_token(stack, form)
    return response, time.monotonic() - started


def assert_no_token(response: requests.Response) -> None:
    body = response.json()
    assert "id_token" not in body
    assert "access_token" not in body
    assert not JWT_PATTERN.search(response.text)
    assert not ACCESS_TOKEN_PATTERN.search(response.text)


@pytest.mark.parametrize("failure", sorted(FAILURES))
@pytest.mark.parametrize("upstream_name", sorted(UPSTREAMS))
def test_upstream_failure_temporarily_unavailable(
    clean_emulators: LocalStack, upstream_name: str, failure: str
) -> None:
    stack = clean_emulators
    upstream = UPSTREAMS[upstream_name]
    inject(stack, upstream, FAILURES[failure])

    response, elapsed = timed_request(stack, upstream.form)

    assert response.status_code == 503, response.text
    assert response.headers["Content-Type"] == "application/json"
    assert response.headers["Cache-Control"] == "no-store"
    assert response.json()["error"] == "temporarily_unavailable"
    assert response.headers["Retry-After"] == "1"
    assert_no_token(response)
    assert elapsed < MAX_RESPONSE_SECONDS
    attempts = calls(stack, upstream.emulator, upstream.method)
    assert 1 <= attempts <= MAX_ATTEMPTS
    for emulator, method in upstream.later:
        assert calls(stack, emulator, method) == 0, method


@pytest.mark.parametrize("upstream_name", sorted(UPSTREAMS))
def test_upstream_latency_below_timeout_succeeds(
    clean_emulators: LocalStack, upstream_name: str
) -> None:
    stack = clean_emulators
    upstream = UPSTREAMS[upstream_name]
    inject(stack, upstream, {"fault": "latency", "latency_ms": TOLERATED_LATENCY_MS})

    response, elapsed = timed_request(stack, upstream.form)

    assert response.status_code == 200, response.text
    assert response.headers["Cache-Control"] == "no-store"
    body = response.json()
    assert JWT_PATTERN.fullmatch(body["id_token"])
    if upstream.form:
        assert body["access_token"].startswith("ya29.iam-emulator.")
    assert elapsed < MAX_RESPONSE_SECONDS
    assert calls(stack, upstream.emulator, upstream.method) == 1


@pytest.mark.parametrize("upstream_name", sorted(UPSTREAMS))
def test_transient_failure_retried_once(
    clean_emulators: LocalStack, upstream_name: str
) -> None:
    # One 503, then the emulator responds: the retry turns it into a success.
    stack = clean_emulators
    upstream = UPSTREAMS[upstream_name]
    inject(stack, upstream, {"fault": "status", "status": 503, "times": 1})

    response = request_token(stack, upstream.form)

    assert response.status_code == 200, response.text
    assert calls(stack, upstream.emulator, upstream.method) == 2

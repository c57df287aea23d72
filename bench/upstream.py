"""IAM mode and ``scope`` requests against the emulators at a fixed latency.

The token function signs through the IAM Credentials emulator's signJwt
and, for ``scope``, exchanges the ID token at the STS emulator. Each run
also counts the TCP connections the emulators accepted, which shows whether
the function reuses its upstream connections. The same calls made straight
to the emulators give the round-trip time that the function cannot avoid.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import jwt
import requests

from bench import servers, workload
from bench.load import run_wrk, write_request_file
from bench.measure import Sample, measure
from bench.servers import ProcessTree, free_port
from deploy.local.stack import (
    PROVIDER_RESOURCE,
    SERVICE_ACCOUNT,
    LocalStack,
    StackConfig,
    running_stack,
)
from shared.sts_exchange import ACCESS_TOKEN_TYPE, ID_TOKEN_TYPE, TOKEN_EXCHANGE_GRANT

EMULATOR_LATENCY_MS = 20
WARM_UP_SECONDS = 2.0
_CONTROL_TIMEOUT_SECONDS = 5.0

# Run names: the function's requests and the same upstream calls made directly.
SIGN_DIRECT = "signJwt direct"
TOKEN_IAM = "token (IAM signing)"
STS_DIRECT = "STS direct"
SCOPE = "token with scope"
# Floors without upstream calls: the framework alone, and local signing.
BARE = "bare function"
TOKEN_LOCAL = "token (local key)"
RUN_NAMES = (BARE, TOKEN_LOCAL, SIGN_DIRECT, TOKEN_IAM, STS_DIRECT, SCOPE)


@dataclass(frozen=True)
class UpstreamSample:
    """One run, with the emulators' accepted connections and API calls."""

    sample: Sample
    iam_connections: int
    iam_calls: int
    sts_connections: int
    sts_calls: int


@dataclass
class UpstreamResults:
    """Every run of the suite, per run name and concurrency."""

    latency_ms: int
    concurrencies: tuple[int, ...]
    samples: dict[tuple[str, int], list[UpstreamSample]] = field(default_factory=dict)
    token_rss_after_runs: list[int] = field(default_factory=list)


def iam_stack_config(state_dir: Path, log_dir: Path) -> StackConfig:
    """Return a production-shaped IAM-mode stack on free ports."""
    config = StackConfig(
        signing="iam",
        gateway_port=free_port(),
        token_port=free_port(),
        metadata_port=free_port(),
        iam_port=free_port(),
        sts_port=free_port(),
        state_dir=state_dir,
        log_dir=log_dir,
        workers=2,
        threads=8,
    )
    # The issuer must be the gateway's URL, which the STS emulator trusts,
    # also when wrk calls the function directly with another Host header.
    config.extra_env["TOKEN_ISSUER"] = config.issuer
    return config


@contextmanager
def emulator_stack(config: StackConfig, latency_ms: int) -> Iterator[LocalStack]:
    """Run the stack with a fixed latency on every emulator API call."""
    with running_stack(config) as stack:
        for base in _emulator_urls(config):
            response = requests.post(
                base + "/__emulator/faults",
                json={"method": "*", "fault": "latency", "latency_ms": latency_ms},
                timeout=_CONTROL_TIMEOUT_SECONDS,
            )
            response.raise_for_status()
        yield stack


def run_upstream_suite(
    stack: LocalStack,
    floors: Mapping[str, ProcessTree],
    work_dir: Path,
    *,
    repetitions: int,
    duration_seconds: float,
    latency_ms: int,
    concurrencies: Sequence[int] = (1, 16),
) -> UpstreamResults:
    """Measure IAM-signed and ``scope`` requests and their direct baselines.

    ``floors`` contains the already started bare function and local-key token
    function, keyed ``BARE`` and ``TOKEN_LOCAL``, measured in the same
    repetitions as the latency floor without upstream calls.
    """
    config = stack.config
    pki_dir = config.pki_dir
    token_tree = ProcessTree(stack.pid_of("token"), config.token_port)
    files = {
        TOKEN_IAM: workload.write_token_request(
            work_dir / "token-iam.request", pki_dir
        ),
        SCOPE: workload.write_token_request(
            work_dir / "scope.request", pki_dir, workload.CLOUD_PLATFORM_SCOPE
        ),
    }
    files[BARE] = files[TOKEN_LOCAL] = files[TOKEN_IAM]
    id_token = _issue_id_token(config)
    files[SIGN_DIRECT] = _write_sign_jwt_request(
        work_dir / "sign-jwt.request", id_token
    )
    files[STS_DIRECT] = _write_sts_request(work_dir / "sts.request", id_token)
    urls = {
        SIGN_DIRECT: config.iam_url,
        TOKEN_IAM: token_tree.url,
        STS_DIRECT: f"http://127.0.0.1:{config.sts_port}",
        SCOPE: token_tree.url,
        BARE: floors[BARE].url,
        TOKEN_LOCAL: floors[TOKEN_LOCAL].url,
    }
    trees = {
        SIGN_DIRECT: ProcessTree(stack.pid_of("iam"), config.iam_port),
        TOKEN_IAM: token_tree,
        STS_DIRECT: ProcessTree(stack.pid_of("sts"), config.sts_port),
        SCOPE: token_tree,
        BARE: floors[BARE],
        TOKEN_LOCAL: floors[TOKEN_LOCAL],
    }
    for name in (BARE, TOKEN_LOCAL, TOKEN_IAM, SCOPE):
        run_wrk(
            urls[name], files[name], connections=4, duration_seconds=WARM_UP_SECONDS
        )

    results = UpstreamResults(latency_ms, tuple(concurrencies))
    stats_session = requests.Session()
    _emulator_stats(stats_session, config)
    for repetition in range(repetitions):
        shift = repetition % len(RUN_NAMES)
        order = RUN_NAMES[shift:] + RUN_NAMES[:shift]
        for connections in concurrencies:
            for name in order:
                _check_stack(stack)
                before = _emulator_stats(stats_session, config)
                sample = measure(
                    trees[name],
                    files[name],
                    connections=connections,
                    duration_seconds=duration_seconds,
                    url=urls[name],
                )
                after = _emulator_stats(stats_session, config)
                results.samples.setdefault((name, connections), []).append(
                    _with_stats(sample, before, after)
                )
    stats_session.close()
    results.token_rss_after_runs = token_tree.worker_rss_bytes()
    return results


def _check_stack(stack: LocalStack) -> None:
    exited = stack.exited()
    if exited:
        raise servers.ServerError(f"stack processes exited: {', '.join(exited)}")


def _emulator_urls(config: StackConfig) -> tuple[str, str]:
    return config.iam_url, f"http://127.0.0.1:{config.sts_port}"


def _emulator_stats(
    session: requests.Session, config: StackConfig
) -> tuple[dict[str, Any], dict[str, Any]]:
    # One kept-alive session, so the stats calls add no connections to a run.
    iam_url, sts_url = _emulator_urls(config)
    iam = session.get(iam_url + "/__emulator/stats", timeout=_CONTROL_TIMEOUT_SECONDS)
    sts = session.get(sts_url + "/__emulator/stats", timeout=_CONTROL_TIMEOUT_SECONDS)
    return iam.json(), sts.json()


def _with_stats(
    sample: Sample,
    before: tuple[dict[str, Any], dict[str, Any]],
    after: tuple[dict[str, Any], dict[str, Any]],
) -> UpstreamSample:
    def delta(index: int, key: str) -> int:
        return int(after[index][key]) - int(before[index][key])

    def calls(index: int) -> int:
        counts_after: dict[str, int] = after[index]["requests"]
        counts_before: dict[str, int] = before[index]["requests"]
        return sum(counts_after.values()) - sum(counts_before.values())

    return UpstreamSample(
        sample=sample,
        iam_connections=delta(0, "connections_accepted"),
        iam_calls=calls(0),
        sts_connections=delta(1, "connections_accepted"),
        sts_calls=calls(1),
    )


def _issue_id_token(config: StackConfig) -> str:
    """Return an ID token from the function, signed by the IAM emulator."""
    deadline = time.monotonic() + 30
    answer = None
    while time.monotonic() < deadline:
        answer = servers.http_request(
            config.token_port,
            "POST",
            "/token",
            workload.load_balancer_headers(config.pki_dir),
            workload.token_body(),
        )
        if answer is not None and answer[0] == 200:
            return str(json.loads(answer[1])["id_token"])
        time.sleep(0.2)
    raise servers.ServerError(f"the IAM-mode function issued no token: {answer}")


def _write_sign_jwt_request(path: Path, id_token: str) -> Path:
    """Write the signJwt call the function makes, with a current payload."""
    claims = jwt.decode(id_token, options={"verify_signature": False})
    now = int(time.time())
    claims["exp"] = now + (int(claims["exp"]) - int(claims["iat"]))
    claims["iat"] = now
    body = json.dumps({"payload": json.dumps(claims, separators=(",", ":"))})
    target = f"/v1/projects/-/serviceAccounts/{SERVICE_ACCOUNT}:signJwt"
    headers = {"Content-Type": "application/json"}
    return write_request_file(path, "POST", target, headers, body.encode())


def _write_sts_request(path: Path, id_token: str) -> Path:
    """Write the token exchange the function makes for ``scope``."""
    body = urlencode(
        {
            "grant_type": TOKEN_EXCHANGE_GRANT,
            "audience": PROVIDER_RESOURCE,
            "scope": workload.CLOUD_PLATFORM_SCOPE,
            "requested_token_type": ACCESS_TOKEN_TYPE,
            "subject_token": id_token,
            "subject_token_type": ID_TOKEN_TYPE,
        }
    ).encode()
    headers = {"Content-Type": workload.FORM_CONTENT_TYPE}
    return write_request_file(path, "POST", "/v1/token", headers, body)

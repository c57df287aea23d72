"""Local-key throughput: the token function against its baselines and the peer.

Every repetition measures each target at each concurrency, in a rotating
order, so that ratios compare runs made seconds apart on a noisy machine.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jwt

from bench import servers, upstream, workload
from bench.load import run_wrk
from bench.measure import Sample, measure
from bench.servers import ProcessTree, ServerProcess
from bench.sign_rate import SignRate, measure_sign_rate
from deploy.local.pki import DEMO_URI
from deploy.local.stack import StackConfig, function_environment

# functions-framework's server settings of the deployment (deploy/config.example.env).
PRODUCTION_WORKERS = 2
PRODUCTION_THREADS = 8
PEER_WORKERS = 2
WARM_UP_SECONDS = 2.0
SIGN_RATE_SECONDS = 1.0
MATRIX_CONFIGS: tuple[tuple[int, int], ...] = ((1, 4), (2, 1), (2, 4), (2, 8), (4, 4))


@dataclass
class TargetRun:
    """Samples of one server at each concurrency, one per repetition."""

    name: str
    samples: dict[int, list[Sample]] = field(default_factory=dict)
    rss_after_warm_up: list[int] = field(default_factory=list)
    rss_after_runs: list[int] = field(default_factory=list)

    def add(self, connections: int, sample: Sample) -> None:
        """Record one repetition's sample at ``connections``."""
        self.samples.setdefault(connections, []).append(sample)


@dataclass
class LocalKeyResults:
    """Everything the local-key suite measured."""

    concurrencies: tuple[int, ...]
    targets: dict[str, TargetRun]
    sign_rates: list[SignRate]
    peer_skipped: str | None = None


@dataclass
class MatrixResults:
    """The token function under several WORKERS x THREADS settings."""

    concurrencies: tuple[int, ...]
    configs: tuple[tuple[int, int], ...]
    targets: dict[tuple[int, int], TargetRun]


def local_key_environment(state_dir: Path) -> dict[str, str]:
    """Return the token function's environment when it signs with a local key."""
    config = StackConfig(signing="local", state_dir=state_dir)
    env = function_environment(config)
    env["TOKEN_ISSUER"] = config.gateway_url
    return env


def issue_one_token(server: ServerProcess, pki_dir: Path) -> dict[str, Any]:
    """Request one ID token and return its claims, to sign the same payload."""
    answer = servers.http_request(
        server.tree.port,
        "POST",
        "/token",
        workload.load_balancer_headers(pki_dir),
        workload.token_body(),
    )
    if answer is None or answer[0] != 200:
        raise servers.ServerError(f"{server.name} did not issue a token: {answer}")
    id_token = json.loads(answer[1])["id_token"]
    claims: dict[str, Any] = jwt.decode(id_token, options={"verify_signature": False})
    return claims


def run_local_key_suite(
    state_dir: Path,
    work_dir: Path,
    *,
    repetitions: int,
    duration_seconds: float,
    concurrencies: Sequence[int] = (16, 64),
) -> LocalKeyResults:
    """Measure bare function, token function and peer at each concurrency."""
    pki_dir = state_dir / "pki"
    env = local_key_environment(state_dir)
    log_dir = work_dir / "logs"
    work_dir.mkdir(parents=True, exist_ok=True)
    request_file = workload.write_token_request(work_dir / "token.request", pki_dir)
    peer_file = workload.write_peer_request(work_dir / "peer.request", pki_dir)

    started: dict[str, ServerProcess] = {}
    request_files = {"bare": request_file, "token": request_file, "peer": peer_file}
    peer_skipped = servers.peer_available()
    try:
        started["bare"] = servers.start_function(
            "bare",
            env,
            log_dir,
            source=servers.BARE_FUNCTION_SOURCE,
            workers=PRODUCTION_WORKERS,
            threads=PRODUCTION_THREADS,
        )
        started["token"] = servers.start_function(
            "token-local",
            env,
            log_dir,
            workers=PRODUCTION_WORKERS,
            threads=PRODUCTION_THREADS,
        )
        if peer_skipped is None:
            started["peer"] = servers.start_peer(
                log_dir,
                pki_dir / "signing-key.pem",
                workload.PEER_CLIENT_ID,
                DEMO_URI,
                PEER_WORKERS,
            )
        claims = issue_one_token(started["token"], pki_dir)
        runs = {name: TargetRun(name) for name in started}
        for name, server in started.items():
            _warm_up(server, request_files[name])
            runs[name].rss_after_warm_up = server.tree.worker_rss_bytes()

        sign_rates: list[SignRate] = []
        names = list(started)
        for repetition in range(repetitions):
            sign_rates.append(
                measure_sign_rate(
                    pki_dir / "signing-key.pem", claims, SIGN_RATE_SECONDS
                )
            )
            order = names[repetition % len(names) :] + names[: repetition % len(names)]
            for connections in concurrencies:
                for name in order:
                    server = started[name]
                    server.check_running()
                    sample = measure(
                        server.tree,
                        request_files[name],
                        connections=connections,
                        duration_seconds=duration_seconds,
                    )
                    runs[name].add(connections, sample)
        for name, server in started.items():
            runs[name].rss_after_runs = server.tree.worker_rss_bytes()
    finally:
        for server in started.values():
            server.stop()
    return LocalKeyResults(tuple(concurrencies), runs, sign_rates, peer_skipped)


def run_matrix_suite(
    state_dir: Path,
    work_dir: Path,
    *,
    repetitions: int,
    duration_seconds: float,
    concurrencies: Sequence[int] = (16, 64),
    configs: Sequence[tuple[int, int]] = MATRIX_CONFIGS,
) -> MatrixResults:
    """Measure the token function under each WORKERS x THREADS setting."""
    pki_dir = state_dir / "pki"
    env = local_key_environment(state_dir)
    log_dir = work_dir / "logs"
    work_dir.mkdir(parents=True, exist_ok=True)
    request_file = workload.write_token_request(work_dir / "token.request", pki_dir)
    started: dict[tuple[int, int], ServerProcess] = {}
    try:
        for workers, threads in configs:
            started[(workers, threads)] = servers.start_function(
                f"token-{workers}x{threads}",
                env,
                log_dir,
                workers=workers,
                threads=threads,
            )
        runs = {config: TargetRun(f"{config[0]}x{config[1]}") for config in started}
        for config, server in started.items():
            _warm_up(server, request_file)
            runs[config].rss_after_warm_up = server.tree.worker_rss_bytes()
        order = list(started)
        for repetition in range(repetitions):
            shift = repetition % len(order)
            for connections in concurrencies:
                for config in order[shift:] + order[:shift]:
                    started[config].check_running()
                    sample = measure(
                        started[config].tree,
                        request_file,
                        connections=connections,
                        duration_seconds=duration_seconds,
                    )
                    runs[config].add(connections, sample)
        for config, server in started.items():
            runs[config].rss_after_runs = server.tree.worker_rss_bytes()
    finally:
        for server in started.values():
            server.stop()
    return MatrixResults(tuple(concurrencies), tuple(configs), runs)


@contextmanager
def floor_servers(state_dir: Path, log_dir: Path) -> Iterator[dict[str, ProcessTree]]:
    """Run the bare and local-key functions, keyed as the IAM suite names them."""
    env = local_key_environment(state_dir)
    started: list[ServerProcess] = []
    try:
        started.append(
            servers.start_function(
                "floor-bare",
                env,
                log_dir,
                source=servers.BARE_FUNCTION_SOURCE,
                workers=PRODUCTION_WORKERS,
                threads=PRODUCTION_THREADS,
            )
        )
        started.append(
            servers.start_function(
                "floor-token-local",
                env,
                log_dir,
                workers=PRODUCTION_WORKERS,
                threads=PRODUCTION_THREADS,
            )
        )
        yield {upstream.BARE: started[0].tree, upstream.TOKEN_LOCAL: started[1].tree}
    finally:
        for server in started:
            server.stop()


def _warm_up(server: ServerProcess, request_file: Path) -> None:
    run_wrk(
        server.url,
        request_file,
        connections=16,
        duration_seconds=WARM_UP_SECONDS,
    )

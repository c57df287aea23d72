"""``make soak``: hold the local stack under load and check errors and memory.

For each signing mode, a local key and then the IAM Credentials emulator, it
starts the local stack with the production server settings. Two phases
follow, each with ``--clients`` concurrent clients for ``--duration``
seconds: first through the mTLS gateway with the demo client certificate,
then straight to the token function with the load balancer's headers. One
request in four requests ``scope``, so the STS exchange is exercised too.
Every response must be a 200 with the expected tokens, and no token worker
may grow by more than ``--max-growth-mb``. Writes docs/soak.md and exits non-zero on any
error or excess growth. Traffic goes to 127.0.0.1 only.

    python -m bench.soak [--duration S] [--clients N] [--output PATH]
"""

from __future__ import annotations

import argparse
import concurrent.futures
import multiprocessing
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import requests

from bench import environment, upstream, workload
from bench.servers import PEER_DIR, REPO_ROOT, ProcessTree, keep_google_auth_offline
from deploy.local.stack import LocalStack

DEFAULT_OUTPUT = REPO_ROOT / "docs" / "soak.md"
WORK_DIR = REPO_ROOT / ".local" / "soak"
MODES = ("local", "iam")
PHASES = ("gateway", "direct")
SCOPE_EVERY = 4
WARM_UP_SECONDS = 5.0
CLIENT_PROCESSES = 4
REQUEST_TIMEOUT_SECONDS = 10.0
# Bounds every client loop in count as well as in time.
MAX_REQUESTS_PER_CLIENT = 1_000_000
_MB = 2**20
_MAX_ERROR_EXAMPLES = 5


@dataclass(frozen=True)
class ClientTarget:
    """The endpoint, headers and TLS settings of one phase's requests."""

    url: str
    headers: dict[str, str]
    cert: tuple[str, str] | None
    verify: str | bool


@dataclass
class PhaseResult:
    """Requests served, errors and latencies of one phase."""

    mode: str
    phase: str
    seconds: float
    latencies_ms: list[float] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)

    @property
    def error_count(self) -> int:
        """Failed requests, of any kind."""
        return sum(self.errors.values())

    def percentile(self, fraction: float) -> float:
        """Return a latency percentile in ms, nearest-rank."""
        if not self.latencies_ms:
            return 0.0
        ordered = sorted(self.latencies_ms)
        rank = max(0, min(len(ordered) - 1, round(fraction * len(ordered)) - 1))
        return ordered[rank]


@dataclass
class ModeResult:
    """The phases of one signing mode, and its token workers' memory."""

    mode: str
    phases: list[PhaseResult] = field(default_factory=list)
    rss_before_warm_up: dict[int, int] = field(default_factory=dict)
    rss_start: dict[int, int] = field(default_factory=dict)
    rss_end: dict[int, int] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)


# --- Clients (run in child processes) --------------------------------------------


def _client_loop(
    target: ClientTarget,
    deadline: float,
    offset: int,
    latencies: list[float],
    errors: Counter[str],
    lock: threading.Lock,
) -> None:
    session = requests.Session()
    session.trust_env = False
    plain = workload.token_body()
    scoped = workload.token_body(workload.CLOUD_PLATFORM_SCOPE)
    local_latencies: list[float] = []
    local_errors: Counter[str] = Counter()
    for number in range(MAX_REQUESTS_PER_CLIENT):
        if time.monotonic() >= deadline:
            break
        with_scope = (number + offset) % SCOPE_EVERY == 0
        started = time.perf_counter()
        problem = _send(session, target, scoped if with_scope else plain, with_scope)
        elapsed_ms = (time.perf_counter() - started) * 1000
        if problem is None:
            local_latencies.append(elapsed_ms)
        else:
            local_errors[problem] += 1
    session.close()
    with lock:
        latencies.extend(local_latencies)
        errors.update(local_errors)


def _send(
    session: requests.Session, target: ClientTarget, body: bytes, with_scope: bool
) -> str | None:
    """Send one request and return None on success, else the failure."""
    try:
        response = session.post(
            target.url,
            data=body,
            headers=target.headers,
            cert=target.cert,
            verify=target.verify,
            timeout=REQUEST_TIMEOUT_SECONDS,
        )
    except requests.RequestException as error:
        return f"{type(error).__name__}"
    if response.status_code != 200:
        return f"HTTP {response.status_code}: {response.text[:200]}"
    try:
        document = response.json()
    except ValueError:
        return "response is not JSON"
    expected = ("id_token", "access_token") if with_scope else ("id_token",)
    missing = [name for name in expected if not document.get(name)]
    if missing:
        return f"response lacks {', '.join(missing)}"
    return None


def run_clients(
    target: ClientTarget, threads: int, seconds: float, process_index: int
) -> tuple[list[float], dict[str, int]]:
    """Run ``threads`` clients for ``seconds`` and return latencies and errors."""
    deadline = time.monotonic() + seconds
    latencies: list[float] = []
    errors: Counter[str] = Counter()
    lock = threading.Lock()
    workers = [
        threading.Thread(
            target=_client_loop,
            args=(
                target,
                deadline,
                process_index * threads + i,
                latencies,
                errors,
                lock,
            ),
        )
        for i in range(threads)
    ]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=seconds + REQUEST_TIMEOUT_SECONDS + 30)
    return latencies, dict(errors)


def run_phase(
    mode: str, phase: str, target: ClientTarget, clients: int, seconds: float
) -> PhaseResult:
    """Run ``clients`` clients in ``CLIENT_PROCESSES`` processes for ``seconds``."""
    processes = min(CLIENT_PROCESSES, clients)
    per_process = [
        clients // processes + (i < clients % processes) for i in range(processes)
    ]
    result = PhaseResult(mode, phase, seconds)
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(processes, mp_context=context) as pool:
        futures = [
            pool.submit(run_clients, target, threads, seconds, index)
            for index, threads in enumerate(per_process)
        ]
        for future in futures:
            latencies, errors = future.result(timeout=seconds + 120)
            result.latencies_ms.extend(latencies)
            result.errors.update(errors)
    return result


# --- Stack and phases --------------------------------------------------------------


def _targets(stack: LocalStack) -> dict[str, ClientTarget]:
    config = stack.config
    pki = config.pki_dir
    return {
        "gateway": ClientTarget(
            url=config.gateway_url + "/token",
            headers={"Content-Type": workload.FORM_CONTENT_TYPE},
            cert=(str(pki / "client-cert.pem"), str(pki / "client-key.pem")),
            verify=str(pki / "ca.pem"),
        ),
        "direct": ClientTarget(
            url=f"http://127.0.0.1:{config.token_port}/token",
            headers=workload.load_balancer_headers(pki),
            cert=None,
            verify=False,
        ),
    }


def _worker_rss(tree: ProcessTree) -> dict[int, int]:
    return dict(zip(tree.worker_pids(), tree.worker_rss_bytes(), strict=True))


def soak_mode(mode: str, work_dir: Path, args: argparse.Namespace) -> ModeResult:
    """Start the stack in ``mode`` and run both phases against it."""
    result = ModeResult(mode)
    config = upstream.iam_stack_config(work_dir / "state", work_dir / mode / "logs")
    config.signing = mode
    latency = args.latency_ms if mode == "iam" else 0
    print(f"soak: {mode} signing, starting the stack", file=sys.stderr, flush=True)
    with upstream.emulator_stack(config, latency) as stack:
        tree = ProcessTree(stack.pid_of("token"), config.token_port)
        targets = _targets(stack)
        result.rss_before_warm_up = _worker_rss(tree)
        run_phase(mode, "warm-up", targets["gateway"], args.clients, WARM_UP_SECONDS)
        result.rss_start = _worker_rss(tree)
        for phase in PHASES:
            print(
                f"soak: {mode} signing, {phase}: {args.clients} clients for "
                f"{args.duration:g} s",
                file=sys.stderr,
                flush=True,
            )
            result.phases.append(
                run_phase(mode, phase, targets[phase], args.clients, args.duration)
            )
        result.rss_end = _worker_rss(tree)
        exited = stack.exited()
        if exited:
            result.problems.append(f"processes exited: {', '.join(exited)}")
    _check_memory(result, args.max_growth_mb)
    return result


def _check_memory(result: ModeResult, max_growth_mb: float) -> None:
    if set(result.rss_start) != set(result.rss_end):
        result.problems.append(
            "token workers changed during the soak (a worker exited): "
            f"{sorted(result.rss_start)} -> {sorted(result.rss_end)}"
        )
        return
    for pid, start in result.rss_start.items():
        growth_mb = (result.rss_end[pid] - start) / _MB
        if growth_mb > max_growth_mb:
            result.problems.append(
                f"token worker {pid} grew by {growth_mb:.1f} MB, more than "
                f"{max_growth_mb:g} MB"
            )


# --- Report ------------------------------------------------------------------------


def _phase_rows(results: list[ModeResult]) -> list[str]:
    rows = [
        "| Mode | Phase | Requests | Errors | req/s | p50 ms | p99 ms |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for mode in results:
        for phase in mode.phases:
            served = len(phase.latencies_ms)
            rows.append(
                f"| {mode.mode} | {phase.phase} | {served} | {phase.error_count} | "
                f"{served / phase.seconds:.0f} | {phase.percentile(0.5):.1f} | "
                f"{phase.percentile(0.99):.1f} |"
            )
    return rows


def _memory_rows(results: list[ModeResult]) -> list[str]:
    rows = [
        "| Mode | Worker | RSS MB before warm-up | at start | at end | growth MB |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for mode in results:
        for index, (pid, start) in enumerate(sorted(mode.rss_start.items())):
            end = mode.rss_end.get(pid, 0)
            before = mode.rss_before_warm_up.get(pid)
            # A worker that gunicorn had not forked yet has no early reading.
            shown = "-" if before is None else f"{before / _MB:.1f}"
            rows.append(
                f"| {mode.mode} | {index + 1} | {shown} | {start / _MB:.1f} "
                f"| {end / _MB:.1f} | {(end - start) / _MB:+.1f} |"
            )
    return rows


def _error_lines(results: list[ModeResult]) -> list[str]:
    lines: list[str] = []
    for mode in results:
        for phase in mode.phases:
            for message, count in phase.errors.most_common(_MAX_ERROR_EXAMPLES):
                lines.append(f"- {mode.mode}, {phase.phase}: {count} x {message}")
        lines += [f"- {mode.mode}: {problem}" for problem in mode.problems]
    return lines


def render(
    results: list[ModeResult],
    args: argparse.Namespace,
    passed: bool,
    machine: dict[str, str],
) -> str:
    """Return docs/soak.md for one soak run; ``machine`` is read at its start."""
    versions = environment.describe_versions(PEER_DIR)
    lines = [
        "# Soak test",
        "",
        "Generated by `make soak` (`python -m bench.soak`); do not edit by hand.",
        "",
        f"Result: **{'passed' if passed else 'FAILED'}**.",
        "",
        "Each mode starts the local stack with WORKERS=2, THREADS=8. Each phase "
        f"runs {args.clients} concurrent keep-alive clients ({CLIENT_PROCESSES} "
        f"processes of threads using requests) for {args.duration:g} s. The "
        "`gateway` phase calls https://localhost through the mTLS gateway with "
        "the demo client certificate, and the `direct` phase calls the token "
        "function with the load balancer's headers. One request in "
        f"{SCOPE_EVERY} requests `scope`, which is exchanged at the STS "
        f"emulator. In IAM mode every emulator call waits {args.latency_ms} ms. "
        "Clients and servers share the machine's cores, so the latencies "
        "include client-side queueing. Memory is each token worker's RSS after "
        f"a {WARM_UP_SECONDS:g} s warm-up and after both phases; growth above "
        f"{args.max_growth_mb:g} MB fails the soak.",
        "",
        f"Machine: {machine['cpu']}, {machine['cores']} cores, {machine['memory']}; "
        f"{machine['date']}; load average at start {machine['load average at start']}. "
        f"Python {versions['python']}, functions-framework "
        f"{versions['functions-framework']}, gunicorn {versions['gunicorn']}.",
        "",
        "## Requests",
        "",
        *_phase_rows(results),
        "",
        "## Memory of the token workers",
        "",
        *_memory_rows(results),
        "",
        "## Errors and problems",
        "",
        *(_error_lines(results) or ["None."]),
    ]
    return "\n".join(lines) + "\n"


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.soak", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument(
        "--duration", type=float, default=60.0, help="seconds per phase (default 60)"
    )
    parser.add_argument(
        "--clients", type=int, default=32, help="concurrent clients (default 32)"
    )
    parser.add_argument(
        "--latency-ms",
        type=int,
        default=upstream.EMULATOR_LATENCY_MS,
        help="latency of every emulator call in IAM mode, in ms (default 20)",
    )
    parser.add_argument(
        "--max-growth-mb",
        type=float,
        default=20.0,
        help="allowed RSS growth per token worker, in MB (default 20)",
    )
    parser.add_argument(
        "--mode",
        action="append",
        choices=MODES,
        help="signing mode to soak; repeat for both (default: both)",
    )
    parser.add_argument(
        "--output",
        type=Path,
        default=DEFAULT_OUTPUT,
        help="where to write the report (default docs/soak.md)",
    )
    args = parser.parse_args(argv)
    if args.clients < 1 or args.duration <= 0:
        parser.error("--clients and --duration must be positive")
    return args


def main(argv: list[str] | None = None) -> int:
    """Soak each mode, write the report, and return 1 on any failure."""
    args = _parse_args(argv)
    keep_google_auth_offline()
    machine = environment.describe_machine()
    WORK_DIR.mkdir(parents=True, exist_ok=True)
    workload.generate_pki(WORK_DIR / "state" / "pki")
    results = [soak_mode(mode, WORK_DIR, args) for mode in args.mode or MODES]
    failed = any(
        mode.problems or any(phase.error_count for phase in mode.phases)
        for mode in results
    )
    report = render(results, args, not failed, machine)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(report)
    print(report)
    print(f"soak: wrote {args.output}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())

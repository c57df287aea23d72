"""Turn the suites' results into the console table and ``docs/benchmarks.md``.

Every figure is the median of the repetitions with their range in brackets.
Every ratio is computed within one repetition, from runs made seconds apart,
and only then summarised, so that drift in the machine's load cancels out.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from bench.cold_start import ColdStartResults
from bench.measure import Sample
from bench.summary import Spread, spread, verdict
from bench.throughput import LocalKeyResults, MatrixResults, TargetRun
from bench.upstream import (
    RUN_NAMES,
    SCOPE,
    SIGN_DIRECT,
    STS_DIRECT,
    TOKEN_IAM,
    UpstreamResults,
    UpstreamSample,
)

OVERHEAD_TARGET = 1.15
PEER_RATIO_TARGET = 1.1
PEER_P99_TARGET = 0.5
COLD_LOCAL_TARGET = 1.5
COLD_IAM_TARGET = 2.5
ADDED_LATENCY_TARGETS_MS = {1: 2.0, 16: 5.0}
# Connection reuse: a pooled client opens a few connections per run, not one
# per call.
CONNECTIONS_PER_CALL_TARGET = 0.1
_MB = 2**20
_IMPORT_ROWS = 14

# Profiling notes that explain the missed targets, rendered into the report.
FINDINGS_FILE = Path(__file__).with_name("findings.md")


@dataclass
class BenchResults:
    """Everything one ``make bench`` run measured, and how."""

    machine: dict[str, str]
    versions: dict[str, str]
    repetitions: int
    duration_seconds: float
    local: LocalKeyResults | None = None
    matrix: MatrixResults | None = None
    upstream: UpstreamResults | None = None
    cold: ColdStartResults | None = None
    elapsed_seconds: float = 0.0
    load_at_end: str = ""
    failures: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class TargetCheck:
    """One figure with a target: its spread, the target and the verdict."""

    figure: str
    value: Spread
    digits: int
    unit: str
    target: str
    verdict: str


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = [
        "| " + " | ".join(headers) + " |",
        "| " + " | ".join("---" for _ in headers) + " |",
    ]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def _of(samples: Sequence[Sample], value: Callable[[Sample], float]) -> Spread:
    return spread([value(sample) for sample in samples])


def _pairwise(
    first: Sequence[float],
    second: Sequence[float],
    combine: Callable[[float, float], float],
) -> Spread:
    return spread([combine(a, b) for a, b in zip(first, second, strict=True)])


def _splits(samples: Sequence[Sample]) -> str:
    return ", ".join("/".join(str(n) for n in s.worker_connections) for s in samples)


def _mb(values: Sequence[int]) -> str:
    return " / ".join(f"{value / _MB:.0f}" for value in values) or "-"


# --- Targets -------------------------------------------------------------------


def target_checks(results: BenchResults) -> list[TargetCheck]:
    """Return every figure that has a target, with its verdict."""
    checks: list[TargetCheck] = []
    if results.local is not None:
        checks += _local_checks(results.local)
    if results.upstream is not None:
        checks += _upstream_checks(results.upstream)
    if results.cold is not None:
        checks += _cold_checks(results.cold)
    return checks


def _check(
    figure: str,
    value: Spread,
    limit: float,
    *,
    at_most: bool,
    digits: int,
    unit: str = "",
) -> TargetCheck:
    sign = "<=" if at_most else ">="
    target = f"{sign} {limit:g}{' ' + unit if unit else ''}"
    return TargetCheck(
        figure,
        value,
        digits,
        unit,
        target,
        verdict(value.median, limit, at_most=at_most),
    )


def overhead_ratios(local: LocalKeyResults, connections: int) -> Spread:
    """Token CPU per request / (bare CPU per request + one raw signature)."""
    token = [s.cpu_ms_per_request for s in local.targets["token"].samples[connections]]
    bare = [s.cpu_ms_per_request for s in local.targets["bare"].samples[connections]]
    signs = [rate.cpu_ms_per_signature for rate in local.sign_rates]
    return spread([t / (b + sig) for t, b, sig in zip(token, bare, signs, strict=True)])


def _local_checks(local: LocalKeyResults) -> list[TargetCheck]:
    checks: list[TargetCheck] = []
    for connections in local.concurrencies:
        checks.append(
            _check(
                f"Overhead ratio, local key, {connections} connections",
                overhead_ratios(local, connections),
                OVERHEAD_TARGET,
                at_most=True,
                digits=2,
            )
        )
    if "peer" not in local.targets:
        return checks
    # (label, value, numerator run, target, at_most): each ratio divides the
    # numerator run's value by the other run's, within one repetition.
    peer_figures: list[tuple[str, Callable[[Sample], float], str, float, bool]] = [
        (
            "Peer ratio (our req/s / peer req/s), {n} connections",
            lambda sample: sample.requests_per_second,
            "token",
            PEER_RATIO_TARGET,
            False,
        ),
        (
            "Peer ratio per CPU second (peer CPU/req / ours), {n} conn.",
            lambda sample: sample.cpu_ms_per_request,
            "peer",
            PEER_RATIO_TARGET,
            False,
        ),
        (
            "Our p99 / peer p99, {n} connections",
            lambda sample: sample.p99_ms,
            "token",
            PEER_P99_TARGET,
            True,
        ),
    ]
    for connections in local.concurrencies:
        runs = {
            name: local.targets[name].samples[connections] for name in ("token", "peer")
        }
        for label, value, numerator, target, at_most in peer_figures:
            denominator = "peer" if numerator == "token" else "token"
            checks.append(
                _check(
                    label.format(n=connections),
                    _pairwise(
                        [value(sample) for sample in runs[numerator]],
                        [value(sample) for sample in runs[denominator]],
                        lambda a, b: a / b,
                    ),
                    target,
                    at_most=at_most,
                    digits=2,
                )
            )
    return checks


def added_latency(
    upstream: UpstreamResults, name: str, connections: int
) -> tuple[Spread, Spread]:
    """Return p50 minus the configured latency, and p50 minus direct calls' p50."""
    samples = upstream.samples[(name, connections)]
    p50 = [s.sample.p50_ms for s in samples]
    sign = [s.sample.p50_ms for s in upstream.samples[(SIGN_DIRECT, connections)]]
    calls = 1
    direct = sign
    if name == SCOPE:
        sts = [s.sample.p50_ms for s in upstream.samples[(STS_DIRECT, connections)]]
        direct = [a + b for a, b in zip(sign, sts, strict=True)]
        calls = 2
    configured = spread([value - calls * upstream.latency_ms for value in p50])
    versus_direct = _pairwise(p50, direct, lambda a, b: a - b)
    return configured, versus_direct


def connections_per_call(
    upstream: UpstreamResults, name: str, connections: int, emulator: str
) -> Spread:
    """New TCP connections the emulator accepted per API call, per repetition."""
    ratios = []
    for s in upstream.samples[(name, connections)]:
        if emulator == "iam":
            opened, calls = s.iam_connections, s.iam_calls
        else:
            opened, calls = s.sts_connections, s.sts_calls
        ratios.append(opened / max(calls, 1))
    return spread(ratios)


def _upstream_checks(upstream: UpstreamResults) -> list[TargetCheck]:
    checks: list[TargetCheck] = []
    for name, emulator in ((TOKEN_IAM, "iam"), (SCOPE, "iam"), (SCOPE, "sts")):
        for connections in upstream.concurrencies:
            checks.append(
                _check(
                    f"{emulator.upper()} connections per call, {name}, "
                    f"{connections} conn.",
                    connections_per_call(upstream, name, connections, emulator),
                    CONNECTIONS_PER_CALL_TARGET,
                    at_most=True,
                    digits=2,
                )
            )
    for name in (TOKEN_IAM, SCOPE):
        for connections in upstream.concurrencies:
            limit = ADDED_LATENCY_TARGETS_MS.get(connections)
            if limit is None:
                continue
            configured, versus_direct = added_latency(upstream, name, connections)
            checks.append(
                _check(
                    f"Added p50 latency, {name}, {connections} conn., "
                    f"vs configured {upstream.latency_ms} ms per call",
                    configured,
                    limit,
                    at_most=True,
                    digits=1,
                    unit="ms",
                )
            )
            check = _check(
                f"Added p50 latency, {name}, {connections} conn., "
                "vs the same calls made directly",
                versus_direct,
                limit,
                at_most=True,
                digits=1,
                unit="ms",
            )
            if versus_direct.median < 0:
                # The function cannot be faster than the calls it makes, so
                # the direct baseline was slower for another reason.
                check = dataclasses.replace(check, verdict="unreliable")
            checks.append(check)
    return checks


def cold_ratios(cold: ColdStartResults, mode: str) -> Spread:
    """Start time of ``mode`` / start time of the bare function, per repetition."""
    return _pairwise(cold.seconds[mode], cold.seconds["bare"], lambda a, b: a / b)


def _cold_checks(cold: ColdStartResults) -> list[TargetCheck]:
    return [
        _check(
            "Cold start, local key / bare",
            cold_ratios(cold, "local key"),
            COLD_LOCAL_TARGET,
            at_most=True,
            digits=2,
        ),
        _check(
            "Cold start, IAM / bare",
            cold_ratios(cold, "IAM"),
            COLD_IAM_TARGET,
            at_most=True,
            digits=2,
        ),
    ]


# --- Sections ------------------------------------------------------------------


def _targets_section(checks: Sequence[TargetCheck]) -> str:
    rows = [
        [c.figure, c.value.format(c.digits, c.unit), c.target, c.verdict]
        for c in checks
    ]
    return _table(["Figure", "Median (range)", "Target", "Verdict"], rows)


def _throughput_rows(name: str, run: TargetRun, connections: int) -> list[str]:
    samples = run.samples[connections]
    return [
        name,
        _of(samples, lambda s: s.requests_per_second).format(0),
        _of(samples, lambda s: s.p50_ms).format(1),
        _of(samples, lambda s: s.p99_ms).format(1),
        _of(samples, lambda s: s.cpu_ms_per_request).format(3),
        _of(samples, lambda s: s.server_cores).format(2),
        _of(samples, lambda s: s.wrk_cores).format(2),
        _of(samples, lambda s: s.busiest_worker_share).format(2),
        _splits(samples),
    ]


_THROUGHPUT_HEADERS = [
    "Server",
    "req/s",
    "p50 ms",
    "p99 ms",
    "CPU ms/req",
    "server cores",
    "wrk cores",
    "busiest worker share",
    "connections per worker",
]


def _local_section(local: LocalKeyResults) -> str:
    names = {
        "bare": "bare function",
        "token": "token, local key",
        "peer": "peer (oidc-provider)",
    }
    parts = []
    for connections in local.concurrencies:
        rows = [
            _throughput_rows(names[key], run, connections)
            for key, run in local.targets.items()
        ]
        parts.append(
            f"**{connections} connections**\n\n" + _table(_THROUGHPUT_HEADERS, rows)
        )

    signs = local.sign_rates
    sign_rate = spread([rate.signatures_per_second for rate in signs])
    sign_cpu = spread([rate.cpu_ms_per_signature for rate in signs])
    parts.append(
        "Raw RS256 signing of the same claims with the same 2048-bit key, PyJWT "
        f"with the key loaded once, one process pinned to one core: "
        f"{sign_rate.format(0)} signatures/s, {sign_cpu.format(3)} ms CPU each."
    )

    ratio_rows = []
    for connections in local.concurrencies:
        ratio_rows.append(
            [f"{connections}", overhead_ratios(local, connections).format(2)]
        )
    parts.append(
        "Overhead ratio = token CPU per request / (bare CPU per request + one raw "
        "signature), per repetition:\n\n"
        + _table(["Connections", "Overhead ratio"], ratio_rows)
    )
    if local.peer_skipped:
        parts.append(f"The peer was not measured: {local.peer_skipped}.")
    return "\n\n".join(parts)


def _memory_section(results: BenchResults) -> str:
    rows: list[list[str]] = []
    if results.local is not None:
        for key, run in results.local.targets.items():
            rows.append([key, _mb(run.rss_after_warm_up), _mb(run.rss_after_runs)])
    if results.matrix is not None:
        for run in results.matrix.targets.values():
            rows.append(
                [
                    f"token {run.name}",
                    _mb(run.rss_after_warm_up),
                    _mb(run.rss_after_runs),
                ]
            )
    if results.upstream is not None:
        rows.append(
            ["token, IAM mode", "-", _mb(results.upstream.token_rss_after_runs)]
        )
    return _table(["Server", "RSS MB per worker after warm-up", "after the runs"], rows)


def _upstream_section(upstream: UpstreamResults) -> str:
    rows = []
    for connections in upstream.concurrencies:
        for name in RUN_NAMES:
            samples = upstream.samples[(name, connections)]
            plain = [s.sample for s in samples]
            added = ("-", "-")
            if name in (TOKEN_IAM, SCOPE):
                configured, direct = added_latency(upstream, name, connections)
                added = (configured.format(1), direct.format(1))
            rows.append(
                [
                    name,
                    str(connections),
                    _of(plain, lambda s: s.requests_per_second).format(0),
                    _of(plain, lambda s: s.p50_ms).format(1),
                    _of(plain, lambda s: s.p99_ms).format(1),
                    *added,
                    _of(plain, lambda s: s.cpu_ms_per_request).format(2),
                    _connections(samples, "iam"),
                    _connections(samples, "sts"),
                ]
            )
    headers = [
        "Run",
        "Conn.",
        "req/s",
        "p50 ms",
        "p99 ms",
        f"p50 − {upstream.latency_ms} ms per call",
        "p50 − direct p50",
        "server CPU ms/req",
        "IAM connections / calls",
        "STS connections / calls",
    ]
    text = _table(headers, rows)
    direct = spread(
        [
            s.sample.p50_ms
            for c in upstream.concurrencies
            for s in upstream.samples[(SIGN_DIRECT, c)]
        ]
    )
    if direct.median > upstream.latency_ms + 5:
        text += (
            f"\n\nNOTE: the emulators answer direct calls in {direct.format(1)} ms "
            f"at the median, well above the configured {upstream.latency_ms} ms, so "
            "the column against the configured latency mostly measures the "
            "emulators. The column against direct calls is the function's own "
            "share. The emulators' request handler leaves Nagle's algorithm on "
            "(http.server's default), so a response sent in two segments waits "
            "for the client's delayed ACK. A client that opens a new connection "
            "per call often escapes that wait, which can make the column "
            "against direct calls negative."
        )
    return text


def _connections(samples: Sequence[UpstreamSample], emulator: str) -> str:
    if emulator == "iam":
        pairs = [(s.iam_connections, s.iam_calls) for s in samples]
    else:
        pairs = [(s.sts_connections, s.sts_calls) for s in samples]
    return ", ".join(f"{conns}/{calls}" for conns, calls in pairs)


def _cold_section(cold: ColdStartResults) -> str:
    rows = [
        [mode, spread(values).format(3, "s")] for mode, values in cold.seconds.items()
    ]
    rows.append(["local key / bare", cold_ratios(cold, "local key").format(2)])
    rows.append(["IAM / bare", cold_ratios(cold, "IAM").format(2)])
    text = (
        f"WORKERS={cold.workers}, THREADS={cold.threads}, from spawning "
        "functions-framework to the first 200 answer to `POST /token`.\n\n"
        + _table(["Mode", "Start to first 200"], rows)
    )
    packages: dict[str, float] = {}
    for imports in cold.import_ms.values():
        for name, ms in imports.items():
            packages[name] = max(packages.get(name, 0.0), ms)
    top = sorted(packages, key=lambda name: -packages[name])[:_IMPORT_ROWS]
    modes = list(cold.import_ms)
    import_rows = [
        [name, *(f"{cold.import_ms[mode].get(name, 0.0):.0f}" for mode in modes)]
        for name in top
    ]
    import_rows.append(
        ["total", *(f"{sum(cold.import_ms[mode].values()):.0f}" for mode in modes)]
    )
    text += (
        "\n\nImport time in ms per top-level package (`python -X importtime` self "
        "times summed per start, one worker, until the first 200; the median of "
        "the starts):\n\n" + _table(["Package", *modes], import_rows)
    )
    return text


def _matrix_section(matrix: MatrixResults) -> str:
    parts = []
    reference = matrix.targets.get((2, 8))
    for connections in matrix.concurrencies:
        rows = []
        for config in matrix.configs:
            run = matrix.targets[config]
            row = _throughput_rows(run.name, run, connections)
            if reference is not None:
                ratio = _pairwise(
                    [s.requests_per_second for s in run.samples[connections]],
                    [s.requests_per_second for s in reference.samples[connections]],
                    lambda a, b: a / b,
                )
                row.insert(2, ratio.format(2))
            rows.append(row)
        headers = list(_THROUGHPUT_HEADERS)
        headers[0] = "WORKERS x THREADS"
        if reference is not None:
            headers.insert(2, "req/s vs 2x8")
        best = max(
            matrix.configs,
            key=lambda c: (
                _of(
                    matrix.targets[c].samples[connections],
                    lambda s: s.requests_per_second,
                ).median
            ),
        )
        parts.append(
            f"**{connections} connections** (highest median req/s: "
            f"{best[0]}x{best[1]})\n\n" + _table(headers, rows)
        )
    return "\n\n".join(parts)


def render_markdown(results: BenchResults) -> str:
    """Return docs/benchmarks.md for ``results``."""
    sections = [
        "# Benchmarks",
        "Generated by `make bench` (`python -m bench.run`); do not edit by hand. "
        f"Every figure is the median of {results.repetitions} repetitions with "
        "the range in brackets, and every ratio is computed within one "
        "repetition from runs made seconds apart, because the machine is shared "
        "and its load changes. Method and caveats: bench/README.md.",
        "## Machine and versions",
        _table(
            ["Item", "Value"],
            [[key, value] for key, value in results.machine.items()]
            + [["load average at end", results.load_at_end]]
            + [["bench duration", f"{results.elapsed_seconds:.0f} s"]]
            + [[key, value] for key, value in results.versions.items()],
        ),
        "## Method",
        _method_text(results),
        "## Targets",
        _targets_section(target_checks(results)),
        # Hand-written analysis, kept next to the harness so every run
        # carries it.
        FINDINGS_FILE.read_text(encoding="utf-8").strip(),
    ]
    if results.local is not None:
        sections += [
            "## Token endpoint with a local key",
            _local_section(results.local),
        ]
    if results.upstream is not None:
        sections += [
            f"## IAM signing and scope, emulators at {results.upstream.latency_ms} ms",
            _upstream_section(results.upstream),
        ]
    if results.cold is not None:
        sections += ["## Cold start", _cold_section(results.cold)]
    sections += ["## Memory", _memory_section(results)]
    if results.matrix is not None:
        sections += [
            "## WORKERS and THREADS on 2 vCPUs",
            _matrix_section(results.matrix),
        ]
    if results.failures:
        sections += [
            "## Failures",
            "\n".join(f"- {failure}" for failure in results.failures),
        ]
    return "\n\n".join(sections) + "\n"


def _method_text(results: BenchResults) -> str:
    return "\n".join(
        [
            "- Load: Debian's wrk with `bench/wrk/request.lua`, keep-alive "
            f"connections, {results.duration_seconds:g} s per run, 2 wrk threads "
            "(1 at one connection). wrk runs on the same 2 CPUs as the servers, "
            "unpinned; the `wrk cores` column is its share.",
            "- Servers: functions-framework's gunicorn with WORKERS=2, THREADS=8 "
            "unless a table says otherwise, output to a log file. wrk calls the "
            "function's port directly, with the headers the development gateway "
            "computes for the demo client certificate.",
            "- Server CPU: utime + stime of the master and its workers from "
            "/proc, before and after each run, divided by completed requests.",
            "- Connections per worker: established connections of each worker, "
            "read from /proc halfway through a run, one entry per repetition.",
            "- Peer: oidc-provider as a 2-worker Node cluster, client_credentials "
            "with tls_client_auth, the certificate as URL-encoded PEM in a "
            "header, RS256 JWT access tokens signed with the same key.",
            "- Latency is wrk's, from request sent to response read, so it "
            "includes queueing in the server.",
            "- Other processes share the machine, so a server may get less than "
            "2 cores in a run (`server cores`). The peer ratio per CPU second "
            "compares CPU per request, which that does not change.",
            "- The peer logs nothing per request. The token function writes one "
            "JSON log line per request, as in production.",
        ]
    )


def render_console(results: BenchResults) -> str:
    """Return the table that ``make bench`` prints: every target and verdict."""
    checks = target_checks(results)
    width = max((len(c.figure) for c in checks), default=10)
    lines = [f"{'Figure':<{width}}  {'Median (range)':<26}  {'Target':<10}  Verdict"]
    for c in checks:
        lines.append(
            f"{c.figure:<{width}}  {c.value.format(c.digits, c.unit):<26}  "
            f"{c.target:<10}  {c.verdict}"
        )
    if results.local is not None:
        lines.append("")
        for connections in results.local.concurrencies:
            for key, run in results.local.targets.items():
                samples = run.samples[connections]
                rate = _of(samples, lambda s: s.requests_per_second).format(0)
                p99 = _of(samples, lambda s: s.p99_ms).format(1)
                cpu = _of(samples, lambda s: s.cpu_ms_per_request).format(3)
                lines.append(
                    f"{key:>6} @{connections:<3} {rate:>22} req/s  "
                    f"p99 {p99:>20} ms  CPU {cpu} ms/req"
                )
    for failure in results.failures:
        lines.append(f"FAILED: {failure}")
    return "\n".join(lines)

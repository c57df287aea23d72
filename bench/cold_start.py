"""Cold start: process start to the first 200 response, and import times.

Each start is timed from just before the process is spawned until a
``POST /token`` with the certificate headers first returns 200, polling on a
new connection every few milliseconds. In IAM mode that first response
includes the first signJwt call, and so the lazy import of the IAM client.
"""

from __future__ import annotations

import statistics
import sys
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from bench import servers, workload
from bench.servers import ServerError

MODES = ("bare", "local key", "IAM")
_POLL_SECONDS = 0.005
_TIMEOUT_SECONDS = 60.0
_IMPORT_TIME_PREFIX = "import time:"
# Modules of this repository, grouped under one name.
_PROJECT_PACKAGES = frozenset({"main", "shared", "functions", "deploy", "bench"})


@dataclass(frozen=True)
class ModeSpec:
    """How to start one mode: its source file and environment."""

    source: Path
    env: Mapping[str, str]


@dataclass
class ColdStartResults:
    """Start times per mode, and import time per dependency per mode."""

    seconds: dict[str, list[float]]
    import_ms: dict[str, dict[str, float]]
    workers: int
    threads: int


def run_cold_start_suite(
    modes: Mapping[str, ModeSpec],
    pki_dir: Path,
    log_dir: Path,
    *,
    repetitions: int,
    workers: int,
    threads: int,
) -> ColdStartResults:
    """Time each mode's start ``repetitions`` times, interleaved, then imports."""
    headers = workload.load_balancer_headers(pki_dir)
    body = workload.token_body()
    seconds: dict[str, list[float]] = {mode: [] for mode in modes}
    for _ in range(repetitions):
        for mode, spec in modes.items():
            elapsed, _ = _start_once(
                mode, spec, headers, body, log_dir, workers, threads, {}
            )
            seconds[mode].append(elapsed)

    # One worker, so that imports after the fork are not counted twice. A
    # single start is noisy on a shared machine, so each package's figure is
    # its median over the repetitions.
    import_ms: dict[str, dict[str, float]] = {}
    for mode, spec in modes.items():
        starts: list[dict[str, float]] = []
        for _ in range(repetitions):
            _, log_path = _start_once(
                mode,
                spec,
                headers,
                body,
                log_dir,
                1,
                threads,
                {"PYTHONPROFILEIMPORTTIME": "1"},
            )
            starts.append(import_time_by_package(log_path.read_text().splitlines()))
        packages = {name for start in starts for name in start}
        import_ms[mode] = {
            name: statistics.median(start.get(name, 0.0) for start in starts)
            for name in packages
        }
    return ColdStartResults(seconds, import_ms, workers, threads)


def _start_once(
    mode: str,
    spec: ModeSpec,
    headers: Mapping[str, str],
    body: bytes,
    log_dir: Path,
    workers: int,
    threads: int,
    extra_env: Mapping[str, str],
) -> tuple[float, Path]:
    port = servers.free_port()
    env = {**spec.env, **extra_env, "WORKERS": str(workers), "THREADS": str(threads)}
    name = "cold-" + mode.replace(" ", "-").lower()
    log_path = log_dir / f"{name}.log"
    log_path.unlink(missing_ok=True)
    command = servers.function_command(spec.source, port)
    started = time.perf_counter()
    server = servers.spawn(name, command, env, port, log_dir, workers)
    try:
        while time.perf_counter() - started < _TIMEOUT_SECONDS:
            status = servers.http_status(port, "POST", "/token", headers, body)
            if status == 200:
                return time.perf_counter() - started, log_path
            server.check_running()
            time.sleep(_POLL_SECONDS)
        raise ServerError(
            f"{name} returned no 200 response within {_TIMEOUT_SECONDS:g} s; "
            f"see {log_path}"
        )
    finally:
        server.stop()


def import_time_by_package(lines: Sequence[str]) -> dict[str, float]:
    """Sum ``-X importtime`` self times per top-level package, in milliseconds.

    Packages of the ``google`` namespace are distinguished by their second name
    (``google.auth``, ``google.protobuf``). The standard library and this
    repository's packages are each summed under one name.
    """
    totals: Counter[str] = Counter()
    for line in lines:
        if not line.startswith(_IMPORT_TIME_PREFIX):
            continue
        fields = line[len(_IMPORT_TIME_PREFIX) :].split("|")
        if len(fields) != 3 or not fields[0].strip().isdigit():
            continue
        self_us = int(fields[0])
        totals[_package_of(fields[2].strip())] += self_us
    return {name: micros / 1000 for name, micros in totals.most_common()}


def _package_of(module: str) -> str:
    parts = module.split(".")
    top = parts[0]
    if top in _PROJECT_PACKAGES:
        return "(this repository)"
    if top in sys.stdlib_module_names:
        return "(standard library)"
    if top == "google" and len(parts) > 1:
        return f"google.{parts[1]}"
    return top

"""Run wrk against one URL and parse the summary that ``wrk/request.lua`` prints."""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

WRK_SCRIPT = Path(__file__).resolve().parent / "wrk" / "request.lua"
_RESULT_PREFIX = "BENCH_RESULT "
# Added to a run's duration before wrk is considered hung.
_WRK_GRACE_SECONDS = 30.0


class LoadError(RuntimeError):
    """wrk failed, printed no summary, or the server returned errors."""


@dataclass(frozen=True)
class WrkResult:
    """One wrk run: throughput, latency and failures, as wrk counted them."""

    requests: int
    duration_seconds: float
    errors: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    wrk_cpu_seconds: float

    @property
    def requests_per_second(self) -> float:
        """Completed requests per second of wall time."""
        return self.requests / self.duration_seconds


def write_request_file(
    path: Path, method: str, target: str, headers: dict[str, str], body: bytes
) -> Path:
    """Write a request in the format ``wrk/request.lua`` reads, and return path."""
    lines = [
        f"{method} {target}",
        *(f"{name}: {value}" for name, value in headers.items()),
    ]
    for line in lines:
        if "\n" in line or "\r" in line:
            raise ValueError(f"a request line contains a line break: {line!r}")
    path.write_bytes("\n".join(lines).encode("utf-8") + b"\n\n" + body)
    return path


def run_wrk(
    url: str,
    request_file: Path,
    *,
    connections: int,
    duration_seconds: float,
    threads: int | None = None,
    during: Callable[[], None] | None = None,
    allow_errors: bool = False,
) -> WrkResult:
    """Run wrk for ``duration_seconds`` and return its summary.

    Args:
        url: Base URL; the request file's path is appended by wrk.
        request_file: A file written by ``write_request_file``.
        connections: Concurrent keep-alive connections (wrk ``-c``).
        duration_seconds: Length of the run.
        threads: wrk threads; defaults to ``min(connections, 2)``, one per CPU.
        during: Called once halfway through the run, for sampling the server.
        allow_errors: Return a result with errors instead of raising.

    Raises:
        LoadError: wrk failed or printed no summary, or, unless
            ``allow_errors``, some requests failed or got a non-2xx status.
    """
    thread_count = threads or min(connections, 2)
    command = [
        "wrk",
        f"-t{thread_count}",
        f"-c{connections}",
        f"-d{duration_seconds:g}s",
        "--timeout",
        "10s",
        "-s",
        str(WRK_SCRIPT),
        url,
    ]
    env = dict(os.environ, BENCH_REQUEST_FILE=str(request_file))
    process = subprocess.Popen(
        command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    sampler: threading.Thread | None = None
    if during is not None:
        sampler = threading.Thread(
            target=_call_after, args=(duration_seconds / 2, during), daemon=True
        )
        sampler.start()
    wrk_cpu = _wait_with_rusage(process, duration_seconds + _WRK_GRACE_SECONDS)
    assert process.stdout is not None and process.stderr is not None
    stdout, stderr = process.stdout.read(), process.stderr.read()
    if sampler is not None:
        sampler.join(timeout=5)
    if process.returncode != 0:
        raise LoadError(
            f"wrk exited with status {process.returncode}: {stderr.strip()}"
        )
    result = _parse_summary(stdout, wrk_cpu)
    if result.errors and not allow_errors:
        raise LoadError(
            f"{result.errors} of {result.requests} requests to {url} failed; "
            f"wrk output:\n{stdout.strip()}"
        )
    return result


def _call_after(delay: float, function: Callable[[], None]) -> None:
    time.sleep(delay)
    function()


def _wait_with_rusage(process: subprocess.Popen[str], timeout: float) -> float:
    """Wait for wrk and return its CPU time, which shares the cores under test."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pid, status, usage = os.wait4(process.pid, os.WNOHANG)
        if pid == process.pid:
            process.returncode = os.waitstatus_to_exitcode(status)
            return usage.ru_utime + usage.ru_stime
        time.sleep(0.05)
    process.kill()
    process.wait(timeout=5)
    raise LoadError(f"wrk did not finish within {timeout:g} s")


def _parse_summary(stdout: str, wrk_cpu: float) -> WrkResult:
    for line in stdout.splitlines():
        if line.startswith(_RESULT_PREFIX):
            data = json.loads(line[len(_RESULT_PREFIX) :])
            errors = sum(
                int(data[key])
                for key in (
                    "connect_errors",
                    "read_errors",
                    "write_errors",
                    "status_errors",
                    "timeouts",
                )
            )
            return WrkResult(
                requests=int(data["requests"]),
                duration_seconds=int(data["duration_us"]) / 1e6,
                errors=errors,
                p50_ms=int(data["p50_us"]) / 1000,
                p90_ms=int(data["p90_us"]) / 1000,
                p99_ms=int(data["p99_us"]) / 1000,
                max_ms=int(data["max_us"]) / 1000,
                wrk_cpu_seconds=wrk_cpu,
            )
    raise LoadError(f"wrk printed no {_RESULT_PREFIX.strip()} line:\n{stdout}")

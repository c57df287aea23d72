"""Start and stop the servers under test: functions-framework and the peer.

Each server runs in its own process group with its output sent to a log
file, as Cloud Run collects a container's stdout. CPU and memory are read
from ``/proc`` for the master process and its direct children, which are
gunicorn's workers or the Node cluster's workers.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from bench import procfs
from deploy.local.stack import NO_METADATA_SERVER

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
BARE_FUNCTION_SOURCE = BENCH_DIR / "bare_function" / "main.py"
PRODUCT_SOURCE = REPO_ROOT / "main.py"
PEER_DIR = BENCH_DIR / ".peer"
PEER_SERVER = BENCH_DIR / "peer" / "server.mjs"
PEER_SETUP = BENCH_DIR / "peer" / "setup.sh"
READY_TIMEOUT_SECONDS = 60.0
_POLL_SECONDS = 0.05


class ServerError(RuntimeError):
    """A server exited early or did not become ready in time."""


def keep_google_auth_offline() -> None:
    """Point google-auth in this process and its children at no metadata server.

    The harness imports google-auth through the product's modules, so it
    follows the same rule as the servers it starts: no lookup of a metadata
    server, and any attempt fails at once on a closed loopback port.
    """
    os.environ.update(
        NO_GCE_CHECK="true",
        GCE_METADATA_HOST=NO_METADATA_SERVER,
        GCE_METADATA_IP=NO_METADATA_SERVER,
    )


def free_port() -> int:
    """Return a loopback port that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass(frozen=True)
class ProcessTree:
    """A server's master process and its workers, listening on ``port``."""

    master_pid: int
    port: int

    @property
    def url(self) -> str:
        """Base URL of the server."""
        return f"http://127.0.0.1:{self.port}"

    def worker_pids(self) -> list[int]:
        """Return the process IDs of the workers."""
        return procfs.child_pids(self.master_pid)

    def all_pids(self) -> list[int]:
        """Return the master's process ID followed by the workers'."""
        return [self.master_pid, *self.worker_pids()]

    def cpu_seconds(self) -> float:
        """Return the CPU time used so far by the master and its workers."""
        return procfs.total_cpu_seconds(self.all_pids())

    def worker_cpu_seconds(self) -> dict[int, float]:
        """Return the CPU time used so far by each worker."""
        return {pid: procfs.cpu_seconds(pid) for pid in self.worker_pids()}

    def worker_rss_bytes(self) -> list[int]:
        """Return each worker's resident set size."""
        return [procfs.rss_bytes(pid) for pid in self.worker_pids()]

    def worker_connections(self) -> list[int]:
        """Return each worker's established connections, largest count first."""
        counts = procfs.established_connections(self.worker_pids(), self.port)
        return sorted(counts.values(), reverse=True)


@dataclass
class ServerProcess:
    """A server started by the benchmark."""

    name: str
    popen: subprocess.Popen[bytes]
    tree: ProcessTree
    log_path: Path
    expected_workers: int

    @property
    def url(self) -> str:
        """Base URL of the server."""
        return self.tree.url

    def check_running(self) -> None:
        """Raise ``ServerError`` if the master has exited."""
        if self.popen.poll() is not None:
            raise ServerError(
                f"{self.name} exited with status {self.popen.returncode}; "
                f"see {self.log_path}"
            )

    def stop(self) -> None:
        """Stop the process group: SIGTERM, then SIGKILL after 10 s."""
        if self.popen.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.popen.pid, signal.SIGTERM)
        try:
            self.popen.wait(timeout=10)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.popen.pid, signal.SIGKILL)
            self.popen.wait(timeout=5)


def function_command(source: Path, port: int) -> list[str]:
    """Return the functions-framework command line for the ``token`` target."""
    return [
        sys.executable,
        "-m",
        "functions_framework",
        "--target",
        "token",
        "--source",
        str(source),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]


def spawn(
    name: str,
    command: Sequence[str],
    env: Mapping[str, str],
    port: int,
    log_dir: Path,
    expected_workers: int,
) -> ServerProcess:
    """Start ``command`` in a new process group, logging to ``log_dir``."""
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"{name}.log"
    log_file: IO[bytes] = log_path.open("ab")
    with log_file:
        popen = subprocess.Popen(
            list(command),
            cwd=REPO_ROOT,
            env=dict(env),
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    tree = ProcessTree(popen.pid, port)
    return ServerProcess(name, popen, tree, log_path, expected_workers)


def start_function(
    name: str,
    env: Mapping[str, str],
    log_dir: Path,
    *,
    source: Path = PRODUCT_SOURCE,
    workers: int,
    threads: int,
) -> ServerProcess:
    """Start the ``token`` target under functions-framework and wait for it."""
    port = free_port()
    server_env = {**env, "WORKERS": str(workers), "THREADS": str(threads)}
    command = function_command(source, port)
    server = spawn(name, command, server_env, port, log_dir, workers)
    _wait_or_stop(server, lambda: http_status(port, "GET", "/") is not None)
    return server


def peer_available() -> str | None:
    """Return why the peer cannot run, or None when it can.

    Installs the peer with ``peer/setup.sh`` on first use.
    """
    if shutil.which("node") is None or shutil.which("npm") is None:
        return "node and npm are not installed"
    if not (PEER_DIR / "node_modules" / "oidc-provider").is_dir():
        result = subprocess.run(
            ["bash", str(PEER_SETUP)],
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        if result.returncode != 0:
            return f"peer/setup.sh failed: {result.stderr.strip()[-500:]}"
    return None


def start_peer(
    log_dir: Path, key_file: Path, client_id: str, san_uri: str, workers: int
) -> ServerProcess:
    """Start oidc-provider as a Node cluster of ``workers`` and wait for it."""
    port = free_port()
    env = {
        **os.environ,
        "NODE_ENV": "production",
        "PEER_MODULES": str(PEER_DIR),
        "PEER_PORT": str(port),
        "PEER_WORKERS": str(workers),
        "PEER_KEY_FILE": str(key_file),
        "PEER_CLIENT_ID": client_id,
        "PEER_CLIENT_SAN_URI": san_uri,
    }
    command = ["node", str(PEER_SERVER)]
    server = spawn("peer", command, env, port, log_dir, workers)
    discovery = "/.well-known/openid-configuration"
    _wait_or_stop(server, lambda: http_status(port, "GET", discovery) == 200)
    return server


def _wait_or_stop(server: ServerProcess, answers: Callable[[], bool]) -> None:
    try:
        wait_until_ready(server, answers)
    except BaseException:
        server.stop()
        raise


def wait_until_ready(server: ServerProcess, answers: Callable[[], bool]) -> None:
    """Wait until every worker is up and ``answers()`` is true.

    Raises:
        ServerError: The server exited or was not ready in time.
    """
    deadline = time.monotonic() + READY_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        server.check_running()
        workers_up = len(server.tree.worker_pids()) >= server.expected_workers
        if workers_up and answers():
            return
        time.sleep(_POLL_SECONDS)
    raise ServerError(
        f"{server.name} was not ready within {READY_TIMEOUT_SECONDS:g} s; "
        f"see {server.log_path}"
    )


def http_request(
    port: int,
    method: str,
    path: str,
    headers: Mapping[str, str] | None = None,
    body: bytes | None = None,
    timeout: float = 5.0,
) -> tuple[int, bytes] | None:
    """Send one request on a new connection; None if it cannot connect."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        connection.request(method, path, body=body, headers=dict(headers or {}))
        response = connection.getresponse()
        return response.status, response.read()
    except (OSError, http.client.HTTPException):
        return None
    finally:
        connection.close()


def http_status(
    port: int,
    method: str,
    path: str,
    headers: Mapping[str, str] | None = None,
    body: bytes | None = None,
) -> int | None:
    """Return the status of one request, or None if it cannot connect."""
    answer = http_request(port, method, path, headers, body)
    return None if answer is None else answer[0]

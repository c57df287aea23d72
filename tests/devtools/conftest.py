"""Fixtures for the development tools: a demo PKI, echo backends, subprocesses."""

from __future__ import annotations

import http.server
import json
import os
import queue
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import pytest

from deploy.local import pki

REPO_ROOT = Path(__file__).resolve().parents[2]
STARTUP_TIMEOUT_SECS = 20.0
STOP_TIMEOUT_SECS = 10.0


@pytest.fixture(scope="session")
def pki_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Return a folder with a freshly generated demo PKI."""
    out = tmp_path_factory.mktemp("pki")
    pki.generate_pki(out)
    return out


class _EchoHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def _echo(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length)
        payload = {
            "backend": getattr(self.server, "backend_name", ""),
            "method": self.command,
            "path": self.path,
            "headers": [[name, value] for name, value in self.headers.items()],
            "body": body.decode("utf-8", "replace"),
            "peer_port": self.client_address[1],
        }
        data = json.dumps(payload).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = do_PUT = do_DELETE = _echo

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        """Keep test output quiet."""


@dataclass
class EchoBackend:
    """A threaded HTTP server that returns each request as JSON."""

    name: str
    server: http.server.ThreadingHTTPServer

    @property
    def url(self) -> str:
        """The base URL, ``http://127.0.0.1:PORT``."""
        return f"http://127.0.0.1:{self.server.server_address[1]}"


StartEcho = Callable[..., EchoBackend]


@pytest.fixture(scope="module")
def echo_backend_factory() -> Iterator[StartEcho]:
    """Start echo backends on free loopback ports, stopped after the module.

    The factory takes the backend's name, which each response reports, and an
    optional idle timeout in seconds after which the backend closes a
    kept-alive connection.
    """
    started: list[EchoBackend] = []

    def start(name: str, idle_timeout: float | None = None) -> EchoBackend:
        # StreamRequestHandler.timeout closes connections idle that long, as
        # gunicorn's keepalive setting does.
        handler = type("EchoHandler", (_EchoHandler,), {"timeout": idle_timeout})
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        server.daemon_threads = True
        server.backend_name = name  # type: ignore[attr-defined]
        threading.Thread(target=server.serve_forever, daemon=True).start()
        backend = EchoBackend(name, server)
        started.append(backend)
        return backend

    yield start
    for backend in started:
        backend.server.shutdown()
        backend.server.server_close()


@dataclass
class ToolProcess:
    """A development tool running as a subprocess, with its first stdout line."""

    process: subprocess.Popen[str]
    first_line: str
    stderr_path: Path

    def stderr_text(self) -> str:
        """Return what the process wrote to stderr so far."""
        return self.stderr_path.read_text(encoding="utf-8", errors="replace")


def _read_first_line(stream: IO[str], lines: queue.Queue[str]) -> None:
    lines.put(stream.readline())


def tool_environment(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """Return an environment without MTLS_HEADER_* and with loopback-only GCE."""
    env = {
        key: value for key, value in os.environ.items() if not key.startswith("MTLS_")
    }
    env.update(
        NO_GCE_CHECK="true",
        GCE_METADATA_HOST="127.0.0.1:9",
        GCE_METADATA_IP="127.0.0.1:9",
        PYTHONUNBUFFERED="1",
    )
    env.update(extra or {})
    return env


@pytest.fixture(scope="module")
def tool_process_factory(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Callable[[Sequence[str], Mapping[str, str] | None], ToolProcess]]:
    """Start ``python -m MODULE ...`` subprocesses, stopped after the module.

    Each start waits for the first stdout line, which the tools print once
    they are ready, and fails the test if it does not come in time.
    """
    started: list[ToolProcess] = []

    def start(args: Sequence[str], env: Mapping[str, str] | None = None) -> ToolProcess:
        stderr_path = tmp_path_factory.mktemp("tool") / "stderr.log"
        with stderr_path.open("w") as stderr:
            process = subprocess.Popen(  # noqa: S603 - fixed argv, no shell
                [sys.executable, "-m", *args],
                cwd=REPO_ROOT,
                env=tool_environment(env),
                stdout=subprocess.PIPE,
                stderr=stderr,
                text=True,
            )
        assert process.stdout is not None
        lines: queue.Queue[str] = queue.Queue()
        reader = threading.Thread(
            target=_read_first_line, args=(process.stdout, lines), daemon=True
        )
        reader.start()
        try:
            first_line = lines.get(timeout=STARTUP_TIMEOUT_SECS).strip()
        except queue.Empty:
            first_line = ""
        tool = ToolProcess(process, first_line, stderr_path)
        started.append(tool)
        if not first_line:
            pytest.fail(f"{args[0]} did not start: {tool.stderr_text()}")
        return tool

    yield start
    for tool in started:
        _stop(tool.process)


def _stop(process: subprocess.Popen[str]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=STOP_TIMEOUT_SECS)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=STOP_TIMEOUT_SECS)
    if process.stdout is not None:
        process.stdout.close()

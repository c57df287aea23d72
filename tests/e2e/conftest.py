"""Fixtures that start the local stack as real processes on free loopback ports."""

from __future__ import annotations

import contextlib
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from deploy.local.stack import REPO_ROOT, LocalStack, StackConfig, running_stack

# Short upstream limits, so that fault tests finish quickly while still
# exercising the retry and deadline logic.
UPSTREAM_ENV = {
    "UPSTREAM_TIMEOUT_SECONDS": "1",
    "UPSTREAM_MAX_RETRIES": "1",
    "UPSTREAM_DEADLINE_SECONDS": "3",
}


def free_ports(count: int) -> list[int]:
    """Return distinct ports that were free a moment ago."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def stack_config(
    state_dir: Path, log_dir: Path, *, signing: str, routing: str = "root"
) -> StackConfig:
    """Return a stack configuration on free ports, with logs kept for scanning."""
    gateway, token, metadata, iam, sts = free_ports(5)
    return StackConfig(
        signing=signing,
        routing=routing,
        gateway_port=gateway,
        token_port=token,
        metadata_port=metadata,
        iam_port=iam,
        sts_port=sts,
        state_dir=state_dir,
        log_dir=log_dir,
        workers=1,
        threads=4,
        extra_env=dict(UPSTREAM_ENV),
    )


@pytest.fixture(scope="session")
def stack_state_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A state directory shared by the session's stacks, so the PKI is made once."""
    return tmp_path_factory.mktemp("stack-state")


@pytest.fixture(scope="session")
def stack_log_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where every stack process writes its output."""
    return tmp_path_factory.mktemp("stack-logs")


@pytest.fixture(scope="session")
def iam_stack(stack_state_dir: Path, stack_log_dir: Path) -> Iterator[LocalStack]:
    """The stack as `make run` starts it: signing through the IAM emulator."""
    config = stack_config(stack_state_dir, stack_log_dir / "iam", signing="iam")
    with running_stack(config) as stack:
        yield stack


@pytest.fixture(scope="session")
def local_key_stack(stack_state_dir: Path, stack_log_dir: Path) -> Iterator[LocalStack]:
    """The stack signing with a local key."""
    config = stack_config(stack_state_dir, stack_log_dir / "local", signing="local")
    with running_stack(config) as stack:
        yield stack


@pytest.fixture
def emulator_faults(iam_stack: LocalStack) -> Iterator[None]:
    """Clear the emulators' faults and counters before and after a test."""
    config = iam_stack.config
    for base in (config.iam_url, f"http://127.0.0.1:{config.sts_port}"):
        requests.post(base + "/__emulator/reset", timeout=5).raise_for_status()
    yield
    for base in (config.iam_url, f"http://127.0.0.1:{config.sts_port}"):
        requests.post(base + "/__emulator/reset", timeout=5).raise_for_status()


@contextlib.contextmanager
def running_process(
    command: list[str], env: dict[str, str], port: int, log_path: Path
) -> Iterator[subprocess.Popen[bytes]]:
    """Run one process until the ``with`` block ends; wait until it listens."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        process = subprocess.Popen(
            command, cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT
        )
    try:
        deadline = time.monotonic() + 30
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"{command[2]} exited with {process.returncode}")
            try:
                socket.create_connection(("127.0.0.1", port), 0.5).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{command[2]} did not listen") from None
                time.sleep(0.1)
        yield process
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)


def function_command(target: str, port: int) -> list[str]:
    """Return the command that serves one function on ``port``."""
    return [
        sys.executable,
        "-m",
        "functions_framework",
        "--target",
        target,
        "--source",
        str(REPO_ROOT / "main.py"),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]

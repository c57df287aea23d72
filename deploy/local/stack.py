"""Run the whole service on this machine, with no Google account.

Starts, on loopback: the IAM Credentials and STS emulators, the ``token`` and
``metadata`` functions under functions-framework, and the development mTLS
gateway at https://localhost:8443 in front of them. This is a development
tool: the gateway and emulators stand in for Google's load balancer and APIs.
The functions enforce ``deploy/local/example-policy.yaml`` as client policy.

    python -m deploy.local.stack [--signing iam|local] [--routing root|url-mask]

The end-to-end tests start the same stack through ``LocalStack``.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_STATE_DIR = REPO_ROOT / ".local"
EXAMPLE_POLICY_FILE = Path(__file__).resolve().with_name("example-policy.yaml")
# Settings that the gateway reads as well, so that it sends the headers, and
# the secret, that the functions are configured to read.
_GATEWAY_SETTINGS_PREFIX = "MTLS_HEADER_CLIENT_CERT_"
_GATEWAY_SETTINGS = ("LB_SECRET_HEADER", "LB_SECRET")

PROJECT_NUMBER = "123456789012"
POOL_ID = "demo-pool"
PROVIDER_ID = "demo-provider"
SERVICE_ACCOUNT = "token-service@demo-project.iam.gserviceaccount.com"
# Accounts a client may impersonate locally; the second one is refused, to
# show the error a missing Workload Identity User binding gives.
DEMO_WORKLOAD_ACCOUNT = "demo-workload@demo-project.iam.gserviceaccount.com"
DENIED_WORKLOAD_ACCOUNT = "denied-workload@demo-project.iam.gserviceaccount.com"
PROVIDER_RESOURCE = (
    f"//iam.googleapis.com/projects/{PROJECT_NUMBER}/locations/global"
    f"/workloadIdentityPools/{POOL_ID}/providers/{PROVIDER_ID}"
)
# No metadata server exists here: google-auth must never look for one.
NO_METADATA_SERVER = "127.0.0.1:9"
READY_TIMEOUT_SECONDS = 30.0


@dataclass
class StackConfig:
    """Ports, modes and paths of one local stack."""

    signing: str = "iam"
    routing: str = "root"
    gateway_port: int = 8443
    token_port: int = 8081
    metadata_port: int = 8082
    iam_port: int = 8085
    sts_port: int = 8086
    state_dir: Path = DEFAULT_STATE_DIR
    log_dir: Path | None = None
    workers: int = 2
    threads: int = 8
    extra_env: dict[str, str] = field(default_factory=dict)
    gateway_args: tuple[str, ...] = ()
    sts_args: tuple[str, ...] = ()
    policy_file: Path | None = EXAMPLE_POLICY_FILE

    @property
    def pki_dir(self) -> Path:
        """Where the demo CA, certificates and keys live."""
        return self.state_dir / "pki"

    @property
    def gateway_url(self) -> str:
        """Public URL of the local stack, as clients call it."""
        return f"https://localhost:{self.gateway_port}"

    @property
    def issuer(self) -> str:
        """Issuer of the tokens, as the Host header makes it."""
        if self.routing == "url-mask":
            return self.gateway_url + "/metadata"
        return self.gateway_url

    @property
    def iam_url(self) -> str:
        """Base URL of the IAM Credentials emulator."""
        return f"http://127.0.0.1:{self.iam_port}"

    @property
    def sts_url(self) -> str:
        """Token endpoint of the STS emulator."""
        return f"http://127.0.0.1:{self.sts_port}/v1/token"


def base_environment() -> dict[str, str]:
    """Return this process's environment with google-auth kept off the network."""
    env = dict(os.environ)
    env.update(
        NO_GCE_CHECK="true",
        GCE_METADATA_HOST=NO_METADATA_SERVER,
        GCE_METADATA_IP=NO_METADATA_SERVER,
        PYTHONUNBUFFERED="1",
    )
    env.pop("GOOGLE_APPLICATION_CREDENTIALS", None)
    return env


def function_environment(config: StackConfig) -> dict[str, str]:
    """Return the functions' configuration: the deployment article's, plus modes."""
    env = base_environment()
    env.update(
        AUTH_FLOWS="xlb-mtls-client-credentials",
        TOKEN_VALIDITY="5",
        WORKLOAD_IDENITY_PROJECT_NUMBER=PROJECT_NUMBER,
        WORKLOAD_IDENITY_POOL_ID=POOL_ID,
        WORKLOAD_IDENITY_PROVIDER_ID=PROVIDER_ID,
        MTLS_HEADER_CLIENT_ID="X-Client-Cert-Hash",
        STS_ENDPOINT=config.sts_url,
        IAM_CREDENTIALS_ENDPOINT=config.iam_url,
        WORKERS=str(config.workers),
        THREADS=str(config.threads),
    )
    if config.routing == "url-mask":
        env["TOKEN_ISSUER"] = config.issuer
    if config.signing == "local":
        env["SIGNING_KEY_FILE"] = str(config.pki_dir / "signing-key.pem")
    else:
        env["SERVICE_ACCOUNT_EMAIL"] = SERVICE_ACCOUNT
    env.update(config.extra_env)
    return env


def stack_function_environment(config: StackConfig) -> dict[str, str]:
    """Return the functions' environment in the stack: with the client policy.

    ``CLIENT_POLICY_FILE`` in ``config.extra_env`` wins, and an empty value
    there turns the policy off.
    """
    env = function_environment(config)
    if config.policy_file is not None and "CLIENT_POLICY_FILE" not in config.extra_env:
        env["CLIENT_POLICY_FILE"] = str(config.policy_file)
    return env


def gateway_environment(config: StackConfig) -> dict[str, str]:
    """Return the gateway's environment, with the header and secret settings."""
    env = base_environment()
    env.update(
        (name, value)
        for name, value in config.extra_env.items()
        if name.startswith(_GATEWAY_SETTINGS_PREFIX) or name in _GATEWAY_SETTINGS
    )
    return env


@dataclass
class _Process:
    name: str
    popen: subprocess.Popen[str]
    port: int


class LocalStack:
    """Starts and stops the local stack's processes."""

    def __init__(self, config: StackConfig, output: IO[str] | None = None) -> None:
        self.config = config
        self._output = output
        self._processes: list[_Process] = []

    def start(self) -> None:
        """Start every process and wait until each accepts connections."""
        config = self.config
        python = sys.executable
        self._run_once([python, "-m", "deploy.local.pki", "--out", str(config.pki_dir)])
        emulator_dir = str(config.state_dir / "emulators")
        self._spawn(
            "iam",
            config.iam_port,
            [
                python, "-m", "deploy.local.emulators.iam_credentials",
                "--listen", f"127.0.0.1:{config.iam_port}",
                "--service-account", SERVICE_ACCOUNT,
                "--service-account", DEMO_WORKLOAD_ACCOUNT,
                "--service-account", DENIED_WORKLOAD_ACCOUNT,
                "--deny-impersonation", DENIED_WORKLOAD_ACCOUNT,
                "--state-dir", emulator_dir,
            ],
            base_environment(),
        )  # fmt: skip
        self._spawn(
            "sts",
            config.sts_port,
            [
                python, "-m", "deploy.local.emulators.sts",
                "--listen", f"127.0.0.1:{config.sts_port}",
                "--audience", PROVIDER_RESOURCE,
                "--issuer-uri", config.issuer + "/",
                "--ca-file", str(config.pki_dir / "ca.pem"),
                "--state-dir", emulator_dir,
                *config.sts_args,
            ],
            base_environment(),
        )  # fmt: skip
        env = stack_function_environment(config)
        for target, port in (
            ("token", config.token_port),
            ("metadata", config.metadata_port),
        ):
            self._spawn(
                target,
                port,
                [
                    python, "-m", "functions_framework",
                    "--target", target,
                    "--source", str(REPO_ROOT / "main.py"),
                    "--host", "127.0.0.1",
                    "--port", str(port),
                ],
                env,
            )  # fmt: skip
        self._spawn(
            "gateway",
            config.gateway_port,
            [
                python, "-m", "deploy.local.gateway",
                "--listen", f"127.0.0.1:{config.gateway_port}",
                "--cert", str(config.pki_dir / "server-cert.pem"),
                "--key", str(config.pki_dir / "server-key.pem"),
                "--client-ca", str(config.pki_dir / "ca.pem"),
                "--backend", f"token=http://127.0.0.1:{config.token_port}",
                "--backend", f"metadata=http://127.0.0.1:{config.metadata_port}",
                "--routing", config.routing,
                *config.gateway_args,
            ],
            gateway_environment(config),
        )  # fmt: skip
        for process in self._processes:
            self._wait_until_listening(process)

    def stop(self) -> None:
        """Stop every process and its workers, gracefully first.

        Each process leads its own process group, so gunicorn's workers are
        signalled with their master and none outlives the stack holding a port.
        """
        for process in reversed(self._processes):
            _signal_group(process.popen, signal.SIGTERM)
        deadline = time.monotonic() + 10
        for process in self._processes:
            remaining = max(0.1, deadline - time.monotonic())
            try:
                process.popen.wait(timeout=remaining)
            except subprocess.TimeoutExpired:
                process.popen.kill()
                process.popen.wait(timeout=5)
            # Workers that ignored SIGTERM, or lost their master, go too.
            _signal_group(process.popen, signal.SIGKILL)
        self._processes.clear()

    def exited(self) -> list[str]:
        """Return the names of processes that have exited."""
        return [p.name for p in self._processes if p.popen.poll() is not None]

    def pid_of(self, name: str) -> int:
        """Return the process ID of one of the stack's processes."""
        return next(p.popen.pid for p in self._processes if p.name == name)

    def _run_once(self, command: list[str]) -> None:
        result = subprocess.run(
            command,
            cwd=REPO_ROOT,
            env=base_environment(),
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        if result.returncode != 0:
            raise RuntimeError(f"{command[2]} failed: {result.stderr.strip()}")

    def _spawn(
        self, name: str, port: int, command: list[str], env: Mapping[str, str]
    ) -> None:
        popen = subprocess.Popen(
            command,
            cwd=REPO_ROOT,
            env=dict(env),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            bufsize=1,
            # Its own process group: Ctrl-C in a terminal reaches only the
            # stack runner, which then stops each group in order.
            start_new_session=True,
        )
        self._processes.append(_Process(name, popen, port))
        threading.Thread(
            target=self._copy_output, args=(name, popen), daemon=True
        ).start()

    def _copy_output(self, name: str, popen: subprocess.Popen[str]) -> None:
        assert popen.stdout is not None
        log_file: IO[str] | None = None
        if self.config.log_dir is not None:
            self.config.log_dir.mkdir(parents=True, exist_ok=True)
            log_file = open(self.config.log_dir / f"{name}.log", "a")  # noqa: SIM115
        with contextlib.ExitStack() as stack:
            if log_file is not None:
                stack.enter_context(log_file)
            for line in popen.stdout:
                if log_file is not None:
                    log_file.write(line)
                    log_file.flush()
                if self._output is not None:
                    self._output.write(f"[{name}] {line}")
                    self._output.flush()

    def _wait_until_listening(self, process: _Process) -> None:
        deadline = time.monotonic() + READY_TIMEOUT_SECONDS
        while time.monotonic() < deadline:
            if process.popen.poll() is not None:
                raise RuntimeError(
                    f"{process.name} exited with status {process.popen.returncode}"
                )
            with contextlib.suppress(OSError):
                with socket.create_connection(("127.0.0.1", process.port), 0.5):
                    return
            time.sleep(0.1)
        raise RuntimeError(
            f"{process.name} did not listen on port {process.port} within "
            f"{READY_TIMEOUT_SECONDS:g} s"
        )


def _signal_group(popen: subprocess.Popen[str], signum: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(popen.pid, signum)


@contextlib.contextmanager
def running_stack(
    config: StackConfig, output: IO[str] | None = None
) -> Iterator[LocalStack]:
    """Start the stack for the ``with`` block, then stop it."""
    stack = LocalStack(config, output)
    try:
        stack.start()
        yield stack
    finally:
        stack.stop()


def curl_command(config: StackConfig, *extra: str) -> str:
    """Return the curl command that requests a token with the demo certificate."""
    pki = (
        config.pki_dir.relative_to(REPO_ROOT)
        if config.pki_dir.is_relative_to(REPO_ROOT)
        else config.pki_dir
    )
    parts = [
        "curl -s",
        f"--cacert {pki}/ca.pem",
        f"--cert {pki}/client-cert.pem",
        f"--key {pki}/client-key.pem",
        f"{config.gateway_url}/token",
        "-d grant_type=client_credentials",
        *extra,
    ]
    return " \\\n    ".join(parts)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    """Run the local stack until Ctrl-C."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--signing",
        choices=("iam", "local"),
        default="iam",
        help="sign through the IAM Credentials emulator (default) or a local key",
    )
    parser.add_argument(
        "--routing",
        choices=("root", "url-mask"),
        default="root",
        help="gateway routing: the article's root layout (default), or a "
        "serverless NEG URL mask with the issuer under /metadata",
    )
    args = parser.parse_args(argv)
    config = StackConfig(signing=args.signing, routing=args.routing)

    stack = LocalStack(config, sys.stdout)
    # Set both explicitly: a shell that starts the stack in the background
    # leaves SIGINT ignored, and Python then installs no handler for it.
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGINT, _interrupt)
    try:
        stack.start()
        print(
            f"\nLocal stack ready at {config.gateway_url} "
            f"(signing: {config.signing}, routing: {config.routing}).\n"
            f"Discovery: {config.issuer}/.well-known/openid-configuration\n"
            "Request an ID token with the demo client certificate:\n\n"
            f"  {curl_command(config)}\n\n"
            "Press Ctrl-C to stop.",
            flush=True,
        )
        while not stack.exited():
            time.sleep(0.5)
        print(f"stopping: {', '.join(stack.exited())} exited", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
    except RuntimeError as error:
        print(f"local stack failed to start: {error}", file=sys.stderr)
        return 1
    finally:
        stack.stop()


if __name__ == "__main__":
    raise SystemExit(main())

"""Describe the machine and the software versions a benchmark ran with."""

from __future__ import annotations

import datetime
import json
import os
import platform
import shutil
import ssl
import subprocess
from importlib import metadata
from pathlib import Path

_PYTHON_PACKAGES = (
    "functions-framework",
    "gunicorn",
    "flask",
    "werkzeug",
    "pyjwt",
    "cryptography",
    "google-auth",
    "google-cloud-iam",
    "google-api-core",
    "requests",
)


def describe_machine() -> dict[str, str]:
    """Return the CPU, core count, memory, kernel, date and current load."""
    return {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": _cpu_model(),
        "cores": str(os.cpu_count()),
        "memory": _memory_total(),
        "kernel": platform.release(),
        "load average at start": " ".join(f"{x:.2f}" for x in os.getloadavg()),
    }


def describe_versions(peer_dir: Path) -> dict[str, str]:
    """Return the versions of Python, the server stack, wrk and the peer."""
    versions = {
        "python": platform.python_version(),
        "openssl (python ssl)": ssl.OPENSSL_VERSION,
    }
    for package in _PYTHON_PACKAGES:
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = "not installed"
    versions["wrk"] = _command_output(["wrk", "--version"]).split(" [")[0]
    versions["node"] = _command_output(["node", "--version"])
    package_json = peer_dir / "node_modules" / "oidc-provider" / "package.json"
    if package_json.is_file():
        versions["oidc-provider"] = json.loads(package_json.read_text())["version"]
    else:
        versions["oidc-provider"] = "not installed"
    return versions


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _memory_total() -> str:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return f"{int(line.split()[1]) / 2**20:.1f} GiB"
    except OSError:
        pass
    return "unknown"


def _command_output(command: list[str]) -> str:
    if shutil.which(command[0]) is None:
        return "not installed"
    result = subprocess.run(
        command, capture_output=True, text=True, timeout=10, check=False
    )
    # wrk prints its version banner, followed by usage, and exits 1.
    text = (result.stdout or result.stderr).strip()
    return text.splitlines()[0] if text else "unknown"

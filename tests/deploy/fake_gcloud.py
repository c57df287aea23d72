"""Stand-in for the gcloud CLI: validate, record and respond to one command line.

The tests put a small ``gcloud`` wrapper on PATH that runs this module. It reads
its settings from the environment:

- ``FAKE_GCLOUD_SPEC``: JSON file with the commands, positional counts and flags
  that the gcloud reference lists (written by the tests from their tables).
- ``FAKE_GCLOUD_LOG``: every accepted argv is appended here as one JSON line.
- ``FAKE_GCLOUD_STATE``: JSON file with the resources created so far.
- ``FAKE_GCLOUD_MODE``: ``first`` (nothing exists before the run) or ``rerun``
  (every resource exists already).
- ``FAKE_GCLOUD_ATTACHED_NEGS``: in ``rerun`` mode, comma-separated NEG names
  that the backend services already have as backends.
- ``FAKE_GCLOUD_CAPTURE``: directory that receives copies of imported files and
  of data read from stdin, so tests can inspect them.

A command group, command or flag missing from the spec, a wrong number of
positionals, or a flag used with the wrong form exits 2 with a message, as
gcloud does for invalid usage.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any, NoReturn

PROJECT_NUMBER = "123456789012"
ADDRESS = "203.0.113.10"
CREATING_VERBS = ("create", "create-oidc", "deploy", "import")


class UsageError(Exception):
    """The command line is not valid gcloud usage."""


def _fail_usage(message: str) -> NoReturn:
    print(f"ERROR: (gcloud) {message}", file=sys.stderr)
    sys.exit(2)


def _load_json(path: str, default: Any) -> Any:
    file = Path(path)
    if not file.exists():
        return default
    return json.loads(file.read_text(encoding="utf-8"))


def match_command(argv: list[str], commands: dict[str, Any]) -> tuple[str, list[str]]:
    """Split argv into the longest known command path and the remaining args."""
    words = []
    for arg in argv:
        if arg.startswith("-"):
            break
        words.append(arg)
    for length in range(len(words), 0, -1):
        path = " ".join(words[:length])
        if path in commands:
            return path, argv[length:]
    raise UsageError(f"Invalid choice: {' '.join(words) or '(none)'!r}")


def parse_args(
    path: str, rest: list[str], spec: dict[str, Any]
) -> tuple[list[str], dict[str, list[str]]]:
    """Check positionals and flags against the spec; return both."""
    command = spec["commands"][path]
    allowed = {**spec["global_flags"], **command["flags"]}
    positionals: list[str] = []
    flags: dict[str, list[str]] = {}
    for arg in rest:
        if not arg.startswith("--"):
            positionals.append(arg)
            continue
        name, has_value, value = arg.partition("=")
        kind = allowed.get(name)
        if kind is None:
            raise UsageError(f"unrecognized arguments: {name} (gcloud {path})")
        if kind == "bool" and has_value:
            raise UsageError(f"argument {name}: ignored explicit argument {value!r}")
        if kind in ("value", "multi") and not has_value:
            raise UsageError(f"argument {name}: expected one argument (use {name}=X)")
        if name in flags and kind != "multi":
            raise UsageError(f"argument {name}: given more than once")
        flags.setdefault(name, []).append(value)
    low, high = command["positionals"]
    if len(positionals) < low or (high is not None and len(positionals) > high):
        raise UsageError(
            f"gcloud {path} takes {low}..{high} positionals: {positionals}"
        )
    return positionals, flags


def _resource_key(
    path: str, positionals: list[str], flags: dict[str, list[str]]
) -> str:
    group = path.removeprefix("beta ").rsplit(" ", 1)[0]
    name = positionals[0] if positionals else ""
    if path == "iam service-accounts create":
        # Created by account id, described by email, as in gcloud.
        name = f"{name}@{flags['--project'][0]}.iam.gserviceaccount.com"
    return f"{group}/{name}"


def _not_found(path: str) -> NoReturn:
    dotted = path.replace(" ", ".")
    print(
        f"ERROR: (gcloud.{dotted}) NOT_FOUND: Requested entity was not found.",
        file=sys.stderr,
    )
    sys.exit(1)


def _describe_output(
    path: str,
    positionals: list[str],
    flags: dict[str, list[str]],
    state: dict[str, Any],
) -> str:
    fmt = flags.get("--format", ["yaml"])[0]
    if fmt == "value(projectNumber)":
        return PROJECT_NUMBER
    if fmt == "value(state)":
        return "ACTIVE"
    if fmt == "value(address)":
        return ADDRESS
    if fmt == "value(backends[].group)":
        negs = state["backends"].get(positionals[0], [])
        if os.environ.get("FAKE_GCLOUD_MODE") == "rerun":
            negs = os.environ.get("FAKE_GCLOUD_ATTACHED_NEGS", "").split(",")
        base = "https://www.googleapis.com/compute/v1/projects/p/regions/r"
        return ";".join(f"{base}/networkEndpointGroups/{neg}" for neg in negs if neg)
    if fmt == "none":
        return ""
    return f"name: {positionals[0] if positionals else 'unknown'}"


def _capture(name: str, data: bytes) -> None:
    directory = os.environ.get("FAKE_GCLOUD_CAPTURE")
    if directory:
        Path(directory).mkdir(parents=True, exist_ok=True)
        (Path(directory) / name).write_bytes(data)


def respond(
    path: str,
    positionals: list[str],
    flags: dict[str, list[str]],
    state: dict[str, Any],
) -> str:
    """Update the state for one accepted command and return its stdout."""
    verb = path.rsplit(" ", 1)[-1]
    key = _resource_key(path, positionals, flags)
    exists = os.environ.get("FAKE_GCLOUD_MODE") == "rerun" or key in state["resources"]
    if path == "projects describe":
        return _describe_output(path, positionals, flags, state)
    if verb == "describe":
        if not exists:
            _not_found(path)
        return _describe_output(path, positionals, flags, state)
    if verb == "delete":
        if not exists:
            _not_found(path)
        return ""
    if flags.get("--data-file") == ["-"]:
        _capture(f"stdin-{positionals[0]}", sys.stdin.buffer.read())
    if verb == "import":
        _capture(
            f"{key.replace('/', '_').replace(' ', '_')}.yaml",
            Path(flags["--source"][0]).read_bytes(),
        )
    if path == "secrets versions access":
        return "stale"
    if verb == "add-backend":
        state["backends"].setdefault(positionals[0], []).extend(
            flags["--network-endpoint-group"]
        )
    if verb in CREATING_VERBS and key not in state["resources"]:
        state["resources"].append(key)
    return ""


def main(argv: list[str]) -> None:
    """Validate, record and respond to one gcloud command line."""
    spec = _load_json(os.environ["FAKE_GCLOUD_SPEC"], {})
    try:
        path, rest = match_command(argv, spec["commands"])
        positionals, flags = parse_args(path, rest, spec)
    except UsageError as error:
        _fail_usage(str(error))
    with open(os.environ["FAKE_GCLOUD_LOG"], "a", encoding="utf-8") as log:
        log.write(json.dumps(argv) + "\n")
    state_path = os.environ["FAKE_GCLOUD_STATE"]
    state = _load_json(state_path, {"resources": [], "backends": {}})
    output = respond(path, positionals, flags, state)
    Path(state_path).write_text(json.dumps(state), encoding="utf-8")
    if output:
        print(output)


if __name__ == "__main__":
    main(sys.argv[1:])

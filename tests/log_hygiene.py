"""pytest plugin that fails the session when a log line leaks a token or a key.

It scans two kinds of output. In-process log records reach a handler on the
root logger, which ``shared.structured_log.configure_logging`` leaves in place
because it removes only its own handler and plain ``logging.StreamHandler``
instances. Subprocesses write their output to files under the session's base
temporary directory (``*.log`` from the local stack, ``*.out`` and ``*.err``
from functions-framework processes), and those files are read when the
session ends. A leak turns into an error at the teardown of the last test,
which names each source and pattern but never repeats the secret.

``KNOWN_LEAKS`` lists tests whose in-process leaks come from a known product
bug. They are reported but do not fail the session, and as with a strict
xfail, a listed test that runs without leaking fails it.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

# Three base64url segments, the first a JSON object: a JWS in compact form.
# The third segment may be empty, as in an unsigned or truncated token.
JWT_PATTERN = re.compile(r"eyJ[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*")
# The emulators' access tokens start with ya29., as Google's do.
ACCESS_TOKEN_PATTERN = re.compile(r"ya29\.[A-Za-z0-9_.-]+")
PRIVATE_KEY_PATTERN = re.compile(r"-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY-----")

LEAK_PATTERNS: dict[str, re.Pattern[str]] = {
    "JWT": JWT_PATTERN,
    "access token": ACCESS_TOKEN_PATTERN,
    "PEM private key": PRIVATE_KEY_PATTERN,
}
SUBPROCESS_LOG_SUFFIXES = (".log", ".out", ".err")

# Node ID of a test -> the product bug that makes it leak, in the form
# "<file>:<function>: <cause>; fix: <fix>".
KNOWN_LEAKS: dict[str, str] = {}


@dataclass(frozen=True)
class Leak:
    """One log line that matched a leak pattern.

    Attributes:
        source: Where the line came from: a logger name, or ``path:line``.
        kind: The name of the pattern that matched, a key of ``LEAK_PATTERNS``.
        test: Node ID of the test that was running, or "" for a file.
    """

    source: str
    kind: str
    test: str = ""


def find_leaks(text: str) -> list[str]:
    """Return the names of the leak patterns that occur in ``text``."""
    return [kind for kind, pattern in LEAK_PATTERNS.items() if pattern.search(text)]


def record_text(record: logging.LogRecord) -> str:
    """Return everything a log record would write: message, labels, traceback."""
    try:
        parts = [record.getMessage()]
    except (TypeError, ValueError):
        parts = [str(record.msg), repr(record.args)]
    labels = getattr(record, "labels", None)
    if labels:
        parts.append(json.dumps(labels, default=str))
    if record.exc_info:
        parts.append(logging.Formatter().formatException(record.exc_info))
    if record.exc_text:
        parts.append(record.exc_text)
    if record.stack_info:
        parts.append(record.stack_info)
    return "\n".join(parts)


def current_test() -> str:
    """Return the node ID of the running test, or "" outside a test."""
    # pytest sets PYTEST_CURRENT_TEST to "<node id> (<phase>)".
    current = os.environ.get("PYTEST_CURRENT_TEST", "")
    return current.rsplit(" (", 1)[0]


class LeakRecorder(logging.Handler):
    """A log handler that writes nothing and records the leaks in its records."""

    def __init__(self) -> None:
        super().__init__(level=logging.NOTSET)
        self.leaks: list[Leak] = []

    def emit(self, record: logging.LogRecord) -> None:
        test = current_test()
        source = f"a record of logger {record.name!r} during {test or 'no test'}"
        for kind in find_leaks(record_text(record)):
            self.leaks.append(Leak(source, kind, test))


def scan_log_files(root: Path) -> list[Leak]:
    """Return the leaks in every subprocess log file under ``root``."""
    leaks: list[Leak] = []
    for path in sorted(_log_files(root)):
        with path.open(encoding="utf-8", errors="replace") as lines:
            for number, line in enumerate(lines, start=1):
                leaks.extend(
                    Leak(f"{path}:{number}", kind) for kind in find_leaks(line)
                )
    return leaks


def _log_files(root: Path) -> Iterator[Path]:
    for suffix in SUBPROCESS_LOG_SUFFIXES:
        yield from (path for path in root.rglob(f"*{suffix}") if path.is_file())


def format_report(leaks: Iterable[Leak], stale: Iterable[str] = ()) -> str:
    """Describe unexpected leaks and stale ``KNOWN_LEAKS`` entries, without values."""
    found = list(leaks)
    lines: list[str] = []
    if found:
        lines.append(f"{len(found)} log line(s) leak a secret:")
        lines.extend(f"  {leak.kind} in {leak.source}" for leak in found)
    for test in stale:
        lines.append(f"{test} no longer leaks: remove it from KNOWN_LEAKS")
    return "\n".join(lines)


class _Session:
    """What the plugin learns during one session."""

    def __init__(self) -> None:
        self.recorder = LeakRecorder()
        self.tests_run: set[str] = set()
        self.known: list[Leak] = []


_SESSION = _Session()


def session_recorder() -> LeakRecorder:
    """Return the handler that records this session's in-process leaks."""
    return _SESSION.recorder


def _attach(recorder: LeakRecorder) -> None:
    root = logging.getLogger()
    if recorder not in root.handlers:
        root.addHandler(recorder)


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    """Note the test, and attach the recorder again if a test removed it."""
    _SESSION.tests_run.add(item.nodeid)
    _attach(_SESSION.recorder)


def split_known(
    leaks: Iterable[Leak], tests_run: Iterable[str]
) -> tuple[list[Leak], list[Leak], list[str]]:
    """Split leaks into known and unexpected ones, and find stale known entries."""
    found = list(leaks)
    known = [leak for leak in found if leak.test in KNOWN_LEAKS]
    unexpected = [leak for leak in found if leak.test not in KNOWN_LEAKS]
    leaking_tests = {leak.test for leak in known}
    stale = sorted(
        test for test in tests_run if test in KNOWN_LEAKS and test not in leaking_tests
    )
    return known, unexpected, stale


@pytest.fixture(scope="session", autouse=True)
def log_hygiene(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LeakRecorder]:
    """Record leaks for the whole session, and fail it at the end if any occur.

    Autouse session fixtures are set up before any other session fixture, so
    this teardown runs after every local stack has stopped and written its logs.
    """
    recorder = _SESSION.recorder
    _attach(recorder)
    yield recorder
    logging.getLogger().removeHandler(recorder)
    leaks = [*recorder.leaks, *scan_log_files(tmp_path_factory.getbasetemp())]
    known, unexpected, stale = split_known(leaks, _SESSION.tests_run)
    _SESSION.known = known
    if unexpected or stale:
        pytest.fail(format_report(unexpected, stale), pytrace=False)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """List the known leaks, so that they stay visible until they are fixed."""
    for test in sorted({leak.test for leak in _SESSION.known}):
        terminalreporter.write_line(
            f"KNOWN LOG LEAK {test} - {KNOWN_LEAKS[test]}", yellow=True
        )

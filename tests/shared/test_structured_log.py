"""Tests for shared.structured_log: Cloud Logging JSON lines and trace fields."""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Iterator
from typing import Any

import pytest

from shared.structured_log import (
    LABELS_FIELD,
    SAMPLED_FIELD,
    SPAN_FIELD,
    TRACE_FIELD,
    CloudLoggingFormatter,
    RequestLogContext,
    TraceContext,
    configure_logging,
    parse_trace_context,
    request_context,
)

TRACE_ID = "0af7651916cd43dd8448eb211c80319c"


def record(
    level: int = logging.INFO, message: str = "hello", **labels: object
) -> logging.LogRecord:
    entry = logging.LogRecord("test", level, __file__, 1, message, None, None)
    if labels:
        entry.labels = labels
    return entry


def formatted(
    entry: logging.LogRecord,
    project_id: str | None = "my-project",
    context: RequestLogContext | None = None,
) -> dict[str, Any]:
    formatter = CloudLoggingFormatter(project_id)
    if context is None:
        line = formatter.format(entry)
    else:
        with request_context(context):
            line = formatter.format(entry)
    assert "\n" not in line
    parsed = json.loads(line)
    assert isinstance(parsed, dict)
    return parsed


# --- Trace context ---------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "span", "sampled"),
    [
        (f"{TRACE_ID}/74;o=1", "000000000000004a", True),
        (f"{TRACE_ID}/74;o=0", "000000000000004a", False),
        (f"{TRACE_ID}/74", "000000000000004a", None),
        (f"{TRACE_ID};o=1", None, True),
        (f"{TRACE_ID}", None, None),
        (f"{TRACE_ID}/18446744073709551615;o=1", "ffffffffffffffff", True),
        (f"{TRACE_ID.upper()}/1;o=1", "0000000000000001", True),
    ],
)
def test_cloud_trace_header_parsed(
    header: str, span: str | None, sampled: bool | None
) -> None:
    trace = parse_trace_context({"X-Cloud-Trace-Context": header})
    assert trace == TraceContext(TRACE_ID, span, sampled)


def test_cloud_trace_span_too_large() -> None:
    trace = parse_trace_context(
        {"X-Cloud-Trace-Context": f"{TRACE_ID}/18446744073709551616;o=1"}
    )
    assert trace is not None
    assert trace.span_id is None


@pytest.mark.parametrize(
    ("header", "span", "sampled"),
    [
        (f"00-{TRACE_ID}-b7ad6b7169203331-01", "b7ad6b7169203331", True),
        (f"00-{TRACE_ID}-b7ad6b7169203331-00", "b7ad6b7169203331", False),
    ],
)
def test_w3c_traceparent_parsed(header: str, span: str, sampled: bool) -> None:
    trace = parse_trace_context({"traceparent": header})
    assert trace == TraceContext(TRACE_ID, span, sampled)


def test_traceparent_wins_over_cloud() -> None:
    trace = parse_trace_context(
        {
            "traceparent": f"00-{TRACE_ID}-b7ad6b7169203331-01",
            "X-Cloud-Trace-Context": "11111111111111111111111111111111/74;o=0",
        }
    )
    assert trace == TraceContext(TRACE_ID, "b7ad6b7169203331", True)


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"X-Cloud-Trace-Context": ""},
        {"X-Cloud-Trace-Context": "not-a-trace"},
        {"X-Cloud-Trace-Context": "0" * 32 + "/74;o=1"},
        {"X-Cloud-Trace-Context": TRACE_ID[:-1] + "/74;o=1"},
        {"X-Cloud-Trace-Context": f"{TRACE_ID}/abc;o=1"},
        {"traceparent": f"ff-{TRACE_ID}-b7ad6b7169203331-01"},
        {"traceparent": f"00-{'0' * 32}-b7ad6b7169203331-01"},
        {"traceparent": f"00-{TRACE_ID}-{'0' * 16}-01"},
        {"traceparent": f"00-{TRACE_ID.upper()}-B7AD6B7169203331-01"},
    ],
)
def test_invalid_trace_ignored(headers: dict[str, str]) -> None:
    assert parse_trace_context(headers) is None


def test_bad_traceparent_falls_back() -> None:
    trace = parse_trace_context(
        {
            "traceparent": "garbage",
            "X-Cloud-Trace-Context": f"{TRACE_ID}/74;o=1",
        }
    )
    assert trace == TraceContext(TRACE_ID, "000000000000004a", True)


# --- Formatter -------------------------------------------------------------


@pytest.mark.parametrize(
    ("level", "severity"),
    [
        (logging.DEBUG, "DEBUG"),
        (logging.INFO, "INFO"),
        (logging.WARNING, "WARNING"),
        (logging.ERROR, "ERROR"),
        (logging.CRITICAL, "CRITICAL"),
    ],
)
def test_cloud_severity_names(level: int, severity: str) -> None:
    assert formatted(record(level))["severity"] == severity


def test_message_and_labels() -> None:
    entry = formatted(record(message="Issued", event="token.issued", count=3))
    assert entry["message"] == "Issued"
    assert entry[LABELS_FIELD] == {"event": "token.issued", "count": "3"}


def test_labels_are_strings() -> None:
    entry = formatted(record(flag=True, items=["a"], nothing=None))
    assert entry[LABELS_FIELD] == {"flag": "true", "items": '["a"]', "nothing": "null"}


def test_long_label_truncated() -> None:
    entry = formatted(record(value="x" * 5000))
    assert len(entry[LABELS_FIELD]["value"]) == 1024


def test_trace_fields_with_project() -> None:
    context = RequestLogContext(TraceContext(TRACE_ID, "000000000000004a", True))
    entry = formatted(record(), "my-project", context)
    assert entry[TRACE_FIELD] == f"projects/my-project/traces/{TRACE_ID}"
    assert entry[SPAN_FIELD] == "000000000000004a"
    assert entry[SAMPLED_FIELD] is True


def test_no_trace_without_project() -> None:
    context = RequestLogContext(TraceContext(TRACE_ID, "000000000000004a", True))
    entry = formatted(record(), None, context)
    assert TRACE_FIELD not in entry
    assert SPAN_FIELD not in entry
    assert SAMPLED_FIELD not in entry


def test_no_trace_outside_request() -> None:
    entry = formatted(record(), "my-project")
    assert TRACE_FIELD not in entry


def test_execution_id_label() -> None:
    context = RequestLogContext(execution_id="exec-1")
    entry = formatted(record(event="x"), "my-project", context)
    assert entry[LABELS_FIELD] == {"event": "x", "execution_id": "exec-1"}


def test_context_reset_after_block() -> None:
    context = RequestLogContext(TraceContext(TRACE_ID), "exec-1")
    with request_context(context):
        pass
    assert TRACE_FIELD not in formatted(record(), "my-project")


def test_exception_in_entry() -> None:
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        entry = record(logging.ERROR)
        entry.exc_info = sys.exc_info()
    parsed = formatted(entry)
    assert "RuntimeError: boom" in parsed["exception"]


def test_non_ascii_escaped() -> None:
    line = CloudLoggingFormatter(None).format(record(message="client é\n"))
    assert line.isascii()
    assert "\n" not in line


# --- configure_logging -----------------------------------------------------


@pytest.fixture()
def restored_root_logger() -> Iterator[logging.Logger]:
    root = logging.getLogger()
    handlers = list(root.handlers)
    level = root.level
    yield root
    root.handlers[:] = handlers
    root.setLevel(level)


def test_configure_twice_one_handler(
    restored_root_logger: logging.Logger, capsys: pytest.CaptureFixture[str]
) -> None:
    configure_logging("my-project")
    configure_logging("my-project")
    logging.getLogger("tests.once").info("once", extra={"labels": {"event": "x"}})
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 1
    assert json.loads(lines[0])["message"] == "once"


def test_configure_writes_stdout(
    restored_root_logger: logging.Logger, capsys: pytest.CaptureFixture[str]
) -> None:
    configure_logging(None)
    logging.getLogger("tests.stdout").warning("to stdout")
    captured = capsys.readouterr()
    assert json.loads(captured.out)["severity"] == "WARNING"
    assert captured.err == ""

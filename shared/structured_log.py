"""Structured JSON log lines in the shape Cloud Logging reads from stdout.

One JSON object per line, with ``severity``, ``message``,
``logging.googleapis.com/labels`` and, when the request carries a trace
context and the project is known, ``logging.googleapis.com/trace`` and
``logging.googleapis.com/spanId``. See
https://cloud.google.com/logging/docs/structured-logging.

functions-framework's ``LOG_EXECUTION_ID`` mode swaps ``sys.stdout`` for a
wrapper that rewrites ``spanId`` to the decimal span of
``X-Cloud-Trace-Context``, which Cloud Logging does not accept. The handler
here writes past that wrapper, to the stream it wraps, and adds the
``execution_id`` label itself.
"""

from __future__ import annotations

import contextvars
import json
import logging
import re
import sys
import traceback
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import IO, Any

from functions_framework.execution_id import LoggingHandlerAddExecutionId
from werkzeug.datastructures import Headers

TRACE_FIELD = "logging.googleapis.com/trace"
SPAN_FIELD = "logging.googleapis.com/spanId"
SAMPLED_FIELD = "logging.googleapis.com/trace_sampled"
LABELS_FIELD = "logging.googleapis.com/labels"

# W3C Trace Context: version-traceid-parentid-flags. Version ff and all-zero
# IDs are invalid.
_TRACEPARENT = re.compile(
    r"(?P<version>[0-9a-f]{2})-(?P<trace>[0-9a-f]{32})-(?P<span>[0-9a-f]{16})"
    r"-(?P<flags>[0-9a-f]{2})"
)
# X-Cloud-Trace-Context: TRACE_ID/SPAN_ID;o=OPTIONS, with a decimal span.
_CLOUD_TRACE = re.compile(
    r"(?P<trace>[0-9a-fA-F]{32})(?:/(?P<span>\d{1,20}))?(?:;o=(?P<options>[0-9]+))?"
)
_MAX_LABEL_LENGTH = 1024


@dataclass(frozen=True)
class TraceContext:
    """Trace and span of the current request, formatted for Cloud Logging."""

    trace_id: str
    span_id: str | None = None
    sampled: bool | None = None


@dataclass(frozen=True)
class RequestLogContext:
    """Per-request fields added to every log line written during a request."""

    trace: TraceContext | None = None
    execution_id: str | None = None


_REQUEST_CONTEXT: contextvars.ContextVar[RequestLogContext | None] = (
    contextvars.ContextVar("request_log_context", default=None)
)


def parse_trace_context(headers: Mapping[str, str] | Headers) -> TraceContext | None:
    """Read the trace context from ``traceparent`` or ``X-Cloud-Trace-Context``.

    ``traceparent`` wins when both are valid, as in google-cloud-logging.
    """
    parent = _TRACEPARENT.fullmatch(headers.get("traceparent", "").strip())
    if parent and _valid_traceparent(parent):
        flags = int(parent["flags"], 16)
        return TraceContext(parent["trace"], parent["span"], bool(flags & 1))

    cloud = _CLOUD_TRACE.fullmatch(headers.get("X-Cloud-Trace-Context", "").strip())
    if not cloud or int(cloud["trace"], 16) == 0:
        return None
    span = cloud["span"]
    span_hex = f"{int(span):016x}" if span and int(span) < 2**64 else None
    options = cloud["options"]
    sampled = None if options is None else options == "1"
    return TraceContext(cloud["trace"].lower(), span_hex, sampled)


def _valid_traceparent(match: re.Match[str]) -> bool:
    return (
        match["version"] != "ff"
        and int(match["trace"], 16) != 0
        and int(match["span"], 16) != 0
    )


@contextmanager
def request_context(context: RequestLogContext) -> Iterator[None]:
    """Attach ``context`` to the log lines written inside the ``with`` block."""
    token = _REQUEST_CONTEXT.set(context)
    try:
        yield
    finally:
        _REQUEST_CONTEXT.reset(token)


class CloudLoggingFormatter(logging.Formatter):
    """Formats a record as one Cloud Logging JSON line.

    Labels come from ``extra={"labels": {...}}``; values become strings.
    """

    def __init__(self, project_id: str | None) -> None:
        super().__init__()
        self._project_id = project_id

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "severity": _severity(record.levelno),
            "message": record.getMessage(),
            "logger": record.name,
        }
        labels = {
            str(key): _label(value)
            for key, value in dict(getattr(record, "labels", None) or {}).items()
        }
        context = _REQUEST_CONTEXT.get()
        if context is not None:
            self._add_request_fields(entry, labels, context)
        if labels:
            entry[LABELS_FIELD] = labels
        if record.exc_info and record.exc_info[0] is not None:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, separators=(",", ":"), ensure_ascii=True)

    def _add_request_fields(
        self,
        entry: dict[str, Any],
        labels: dict[str, str],
        context: RequestLogContext,
    ) -> None:
        if context.execution_id:
            labels.setdefault("execution_id", context.execution_id)
        trace = context.trace
        if trace is None or not self._project_id:
            return
        entry[TRACE_FIELD] = f"projects/{self._project_id}/traces/{trace.trace_id}"
        if trace.span_id:
            entry[SPAN_FIELD] = trace.span_id
        if trace.sampled is not None:
            entry[SAMPLED_FIELD] = trace.sampled


class _UnwrappedStdoutHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to stdout, skipping functions-framework's execution-id wrapper."""

    def __init__(self) -> None:
        super().__init__(sys.stdout)

    @property
    def stream(self) -> IO[str]:
        stream: Any = sys.stdout
        while isinstance(stream, LoggingHandlerAddExecutionId):
            stream = stream.stream
        return stream  # type: ignore[no-any-return]

    @stream.setter
    def stream(self, value: IO[str]) -> None:
        # The stream is resolved on every write; StreamHandler's assignment
        # in __init__ is ignored.
        pass


def configure_logging(project_id: str | None, level: int = logging.INFO) -> None:
    """Send every log record of this process to stdout as Cloud Logging JSON.

    Calling it again replaces the previous handler, so reloading ``main.py``
    does not duplicate lines.
    """
    root = logging.getLogger()
    for handler in list(root.handlers):
        # Ours from an earlier call, or the plain StreamHandler that
        # functions-framework's LOG_EXECUTION_ID mode installs, which would
        # write every entry a second time with a decimal spanId.
        if isinstance(handler, _UnwrappedStdoutHandler) or (
            type(handler) is logging.StreamHandler
        ):
            root.removeHandler(handler)
    handler = _UnwrappedStdoutHandler()
    handler.setFormatter(CloudLoggingFormatter(project_id))
    root.addHandler(handler)
    root.setLevel(level)


def _severity(levelno: int) -> str:
    if levelno >= logging.CRITICAL:
        return "CRITICAL"
    if levelno >= logging.ERROR:
        return "ERROR"
    if levelno >= logging.WARNING:
        return "WARNING"
    if levelno >= logging.INFO:
        return "INFO"
    return "DEBUG"


def _label(value: object) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return text[:_MAX_LABEL_LENGTH]


def exception_summary(error: BaseException) -> str:
    """Describe an exception by its type and where it was raised.

    The message is left out on purpose: an exception raised while signing or
    exchanging can carry a token or a key in its text.
    """
    frames = traceback.extract_tb(error.__traceback__)
    if not frames:
        return type(error).__name__
    last = frames[-1]
    return f"{type(error).__name__} at {last.filename}:{last.lineno} in {last.name}"

"""Deadlines and bounded retries for calls to Google APIs.

Every token request gets one ``Deadline``. Each attempt at an upstream call is
limited to the policy's attempt timeout and to what is left of the deadline,
and only failures that the API calls transient are retried, a bounded number
of times. A slow or failing API therefore yields ``temporarily_unavailable``
well before a client gives up, never a hang.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from typing import Generic, TypeVar

from shared.config import UpstreamPolicy
from shared.errors import TemporarilyUnavailableError

_LOGGER = logging.getLogger(__name__)
_T = TypeVar("_T")

# Pause before retry number n (1-based) is BACKOFF_SECONDS * 2 ** (n - 1).
BACKOFF_SECONDS = 0.05
# An attempt shorter than this cannot complete a TLS handshake and a request.
MIN_ATTEMPT_SECONDS = 0.05


class RetryableUpstreamError(Exception):
    """A transient upstream failure: 429, 5xx, a timeout or a broken connection.

    ``detail`` is safe to log: it names the status or exception type, never
    a token.
    """

    def __init__(self, upstream: str, detail: str) -> None:
        self.upstream = upstream
        self.detail = detail
        super().__init__(f"{upstream}: {detail}")


class Deadline:
    """The time left for all upstream calls of one request."""

    def __init__(self, seconds: float, clock: Callable[[], float] = time.monotonic):
        self._clock = clock
        self._expires = clock() + seconds

    def remaining(self) -> float:
        """Return the seconds left, never below zero."""
        return max(0.0, self._expires - self._clock())


def call_with_retries(
    upstream: str,
    attempt: Callable[[float], _T],
    *,
    policy: UpstreamPolicy,
    deadline: Deadline,
) -> _T:
    """Run ``attempt(timeout)`` until it succeeds or retries run out.

    ``attempt`` raises ``RetryableUpstreamError`` for transient failures and
    any other exception for final ones, which propagate unchanged.

    Raises:
        TemporarilyUnavailableError: Every allowed attempt failed transiently,
            or the deadline ran out.
    """
    last_detail = "deadline exceeded before the first attempt"
    for attempt_number in range(policy.max_retries + 1):
        if attempt_number:
            pause = BACKOFF_SECONDS * 2 ** (attempt_number - 1)
            if deadline.remaining() < pause + MIN_ATTEMPT_SECONDS:
                break
            time.sleep(pause)
        timeout = min(policy.attempt_timeout_seconds, deadline.remaining())
        if timeout < MIN_ATTEMPT_SECONDS:
            break
        try:
            return attempt(timeout)
        except RetryableUpstreamError as error:
            last_detail = error.detail
            _LOGGER.warning(
                "%s call failed (%s), attempt %d of %d",
                upstream,
                error.detail,
                attempt_number + 1,
                policy.max_retries + 1,
                extra={
                    "labels": {
                        "event": "upstream.retry",
                        "upstream": upstream,
                        "detail": error.detail,
                    }
                },
            )
    raise TemporarilyUnavailableError(
        f"{upstream} is unavailable. Retry later.",
        reason="upstream_unavailable",
        log_labels={"upstream": upstream, "upstream_detail": last_detail},
    )


class ProcessLocal(Generic[_T]):
    """A value created on first use in each process, shared by its threads.

    gunicorn forks workers after ``main.py`` is imported; a client created in
    the master would share its sockets with every worker. This creates one
    per process instead, under a lock, so threads of one worker share it.
    """

    def __init__(self, factory: Callable[[], _T]) -> None:
        self._factory = factory
        self._lock = threading.Lock()
        self._pid: int | None = None
        self._value: _T | None = None

    def get(self) -> _T:
        """Return this process's value, creating it on first use."""
        pid = os.getpid()
        value = self._value
        if self._pid == pid and value is not None:
            return value
        with self._lock:
            if self._pid != pid or self._value is None:
                self._value = self._factory()
                self._pid = pid
            return self._value

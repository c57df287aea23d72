"""HTTP server, control API and fault injection shared by the emulators.

Every emulator is a ``ThreadingHTTPServer`` speaking HTTP/1.1 with keep-alive.
Besides its API it serves a control API under ``/__emulator/``: ``GET stats``,
``POST reset`` and ``GET``/``POST``/``DELETE faults``. Control calls are not
counted as API requests and are never delayed or faulted.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import socket
import struct
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from email.message import Message
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import FrameType
from typing import Any, ClassVar
from urllib.parse import parse_qs, urlsplit

_LOGGER = logging.getLogger(__name__)

CONTROL_PREFIX = "/__emulator/"
FAULT_KINDS = ("latency", "status", "reset", "malformed", "hang")

# A hung request waits at most this long, so a forgotten fault cannot pin a
# handler thread for the life of the process.
MAX_HANG_SECONDS = 30.0
MAX_LATENCY_MS = 60_000
MAX_BODY_BYTES = 1024 * 1024
# Idle keep-alive connections are closed after this many seconds.
IDLE_CONNECTION_TIMEOUT_SECONDS = 60
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "::1", "localhost"})

JsonObject = dict[str, Any]


@dataclass(frozen=True)
class Request:
    """One parsed API request."""

    method: str
    path: str
    query: Mapping[str, list[str]]
    headers: Message
    body: bytes

    def header(self, name: str) -> str | None:
        """Return the value of header ``name``, or None when it is absent."""
        value = self.headers.get(name)
        return None if value is None else str(value)


@dataclass(frozen=True)
class Response:
    """One HTTP response, fully buffered so Content-Length is exact."""

    status: int
    body: bytes = b""
    content_type: str = "application/json; charset=UTF-8"
    headers: tuple[tuple[str, str], ...] = ()

    @classmethod
    def json(
        cls,
        status: int,
        document: object,
        headers: Iterable[tuple[str, str]] = (),
    ) -> Response:
        """Build a JSON response."""
        body = json.dumps(document, indent=2).encode() + b"\n"
        return cls(status, body, headers=tuple(headers))

    @classmethod
    def text(
        cls,
        status: int,
        text: str,
        content_type: str = "text/plain; charset=UTF-8",
        headers: Iterable[tuple[str, str]] = (),
    ) -> Response:
        """Build a text response."""
        return cls(status, text.encode(), content_type, tuple(headers))


class Stats:
    """Thread-safe counters reported by ``GET /__emulator/stats``."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._connections = 0
        self._groups: dict[str, Counter[str]] = {}

    def count_connection(self) -> None:
        """Count one accepted TCP connection."""
        with self._lock:
            self._connections += 1

    def count(self, group: str, key: str) -> None:
        """Add one to counter ``key`` of ``group``."""
        with self._lock:
            self._groups.setdefault(group, Counter())[key] += 1

    def snapshot(self) -> JsonObject:
        """Return all counters as a JSON object."""
        with self._lock:
            document: JsonObject = {
                "connections_accepted": self._connections,
                "requests": dict(self._groups.get("requests", Counter())),
            }
            for name, counter in sorted(self._groups.items()):
                document.setdefault(name, dict(counter))
            return document

    def reset(self) -> None:
        """Zero every counter."""
        with self._lock:
            self._connections = 0
            self._groups.clear()


class EmulatorApp:
    """The API of one emulator: routing, handlers and its error bodies.

    Subclasses set ``name`` and ``api_methods`` and override ``match`` and
    ``handle``. The server calls the other hooks for faults and control calls.
    """

    name: ClassVar[str] = "emulator"
    server_header: ClassVar[str] = "emulator"
    api_methods: ClassVar[tuple[str, ...]] = ()
    # Headers added to every response, faults and control calls included.
    common_headers: ClassVar[tuple[tuple[str, str], ...]] = ()

    def __init__(self) -> None:
        self.stats = Stats()

    def match(self, method: str, path: str) -> str | None:
        """Return the API method name that serves ``method path``, or None."""
        raise NotImplementedError

    def handle(self, api_method: str, request: Request) -> Response:
        """Serve one request that ``match`` routed to ``api_method``."""
        raise NotImplementedError

    def not_found(self, request: Request) -> Response:
        """Build the response for a path that no API method serves."""
        return Response.json(404, {"error": f"No route for {request.path}"})

    def error_response(self, status: int) -> Response:
        """Build the error response that a status fault returns."""
        return Response.json(status, {"error": HTTPStatus(status).phrase})

    def malformed_response(self) -> Response:
        """Build a 200 response whose body is truncated, invalid JSON."""
        return Response(200, b'{"truncated": "')

    def reset(self) -> None:
        """Forget emulator-specific counters and caches."""


class FaultSpecError(ValueError):
    """A fault specification sent to the control API is invalid."""


@dataclass
class Fault:
    """One injected fault, applied to the next ``remaining`` matching calls."""

    method: str
    kind: str
    status: int | None = None
    latency_ms: int = 0
    remaining: int | None = None

    def describe(self) -> JsonObject:
        """Return the fault as the control API reports it."""
        document: JsonObject = {"method": self.method, "fault": self.kind}
        if self.status is not None:
            document["status"] = self.status
        if self.kind in ("latency", "hang"):
            document["latency_ms"] = self.latency_ms
        document["times"] = self.remaining
        return document


def parse_fault(document: object, api_methods: Iterable[str]) -> Fault:
    """Validate one fault specification from the control API.

    Raises:
        FaultSpecError: a field is missing, unknown or out of range.
    """
    if not isinstance(document, dict):
        raise FaultSpecError("The fault must be a JSON object.")
    unknown = set(document) - {"method", "fault", "status", "latency_ms", "times"}
    if unknown:
        raise FaultSpecError(f"Unknown fault fields: {sorted(unknown)}.")

    known_methods = set(api_methods)
    method = document.get("method")
    if method != "*" and method not in known_methods:
        raise FaultSpecError(
            f"Invalid method {method!r}: expected '*' or one of "
            f"{sorted(known_methods)}."
        )
    kind = document.get("fault")
    if kind not in FAULT_KINDS:
        raise FaultSpecError(f"Invalid fault {kind!r}: expected one of {FAULT_KINDS}.")

    fault = Fault(method=str(method), kind=str(kind))
    fault.status = _parse_fault_status(kind, document.get("status"))
    fault.latency_ms = _parse_fault_latency(kind, document.get("latency_ms"))
    fault.remaining = _parse_fault_times(document.get("times"))
    return fault


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _parse_fault_status(kind: object, value: object) -> int | None:
    if kind != "status":
        if value is not None:
            raise FaultSpecError("Only a status fault takes a status.")
        return None
    if not _is_int(value) or not 400 <= int(str(value)) <= 599:
        raise FaultSpecError("A status fault needs an integer status from 400 to 599.")
    return int(str(value))


def _parse_fault_latency(kind: object, value: object) -> int:
    if value is None:
        if kind == "latency":
            raise FaultSpecError("A latency fault needs latency_ms.")
        # A hang lasts until cleared, bounded by MAX_HANG_SECONDS.
        return int(MAX_HANG_SECONDS * 1000) if kind == "hang" else 0
    if kind not in ("latency", "hang"):
        raise FaultSpecError("Only latency and hang faults take latency_ms.")
    maximum = MAX_LATENCY_MS if kind == "latency" else int(MAX_HANG_SECONDS * 1000)
    if not _is_int(value) or not 0 <= int(str(value)) <= maximum:
        raise FaultSpecError(f"latency_ms must be an integer from 0 to {maximum}.")
    return int(str(value))


def _parse_fault_times(value: object) -> int | None:
    if value is None:
        return None
    if not _is_int(value) or int(str(value)) < 1:
        raise FaultSpecError("times must be a positive integer, or omitted.")
    return int(str(value))


class FaultTable:
    """The active faults, and the event that releases hung requests."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._faults: list[Fault] = []
        self._release = threading.Event()

    def add(self, fault: Fault) -> None:
        """Append a fault; the first matching fault in order applies."""
        with self._lock:
            self._faults.append(fault)

    def take(self, api_method: str) -> Fault | None:
        """Return the fault for one call to ``api_method`` and use up one time."""
        with self._lock:
            for fault in self._faults:
                if fault.method not in ("*", api_method):
                    continue
                if fault.remaining is not None:
                    fault.remaining -= 1
                    if fault.remaining == 0:
                        self._faults.remove(fault)
                return Fault(fault.method, fault.kind, fault.status, fault.latency_ms)
            return None

    def describe(self) -> list[JsonObject]:
        """Return the active faults as the control API reports them."""
        with self._lock:
            return [fault.describe() for fault in self._faults]

    def hang_release_event(self) -> threading.Event:
        """Return the event that ends the hangs started now."""
        with self._lock:
            return self._release

    def clear(self) -> None:
        """Remove every fault and release the requests that hang."""
        with self._lock:
            self._faults.clear()
            self._release.set()
            self._release = threading.Event()


class EmulatorServer(ThreadingHTTPServer):
    """A threading HTTP server that counts connections and owns the app."""

    daemon_threads = True
    block_on_close = False

    def __init__(
        self,
        address: tuple[str, int],
        app: EmulatorApp,
        latency_ms: int = 0,
    ) -> None:
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        self.app = app
        self.latency_ms = latency_ms
        self.stats = app.stats
        self.faults = FaultTable()
        self.stopping = threading.Event()
        super().__init__(address, EmulatorRequestHandler)

    def server_bind(self) -> None:
        """Bind without HTTPServer's reverse DNS lookup of the host name."""
        self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.socket.bind(self.server_address)
        self.server_address = self.socket.getsockname()[:2]
        self.server_name = str(self.server_address[0])
        self.server_port = int(self.server_address[1])

    def get_request(self) -> tuple[socket.socket, Any]:
        """Accept one connection and count it."""
        connection, client_address = self.socket.accept()
        self.stats.count_connection()
        return connection, client_address

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Log a failed connection in one line instead of a traceback."""
        error = sys.exc_info()[1]
        _LOGGER.warning(
            "%s: connection from %s failed: %r", self.app.name, client_address, error
        )

    def base_url(self) -> str:
        """Return ``http://HOST:PORT`` for the bound address."""
        host = self.server_name
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{self.server_port}"

    def reset(self) -> None:
        """Zero the counters, clear the faults and reset the app."""
        self.faults.clear()
        self.stats.reset()
        self.app.reset()

    def stop(self) -> None:
        """Release hung requests, stop serving and close the socket."""
        self.stopping.set()
        self.faults.clear()
        self.shutdown()
        self.server_close()


class _ConnectionAbortedError(Exception):
    """The handler closed the connection without a response."""


class EmulatorRequestHandler(BaseHTTPRequestHandler):
    """Read one request, apply latency and faults, and send the app's response."""

    protocol_version = "HTTP/1.1"
    timeout = IDLE_CONNECTION_TIMEOUT_SECONDS
    # Without TCP_NODELAY a kept-alive response waits for the client's
    # delayed ACK, about 40 ms on Linux, which swamps any latency setting.
    disable_nagle_algorithm = True
    server: EmulatorServer

    def version_string(self) -> str:
        """Return the Server header of the emulated service."""
        return self.server.app.server_header

    def do_GET(self) -> None:  # noqa: N802 - name fixed by BaseHTTPRequestHandler
        """Serve GET."""
        self._dispatch()

    def do_POST(self) -> None:  # noqa: N802
        """Serve POST."""
        self._dispatch()

    def do_DELETE(self) -> None:  # noqa: N802
        """Serve DELETE."""
        self._dispatch()

    def do_PUT(self) -> None:  # noqa: N802
        """Serve PUT."""
        self._dispatch()

    def do_PATCH(self) -> None:  # noqa: N802
        """Serve PATCH."""
        self._dispatch()

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        """Skip the default access log; ``_dispatch`` writes a safer line."""

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        """Log server errors without the request line, which may hold secrets."""
        path = urlsplit(getattr(self, "path", "") or "").path
        _LOGGER.warning("%s: %s (path %s)", self.server.app.name, format % args, path)

    def _dispatch(self) -> None:
        started = time.monotonic()
        split = urlsplit(self.path)
        path = split.path
        api_method = "-"
        outcome = "-"
        try:
            request = Request(
                method=self.command,
                path=path,
                query=parse_qs(split.query, keep_blank_values=True),
                headers=self.headers,
                body=self._read_body(),
            )
            if path.startswith(CONTROL_PREFIX):
                api_method = "control"
                response = self._control(request)
            else:
                api_method = self.server.app.match(request.method, path) or "-"
                response = self._serve_api(api_method, request)
            self._send(response)
            outcome = str(response.status)
        except _ConnectionAbortedError as aborted:
            outcome = str(aborted)
        except _BodyError as error:
            self.close_connection = True
            self._send(Response.json(error.status, {"error": str(error)}))
            outcome = str(error.status)
        finally:
            elapsed_ms = (time.monotonic() - started) * 1000
            _LOGGER.info(
                "%s %s %s -> %s (%s) %.1f ms",
                self.server.app.name,
                self.command,
                path,
                outcome,
                api_method,
                elapsed_ms,
            )

    def _serve_api(self, api_method: str, request: Request) -> Response:
        app = self.server.app
        if api_method == "-":
            return app.not_found(request)

        self.server.stats.count("requests", api_method)
        if self.server.latency_ms:
            self._sleep(self.server.latency_ms / 1000)
        fault = self.server.faults.take(api_method)
        if fault is not None:
            self.server.stats.count("faults_applied", fault.kind)
            faulted = self._apply_fault(fault)
            if faulted is not None:
                return faulted

        try:
            return app.handle(api_method, request)
        except Exception:
            _LOGGER.exception("%s: %s failed", app.name, api_method)
            return app.error_response(500)

    def _apply_fault(self, fault: Fault) -> Response | None:
        if fault.kind == "latency":
            self._sleep(fault.latency_ms / 1000)
            return None
        if fault.kind == "status":
            # parse_fault guarantees a status for status faults.
            return self.server.app.error_response(fault.status or 500)
        if fault.kind == "malformed":
            return self.server.app.malformed_response()
        if fault.kind == "reset":
            self._reset_connection()
            raise _ConnectionAbortedError("connection reset by fault")
        # A hang keeps the connection open without a response, then closes it.
        release = self.server.faults.hang_release_event()
        release.wait(min(fault.latency_ms / 1000, MAX_HANG_SECONDS))
        self.close_connection = True
        raise _ConnectionAbortedError("hang ended by fault")

    def _sleep(self, seconds: float) -> None:
        # Waiting on the stop event lets SIGTERM end a delay at once.
        self.server.stopping.wait(seconds)

    def _reset_connection(self) -> None:
        # SO_LINGER with a zero timeout makes close() send RST, not FIN.
        linger = struct.pack("ii", 1, 0)
        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger)
        self.close_connection = True
        self.connection.close()

    def _control(self, request: Request) -> Response:
        server = self.server
        route = (request.method, request.path[len(CONTROL_PREFIX) :])
        if route == ("GET", "stats"):
            return Response.json(200, server.stats.snapshot())
        if route == ("POST", "reset"):
            server.reset()
            return Response.json(200, {"reset": True})
        if route == ("GET", "faults"):
            return Response.json(200, {"faults": server.faults.describe()})
        if route == ("DELETE", "faults"):
            server.faults.clear()
            return Response.json(200, {"faults": []})
        if route == ("POST", "faults"):
            return self._add_fault(request)
        return Response.json(404, {"error": f"No control route {request.path}"})

    def _add_fault(self, request: Request) -> Response:
        try:
            document = json.loads(request.body or b"null")
            fault = parse_fault(document, self.server.app.api_methods)
        except (ValueError, FaultSpecError) as error:
            return Response.json(400, {"error": str(error)})
        self.server.faults.add(fault)
        _LOGGER.info("%s: fault added: %s", self.server.app.name, fault.describe())
        return Response.json(200, {"faults": self.server.faults.describe()})

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            return self._read_chunked_body()
        raw_length = self.headers.get("Content-Length")
        if raw_length is None:
            return b""
        if not raw_length.strip().isdigit():
            raise _BodyError(400, "Invalid Content-Length.")
        length = int(raw_length)
        if length > MAX_BODY_BYTES:
            raise _BodyError(413, f"Request body exceeds {MAX_BODY_BYTES} bytes.")
        return self.rfile.read(length)

    def _read_chunked_body(self) -> bytes:
        chunks: list[bytes] = []
        total = 0
        while True:
            size_line = self.rfile.readline(1024).split(b";", 1)[0].strip()
            try:
                size = int(size_line, 16)
            except ValueError:
                raise _BodyError(400, "Invalid chunk size.") from None
            if size == 0:
                # Skip the trailer section, which ends with an empty line.
                while self.rfile.readline(1024).strip():
                    pass
                return b"".join(chunks)
            total += size
            if total > MAX_BODY_BYTES:
                raise _BodyError(413, f"Request body exceeds {MAX_BODY_BYTES} bytes.")
            chunks.append(self.rfile.read(size))
            self.rfile.readline(1024)

    def _send(self, response: Response) -> None:
        self.send_response(response.status)
        self.send_header("Content-Type", response.content_type)
        self.send_header("Content-Length", str(len(response.body)))
        for name, value in (*self.server.app.common_headers, *response.headers):
            self.send_header(name, value)
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(response.body)


class _BodyError(Exception):
    """The request body cannot be read; the connection must be closed."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def parse_listen(value: str) -> tuple[str, int]:
    """Parse ``HOST:PORT`` or ``[V6HOST]:PORT`` and require a loopback host.

    Raises:
        argparse.ArgumentTypeError: the value is malformed or not loopback.
    """
    host, separator, port_text = value.rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    if not separator or not port_text.isdigit() or int(port_text) > 65535:
        raise argparse.ArgumentTypeError(
            f"invalid --listen {value!r}: expected HOST:PORT, e.g. 127.0.0.1:0"
        )
    if host not in LOOPBACK_HOSTS:
        raise argparse.ArgumentTypeError(
            f"invalid --listen host {host!r}: the emulators listen on loopback only "
            "(127.0.0.1, ::1 or localhost)"
        )
    return ("127.0.0.1" if host == "localhost" else host), int(port_text)


def add_common_arguments(parser: argparse.ArgumentParser, default_port: int) -> None:
    """Add ``--listen`` and ``--latency-ms`` to an emulator's parser."""
    parser.add_argument(
        "--listen",
        type=parse_listen,
        default=("127.0.0.1", default_port),
        metavar="HOST:PORT",
        help=f"loopback address to listen on; port 0 picks a free port "
        f"(default 127.0.0.1:{default_port})",
    )
    parser.add_argument(
        "--latency-ms",
        type=_latency_argument,
        default=0,
        metavar="N",
        help="fixed delay in milliseconds added to every API call (default 0)",
    )


def _latency_argument(value: str) -> int:
    if not value.isdigit() or int(value) > MAX_LATENCY_MS:
        raise argparse.ArgumentTypeError(
            f"invalid --latency-ms {value!r}: expected 0 to {MAX_LATENCY_MS}"
        )
    return int(value)


def configure_logging() -> None:
    """Log one line per event to stderr."""
    logging.basicConfig(
        level=logging.INFO,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(message)s",
    )


def serve(app: EmulatorApp, listen: tuple[str, int], latency_ms: int) -> int:
    """Run ``app`` until SIGTERM or SIGINT, and return the exit status.

    The line ``<name> emulator listening on http://HOST:PORT`` goes to stdout
    once the socket accepts connections, so callers can wait for it.
    """
    server = EmulatorServer(listen, app, latency_ms)
    stop_requested = threading.Event()

    def request_stop(signum: int, frame: FrameType | None) -> None:
        stop_requested.set()

    previous = {
        signum: signal.signal(signum, request_stop)
        for signum in (signal.SIGTERM, signal.SIGINT)
    }
    thread = threading.Thread(
        target=server.serve_forever,
        kwargs={"poll_interval": 0.2},
        name=f"{app.name}-server",
        daemon=True,
    )
    thread.start()
    print(f"{app.name} emulator listening on {server.base_url()}", flush=True)
    _LOGGER.info("%s: listening on %s", app.name, server.base_url())
    try:
        # A timed wait keeps the main thread responsive to signals.
        while not stop_requested.wait(0.5):
            pass
    finally:
        server.stop()
        thread.join(timeout=5)
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    _LOGGER.info("%s: stopped", app.name)
    return 0


def run_main(
    build: Callable[[argparse.Namespace], EmulatorApp],
    parser: argparse.ArgumentParser,
    argv: list[str] | None = None,
) -> int:
    """Parse arguments, build the app and serve it."""
    args = parser.parse_args(argv)
    configure_logging()
    try:
        app = build(args)
    except (OSError, ValueError) as error:
        parser.error(str(error))
    return serve(app, args.listen, args.latency_ms)


__all__ = [
    "EmulatorApp",
    "EmulatorServer",
    "Fault",
    "FaultSpecError",
    "JsonObject",
    "Request",
    "Response",
    "add_common_arguments",
    "parse_fault",
    "parse_listen",
    "run_main",
    "serve",
]

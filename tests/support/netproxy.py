"""A fault-injecting HTTP/1.1 reverse proxy on loopback, for tests and benchmarks."""

from __future__ import annotations

import asyncio
import contextlib
import http
import socket
import struct
import threading
from collections import Counter
from dataclasses import dataclass, field
from types import TracebackType

from tests.support.httpwire import Body, Head, read_body, read_head

_HOST = "127.0.0.1"
_STREAM_LIMIT = 1 << 20
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
_BAD_GATEWAY = b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
_CLIENT_ERRORS = (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError)

FLIP_BYTE = "flip_byte"
RESET_AFTER = "reset_after"
RESPOND_STATUS = "respond_status"
CUT_REQUEST = "cut_request"


@dataclass
class _Fault:
    kind: str
    remaining: int
    path_contains: str | None
    method: str | None
    nbytes: int = 0
    status: int = 503
    code: str = ""

    def matches(self, method: str, target: str) -> bool:
        return self.remaining > 0 and _matches(self.method, self.path_contains, method, target)


@dataclass
class _Hold:
    count: int
    timeout_s: float
    path_contains: str | None
    method: str | None
    waiting: int = 0
    event: asyncio.Event = field(default_factory=asyncio.Event)


def _matches(want_method: str | None, path_contains: str | None, method: str, target: str) -> bool:
    return (want_method is None or want_method.upper() == method) and (
        path_contains is None or path_contains in target
    )


class FaultProxy:
    """Relays HTTP/1.1 between clients and one upstream server and injects faults on demand.

    Each client connection gets its own upstream connection, reopened whenever upstream
    closes it; the client connection stays alive whenever HTTP/1.1 framing allows, so an
    upstream ``Connection: close`` is dropped from the response. Otherwise requests and
    responses are relayed byte for byte (``Expect: 100-continue`` is answered by the
    proxy), except where a fault applies. Faults are matched in the order they were added; each
    applies ``times`` times to requests whose method equals ``method`` (None: any) and
    whose target (path and query) contains ``path_contains`` (None: any). Body faults
    apply only to 2xx responses with a non-empty body; ``cut_request`` applies to the request,
    before upstream can answer. All methods are thread-safe.

    A request is *in flight* from when the proxy has read it whole until it starts to write
    the response, so a client that waits for each response before it sends its next request
    never has more than one in flight; ``peak_in_flight`` counts how many were at once.

    Attributes:
        delay_s: Seconds each request waits before it is relayed; settable at any time.
            Waits overlap across connections, like network latency (``peak_delayed``).
    """

    def __init__(self, upstream_host: str, upstream_port: int, *, delay_s: float = 0.0) -> None:
        self.delay_s = delay_s
        self._upstream = (upstream_host, upstream_port)
        self._lock = threading.Lock()
        self._faults: list[_Fault] = []
        self._requests_seen = 0
        self._in_flight = self._peak_in_flight = 0
        self._delayed = self._peak_delayed = 0
        self._hold: _Hold | None = None
        self._holds_met = 0
        self._faults_applied: Counter[str] = Counter()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def port(self) -> int:
        """The loopback port the proxy listens on; valid once started."""
        if self._server is None:
            raise RuntimeError("FaultProxy is not running")
        return self._server.sockets[0].getsockname()[1]

    @property
    def endpoint_url(self) -> str:
        """Base URL of the proxy; valid once started."""
        return f"http://{_HOST}:{self.port}"

    @property
    def requests_seen(self) -> int:
        """Number of requests received since start or the last ``clear()``."""
        with self._lock:
            return self._requests_seen

    @property
    def in_flight(self) -> int:
        """Number of requests in flight now (see the class docstring)."""
        with self._lock:
            return self._in_flight

    @property
    def peak_in_flight(self) -> int:
        """Most requests in flight at once since start or the last ``clear()``."""
        with self._lock:
            return self._peak_in_flight

    @property
    def peak_delayed(self) -> int:
        """Most requests waiting out ``delay_s`` at once since start or the last ``clear()``."""
        with self._lock:
            return self._peak_delayed

    @property
    def holds_met(self) -> int:
        """Number of ``hold()`` calls whose count was reached (rather than timing out)."""
        with self._lock:
            return self._holds_met

    @property
    def faults_applied(self) -> dict[str, int]:
        """Number of faults applied by kind since start or the last ``clear()``."""
        with self._lock:
            return dict(self._faults_applied)

    def flip_byte(
        self, times: int = 1, path_contains: str | None = None, method: str | None = "GET"
    ) -> None:
        """Inverts the middle byte of the response body; headers are left as they are."""
        self._add(_Fault(FLIP_BYTE, times, path_contains, method))

    def reset_after(
        self,
        nbytes: int,
        times: int = 1,
        path_contains: str | None = None,
        method: str | None = "GET",
    ) -> None:
        """Sends the response head and ``nbytes`` of its body, then resets the connection."""
        self._add(_Fault(RESET_AFTER, times, path_contains, method, nbytes=nbytes))

    def cut_request(
        self,
        nbytes: int,
        times: int = 1,
        path_contains: str | None = None,
        method: str | None = "PUT",
    ) -> None:
        """Relays the request head and ``nbytes`` of its body upstream, then resets both
        connections: an upload that dies in the middle (the client gets no response)."""
        self._add(_Fault(CUT_REQUEST, times, path_contains, method, nbytes=nbytes))

    def respond_status(
        self,
        status: int = 503,
        code: str = "SlowDown",
        times: int = 2,
        path_contains: str | None = None,
        method: str | None = None,
    ) -> None:
        """Answers with ``status`` and an S3 XML error ``code`` without asking upstream."""
        self._add(_Fault(RESPOND_STATUS, times, path_contains, method, status=status, code=code))

    def hold(
        self,
        count: int,
        *,
        timeout_s: float = 30.0,
        path_contains: str | None = None,
        method: str | None = "GET",
    ) -> None:
        """Holds matching requests in flight until ``count`` of them wait together, then
        releases them all; once ``timeout_s`` has passed since a request began to wait, releases
        the waiting ones instead. Applies once, before the delay and any fault; a later ``hold``
        or ``clear()`` releases an unmet one. Where a client does send ``count`` requests at
        once, they are then certain to be in flight together however slow the machine; a client
        that never does is held once, for ``timeout_s``, and ``holds_met`` stays 0."""
        if count < 1:
            raise ValueError("count must be at least 1")
        with self._lock:
            replaced, self._hold = self._hold, _Hold(count, timeout_s, path_contains, method)
        self._release(replaced)

    def clear(self) -> None:
        """Removes all faults and any hold (releasing what it holds) and zeroes the counters
        (the peaks restart from what is in flight or delayed now)."""
        with self._lock:
            self._faults.clear()
            self._requests_seen = 0
            self._peak_in_flight = self._in_flight
            self._peak_delayed = self._delayed
            self._holds_met = 0
            self._faults_applied.clear()
            hold, self._hold = self._hold, None
        self._release(hold)

    def _release(self, hold: _Hold | None) -> None:
        loop = self._loop
        if hold is not None and loop is not None:
            loop.call_soon_threadsafe(hold.event.set)

    def start(self) -> FaultProxy:
        """Starts listening on a free loopback port in a background thread."""
        if self._loop is not None:
            return self
        loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=loop.run_forever, name="FaultProxy", daemon=True)
        self._thread.start()
        self._loop = loop
        self._server = asyncio.run_coroutine_threadsafe(self._listen(), loop).result(10)
        return self

    def stop(self) -> None:
        """Closes every connection and stops the background thread."""
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        asyncio.run_coroutine_threadsafe(self._close(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()
        self._loop = self._thread = self._server = None

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    def _add(self, fault: _Fault) -> None:
        with self._lock:
            self._faults.append(fault)

    def _take(self, kinds: tuple[str, ...], method: str, target: str) -> _Fault | None:
        with self._lock:
            for fault in self._faults:
                if fault.kind in kinds and fault.matches(method, target):
                    fault.remaining -= 1
                    self._faults_applied[fault.kind] += 1
                    return fault
        return None

    def _begin_request(self) -> None:
        with self._lock:
            self._requests_seen += 1
            self._in_flight += 1
            self._peak_in_flight = max(self._peak_in_flight, self._in_flight)

    def _end_request(self) -> None:
        with self._lock:
            self._in_flight -= 1

    async def _wait_for_hold(self, method: str, target: str) -> None:
        with self._lock:
            hold = self._hold
            if hold is None or not _matches(hold.method, hold.path_contains, method, target):
                return
            hold.waiting += 1
            met = hold.waiting >= hold.count
            if met:
                self._hold = None
                self._holds_met += 1
        if met:
            hold.event.set()
            return
        try:
            await asyncio.wait_for(hold.event.wait(), hold.timeout_s)
        except TimeoutError:
            with self._lock:
                if self._hold is hold:
                    self._hold = None
            hold.event.set()

    async def _wait_delay(self) -> None:
        delay = self.delay_s
        if delay <= 0:
            return
        with self._lock:
            self._delayed += 1
            self._peak_delayed = max(self._peak_delayed, self._delayed)
        try:
            await asyncio.sleep(delay)
        finally:
            with self._lock:
                self._delayed -= 1

    async def _listen(self) -> asyncio.Server:
        return await asyncio.start_server(self._handle, _HOST, 0, backlog=1024, limit=_STREAM_LIMIT)

    async def _close(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        upstream = _Upstream(*self._upstream)
        try:
            while await self._relay_one(reader, writer, upstream):
                pass
        except (asyncio.CancelledError, *_CLIENT_ERRORS):
            pass
        finally:
            upstream.close()
            writer.close()
            self._tasks.discard(task)

    async def _relay_one(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, upstream: _Upstream
    ) -> bool:
        """Relays one exchange; returns whether the client connection stays open."""
        head = await read_head(reader)
        if head is None:
            return False
        if head.has_token("expect", "100-continue"):
            writer.write(_CONTINUE)
            head = head.without("expect")
        body = await read_body(reader, head)
        exchanged: tuple[Head, Body] | None = None
        self._begin_request()
        try:
            await self._wait_for_hold(head.method, head.target)
            await self._wait_delay()
            cut = self._take((CUT_REQUEST,), head.method, head.target)
            if cut is not None:
                await upstream.cut(head.raw + body.raw[: cut.nbytes])
                await _send_then_reset(writer, b"")
                return False
            fault = self._take((RESPOND_STATUS,), head.method, head.target)
            if fault is None:
                with contextlib.suppress(*_CLIENT_ERRORS):
                    exchanged = await upstream.exchange(head.raw + body.raw, head.method)
        finally:
            self._end_request()
        if fault is not None:
            writer.write(_error_response(fault, head.method))
            await writer.drain()
            return not head.closes
        if exchanged is None:
            writer.write(_BAD_GATEWAY)
            await writer.drain()
            return False
        return await self._respond(writer, head, *exchanged)

    async def _respond(
        self, writer: asyncio.StreamWriter, request: Head, head: Head, body: Body
    ) -> bool:
        fault = None
        if 200 <= head.status < 300 and body.payload_length > 0:
            fault = self._take((FLIP_BYTE, RESET_AFTER), request.method, request.target)
        if fault is not None and fault.kind == RESET_AFTER:
            await _send_then_reset(writer, head.raw + body.raw[: fault.nbytes])
            return False
        keep_alive = not (request.closes or body.until_close)
        if keep_alive and head.closes:
            head = head.without("connection")
        writer.write(head.raw + (_flip_middle(body) if fault is not None else body.raw))
        await writer.drain()
        return keep_alive


class _StaleConnection(ConnectionError):
    pass


class _Upstream:
    """A lazily opened keep-alive connection to the upstream server."""

    def __init__(self, host: str, port: int) -> None:
        self._address = (host, port)
        self._streams: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None

    async def exchange(self, request: bytes, method: str) -> tuple[Head, Body]:
        reused = self._streams is not None
        try:
            return await self._exchange(request, method)
        except _StaleConnection:
            if not reused:
                raise
            return await self._exchange(request, method)

    async def _exchange(self, request: bytes, method: str) -> tuple[Head, Body]:
        reader, writer = await self._connect()
        writer.write(request)
        await writer.drain()
        head = await read_head(reader)
        while head is not None and 100 <= head.status < 200:
            head = await read_head(reader)
        if head is None:
            self.close()
            raise _StaleConnection("upstream closed the connection")
        empty = method == "HEAD" or head.status in (204, 304)
        body = await read_body(reader, head, empty=empty, until_close=True)
        if head.closes or body.until_close:
            self.close()
        return head, body

    async def cut(self, data: bytes) -> None:
        """Sends `data` (part of a request), then resets the connection."""
        _, writer = await self._connect()
        self._streams = None
        await _send_then_reset(writer, data)

    async def _connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        if self._streams is not None and self._streams[0].at_eof():
            self.close()
        if self._streams is None:
            self._streams = await asyncio.open_connection(*self._address, limit=_STREAM_LIMIT)
        return self._streams

    def close(self) -> None:
        if self._streams is not None:
            self._streams[1].close()
            self._streams = None


def _error_response(fault: _Fault, method: str) -> bytes:
    body = (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f"<Error><Code>{fault.code}</Code><Message>Injected by FaultProxy</Message>"
        "<RequestId>FAULTPROXY</RequestId></Error>"
    ).encode()
    try:
        reason = http.HTTPStatus(fault.status).phrase
    except ValueError:
        reason = "Error"
    head = (
        f"HTTP/1.1 {fault.status} {reason}\r\nContent-Type: application/xml\r\n"
        f"Content-Length: {len(body)}\r\nx-amz-request-id: FAULTPROXY\r\n\r\n"
    ).encode()
    return head if method == "HEAD" else head + body


def _flip_middle(body: Body) -> bytes:
    raw = bytearray(body.raw)
    raw[body.payload_offset(body.payload_length // 2)] ^= 0xFF
    return bytes(raw)


async def _send_then_reset(writer: asyncio.StreamWriter, data: bytes) -> None:
    writer.transport.set_write_buffer_limits(0)
    writer.write(data)
    await writer.drain()
    sock = writer.get_extra_info("socket")
    if sock is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()

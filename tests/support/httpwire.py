"""HTTP/1.1 messages read off asyncio streams, keeping their bytes exactly as sent."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

_CRLF = b"\r\n"
_END_OF_HEAD = b"\r\n\r\n"


@dataclass(frozen=True)
class Head:
    """A request or status line with its headers.

    Attributes:
        raw: The bytes as received, blank line included.
        start_line: The request or status line.
        headers: ``(name, value)`` pairs in order, names as sent.
    """

    raw: bytes
    start_line: str
    headers: list[tuple[str, str]]

    @classmethod
    def parse(cls, raw: bytes) -> Head:
        """Parses a head that ends with an empty line."""
        lines = raw[: -len(_END_OF_HEAD)].decode("latin-1").split("\r\n")
        pairs = [line.split(":", 1) for line in lines[1:] if ":" in line]
        return cls(raw, lines[0], [(name.strip(), value.strip()) for name, value in pairs])

    def get(self, name: str) -> str | None:
        """Returns the last value of header ``name`` (any case), or None."""
        values = [v for n, v in self.headers if n.lower() == name.lower()]
        return values[-1] if values else None

    def has_token(self, name: str, token: str) -> bool:
        """Tells whether a comma-separated header lists ``token`` (any case)."""
        value = self.get(name) or ""
        return token.lower() in (t.strip().lower() for t in value.split(","))

    def without(self, name: str) -> Head:
        """Returns this head with every ``name`` header removed."""
        headers = [(n, v) for n, v in self.headers if n.lower() != name.lower()]
        lines = [self.start_line, *(f"{n}: {v}" for n, v in headers)]
        return Head(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"), self.start_line, headers)

    @property
    def method(self) -> str:
        """The method of a request head."""
        return self.start_line.split(" ", 1)[0].upper()

    @property
    def target(self) -> str:
        """The request target (path and query) of a request head."""
        parts = self.start_line.split(" ")
        return parts[1] if len(parts) > 1 else ""

    @property
    def status(self) -> int:
        """The status code of a response head."""
        return int(self.start_line.split(" ", 2)[1])

    @property
    def closes(self) -> bool:
        """Tells whether the sender closes the connection after this message."""
        if self.has_token("connection", "close"):
            return True
        http10 = self.start_line.startswith("HTTP/1.0") or self.start_line.endswith("HTTP/1.0")
        return http10 and not self.has_token("connection", "keep-alive")


@dataclass(frozen=True)
class Body:
    """A message body as framed on the wire.

    Attributes:
        raw: The bytes as received, chunk framing and trailers included.
        spans: ``(offset, length)`` of each run of payload bytes inside ``raw``.
        until_close: Whether the body ended only when the sender closed the connection.
    """

    raw: bytes = b""
    spans: list[tuple[int, int]] = field(default_factory=list)
    until_close: bool = False

    @property
    def payload_length(self) -> int:
        """Number of payload bytes, framing excluded."""
        return sum(length for _, length in self.spans)

    def payload_offset(self, index: int) -> int:
        """Maps the position of a payload byte to its position in ``raw``."""
        for offset, length in self.spans:
            if index < length:
                return offset + index
            index -= length
        raise IndexError(index)


async def read_head(reader: asyncio.StreamReader) -> Head | None:
    """Reads a head; returns None if the stream ends before its first byte."""
    try:
        raw = await reader.readuntil(_END_OF_HEAD)
    except asyncio.IncompleteReadError as error:
        if error.partial:
            raise
        return None
    return Head.parse(raw)


async def read_body(
    reader: asyncio.StreamReader, head: Head, *, empty: bool = False, until_close: bool = False
) -> Body:
    """Reads the body that follows ``head``.

    Args:
        reader: The stream, positioned just after the head.
        head: The message's head.
        empty: The message has no body whatever its headers say (HEAD, 204, 304).
        until_close: Without length or chunking, the body runs to the end of the stream
            (responses); otherwise it is empty (requests).

    Returns:
        The body.
    """
    if empty:
        return Body()
    if head.has_token("transfer-encoding", "chunked"):
        return await _read_chunked(reader)
    length = head.get("content-length")
    if length is not None:
        raw = await reader.readexactly(int(length))
        return Body(raw, [(0, len(raw))])
    if until_close:
        raw = await reader.read()
        return Body(raw, [(0, len(raw))], until_close=True)
    return Body()


async def _read_chunked(reader: asyncio.StreamReader) -> Body:
    parts: list[bytes] = []
    spans: list[tuple[int, int]] = []
    offset = 0
    while True:
        line = await reader.readuntil(_CRLF)
        size = int(line.split(b";", 1)[0].strip(), 16)
        parts.append(line)
        offset += len(line)
        if size == 0:
            break
        parts.append(await reader.readexactly(size + len(_CRLF)))
        spans.append((offset, size))
        offset += size + len(_CRLF)
    while line != _CRLF:
        line = await reader.readuntil(_CRLF)
        parts.append(line)
    return Body(b"".join(parts), spans)

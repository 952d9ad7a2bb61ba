"""Request bodies, read with a byte cap and a deadline, never whole into memory unless small.

- A job's JSON (`read_json`): at most `cap` bytes (64 KiB by default; a declared larger
  Content-Length is refused before a byte is read), parsed with NaN and Infinity refused.
- An upload (`receive_upload`): streamed to a temporary file in the uploads folder, hashed
  while it streams, the writes and the hashing in a thread (never on the event loop), with the
  upload cap and the disk room checked as bytes arrive.
- Every body must keep coming: no pause longer than `timeout` seconds, and after the first
  `timeout` seconds at least `MIN_RATE` bytes a second on average; a slower one is answered
  408 and its connection closed.

A refusal is a `BodyError` (status, message); one that leaves body unread closes the
connection (`Connection: close`). Up to `DRAIN` bytes of a refused body are read and dropped
first, so that a client still sending a modest body reads the answer rather than a reset.

`timed_protocol(seconds)`: uvicorn's h11 protocol with a deadline on the request head, which
uvicorn does not have (a client sending its headers a byte at a time held a connection for
ever).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
import uuid
from pathlib import Path

from starlette.requests import ClientDisconnect, Request

MIN_RATE = 16 * 1024  # bytes/s, on average, after the first `timeout` seconds
DRAIN = 8 * 2**20  # bytes of a refused body read and dropped before the connection closes
WRITE_BATCH = 2**20  # bytes buffered before a write (and hash) in a thread


class BodyError(Exception):
    def __init__(self, status: int, message: str, close: bool = True) -> None:
        super().__init__(message)
        self.status, self.message, self.close = status, message, close


def declared_length(request: Request) -> int | None:
    text = request.headers.get("content-length")
    try:
        return int(text) if text is not None else None
    except ValueError:
        return None


async def chunks(request: Request, timeout: float):
    """The body's chunks as they arrive, within the deadlines (BodyError 408)."""
    loop = asyncio.get_running_loop()
    start, got = loop.time(), 0
    while True:
        wait = min(timeout, start + timeout + got / MIN_RATE - loop.time())
        try:
            if wait <= 0:
                raise TimeoutError
            message = await asyncio.wait_for(request.receive(), wait)
        except TimeoutError:
            raise BodyError(408, f"the request body came too slowly ({got:,} bytes in "
                                 f"{loop.time() - start:.0f} s); this server wants it without "
                                 f"pauses over {timeout:g} s and at {MIN_RATE // 1024} KiB/s "
                                 "or more") from None
        if message["type"] == "http.disconnect":
            raise ClientDisconnect()
        body = message.get("body", b"")
        got += len(body)
        if body:
            yield body
        if not message.get("more_body", False):
            return


async def drain(request: Request, timeout: float, already: int = 0) -> None:
    """Read and drop what remains of a refused body, up to DRAIN bytes."""
    got = already
    try:
        async for chunk in chunks(request, timeout):
            got += len(chunk)
            if got > DRAIN:
                return
    except (BodyError, ClientDisconnect):
        return


def _refuse_constant(name: str):
    raise ValueError(f"{name} is not a number JSON allows")


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text[:40]} is not a finite number")
    return value


async def read_json(request: Request, cap: int, timeout: float):
    """The body as JSON (any value; validation checks its shape)."""
    declared = declared_length(request)
    too_big = f"the request body is over {cap:,} bytes; a job is a small JSON object"
    if declared is not None and declared > cap:
        if declared <= DRAIN:
            await drain(request, timeout)
        raise BodyError(413, too_big)
    data = bytearray()
    async for chunk in chunks(request, timeout):
        data += chunk
        if len(data) > cap:
            await drain(request, timeout, len(data))
            raise BodyError(413, too_big)
    try:
        return json.loads(bytes(data), parse_constant=_refuse_constant, parse_float=_finite)
    except (ValueError, RecursionError) as e:
        raise BodyError(400, f"the request body is not JSON ({str(e)[:200]})",
                        close=False) from None


def _write(f, sha, parts: list[bytes]) -> None:
    for part in parts:
        sha.update(part)
        f.write(part)


async def receive_upload(request: Request, folder: Path, cap: int, room: int,
                         timeout: float) -> tuple[str, int, Path]:
    """Stream the body into `folder/.<uuid>.part` -> (sha256, bytes, that file). Refused over
    `cap` bytes (413) or over `room` (the disk left under --max-disk-gb: 507); the partial
    file is removed on any refusal or disconnect."""
    tmp = folder / f".{uuid.uuid4().hex}.part"
    sha, size = hashlib.sha256(), 0
    f = await asyncio.to_thread(open, tmp, "wb")
    try:
        parts: list[bytes] = []
        buffered = 0
        async for chunk in chunks(request, timeout):
            size += len(chunk)
            if size > cap:
                await drain(request, timeout, size)
                raise BodyError(413, f"the upload is over {cap:,} bytes, this server's limit "
                                     "(--max-upload-mb)")
            if size > room:
                raise BodyError(507, "the upload does not fit in the disk space this server "
                                     "may use (--max-disk-gb); delete old jobs or uploads "
                                     "(DELETE /api/jobs/ID, /api/uploads/ID)")
            parts.append(chunk)
            buffered += len(chunk)
            if buffered >= WRITE_BATCH:
                await asyncio.to_thread(_write, f, sha, parts)
                parts, buffered = [], 0
        if parts:
            await asyncio.to_thread(_write, f, sha, parts)
        await asyncio.to_thread(f.close)
    except BaseException:
        f.close()
        tmp.unlink(missing_ok=True)
        raise
    return sha.hexdigest(), size, tmp


def timed_protocol(seconds: float) -> type:
    """uvicorn's h11 protocol, closing a connection whose request head has not fully arrived
    within `seconds` of its first byte (or of the connection, for the first request)."""
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class TimedH11Protocol(H11Protocol):
        head_timeout = seconds
        _head_timer = None

        def _arm(self) -> None:
            if self._head_timer is None:
                self._head_timer = self.loop.call_later(self.head_timeout, self._too_slow)

        def _disarm(self) -> None:
            if self._head_timer is not None:
                self._head_timer.cancel()
                self._head_timer = None

        def _too_slow(self) -> None:
            self._head_timer = None
            if not self.transport.is_closing():
                self.transport.close()

        def connection_made(self, transport) -> None:
            super().connection_made(transport)
            self._arm()

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            if self.cycle is not None and not self.cycle.response_complete:
                self._disarm()  # a head arrived: the body has its own deadlines
            elif not self.transport.is_closing():
                self._arm()  # part of a head

        def on_response_complete(self) -> None:
            self._disarm()  # idle now: uvicorn's keep-alive timeout applies
            super().on_response_complete()

        def connection_lost(self, exc) -> None:
            self._disarm()
            super().connection_lost(exc)

    return TimedH11Protocol


__all__ = ["DRAIN", "MIN_RATE", "BodyError", "chunks", "declared_length", "drain", "read_json",
           "receive_upload", "timed_protocol"]

"""The worker <-> supervisor channel: typed frames over a Unix stream socket.

Wire format of one message: `<u32 header_len><u32 blob_len><header: UTF-8 JSON><blob: raw bytes>`. The header
is the frame's fields (sipbridge/frames.py), the blob its PCM if any. A stream socket keeps order per call,
which barge-in relies on (ClearPlayback after PlayAudio must not overtake it), and local Unix sockets cost
tens of microseconds per message (bench/ipc_latency.py measures it).

The worker side is blocking (`SyncChannel`: plain threads, one send lock); the supervisor side is asyncio
(`read_frame` / `write_frame` on a StreamReader/StreamWriter).
"""

from __future__ import annotations

import asyncio
import json
import socket
import struct
import threading

from sipbridge.frames import Frame, from_header, to_header

_PREFIX = struct.Struct("<II")
MAX_HEADER = 64 * 1024
MAX_BLOB = 16 * 1024 * 1024  # a 30 s turn at 8 kHz is 480 kB; anything near this is a bug


class ChannelClosed(Exception):
    """The other end closed the connection (or it broke)."""


class ProtocolError(Exception):
    """The peer sent something that is not a frame."""


def encode(frame: Frame) -> bytes:
    fields, blob = to_header(frame)
    header = json.dumps(fields, separators=(",", ":")).encode()
    return _PREFIX.pack(len(header), len(blob)) + header + blob


def decode(header: bytes, blob: bytes) -> Frame:
    try:
        fields = json.loads(header)
        return from_header(fields, blob)
    except (ValueError, TypeError) as exc:
        raise ProtocolError(f"bad frame: {exc}") from exc


def _check_sizes(header_len: int, blob_len: int) -> None:
    if header_len > MAX_HEADER or blob_len > MAX_BLOB:
        raise ProtocolError(f"frame too large: header {header_len} B, blob {blob_len} B")


class SyncChannel:
    """Blocking end of the channel (the worker). `send` is safe from any thread."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self._send_lock = threading.Lock()
        self._rfile = sock.makefile("rb", buffering=256 * 1024)

    @classmethod
    def connect(cls, path: str) -> SyncChannel:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.connect(path)
        return cls(sock)

    def send(self, frame: Frame) -> None:
        data = encode(frame)
        with self._send_lock:
            try:
                self.sock.sendall(data)
            except OSError as exc:
                raise ChannelClosed(str(exc)) from exc

    def _read_exact(self, n: int) -> bytes:
        data = self._rfile.read(n) if n else b""
        if len(data) != n:
            raise ChannelClosed("peer closed the channel")
        return data

    def recv(self) -> Frame:
        try:
            header_len, blob_len = _PREFIX.unpack(self._read_exact(_PREFIX.size))
            _check_sizes(header_len, blob_len)
            header = self._read_exact(header_len)
            blob = self._read_exact(blob_len)
        except OSError as exc:
            raise ChannelClosed(str(exc)) from exc
        return decode(header, blob)

    def close(self) -> None:
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()


async def read_frame(reader: asyncio.StreamReader) -> Frame:
    try:
        header_len, blob_len = _PREFIX.unpack(await reader.readexactly(_PREFIX.size))
        _check_sizes(header_len, blob_len)
        header = await reader.readexactly(header_len)
        blob = await reader.readexactly(blob_len) if blob_len else b""
    except (asyncio.IncompleteReadError, ConnectionError) as exc:
        raise ChannelClosed(str(exc)) from exc
    return decode(header, blob)


def write_frame(writer: asyncio.StreamWriter, frame: Frame) -> None:
    """Queue a frame on the transport (no await: ordering is the call order, flow control is drain())."""
    writer.write(encode(frame))

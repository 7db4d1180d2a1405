"""Wire encodings of the live stream: WebSocket server frames, SSE events, heartbeats.

Everything here is built once per message and the resulting bytes are handed unchanged to every
client of that encoding. Server-to-client WebSocket frames are never masked (RFC 6455 §5.1), so
the same frame is valid on every connection.
"""

from __future__ import annotations

import struct

OP_TEXT = 0x1
OP_PING = 0x9

_FIN = 0x80
_LEN16 = struct.Struct("!BBH")
_LEN64 = struct.Struct("!BBQ")


def ws_frame(payload: bytes, opcode: int = OP_TEXT) -> bytes:
    """One unfragmented, unmasked server frame carrying `payload`."""
    size = len(payload)
    first = _FIN | opcode
    if size < 126:
        header = bytes((first, size))
    elif size < 1 << 16:
        header = _LEN16.pack(first, 126, size)
    else:
        header = _LEN64.pack(first, 127, size)
    return header + payload


def sse_event(payload: bytes, cursor: int | None = None) -> bytes:
    """One SSE `data:` event. JSON payloads are single-line; Go's trailing newline is dropped
    because a bare newline inside an event would end the `data:` field early.

    A message's event carries its cursor as the event `id`: a browser's `EventSource` sends the
    last one back as `Last-Event-ID` when it reconnects, which resumes the stream right after it.
    Heartbeats and notices have none, so they leave the browser's last event id as it was."""
    data = b"data: " + payload.rstrip(b"\n") + b"\n\n"
    return data if cursor is None else b"id: %d\n%b" % (cursor, data)


def heartbeat_payload(timestamp: float, skipped: int = 0) -> bytes:
    """`{"message_type":"heartbeat","timestamp":<float>}`, plus `"skipped":N` when N > 0."""
    body = b'{"message_type":"heartbeat","timestamp":' + repr(float(timestamp)).encode()
    if skipped > 0:
        body += b',"skipped":%d' % skipped
    return body + b"}"


PING_FRAME = ws_frame(b"", OP_PING)

"""Defences of the ingest service against floods and bombs (no HTTP here).

- :func:`ipc_decoded_size`: how many rows and bytes an Arrow IPC stream decodes to, read from its
  message headers *before* anything is decompressed (a 2.5 KB ZSTD batch can decode to 67 MB);
- :class:`ConnectionLimits`: concurrent requests per client address and per API key;
- :func:`client_address`: the client of a request — the socket's peer, unless that peer is a
  trusted proxy named by the deployment, and only then the address the proxy appended to
  ``X-Forwarded-For`` (a client-sent ``X-Real-Ip`` is never believed).
"""

from __future__ import annotations

import ipaddress
import struct
import threading

import pyarrow as pa

from atomscale_lab.errors import AtomscaleError, ValidationError


class TooManyConnections(AtomscaleError):
    """Too many concurrent requests from one client or with one key (HTTP 429)."""

    http_status = 429
    retry_after = 1


class DecodedTooLarge(ValidationError):
    """An Arrow batch would decode to more bytes or rows than allowed (HTTP 413)."""

    http_status = 413


# Arrow IPC ``Message`` header types (format/Message.fbs)
_RECORD_BATCH, _DICTIONARY_BATCH = 3, 4


def _table(buf: bytes, pos: int):
    """A flatbuffer table at ``pos``: returns ``field(i) -> absolute position or None``."""
    vtable = pos - struct.unpack_from("<i", buf, pos)[0]
    vsize = struct.unpack_from("<H", buf, vtable)[0]

    def field(i: int) -> int | None:
        slot = 4 + 2 * i
        if slot + 2 > vsize:
            return None
        off = struct.unpack_from("<H", buf, vtable + slot)[0]
        return pos + off if off else None

    return field


def _deref(buf: bytes, pos: int) -> int:
    return pos + struct.unpack_from("<I", buf, pos)[0]


def _batch_size(meta: bytes, body: pa.Buffer) -> tuple[int, int]:
    """``(rows, decoded bytes)`` of one record-batch or dictionary-batch message."""
    msg = _table(meta, _deref(meta, 0))
    tpos, hpos = msg(1), msg(2)
    if tpos is None or hpos is None:
        return 0, 0
    htype = meta[tpos]
    if htype == _DICTIONARY_BATCH:
        dict_batch = _table(meta, _deref(meta, hpos))
        data = dict_batch(1)
        if data is None:
            return 0, 0
        hpos, htype = data, _RECORD_BATCH
    if htype != _RECORD_BATCH:
        return 0, 0
    rb = _table(meta, _deref(meta, hpos))
    rows = struct.unpack_from("<q", meta, rb(0))[0] if rb(0) is not None else 0
    compressed = rb(3) is not None
    total = 0
    if rb(2) is not None:
        vec = _deref(meta, rb(2))
        n = struct.unpack_from("<I", meta, vec)[0]
        view = memoryview(body)
        for i in range(n):
            offset, length = struct.unpack_from("<qq", meta, vec + 4 + 16 * i)
            if offset < 0 or length < 0 or offset + length > body.size:
                raise ValueError("a buffer lies outside the message body")
            if not compressed or length == 0:
                total += length
                continue
            if length < 8:
                raise ValueError("a compressed buffer is shorter than its length prefix")
            size = struct.unpack_from("<q", view, offset)[0]
            total += length - 8 if size == -1 else size
            if size < -1:
                raise ValueError("a negative uncompressed length")
    return rows, total


def ipc_decoded_size(data: bytes) -> tuple[int, int]:
    """``(rows, bytes)`` an Arrow IPC stream decodes to, without decompressing anything.

    Raises ``ValidationError`` if the stream's messages cannot be read.
    """
    rows = total = 0
    try:
        reader = pa.ipc.MessageReader.open_stream(pa.py_buffer(data))
        while True:
            try:
                msg = reader.read_next_message()
            except StopIteration:
                break
            r, n = _batch_size(msg.metadata.to_pybytes(), msg.body or pa.py_buffer(b""))
            rows, total = rows + r, total + n
    except (pa.ArrowInvalid, OSError, ValueError, struct.error, IndexError) as e:
        raise ValidationError(f"the body is not an Arrow IPC stream: {e}", field="body") from None
    return rows, total


def check_ipc(data: bytes, *, max_bytes: int, max_rows: int) -> None:
    """Raise ``DecodedTooLarge`` (413) if ``data`` would decode past ``max_bytes`` or
    ``max_rows``."""
    rows, size = ipc_decoded_size(data)
    if size > max_bytes:
        raise DecodedTooLarge(
            f"the Arrow batch decodes to {size} bytes, more than the "
            f"{max_bytes} allowed; send smaller batches",
            field="body",
        )
    if rows > max_rows:
        raise DecodedTooLarge(
            f"a batch may hold at most {max_rows} rows (got {rows})", field="rows"
        )


class ConnectionLimits:
    """Counts requests in flight per client address and per API key; refuses past a cap."""

    def __init__(self, per_client: int = 16, per_key: int = 32):
        self.per_client, self.per_key = per_client, per_key
        self._counts: dict[tuple[str, str], int] = {}
        self._lock = threading.Lock()

    def enter(self, kind: str, ident: str) -> None:
        """Take one slot of ``(kind, ident)`` (kind ``client`` or ``key``), or raise."""
        cap = self.per_client if kind == "client" else self.per_key
        with self._lock:
            n = self._counts.get((kind, ident), 0)
            if n >= cap:
                raise TooManyConnections(
                    f"too many concurrent requests from this {kind} (at most {cap}); retry shortly"
                )
            self._counts[(kind, ident)] = n + 1

    def leave(self, kind: str, ident: str) -> None:
        """Give back one slot."""
        with self._lock:
            n = self._counts.get((kind, ident), 0) - 1
            if n > 0:
                self._counts[(kind, ident)] = n
            else:
                self._counts.pop((kind, ident), None)

    def in_use(self, kind: str, ident: str) -> int:
        """Slots of ``(kind, ident)`` taken now."""
        with self._lock:
            return self._counts.get((kind, ident), 0)


def parse_networks(items) -> tuple:
    """``["10.0.0.0/8", "127.0.0.1"]`` (or one comma-separated string) → networks."""
    if isinstance(items, str):
        items = items.split(",")
    out = []
    for item in items or ():
        item = item.strip()
        if item:
            try:
                out.append(ipaddress.ip_network(item, strict=False))
            except ValueError:
                raise ValidationError(
                    f"not an address or network: {item!r}", field="trusted_proxies"
                ) from None
    return tuple(out)


def _trusted(addr: str, networks) -> bool:
    try:
        ip = ipaddress.ip_address(addr)
    except ValueError:
        return False
    return any(ip in n for n in networks)


def client_address(peer: str, forwarded_for: str | None, trusted) -> str:
    """The client of a request: ``peer`` unless it is a trusted proxy; then the right-most
    ``X-Forwarded-For`` entry that is not itself a trusted proxy (what the nearest trusted proxy
    saw). Entries further left were written by the client and are ignored."""
    if not trusted or not _trusted(peer, trusted) or not forwarded_for:
        return peer
    for hop in reversed([h.strip() for h in forwarded_for.split(",")]):
        try:
            ipaddress.ip_address(hop)
        except ValueError:
            return peer  # a proxy we trust would not write garbage: do not guess
        if not _trusted(hop, trusted):
            return hop
    return peer

"""The listed files of a verified commit log, grouped by bucket and parsed on first use.

A fresh reader starts from a signed checkpoint that lists every live file. Parsing all of them
costs time proportional to the table's size, while a one-run query needs only the files of its
run's bucket. Checkpoints of format 2 therefore keep their (sealed) file list grouped by bucket:
one small JSON index, then one JSON array per bucket, each a list of rows in the index's column
order. :class:`FileMap` holds the still unparsed groups as bytes and parses a group when a path
of it, or the whole map, is first asked for.

Plaintext of a format-2 file list::

    {"cols": ["bucket", "fp", "kv", "path", ...], "groups": [[bucket|null, offset, length], ...]}
    \\n
    <group bytes: [[3, "<fp>", 2, "bucket=03/part-....parquet", ...], ...]> ...

``offset``/``length`` address the bytes after the newline. A group holds exactly the entries
whose path lies in its bucket folder (``bucket=NN/``; ``null``: unbucketed files) and whose
``bucket`` field says the same; an entry that would break this is refused when parsed.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterable, Iterator, MutableMapping

from atomscale_lab.errors import IntegrityError

_MISSING = object()


def group_of(path: str) -> int | None:
    """The bucket folder of a listed path (``bucket=NN/part-...``), None for a top-level file."""
    if path.startswith("bucket=") and len(path) > 10 and path[9] == "/":
        try:
            return int(path[7:9])
        except ValueError:
            return None
    return None


class CorruptFileList(IntegrityError):
    """A format-2 file list whose index or groups do not parse or do not agree (a group is
    parsed on first use, so this can surface from any use of the map)."""


class FileMap(MutableMapping):
    """``path → entry`` of the listed files; groups of a checkpoint are parsed lazily.

    Shared by readers in several threads (a cached state): parsing a group is done under a lock
    and published before its bytes are dropped. Changing the map is for a state's owner only.
    """

    __slots__ = ("_groups", "_lazy", "_cols", "_lock", "_odd", "_label")

    def __init__(self, entries: Iterable[dict] = ()):
        self._groups: dict[int | None, dict[str, dict]] = {}
        self._lazy: dict[int | None, memoryview] = {}
        self._cols: tuple[str, ...] = ()
        self._lock = threading.Lock()
        self._odd = False  # an entry whose bucket field disagrees with its path was added
        self._label = ""
        for e in entries:
            self[e["path"]] = e

    @classmethod
    def from_groups(
        cls, cols: Iterable[str], lazy: dict[int | None, memoryview], label: str = ""
    ) -> FileMap:
        """A map of unparsed groups (see :func:`decode`); ``label`` names the table in errors."""
        m = cls()
        m._cols, m._label = tuple(cols), label
        m._lazy = dict(lazy)
        return m

    # -- groups -------------------------------------------------------------------------------

    def _group(self, g: int | None) -> dict[str, dict]:
        got = self._groups.get(g)
        if got is not None and g not in self._lazy:
            return got
        with self._lock:
            raw = self._lazy.get(g)
            if raw is None:
                return self._groups.setdefault(g, {})
            try:
                parsed = _parse_group(self._cols, g, raw)
            except ValueError as e:
                raise CorruptFileList(
                    f"{self._label}the commit-log checkpoint's file list is corrupt ({e})"
                ) from None
            self._groups[g] = parsed
            del self._lazy[g]
            return parsed

    def _everything(self) -> dict[int | None, dict[str, dict]]:
        for g in list(self._lazy):
            self._group(g)
        return self._groups

    def in_buckets(self, buckets: Iterable[int | None]) -> list[dict]:
        """Entries of the given buckets only (the others stay unparsed)."""
        buckets = set(buckets)
        if self._odd:
            return [e for e in self.values() if e.get("bucket") in buckets]
        out: list[dict] = []
        for b in buckets:
            out.extend(e for e in self._group(b).values() if e.get("bucket") == b)
        return out

    @property
    def unparsed(self) -> int:
        """Number of groups not parsed yet (diagnostics and tests)."""
        return len(self._lazy)

    # -- mapping ------------------------------------------------------------------------------

    def __getitem__(self, path: str) -> dict:
        return self._group(group_of(path))[path]

    def __setitem__(self, path: str, entry: dict) -> None:
        g = group_of(path)
        if entry.get("bucket") != g:
            self._odd = True
        self._group(g)[path] = entry

    def __delitem__(self, path: str) -> None:
        del self._group(group_of(path))[path]

    def __contains__(self, path) -> bool:
        return isinstance(path, str) and path in self._group(group_of(path))

    def __iter__(self) -> Iterator[str]:
        for d in list(self._everything().values()):
            yield from d

    def __len__(self) -> int:
        return sum(len(d) for d in self._everything().values())

    def pop(self, path: str, default=_MISSING):
        """Remove and return the entry of ``path`` (``default`` when not listed)."""
        d = self._group(group_of(path))
        if default is _MISSING:
            return d.pop(path)
        return d.pop(path, default)

    def values(self):
        """Every entry (parses every group)."""
        return [e for d in self._everything().values() for e in d.values()]

    def items(self):
        """Every ``(path, entry)`` (parses every group)."""
        return [kv for d in self._everything().values() for kv in d.items()]

    def copy(self) -> FileMap:
        """A map that can be changed without changing this one (unparsed bytes are shared)."""
        with self._lock:
            m = FileMap()
            m._cols, m._odd, m._label = self._cols, self._odd, self._label
            m._lazy = dict(self._lazy)
            m._groups = {g: dict(d) for g, d in self._groups.items() if g not in self._lazy}
        return m


def _parse_group(cols: tuple[str, ...], g: int | None, raw: memoryview) -> dict[str, dict]:
    """One group's entries; ValueError when it does not parse or does not belong to ``g``."""
    prefix = None if g is None else f"bucket={g:02d}/"  # g is 0..99 (see decode)
    n = len(cols)
    out = {}
    try:
        for row in json.loads(bytes(raw)):
            if len(row) != n:
                raise ValueError("a row has the wrong length")
            e = dict(zip(cols, row, strict=False))  # lengths checked above
            p = e["path"]
            # group_of(p) == g; for a bucket, starting with its folder says the same, faster
            ok = isinstance(p, str) and (group_of(p) is None if g is None else p.startswith(prefix))
            if not ok or e.get("bucket") != g or p in out:
                raise ValueError(f"{p!r} is in the wrong group")
            out[p] = e
    except (TypeError, KeyError):
        raise ValueError("a group does not parse") from None
    return out


def encode(entries: Iterable[dict]) -> bytes:
    """The format-2 file list of ``entries`` (see the module docstring).

    Entries whose ``bucket`` field disagrees with their path (none written by this store) cannot
    be grouped; :class:`ValueError` tells the caller to write the format-1 list instead.
    """
    entries = list(entries)
    cols = sorted({k for e in entries for k in e})
    groups: dict[int | None, list[list]] = {}
    for e in sorted(entries, key=lambda e: e["path"]):
        g = group_of(e["path"])
        if e.get("bucket") != g:
            raise ValueError(f"{e['path']} is listed with bucket {e.get('bucket')!r}")
        groups.setdefault(g, []).append([e.get(k) for k in cols])
    index, bodies, off = [], [], 0
    for g in sorted(groups, key=lambda g: -1 if g is None else g):
        body = json.dumps(groups[g], separators=(",", ":"), ensure_ascii=True).encode()
        index.append([g, off, len(body)])
        bodies.append(body)
        off += len(body)
    head = json.dumps({"cols": cols, "groups": index}, separators=(",", ":")).encode()
    return head + b"\n" + b"".join(bodies)


def decode(plain: bytes, label: str = "") -> FileMap:
    """A lazily parsed :class:`FileMap` of a format-2 file list; only the index is parsed.
    ValueError when the index is malformed."""
    nl = plain.find(b"\n")
    if nl < 0:
        raise ValueError("the file list has no index")
    try:
        index = json.loads(plain[:nl])
        cols = [str(c) for c in index["cols"]]
        groups = index["groups"]
    except (ValueError, TypeError, KeyError):
        raise ValueError("the file list's index does not parse") from None
    if "path" not in cols or len(set(cols)) != len(cols):
        raise ValueError("the file list's index names no paths")
    body = memoryview(plain)[nl + 1 :]
    lazy: dict[int | None, memoryview] = {}
    for item in groups:
        try:
            g, off, n = item
            if g is not None and (
                not isinstance(g, int) or isinstance(g, bool) or not 0 <= g < 100
            ):
                raise TypeError
            off, n = int(off), int(n)
        except (ValueError, TypeError):
            raise ValueError("the file list's index is malformed") from None
        if g in lazy or off < 0 or n < 0 or off + n > len(body):
            raise ValueError("the file list's index is malformed")
        lazy[g] = body[off : off + n]
    return FileMap.from_groups(cols, lazy, label)

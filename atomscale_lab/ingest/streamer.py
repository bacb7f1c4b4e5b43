"""Streaming rows from an instrument PC to the ingest service.

``push()`` only appends to an in-memory buffer and returns: acquisition is never blocked by
the network. A background thread cuts the buffer into batches (``batch_rows`` rows or every
``flush_interval`` seconds), writes each batch to an on-disk spool (encrypted with a key derived
from the API key), and sends the spool in order, deleting a file once the service acknowledged
it. When the service is unreachable the spool grows and is replayed later, in order, by this
streamer or by the next one started for the same run. Batch ids are fixed when a batch is cut, so
a retried batch is stored once. Transient failures are retried with exponential backoff and
jitter; a batch the service refuses as malformed (400/413) is moved to ``rejected/`` with the
reason, never silently dropped. One streamer per run, tool and category at a time.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import re
import secrets
import threading
import time
from pathlib import Path

import pyarrow as pa
import requests
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from atomscale_lab.schema import ARROW_STREAM

log = logging.getLogger(__name__)


class Unreachable(Exception):
    """The service could not be reached (or kept failing) after the retries."""


class Refused(Exception):
    """The service refused a request for good (4xx other than 408/429)."""

    def __init__(self, status: int, message: str):
        super().__init__(f"{status}: {message}")
        self.status = status


def default_spool_dir() -> Path:
    """``$ATOMSCALE_SPOOL`` or ``~/.atomscale/spool``."""
    return Path(os.environ.get("ATOMSCALE_SPOOL") or Path.home() / ".atomscale" / "spool")


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", text)[:100]


class Streamer:
    """Send rows of one run, tool and category to the ingest service.

    >>> with Streamer("https://ingest.lab:8443", key, "run-42", "mbe1", "process") as s:
    ...     s.push(time=now, channel="substrate_temperature", value=612.5, unit="C")

    ``verify`` is passed to requests (a CA bundle path, or True). ``spool_dir`` holds unsent
    batches (default :func:`default_spool_dir`).
    """

    def __init__(
        self,
        url: str,
        api_key: str,
        run_id: str,
        tool: str,
        category: str = "process",
        *,
        project: str | None = None,
        sample: str | None = None,
        method: str | None = None,
        operator: str | None = None,
        batch_rows: int = 10_000,
        flush_interval: float = 1.0,
        spool_dir: str | Path | None = None,
        verify=True,
        timeout: float = 30.0,
        max_retries: int = 4,
        backoff: float = 0.2,
        max_backoff: float = 30.0,
        start: bool = True,
    ):
        self.url = url.rstrip("/")
        self._auth = {"Authorization": f"Bearer {api_key}"}
        self.run_id, self.tool, self.category = run_id, tool, category
        self.meta = {
            k: v
            for k, v in {
                "project": project,
                "sample": sample,
                "method": method,
                "operator": operator,
            }.items()
            if v is not None
        }
        self.batch_rows, self.flush_interval = batch_rows, flush_interval
        self.verify, self.timeout = verify, timeout
        self.max_retries, self.backoff, self.max_backoff = max_retries, backoff, max_backoff
        self.spool = Path(spool_dir or default_spool_dir()) / _safe(f"{run_id}__{tool}__{category}")
        self.spool.mkdir(parents=True, exist_ok=True, mode=0o700)
        (self.spool / "stream.json").write_text(
            json.dumps({"run_id": run_id, "tool": tool, "category": category, **self.meta})
        )
        self._aead = AESGCM(
            HKDF(
                algorithm=hashes.SHA256(),
                length=32,
                salt=None,
                info=b"atomscale-lab/streamer-spool/v1",
            ).derive(api_key.encode())
        )
        self._http = requests.Session()
        self._http.trust_env = False  # REQUESTS_CA_BUNDLE would override verify=
        self._nonce = secrets.token_hex(6)
        existing = self._spooled()
        self._seq = int(existing[-1].stem) + 1 if existing else 1
        self._buf: list = []
        self._buf_rows = 0
        self._buf_since: float | None = None
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._flush_req = threading.Event()
        self._idle = threading.Event()
        self.stream_id: str | None = None
        self.sent_batches = self.sent_rows = self.duplicates = self.rejected = 0
        self.last_error: str | None = None
        self.fatal: str | None = None
        self._down_until = 0.0
        self._delay = backoff
        self._thread = threading.Thread(target=self._loop, name=f"streamer-{run_id}", daemon=True)
        if start:
            self._thread.start()

    # -- the acquisition side -----------------------------------------------------------------
    def push(self, rows=None, **row) -> None:
        """Queue rows: one row as keywords, a dict, a list of dicts, a DataFrame or Arrow table.

        Returns at once; never waits for the network.
        """
        if rows is None:
            rows = [row]
        elif isinstance(rows, dict):
            rows = [rows]
        n = rows.num_rows if hasattr(rows, "num_rows") else len(rows)
        with self._lock:
            self._buf.append(rows)
            self._buf_rows += n
            if self._buf_since is None:
                self._buf_since = time.monotonic()
            full = self._buf_rows >= self.batch_rows
        self._idle.clear()
        if full:
            self._wake.set()

    def flush(self, timeout: float | None = 30.0) -> bool:
        """Cut the buffer now and wait until the spool is sent; False if it is not (yet)."""
        self._idle.clear()
        self._flush_req.set()
        self._wake.set()
        return self._idle.wait(timeout) and not self.fatal and not self._spooled()

    def close(self, finalize: bool = True, timeout: float = 30.0) -> bool:
        """Send what is left and finalize the stream; unsent batches stay in the spool.

        Returns True when everything was acknowledged (and the stream finalized).
        """
        done = self.flush(timeout) if self._thread.is_alive() else False
        self._stop.set()
        self._flush_req.clear()  # a sender still retrying gives up now
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(timeout=max(1.0, timeout))
        if done and not self._spooled() and finalize and self.stream_id:
            try:
                self._request("POST", f"/streams/{self.stream_id}/finalize")
            except (Unreachable, Refused) as e:
                self.last_error = str(e)
                return False
        ok = done and not self._spooled()
        if not ok:
            log.warning(
                "streamer for run %s: %s batch(es) left in the spool %s; they are sent "
                "when a streamer for this run runs again",
                self.run_id,
                len(self._spooled()),
                self.spool,
            )
        self._http.close()
        return ok

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    @classmethod
    def drain(
        cls,
        url: str,
        api_key: str,
        spool_dir: str | Path | None = None,
        timeout: float = 60.0,
        **kw,
    ) -> dict[str, int]:
        """Send every run's leftover spool in ``spool_dir`` (e.g. after a crash of the logger).

        Streams are finalized only when their spool empties. Returns ``{run_id: batches left}``.
        """
        root = Path(spool_dir or default_spool_dir())
        left = {}
        for meta_path in sorted(root.glob("*/stream.json")):
            if not any(meta_path.parent.glob("*.batch")):
                continue
            meta = json.loads(meta_path.read_text())
            s = cls(
                url,
                api_key,
                meta.pop("run_id"),
                meta.pop("tool"),
                meta.pop("category"),
                spool_dir=root,
                **meta,
                **kw,
            )
            s.close(timeout=timeout)
            left[s.run_id] = s.pending
        return left

    @property
    def pending(self) -> int:
        """Batches cut but not yet acknowledged (in the spool)."""
        return len(self._spooled())

    # -- the sending side ---------------------------------------------------------------------
    def _loop(self) -> None:
        while True:
            self._wake.wait(timeout=min(self.flush_interval, 0.5))
            self._wake.clear()
            stopping = self._stop.is_set()
            try:
                self._cut(force=self._flush_req.is_set() or stopping)
                sent_all = self._send_spool()
            except Exception as e:  # never let the thread die: rows are in the spool
                log.exception("streamer for run %s: unexpected error", self.run_id)
                self.last_error, sent_all = str(e), False
            if self._flush_req.is_set() and (sent_all or self.fatal):
                with self._lock:
                    empty = self._buf_rows == 0
                if empty:
                    self._flush_req.clear()
                    self._idle.set()
            if stopping:
                return

    def _cut(self, force: bool) -> None:
        with self._lock:
            if not self._buf:
                return
            due = (
                force
                or self._buf_rows >= self.batch_rows
                or time.monotonic() - (self._buf_since or 0) >= self.flush_interval
            )
            if not due:
                return
            items, self._buf, self._buf_rows, self._buf_since = self._buf, [], 0, None
        table = _to_table(items)
        for off in range(0, table.num_rows, self.batch_rows):
            self._spool_batch(table.slice(off, self.batch_rows))

    def _spool_batch(self, table: pa.Table) -> None:
        sink = pa.BufferOutputStream()
        with pa.ipc.new_stream(sink, table.schema) as w:
            w.write_table(table)
        body = sink.getvalue().to_pybytes()
        seq = self._seq
        self._seq += 1
        batch_id = f"{self._nonce}-{seq:08d}"
        name = f"{seq:012d}.batch"
        head = json.dumps({"batch_id": batch_id, "rows": table.num_rows}).encode()
        nonce = secrets.token_bytes(12)
        blob = nonce + self._aead.encrypt(
            nonce, len(head).to_bytes(4, "big") + head + body, name.encode()
        )
        tmp = self.spool / f".{name}.tmp"
        tmp.write_bytes(blob)
        os.replace(tmp, self.spool / name)

    def _spooled(self) -> list[Path]:
        return sorted(p for p in self.spool.glob("*.batch") if p.stem.isdigit())

    def _read_spooled(self, path: Path) -> tuple[str, bytes]:
        blob = path.read_bytes()
        try:
            plain = self._aead.decrypt(blob[:12], blob[12:], path.name.encode())
        except InvalidTag:
            raise Refused(
                0, f"spool file {path.name} cannot be decrypted with this API key"
            ) from None
        n = int.from_bytes(plain[:4], "big")
        head = json.loads(plain[4 : 4 + n])
        return head["batch_id"], plain[4 + n :]

    def _send_spool(self) -> bool:
        """Send spooled batches in order; True when the spool is empty."""
        if self.fatal or time.monotonic() < self._down_until:
            return not self._spooled()
        try:
            for path in self._spooled():
                if self._stop.is_set() and not self._flush_req.is_set():
                    return False
                try:
                    batch_id, body = self._read_spooled(path)
                    if self.stream_id is None:
                        self._open()
                    ack = self._request(
                        "POST",
                        f"/streams/{self.stream_id}/batches",
                        data=body,
                        headers={"Content-Type": ARROW_STREAM, "X-Batch-Id": batch_id},
                        give_up=self._giving_up,
                    )
                except Refused as e:
                    if e.status in (401, 403):
                        self.fatal = self.last_error = str(e)
                        log.error(
                            "streamer for run %s: the service refuses the API key (%s); "
                            "batches stay in the spool %s",
                            self.run_id,
                            e,
                            self.spool,
                        )
                        return False
                    if e.status == 404:  # the stream vanished (state reset): open it again
                        self.stream_id = None
                        return False
                    self._reject(path, e)
                    continue
                self.sent_batches += 1
                self.sent_rows += int(ack.get("rows", 0))
                self.duplicates += bool(ack.get("duplicate"))
                path.unlink()
            self._delay = self.backoff
            return True
        except Unreachable as e:
            self.last_error = str(e)
            self._down_until = time.monotonic() + self._delay
            self._delay = min(self.max_backoff, self._delay * 2)
            log.warning(
                "streamer for run %s: service unreachable (%s); %s batch(es) spooled",
                self.run_id,
                e,
                len(self._spooled()),
            )
            return False

    def _reject(self, path: Path, err: Refused) -> None:
        rej = self.spool / "rejected"
        rej.mkdir(exist_ok=True, mode=0o700)
        os.replace(path, rej / path.name)
        (rej / f"{path.name}.reason").write_text(str(err) + "\n")
        self.rejected += 1
        self.last_error = str(err)
        log.error(
            "streamer for run %s: batch %s refused (%s); kept in %s",
            self.run_id,
            path.name,
            err,
            rej,
        )

    def _giving_up(self) -> bool:
        return self._stop.is_set() and not self._flush_req.is_set()

    def _open(self) -> None:
        doc = self._request(
            "POST",
            "/streams",
            json={"run_id": self.run_id, "tool": self.tool, "category": self.category, **self.meta},
            give_up=self._giving_up,
        )
        self.stream_id = doc["id"]

    def _request(self, method: str, path: str, *, give_up=None, **kw) -> dict:
        """One request with retries (backoff with jitter) on network errors, 5xx, 408 and 429."""
        delay = self.backoff
        last = "no attempt"
        headers = {**self._auth, **kw.pop("headers", {})}
        for attempt in range(self.max_retries + 1):
            try:
                r = self._http.request(
                    method,
                    self.url + path,
                    headers=headers,
                    timeout=self.timeout,
                    verify=self.verify,
                    **kw,
                )
            except requests.RequestException as e:
                last = type(e).__name__
                wait = delay
            else:
                if r.status_code < 400:
                    return r.json()
                try:
                    msg = r.json().get("message", r.text)
                except ValueError:
                    msg = r.text[:200]
                if r.status_code not in (408, 429) and r.status_code < 500:
                    raise Refused(r.status_code, msg)
                last = f"{r.status_code}: {msg}"
                retry_after = r.headers.get("Retry-After", "")
                wait = float(retry_after) if retry_after.isdigit() else delay
            if attempt < self.max_retries:
                time.sleep(min(self.max_backoff, wait) * random.uniform(0.5, 1.5))
                delay = min(self.max_backoff, delay * 2)
            if give_up is not None and give_up():
                break
        raise Unreachable(last)


def _to_table(items: list) -> pa.Table:
    """Concatenate pushed items (dict lists, DataFrames, Arrow tables) into one Arrow table."""
    tables, dicts = [], []

    def flush_dicts():
        if dicts:
            names = list(dict.fromkeys(k for d in dicts for k in d))
            tables.append(pa.table({k: [d.get(k) for d in dicts] for k in names}))
            dicts.clear()

    for it in items:
        if isinstance(it, list):
            dicts.extend(it)
            continue
        flush_dicts()
        if isinstance(it, pa.RecordBatch):
            it = pa.Table.from_batches([it])
        elif not isinstance(it, pa.Table):
            it = pa.Table.from_pandas(it, preserve_index=False)
        tables.append(it)
    flush_dicts()
    if len(tables) == 1:
        return tables[0]
    return pa.concat_tables(tables, promote_options="permissive")


def batch_digest(body: bytes) -> str:
    """The digest the service keeps for a batch body (to tell a retry from a reused id)."""
    return hashlib.sha256(body).hexdigest()

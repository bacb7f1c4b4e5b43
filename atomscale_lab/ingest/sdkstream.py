"""Streaming through the Atomscale-compatible API: initialize, chunks, finalize (a base of
:class:`~atomscale_lab.ingest.sdkapi.SdkApi`; chunks go through the ingest core's WAL)."""

from __future__ import annotations

import hashlib
import logging
import time
from datetime import UTC, datetime

import numpy as np
import pyarrow as pa

from atomscale_lab import schema
from atomscale_lab.errors import NotFound, ValidationError
from atomscale_lab.ingest.core import BatchConflict, NotYetStored
from atomscale_lab.ingest.sdkstate import (
    FINALIZE_GRACE,
    FINALIZE_QUIET,
    STATUS,
    _digest,
    _floats,
    _now,
    _slug,
)

log = logging.getLogger(__name__)


class SdkStreaming:
    """The SDK streamer's calls: a run and its stream, chunks stored once each, finalize."""

    # -- streaming ----------------------------------------------------------------------------
    def initialize(self, key, body: dict) -> dict:
        """``POST tool-state/stream/initialize``: a new run and its tool_state ingest stream."""
        name = body.get("stream_name")
        if name is not None and not isinstance(name, str):
            raise ValidationError("stream_name must be text", field="stream_name")
        name = (name or "").strip() or f"sdk-stream-{datetime.now(UTC):%Y%m%dT%H%M%SZ}"
        source = body.get("synth_source_id")
        if source is not None and (not isinstance(source, int) or isinstance(source, bool)):
            raise ValidationError("synth_source_id must be an integer", field="synth_source_id")
        tool = f"instrument-{source}" if source is not None else "sdk"
        project = None
        if body.get("project_id"):
            project = self._project_name(key, body["project_id"])
        with self._init_lock:
            taken = {r["run_id"] for r in self._runs(key.org)}
            taken |= {
                self._seal.unseal(key.org, box, f"{key.org}/{did}/run")
                for did, box in self.state.sql(
                    "SELECT data_id, run_id FROM items WHERE org=?", (key.org,)
                )
            }
            base = _slug(name)
            run_id, n = base, 1
            while run_id in taken:
                n += 1
                run_id = f"{base}-{n}"
            st = self.core.open_stream(key, run_id, tool, "tool_state", project=project)
            data_id = run_id
            did = self._did(key.org, data_id)
            self.state.sql(
                "INSERT INTO items VALUES (?,?,?,?,?,?)",
                (
                    key.org,
                    did,
                    self._seal.seal(key.org, run_id, f"{key.org}/{did}/run"),
                    st["id"],
                    _now(),
                    key.actor,
                ),
            )
        self.audit(key, "sdk.stream_initialize", data_id=data_id, run_id=run_id, stream=st["id"])
        return {"data_id": data_id, "processed_data_id": data_id}

    def _item(self, key, data_id) -> tuple[str, str]:
        if not isinstance(data_id, str):
            raise ValidationError("data_id must be text", field="data_id")
        did = self._did(key.org, data_id)
        row = self.state.sql(
            "SELECT run_id, stream_id FROM items WHERE org=? AND data_id=?", (key.org, did)
        )
        if not row:
            raise NotFound(f"no stream {data_id!r}")
        return self._seal.unseal(key.org, row[0][0], f"{key.org}/{did}/run"), row[0][1]

    def chunk(self, key, body: dict, *, multi: bool) -> dict:
        """``POST tool-state/stream/chunk[/multi]``: points through the ingest WAL, once each.

        A retried ``(data_id, channel, chunk_index)`` is acknowledged without storing it again;
        the same triple with other points is refused (409).
        """
        data_id = body.get("data_id")
        _, stream_id = self._item(key, data_id)
        idx = body.get("chunk_index")
        if not isinstance(idx, int) or isinstance(idx, bool) or idx < 0:
            raise ValidationError("chunk_index must be an integer >= 0", field="chunk_index")
        if multi:
            chans = body.get("channels")
            if not isinstance(chans, dict) or not chans:
                raise ValidationError("channels must be a non-empty object", field="channels")
        else:
            chans = {
                body.get("channel_name"): {
                    k: body.get(k) for k in ("timestamps", "values", "units")
                }
            }
        parsed = {}
        for name, ch in chans.items():
            if not isinstance(name, str) or not name.strip() or len(name) > 200:
                raise ValidationError(
                    "a channel name must be 1-200 characters", field="channel_name"
                )
            if not isinstance(ch, dict):
                raise ValidationError(f"channel {name!r} must be an object", field="channels")
            ts = _floats(ch.get("timestamps"), "timestamps", allow_null=False)
            vs = _floats(ch.get("values"), "values", allow_null=True)
            if len(ts) != len(vs):
                raise ValidationError(
                    f"channel {name!r}: timestamps and values differ in length", field="values"
                )
            if not len(ts):
                raise ValidationError(f"channel {name!r} has no points", field="timestamps")
            if not np.isfinite(ts).all() or (np.abs(ts) > 1e11).any():
                raise ValidationError(
                    f"channel {name!r}: timestamps must be Unix seconds", field="timestamps"
                )
            units = ch.get("units")
            if units is not None and not isinstance(units, str):
                raise ValidationError("units must be text", field="units")
            parsed[name] = (ts, vs, units, _digest([ch.get("timestamps"), ch.get("values"), units]))
        ident = (key.org, data_id)
        with self._cond:
            self._inflight[ident] += 1
            self._last_chunk[ident] = time.monotonic()
        try:
            return self._store_chunk(key, data_id, stream_id, idx, parsed)
        finally:
            with self._cond:
                self._inflight[ident] -= 1
                self._last_chunk[ident] = time.monotonic()
                self._cond.notify_all()

    def _store_chunk(self, key, data_id, stream_id, idx, parsed) -> dict:
        marks = ",".join("?" * len(parsed))
        known = dict(
            self.state.sql(
                f"SELECT channel, digest FROM chunks WHERE org=? AND data_id=? AND chunk_index=? "  # noqa: S608 - placeholders only
                f"AND channel IN ({marks})",
                (key.org, self._did(key.org, data_id), idx, *parsed),
            )
        )
        for name, (*_, digest) in parsed.items():
            if name in known and known[name] != digest:
                raise BatchConflict(
                    f"chunk {idx} of channel {name!r} was already received with other points"
                )
        pending = sorted(n for n in parsed if n not in known)
        if not pending:
            return {"data_id": data_id, "chunk_index": idx, "points": 0, "duplicate": True}
        us = np.concatenate([np.round(parsed[n][0] * 1e6).astype(np.int64) for n in pending])
        table = pa.table(
            {
                "time": pa.array(us, pa.int64()).cast(schema.TS),
                "channel": pa.array(
                    [n for n in pending for _ in range(len(parsed[n][0]))], pa.string()
                ),
                "value": pa.array(
                    np.concatenate([parsed[n][1] for n in pending]), pa.float64(), from_pandas=True
                ),
                "unit": pa.array(
                    [parsed[n][2] for n in pending for _ in range(len(parsed[n][0]))], pa.string()
                ),
            }
        )
        tag = hashlib.sha256("\x00".join(pending).encode()).hexdigest()[:16]
        ack = self.core.add_batch(key, stream_id, f"sdk.{idx}.{tag}", table)
        with self.state.tx() as db:
            for n in pending:
                db.execute(
                    "INSERT INTO chunks VALUES (?,?,?,?,?,?) ON CONFLICT DO NOTHING",
                    (key.org, self._did(key.org, data_id), n, idx, parsed[n][3], len(parsed[n][0])),
                )
        return {
            "data_id": data_id,
            "chunk_index": idx,
            "points": table.num_rows,
            "duplicate": ack["duplicate"],
        }

    def finalize(self, key, data_id: str, *, timeout: float = 30.0) -> dict:
        """``POST tool-state/stream/{id}/finalize``: wait for chunks in flight, then close."""
        run_id, stream_id = self._item(key, data_id)
        ident = (key.org, data_id)
        deadline = time.monotonic() + FINALIZE_GRACE
        with self._cond:
            while time.monotonic() < deadline:
                quiet = time.monotonic() - self._last_chunk.get(ident, 0.0)
                if not self._inflight.get(ident) and quiet >= FINALIZE_QUIET:
                    break
                self._cond.wait(max(0.01, min(FINALIZE_QUIET - quiet, deadline - time.monotonic())))
        deadline = time.monotonic() + timeout
        while True:
            try:
                st = self.core.finalize(key, stream_id)
                break
            except NotYetStored:
                if time.monotonic() > deadline:
                    raise
        self.audit(key, "sdk.stream_finalize", data_id=data_id, run_id=run_id, points=st["rows"])
        return {
            "data_id": data_id,
            "status": STATUS.get(st["status"], st["status"]),
            "points": st["rows"],
        }

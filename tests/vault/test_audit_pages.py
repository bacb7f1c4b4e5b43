"""Audit pages are read from the end of the log: a recent page reads a bounded part of the file,
the same events as a full scan, for every page and filter."""

from __future__ import annotations

import builtins

from atomscale_lab.vault import audit as audit_mod
from atomscale_lab.vault.audit import AuditLog
from atomscale_lab.vault.db import Database
from tests.support.auditlog import lines, open_log


def _full_scan(log, actor=None, action=None):
    import json

    events = [json.loads(ln) for ln in b"".join(lines(log)).split(b"\n") if ln]
    out = []
    for ev in reversed(events):
        if actor is not None and ev["actor"] != actor:
            continue
        if action is not None and not (
            ev["action"] == action
            or (action.endswith(".*") and ev["action"].startswith(action[:-1]))
        ):
            continue
        out.append(ev["seq"])
    return out


def test_pages_match_a_full_scan(tmp_path, database):
    log = open_log(tmp_path, database, "acme", b"k" * 32)
    for i in range(700):
        log.record(
            f"user{i % 7}", "data.read" if i % 3 else "config.change", detail="x" * (i % 50), i=i
        )
    for actor, action in (
        (None, None),
        ("user3", None),
        (None, "config.*"),
        ("user1", "data.read"),
    ):
        expected = _full_scan(log, actor, action)
        for offset, limit in ((0, 10), (5, 100), (95, 50), (len(expected) - 3, 10)):
            got = [
                e["seq"] for e in log.events(actor=actor, action=action, limit=limit, offset=offset)
            ]
            assert got == expected[offset : offset + limit], (actor, action, offset, limit)
    assert log.verify() == 700


def test_a_recent_page_reads_only_the_end_of_a_long_log(tmp_path, monkeypatch):
    log = AuditLog(tmp_path / "a.log", "acme", b"k" * 32)
    for i in range(3000):
        log.record("ann", "data.read", table="process/series", run_ids=[f"run-{i}"], rows=i)
    size = log.path.stat().st_size
    read = []
    real_open = builtins.open

    class Counting:
        def __init__(self, f):
            self.f = f

        def read(self, n=-1):
            data = self.f.read(n)
            read.append(len(data))
            return data

        def __getattr__(self, name):
            return getattr(self.f, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

    def counting_open(path, mode="r", *a, **kw):
        f = real_open(path, mode, *a, **kw)
        return Counting(f) if str(path) == str(log.path) else f

    monkeypatch.setattr(audit_mod, "open", counting_open, raising=False)
    monkeypatch.setattr(
        type(log.path),
        "read_bytes",
        lambda self: (read.append(self.stat().st_size), real_open(self, "rb").read())[1],
    )
    events = log.events(limit=20)
    assert [e["seq"] for e in events] == list(range(3000, 2980, -1))
    assert 0 < sum(read) < size / 10, (sum(read), size)


def test_concurrent_records_share_one_fsync_and_stay_chained(tmp_path, monkeypatch):
    import os
    import threading
    import time

    log = AuditLog(tmp_path / "a.log", "acme", b"k" * 32)
    log.record("ann", "data.read", n=-1)  # the file exists: no directory fsync below
    group = audit_mod._group_of(log.path)
    syncs = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (syncs.append(fd), real_fsync(fd))[1])
    with group.writer:  # hold the file: ten threads queue their events meanwhile
        threads = [
            threading.Thread(target=log.record, args=(f"u{i}", "data.read"), kwargs={"n": i})
            for i in range(10)
        ]
        for t in threads:
            t.start()
        deadline = time.monotonic() + 30
        while len(group.pending) < 10 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert len(group.pending) == 10
    for t in threads:
        t.join(30)
    assert len(syncs) == 1  # one write and one fsync for the ten events
    assert log.verify() == 11
    assert sorted(e["detail"]["n"] for e in log.events(limit=20)) == list(range(-1, 10))


def test_a_recent_page_reads_only_the_newest_rows_on_postgres(tmp_path, pg_url, monkeypatch):
    from tests.support.postgres import upgraded

    log = open_log(tmp_path, upgraded(pg_url), "acme", b"k" * 32)
    for i in range(1200):
        log.record("ann", "data.read", table="process/series", run_ids=[f"run-{i}"], rows=i)
    read = []
    real_sql = Database.sql

    def counting_sql(self, query, args=()):
        rows = real_sql(self, query, args)
        read.append(len(rows))
        return rows

    monkeypatch.setattr(Database, "sql", counting_sql)
    events = log.events(limit=20)
    assert [e["seq"] for e in events] == list(range(1200, 1180, -1))
    assert 0 < sum(read) <= 500, sum(read)  # one page of rows, not the log
    assert [e["seq"] for e in log.events(limit=5, offset=1195)] == [5, 4, 3, 2, 1]


def test_concurrent_records_share_one_transaction_on_postgres(tmp_path, pg_url, monkeypatch):
    import threading
    import time

    from tests.support.postgres import upgraded

    log = open_log(tmp_path, upgraded(pg_url), "acme", b"k" * 32)
    log.record("ann", "data.read", n=-1)
    group = audit_mod._group_of(log.path)
    batches = []
    real_write = AuditLog._write_rows
    monkeypatch.setattr(
        AuditLog, "_write_rows", lambda self, b: (batches.append(len(b)), real_write(self, b))[1]
    )
    with group.writer:  # hold the log: ten threads queue their events meanwhile
        threads = [
            threading.Thread(target=log.record, args=(f"u{i}", "data.read"), kwargs={"n": i})
            for i in range(10)
        ]
        for t in threads:
            t.start()
        deadline = time.monotonic() + 30
        while len(group.pending) < 10 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert len(group.pending) == 10
    for t in threads:
        t.join(30)
    assert batches == [10]  # one transaction for the ten events
    assert log.verify() == 11
    assert sorted(e["detail"]["n"] for e in log.events(limit=20)) == list(range(-1, 10))

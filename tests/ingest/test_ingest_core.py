"""The ingest core without HTTP: run states, idle interruption, restart, compaction."""

import time
from datetime import UTC, datetime, timedelta

import pytest

from atomscale_lab.errors import NotFound, ValidationError
from atomscale_lab.ingest.core import IngestCore, StreamClosed
from tests.support.s3 import state_backend_per_deployment  # noqa: F401 - state_backend


def _rows(start, n):
    t0 = datetime(2026, 5, 1, tzinfo=UTC)
    return [
        {"time": t0 + timedelta(seconds=start + i), "channel": "T", "value": float(i)}
        for i in range(n)
    ]


def _status(deployment, run_id):
    return deployment.rows("acme", "process/runs", run_id).to_pylist()[0]["status"]


def test_states_idle_restart_and_finalize(deployment):
    key = deployment.keys.authenticate(deployment.key(), client="t")
    core = IngestCore(deployment.vault, idle_timeout=0.2)
    st = core.open_stream(key, "run-s", "mbe1", "process")
    assert st["status"] == "active" and _status(deployment, "run-s") == "active"
    core.add_batch(key, st["id"], "1", _rows(0, 10))
    time.sleep(0.3)
    assert core.check_idle() == [st["id"]]
    assert core.stream(key, st["id"])["status"] == "interrupted"
    assert _status(deployment, "run-s") == "interrupted"
    core.add_batch(key, st["id"], "2", _rows(10, 10))  # a batch resumes the stream
    assert core.stream(key, st["id"])["status"] == "active"
    assert _status(deployment, "run-s") == "active"
    core.close()
    # A restart while the stream was live: interrupted, and the WAL is replayed.
    core = IngestCore(deployment.vault, idle_timeout=60)
    assert core.stream(key, st["id"])["status"] == "interrupted"
    assert _status(deployment, "run-s") == "interrupted"
    assert deployment.rows("acme", "process/series", "run-s").num_rows == 20
    # Opening the same run/tool/category again resumes the same stream.
    assert core.open_stream(key, "run-s", "mbe1", "process")["id"] == st["id"]
    done = core.finalize(key, st["id"])
    assert done["status"] == "complete" and _status(deployment, "run-s") == "complete"
    with pytest.raises(StreamClosed):
        core.add_batch(key, st["id"], "3", _rows(20, 1))
    core.close()


def test_run_stays_active_while_another_stream_of_it_is_open(deployment):
    key = deployment.keys.authenticate(deployment.key(), client="t")
    core = IngestCore(deployment.vault)
    a = core.open_stream(key, "run-2", "mbe1", "process")
    b = core.open_stream(key, "run-2", "mbe1", "tool_state")
    core.add_batch(key, a["id"], "1", _rows(0, 5))
    core.add_batch(key, b["id"], "1", _rows(0, 5))
    core.finalize(key, a["id"])
    assert _status(deployment, "run-2") == "active"
    core.finalize(key, b["id"])
    assert _status(deployment, "run-2") == "complete"
    assert (
        deployment.rows("acme", "tool_state/readings", "run-2").column("tool").to_pylist()
        == ["mbe1"] * 5
    )
    core.close()


def test_small_flushes_are_compacted(deployment):
    key = deployment.keys.authenticate(deployment.key(), client="t")
    core = IngestCore(deployment.vault)
    st = core.open_stream(key, "run-c", "mbe1", "process")
    for b in range(6):
        core.add_batch(key, st["id"], str(b), _rows(b * 10, 10))
        core.flush()
    table = deployment.vault.store("acme").table("process/series")
    assert len(table.files()) == 6
    assert core.compact() >= 1
    assert len(table.files()) == 1 and table.num_rows() == 60
    core.close()


def test_other_orgs_streams_and_bad_ids(deployment):
    acme = deployment.keys.authenticate(deployment.key("acme"), client="t")
    beta = deployment.keys.authenticate(deployment.key("beta"), client="t")
    core = IngestCore(deployment.vault)
    st = core.open_stream(acme, "run-x", "mbe1", "process")
    with pytest.raises(NotFound):
        core.add_batch(beta, st["id"], "1", _rows(0, 1))
    with pytest.raises(NotFound):
        core.finalize(beta, st["id"])
    with pytest.raises(ValidationError, match="batch_id"):
        core.add_batch(acme, st["id"], "../../etc", _rows(0, 1))
    with pytest.raises(ValidationError, match="run_id"):
        core.open_stream(acme, "", "mbe1", "process")
    core.close()


def test_a_deleted_org_stops_ingest_and_its_keys(deployment):
    from atomscale_lab.ingest.apikeys import InvalidApiKey

    plain = deployment.key("beta")
    key = deployment.keys.authenticate(plain, client="t")
    core = IngestCore(deployment.vault)
    st = core.open_stream(key, "run-d", "mbe1", "process")
    core.add_batch(key, st["id"], "1", _rows(0, 3))
    core.flush()
    core.add_batch(key, st["id"], "2", _rows(3, 3))
    deployment.vault.delete_org("beta", shred=True)
    with pytest.raises(InvalidApiKey):
        deployment.keys.authenticate(plain, client="t")
    with pytest.raises(Exception, match="beta"):
        core.flush()
    assert core.stream(key, st["id"])["status"] == "error"
    assert not (core.state_dir / "wal" / "beta").exists()
    assert core.flush() == 0  # the deleted org is gone from the flusher's work
    with pytest.raises(StreamClosed):
        core.add_batch(key, st["id"], "3", _rows(6, 1))
    core.close()
    # A restart with the WAL of a deleted org still starts (and serves the other orgs).
    core = IngestCore(deployment.vault)
    acme = deployment.keys.authenticate(deployment.key("acme"), client="t")
    assert core.open_stream(acme, "run-a", "mbe1", "process")["status"] == "active"
    core.close()


def test_back_pressure_when_the_wal_is_behind(deployment):
    from atomscale_lab.ingest.core import Busy

    key = deployment.keys.authenticate(deployment.key(), client="t")
    core = IngestCore(deployment.vault, max_wal_bytes=1)
    st = core.open_stream(key, "run-bp", "mbe1", "process")
    core.add_batch(key, st["id"], "1", _rows(0, 10))  # accepted: the WAL was empty
    with pytest.raises(Busy, match="behind"):
        core.add_batch(key, st["id"], "2", _rows(10, 10))
    core.flush()
    assert core.add_batch(key, st["id"], "2", _rows(10, 10))["rows"] == 10
    core.close()


@pytest.mark.parametrize("db_backend", ["sqlite"], indirect=True)  # a file from before
def test_a_state_file_from_before_sealing_is_sealed_on_start(deployment):
    import sqlite3

    key = deployment.keys.authenticate(deployment.key(), client="t")
    core = IngestCore(deployment.vault)
    st = core.open_stream(key, "run-legacy-77", "mbe1", "process")
    core.add_batch(key, st["id"], "1", _rows(0, 5))
    before = core.stream(key, st["id"])
    path = core.state_dir / "state.sqlite"
    core.close()
    # what an older service wrote: the run id and the time range in plaintext
    db = sqlite3.connect(path)
    db.execute(
        "UPDATE streams SET run_id=?, run_box=NULL, time_box=NULL, min_time=?, "
        "max_time=? WHERE id=?",
        ("run-legacy-77", before["min_time"], before["max_time"], st["id"]),
    )
    db.commit()
    db.close()
    core = IngestCore(deployment.vault)
    got = core.stream(key, st["id"])
    assert (got["run_id"], got["min_time"], got["max_time"]) == (
        "run-legacy-77",
        before["min_time"],
        before["max_time"],
    )
    assert core.open_stream(key, "run-legacy-77", "mbe1", "process")["id"] == st["id"]
    assert core.finalize(key, st["id"])["rows"] == 5
    core.close()
    sqlite3.connect(path).execute("PRAGMA wal_checkpoint(TRUNCATE)").close()
    raw = b"".join(p.read_bytes() for p in path.parent.glob("state.sqlite*"))
    assert b"run-legacy-77" not in raw

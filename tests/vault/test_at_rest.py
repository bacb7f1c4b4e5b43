"""Nothing under the data or context roots, nor in a registry file, names a run, sample, operator
or project in plaintext: commit-log statistics are sealed with a key derived from the data key.

Every byte of every file is scanned (names and paths too). The audit log lives outside both roots:
its events are checked to hold no sample, operator or project string.
"""

import sqlite3
import subprocess
from urllib.parse import unquote

import atomscale_lab.ingest  # noqa: F401 - its migrations are part of the schema upgraded below
from atomscale_lab.cli import demo
from atomscale_lab.vault.facade import Vault
from atomscale_lab.vault.kms import LocalKms, generate_root_key
from atomscale_lab.vault.settings import Settings


def test_no_identifying_strings_at_rest(tmp_path):
    home = tmp_path / "home"
    s = Settings(home=home, data_root=home / "data", context_root=home / "context")
    v = Vault(s, kms=LocalKms(generate_root_key()))
    v.create_org("acme", "us")
    data = demo.build(runs=6, seed=3, points_per_run=60)
    demo.generate(v, "acme", runs=6, seed=3, points_per_run=60)
    st = v.store("acme")
    st.table("process/series").compact(min_rows=10**9)
    v.verify_org("acme")
    runs = data.runs.to_pandas()
    needles = {
        str(x) for col in ("run_id", "sample", "operator", "project") for x in runs[col].unique()
    }
    assert len(needles) >= 6 * 2
    # the data is there and readable
    assert st.table("process/series").read(run_ids=[runs.run_id[0]]).num_rows > 0

    files = [p for root in (s.data_root, s.context_root) for p in root.rglob("*")]
    reg = sorted(s.registry_path.parent.glob(s.registry_path.name + "*"))
    assert reg and any(p.name.endswith("commits.jsonl") for p in files)
    sqlite3.connect(str(s.registry_path)).execute("PRAGMA wal_checkpoint(FULL)")
    checked = 0
    for p in [*files, *reg]:
        rel = str(p)
        for n in needles:
            assert n not in rel, (n, rel)
        if p.is_file():
            raw = p.read_bytes()
            checked += len(raw)
            for n in needles:
                for form in (n.encode(), n.encode("utf-16-le")):
                    assert form not in raw, (n, p)
    assert checked > 100_000

    # audit events (outside the roots) name no sample, operator or project
    names = {str(x) for col in ("sample", "operator", "project") for x in runs[col].unique()}
    raw = (s.audit_root / "acme.jsonl").read_bytes()
    assert not [n for n in names if n.encode() in raw]


def test_ingest_registry_files_hold_no_identifying_strings(tmp_path, db_backend, request):
    """``ingest/state.sqlite`` and ``ingest/sdk.sqlite`` (with ``ATOMSCALE_DATABASE_URL``: a
    ``pg_dump`` of the database) after a stream of the ingest API and one of the SDK layer (sample,
    tag, chunks, finalize): no run id, sample or tag name, nor the API key, in any byte, and every
    name still comes back through the APIs (also after a restart)."""
    from datetime import UTC, datetime, timedelta

    from atomscale_lab.ingest import apikeys
    from atomscale_lab.ingest.core import IngestCore
    from atomscale_lab.ingest.sdkapi import SdkApi

    home = tmp_path / "home"
    s = Settings(
        home=home, data_root=home / "data", context_root=home / "context", database_url=db_backend
    )
    v = Vault(s, kms=LocalKms(generate_root_key()))
    v.create_org("acme", "us")
    store = apikeys.for_vault(v)
    plain, _ = store.create(
        "acme",
        "ingest:process,ingest:tool_state,read:tool_state",
        timedelta(days=1),
        name="at-rest",
    )
    key = store.authenticate(plain, client="test")
    run, sample, tag, stream_name = (
        "run-zirconia-4471",
        "sample-hafnia-9823",
        "tag-calib-5530",
        "growth-yttria-6612",
    )
    t0 = datetime(2026, 5, 1, tzinfo=UTC)

    core = IngestCore(v)
    st = core.open_stream(
        key, run, "mbe1", "process", sample=sample, project="proj-ceria-1", operator="op-lanthana-2"
    )
    core.add_batch(
        key,
        st["id"],
        "1",
        [{"time": t0 + timedelta(seconds=i), "channel": "T", "value": float(i)} for i in range(20)],
    )
    sdk = SdkApi(core)
    _, made = sdk.create_sample(key, {"name": sample + "-sdk"})
    tid = sdk.create_tag(key, {"name": tag})["id"]
    data_id = sdk.initialize(key, {"stream_name": stream_name})["data_id"]
    sdk.chunk(
        key,
        {
            "data_id": data_id,
            "chunk_index": 0,
            "channel_name": "T",
            "timestamps": [t0.timestamp()],
            "values": [1.0],
        },
        multi=False,
    )
    sdk.attach_tags(key, {"data_ids": [data_id], "tag_ids": [tid]})
    sdk.finalize(key, data_id)
    core.close()
    sdk.state.close()

    # restart: the names come back through the keys, and the live stream was recovered
    core = IngestCore(v)
    got = core.stream(key, st["id"])
    assert got["run_id"] == run and got["status"] == "interrupted"
    assert got["min_time"] < got["max_time"]
    assert core.open_stream(key, run, "mbe1", "process")["id"] == st["id"]
    assert core.finalize(key, st["id"])["rows"] == 20
    sdk = SdkApi(core)
    assert made["name"] in {x["name"] for x in sdk.samples(key)}
    assert [x["name"] for x in sdk.tags(key)] == [tag]
    assert sdk._item(key, data_id)[0] == data_id
    assert sdk._tags_by_item("acme").get(data_id) == [tag]
    core.close()
    sdk.state.close()

    needles = {run, sample, sample + "-sdk", tag, data_id, "proj-ceria-1", "op-lanthana-2"}
    needles |= {plain, plain.split("_", 2)[2]}
    if db_backend:  # everything is in the database: dump it whole (schema, rows, indexes)
        schema = unquote(db_backend).split("search_path=")[1]
        bindir = request.getfixturevalue("postgres_cluster").bindir
        dump = subprocess.run(
            [str(bindir / "pg_dump"), "-n", schema, db_backend],
            check=True,
            capture_output=True,
        ).stdout
        assert b"COPY " in dump and b"apikeys" in dump and b"item_tags" in dump
        assert s.database_url and len(store.list("acme")) == 1
        hits = {
            part.split(b" ", 1)[0].decode(): [n for n in needles if n.encode() in part]
            for part in dump.split(b"\nCOPY ")[1:]
        }
        # the audit chain names runs (as its JSONL form does), never samples, operators,
        # projects or the key; every other table names nothing
        audit = next(t for t in hits if t.endswith(".audit_events"))
        allowed = {run, data_id}
        hits[audit] = [n for n in hits[audit] if n not in allowed]
        assert {t: h for t, h in hits.items() if h} == {}
        assert not list((home / "ingest").glob("*.sqlite*"))
        return
    files = sorted((home / "ingest").glob("*.sqlite*"))
    assert {p.name for p in files} >= {"state.sqlite", "sdk.sqlite"}
    for p in files:
        if p.name.endswith(".sqlite"):
            sqlite3.connect(str(p)).execute("PRAGMA wal_checkpoint(TRUNCATE)")
    for p in sorted((home / "ingest").rglob("*")):
        assert not [n for n in needles if n in str(p)], p
        if p.is_file():
            raw = p.read_bytes()
            assert not [n for n in needles if n.encode() in raw], p

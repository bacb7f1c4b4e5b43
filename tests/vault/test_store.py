"""Encrypted tables: round trips, pruning, keyed rows, rotation, compaction, gc, isolation.

Tests taking ``data_root`` run once per backend (a local folder, and S3 on moto); the gc test
is about local leftovers (``_tmp/``; object storage's gc grace is in ``test_s3``)."""

import datetime as dt
import threading

import duckdb
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from atomscale_lab.errors import KeyUnavailable, ValidationError
from atomscale_lab.schema import SERIES
from atomscale_lab.vault.crypto import OrgCrypto, OrgKeys
from atomscale_lab.vault.kms import LocalKms, generate_root_key
from atomscale_lab.vault.registry import KeyRegistry
from atomscale_lab.vault.store import N_BUCKETS, OrgTable, SqliteHeadStore, bucket_of
from tests.support.vault import make_keys, series, store, wipe

UTC = dt.UTC


def _sorted(t: pa.Table) -> pa.Table:
    return t.sort_by([("run_id", "ascending"), ("channel", "ascending"), ("time", "ascending")])


@pytest.fixture
def reg(tmp_path):
    return make_keys(tmp_path)


def test_round_trip_table_pandas_duckdb_polars(tmp_path, reg, data_root):
    t = store(tmp_path, reg, root=data_root).table("process/series")
    data = series(40, 250)
    c = t.write(data, actor="alice")
    assert c.seq == 1 and c.rows == data.num_rows and 1 < c.files <= N_BUCKETS
    assert _sorted(t.read()).equals(_sorted(data))
    df = t.to_pandas(run_ids=["run-0003"])
    assert len(df) == 250 and set(df.run_id) == {"run-0003"}
    dset = t.dataset()
    got = duckdb.sql(
        "select run_id, count(*) n, sum(value) s from dset "
        "where run_id = 'run-0007' group by run_id"
    ).fetchall()
    want = pc.sum(data.filter(pc.equal(data["run_id"], "run-0007"))["value"]).as_py()
    assert got[0][:2] == ("run-0007", 250) and got[0][2] == pytest.approx(want)
    n = pl.scan_pyarrow_dataset(dset).filter(pl.col("channel") == "rheed_I").collect().height
    assert n == data.num_rows // 2
    assert t.num_rows() == data.num_rows
    assert t.run_ids() == {f"run-{i:04d}" for i in range(40)}
    assert t.files()[0]["fp"] and all(f["kv"] == 1 for f in t.files())
    # files on disk are encrypted and hold no plaintext run ids
    for f in t.files():
        raw = t.medium.read_bytes(f["path"])
        assert raw[:4] == b"PARE" and b"run-00" not in raw


def test_filters_prune_files(tmp_path, reg, data_root):
    t = store(tmp_path, reg, root=data_root).table("process/series")
    for k in range(3):  # three commits, each touching every bucket of its runs
        t.write(series(64, 50, seed=k, t_offset_s=k * 30))
    total = len(t.files())
    one = t.read(run_ids=["run-0010"])
    assert one.num_rows == 150 and set(one["run_id"].to_pylist()) == {"run-0010"}
    assert len(t.last_read_files) == 3 < total
    assert all(p.startswith(f"bucket={bucket_of('run-0010'):02d}/") for p in t.last_read_files)
    assert len(t.select_files(run_ids=["nope"])) <= 3
    assert t.read(run_ids=["nope"]).num_rows == 0
    # time range: run i lives in hour i, so hour 5 touches only run-0005's files
    start = dt.datetime(2026, 3, 1, 5, tzinfo=UTC)
    win = t.read(start=start, end=start + dt.timedelta(minutes=30))
    assert set(win["run_id"].to_pylist()) == {"run-0005"} and win.num_rows == 150
    assert len(t.last_read_files) < total
    cols = t.read(run_ids=["run-0001"], columns=["time", "value"])
    assert cols.column_names == ["time", "value"] and cols.num_rows == 150
    f = t.read(filter=pc.field("value") > 0.5, run_ids=["run-0002"])
    assert 0 < f.num_rows < 150 and pc.min(f["value"]).as_py() > 0.5
    with pytest.raises(ValidationError, match="unknown column"):
        t.read(columns=["nope"])


def test_bad_input_loses_nothing(tmp_path, reg, data_root):
    t = store(tmp_path, reg, root=data_root).table("process/series")
    t.write(series(2, 10))
    with pytest.raises(ValidationError, match="unknown field 'bogus'"):
        t.write([{"run_id": "x", "time": "2026-01-01T00:00:00+00:00", "bogus": 1}])
    with pytest.raises(ValidationError, match="run_id"):
        t.write([{"run_id": None, "time": "2026-01-01T00:00:00+00:00", "channel": "c"}])
    assert t.num_rows() == 20 and t.read().num_rows == 20
    assert t.write([]).rows == 0


def test_keyed_table_returns_latest_row(tmp_path, reg, data_root):
    runs = store(tmp_path, reg, root=data_root).table("runs")
    t0 = dt.datetime(2026, 3, 1, tzinfo=UTC)
    runs.write(
        [
            {"run_id": "r1", "start": t0, "status": "active", "updated_at": t0},
            {"run_id": "r2", "start": t0, "status": "active", "updated_at": t0},
        ]
    )
    runs.write(
        [
            {
                "run_id": "r1",
                "start": t0,
                "status": "complete",
                "updated_at": t0 + dt.timedelta(minutes=5),
            }
        ]
    )
    # an older update arriving late must not win
    runs.write(
        [
            {
                "run_id": "r1",
                "start": t0,
                "status": "error",
                "updated_at": t0 + dt.timedelta(minutes=1),
            }
        ]
    )
    got = {r["run_id"]: r["status"] for r in runs.read().to_pylist()}
    assert got == {"r1": "complete", "r2": "active"}
    active = runs.read(filter=pc.field("status") == "active")
    assert active["run_id"].to_pylist() == ["r2"]
    assert runs.read(run_ids=["r1"], columns=["status"]).to_pylist() == [{"status": "complete"}]
    dset = runs.dataset()  # noqa: F841 - found by DuckDB by name
    assert duckdb.sql("select count(*) from dset").fetchall()[0][0] == 2
    assert runs.num_rows() == 4
    c = runs.compact(min_rows=10)
    assert c is not None and runs.num_rows() == 2 and len(runs.files()) == 1
    assert {r["run_id"]: r["status"] for r in runs.read().to_pylist()} == got


def test_compaction_keeps_rows_and_reduces_files(tmp_path, reg, data_root):
    t = store(tmp_path, reg, root=data_root).table("process/series")
    parts = [series(16, 20, seed=k, prefix=f"b{k}") for k in range(8)]
    for p in parts:
        t.write(p)
    before = len(t.files())
    want = _sorted(pa.concat_tables(parts))
    c = t.compact(min_rows=100_000)
    assert c is not None and c.rows == want.num_rows
    after = len(t.files())
    assert after < before and after <= N_BUCKETS
    assert _sorted(t.read()).equals(want)
    assert t.compact(min_rows=100_000) is None
    assert len(t.medium.list_data()) == after  # replaced files were removed, nothing staged
    t.verify(deep=True)


def test_gc_removes_only_unlisted(tmp_path, reg):
    t = store(tmp_path, reg).table("process/series")
    t.write(series(4, 10))
    listed = {f["path"] for f in t.files()}
    stray = t.path / "bucket=00" / ("part-" + "0" * 32 + ".parquet")
    stray.parent.mkdir(exist_ok=True)
    stray.write_bytes(next(iter(t.path.rglob("part-*.parquet"))).read_bytes())
    (t.path / "_tmp").mkdir(exist_ok=True)
    (t.path / "_tmp" / "leftover.parquet").write_bytes(b"x")
    assert t.gc() == 2
    assert {p.relative_to(t.path).as_posix() for p in t.path.rglob("part-*.parquet")} == listed
    assert t.read().num_rows == 40


def test_other_org_and_missing_key_refused(tmp_path, reg, data_root):
    t = store(tmp_path, reg, "a", root=data_root).table("process/series")
    t.write(series(3, 10))
    with pytest.raises(KeyUnavailable, match="org 'b'.*org 'a'"):
        OrgTable(data_root, "a", SERIES, OrgCrypto(reg.org_keys("b")))
    forged = OrgCrypto(OrgKeys("a", reg.org_keys("b").keys))
    with pytest.raises(KeyUnavailable, match="does not match"):
        OrgTable(data_root, "a", SERIES, forged).read()
    with pytest.raises(KeyUnavailable, match="no data key"):
        OrgTable(data_root, "a", SERIES, None)
    with pytest.raises(KeyUnavailable):
        OrgCrypto(OrgKeys("a", {}))
    # b's own table is separate and empty
    assert store(tmp_path, reg, "b", root=data_root).table("process/series").read().num_rows == 0


def test_data_key_rotation_keeps_every_row(tmp_path, reg, data_root):
    t = store(tmp_path, reg, root=data_root).table("process/series")
    d1 = series(10, 20, prefix="old")
    t.write(d1)
    reg.rotate("a")
    t2 = store(tmp_path, reg, root=data_root).table("process/series")
    d2 = series(10, 20, prefix="new")
    t2.write(d2)
    assert {f["kv"] for f in t2.files()} == {1, 2}
    want = _sorted(pa.concat_tables([d1, d2]))
    assert _sorted(t2.read()).equals(want)
    n_old = len(t2.files())
    done = []
    c = t2.rewrite(progress=done.append)
    assert c is not None and c.rows == want.num_rows
    assert done == list(range(1, n_old + 1))
    assert {f["kv"] for f in t2.files()} == {2}
    assert _sorted(t2.read()).equals(want)
    # the rewritten files no longer need version 1 to decrypt
    v2_only = OrgCrypto(OrgKeys("a", {2: reg.org_keys("a").keys[2]}))
    for f in t2.files():
        got = pq.read_table(
            t2.medium.fs_path(f["path"]),
            filesystem=t2.medium.fs,
            decryption_properties=v2_only.file_decryption_properties(),
        )
        assert got.num_rows == f["rows"]
    assert t2.rewrite(only_older=True) is None


def test_root_key_rewrap_keeps_every_row(tmp_path, reg, data_root):
    t = store(tmp_path, reg, root=data_root).table("process/series")
    data = series(12, 30)
    t.write(data)
    new = LocalKms(generate_root_key())
    reg.rewrap(new)
    reg2 = KeyRegistry(tmp_path / "registry.sqlite", new)
    assert _sorted(store(tmp_path, reg2, root=data_root).table("process/series").read()).equals(
        _sorted(data)
    )


def test_shred_makes_nothing_readable(tmp_path, reg, data_root):
    t = store(tmp_path, reg, root=data_root).table("process/series")
    t.write(series(5, 10))
    reg.shred("a")
    with pytest.raises(KeyUnavailable, match="destroyed"):
        store(tmp_path, reg, root=data_root)
    reg.create_org("a")  # same name, fresh keys: the old files stay unreadable
    with pytest.raises(KeyUnavailable):
        store(tmp_path, reg, heads=False, root=data_root).table("process/series").read()


def test_org_recreated_under_same_name_starts_fresh(tmp_path, reg, data_root):
    t = store(tmp_path, reg, root=data_root).table("process/series")
    t.write(series(3, 10))
    t.write(series(3, 10, prefix="more"))
    reg.shred("a")
    wipe(data_root, "a")
    reg.create_org("a")
    t2 = store(tmp_path, reg, root=data_root).table(
        "process/series"
    )  # same process, same head store
    assert t2.read().num_rows == 0
    assert t2.write(series(2, 5)).seq == 1
    assert t2.read().num_rows == 10


def test_readers_advance_the_head_store(tmp_path, reg, data_root):
    t = store(tmp_path, reg, heads=False, root=data_root).table("process/series")
    t.write(series(2, 5))
    t.write(series(2, 5, prefix="x"))
    reader = store(tmp_path, reg, root=data_root).table("process/series")
    reader.read()
    hs = SqliteHeadStore(tmp_path / "registry.sqlite")
    (name,) = [n for (n,) in hs._db.execute("SELECT tbl FROM log_heads WHERE org='a'")]
    assert name.startswith("process/series@") and hs.get("a", name)[0] == 2


def test_concurrent_writers_serialize(tmp_path, reg, data_root):
    st = store(tmp_path, reg, root=data_root)
    errors = []

    def writer(k):
        try:
            t = OrgTable(data_root, "a", SERIES, st.crypto)  # own instance per thread
            for j in range(4):
                t.write(series(4, 10, prefix=f"w{k}-{j}"))
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=writer, args=(k,)) for k in range(3)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert not errors
    t = st.table("process/series")
    assert t.head()[0] == 12 and t.read().num_rows == 12 * 40


def test_head_store_never_goes_back(tmp_path):
    hs = SqliteHeadStore(tmp_path / "r.sqlite")
    assert hs.get("a", "process/series") is None
    hs.advance("a", "process/series", 5, "d5")
    hs.advance("a", "process/series", 3, "d3")
    assert hs.get("a", "process/series") == (5, "d5")
    hs.advance("a", "process/series", 6, "d6")
    assert hs.get("a", "process/series") == (6, "d6")
    assert hs.get("b", "process/series") is None


def test_metrology_spectra_round_trip(tmp_path, reg, data_root):
    t = store(tmp_path, reg, root=data_root).table("metrology/items")
    rows = [
        {
            "item_id": f"xrd-{i}",
            "run_id": f"run-{i % 3}",
            "technique": "XRD",
            "time": dt.datetime(2026, 3, 2, i, tzinfo=UTC),
            "x": [20.0 + j for j in range(50)],
            "y": [float(j * i) for j in range(50)],
            "peaks": [30.1],
            "result_name": "fwhm",
            "result_value": 0.1 * i,
        }
        for i in range(12)
    ]
    t.write(rows)
    got = t.read(run_ids=["run-1"]).to_pylist()
    assert sorted(r["item_id"] for r in got) == ["xrd-1", "xrd-10", "xrd-4", "xrd-7"]
    assert next(r for r in got if r["item_id"] == "xrd-4")["y"][2] == 8.0


def test_row_groups_shrink_for_wide_rows():
    from atomscale_lab.vault.store.files import ROW_GROUP_ROWS, row_group_rows

    narrow = pa.table({"v": pa.array(range(100_000), pa.float64())})
    wide = pa.table({"y": pa.array([[0.0] * 4000] * 10)})
    assert row_group_rows(narrow) == ROW_GROUP_ROWS
    assert 256 <= row_group_rows(wide) < 2000


def test_keyed_table_tie_goes_to_the_later_write(tmp_path, reg, data_root):
    runs = store(tmp_path, reg, root=data_root).table("runs")
    t0 = dt.datetime(2026, 3, 1, tzinfo=UTC)
    for i in range(12):
        runs.write(
            [
                {"run_id": f"r{j}", "start": t0, "status": f"s{i}", "updated_at": t0}
                for j in range(20)
            ]
        )
    assert {r["status"] for r in runs.read().to_pylist()} == {"s11"}
    runs.compact(min_rows=1000)
    assert {r["status"] for r in runs.read().to_pylist()} == {"s11"} and runs.num_rows() == 20

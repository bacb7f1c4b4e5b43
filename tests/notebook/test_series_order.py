"""Series answers come back ordered by channel then time, whether or not the store had to merge."""

from datetime import UTC, datetime, timedelta

import pyarrow as pa

from atomscale_lab.schema import TS
from atomscale_lab.server.catalog import sorted_by_channel_time

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def frame(pairs):
    return pa.table(
        {
            "channel": pa.array([c for c, _ in pairs]),
            "time": pa.array([T0 + timedelta(seconds=s) for _, s in pairs], TS),
        }
    )


def test_sorted_frames_are_recognised():
    assert sorted_by_channel_time(frame([]))
    assert sorted_by_channel_time(frame([("a", 5)]))
    assert sorted_by_channel_time(frame([("a", 1), ("a", 1), ("a", 2), ("b", 0), ("b", 9)]))


def test_unsorted_frames_are_recognised():
    assert not sorted_by_channel_time(frame([("b", 0), ("a", 1)]))
    assert not sorted_by_channel_time(frame([("a", 2), ("a", 1)]))
    assert not sorted_by_channel_time(frame([("a", 1), ("b", 5), ("b", 4)]))


def test_series_of_a_run_written_in_two_commits_is_ordered(tmp_path, monkeypatch):
    from atomscale_lab.server.access import LocalAccess
    from atomscale_lab.server.service import OrgService
    from atomscale_lab.vault.facade import Vault
    from atomscale_lab.vault.kms import generate_root_key

    monkeypatch.setenv("ATOMSCALE_HOME", str(tmp_path))
    monkeypatch.setenv("ATOMSCALE_ROOT_KEY", generate_root_key())
    v = Vault()
    v.create_org("acme", "us")
    store = v.store("acme")
    store.table("process/runs").write([{"run_id": "r1", "start": T0, "status": "complete"}])
    series = store.table("process/series")
    # later times first, in a separate commit (file): the merged read is out of order
    for secs in ((10, 11, 12), (0, 1, 2)):
        series.write(
            [
                {
                    "run_id": "r1",
                    "time": T0 + timedelta(seconds=s),
                    "channel": ch,
                    "value": float(s),
                }
                for s in secs
                for ch in ("temp", "rheed")
            ]
        )
    svc = OrgService(LocalAccess("acme", vault=v, owner="me"))
    t = svc.series("me", "r1", "process", {})
    assert t.num_rows == 12
    assert sorted_by_channel_time(t)
    assert t.column("channel").to_pylist() == ["rheed"] * 6 + ["temp"] * 6


def test_times_in_json_frames_are_utc_iso_strings():
    # the vectorised formatting equals each value's own UTC isoformat, whatever the unit or zone
    from datetime import UTC, datetime, timedelta

    from atomscale_lab.server.catalog import frame_json, iso_strings

    t0 = datetime(2024, 5, 1, 23, 59, 58, 123456, tzinfo=UTC)
    values = [
        t0,
        None,
        t0 + timedelta(days=400, microseconds=1),
        datetime(1969, 12, 31, tzinfo=UTC),
    ]
    naive = [None if v is None else v.replace(tzinfo=None) for v in values]
    table = pa.table(
        {
            "utc": pa.array(values, pa.timestamp("us", tz="UTC")),
            "berlin": pa.array(values, pa.timestamp("us", tz="UTC")).cast(
                pa.timestamp("us", tz="Europe/Berlin")
            ),
            "ms": pa.array(values, pa.timestamp("us", tz="UTC")).cast(
                pa.timestamp("ms", tz="UTC"), safe=False
            ),
            "naive": pa.array(naive, pa.timestamp("us")),
            "value": pa.array([1.5, float("nan"), None, -2.0]),
        }
    )
    want = [None if v is None else v.strftime("%Y-%m-%dT%H:%M:%S.%fZ") for v in values]
    want_ms = [
        None if v is None else v.replace(microsecond=v.microsecond // 1000 * 1000) for v in values
    ]
    got = iso_strings(table)
    assert got.column("utc").to_pylist() == want
    assert got.column("berlin").to_pylist() == want
    assert got.column("naive").to_pylist() == want
    assert got.column("ms").to_pylist() == [
        None if v is None else v.strftime("%Y-%m-%dT%H:%M:%S.%fZ") for v in want_ms
    ]
    doc = frame_json(table)
    assert doc["data"][1] == [None, None, None, None, None]  # null time, NaN value
    assert doc["data"][0][0] == "2024-05-01T23:59:58.123456Z" and doc["data"][0][4] == 1.5
    assert UTC is UTC

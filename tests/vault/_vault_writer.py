"""Child process for the crash test: commit batches until stopped at a chosen point.

Usage: ``_vault_writer.py DATA_ROOT HEAD_DB FIRST_BATCH POINT N [ORG [RUNS]]`` with the org's
(default ``a``) keys as JSON on the first line of stdin; DATA_ROOT is a folder or an ``s3://`` root
(reached with the AWS variables). Prints ``ready`` once set up, starts on a line ``go`` (or the
end of stdin), then prints ``committed K`` after each batch K is committed. Each batch is RUNS
(default 8) runs × 300 rows (``b<K>-<run>``) spread over several buckets, so one commit adds
several files; after every fifth batch a compaction replaces small files.

When the writer reaches the N-th occurrence of POINT it prints ``at POINT K`` and stops itself
(SIGSTOP), so that the parent's SIGKILL lands exactly there. Points (``write.*`` during a batch's
commit, ``compact.*`` during a compaction):

- ``committed``: right after a batch was committed and reported;
- ``<op>.tmp``: an encrypted file is complete in ``_tmp/`` but not yet renamed into place (on
  object storage: a data object was uploaded, the others and the commit not yet);
- ``<op>.placed``: all new files are in place, the commit-log line is not written;
- ``<op>.logged``: the commit-log line is written and synced, the head store not yet advanced.
"""

import json
import os
import signal
import sys
from pathlib import Path

import atomscale_lab.vault.store.media as media_mod  # where a local table writes its files
from atomscale_lab.vault.crypto import OrgCrypto, OrgKeys
from atomscale_lab.vault.store import OrgStore, OrgTable, SqliteHeadStore
from atomscale_lab.vault.store.media import as_root
from atomscale_lab.vault.store.objects import S3Medium
from tests.support.vault import series

RUNS, ROWS = 8, 300


def main() -> None:
    data_root, head_db, first = sys.argv[1], sys.argv[2], int(sys.argv[3])
    stop_point, stop_n = sys.argv[4], int(sys.argv[5])
    org = sys.argv[6] if len(sys.argv) > 6 else "a"
    runs = int(sys.argv[7]) if len(sys.argv) > 7 else RUNS
    keys = OrgKeys.from_json(json.loads(sys.stdin.readline()))
    seen: dict[str, int] = {}
    now = {"op": "write", "k": first, "appending": False}

    def at(point: str) -> None:
        name = point if point == "committed" else f"{now['op']}.{point}"
        seen[name] = seen.get(name, 0) + 1
        if name == stop_point and seen[name] == stop_n:
            print(f"at {name} {now['k']}", flush=True)
            os.kill(os.getpid(), signal.SIGSTOP)

    # Wrap the store's steps in this child only (the parent reads with the unmodified code).
    write_parquet, put_object, append, advance = (
        media_mod.write_parquet,
        S3Medium.write_file,
        OrgTable._append,
        SqliteHeadStore.advance,
    )

    def write_parquet_at(*a, **kw):
        write_parquet(*a, **kw)
        at("tmp")

    def put_object_at(*a, **kw):
        out = put_object(*a, **kw)
        at("tmp")
        return out

    def append_at(self, *a, **kw):
        at("placed")
        now["appending"] = True
        try:
            return append(self, *a, **kw)
        finally:
            now["appending"] = False

    def advance_at(self, *a, **kw):
        if now["appending"]:
            at("logged")
        return advance(self, *a, **kw)

    media_mod.write_parquet = write_parquet_at
    S3Medium.write_file = put_object_at
    OrgTable._append = append_at
    SqliteHeadStore.advance = advance_at

    t = OrgStore(as_root(data_root), org, OrgCrypto(keys), SqliteHeadStore(Path(head_db))).table(
        "process/series"
    )
    print("ready", flush=True)
    sys.stdin.readline()  # "go", or the end of stdin: start writing
    k = first
    while True:
        now.update(op="write", k=k)
        t.write(series(runs, ROWS, prefix=f"b{k:06d}", seed=k), actor="crash-test")
        print(f"committed {k}", flush=True)
        at("committed")
        if k % 5 == 4:
            now["op"] = "compact"
            t.compact(min_rows=5_000, target_rows=50_000)
        k += 1


if __name__ == "__main__":
    main()

"""Child process for the crash test: commit batches forever until killed.

Usage: ``_vault_writer.py DATA_ROOT HEAD_DB FIRST_BATCH`` with org ``a``'s keys as JSON on stdin.
Prints ``ready`` once set up, then ``committed K`` after each batch K is committed. Each batch is
8 runs × 300 rows (``b<K>-<run>``) spread over several buckets, so one commit adds several files;
every fifth batch a compaction replaces small files.
"""

import json
import sys
from pathlib import Path

from _vault_support import series

from atomscale_lab.crypto import OrgCrypto, OrgKeys
from atomscale_lab.store import OrgStore, SqliteHeadStore

RUNS, ROWS = 8, 300


def main() -> None:
    data_root, head_db, first = sys.argv[1], sys.argv[2], int(sys.argv[3])
    keys = OrgKeys.from_json(json.loads(sys.stdin.read()))
    t = OrgStore(Path(data_root), "a", OrgCrypto(keys), SqliteHeadStore(Path(head_db))) \
        .table("process/series")
    print("ready", flush=True)
    k = first
    while True:
        t.write(series(RUNS, ROWS, prefix=f"b{k:06d}", seed=k), actor="crash-test")
        print(f"committed {k}", flush=True)
        if k % 5 == 4:
            t.compact(min_rows=5_000, target_rows=50_000)
        k += 1


if __name__ == "__main__":
    main()

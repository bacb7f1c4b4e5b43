"""Child process for the S3 race test: commit N small batches to one table as fast as it can.

Usage: ``_s3_racer.py DATA_ROOT HEAD_DB PREFIX N`` with the org ``a``'s keys as JSON on the first
line of stdin and ``go`` on the second (so that racers start together). Prints ``seq K`` after each
commit, K being the sequence number this writer won.
"""

import json
import sys
from pathlib import Path

from atomscale_lab.vault.crypto import OrgCrypto, OrgKeys
from atomscale_lab.vault.store import OrgStore, SqliteHeadStore
from atomscale_lab.vault.store.media import as_root
from tests.support.vault import series


def main() -> None:
    data_root, head_db, prefix, n = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    keys = OrgKeys.from_json(json.loads(sys.stdin.readline()))
    t = OrgStore(as_root(data_root), "a", OrgCrypto(keys), SqliteHeadStore(Path(head_db))).table(
        "process/series"
    )
    t.head()  # connect and load before the start signal
    print("ready", flush=True)
    assert sys.stdin.readline().strip() == "go"
    for i in range(n):
        c = t.write(series(2, 20, prefix=f"{prefix}{i:03d}", seed=i), actor=prefix)
        print(f"seq {c.seq}", flush=True)


if __name__ == "__main__":
    main()

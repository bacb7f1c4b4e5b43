"""Child process for the vault tests: read one table, print ``rows: N`` or the error.

Usage: ``_vault_read.py DATA_ROOT ORG TABLE MODE HEAD_DB|-`` with the org keys as JSON on stdin
(DATA_ROOT: a folder or an ``s3://`` root, reached with the AWS variables).
MODE is ``read`` (whole table), ``verify`` (deep verification) or ``dataset`` (through DuckDB).
Exit codes: 0 ok, the AtomscaleError's ``exit_code``, 9 another clean exception; a crash shows as
a negative code (signal).
"""

import json
import sys
from pathlib import Path

from atomscale_lab.errors import AtomscaleError
from atomscale_lab.vault.crypto import OrgCrypto, OrgKeys
from atomscale_lab.vault.store import OrgStore, SqliteHeadStore
from atomscale_lab.vault.store.media import as_root


def main() -> int:
    data_root, org, table, mode, head_db = sys.argv[1:6]
    keys = OrgKeys.from_json(json.loads(sys.stdin.read()))
    heads = None if head_db == "-" else SqliteHeadStore(Path(head_db))
    try:
        t = OrgStore(as_root(data_root), org, OrgCrypto(keys), heads).table(table)
        if mode == "verify":
            t.verify(deep=True)
            rows = t.num_rows()
        elif mode == "dataset":
            import duckdb

            dset = t.dataset()  # noqa: F841 - found by DuckDB's replacement scan
            # touch every column so every page is decrypted (count(*) alone reads only footers)
            cols = " + ".join(f"count({c})" for c in t.spec.schema.names)
            rows = duckdb.sql(f"select count(*), {cols} from dset").fetchall()[0][0]
        else:
            rows = t.read().num_rows
    except AtomscaleError as e:
        print(f"{type(e).__name__}: {e}")
        return e.exit_code
    except Exception as e:  # a clean failure of another library (e.g. inside a DuckDB scan)
        print(f"other error {type(e).__name__}: {e}")
        return 9
    print(f"rows: {rows}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

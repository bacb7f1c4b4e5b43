"""A tiny writer of the commit-log format from before commit-log signing (not a test module).

Lines carried an HMAC (key derived from the data key) and plaintext statistics; registries had no
``sign`` keys. ``legacy_write`` appends such a line the way that format did, so that tests can
build a deployment as it was and migrate it; tests also use it to forge a line with the data key
alone.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
from datetime import UTC, datetime

from atomscale_lab.vault.crypto import OrgCrypto, OrgKeys
from atomscale_lab.vault.store import OrgTable, prepare


def _canon(doc: dict) -> bytes:
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def last_line(table: OrgTable) -> tuple[int, str, int]:
    """``(seq, sha256 of the last line, byte size)`` of a table's log, read as an attacker
    would: from the files."""
    try:
        data = table._log_path.read_bytes()
    except FileNotFoundError:
        data = b""
    lines = data.split(b"\n")[:-1]
    if not lines:
        # a log restarted from a checkpoint: the head is in the checkpoint, in plain view
        ck = table._log_path.with_name("checkpoint.json")
        if ck.exists():
            doc = json.loads(ck.read_bytes())
            return doc["seq"], doc["digest"], len(data)
        return 0, "0" * 64, 0
    return json.loads(lines[-1])["seq"], hashlib.sha256(lines[-1]).hexdigest(), len(data)


def legacy_line(
    crypto: OrgCrypto,
    table_name: str,
    seq: int,
    prev: str,
    added: list[dict],
    removed: list[str],
    actor: str,
) -> bytes:
    """One HMAC-only line with plaintext statistics, MACed with the data key alone."""
    kv = crypto.version
    body = {
        "seq": seq,
        "prev": prev,
        "ts": datetime.now(UTC).isoformat(timespec="microseconds"),
        "actor": actor,
        "op": "add",
        "added": added,
        "removed": removed,
        "key_version": kv,
        "kfp": crypto.fingerprint(kv),
    }
    key = crypto.mac_key(f"commit-log/{table_name}", kv)
    body["mac"] = hmac.new(key, _canon(body), hashlib.sha256).hexdigest()
    return _canon(body) + b"\n"


def legacy_write(table: OrgTable, data, actor: str = "system") -> None:
    """Encrypt ``data`` into files and append one old-format line listing them."""
    added = [table._write_file(bucket, part) for bucket, part in prepare(table.spec, data)]
    seq, digest, _ = last_line(table)
    line = legacy_line(table.crypto, table.spec.name, seq + 1, digest, added, [], actor)
    table._log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(table._log_path, "ab") as f:
        f.write(line)
        os.fsync(f.fileno())


def data_key_only(keys: OrgKeys) -> OrgCrypto:
    """What a holder of the data key alone has: the data key, no signing key."""
    return OrgCrypto(OrgKeys(keys.org, dict(keys.keys)))

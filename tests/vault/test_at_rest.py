"""Nothing under the data or context roots, nor in a registry file, names a run, sample, operator
or project in plaintext: commit-log statistics are sealed with a key derived from the data key.

Every byte of every file is scanned (names and paths too). The audit log lives outside both roots:
its events are checked to hold no sample, operator or project string.
"""

import sqlite3

from atomscale_lab.cli import demo
from atomscale_lab.vault.crypto import LocalKms, generate_root_key
from atomscale_lab.vault.facade import Vault
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
    needles = {str(x) for col in ("run_id", "sample", "operator", "project")
               for x in runs[col].unique()}
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

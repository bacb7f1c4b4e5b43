"""The deployment database on both backends: versioned migrations and ``db upgrade``, the
compare-and-swap of commit-log heads across processes, and the insert-only audit chain on
PostgreSQL attacked through the database itself."""

from __future__ import annotations

import json
import multiprocessing
import os
import secrets
import subprocess

import psycopg
import pytest

from atomscale_lab.errors import ConfigError, IntegrityError
from atomscale_lab.vault import migrations
from atomscale_lab.vault.audit import AuditHeads, AuditLog
from atomscale_lab.vault.db import Database
from atomscale_lab.vault.kms import LocalKms, generate_root_key
from atomscale_lab.vault.migrations import Migration, app_role_grants, status, upgrade
from atomscale_lab.vault.registry import KeyRegistry
from atomscale_lab.vault.store import DatabaseHeadStore
from tests.support.auditlog import open_log
from tests.support.postgres import upgraded

D1, D2, D3 = ("1" * 64, "2" * 64, "3" * 64)


def _tables(db: Database) -> set[str]:
    if db.is_postgres:
        rows = db.sql("SELECT tablename FROM pg_tables WHERE schemaname = current_schema()")
    else:
        rows = db.sql("SELECT name FROM sqlite_master WHERE type = 'table'")
    return {r[0] for r in rows}


# -- migrations -------------------------------------------------------------------------------


def test_fresh_upgrade_then_reupgrade_is_a_no_op(tmp_path, pg_url):
    for target in (tmp_path / "registry.sqlite", pg_url):
        db = Database(target)
        before = status(db)
        assert all(have == 0 for have, _ in before.values()), before
        done = upgrade(db)
        assert done == {c: (0, need) for c, need in migrations.components().items()}
        assert {"orgs", "org_keys", "log_heads", "audit_heads"} <= _tables(db)
        assert ("audit_events" in _tables(db)) == db.is_postgres
        assert upgrade(db) == {}
        assert all(have == need for have, need in status(db).values())


def test_an_older_schema_upgrades_in_order_and_keeps_rows(database, monkeypatch):
    db = Database(database)
    v1 = Migration(1, ["CREATE TABLE probe (k TEXT PRIMARY KEY, n INTEGER NOT NULL)"])
    monkeypatch.setitem(migrations._REGISTRY.components, "probe", [v1])
    assert upgrade(db) == {"probe": (0, 1)}
    db.sql("INSERT INTO probe (k, n) VALUES (?, ?)", ("a", 1))
    v2 = Migration(2, ["ALTER TABLE probe ADD COLUMN note TEXT", "UPDATE probe SET note = 'x'"])
    v3 = Migration(3, ["CREATE INDEX probe_n ON probe (n)"])
    monkeypatch.setitem(migrations._REGISTRY.components, "probe", [v1, v2, v3])
    assert status(db)["probe"] == (1, 3)
    assert upgrade(db) == {"probe": (1, 3)}
    assert db.sql("SELECT k, n, note FROM probe") == [("a", 1, "x")]
    assert upgrade(db) == {}


def test_a_failing_migration_leaves_the_old_version(database, monkeypatch):
    db = Database(database)
    v1 = Migration(1, ["CREATE TABLE probe2 (k TEXT PRIMARY KEY)"])
    bad = Migration(2, ["CREATE TABLE probe2_more (k TEXT)", "SELECT * FROM no_such_table"])
    monkeypatch.setitem(migrations._REGISTRY.components, "probe2", [v1])
    upgrade(db)
    monkeypatch.setitem(migrations._REGISTRY.components, "probe2", [v1, bad])
    with pytest.raises(Exception, match="no_such_table|no such table"):
        upgrade(db)
    assert status(db)["probe2"] == (1, 2)
    assert "probe2_more" not in _tables(db)  # the step's statements were rolled back together


def test_an_un_upgraded_postgres_refuses_and_names_the_command(pg_url):
    with pytest.raises(ConfigError, match="run `atomscale-lab db upgrade`"):
        KeyRegistry(pg_url, LocalKms(generate_root_key()))
    with pytest.raises(ConfigError, match="heads schema at version 0"):
        DatabaseHeadStore(pg_url)
    upgrade(Database(pg_url))
    KeyRegistry(pg_url, LocalKms(generate_root_key())).create_org("acme")


def test_a_schema_newer_than_the_code_is_refused(database):
    db = Database(database)
    upgrade(db)
    db.sql("UPDATE schema_version SET version = 99 WHERE component = 'keys'")
    with pytest.raises(ConfigError, match="newer than this release"):
        upgrade(db)


def test_db_cli_status_and_upgrade(venv_bin, home, pg_url):
    env = {**os.environ, "ATOMSCALE_HOME": str(home), "ATOMSCALE_DATABASE_URL": pg_url}

    def run(*args):
        return subprocess.run(
            [str(venv_bin / "atomscale-lab"), "db", *args, "--format", "json"],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )

    st = run("status")
    assert st.returncode == 1, st.stderr
    doc = json.loads(st.stdout)
    assert doc["components"]["audit"] == {"version": 0, "needed": 1}
    assert "audit" in doc["upgrade_needed"]
    up = run("upgrade")
    assert up.returncode == 0, up.stderr
    assert json.loads(up.stdout)["keys"] == {"from": 0, "to": 1}
    assert json.loads(run("upgrade").stdout) == {}
    st = run("status")
    assert st.returncode == 0 and json.loads(st.stdout)["upgrade_needed"] == []
    env["ATOMSCALE_DATABASE_URL"] = "mysql://nope"
    bad = run("status")
    assert bad.returncode != 0 and "postgresql://" in bad.stderr


# -- key registry -----------------------------------------------------------------------------


def test_key_registry_lifecycle_and_shred(database):
    reg = KeyRegistry(database, LocalKms(generate_root_key()))
    reg.create_org("a")
    reg.create_org("b")
    _, data1 = reg.key("a", "data")
    assert reg.rotate("a") == 2
    assert reg.org_keys("a").keys[1] == data1
    db = reg._db
    wrapped = [bytes(r[0]) for r in db.sql("SELECT wrapped FROM org_keys WHERE org = 'a'")]
    assert wrapped and all(data1 not in w for w in wrapped)  # only wrapped keys are stored
    reg.shred("a")
    assert db.sql("SELECT COUNT(*) FROM org_keys WHERE org = 'a'") == [(0,)]
    assert reg.orgs() == ["b"]
    with pytest.raises(Exception, match="destroyed"):
        reg.org_keys("a")


# -- heads: compare-and-swap ------------------------------------------------------------------


def _race_swap(target, i, out):
    store = DatabaseHeadStore(target)
    out.put((i, store.swap("acme", "process/runs@1", (1, D1), (2, f"{i:064x}"))))


def test_two_writers_never_both_advance_from_one_head(database):
    store = DatabaseHeadStore(database)
    assert store.swap("acme", "process/runs@1", None, (1, D1))
    assert not store.swap("acme", "process/runs@1", None, (1, D2))  # a head exists already
    ctx = multiprocessing.get_context("spawn")
    out = ctx.Queue()
    procs = [ctx.Process(target=_race_swap, args=(database, i, out)) for i in range(6)]
    for p in procs:
        p.start()
    results = dict(out.get(timeout=300) for _ in procs)
    for p in procs:
        p.join(300)
        assert p.exitcode == 0
    winners = [i for i, won in results.items() if won]
    assert len(winners) == 1, results
    assert store.get("acme", "process/runs@1") == (2, f"{winners[0]:064x}")


def test_advance_never_goes_back_and_refuses_a_fork(database):
    store = DatabaseHeadStore(database)
    store.advance("acme", "t@1", 3, D3)
    store.advance("acme", "t@1", 2, D2)  # older: ignored
    assert store.get("acme", "t@1") == (3, D3)
    store.advance("acme", "t@1", 3, D3)  # the same head again: fine
    with pytest.raises(IntegrityError, match="two writers"):
        store.advance("acme", "t@1", 3, D1)
    assert store.get("acme", "t@1") == (3, D3)
    store.forget("acme")
    assert store.get("acme", "t@1") is None


def _advance_many(target, worker, n):
    store = DatabaseHeadStore(target)
    won = 0
    for _ in range(n):
        while True:
            cur = store.get("acme", "t@1")
            nxt = (cur[0] + 1 if cur else 1, secrets.token_hex(32))
            if store.swap("acme", "t@1", cur, nxt):
                won += 1
                break
    return won


def test_concurrent_advances_lose_no_step(database):
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(3) as pool:
        won = pool.starmap(_advance_many, [(database, w, 25) for w in range(3)], chunksize=1)
    assert won == [25, 25, 25]
    assert DatabaseHeadStore(database).get("acme", "t@1")[0] == 75


# -- the audit chain on PostgreSQL, attacked through the database ------------------------------


@pytest.fixture
def pg_log(tmp_path, pg_url):
    url = upgraded(pg_url)
    lg = open_log(tmp_path, url, "acme", secrets.token_bytes(32))
    for i in range(5):
        lg.record("ann", "data.read", i=i)
    return lg


def test_unique_org_seq_refuses_a_second_event_at_a_number(pg_log):
    with pytest.raises(psycopg.errors.UniqueViolation):
        pg_log.db.sql(
            "INSERT INTO audit_events (org, seq, actor, action, line) VALUES (?,?,?,?,?)",
            ("acme", 3, "mallory", "data.read", "{}"),
        )
    assert pg_log.verify() == 5


def test_a_tampered_row_is_detected(pg_log):
    pg_log.db.sql(
        "UPDATE audit_events SET line = replace(line, '\"i\":2', '\"i\":7') "
        "WHERE org = 'acme' AND seq = 3"
    )
    with pytest.raises(IntegrityError, match="line 3: MAC mismatch"):
        pg_log.verify()


def test_an_edited_filter_column_is_detected(pg_log):
    # Hiding an event from `audit show --actor ann` by editing only the copied column.
    pg_log.db.sql("UPDATE audit_events SET actor = 'bob' WHERE org = 'acme' AND seq = 4")
    with pytest.raises(IntegrityError, match="line 4: the row .* differs from its MACed record"):
        pg_log.verify()


def test_a_deleted_newest_row_is_detected_by_the_head(pg_log):
    pg_log.db.sql("DELETE FROM audit_events WHERE org = 'acme' AND seq = 5")
    with pytest.raises(IntegrityError, match="line 5: missing"):
        pg_log.verify()


def test_a_deleted_middle_row_is_detected(pg_log):
    pg_log.db.sql("DELETE FROM audit_events WHERE org = 'acme' AND seq = 2")
    with pytest.raises(IntegrityError, match="line 2: hash chain broken"):
        pg_log.verify()


def test_another_orgs_chain_is_kept_apart(pg_log, tmp_path):
    other = open_log(tmp_path, pg_log.db.url, "beta", secrets.token_bytes(32))
    other.record("bob", "data.write")
    assert other.verify() == 1 and pg_log.verify() == 5
    assert [e["actor"] for e in other.events()] == ["bob"]


def test_the_application_role_cannot_update_or_delete_audit_rows(
    pg_log, postgres_cluster, tmp_path
):
    role = f"app_{secrets.token_hex(4)}"
    schema = pg_log.db.sql("SELECT current_schema()")[0][0]
    postgres_cluster.execute(f"CREATE ROLE {role} LOGIN", *app_role_grants(role, schema))
    try:
        app_url = postgres_cluster.url(user=role, schema=schema)
        app_log = open_log(tmp_path, app_url, "acme", pg_log._key)
        app_log.record("ann", "data.read", i=5)  # the application appends
        assert app_log.verify() == 6
        app = Database(app_url)
        for attack in (
            "UPDATE audit_events SET actor = 'x' WHERE org = 'acme'",
            "DELETE FROM audit_events WHERE org = 'acme' AND seq = 6",
            "TRUNCATE audit_events",
            "DROP TABLE audit_events",
        ):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                app.sql(attack)
        assert app_log.verify() == 6
        # The application's other registries still work under this role.
        KeyRegistry(app_url, LocalKms(generate_root_key())).create_org("gamma")
        store = DatabaseHeadStore(app_url)
        store.advance("gamma", "t@1", 1, D1)
        assert store.get("gamma", "t@1") == (1, D1)
    finally:
        from atomscale_lab.vault.db import close_pools

        close_pools()
        postgres_cluster.execute(f"DROP OWNED BY {role}", f"DROP ROLE {role}")


def test_vault_on_postgres_keeps_no_local_audit_file(tmp_path, db_backend, root_key):
    from atomscale_lab.vault.facade import Vault
    from atomscale_lab.vault.settings import Settings

    v = Vault(Settings.load())
    v.create_org("acme", "us")
    v.audit("acme").record("ann", "data.read")
    assert v.audit("acme").verify() == 2  # org.create, data.read
    assert [e["action"] for e in v.audit("acme").events()] == ["data.read", "org.create"]
    root = v.settings.audit_root
    files = {p.name for p in root.glob("*")} if root.exists() else set()
    if db_backend is None:
        assert "acme.jsonl" in files
    else:
        assert files == set() and not v.settings.registry_path.exists()
        assert isinstance(v.audit("acme"), AuditLog) and v.audit("acme").db is not None
        assert AuditHeads(db_backend).get("acme")[0] == 2


def test_a_forked_child_does_not_end_the_parents_sessions(pg_url):
    import gc

    from atomscale_lab.vault import db as db_mod

    url = upgraded(pg_url)
    store = DatabaseHeadStore(url)
    store.advance("acme", "t@1", 1, D1)
    pid = os.fork()
    if pid == 0:  # the child drops every inherited connection, then works on its own
        code = 1
        try:
            db_mod._POOLS.clear()
            gc.collect()
            DatabaseHeadStore(url).advance("acme", "t@1", 2, D2)
            code = 0
        finally:
            os._exit(code)
    _, status_ = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status_) == 0
    assert store.get("acme", "t@1") == (2, D2)  # the parent's pooled session still works

"""The store on S3 (moto): writers racing for sequence numbers, writers killed mid-commit,
attacks on the objects, residency of the bucket, gc's grace period and the settings.

The behaviour shared with local folders runs in ``test_store.py`` / ``test_context.py`` on both
backends; this module holds what is particular to object storage.
"""

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pyarrow.compute as pc
import pytest

from atomscale_lab.errors import ConfigError, IntegrityError
from atomscale_lab.schema import SERIES
from atomscale_lab.vault.crypto import OrgCrypto
from atomscale_lab.vault.facade import Vault
from atomscale_lab.vault.kms import LocalKms, generate_root_key
from atomscale_lab.vault.settings import Settings, residency_of
from atomscale_lab.vault.store import OrgTable, SqliteHeadStore
from atomscale_lab.vault.store.objects import S3Config, S3Root
from tests.support.s3 import child_env
from tests.support.vault import make_keys, run_reader, series, store

ROOT = Path(__file__).resolve().parents[2]
KILL_RUNS = 3
"""Runs per batch of the killed writers: three data objects per commit keep the rounds short."""
BATCH_ROWS = KILL_RUNS * 300


@pytest.fixture
def reg(tmp_path):
    return make_keys(tmp_path)


def _table(tmp_path, reg, root, heads=True) -> OrgTable:
    return store(tmp_path, reg, heads=heads, root=root).table("process/series")


def _log_keys(s3, root, org="a", table="process/series") -> list[str]:
    return sorted(k for k in s3.keys(root, f"{org}/{table}/_log/") if k.split("/")[-1][0].isdigit())


# -- racing writers ---------------------------------------------------------------------------


def test_two_writer_threads_race_one_table(tmp_path, reg, s3):
    root = s3.root()
    crypto = OrgCrypto(reg.org_keys("a"))
    heads = SqliteHeadStore(tmp_path / "registry.sqlite")
    n = 12
    won: dict[str, list[int]] = {"x": [], "y": []}
    start = threading.Barrier(2)
    errors = []

    def writer(name):
        try:
            t = OrgTable(root, "a", SERIES, crypto, heads)  # each its own table object
            t.head()
            start.wait()
            for i in range(n):
                won[name].append(t.write(series(2, 20, prefix=f"{name}{i:03d}", seed=i)).seq)
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=writer, args=(k,)) for k in won]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert not errors
    # exactly one writer won each sequence number, and none was skipped
    assert sorted(won["x"] + won["y"]) == list(range(1, 2 * n + 1))
    assert won["x"] == sorted(won["x"]) and won["y"] == sorted(won["y"])
    assert len(_log_keys(s3, root)) == 2 * n
    t = _table(tmp_path, reg, root)
    t.verify(deep=True)
    assert t.num_rows() == t.read().num_rows == 2 * n * 40


def test_two_writer_processes_race_one_table(tmp_path, reg, s3):
    root = s3.root()
    keys = reg.org_keys("a")
    n = 15
    procs = []
    for name in ("p", "q"):
        p = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tests.vault._s3_racer",
                str(root),
                str(tmp_path / "registry.sqlite"),
                name,
                str(n),
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=str(ROOT),
            env=child_env(s3),
        )
        p.stdin.write(json.dumps(keys.to_json()) + "\n")
        p.stdin.flush()
        procs.append(p)
    for p in procs:
        assert p.stdout.readline().strip() == "ready", p.stderr.read()[-2000:]
    for p in procs:
        p.stdin.write("go\n")
        p.stdin.close()
    won = []
    for p in procs:
        p.stdin = None  # closed above: communicate() must not flush it
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err[-2000:]
        seqs = [int(line.split()[1]) for line in out.splitlines()]
        assert len(seqs) == n and seqs == sorted(seqs)
        won.append(seqs)
    assert sorted(won[0] + won[1]) == list(range(1, 2 * n + 1))
    assert set(won[0]).isdisjoint(won[1])
    t = _table(tmp_path, reg, root)
    t.verify(deep=True)
    got = Counter(pc.utf8_slice_codeunits(t.read(columns=["run_id"])["run_id"], 0, 1).to_pylist())
    assert got == {"p": n * 40, "q": n * 40}  # no row lost


# -- writers killed mid-commit ----------------------------------------------------------------

# Points of _vault_writer.py (``tmp`` on S3: a data object uploaded, the commit not yet) and the
# highest occurrence a round may be killed at (compaction runs once every five batches).
POINTS = {
    "committed": 3,
    "write.tmp": 6,
    "write.placed": 3,
    "write.logged": 3,
    "compact.tmp": 2,
    "compact.placed": 1,
    "compact.logged": 1,
}
KILL_ROUNDS = 20


def _batches(table: OrgTable) -> Counter:
    runs = table.read(columns=["run_id"]).column("run_id")
    vc = pc.value_counts(pc.utf8_slice_codeunits(runs, 0, 7))
    return Counter({v["values"].as_py(): v["counts"].as_py() for v in vc})


def _start_writer(root, home: Path, first: int, point: str, n: int, keys, env):
    p = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tests.vault._vault_writer",
            str(root),
            str(home / "registry.sqlite"),
            str(first),
            point,
            str(n),
            "acme",
            str(KILL_RUNS),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=str(ROOT),
        env=env,
    )
    p.stdin.write(json.dumps(keys.to_json()) + "\n")
    p.stdin.flush()
    return p


def test_kill_minus_nine_at_random_points(tmp_path, s3, root_key, venv_bin):
    seed = int(os.environ.get("ATOMSCALE_TEST_SEED") or time.time())
    rng = random.Random(seed)
    schedule = [(pt, rng.randint(1, POINTS[pt])) for pt in rng.choices(list(POINTS), k=KILL_ROUNDS)]
    schedule[:3] = [("write.tmp", 2), ("write.logged", 1), ("compact.logged", 1)]  # each kind
    home = tmp_path / "home"
    data_root, context_root = s3.root(), s3.root()
    vault = Vault(Settings(home=home, data_root=data_root, context_root=context_root))
    vault.create_org("acme", "us")
    keys = vault.org_keys("acme")
    env = {**child_env(s3), "ATOMSCALE_ROOT_KEY": root_key}
    heads = vault.heads()
    committed: set[int] = set()
    pending = _start_writer(data_root, home, 0, *schedule[0], keys, env)
    for rnd, (point, n) in enumerate(schedule):
        p = pending
        p.stdin.write("go\n")  # the previous round is checked and collected
        p.stdin.close()
        out = []
        for line in p.stdout:  # until the writer stops itself at the chosen point
            out.append(line.split())
            if out[-1][0] == "at":
                break
        else:
            raise AssertionError(
                f"seed {seed}: writer ended before {point} #{n}: {p.stderr.read()[-2000:]}"
            )
        os.kill(p.pid, signal.SIGKILL)
        p.wait(timeout=30)
        p.stdout.close()
        p.stderr.close()
        assert p.returncode == -signal.SIGKILL
        if rnd + 1 < len(schedule):  # the next writer starts up while this round is checked
            pending = _start_writer(
                data_root, home, (rnd + 1) * 1000, *schedule[rnd + 1], keys, env
            )
        in_flight = int(out[-1][2])
        reported = {int(w[1]) for w in out if w[0] == "committed"}
        t = OrgTable(data_root, "acme", SERIES, OrgCrypto(keys), heads)
        t.verify()
        present = _batches(t)
        assert all(c == BATCH_ROWS for c in present.values()), (seed, point, present)
        have = {int(name[1:]) for name in present}
        expected = committed | reported
        if point in ("write.logged", "committed"):
            expected |= {in_flight}
        assert have == expected, (seed, point, n, sorted(have ^ expected))
        committed = have
        # nothing half-visible: every listed object exists, unlisted ones are only leftovers
        listed = {f["path"] for f in t.files()}
        objects = {rel for rel, _ in t.medium.list_data()}
        assert listed <= objects
        leftovers = t.gc(now=time.time() + 2 * 3600)
        if point.endswith((".tmp", ".placed")) or point == "compact.logged":
            assert leftovers > 0, (seed, point)
        else:
            assert leftovers == 0, (seed, point, leftovers)
        assert {rel for rel, _ in t.medium.list_data()} == listed
    r = subprocess.run(
        [str(venv_bin / "atomscale-lab"), "org", "verify", "acme", "--deep"],
        env={
            **env,
            "ATOMSCALE_HOME": str(home),
            "ATOMSCALE_DATA_ROOT": str(data_root),
            "ATOMSCALE_CONTEXT_ROOT": str(context_root),
        },
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, (seed, r.stdout[-1000:], r.stderr[-1000:])
    final = OrgTable(data_root, "acme", SERIES, OrgCrypto(keys), heads)
    assert _batches(final) == Counter({f"b{k:06d}": BATCH_ROWS for k in committed})


# -- attacks on the objects -------------------------------------------------------------------


@pytest.fixture
def written(tmp_path, reg, s3):
    """A table on S3 with four commits, read once (so the head store knows commit 4)."""
    root = s3.root()
    t = _table(tmp_path, reg, root)
    for k in range(4):
        t.write(series(3, 20, prefix=f"c{k}", seed=k))
    assert t.read().num_rows == 4 * 60
    return root, t


def _fresh(tmp_path, reg, root, heads=True) -> OrgTable:
    return _table(tmp_path, reg, root, heads=heads)


def test_rollback_by_deleting_the_newest_commit_is_refused(tmp_path, reg, s3, written):
    root, t = written
    newest = _log_keys(s3, root)[-1]
    assert newest.endswith("00000000000000000004.json")
    s3.delete(root, newest)
    with pytest.raises(IntegrityError, match="rolled back"):
        t.read()  # the same reader
    r = run_reader(tmp_path, reg.org_keys("a"), root=root, env=child_env(s3))
    assert r.returncode == 5 and "rolled back" in r.stdout  # a fresh process, same head store


def test_swapped_commit_objects_are_refused(tmp_path, reg, s3, written):
    root, t = written
    keys = _log_keys(s3, root)
    s3.put(root, keys[1], s3.get(root, keys[2]))  # commit 3's line under commit 2's name
    with pytest.raises(IntegrityError, match="commit"):
        _fresh(tmp_path, reg, root).read()


def test_a_commit_of_another_table_is_refused(tmp_path, reg, s3, written):
    root, t = written
    runs = store(tmp_path, reg, root=root).table("process/runs")
    runs.write([{"run_id": "r1", "start": "2026-03-01T00:00:00+00:00", "status": "active"}])
    other = sorted(s3.keys(root, "a/process/runs/_log/"))[0]
    s3.put(root, _log_keys(s3, root)[0], s3.get(root, other))
    with pytest.raises(IntegrityError, match="signature|chain|holds commit"):
        _fresh(tmp_path, reg, root, heads=False).read()


def test_tampered_data_object_is_refused(tmp_path, reg, s3, written):
    root, t = written
    rel = t.files()[0]["path"]
    key = f"a/process/series/{rel}"
    raw = bytearray(s3.get(root, key))
    raw[len(raw) // 2] ^= 0x01
    s3.put(root, key, bytes(raw))
    r = run_reader(tmp_path, reg.org_keys("a"), root=root, env=child_env(s3))
    assert r.returncode == 5 and rel in r.stdout
    r = run_reader(tmp_path, reg.org_keys("a"), root=root, env=child_env(s3), mode="verify")
    assert r.returncode == 5


def test_swapped_data_objects_are_refused(tmp_path, reg, s3, written):
    root, t = written
    a, b = (f"a/process/series/{f['path']}" for f in t.files()[:2])
    s3.put(root, a, s3.get(root, b))
    r = run_reader(tmp_path, reg.org_keys("a"), root=root, env=child_env(s3))
    assert r.returncode == 5 and "fingerprint" in r.stdout


def test_planted_commit_object_is_refused(tmp_path, reg, s3, written):
    root, t = written
    keys = _log_keys(s3, root)
    # the next sequence number, holding a copy of a valid line: the chain breaks
    s3.put(root, keys[-1].replace("04.json", "05.json"), s3.get(root, keys[1]))
    with pytest.raises(IntegrityError):
        _fresh(tmp_path, reg, root).read()
    with pytest.raises(IntegrityError):
        t.read()


def test_planted_objects_elsewhere_are_ignored_or_refused(tmp_path, reg, s3, written):
    root, t = written
    s3.put(root, "a/process/series/_log/notes.json", b"{}")  # not a commit name: ignored
    stray = "a/process/series/bucket=00/part-" + "0" * 32 + ".parquet"
    s3.put(root, stray, s3.get(root, f"a/process/series/{t.files()[0]['path']}"))
    fresh = _fresh(tmp_path, reg, root)
    assert fresh.read().num_rows == 4 * 60  # an unlisted encrypted copy is never read
    fresh.verify()
    s3.put(root, stray, b"PAR1" + b"\0" * 64 + b"PAR1")  # a planted plaintext file
    assert fresh.read().num_rows == 4 * 60
    with pytest.raises(IntegrityError, match="unlisted file .*plaintext"):
        fresh.verify()


def test_forged_checkpoint_is_refused(tmp_path, reg, s3, written, monkeypatch):
    import atomscale_lab.vault.store.log as log_mod

    root, t = written
    monkeypatch.setattr(log_mod, "CHECKPOINT_EVERY", 2)
    t.write(series(1, 5, prefix="ck"))  # commit 5 writes a checkpoint (5 - 0 >= 2)
    ck = "a/process/series/_log/checkpoint.json"
    doc = json.loads(s3.get(root, ck))
    assert doc["seq"] == 5
    s3.put(root, ck, json.dumps(dict(doc, seq=3)).encode())
    with pytest.raises(IntegrityError, match="checkpoint"):
        _fresh(tmp_path, reg, root).read()


def test_checkpoint_lets_readers_skip_old_commits(tmp_path, reg, s3, monkeypatch):
    import atomscale_lab.vault.store.log as log_mod

    monkeypatch.setattr(log_mod, "CHECKPOINT_EVERY", 4)
    root = s3.root()
    t = _table(tmp_path, reg, root)
    for k in range(10):
        t.write(series(1, 5, prefix=f"k{k}", seed=k))
    fresh = _fresh(tmp_path, reg, root)
    fetched = []
    real = fresh.medium.get_log
    monkeypatch.setattr(fresh.medium, "get_log", lambda seqs: fetched.extend(seqs) or real(seqs))
    assert fresh.read().num_rows == 50
    assert fetched == [9, 10]  # from the checkpoint at 8 on
    fresh.verify()  # and the full replay agrees with it


# -- residency, roots, settings -------------------------------------------------------------


def test_bucket_outside_the_region_is_refused(tmp_path, s3):
    s3.bucket("lab-eu", region="eu-central-1")
    eu = S3Root("lab-eu", "data", s3.config)
    eu_ctx = S3Root("lab-eu", "context", s3.config)
    kms = LocalKms(generate_root_key())
    v = Vault(Settings(home=tmp_path / "us", data_root=eu, context_root=eu_ctx), kms=kms)
    with pytest.raises(ConfigError, match="eu-central-1.*region 'us'"):
        v.create_org("acme", "us")
    assert v.orgs() == []
    v2 = Vault(
        Settings(home=tmp_path / "eu", data_root=eu, context_root=eu_ctx, region="eu"), kms=kms
    )
    assert v2.create_org("acme", "eu")["region"] == "eu"
    assert v2.org_info("acme")["data_root"] == "s3://lab-eu/data/acme"


def test_region_mapping():
    assert residency_of("eu-central-1") == "eu" and residency_of("eu-west-2") == "uk"
    assert residency_of("us-gov-west-1") == "us" and residency_of("ca-central-1") == "ca"
    assert residency_of("ap-northeast-1") == "jp" and residency_of("ap-southeast-2") == "au"
    assert residency_of("ap-south-1") is None and residency_of(None) is None


def test_roots_must_not_overlap_on_s3(tmp_path, s3):
    data = S3Root("lab-data", "org-store", s3.config)
    for ctx in (data, data.child("context"), S3Root("lab-data", "", s3.config)):
        with pytest.raises(ConfigError, match="separate"):
            Settings(home=tmp_path, data_root=data, context_root=ctx).check_roots()
    sibling = S3Root("lab-data", "org-store-context", s3.config)
    Settings(home=tmp_path, data_root=data, context_root=sibling).check_roots()
    other = S3Root("lab-ctx", "org-store", s3.config)
    Settings(home=tmp_path, data_root=data, context_root=other).check_roots()


def test_s3_settings_from_toml_and_environment(tmp_path, monkeypatch):
    for var in (
        "AWS_ENDPOINT_URL",
        "AWS_ENDPOINT_URL_S3",
        "AWS_REGION",
        "AWS_DEFAULT_REGION",
        "AWS_SESSION_TOKEN",
        "ATOMSCALE_S3_GC_GRACE",
        "ATOMSCALE_DATA_ROOT",
        "ATOMSCALE_CONTEXT_ROOT",
        "ATOMSCALE_REGION",
    ):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "env-key-id")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "env-secret-value")
    (tmp_path / "atomscale.toml").write_text(
        'data_root = "s3://lab-data/acme-data"\ncontext_root = "s3://lab-data/acme-context"\n'
        'region = "eu"\n[s3]\nendpoint_url = "https://s3.lab.example"\nregion = "eu-west-1"\n'
        'secret_access_key = "toml-secret-value"\ngc_grace = 600\n'
    )
    s = Settings.load(tmp_path)
    assert isinstance(s.data_root, S3Root) and s.data_root.prefix == "acme-data"
    cfg = s.data_root.config
    assert cfg.endpoint_url == "https://s3.lab.example" and cfg.region == "eu-west-1"
    # the environment wins over the file, like every other setting
    assert cfg.secret_access_key == "env-secret-value" and cfg.access_key_id == "env-key-id"
    assert cfg.gc_grace == 600 and "s3" not in s.extra
    for text in (repr(s), str(s), repr(cfg), repr(s.data_root), str(s.data_root)):
        assert "secret-value" not in text and "env-key-id" not in text
    (tmp_path / "atomscale.toml").write_text('[s3]\nsecret_key = "x"\n')
    monkeypatch.setenv("ATOMSCALE_DATA_ROOT", "s3://lab-data/x")
    with pytest.raises(ConfigError, match="unknown setting 'secret_key'"):
        Settings.load(tmp_path)
    monkeypatch.setenv("ATOMSCALE_DATA_ROOT", "s3://Bad_Bucket/x")
    (tmp_path / "atomscale.toml").write_text("")
    with pytest.raises(ConfigError, match="valid S3 bucket"):
        Settings.load(tmp_path)
    assert S3Config.load({}, gc_grace=5).gc_grace == 5


# -- gc ---------------------------------------------------------------------------------------


def test_gc_keeps_young_unlisted_objects(tmp_path, reg, s3):
    root = s3.root()
    t = _table(tmp_path, reg, root)
    t.write(series(4, 10))
    listed = {f["path"] for f in t.files()}
    stray = "bucket=00/part-" + "1" * 32 + ".parquet"
    s3.put(root, f"a/process/series/{stray}", b"an upload whose commit is on its way")
    now = time.time()
    assert t.gc(now=now) == 0  # younger than the grace period: another writer's, maybe
    assert stray in {rel for rel, _ in t.medium.list_data()}
    assert t.gc(now=now + 3590) == 0
    assert t.gc(now=now + 3601) == 1
    assert {rel for rel, _ in t.medium.list_data()} == listed
    s3.put(root, f"a/process/series/{stray}", b"again")
    assert t.gc(now=time.time() + 5, grace=0) == 1  # a shorter grace (setting gc_grace)
    assert t.read().num_rows == 40


def test_shred_deletes_the_orgs_objects(tmp_path, s3):
    data, ctx = s3.root(), s3.root()
    v = Vault(
        Settings(home=tmp_path, data_root=data, context_root=ctx),
        kms=LocalKms(generate_root_key()),
    )
    v.create_org("acme", "us")
    v.create_org("beta", "us")
    for org in ("acme", "beta"):
        v.store(org).table("process/series").write(series(2, 5))
    v.delete_org("acme", shred=True)
    assert not s3.keys(data, "acme/") and not s3.keys(ctx, "acme/")
    assert v.store("beta").table("process/series").read().num_rows == 10


def test_a_store_that_ignores_conditional_writes_is_refused(s3, monkeypatch):
    import atomscale_lab.vault.store.objects as objects

    root = s3.root()
    objects.check_conditional_writes(root)  # moto honours If-None-Match
    left = s3.client.list_objects_v2(Bucket=root.bucket, Prefix=root.key(".atomscale-probe"))
    assert left.get("KeyCount", 0) == 0  # the probe cleans up after itself
    # the same requests without the condition, as a store that ignores it would treat them
    client = objects.S3Medium(root).client
    real = client.put_object

    def unconditional(**kw):
        kw.pop("IfNoneMatch", None)
        return real(**kw)

    monkeypatch.setattr(client, "put_object", unconditional)
    monkeypatch.setattr(objects, "_CAS_CHECKED", set())
    with pytest.raises(ConfigError, match="ignores conditional writes"):
        objects.check_conditional_writes(root)


def test_single_user_server_serves_an_s3_root(tmp_path, s3):
    from atomscale_lab.server.access import LocalAccess
    from atomscale_lab.server.service import OrgService

    v = Vault(
        Settings(home=tmp_path, data_root=s3.root(), context_root=s3.root()),
        kms=LocalKms(generate_root_key()),
    )
    v.create_org("acme", "us")
    runs = v.store("acme").table("process/runs")
    runs.write([{"run_id": "r1", "start": "2026-03-01T00:00:00+00:00", "status": "active"}])
    svc = OrgService(LocalAccess("acme", vault=v, owner="alice"), refresh_interval=0)
    assert len(svc.runs.get(wait=True)) == 1
    version = svc._log_version("process/runs")
    runs.write([{"run_id": "r2", "start": "2026-03-01T01:00:00+00:00", "status": "active"}])
    assert svc._log_version("process/runs") != version  # the catalogue sees the new commit
    assert len(svc.runs.get(wait=True)) == 2

"""Tampering with stored files and logs is refused with a clear error, never read silently.

Reads of tampered Parquet run in a child process: a crash of the Parquet library counts as a
failure (negative return code), only the clean IntegrityError exit code (5) passes.
"""

import shutil

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from atomscale_lab.errors import IntegrityError
from atomscale_lab.schema import SERIES
from atomscale_lab.vault.store import OrgTable, bucket_of
from tests.support.vault import make_keys, run_reader, series, store

INTEGRITY = 5


@pytest.fixture
def env(tmp_path):
    """Org ``a`` with one big file (run-0000, incompressible values) and a few small ones."""
    reg = make_keys(tmp_path)
    st = store(tmp_path, reg)
    t = st.table("process/series")
    t.write(series(1, 60_000))
    t.write(series(6, 50, prefix="small"))
    return tmp_path, reg, t


def _big(t):
    return max(t.files(), key=lambda f: f["size"])


def _refused(proc, *needles):
    out = proc.stdout + proc.stderr
    assert proc.returncode == INTEGRITY, (proc.returncode, out[-2000:])
    assert out.startswith("IntegrityError: ")
    for n in needles:
        assert n in out, out


def _flip(path, offset):
    raw = bytearray(path.read_bytes())
    raw[offset] ^= 0x01
    path.write_bytes(bytes(raw))


def test_untouched_reads_in_child(env):
    tmp, reg, t = env
    p = run_reader(tmp, reg.org_keys("a"))
    assert p.returncode == 0 and p.stdout.strip() == f"rows: {60_000 + 300}", p.stdout + p.stderr
    p = run_reader(tmp, reg.org_keys("a"), mode="dataset")
    assert p.returncode == 0 and p.stdout.strip() == f"rows: {60_000 + 300}", p.stdout + p.stderr


@pytest.mark.parametrize("where", [0.2, 0.5])
def test_flipped_byte_in_data_page(env, where):
    tmp, reg, t = env
    f = _big(t)
    assert f["size"] > 4 * 65536  # the flip lies outside the fingerprinted tail
    _flip(t.path / f["path"], int(f["size"] * where))
    _refused(run_reader(tmp, reg.org_keys("a")), f["path"], "failed decryption")
    _refused(run_reader(tmp, reg.org_keys("a"), mode="verify"), f["path"])
    p = run_reader(tmp, reg.org_keys("a"), mode="dataset")
    # A clean error (no crash), and the one of the page that failed authentication: DuckDB
    # wraps the IOError of pyarrow's decryption (not the store's IntegrityError: the scan runs
    # in DuckDB's threads over the dataset the store handed out).
    assert p.returncode == 9, (p.returncode, p.stdout + p.stderr)
    assert p.stdout.startswith("other error InvalidInputException: "), p.stdout
    assert "IOError: Failed decryption" in p.stdout and "rows:" not in p.stdout, p.stdout


def test_flipped_byte_in_footer(env):
    tmp, reg, t = env
    f = _big(t)
    _flip(t.path / f["path"], f["size"] - 30)
    _refused(run_reader(tmp, reg.org_keys("a")), f["path"], "fingerprint")


def test_swapped_file_within_org(env):
    tmp, reg, t = env
    small = [f for f in t.files() if f["rows"] < 1000]
    a, b = small[0], small[1]
    shutil.copyfile(t.path / a["path"], t.path / b["path"])
    _refused(run_reader(tmp, reg.org_keys("a")), b["path"])


def test_planted_plaintext_file(env):
    tmp, reg, t = env
    f = t.files()[-1]
    plain = series(1, 50, prefix="small").cast(SERIES.schema)
    pq.write_table(plain, t.path / f["path"])
    _refused(run_reader(tmp, reg.org_keys("a")), f["path"], "plaintext")


def test_unlisted_plaintext_file_is_never_read(env):
    tmp, reg, t = env
    planted = t.path / f"bucket={bucket_of('evil-0000'):02d}" / ("part-" + "e" * 32 + ".parquet")
    planted.parent.mkdir(exist_ok=True)
    pq.write_table(series(1, 77, prefix="evil").cast(SERIES.schema), planted)
    p = run_reader(tmp, reg.org_keys("a"))
    assert p.returncode == 0 and p.stdout.strip() == f"rows: {60_000 + 300}"
    assert "evil-0000" not in t.run_ids()
    _refused(run_reader(tmp, reg.org_keys("a"), mode="verify"), planted.name, "plaintext")


def test_other_orgs_file_copied_in(env):
    tmp, reg, t = env
    tb = store(tmp, reg, "b").table("process/series")
    tb.write(series(6, 50, prefix="small"))  # same runs, same buckets, similar sizes
    victim = t.files()[-1]
    foreign = next(f for f in tb.files() if f["bucket"] == victim["bucket"])
    shutil.copyfile(tb.path / foreign["path"], t.path / victim["path"])
    _refused(run_reader(tmp, reg.org_keys("a")), victim["path"])


def test_truncated_file(env):
    tmp, reg, t = env
    f = _big(t)
    path = t.path / f["path"]
    path.write_bytes(path.read_bytes()[: f["size"] // 2])
    _refused(run_reader(tmp, reg.org_keys("a")), f["path"], "truncated")
    path.write_bytes(b"")
    _refused(run_reader(tmp, reg.org_keys("a")), f["path"])


def test_rolled_back_log(env):
    tmp, reg, t = env
    log = t.path / "_log" / "commits.jsonl"
    old = log.read_bytes()
    t.write(series(2, 10, prefix="later"))
    log.write_bytes(old)
    _refused(run_reader(tmp, reg.org_keys("a")), "rolled back")  # head store catches it
    # without a head store, this process's high-water mark still does
    fresh = OrgTable(tmp / "data", "a", SERIES, t.crypto)
    with pytest.raises(IntegrityError, match="rolled back"):
        fresh.read()


def test_rewritten_log_with_same_length(env):
    tmp, reg, t = env
    log = t.path / "_log" / "commits.jsonl"
    lines = log.read_bytes().splitlines(keepends=True)
    t2 = store(tmp, reg, "a", heads=False).table("process/series")
    t2.read()
    # another valid history of the same length (a fork) must not replace the seen one
    log.write_bytes(lines[0])
    log.with_suffix(".bak").write_bytes(b"".join(lines))
    with pytest.raises(IntegrityError, match="rolled back"):
        t2.read()


def test_edited_log_lines(env):
    tmp, reg, t = env
    log = t.path / "_log" / "commits.jsonl"
    lines = log.read_bytes().splitlines(keepends=True)
    assert b'"op":"add"' in lines[0]
    log.write_bytes(lines[0].replace(b'"op":"add"', b'"op":"adx"') + lines[1])
    with pytest.raises(IntegrityError, match="line 1 failed its signature check"):
        OrgTable(tmp / "data", "a", SERIES, t.crypto).read()
    # dropping the first line breaks the chain
    log.write_bytes(lines[1])
    with pytest.raises(IntegrityError, match="chain"):
        OrgTable(tmp / "data", "a", SERIES, t.crypto).read()
    log.write_bytes(b"not json\n" + lines[1])
    with pytest.raises(IntegrityError, match="line 1 is corrupt"):
        OrgTable(tmp / "data", "a", SERIES, t.crypto).read()


def test_torn_last_line_is_uncommitted(env):
    tmp, reg, t = env
    log = t.path / "_log" / "commits.jsonl"
    with open(log, "ab") as f:
        f.write(b'{"seq":3,"added":[{"path":"bucket=00/part-')
    assert t.read().num_rows == 60_300
    t.write(series(2, 10, prefix="after"))
    assert OrgTable(tmp / "data", "a", SERIES, t.crypto).read().num_rows == 60_320
    assert log.read_bytes().count(b"\n") == 3


def test_plaintext_footer_is_not_accepted_as_encrypted(tmp_path):
    """A hand-made file with PARE magic but junk inside is refused, not crashed on."""
    reg = make_keys(tmp_path)
    t = store(tmp_path, reg).table("process/series")
    t.write(series(1, 20))
    f = t.files()[0]
    path = t.path / f["path"]
    size = f["size"]
    path.write_bytes(b"PARE" + b"\0" * (size - 12) + (100).to_bytes(4, "little") + b"PARE")
    _refused(run_reader(tmp_path, reg.org_keys("a")), f["path"])


def test_arrow_table_of_other_schema_refused(tmp_path):
    reg = make_keys(tmp_path)
    t = store(tmp_path, reg).table("process/series")
    with pytest.raises(Exception, match="unknown field"):
        t.write(pa.table({"nope": [1]}))

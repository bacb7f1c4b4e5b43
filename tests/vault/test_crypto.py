"""Root key parsing, the local KMS, the KMS plug-in loader, the key registry and OrgCrypto."""

import sqlite3
import threading

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from atomscale_lab.errors import ConfigError, KeyUnavailable, OrgExists, RootKeyError, UnknownOrg
from atomscale_lab.vault.crypto import PURPOSES, OrgCrypto, OrgKeys, key_refusal
from atomscale_lab.vault.kms import LocalKms, generate_root_key, load_kms, parse_root_keys
from atomscale_lab.vault.registry import KeyRegistry


class ReversingKms:
    """A stand-in external KMS (the plug-in interface), selected through ATOMSCALE_KMS."""

    key_id = "reversing-test-kms"

    def wrap(self, plaintext, aad):
        return b"R" + aad + b"|" + plaintext[::-1]

    def unwrap(self, blob, aad):
        prefix = b"R" + aad + b"|"
        if not blob.startswith(prefix):
            raise RootKeyError("the root key does not match the stored keys")
        return blob[len(prefix) :][::-1]


def test_generated_root_key_format():
    k = generate_root_key()
    assert k.startswith("ask1:") and ";" not in k
    assert len(parse_root_keys(k)) == 1
    assert len(parse_root_keys(f"{generate_root_key()};{k}")) == 2
    assert generate_root_key() != k


@pytest.mark.parametrize(
    "text, msg",
    [
        ("", "empty"),
        ("ask1:not base64!!", "not valid base64url"),
        ("ask1:" + "A" * 10, "must be 32 bytes"),
        (generate_root_key() + ";ask1:abcd", "root key #2"),
    ],
)
def test_malformed_root_key_is_one_line_error(text, msg):
    with pytest.raises(RootKeyError, match=msg) as ei:
        LocalKms(text)
    assert "\n" not in str(ei.value)
    if text:
        assert text not in str(ei.value)


def test_missing_root_key(monkeypatch):
    monkeypatch.delenv("ATOMSCALE_ROOT_KEY", raising=False)
    monkeypatch.delenv("ATOMSCALE_ROOT_KEY_FILE", raising=False)
    monkeypatch.delenv("ATOMSCALE_KMS", raising=False)
    with pytest.raises(RootKeyError, match="no root key"):
        LocalKms.from_env()
    with pytest.raises(RootKeyError, match="no root key"):
        load_kms()


def test_root_key_from_file(monkeypatch, tmp_path):
    f = tmp_path / "root.key"
    f.write_text(generate_root_key() + "\n")
    monkeypatch.delenv("ATOMSCALE_ROOT_KEY", raising=False)
    monkeypatch.setenv("ATOMSCALE_ROOT_KEY_FILE", str(f))
    kms = LocalKms.from_env()
    assert kms.unwrap(kms.wrap(b"x" * 32, b"aad"), b"aad") == b"x" * 32


def test_local_kms_binds_aad_and_rotates():
    old, new = generate_root_key(), generate_root_key()
    k_old = LocalKms(old)
    blob = k_old.wrap(b"k" * 32, b"org/a/data/v1")
    assert b"k" * 32 not in blob
    with pytest.raises(RootKeyError):
        k_old.unwrap(blob, b"org/b/data/v1")
    both = LocalKms(f"{new};{old}")  # first wraps, all unwrap
    assert both.unwrap(blob, b"org/a/data/v1") == b"k" * 32
    assert both.key_id != k_old.key_id
    with pytest.raises(RootKeyError, match="does not match the stored keys"):
        LocalKms(new).unwrap(blob, b"org/a/data/v1")
    assert "ask1" not in repr(both)


def test_load_kms_plugin(monkeypatch):
    monkeypatch.setenv("ATOMSCALE_KMS", f"{__name__}:ReversingKms")
    kms = load_kms()
    assert isinstance(kms, ReversingKms)
    monkeypatch.setenv("ATOMSCALE_KMS", "no_such_module_xyz:Kms")
    with pytest.raises(ConfigError, match="cannot load the KMS plug-in"):
        load_kms()
    monkeypatch.setenv("ATOMSCALE_KMS", "justamodule")
    with pytest.raises(ConfigError, match="module:ClassName"):
        load_kms()


def test_registry_lifecycle(tmp_path):
    db = tmp_path / "registry.sqlite"
    reg = KeyRegistry(db, LocalKms(generate_root_key()))
    reg.create_org("a")
    with pytest.raises(OrgExists):
        reg.create_org("a")
    assert reg.versions("a") == {p: [1] for p in PURPOSES}
    v1, data1 = reg.key("a", "data")
    assert v1 == 1 and len(data1) == 32
    assert reg.key("a", "context")[1] not in (data1, reg.key("a", "audit")[1])
    assert reg.rotate("a") == 2
    keys = reg.org_keys("a")
    assert keys.current == 2 and keys.keys[1] == data1
    assert reg.key("a", "data", 1) == (1, data1)
    with pytest.raises(KeyUnavailable):
        reg.key("a", "data", 9)
    with pytest.raises(UnknownOrg):
        reg.org_keys("nobody")
    # WAL mode, and others can share the file with their own tables
    con = sqlite3.connect(db)
    assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    con.execute("CREATE TABLE IF NOT EXISTS other (x)")
    con.close()
    KeyRegistry(db, reg.kms)  # re-opening keeps everything
    assert KeyRegistry(db, reg.kms).org_keys("a") == keys


def test_wrong_root_key_is_refused(tmp_path):
    db = tmp_path / "registry.sqlite"
    KeyRegistry(db, LocalKms(generate_root_key())).create_org("a")
    with pytest.raises(RootKeyError, match="the root key does not match the stored keys"):
        KeyRegistry(db, LocalKms(generate_root_key())).org_keys("a")


def test_rewrap_under_new_root_key_and_plugin(tmp_path):
    db = tmp_path / "registry.sqlite"
    old = LocalKms(generate_root_key())
    reg = KeyRegistry(db, old)
    reg.create_org("a")
    reg.create_org("b")
    reg.rotate("a")
    before = {o: reg.org_keys(o) for o in ("a", "b")}
    ctx = reg.key("a", "context")
    assert reg.rewrap(ReversingKms()) == 9  # 2 orgs x 4 purposes + data v2 of a
    plug = KeyRegistry(db, ReversingKms())
    assert {o: plug.org_keys(o) for o in ("a", "b")} == before
    new = LocalKms(generate_root_key())
    assert plug.rewrap(new) == 9
    assert KeyRegistry(db, new).key("a", "context") == ctx
    with pytest.raises(RootKeyError):
        KeyRegistry(db, old).org_keys("a")


def test_shred_overwrites_and_removes(tmp_path):
    db = tmp_path / "registry.sqlite"
    reg = KeyRegistry(db, LocalKms(generate_root_key()))
    reg.create_org("a")
    reg.create_org("b")
    con = sqlite3.connect(db)
    blobs = [r[0] for r in con.execute("SELECT wrapped FROM org_keys WHERE org='a'")]
    con.close()
    reg.shred("a")
    with pytest.raises(KeyUnavailable, match="destroyed"):
        reg.org_keys("a")
    with pytest.raises(KeyUnavailable, match="destroyed"):
        reg.key("a", "context")
    assert reg.org_keys("b").current == 1
    raw = b"".join(p.read_bytes() for p in tmp_path.iterdir() if p.name.startswith("registry"))
    assert blobs and not any(b in raw for b in blobs)


def test_org_keys_never_show_bytes():
    k = OrgKeys("a", {1: b"\x01" * 32, 2: b"\x02" * 32})
    for text in (repr(k), str(k), f"{k}"):
        assert "\\x01" not in text and "AQEB" not in text and "versions=[1, 2]" in text
    assert OrgKeys.from_json(k.to_json()) == k
    assert k.current == 2
    assert k.fingerprint(1) != k.fingerprint(2) and len(k.fingerprint()) == 16
    with pytest.raises(KeyUnavailable):
        OrgKeys.from_json({"org": "a", "keys": {"1": "short"}})


def _write(path, crypto, n=1000):
    t = pa.table({"x": list(range(n))})
    with pq.ParquetWriter(
        path,
        t.schema,
        encryption_properties=crypto.file_encryption_properties(),
        compression="zstd",
    ) as w:
        w.write_table(t)
    return t


def test_org_crypto_round_trip_and_isolation(tmp_path):
    reg = KeyRegistry(tmp_path / "r.sqlite", LocalKms(generate_root_key()))
    reg.create_org("a")
    reg.create_org("b")
    ca, cb = OrgCrypto(reg.org_keys("a")), OrgCrypto(reg.org_keys("b"))
    f = tmp_path / "f.parquet"
    t = _write(f, ca)
    raw = f.read_bytes()
    assert raw[:4] == b"PARE" and raw[-4:] == b"PARE"
    assert pq.read_table(f, decryption_properties=ca.file_decryption_properties()).equals(t)
    cfg = ca.encryption_config()
    assert cfg.encryption_algorithm == "AES_GCM_V1" and cfg.uniform_encryption
    assert cfg.double_wrapping and not cfg.plaintext_footer and cfg.footer_key == "a/data/v1"
    # b's factory must refuse a's file even right after a's keys were cached in this process
    with pytest.raises(KeyUnavailable, match="another org") as ei:
        pq.read_table(f, decryption_properties=cb.file_decryption_properties())
    assert "InvalidTag" not in str(ei.value)
    # a's name with b's key bytes: the unwrap fails with our message, not the library's
    forged = OrgCrypto(OrgKeys("a", reg.org_keys("b").keys))
    with pytest.raises(KeyUnavailable, match="does not match"):
        pq.read_table(f, decryption_properties=forged.file_decryption_properties())
    with pytest.raises(KeyUnavailable):
        OrgCrypto(OrgKeys("a", {}))


def test_old_versions_read_after_rotation(tmp_path):
    reg = KeyRegistry(tmp_path / "r.sqlite", LocalKms(generate_root_key()))
    reg.create_org("a")
    f1 = tmp_path / "v1.parquet"
    t = _write(f1, OrgCrypto(reg.org_keys("a")))
    reg.rotate("a")
    c2 = OrgCrypto(reg.org_keys("a"))
    assert c2.version == 2 and c2.encryption_config().footer_key == "a/data/v2"
    f2 = tmp_path / "v2.parquet"
    _write(f2, c2)
    for f in (f1, f2):
        assert pq.read_table(f, decryption_properties=c2.file_decryption_properties()).equals(t)
    only_v1 = OrgCrypto(OrgKeys("a", {1: reg.org_keys("a").keys[1]}))
    with pytest.raises(KeyUnavailable, match="version 2"):
        pq.read_table(f2, decryption_properties=only_v1.file_decryption_properties())


def test_mac_keys_are_derived():
    keys = OrgKeys("a", {1: b"\x07" * 32, 2: b"\x08" * 32})
    c = OrgCrypto(keys)
    k = c.mac_key("commit-log")
    assert len(k) == 32 and k not in keys.keys.values()
    assert k == c.mac_key("commit-log", 2) != c.mac_key("commit-log", 1)
    assert k != c.mac_key("other")
    assert k != OrgCrypto(OrgKeys("b", keys.keys)).mac_key("commit-log")
    with pytest.raises(KeyUnavailable):
        c.mac_key("commit-log", 5)


def test_concurrent_refusals_each_reach_their_own_reader(tmp_path):
    # Two threads read through one OrgCrypto and are refused for different reasons; neither
    # looks at its reason before both were refused. Each still gets its own: the reason travels
    # with the exception, nothing about a refusal is kept on the shared object.
    reg = KeyRegistry(tmp_path / "r.sqlite", LocalKms(generate_root_key()))
    reg.create_org("a")
    reg.create_org("b")
    foreign = tmp_path / "b.parquet"
    _write(foreign, OrgCrypto(reg.org_keys("b")))
    v1 = reg.org_keys("a").keys[1]
    reg.rotate("a")
    newer = tmp_path / "a-v2.parquet"
    _write(newer, OrgCrypto(reg.org_keys("a")))
    reader = OrgCrypto(OrgKeys("a", {1: v1}))  # holds version 1 only, cannot fetch more
    both_refused = threading.Barrier(2, timeout=60)
    got: dict[str, BaseException] = {}

    def read(name, path):
        try:
            pq.read_table(path, decryption_properties=reader.file_decryption_properties())
        except Exception as e:  # noqa: BLE001 - recorded and asserted on below
            both_refused.wait()  # the other thread has been refused too by now
            got[name] = key_refusal(e) or e

    threads = [
        threading.Thread(target=read, args=(name, path))
        for name, path in (("newer", newer), ("foreign", foreign))
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(90)
    assert not any(t.is_alive() for t in threads)
    assert isinstance(got["foreign"], KeyUnavailable), got["foreign"]
    assert "another org" in str(got["foreign"]) and "version 2" not in str(got["foreign"])
    assert isinstance(got["newer"], KeyUnavailable), got["newer"]
    assert "version 2" in str(got["newer"]) and "another org" not in str(got["newer"])
    # a refusal another layer wrapped is found behind the wrapper; a plain read error is none
    try:
        try:
            raise got["newer"]
        except KeyUnavailable as inner:
            raise OSError("the read failed") from inner
    except OSError as outer:
        assert key_refusal(outer) is got["newer"]
    assert key_refusal(OSError("truncated file")) is None

"""Context labels: separate root and key, audited joins, and no label ever outside the store."""

import json
from pathlib import Path

import pandas as pd
import pytest

from atomscale_lab.cli import demo
from atomscale_lab.errors import AtomscaleError, ValidationError
from atomscale_lab.schema import CONTEXT, CONTEXT_FIELDS
from atomscale_lab.vault.crypto import OrgCrypto
from atomscale_lab.vault.facade import Vault
from atomscale_lab.vault.kms import LocalKms, generate_root_key
from atomscale_lab.vault.settings import Settings
from atomscale_lab.vault.store import OrgTable

MIN_LEN = 6
"""Label strings shorter than this are not searched for: a 3-byte film name like "GaN" turns up
by chance in megabytes of ciphertext; six bytes do not (2^-48 per position)."""


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def world(request, tmp_path_factory):
    """A vault with demo data and labels: registries in SQLite, then in PostgreSQL."""
    url = None
    if request.param == "postgres":
        from tests.support.postgres import upgraded

        cluster = request.getfixturevalue("postgres_cluster")
        url = upgraded(cluster.url(schema=cluster.new_schema("ctx")))
    home = tmp_path_factory.mktemp("ctx") / "home"
    vault = Vault(
        Settings(
            home=home, data_root=home / "data", context_root=home / "context", database_url=url
        ),
        kms=LocalKms(generate_root_key()),
    )
    vault.create_org("acme", "us")
    data = demo.build(runs=16, seed=7, points_per_run=200)
    demo_written = demo.generate(vault, "acme", runs=16, seed=7, points_per_run=200)
    assert demo_written[CONTEXT.name] == 16
    return vault, data


def label_strings(labels) -> set[str]:
    out = set()
    for row in labels.to_pylist():
        for f in CONTEXT_FIELDS:
            if f == "sample":  # the sample name is raw data too (process/runs)
                continue
            v = row[f]
            for s in v if isinstance(v, list) else [v]:
                if isinstance(s, str) and len(s) >= MIN_LEN:
                    out.add(s)
    return out


def files_under(root: Path):
    return [p for p in root.rglob("*") if p.is_file()]


def test_join_is_audited_and_never_logs_values(world):
    vault, data = world
    runs = vault.store("acme").table("process/runs").to_pandas()
    out = vault.context("acme").join(
        runs,
        fields=["material_system", "sample", "tags"],
        purpose="compare growth rates by system",
        actor="alice",
    )
    assert len(out) == len(runs) and list(out.run_id) == list(runs.run_id)
    assert "sample_label" in out.columns and (out.sample_label == out["sample"]).all()
    expected = dict(
        zip(
            data.labels.column("run_id").to_pylist(),
            data.labels.column("material_system").to_pylist(),
            strict=True,
        )
    )
    assert list(out.material_system) == [expected[r] for r in out.run_id]
    ev = vault.audit("acme").events(action="context.join", limit=1)[0]
    assert ev["actor"] == "alice" and ev["outcome"] == "allowed"
    assert ev["detail"]["fields"] == ["material_system", "sample", "tags"]
    assert ev["detail"]["purpose"] == "compare growth rates by system"
    assert ev["detail"]["runs"] == len(runs)
    text = json.dumps(ev)
    for s in label_strings(data.labels):
        assert s not in text


def test_join_requires_purpose_and_known_fields(world):
    vault, _ = world
    frame = pd.DataFrame({"run_id": ["MBE-1-0001"]})
    ctx = vault.context("acme")
    for purpose in ("", "   "):
        with pytest.raises(ValidationError, match="purpose is required"):
            ctx.join(frame, fields=["film"], purpose=purpose, actor="bob")
    denied = vault.audit("acme").events(action="context.join", limit=1)[0]
    assert denied["outcome"] == "denied" and denied["actor"] == "bob"
    with pytest.raises(ValidationError, match="valid fields: sample, material_system, film"):
        ctx.join(frame, fields=["film", "recipe"], purpose="x", actor="bob")
    with pytest.raises(ValidationError, match="at least one"):
        ctx.join(frame, fields=[], purpose="x", actor="bob")
    assert vault.audit("acme").verify() > 0


def test_raw_tables_carry_no_labels(world):
    vault, _ = world
    label_cols = set(CONTEXT_FIELDS) - {"sample"}
    for t in vault.store("acme").tables():
        assert not label_cols & set(t.read().column_names), t.spec.name


def test_context_needs_the_context_key(world):
    vault, _ = world
    s = vault.settings
    data_crypto = OrgCrypto(vault.org_keys("acme"))
    wrong = OrgTable(s.context_root, "acme", CONTEXT, data_crypto, None)
    with pytest.raises(AtomscaleError):
        wrong.read()
    assert (s.context_root / "acme" / CONTEXT.name).is_dir()
    assert not (s.data_root / "acme" / "context").exists()


def test_no_label_string_outside_the_context_store(world):
    vault, data = world
    # Exercise everything that writes files: a join, a read, an export-like read of raw tables.
    ctx = vault.context("acme")
    ctx.get(["MBE-1-0001"], actor="carol", purpose="check")
    ctx.join(
        pd.DataFrame({"run_id": data.runs.column("run_id").to_pylist()}),
        fields=list(CONTEXT_FIELDS),
        purpose="full review",
        actor="carol",
    )
    strings = label_strings(data.labels)
    assert len(strings) >= 15
    home, croot = vault.settings.home, vault.settings.context_root
    outside = [p for p in files_under(home) if croot not in p.parents]
    inside = files_under(croot)
    assert len(outside) > 20 and len(inside) >= 2
    if vault.settings.database_url:  # the audit chain is in PostgreSQL: search its rows
        audit = "\n".join(r[0] for r in vault._db.sql("SELECT line FROM audit_events"))
        assert '"action":"context.join"' in audit
        for s in strings:
            assert s not in audit and json.dumps(s) not in audit, s
    else:
        assert any(p.suffix == ".jsonl" and "audit" in p.parts for p in outside)
    for p in outside + inside:
        raw = p.read_bytes()
        for s in strings:
            for form in (s.encode(), s.encode("utf-16-le"), json.dumps(s).encode()):
                assert form not in raw, (str(p), s)

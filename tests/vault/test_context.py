"""Context labels: separate root and key, audited joins, and no label ever outside the store.

Every test runs once per backend: local folders, and data and context roots on S3 (moto)."""

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
from atomscale_lab.vault.store.media import medium

MIN_LEN = 6
"""Label strings shorter than this are not searched for: a 3-byte film name like "GaN" turns up
by chance in megabytes of ciphertext; six bytes do not (2^-48 per position)."""


@pytest.fixture(scope="module", params=["local", "s3"])
def world(request, tmp_path_factory):
    home = tmp_path_factory.mktemp("ctx") / "home"
    if request.param == "local":
        data_root, context_root = home / "data", home / "context"
    else:
        s3 = request.getfixturevalue("s3")
        data_root, context_root = s3.root(), s3.root()
    settings = Settings(home=home, data_root=data_root, context_root=context_root)
    vault = Vault(settings, kms=LocalKms(generate_root_key()))
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


def blobs(root, s3=None) -> list[tuple[str, bytes]]:
    """``(name, bytes)`` of every file (or object) under a storage root."""
    if isinstance(root, Path):
        return [(str(p), p.read_bytes()) for p in files_under(root)]
    return [(k, s3.get(root, k)) for k in s3.keys(root)]


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
    assert medium(s.context_root, "acme", CONTEXT.name).list_data()
    assert not medium(s.data_root, "acme", "context").list_data()


def test_no_label_string_outside_the_context_store(world, request):
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
    s3 = None if isinstance(croot, Path) else request.getfixturevalue("s3")
    outside = [
        (str(p), p.read_bytes())
        for p in files_under(home)
        if not isinstance(croot, Path) or croot not in p.parents
    ]
    if s3 is not None:
        outside += blobs(vault.settings.data_root, s3)
    inside = blobs(croot, s3)
    assert len(outside) > 20 and len(inside) >= 2
    assert any(n.endswith(".jsonl") and "/audit/" in n for n, _ in outside)
    for name, raw in outside + inside:
        for s in strings:
            for form in (s.encode(), s.encode("utf-16-le"), json.dumps(s).encode()):
                assert form not in raw, (name, s)

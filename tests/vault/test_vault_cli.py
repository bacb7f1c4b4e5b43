"""The ``atomscale-lab`` command, run as a subprocess: happy paths, exit codes, one-line errors."""

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest

from atomscale_lab.cli import main as cli
from atomscale_lab.vault.facade import Vault
from atomscale_lab.vault.kms import LocalKms, generate_root_key
from atomscale_lab.vault.settings import Settings

RUNS = 6


class Cli:
    """Runs the console script with a private home and root key file."""

    def __init__(self, exe: Path, home: Path):
        self.exe, self.home = exe, home
        self.key_file = home.parent / "root.key"
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("ATOMSCALE_")}
        self.env.update(ATOMSCALE_HOME=str(home), ATOMSCALE_ROOT_KEY_FILE=str(self.key_file))

    def __call__(self, *args, env=None, stdin=None, ok=True, binary=False):
        e = dict(self.env)
        for k, v in (env or {}).items():
            if v is None:
                e.pop(k, None)
            else:
                e[k] = v
        p = subprocess.run(
            [str(self.exe), *args],
            env=e,
            capture_output=True,
            input=stdin.encode() if stdin is not None else None,
            timeout=120,
        )
        out = p.stdout if binary else p.stdout.decode()
        err = p.stderr.decode()
        if ok:
            assert p.returncode == 0, (args, p.returncode, err)
        assert "Traceback" not in err, err
        return p.returncode, out, err

    def vault(self):
        return Vault(Settings.load(self.home), kms=LocalKms(self.key_file.read_text()))


def one_line_error(err: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("atomscale-lab: error: "), err
    return lines[0]


@pytest.fixture(scope="module")
def run(tmp_path_factory, venv_bin):
    base = tmp_path_factory.mktemp("cli")
    c = Cli(venv_bin / "atomscale-lab", base / "home")
    rc, key, _ = c("root-key", "generate")
    c.key_file.write_text(key)
    c("org", "create", "acme", "--region", "us")
    c("demo-data", "acme", "--runs", str(RUNS), "--seed", "4", "--points", "120")
    return c


def test_root_key_generate(run):
    _, a, _ = run("root-key", "generate")
    _, b, _ = run("root-key", "generate")
    assert a.startswith("ask1:") and a != b and len(a.strip()) == 48
    LocalKms(a)


def test_help_everywhere(run):
    for args in (
        [],
        ["org"],
        ["org", "create"],
        ["org", "delete"],
        ["export"],
        ["audit", "show"],
        ["context", "show"],
        ["root-key", "rotate"],
        ["demo-data"],
    ):
        _, out, _ = run(*args, "--help")
        assert "usage: atomscale-lab" in out


def test_org_list_and_show(run):
    _, out, _ = run("org", "list")
    assert "acme" in out and "us" in out
    _, out, _ = run("org", "list", "--json")
    assert [o["name"] for o in json.loads(out)] == ["acme"]
    _, out, _ = run("org", "show", "acme")
    assert "process/series" in out and "v1" in out
    _, out, _ = run("org", "show", "acme", "--json")
    info = json.loads(out)
    assert info["tables"]["process/runs"]["rows"] == RUNS
    v = run.vault()
    for purpose in ("data", "context", "audit"):
        assert v.keys.key("acme", purpose)[1].hex() not in out


def test_exports(run, tmp_path):
    v = run.vault()
    series = v.store("acme").table("process/series").read()
    a_run = sorted(set(series.column("run_id").to_pylist()))[0]
    n_run = series.filter(series.column("run_id").to_numpy(zero_copy_only=False) == a_run).num_rows

    _, out, err = run("export", "acme", "--category", "runs", "--format", "csv")
    assert "NOT encrypted" in err
    df = pd.read_csv(io.StringIO(out))
    assert len(df) == RUNS and "material_system" not in df.columns

    _, out, _ = run("export", "acme", "--category", "process", "--run", a_run, "--format", "json")
    rows = json.loads(out)
    assert len(rows) == n_run and {r["run_id"] for r in rows} == {a_run}

    target = tmp_path / "series.parquet"
    _, out, _ = run(
        "export",
        "acme",
        "--category",
        "process",
        "--run",
        a_run,
        "--format",
        "parquet",
        "--output",
        str(target),
    )
    t = pq.read_table(target)
    assert t.num_rows == n_run and (target.stat().st_mode & 0o077) == 0
    rc, _, err = run(
        "export",
        "acme",
        "--category",
        "process",
        "--format",
        "parquet",
        "--output",
        str(target),
        ok=False,
    )
    assert rc == 1 and "exists" in one_line_error(err)

    _, out, _ = run("export", "acme", "--category", "metrology", "--format", "csv")
    m = pd.read_csv(io.StringIO(out))
    xrd = m[m.technique == "XRD"].iloc[0]
    assert len(json.loads(xrd["x"])) == len(json.loads(xrd["y"])) > 100

    _, out, _ = run(
        "export", "acme", "--category", "tool_state", "--format", "parquet", binary=True
    )
    assert (
        pq.read_table(io.BytesIO(out)).num_rows
        == v.store("acme").table("tool_state/readings").num_rows()
    )

    rc, _, err = run("export", "acme", "--category", "bogus", "--format", "csv", ok=False)
    assert rc == 1 and "unknown category" in one_line_error(err)
    rc, _, err = run(
        "export", "acme", "--category", "runs", "--run", "nope", "--format", "csv", ok=False
    )
    assert rc == 3 and "not found" in one_line_error(err)
    exports = v.audit("acme").events(action="data.export", limit=20)
    assert len(exports) >= 5 and exports[-1]["detail"]["format"] == "csv"


def test_context_show_is_audited(run):
    v = run.vault()
    a_run = sorted(v.store("acme").table("process/runs").run_ids())[0]
    _, out, _ = run(
        "context", "show", "acme", "--run", a_run, "--format", "json", "--purpose", "label audit"
    )
    doc = json.loads(out)
    assert doc["run_id"] == a_run and doc["material_system"] and isinstance(doc["tags"], list)
    _, text, _ = run("context", "show", "acme", "--run", a_run)
    assert doc["material_system"] in text
    ev = v.audit("acme").events(action="context.read", limit=2)
    assert ev[1]["detail"]["purpose"] == "label audit"
    assert doc["material_system"] not in v.audit("acme").path.read_text()
    rc, _, err = run("context", "show", "acme", "--run", "nope", ok=False)
    assert rc == 3 and "no context labels" in one_line_error(err)


def test_audit_commands(run):
    _, out, _ = run("audit", "verify", "acme")
    assert "verified" in out
    _, out, _ = run("audit", "show", "acme", "--limit", "3")
    assert len(out.strip().splitlines()) == 3
    _, out, _ = run("audit", "show", "acme", "--json", "--action", "org.create")
    assert json.loads(out)[0]["detail"] == {"region": "us"}
    _, out, _ = run("audit", "verify", "--deployment")
    assert "deployment" in out


def test_user_errors_are_one_line(run):
    cases = [
        (("org", "show", "nope"), {}, 3, "unknown org"),
        (("org", "show", "acme"), {"ATOMSCALE_ROOT_KEY_FILE": None}, 2, "no root key"),
        (("org", "show", "acme"), {"ATOMSCALE_ROOT_KEY": "ask1:not-a-key"}, 2, "root key"),
        (
            ("org", "show", "acme"),
            {"ATOMSCALE_ROOT_KEY_FILE": "/nonexistent/key"},
            2,
            "cannot read the root key file",
        ),
        (("org", "create", "beta", "--region", "mars"), {}, 1, "unknown region"),
        (("org", "create", "beta", "--region", "eu"), {}, 1, "cannot create org 'beta'"),
        (("org", "create", "Beta!", "--region", "us"), {}, 1, "invalid org name"),
        (("org", "create", "beta"), {}, 2, "--region"),
        (("demo-data", "acme", "--runs", "zero"), {}, 2, "invalid int"),
        (("demo-data", "acme", "--runs", "2"), {}, 1, "already has data"),
        (("audit", "verify", "nope"), {}, 3, "unknown org"),
    ]
    for args, env, code, text in cases:
        rc, _, err = run(*args, env=env, ok=False)
        assert rc == code, (args, rc, err)
        line = one_line_error(err)
        assert text in line, (args, line)
        assert "ask1:" not in line
    wrong = generate_root_key()
    rc, _, err = run(
        "org",
        "show",
        "acme",
        env={"ATOMSCALE_ROOT_KEY": wrong, "ATOMSCALE_ROOT_KEY_FILE": None},
        ok=False,
    )
    assert rc == 2 and "does not match" in one_line_error(err) and wrong not in err
    rc, _, err = run(
        "org",
        "create",
        "beta",
        "--region",
        "us",
        env={"ATOMSCALE_ROOT_KEY": wrong, "ATOMSCALE_ROOT_KEY_FILE": None},
        ok=False,
    )
    assert rc == 2 and "does not match" in one_line_error(err)
    _, out, _ = run("org", "list")
    assert "beta" not in out
    assert run.vault().store("acme").table("process/runs").num_rows() == RUNS


def test_tampered_audit_fails_verify(run, tmp_path):
    run("org", "create", "tamper", "--region", "us")
    run("export", "tamper", "--category", "runs", "--format", "csv")
    log = run.home / "audit" / "tamper.jsonl"
    lines = log.read_bytes().splitlines(keepends=True)
    log.write_bytes(b"".join(lines[:-1]))
    rc, _, err = run("audit", "verify", "tamper", ok=False)
    assert rc == 5 and f"line {len(lines)}: missing" in one_line_error(err)
    log.write_bytes(b"".join(lines))
    run("audit", "verify", "tamper")


def test_rotations_keep_every_row(run, tmp_path):
    v = run.vault()
    before = {t.spec.name: t.num_rows() for t in v.store("acme").tables()}
    _, out, _ = run("org", "rotate-key", "acme")
    assert "v2" in out
    _, out, _ = run("org", "rotate-key", "acme", "--rewrite")
    assert "v3" in out and "re-encrypted" in out
    v = run.vault()
    for t in v.store("acme").tables():
        assert {f["kv"] for f in t.files()} == {3}
        assert t.read().num_rows == before[t.spec.name]

    _, new_key, _ = run("root-key", "generate")
    _, out, err = run("root-key", "rotate", env={"ATOMSCALE_NEW_ROOT_KEY": new_key.strip()})
    assert "re-wrapped" in out and new_key.strip() not in out + err
    rc, _, err = run("org", "show", "acme", ok=False)
    assert rc == 2 and "does not match" in one_line_error(err)
    run.key_file.write_text(new_key)
    _, out, _ = run("org", "show", "acme", "--json")
    assert {
        k: t["rows"] for k, t in json.loads(out)["tables"].items() if k != "context/labels"
    } == before
    newer = tmp_path / "newer.key"
    _, k3, _ = run("root-key", "generate")
    newer.write_text(k3)
    run("root-key", "rotate", "--new-key-file", str(newer))
    run.key_file.write_text(k3)
    _, out, _ = run("export", "acme", "--category", "runs", "--format", "json")
    assert len(json.loads(out)) == RUNS
    rc, _, err = run("root-key", "rotate", env={"ATOMSCALE_NEW_ROOT_KEY": None}, ok=False)
    assert rc == 2 and "ATOMSCALE_NEW_ROOT_KEY" in one_line_error(err)


def test_delete_needs_shred_and_confirmation(run):
    run("org", "create", "gone", "--region", "us")
    run("demo-data", "gone", "--runs", "2", "--points", "60")
    rc, _, err = run("org", "delete", "gone", ok=False)
    assert rc == 1 and "--shred" in one_line_error(err)
    rc, _, err = run("org", "delete", "gone", "--shred", stdin="gonne\n", ok=False)
    assert rc == 1 and "nothing was deleted" in err.splitlines()[-1]
    run("export", "gone", "--category", "runs", "--format", "csv")
    _, out, _ = run("org", "delete", "gone", "--shred", stdin="gone\n")
    assert "deleted" in out
    rc, _, err = run("export", "gone", "--category", "runs", "--format", "csv", ok=False)
    assert rc == 3 and "was deleted" in one_line_error(err)
    _, out, _ = run("audit", "show", "--deployment", "--json", "--action", "org.delete")
    assert json.loads(out)[0]["detail"]["org_name"] == "gone"
    _, out, _ = run("org", "list", "--all")
    assert "gone" in out
    _, out, _ = run("org", "list")
    assert "gone" not in out


def test_plugins_register(monkeypatch, tmp_path, capsys):
    pkg = tmp_path / "plugmod_cli_test.py"
    pkg.write_text(
        "def register(subparsers, org_subparsers):\n"
        "    p = org_subparsers.add_parser('hello')\n"
        "    p.set_defaults(func=lambda args: print('hello from org') or 7)\n"
        "    q = subparsers.add_parser('ping')\n"
        "    q.set_defaults(func=lambda args: print('pong'))\n"
    )
    one = tmp_path / "plugmod_one_arg.py"
    one.write_text(
        "def register(subparsers):\n"
        "    subparsers.add_parser('solo').set_defaults(func=lambda a: 0)\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(
        cli,
        "PLUGINS",
        ["plugmod_cli_test", "plugmod_one_arg", "atomscale_lab.no_such_module", "no_pkg.sub"],
    )
    assert cli.main(["org", "hello"]) == 7
    assert cli.main(["ping"]) == 0
    assert cli.main(["solo"]) == 0
    assert "hello from org" in capsys.readouterr().out
    del sys.modules["plugmod_cli_test"]


def test_no_key_material_in_logs_or_output(run):
    import base64

    v = run.vault()
    secrets_ = [run.key_file.read_text().strip()]
    for org in [o["name"] for o in v.orgs()]:
        for purpose, versions in v.keys.versions(org).items():
            for ver in versions:
                key = v.keys.key(org, purpose, ver)[1]
                secrets_ += [
                    key.hex(),
                    base64.b64encode(key).decode().rstrip("="),
                    base64.urlsafe_b64encode(key).decode().rstrip("="),
                ]
    assert len(secrets_) > 6
    texts = [p.read_text() for p in (run.home / "audit").glob("*.jsonl")]
    for args in (
        ("org", "show", "acme", "--json"),
        ("audit", "show", "acme", "--json"),
        ("org", "list", "--json"),
    ):
        _, out, err = run(*args)
        texts += [out, err]
    for text in texts:
        for s in secrets_:
            assert s not in text


def test_org_verify_detects_a_modified_file(run):
    run("org", "create", "verif", "--region", "us")
    run("demo-data", "verif", "--runs", "3", "--points", "60")
    _, out, _ = run("org", "verify", "verif")
    assert "process/series" in out and "verified" in out
    f = sorted((run.home / "data" / "verif" / "process" / "series").rglob("*.parquet"))[0]
    raw = f.read_bytes()
    f.write_bytes(raw + b"x")
    rc, _, err = run("org", "verify", "verif", ok=False)
    assert rc == 5 and f.name in one_line_error(err)
    f.write_bytes(raw)
    _, out, _ = run("org", "verify", "verif", "--deep")
    assert "decrypted in full" in out
    _, out, _ = run("audit", "verify", "--all")
    assert "org verif" in out and "the deployment" in out
    ev = [e["outcome"] for e in run.vault().audit("verif").events(action="org.verify")]
    assert ev == ["allowed", "error", "allowed"]

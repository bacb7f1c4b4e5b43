"""The admin command as a whole: help for everything, one spelling of the org argument and of
output formats, usage errors exit 2, context labels written through ``context set``/``import``."""

import argparse
import json
import subprocess

import pandas as pd
import pytest

from atomscale_lab.cli import main as cli


def walk(parser, path=()):
    """(command path, parser) for the parser and every sub-command below it."""
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {a.dest: a.help for a in action._choices_actions}
            for name, sub in action.choices.items():
                assert helps.get(name), f"`{' '.join((*path, name))}` has no help line"
                yield from walk(sub, (*path, name))


@pytest.fixture(scope="module")
def parser():
    p, sub, orgs = cli.build_parser()
    loaded = cli.load_plugins(sub, orgs)
    assert "atomscale_lab.cli.ingest" in loaded
    return p


def test_every_command_and_option_has_help(parser):
    missing, commands = [], 0
    for path, p in walk(parser):
        commands += 1
        for a in p._actions:
            if isinstance(a, argparse._HelpAction | argparse._SubParsersAction):
                continue
            if a.help is None or (a.help != argparse.SUPPRESS and not a.help.strip()):
                missing.append(f"{' '.join(path) or PROG}: {'/'.join(a.option_strings) or a.dest}")
    assert commands > 30
    assert not missing, "\n".join(missing)


PROG = cli.PROG


def test_one_spelling_for_the_org_and_for_output_formats(parser):
    for path, p in walk(parser):
        for a in p._actions:
            visible = a.help != argparse.SUPPRESS
            if not a.option_strings and a.dest in ("name", "org") and path[:1] != ("hub",):
                assert a.metavar == "ORG", (path, a.dest)
            if visible and a.option_strings:
                assert "--json" not in a.option_strings, path  # only as a hidden alias
                assert not ({"--output-format", "--fmt"} & set(a.option_strings)), path
                if a.dest == "format":
                    assert a.option_strings == ["--format"], path


def run(venv_bin, *args, env=None):
    return subprocess.run(
        [str(venv_bin / "atomscale-lab"), *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )


def test_usage_errors_exit_2(home, root_key, venv_bin):
    assert run(venv_bin, "org", "create", "acme", "--region", "us").returncode == 0
    assert run(venv_bin, "audit", "show").returncode == 2  # no org named
    assert run(venv_bin, "audit", "show", "acme", "--all").returncode == 2
    assert run(venv_bin, "no-such-command").returncode == 2
    assert run(venv_bin, "context", "set", "acme", "--run", "X").returncode == 2  # no label
    assert run(venv_bin, "ingest", "import", "acme").returncode == 2  # no file
    assert run(venv_bin, "audit", "show", "nope").returncode == 3  # unknown org: documented 3
    old = run(venv_bin, "org", "list", "--json")  # the old spelling still works
    new = run(venv_bin, "org", "list", "--format", "json")
    assert old.returncode == new.returncode == 0
    assert json.loads(old.stdout) == json.loads(new.stdout)
    assert [o["name"] for o in json.loads(new.stdout)] == ["acme"]


def test_context_set_and_import_write_the_context_store(vault, home, root_key, venv_bin, tmp_path):
    from atomscale_lab.cli import demo

    vault.create_org("acme", "us")
    data = demo.build(3, seed=2, points_per_run=60)
    vault.store("acme").table("process/runs").write(data.runs, actor="t")
    ids = data.runs.column("run_id").to_pylist()
    r = run(
        venv_bin,
        "context",
        "set",
        "acme",
        "--run",
        ids[0],
        "--material-system",
        "GaAs/AlGaAs",
        "--film",
        "Al0.30Ga0.70As",
        "--tags",
        "hemt; calibration",
    )
    assert r.returncode == 0, r.stderr
    r = run(venv_bin, "context", "set", "acme", "--run", ids[0], "--notes", "smooth 2x4")
    assert r.returncode == 0, r.stderr
    labels = vault.context("acme").get([ids[0]], actor="t").iloc[0]
    assert labels.material_system == "GaAs/AlGaAs" and labels.notes == "smooth 2x4"
    assert list(labels.tags) == ["hemt", "calibration"]  # kept across the second set
    assert run(venv_bin, "context", "set", "acme", "--run", "NOPE", "--film", "x").returncode == 3

    f = tmp_path / "labels.csv"
    f.write_text(
        "run_id,material_system,substrate,layer_stack\n"
        f'{ids[1]},GaN/Al2O3,Al2O3(0001),"[""AlN 30 nm"", ""GaN 500 nm""]"\n'
        f"{ids[0]},,GaAs(001),GaAs buffer 200 nm; AlGaAs 50 nm\n"
    )
    r = run(venv_bin, "context", "import", "acme", str(f))
    assert r.returncode == 0, r.stderr
    got = vault.context("acme").get(ids[:2], actor="t").set_index("run_id")
    assert list(got.loc[ids[1], "layer_stack"]) == ["AlN 30 nm", "GaN 500 nm"]
    assert got.loc[ids[0], "substrate"] == "GaAs(001)"
    assert pd.isna(got.loc[ids[0], "material_system"])  # an empty cell clears
    assert got.loc[ids[0], "film"] == "Al0.30Ga0.70As"  # a column the file lacks is kept
    writes = vault.audit("acme").events(action="context.write")
    assert len(writes) == 3 and writes[0]["detail"]["runs"] == 2
    log = (home / "audit" / "acme.jsonl").read_text()
    assert "GaN/Al2O3" not in log and "Al0.30Ga0.70As" not in log  # values never audited

    bad = tmp_path / "bad.csv"
    bad.write_text(f"run_id,colour\n{ids[2]},red\n")
    assert run(venv_bin, "context", "import", "acme", str(bad)).returncode == 1
    unknown = tmp_path / "unknown.json"
    unknown.write_text(json.dumps([{"run_id": "LATER-1", "film": "GaN"}]))
    assert run(venv_bin, "context", "import", "acme", str(unknown)).returncode == 3
    assert len(vault.audit("acme").events(action="context.write")) == 3  # nothing written
    r = run(venv_bin, "context", "import", "acme", str(unknown), "--allow-unknown-runs")
    assert r.returncode == 0, r.stderr

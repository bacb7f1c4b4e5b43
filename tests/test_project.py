"""Project hygiene: lint and formatting (Python and the lab extension), no tracked secrets,
docstrings on every public class and function."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _tracked() -> list[str]:
    out = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True)
    if out.returncode != 0:
        pytest.fail(f"git ls-files failed: {out.stderr.strip()}")
    return out.stdout.split()


def test_ruff_clean():
    ruff = Path(sys.executable).parent / "ruff"
    r = subprocess.run(
        [
            str(ruff),
            "check",
            "--output-format",
            "concise",
            "atomscale_lab",
            "tests",
            "bench",
            "jupyterhub_config.py",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stdout + r.stderr


def test_ruff_formatted():
    # ``make format`` (ruff format, ruff's import sorting) leaves nothing to change
    ruff = Path(sys.executable).parent / "ruff"
    r = subprocess.run(
        [str(ruff), "format", "--check", "atomscale_lab", "tests", "bench", "jupyterhub_config.py"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stdout + r.stderr


def test_lab_extension_lint_clean():
    # eslint, prettier and stylelint over labextension/ (installed by `make setup` with npm ci)
    ext = ROOT / "labextension"
    assert (ext / "node_modules" / ".bin" / "eslint").exists(), "run `make setup` (npm ci)"
    r = subprocess.run(["npm", "run", "--silent", "lint"], cwd=ext, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def test_no_keys_or_certificates_tracked():
    suspicious = [
        p
        for p in _tracked()
        if p.endswith((".pem", ".key", ".crt", ".p12", ".pfx", ".env")) or "id_rsa" in p
    ]
    assert suspicious == []


def test_public_classes_and_functions_have_docstrings():
    missing = []
    for path in sorted((ROOT / "atomscale_lab").rglob("*.py")):
        name = path.relative_to(ROOT).as_posix()
        tree = ast.parse(path.read_text())
        members = list(tree.body)
        for cls in [n for n in tree.body if isinstance(n, ast.ClassDef)]:
            if not cls.name.startswith("_"):
                members += cls.body
        for node in members:
            if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                continue
            if node.name.startswith("_"):
                continue
            if ast.get_docstring(node) is None:
                missing.append(f"{name}:{node.lineno} {node.name}")
    assert missing == [], "public without docstring: " + ", ".join(missing)

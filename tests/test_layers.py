"""The package's layers (docs/architecture.md): a module imports only from its own layer and the
layers below it, never upward, so that the vault stays free of HTTP and JupyterHub and a kernel's
client holds nothing of the vault or the server.

    cli                                   the admin command: may import everything
    hub, k8s                              JupyterHub hooks, hub services, Kubernetes rendering
                                          (one layer: the spawner uses the renderer's pieces)
    server, ingest                        the data API and the ingest service (HTTP surfaces)
    runtime                               the services' HTTP runtime: JSON errors, TLS, shutdown
                                          (its own layer, not base: the vault and the kernel
                                          client must not reach Tornado through it)
    vault                                 keys, stores, context, audit (no HTTP, no hub)
    client                                what a kernel uses (beside the vault: REST only)
    base                                  errors, schema, permissions, names, tls, … (no package)

Every import counts, also those inside functions and under ``TYPE_CHECKING``.
"""

from __future__ import annotations

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "atomscale_lab"

ALLOWED = {
    "base": {"base"},
    "vault": {"base", "vault"},
    "client": {"base", "client"},
    "runtime": {"base", "runtime"},
    "server": {"base", "vault", "runtime", "server"},
    "ingest": {"base", "vault", "runtime", "ingest"},
    "hub": {"base", "vault", "runtime", "server", "ingest", "hub", "k8s"},
    "k8s": {"base", "vault", "hub", "k8s"},
    "cli": {"base", "vault", "client", "runtime", "server", "ingest", "hub", "k8s", "cli"},
}
"""Which layers a module of each layer may import."""

ENTRY_POINTS = {
    # the package's own entry points name what they start (lazily), at the top of the package
    "atomscale_lab/__init__.py": {"server", "client"},
    # the widgets' former import path, kept for notebooks written before they moved
    "atomscale_lab/widgets.py": {"client"},
}


def layer_of(module: str) -> str:
    """The layer of a dotted module name inside the package."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in ALLOWED else "base"


def imports_of(path: Path) -> list[tuple[int, str]]:
    """``(line, module)`` of every import of the package in ``path`` (relative ones resolved)."""
    rel = path.relative_to(PKG.parent).with_suffix("")
    here = list(rel.parts[:-1]) if rel.name != "__init__" else list(rel.parts[:-1])
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = here[: len(here) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            if mod == "atomscale_lab":  # `from atomscale_lab import x`: x may be a module
                out += [(node.lineno, f"atomscale_lab.{a.name}") for a in node.names]
            else:
                out.append((node.lineno, mod))
    return [(n, m) for n, m in out if m == "atomscale_lab" or m.startswith("atomscale_lab.")]


def upward_imports() -> list[str]:
    """Every import that crosses the layers upward, as ``path:line module -> layer``."""
    bad = []
    for path in sorted(PKG.rglob("*.py")):
        name = path.relative_to(PKG.parent).as_posix()
        if name.startswith("atomscale_lab/labextension/"):
            continue
        module = ".".join(path.relative_to(PKG.parent).with_suffix("").parts)
        mine = layer_of(module)
        allowed = ALLOWED[mine] | ENTRY_POINTS.get(name, set())
        for line, target in imports_of(path):
            if layer_of(target) not in allowed:
                bad.append(f"{name}:{line} ({mine}) imports {target} ({layer_of(target)})")
    return bad


def test_no_module_imports_upward():
    assert upward_imports() == []


def test_the_check_sees_an_upward_import(tmp_path, monkeypatch):
    # the check itself must be able to fail: a vault module importing the server is reported
    fake = tmp_path / "atomscale_lab"
    (fake / "vault").mkdir(parents=True)
    (fake / "vault" / "leak.py").write_text(
        "def f():\n    from atomscale_lab.server.handlers import ROUTES\n    return ROUTES\n"
    )
    (fake / "client").mkdir()
    (fake / "client" / "peek.py").write_text("from ..vault import facade\n")
    monkeypatch.setattr(__import__(__name__, fromlist=["PKG"]), "PKG", fake)
    assert upward_imports() == [
        "atomscale_lab/client/peek.py:1 (client) imports atomscale_lab.vault (vault)",
        "atomscale_lab/vault/leak.py:2 (vault) imports atomscale_lab.server.handlers (server)",
    ]

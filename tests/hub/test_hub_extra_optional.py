"""Without the ``hub`` extra (pyotp, jupyterhub, oauthenticator, pyjwt) the CLI runs quietly:
no warning on every command; only a hub command that needs TOTP says which extra to install."""

from __future__ import annotations

import os
import subprocess
import sys

from atomscale_lab.errors import ConfigError

HIDE = ("pyotp", "jupyterhub", "oauthenticator", "jwt")
RUN = (
    "import sys\n"
    f"for m in {HIDE!r}: sys.modules[m] = None  # as if not installed\n"
    "from atomscale_lab.cli.main import main\n"
    "sys.exit(main(sys.argv[1:]))\n"
)


def _cli(home, *args):
    env = dict(os.environ, ATOMSCALE_HOME=str(home))
    return subprocess.run(
        [sys.executable, "-c", RUN, *args], env=env, capture_output=True, text=True, timeout=120
    )


def test_commands_print_no_warning_without_the_hub_extra(vault, home, tmp_path):
    vault.create_org("acme", "us")
    r = _cli(home, "org", "list")
    assert r.returncode == 0 and "acme" in r.stdout
    assert r.stderr == ""
    r = _cli(
        home,
        "hub",
        "users",
        "add",
        "acme-ann",
        "--org",
        "acme",
        "--role",
        "scientist",
        "--users-file",
        str(tmp_path / "users.json"),
    )
    assert r.returncode == ConfigError.exit_code  # a configuration error naming the extra
    assert not (tmp_path / "users.json").exists()

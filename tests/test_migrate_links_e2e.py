"""migrate keeps symlinks working (issue 18, item 7): a legacy ~/.ssh/vscode written by the pinned
original's own setup code, then turned into what dotfiles users have: the config a symlink into a
dotfiles repo, the private key a relative symlink, ~/.ssh/config itself a symlink. After migrate to
a --target-dir at another depth every link still resolves (checked with the real filesystem, the
real `ssh -G` and a real ssh login through the migrated config)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT, skip_or_fail
from helpers import cli, ssh_g_last
from rig import Home, Rig, ssh_config_argv

sys.path.insert(0, str(ROOT))
import cloudx_proxy as cp  # noqa: E402

ORIGINAL_PYTHON = ROOT / ".venv-original" / "bin" / "python"
# The original's own setup code writes ~/.ssh/vscode/config (its legacy layout: ~/.ssh/vscode exists,
# ~/.ssh/cloudX does not) and the Include in ~/.ssh/config.
WRITE_LEGACY = """
import sys
from cloudx_proxy.setup import CloudXSetup
s = CloudXSetup(profile="vscode", ssh_key="vscode", ssh_host_prefix="cloudx", non_interactive=True)
assert str(s.ssh_dir).endswith("/.ssh/vscode"), s.ssh_dir
assert s.setup_ssh_config("dev", sys.argv[1], "web")
"""


def dotfiles_home(rig: Rig, root: Path, iid: str, absolute: bool) -> Home:
    """The original writes the legacy setup; then its config, its key and ~/.ssh/config become
    symlinks into ~/dotfiles (relative ones unless `absolute`), as a dotfiles user keeps them."""
    if not ORIGINAL_PYTHON.exists():
        skip_or_fail(f"{ORIGINAL_PYTHON} missing (.ci/run installs tests/requirements-original.txt there)")
    home = rig.make_home(root, profile="vscode", ssh_dir="vscode", key="vscode")
    subprocess.run(
        [str(ORIGINAL_PYTHON), "-I", "-c", WRITE_LEGACY, iid],
        env={"HOME": str(home.path), "PATH": "/usr/bin:/bin"},
        cwd=home.path,
        check=True,
        capture_output=True,
        timeout=120,
    )
    assert not (home.path / ".ssh" / "cloudX").exists()
    dot = home.path / "dotfiles" / "ssh"
    dot.mkdir(parents=True)
    for there, link in (
        (dot / "vscode-config", home.ssh_dir / "config"),
        (dot / "keys" / "vscode", home.ssh_dir / "vscode"),
        (dot / "config", home.path / ".ssh" / "config"),
    ):
        there.parent.mkdir(exist_ok=True)
        shutil.move(str(link), str(there))
        link.symlink_to(there if absolute else os.path.relpath(there, link.parent))
    return home


def uvx_shim(tmp: Path, pyz: Path) -> Path:
    """A `uvx` on PATH that runs our zipapp for the original's `uvx cloudx-proxy ...` ProxyCommand."""
    bin_dir = tmp / "shim"
    bin_dir.mkdir()
    (bin_dir / "uvx").write_text(f'#!/bin/sh\nshift\nexec {sys.executable} {pyz} "$@"\n')
    (bin_dir / "uvx").chmod(0o755)
    return bin_dir


def snapshot(root: Path) -> dict[str, str]:
    """Every path under root: a link's text, or a file's bytes (as text)."""
    out = {}
    for p in sorted(root.rglob("*")):
        rel = str(p.relative_to(root))
        if ".cache" in p.parts:
            continue
        out[rel] = "-> " + os.readlink(p) if p.is_symlink() else (p.read_text() if p.is_file() else "/")
    return out


@pytest.mark.parametrize("absolute", [False, True], ids=["relative links", "absolute links"])
def test_migrate_keeps_dotfiles_symlinks_resolving(rig: Rig, pyz: Path, tmp_path: Path, absolute: bool) -> None:
    iid = rig.add_instance()
    home = dotfiles_home(rig, tmp_path / "home", iid, absolute)
    dot = home.path / "dotfiles" / "ssh"
    key_bytes = (dot / "keys" / "vscode").read_bytes()
    env = {**rig.env(home), "PATH": f"{uvx_shim(tmp_path, pyz)}:{rig.env(home)['PATH']}"}
    login = ssh_config_argv(home, home.path / ".ssh" / "config", "cloudx-dev-web", "echo", "linked")
    res = subprocess.run(login, env=env, capture_output=True, text=True, timeout=120)
    assert (res.returncode, res.stdout) == (0, "linked\n"), f"the legacy home works before: {res.stderr}"

    target = home.path / ".config" / "cloudx" / "ssh"  # one level deeper than ~/.ssh/vscode
    before = snapshot(home.path)
    res = cli(rig, home, pyz, "migrate", "--target-dir", str(target), "--dry-run")
    assert res.returncode == 0, res.stderr
    assert f"would move {home.ssh_dir / 'vscode'} -> {target / 'vscode'} as a symlink to" in res.stderr
    assert f"would change {dot / 'vscode-config'}" in res.stderr, "the diff names the file that is edited"
    assert snapshot(home.path) == before, "a dry run changes nothing"

    res = cli(rig, home, pyz, "migrate", "--target-dir", str(target))
    assert res.returncode == 0, res.stderr
    assert not home.ssh_dir.exists()
    # the key: still a symlink, relative if it was, resolving to the same key
    key = target / "vscode"
    assert key.is_symlink() and os.path.isabs(os.readlink(key)) == absolute
    assert key.read_bytes() == key_bytes
    assert subprocess.run(["ssh-keygen", "-y", "-f", str(key)], capture_output=True, check=True).stdout
    # the config: still a symlink into dotfiles, edited there; ~/.ssh/config too
    config = target / "config"
    assert config.is_symlink() and config.resolve() == (dot / "vscode-config").resolve()
    assert (home.path / ".ssh" / "config").is_symlink()
    assert (dot / "config").read_text().startswith(f"Include {config}\n")
    text = (dot / "vscode-config").read_text()
    assert str(home.ssh_dir) not in text and "~/.ssh/vscode" not in text
    resolved = ssh_g_last(home.path / ".ssh" / "config", "cloudx-dev-web")
    assert resolved["identityfile"] == str(key)
    assert f"--ssh-dir {target}" in resolved["proxycommand"]
    assert resolved["hostname"] == iid
    res = subprocess.run(login, env=env, capture_output=True, text=True, timeout=120)
    assert (res.returncode, res.stdout) == (0, "linked\n"), f"after migrate: {res.stderr}"


def test_a_link_to_a_file_that_moves_too_follows_it(tmp_path: Path) -> None:
    """Links between files of the legacy dir keep pointing at each other; a link out of it is
    re-pointed for the new depth; an absolute link elsewhere is kept as written."""
    source, target = tmp_path / ".ssh" / "vscode", tmp_path / "a" / "b" / "c"
    source.mkdir(parents=True)
    (source / "real").write_text("k")
    (tmp_path / "outside").write_text("o")
    (source / "sibling").symlink_to("real")
    (source / "abs-sibling").symlink_to(source / "real")
    (source / "out").symlink_to("../../outside")
    (source / "abs-out").symlink_to(tmp_path / "outside")
    moved = {"real", "sibling", "abs-sibling", "out", "abs-out"}
    assert cp.migrated_link(str(source / "sibling"), str(source), str(target), moved) == "real"
    assert cp.migrated_link(str(source / "abs-sibling"), str(source), str(target), moved) == str(target / "real")
    assert cp.migrated_link(str(source / "out"), str(source), str(target), moved) == "../../../outside"
    assert cp.migrated_link(str(source / "abs-out"), str(source), str(target), moved) == str(tmp_path / "outside")


def test_a_config_linked_to_a_sibling_is_migrated_in_that_sibling(tmp_path: Path) -> None:
    """config -> my-config inside ~/.ssh/vscode: both move, the link still names its sibling and the
    sibling gets the rewritten paths (ssh -G of the host through ~/.ssh/config proves it)."""
    legacy = tmp_path / ".ssh" / "vscode"
    legacy.mkdir(parents=True, mode=0o700)
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(legacy / "vscode")], check=True)
    (legacy / "my-config").write_text(
        "Host cloudx-dev-*\n"
        "    IdentityFile ~/.ssh/vscode/vscode\n"
        "    ProxyCommand uvx cloudx-proxy connect %h %p\n"
        "Host cloudx-dev-web\n    HostName i-0123456789abcdef0\n"
    )
    (legacy / "config").symlink_to("my-config")
    (tmp_path / ".ssh" / "config").write_text(f"Include {legacy}/config\n")
    target = tmp_path / ".ssh" / "cloudX"
    env = {"HOME": str(tmp_path), "PATH": os.environ.get("PATH", "/usr/bin:/bin")}
    res = subprocess.run(
        [sys.executable, str(ROOT / "cloudx_proxy.py"), "migrate"], env=env, capture_output=True, text=True, timeout=60
    )
    assert res.returncode == 0, res.stderr
    assert os.readlink(target / "config") == "my-config"
    assert "IdentityFile ~/.ssh/cloudX/vscode\n" in (target / "my-config").read_text()
    out = subprocess.run(
        ["ssh", "-G", "-F", str(tmp_path / ".ssh" / "config"), "cloudx-dev-web"],
        env=env, capture_output=True, text=True, check=True, timeout=30,
    ).stdout  # fmt: skip
    assert f"identityfile {target}/vscode\n" in out or "identityfile ~/.ssh/cloudX/vscode\n" in out
    assert f"--ssh-dir {target}" in out

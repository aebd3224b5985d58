"""Parity items of issue 18 for setup and doctor, end to end (real aws CLI against the rig, real ssh):
a ProxyCommand that outlives the cache setup ran from, doctor on a ProxyCommand whose program or
interpreter is gone, and instance tags that disagree about the environment."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import ssh_g_last
from rig import Home, Rig, ssh_config_argv

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
import cloudx_proxy as cp  # noqa: E402


def run(rig: Rig, home: Home, argv: list[str]) -> subprocess.CompletedProcess[str]:
    """A command with the rig's environment (HOME, PATH with the aws CLI, the endpoint)."""
    return subprocess.run(
        argv,
        env=rig.env(home),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=240,
    )


def ssh_echo(rig: Rig, home: Home, config: Path, host: str, word: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ssh_config_argv(home, config, host, "echo", word),
        env=rig.env(home),
        capture_output=True,
        text=True,
        timeout=120,
    )


# --- a ProxyCommand that outlives caches ------------------------------------------


def test_unstable_place_rule(tmp_path: Path) -> None:
    home = "/home/erik"
    roots = cp.unstable_roots({"XDG_CACHE_HOME": "/home/erik/.xdg"}, home)
    for path in (
        "/home/erik/.cache/uv/archive-v0/AbC/bin/cloudX-proxy",
        "/home/erik/.xdg/x/cloudx_proxy.py",
        "/home/erik/.local/pipx/.cache/0f9a/bin/cloudX-proxy",
        "/home/erik/.local/share/pipx/.cache/0f9a/bin/cloudX-proxy",
        "/home/erik/Library/Caches/x.pyz",
        "/tmp/cloudx_proxy.pyz",
        "/var/folders/xy/T/cloudx_proxy.pyz",
        "/home/erik/Downloads/cloudx_proxy.pyz",
    ):
        assert cp.unstable_place(path, roots, home), path
    for path in ("/home/erik/bin/cloudx_proxy.pyz", "/home/erik/.ssh/cloudX/cloudx_proxy.pyz", "/usr/bin/python3"):
        assert cp.unstable_place(path, roots, home) is None, path
    # a HOME under /tmp (containers, these tests): /tmp is then as stable as the home, ~/.cache still is not
    thome = str(tmp_path / "h")
    troots = cp.unstable_roots({}, thome)
    assert cp.unstable_place(str(tmp_path / "dist" / "x.pyz"), troots, thome) is None
    assert cp.unstable_place(f"{thome}/.cache/uv/x.py", troots, thome)
    vroots = cp.version_roots({}, home)
    assert cp.unstable_place("/home/erik/.pyenv/versions/3.11.7/bin/python3.11", vroots, home)
    assert cp.unstable_place("/home/erik/.local/share/uv/python/cpython-3.12/bin/python3", vroots, home)


@pytest.mark.parametrize("where", ["uv cache module", "downloaded zipapp"])
def test_setup_run_from_a_cache_installs_a_stable_copy(rig: Rig, home: Home, pyz: Path, where: str) -> None:
    """uvx runs the module from ~/.cache/uv/archive-v0/...; a zipapp may run from ~/Downloads. setup
    installs the program beside the SSH config (the very archive build_zipapp.py makes) and the
    ProxyCommand keeps working after the cache or download is gone."""
    if where == "uv cache module":
        origin = home.path / ".cache" / "uv" / "archive-v0" / "AbC123" / "lib" / "site-packages" / "cloudx_proxy.py"
        origin.parent.mkdir(parents=True)
        shutil.copy(ROOT / "cloudx_proxy.py", origin)
    else:
        origin = home.path / "Downloads" / "cloudx_proxy.pyz"
        origin.parent.mkdir(parents=True)
        shutil.copy(pyz, origin)
    iid = rig.add_instance(tags={"Name": "cached"})
    res = run(rig, home, [sys.executable, str(origin), "setup", "--instance", iid, "--yes"])
    assert res.returncode == 0, res.stderr
    installed = home.ssh_dir / "cloudx_proxy.pyz"
    assert f"runs from {origin}" in res.stderr and f"installed it as {installed}" in res.stderr
    assert installed.read_bytes() == pyz.read_bytes(), "the same bytes as build_zipapp.py's archive"
    assert stat.S_IMODE(installed.stat().st_mode) == 0o700
    config = home.ssh_dir / "config"
    proxy = ssh_g_last(config, "cloudX-dev-cached")["proxycommand"]
    assert proxy.startswith(f"{sys.executable} {installed} connect "), proxy
    assert str(origin.parent) not in config.read_text()
    shutil.rmtree(home.path / ".cache" / "uv" if where == "uv cache module" else origin.parent)  # uv cache clean
    res = ssh_echo(rig, home, config, "cloudX-dev-cached", "survived")
    assert (res.returncode, res.stdout) == (0, "survived\n"), res.stderr
    # doctor: the ProxyCommand runs an existing program from a stable place
    res = run(rig, home, [sys.executable, str(installed), "doctor"])
    assert "ok    proxy command: cloudX-dev-* runs an existing program" in res.stdout, res.stdout


def test_setup_dry_run_from_a_cache_says_what_it_would_install(rig: Rig, home: Home) -> None:
    origin = home.path / ".cache" / "uv" / "archive-v0" / "Dry" / "cloudx_proxy.py"
    origin.parent.mkdir(parents=True)
    shutil.copy(ROOT / "cloudx_proxy.py", origin)
    iid = rig.add_instance(tags={"Name": "dry"})
    res = run(rig, home, [sys.executable, str(origin), "setup", "--instance", iid, "--yes", "--dry-run"])
    assert res.returncode == 0, res.stderr
    installed = home.ssh_dir / "cloudx_proxy.pyz"
    assert f"[dry run] would install it as {installed}" in res.stderr
    assert f"ProxyCommand {sys.executable} {installed} connect" in res.stderr
    assert not installed.exists() and not (home.ssh_dir / "config").exists()


def test_setup_from_a_stable_module_keeps_todays_proxy_command(rig: Rig, home: Home) -> None:
    iid = rig.add_instance(tags={"Name": "stable"})
    res = run(rig, home, [sys.executable, str(ROOT / "cloudx_proxy.py"), "setup", "--instance", iid, "--yes"])
    assert res.returncode == 0, res.stderr
    assert "which may be cleaned" not in res.stderr
    assert not (home.ssh_dir / "cloudx_proxy.pyz").exists()
    proxy = ssh_g_last(home.ssh_dir / "config", "cloudX-dev-stable")["proxycommand"]
    assert proxy.startswith(f"{sys.executable} {ROOT / 'cloudx_proxy.py'} connect "), proxy


def test_interpreter_in_a_cache_is_replaced_by_a_stable_one(rig: Rig, home: Home, tmp_path: Path) -> None:
    """A stable module run by a venv's python inside uv's cache: the ProxyCommand names the
    interpreter that venv links to, and keeps working once the venv is cleaned away."""
    venv = home.path / ".cache" / "uv" / "archive-v0" / "Venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    module = tmp_path / "stable" / "cloudx_proxy.py"
    module.parent.mkdir()
    shutil.copy(ROOT / "cloudx_proxy.py", module)
    iid = rig.add_instance(tags={"Name": "venv"})
    res = run(rig, home, [str(venv / "bin" / "python"), str(module), "setup", "--instance", iid, "--yes"])
    assert res.returncode == 0, res.stderr
    real = os.path.realpath(venv / "bin" / "python")
    assert f"{venv / 'bin' / 'python'} is in a cache directory" in res.stderr
    proxy = ssh_g_last(home.ssh_dir / "config", "cloudX-dev-venv")["proxycommand"]
    assert proxy.startswith(f"{real} {module} connect "), proxy
    shutil.rmtree(venv)
    res = ssh_echo(rig, home, home.ssh_dir / "config", "cloudX-dev-venv", "still")
    assert (res.returncode, res.stdout) == (0, "still\n"), res.stderr


def test_a_pyenv_interpreter_gives_way_to_python3(rig: Rig, home: Home, tmp_path: Path) -> None:
    """uvx with a pyenv python: both the program and the interpreter go away with their cache or
    version, so the ProxyCommand runs the installed zipapp with `python3` from PATH."""
    pyenv = Path(os.path.realpath(sys.executable)).parents[2]  # the pyenv root's versions/ dir
    if pyenv.name != "versions":
        pytest.skip(f"{sys.executable} is not a pyenv version's python")
    origin = home.path / ".cache" / "uv" / "archive-v0" / "Pyenv" / "cloudx_proxy.py"
    origin.parent.mkdir(parents=True)
    shutil.copy(ROOT / "cloudx_proxy.py", origin)
    iid = rig.add_instance(tags={"Name": "py3"})
    env = {**rig.env(home), "PYENV_ROOT": str(pyenv.parent)}
    argv = [os.path.realpath(sys.executable), str(origin), "setup", "--instance", iid, "--yes"]
    res = subprocess.run(argv, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=240)
    assert res.returncode == 0, res.stderr
    installed = home.ssh_dir / "cloudx_proxy.pyz"
    assert "(run by python3)" in res.stderr
    proxy = ssh_g_last(home.ssh_dir / "config", "cloudX-dev-py3")["proxycommand"]
    assert proxy.startswith(f"python3 {installed} connect "), proxy
    shutil.rmtree(home.path / ".cache" / "uv")
    res = ssh_echo(rig, home, home.ssh_dir / "config", "cloudX-dev-py3", "py3")
    assert (res.returncode, res.stdout) == (0, "py3\n"), res.stderr


def test_doctor_flags_a_cleaned_cache_and_a_removed_pyenv_version(rig: Rig, home: Home, pyz: Path) -> None:
    """What earlier setups wrote: the console script in uv's cache (hand-written here, as our earlier
    version wrote it), and a zipapp run by a pyenv version's python (setup still writes that)."""
    cached = home.path / ".cache" / "uv" / "archive-v0" / "Old" / "bin" / "cloudX-proxy"
    cached.parent.mkdir(parents=True)
    cached.write_text(f'#!/bin/sh\nexec {sys.executable} {pyz} "$@"\n')
    cached.chmod(0o755)
    config = home.ssh_dir / "config"
    config.write_text(
        "Host cloudX-dev-*\n"
        f"    IdentityFile {home.key}\n"
        f"    ProxyCommand {cached} connect %h %p --profile cloudX --ssh-key cloudX --ssh-dir {home.ssh_dir}\n"
        "Host cloudX-dev-old\n    HostName i-0123456789abcdef0\n"
    )
    res = run(rig, home, [sys.executable, str(pyz), "doctor"])
    assert f"warn  proxy command: cloudX-dev-*: {cached} is in a cache directory" in res.stdout, res.stdout
    shutil.rmtree(home.path / ".cache" / "uv")
    res = run(rig, home, [sys.executable, str(pyz), "doctor"])
    assert res.returncode == 1
    assert f"FAIL  proxy command: cloudX-dev-*: {cached} does not exist" in res.stdout, res.stdout

    # a pyenv version's python runs a stable zipapp: setup names it; removing the version breaks it
    version = home.path / ".pyenv" / "versions" / "3.11.99" / "bin"
    version.mkdir(parents=True)
    (version / "python3.11").symlink_to(os.path.realpath(sys.executable))
    stable = home.path / "bin" / "cloudx_proxy.pyz"
    stable.parent.mkdir()
    shutil.copy(pyz, stable)
    config.unlink()
    iid = rig.add_instance(tags={"Name": "py"})
    res = run(rig, home, [str(version / "python3.11"), str(stable), "setup", "--instance", iid, "--yes"])
    assert res.returncode == 0, res.stderr
    assert ssh_g_last(config, "cloudX-dev-py")["proxycommand"].startswith(f"{version / 'python3.11'} {stable} ")
    shutil.rmtree(home.path / ".pyenv")
    res = run(rig, home, [sys.executable, str(pyz), "doctor"])
    assert res.returncode == 1
    assert f"FAIL  proxy command: cloudX-dev-*: {version / 'python3.11'} does not exist" in res.stdout, res.stdout


# --- instance tags that disagree about the environment ------------------------------


def test_tag_env_conflict_names_what_was_used() -> None:
    tags = {"Name": "cloudX-FOO-erik", "cloudX:environment": "BAR"}
    assert cp.names_from_tags(tags) == ("BAR", "erik")
    warning = cp.tag_env_conflict(tags, "BAR")
    assert warning == (
        "the Name tag 'cloudX-FOO-erik' implies environment 'FOO' but the cloudX:environment tag says 'BAR': using 'BAR'"
    )
    assert cp.tag_env_conflict({"Name": "cloudX-dev-erik", "Environment": "Dev"}, "Dev") is None
    assert cp.tag_env_conflict({"Name": "erik", "cloudx:environment": "BAR"}, "BAR") is None
    assert cp.tag_env_conflict({"Name": "cloudX-FOO-erik"}, "FOO") is None


@pytest.mark.parametrize("given", [None, "qa"])
def test_setup_warns_when_tags_disagree(rig: Rig, home: Home, pyz: Path, given: str | None) -> None:
    iid = rig.add_instance(tags={"Name": "cloudX-FOO-erik", "cloudX:environment": "BAR"})
    extra = ["--environment", given] if given else []
    res = run(rig, home, [sys.executable, str(pyz), "setup", "--instance", iid, "--yes", *extra])
    assert res.returncode == 0, res.stderr
    used = given or "BAR"
    note = " (from --environment)" if given else ""
    assert (
        "warning: the Name tag 'cloudX-FOO-erik' implies environment 'FOO' but the cloudX:environment tag says "
        f"'BAR': using '{used}'{note}"
    ) in res.stderr
    config = home.ssh_dir / "config"
    assert ssh_g_last(config, f"cloudX-{used}-erik")["hostname"] == iid
    res = ssh_echo(rig, home, config, f"cloudX-{used}-erik", "tagged")
    assert (res.returncode, res.stdout) == (0, "tagged\n"), res.stderr


def test_doctor_flags_a_python_that_cannot_run_us(rig: Rig, home: Home, pyz: Path) -> None:
    """The interpreter exists but cannot run the zipapp: a pyenv shim whose version was removed,
    or an old python3 (RHEL 8's 3.6). doctor runs it once and says why."""
    shim = home.path / ".pyenv" / "shims" / "python3"
    shim.parent.mkdir(parents=True)
    shim.write_text('#!/bin/sh\necho "pyenv: version \\`3.11.99\' is not installed" >&2\nexit 1\n')
    shim.chmod(0o755)
    old = sorted(Path("/root/.pyenv/versions").glob("3.6.*/bin/python3.6"))
    cases = [(shim, "does not run (pyenv: version `3.11.99' is not installed")]
    if old:
        version = old[-1].parents[1].name
        cases.append((old[-1], f"is Python {version}; cloudx-proxy needs 3.9 or newer"))
    config = home.ssh_dir / "config"
    for python, why in cases:
        config.write_text(
            "Host cloudX-dev-*\n"
            f"    IdentityFile {home.key}\n"
            f"    ProxyCommand {python} {pyz} connect %h %p --profile cloudX --ssh-key cloudX --ssh-dir {home.ssh_dir}\n"
            "Host cloudX-dev-old\n    HostName i-0123456789abcdef0\n"
        )
        res = run(rig, home, [sys.executable, str(pyz), "doctor"])
        assert res.returncode == 1
        assert f"FAIL  proxy command: cloudX-dev-*: {python} {why}" in res.stdout, res.stdout
    config.write_text(config.read_text().replace(str(cases[-1][0]), sys.executable))
    res = run(rig, home, [sys.executable, str(pyz), "doctor"])
    assert "ok    proxy command: cloudX-dev-* runs an existing program" in res.stdout, res.stdout

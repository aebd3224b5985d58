"""The zipapp run by every Python pyenv has here (2.7, 3.6-3.13): below 3.9 one clear line and exit 2
before anything else runs; from 3.9 a working --version, connect --dry-run, and a real connect
(cold, then warm) through the rig."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from conftest import skip_or_fail
from helpers import PYENV_VERSIONS, find_python
from rig import Home, Rig

TOO_OLD = ["2.7", "3.6", "3.7", "3.8"]
SUPPORTED = ["3.9", "3.10", "3.11", "3.12", "3.13"]


def pyenv_python(version: str) -> Path:
    """The interpreter for a version (the machine image's pyenv has them all; CI too), or skip (fail in CI)."""
    found = find_python(version)
    if found is None:
        skip_or_fail(f"no Python {version} under {PYENV_VERSIONS} or on PATH")
    assert found is not None
    return found


def run(exe: Path, pyz: Path, home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {"PATH": "/usr/bin:/bin", "HOME": str(home)}
    return subprocess.run([str(exe), str(pyz), *args], env=env, capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("version", TOO_OLD)
def test_too_old_python_gets_one_clear_line(pyz: Path, tmp_path: Path, version: str) -> None:
    exe = pyenv_python(version)
    found = subprocess.run([str(exe), "-c", "import sys; print('%d.%d.%d' % sys.version_info[:3])"],
                           capture_output=True, text=True, check=True).stdout.strip()  # fmt: skip
    for args in (["--version"], ["connect", "i-0123456789abcdef0", "--dry-run"], []):
        res = run(exe, pyz, tmp_path, *args)
        assert res.returncode == 2, (version, res.stderr)
        assert res.stdout == ""
        lines = res.stderr.splitlines()
        assert len(lines) == 1, res.stderr
        assert "needs Python 3.9 or newer" in lines[0]
        assert f"found Python {found} at {exe}" in lines[0]
        assert "Traceback" not in res.stderr and "Error:" not in res.stderr
    assert not (tmp_path / ".cache").exists(), "nothing ran before the check"


@pytest.mark.parametrize("version", SUPPORTED)
def test_supported_python_runs_version_and_connect_dry_run(pyz: Path, tmp_path: Path, version: str) -> None:
    exe = pyenv_python(version)
    res = run(exe, pyz, tmp_path, "--version")
    assert (res.returncode, res.stdout.split()[0]) == (0, "cloudx-proxy"), res.stderr
    res = run(exe, pyz, tmp_path, "connect", "i-0123456789abcdef0", "--dry-run")
    assert res.returncode == 0, res.stderr
    assert "start-session" in res.stderr and "needs Python" not in res.stderr


@pytest.mark.parametrize("version", SUPPORTED)
def test_supported_python_connects_cold_then_warm(rig: Rig, home: Home, pyz: Path, version: str) -> None:
    """The whole connect (cold path, hand-off, then a first connect on the warm path) under each Python."""
    exe = pyenv_python(version)
    iid = rig.add_instance(state="stopped", pending_seconds=1, online_delay=2)
    proxy = f"{exe} {pyz} connect %h %p"
    for remote in ("echo cold", "echo warm"):
        for record in (home.path / ".cache" / "cloudx-proxy").glob("push-*"):
            record.unlink()  # a first connect each time: the key push and the session
        res = subprocess.run(
            rig.ssh_argv(home, iid, proxy, remote), env=rig.env(home), capture_output=True, text=True, timeout=120
        )
        assert res.returncode == 0, res.stderr
        assert res.stdout == remote[5:] + "\n"
    assert [c for c in rig.plugin_calls() if c.get("target") == iid], "the plugin ran the sessions"

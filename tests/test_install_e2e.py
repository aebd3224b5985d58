"""The pip-installed console scripts: a wheel with no dependencies, installed with --no-index,
used as the ProxyCommand and by setup (which then names the console script and its prefix)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from rig import Home, Rig

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """bin dir of a fresh venv where the project was installed from its wheel, with --no-index."""
    import shutil

    work = tmp_path_factory.mktemp("install")
    src = work / "src"  # a copy, so the build leaves nothing in the checkout
    src.mkdir()
    for name in ("cloudx_proxy.py", "pyproject.toml", "README.md", "LICENSE"):
        shutil.copy2(ROOT / name, src / name)
    wheels = work / "wheels"
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(wheels), str(src)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=work,
    )
    assert build.returncode == 0, build.stderr
    venv = work / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    wheel = next(wheels.glob("cloudx_proxy-*.whl"))
    # Install with this interpreter's pip into the new venv: --no-index proves nothing is downloaded.
    inst = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "--python",
            str(venv / "bin" / "python"),
            "install",
            "-q",
            "--no-index",
            "--no-deps",
            str(wheel),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    if inst.returncode != 0 and "no such option: --python" in inst.stderr:
        pytest.skip("pip too old for --python")
    assert inst.returncode == 0, inst.stderr
    return venv / "bin"


def test_both_console_scripts_run(installed: Path) -> None:
    for name in ("cloudx-proxy", "cloudX-proxy"):
        res = subprocess.run([str(installed / name), "--version"], capture_output=True, text=True, timeout=60)
        assert res.returncode == 0 and res.stdout.startswith("cloudx-proxy "), res.stderr


def test_console_script_as_proxy_command_and_in_setup(rig: Rig, home: Home, installed: Path) -> None:
    iid = rig.add_instance(tags={"Name": "pip"})
    argv = rig.ssh_argv(home, iid, f"{installed / 'cloudx-proxy'} connect %h %p", "echo installed")
    res = subprocess.run(argv, env=rig.env(home), capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert res.stdout == "installed\n"
    res = subprocess.run(
        [str(installed / "cloudx-proxy"), "setup", "--instance", iid, "--yes"],
        env=rig.env(home),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert res.returncode == 0, res.stderr
    config = (home.ssh_dir / "config").read_text()
    assert "Host cloudx-dev-pip\n" in config, "cloudx-proxy implies the lowercase prefix"
    assert f"ProxyCommand {installed / 'cloudx-proxy'} connect %h %p" in config

"""Issue 26: the preferred spelling leads, in the file and in `list`, as PyPI cloudx-proxy 0.17.6 does.

Every wildcard Host line setup and cleanup own leads with the spelling of the prefix in use (the
command name's: `cloudX-` for cloudX-proxy, `cloudx-` for cloudx-proxy), the other after it; `list
--detailed` shows each pattern once, spelled cloudX. Each test runs our zipapp under both command
names (a copy named cloudX-proxy / cloudx-proxy) and the original (.venv-original) under the same
name, on the same file, and compares the Host lines written and what `ssh -G` resolves.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT, skip_or_fail
from rig import Home, Rig

sys.path.insert(0, str(ROOT))
import cloudx_proxy as cp  # noqa: E402

ORIGINAL_PYTHON = ROOT / ".venv-original" / "bin" / "python"
NAMES = ["cloudX-proxy", "cloudx-proxy"]
# The file: a stale one-spelling generic block (it never matches cloudX-DTA-unified, so its
# User and IdentitiesOnly silently stop applying there), an environment in the other spelling, one
# led by the lower-case spelling, and a user's host line naming both spellings of one host.
START = """Host cloudx-*
    User ec2-user
    IdentitiesOnly yes

Host cloudX-DTA-*
    IdentityFile {key}
    ProxyCommand uvx cloudX-proxy connect %h %p --profile cloudX --ssh-key cloudX

Host cloudX-DTA-unified
    HostName {iid}

Host cloudx-DTA-lower
    HostName i-0123456789abcdef1

Host cloudx-prod-* cloudX-prod-*
    IdentityFile {key}
    ProxyCommand uvx cloudx-proxy connect %h %p --profile cloudX --ssh-key cloudX

Host cloudX-prod-api
    HostName i-0123456789abcdef2

Host cloudx-DTA-box cloudX-DTA-box
    HostName i-0123456789abcdef3

Host mybox
    HostName 192.0.2.10
"""
HOSTS = ["cloudX-DTA-unified", "cloudx-DTA-lower", "cloudX-prod-api", "cloudx-DTA-box", "cloudX-DTA-box", "mybox"]
# Runs in the original's venv: its own command-name rule picks the prefix, then its setup or cleanup.
ORIGINAL = """
import sys
name, action, config, iid = sys.argv[1:5]
sys.argv = [name]
from cloudx_proxy.cli import prefix_from_command_name
from cloudx_proxy.setup import CloudXSetup
s = CloudXSetup(ssh_config=config, ssh_host_prefix=prefix_from_command_name(), non_interactive=True)
assert s.setup_ssh_config("DTA", iid, "unified") if action == "setup" else s.cleanup_config()
"""


@pytest.fixture(scope="session")
def orig() -> Path:
    """The python of the venv holding PyPI cloudx-proxy 0.17.6."""
    if not ORIGINAL_PYTHON.exists():
        skip_or_fail(f"{ORIGINAL_PYTHON} missing (.ci/run installs tests/requirements-original.txt there)")
    return ORIGINAL_PYTHON


def original(python: Path, scratch: Path, name: str, action: str, config: Path, iid: str = "") -> None:
    """The original's setup (host 'unified' in DTA) or cleanup of `config`, run as `name`, HOME=scratch."""
    scratch.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [str(python), "-I", "-c", ORIGINAL, name, action, str(config), iid],
        env={"HOME": str(scratch), "PATH": "/usr/bin:/bin"}, cwd=scratch, check=True, capture_output=True, timeout=120,
    )  # fmt: skip


def as_command(pyz: Path, tmp_path: Path, name: str) -> Path:
    """Our zipapp under a command name (the name picks the default prefix, as the original's does)."""
    target = tmp_path / "bin" / name
    target.parent.mkdir(exist_ok=True)
    shutil.copy(pyz, target)
    return target


def ours(rig: Rig, home: Home, program: Path, *args: str) -> subprocess.CompletedProcess[str]:
    res = subprocess.run(
        [sys.executable, str(program), *args], env=rig.env(home), stdin=subprocess.DEVNULL, capture_output=True,
        text=True, timeout=240,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    return res


def ssh_g(config: Path, hosts: list[str]) -> dict[str, dict[str, list[str]]]:
    """What ssh resolves for each host from this config: keyword -> values, as `ssh -G` prints them."""
    resolved = {}
    for host in hosts:
        out = subprocess.run(
            ["ssh", "-G", "-F", str(config), host], capture_output=True, text=True, check=True, stdin=subprocess.DEVNULL
        ).stdout
        values: dict[str, list[str]] = {}
        for line in out.splitlines():
            key, _, value = line.partition(" ")
            values.setdefault(key, []).append(value)
        resolved[host] = values
    return resolved


def host_lines(text: str) -> list[str]:
    return sorted(ln for ln in text.splitlines() if ln.startswith("Host "))


def spellings(name: str) -> tuple[str, str]:
    """(the prefix in use, the other spelling) for a command name."""
    return ("cloudX", "cloudx") if name == "cloudX-proxy" else ("cloudx", "cloudX")


@pytest.mark.parametrize("name", NAMES)
def test_setup_lines_lead_with_the_command_names_spelling(
    rig: Rig, home: Home, pyz: Path, orig: Path, tmp_path: Path, name: str
) -> None:
    iid = rig.add_instance()
    config = home.ssh_dir / "config"
    start = START.format(key=home.key, iid=iid)
    config.write_text(start)
    before = ssh_g(config, HOSTS)
    assert before["cloudX-DTA-unified"]["identitiesonly"] == ["no"], "the stale generic block misses it"

    ours(rig, home, as_command(pyz, tmp_path, name), "setup", "--instance", iid, "--environment", "DTA",
         "--hostname", "unified", "--yes")  # fmt: skip
    text = config.read_text()
    theirs = tmp_path / "theirs"
    theirs.write_text(start)
    original(orig, tmp_path / "orig-home", name, "setup", theirs, iid)
    lead, other = spellings(name)
    assert (
        host_lines(text)
        == host_lines(theirs.read_text())
        == sorted(
            [
                f"Host {lead}-* {other}-*",
                f"Host {lead}-DTA-* {other}-DTA-*",
                f"Host {lead}-prod-* {other}-prod-*",
                "Host cloudX-DTA-unified",
                "Host cloudx-DTA-lower",
                "Host cloudX-prod-api",
                "Host cloudx-DTA-box cloudX-DTA-box",  # not a line setup owns: the user's order stays
                "Host mybox",
            ]
        )
    ), text
    after = ssh_g(config, HOSTS)
    for host in HOSTS[:-1]:
        assert after[host]["user"] == ["ec2-user"] and after[host]["identitiesonly"] == ["yes"], host
    for host in ("cloudX-DTA-unified", "cloudx-DTA-lower", "cloudX-prod-api"):
        command = after[host]["proxycommand"][0]
        assert command.startswith(f"{sys.executable} ") and " connect %h %p " in command, (host, command)
    assert after["cloudX-DTA-unified"]["hostname"] == [iid]
    assert after["mybox"] == before["mybox"]
    ours(rig, home, as_command(pyz, tmp_path, name), "setup", "--instance", iid, "--environment", "DTA",
         "--hostname", "unified", "--yes")  # fmt: skip
    assert config.read_text() == text, "a second run changes nothing"


@pytest.mark.parametrize("name", NAMES)
def test_cleanup_lines_lead_with_the_command_names_spelling(
    rig: Rig, home: Home, pyz: Path, orig: Path, tmp_path: Path, name: str
) -> None:
    lead, other = spellings(name)
    config = home.ssh_dir / "config"
    config.write_text(START.format(key=home.key, iid="i-0123456789abcdef0"))
    # The file as the original under the other command name writes it: every line led by the other spelling.
    original(
        orig, tmp_path / "orig-home", "cloudX-proxy" if name == "cloudx-proxy" else "cloudx-proxy", "cleanup", config
    )
    start = config.read_text()
    assert f"Host {other}-* {lead}-*\n" in start and f"Host {other}-DTA-* {lead}-DTA-*\n" in start
    before = ssh_g(config, HOSTS)

    res = ours(rig, home, as_command(pyz, tmp_path, name), "cleanup", "--ssh-config", str(config))
    text = config.read_text()
    theirs = tmp_path / "theirs"
    theirs.write_text(start)
    original(orig, tmp_path / "orig-home", name, "cleanup", theirs)
    assert host_lines(text) == host_lines(theirs.read_text()), res.stderr
    for line in (f"Host {lead}-* {other}-*\n", f"Host {lead}-DTA-* {other}-DTA-*\n", "Host cloudx-DTA-lower\n"):
        assert line in text, text
    after = ssh_g(config, HOSTS)
    # The order is all that changed: ssh resolves every host as before. (The original's cleanup also renames
    # 'uvx cloudx-proxy' to the command name's spelling; ours does only for an explicit --ssh-host-prefix.)
    assert after == before
    again = ours(rig, home, as_command(pyz, tmp_path, name), "cleanup", "--ssh-config", str(config))
    assert "already clean" in again.stderr and config.read_text() == text


LISTED = """Host cloudx-* cloudX-*
    User ec2-user

Host cloudX-DTA-* cloudx-DTA-*
    ProxyCommand uvx cloudX-proxy connect %h %p

Host cloudX-DTA-unified
    HostName i-0123456789abcdef0

Host cloudx-DTA-lower
    HostName i-0123456789abcdef1

Host cloudx-empty-* cloudX-empty-*
    ProxyCommand uvx cloudx-proxy connect %h %p
"""


def section(out: str, title: str) -> list[str]:
    """The lines of a `list` section, from its title to the blank line after it."""
    lines = out.splitlines()
    start = lines.index(title)
    return lines[start : lines.index("", start)]


@pytest.mark.parametrize("name", NAMES)
def test_list_shows_each_pattern_once_in_the_preferred_spelling(
    rig: Rig, home: Home, pyz: Path, orig: Path, tmp_path: Path, name: str
) -> None:
    config = home.ssh_dir / "config"
    config.write_text(LISTED)
    res = ours(rig, home, as_command(pyz, tmp_path, name), "list", "--detailed", "--ssh-config", str(config))
    theirs = subprocess.run(
        [str(orig.parent / name), "list", "--detailed", "--ssh-config", str(config)],
        env={"HOME": str(home.path), "PATH": "/usr/bin:/bin"}, cwd=home.path, capture_output=True, text=True,
        check=True, timeout=120,
    ).stdout  # fmt: skip
    patterns = ["Generic Patterns:", "  cloudX-*", "  cloudX-DTA-*", "  cloudX-empty-*"]
    assert section(res.stdout, "Generic Patterns:") == section(theirs, "Generic Patterns:") == patterns, res.stdout
    # Hosts keep their own case; an environment without hosts is listed by its pattern only.
    for out in (res.stdout, theirs):
        assert "  lower (cloudx-DTA-lower, i-0123456789abcdef1)" in out
        assert "  unified (cloudX-DTA-unified, i-0123456789abcdef0)" in out
        assert "Environment: DTA" in out and "Environment: empty" not in out
    assert config.read_text() == LISTED


def test_preferred_spelling_and_lead_spelling() -> None:
    assert cp.preferred_spelling("cloudx-*", 2) == "cloudX-*"
    assert cp.preferred_spelling("CLOUDX-Dev-*", 6) == "cloudX-Dev-*"
    assert cp.preferred_spelling("foo-dev-*", 6) == "foo-dev-*"
    text = "Host cloudx-* cloudX-*  # mine\n    User ec2-user\nHost cloudx-dev-web cloudX-dev-web\n    HostName i-1\n"
    led, notes = cp.lead_spelling(text, "cloudX")
    assert led == text.replace("cloudx-* cloudX-*", "cloudX-* cloudx-*", 1)
    assert notes == ["Host cloudx-* cloudX-* now leads with cloudX-*: cloudX-* cloudx-*"]
    assert cp.lead_spelling(led, "cloudX") == (led, [])
    assert cp.lead_spelling(text, "cloudx") == (text, [])
    assert cp.lead_spelling(text, "foo") == (text, []), "a line in another prefix keeps its order"

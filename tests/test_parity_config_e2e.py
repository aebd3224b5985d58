"""Issue 18, items 1-6: SSH configs users already have, before and after our setup, cleanup, list and doctor.

Each test starts from a file written by PyPI cloudx-proxy 0.17.6's own code (the pinned original in
.venv-original, as in test_adopt_e2e) where it can write it, else by hand, runs our zipapp, and compares
the real `ssh -G` of the affected hosts before and after.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import cli, ssh_g_run, ssh_g_values, ssh_ok, write_original
from rig import Home, Rig

ROOT = Path(__file__).resolve().parent.parent
OTHER_IID = "i-0123456789abcdef2"  # only resolved with ssh -G, never connected
MYBOX = "Host mybox\n    HostName 192.0.2.10\n"


@pytest.fixture(scope="session")
def orig(original: Path) -> Path:
    """The python of the venv holding PyPI cloudx-proxy 0.17.6 (conftest's `original`)."""
    return original


def ssh_g(config: Path, host: str) -> tuple[dict[str, list[str]], str]:
    """What `ssh -G -F config host` resolves (keyword -> values), and its stderr; ({}, stderr) when ssh refuses."""
    proc = ssh_g_run(config, host)
    return (ssh_g_values(proc.stdout) if proc.returncode == 0 else {}), proc.stderr


def ours(resolved: dict[str, list[str]], pyz: Path) -> bool:
    """True when the resolved ProxyCommand runs our zipapp's connect."""
    return resolved.get("proxycommand", [""])[0].startswith(f"{sys.executable} {pyz} connect %h %p")


def pyz_run(rig: Rig, home: Home, pyz: Path, *args: str) -> subprocess.CompletedProcess[str]:
    res = cli(rig, home, pyz, *args)
    assert res.returncode == 0, res.stderr
    return res


# --- 1. unquoted paths with spaces ------------------------------------------------------------------
def test_unquoted_paths_with_spaces_are_quoted_and_doctor_names_the_line(
    rig: Rig, tmp_path: Path, pyz: Path, orig: Path
) -> None:
    home = rig.make_home(tmp_path / "First Last")
    web = rig.add_instance(tags={"Name": "web"})
    write_original(orig, home, {"env": "dev", "iid": web, "host": "web"})
    config = home.ssh_dir / "config"
    h = str(home.path)
    text = config.read_text()
    assert f'IdentityFile "{h}/.ssh/cloudX/cloudX"' in text, "0.17.6 quotes it; versions before 0.17.2 did not"
    # As versions before 0.17.2 and hand edits wrote them: unquoted, any keyword case.
    text = text.replace(f'    IdentityFile "{h}/.ssh/cloudX/cloudX"', f"    identityfile {h}/.ssh/cloudX/cloudX")
    text = text.replace("ControlPath ~/.ssh/control/%r@%h:%p", f"CONTROLPATH {h}/.ssh/control/%r@%h:%p")
    text = text.replace(f"HostName {web}\n", f"HostName {web}\n    UserKnownHostsFile {h}/.ssh/known_hosts\n")
    config.write_text(text)
    main = home.path / ".ssh" / "config"
    main.write_text(f'Include "{config}"\n\n{MYBOX}')  # as our setup writes it: the Include works
    for host in ("cloudx-dev-web", "mybox"):
        refused, err = ssh_g(main, host)
        assert refused == {} and "keyword identityfile extra arguments at end of line" in err, "every host fails"

    doctor = cli(rig, home, pyz, "doctor", "cloudx-dev-web")
    assert doctor.returncode == 1
    line = text.splitlines().index(f"    identityfile {h}/.ssh/cloudX/cloudX") + 1
    assert (
        f"FAIL  ssh reads config: ssh refuses the whole config, so every host fails: {config} line {line}: "
        "keyword identityfile extra arguments at end of line" in doctor.stdout
    ), doctor.stdout

    copy = tmp_path / "cleaned"
    copy.write_text(text)
    cleaned = pyz_run(rig, home, pyz, "cleanup", "--ssh-config", str(copy))
    assert "quoted a path with spaces" in cleaned.stderr
    after = copy.read_text()
    assert f'    identityfile "{h}/.ssh/cloudX/cloudX"\n' in after, "keyword and its case kept, value wrapped"
    assert f'    CONTROLPATH "{h}/.ssh/control/%r@%h:%p"\n' in after
    assert f'    UserKnownHostsFile "{h}/.ssh/known_hosts"\n' in after
    resolved, err = ssh_g(copy, "cloudx-dev-web")
    assert resolved["identityfile"] == [f"{h}/.ssh/cloudX/cloudX"], err
    assert resolved["controlpath"][0].startswith(f"{h}/.ssh/control/ec2-user@")  # ssh -G expands %r@%h:%p
    assert resolved["userknownhostsfile"] == [f"{h}/.ssh/known_hosts"]
    assert "already clean" in pyz_run(rig, home, pyz, "cleanup", "--ssh-config", str(copy)).stderr, "idempotent"

    res = pyz_run(rig, home, pyz, "setup", "--instance", web, "--hostname", "web", "--yes")  # adopts, repairs
    assert "quoted a path with spaces" in res.stderr and "ssh cloudx-dev-web\n" in res.stdout
    adopted = config.read_text()
    assert f'    identityfile "{h}/.ssh/cloudX/cloudX"\n' in adopted
    for host in ("cloudx-dev-web", "cloudX-dev-web"):
        resolved, err = ssh_g(main, host)
        assert ours(resolved, pyz) and resolved["identityfile"] == [f"{h}/.ssh/cloudX/cloudX"], err
    assert ssh_g(main, "mybox")[0]["hostname"] == ["192.0.2.10"]
    pyz_run(rig, home, pyz, "setup", "--instance", web, "--hostname", "web", "--yes")
    assert config.read_text() == adopted, "a second setup changes nothing"
    assert "ssh reads config" not in cli(rig, home, pyz, "doctor", "cloudx-dev-web").stdout


# --- 2. both spellings on the wildcard lines ----------------------------------------------------------
def original_host_lines(python: Path, home: Home, prefix: str) -> list[str]:
    """The wildcard Host lines the original writes for this prefix (into a scratch HOME)."""
    scratch = home.path.parent / f"orig-{prefix}"
    (scratch / ".ssh").mkdir(parents=True)
    code = (
        "from cloudx_proxy.setup import CloudXSetup\n"
        f"CloudXSetup(ssh_host_prefix={prefix!r}, non_interactive=True).setup_ssh_config('dev', {OTHER_IID!r}, 'web')"
    )
    subprocess.run(
        [str(python), "-I", "-c", code], env={"HOME": str(scratch), "PATH": "/usr/bin:/bin"}, cwd=scratch, check=True,
        capture_output=True, timeout=120,
    )  # fmt: skip
    text = (scratch / ".ssh" / "cloudX" / "config").read_text()
    return [ln for ln in text.splitlines() if ln.startswith("Host ") and "*" in ln]


@pytest.mark.parametrize("prefix", ["cloudX", "cloudx"])
def test_wildcard_blocks_carry_both_spellings_as_the_original_writes_them(
    rig: Rig, home: Home, pyz: Path, orig: Path, prefix: str
) -> None:
    web = rig.add_instance()
    config = home.ssh_dir / "config"
    other = "cloudx" if prefix == "cloudX" else "cloudX"
    later = f"{other}-dev-later"
    config.write_text(f"{MYBOX}")
    before, _ = ssh_g(config, later)
    assert "proxycommand" not in before
    pyz_run(rig, home, pyz, "setup", "--instance", web, "--hostname", "web", "--ssh-host-prefix", prefix, "--yes")
    text = config.read_text()
    lines = [ln for ln in text.splitlines() if ln.startswith("Host ") and "*" in ln]
    assert (
        lines
        == original_host_lines(orig, home, prefix)
        == [
            f"Host {prefix}-* {other}-*",
            f"Host {prefix}-dev-* {other}-dev-*",
        ]
    )
    # A host entry written later in the other spelling (by hand, or by the other command name) gets our settings.
    config.write_text(text + f"\nHost {later}\n    HostName {OTHER_IID}\n")
    after, err = ssh_g(config, later)
    assert ours(after, pyz) and after["user"] == ["ec2-user"], err
    assert ssh_g(config, "mybox")[0]["hostname"] == ["192.0.2.10"]
    listed = pyz_run(rig, home, pyz, "list", "--detailed", "--ssh-config", str(config)).stdout
    assert "Generic Patterns:\n  cloudX-*\n  cloudX-dev-*\n" in listed, listed  # the preferred spelling, once
    data = json.loads(pyz_run(rig, home, pyz, "list", "--json", "--ssh-config", str(config)).stdout)
    assert data["generic_lines"] == [f"{prefix}-* {other}-*"]
    assert data["environments"][0]["patterns"] == [f"{prefix}-dev-*", f"{other}-dev-*"]


# --- 3. cleanup repairs an environment block in the other spelling -----------------------------------
# The scenario, by hand: 0.17.6 always writes both spellings, so it cannot write this file.
OTHER_SPELLING = """Host cloudx-*
    User ec2-user
    IdentitiesOnly yes

Host cloudX-dev-*
    IdentityFile {key}
    ProxyCommand uvx cloudX-proxy connect %h %p --profile cloudX

Host cloudx-dev-web1
    HostName {iid}
"""


def test_cleanup_repairs_an_environment_block_whose_host_uses_the_other_spelling(
    rig: Rig, home: Home, pyz: Path, orig: Path
) -> None:
    config = home.ssh_dir / "config"
    start = OTHER_SPELLING.format(key=home.key, iid=OTHER_IID)
    config.write_text(start)
    before, _ = ssh_g(config, "cloudx-dev-web1")
    assert "proxycommand" not in before and before["user"] == ["ec2-user"], "the environment block misses it"

    res = pyz_run(rig, home, pyz, "cleanup", "--ssh-config", str(config), "--ssh-host-prefix", "cloudX")
    text = config.read_text()
    assert "Host cloudX-* cloudx-*\n" in text and "Host cloudX-dev-* cloudx-dev-*\n" in text, res.stderr
    assert "Host cloudx-dev-web1\n" in text, "host names are never renamed"
    after, _ = ssh_g(config, "cloudx-dev-web1")
    assert after["proxycommand"] == ["uvx cloudX-proxy connect %h %p --profile cloudX"]
    assert after["identityfile"] == [str(home.key)] and after["hostname"] == [OTHER_IID]

    # The original's cleanup repairs the same file the same way (what ssh resolves for the host).
    theirs = home.path / "theirs"
    theirs.write_text(start)
    code = (
        "import sys\nfrom cloudx_proxy.setup import CloudXSetup\n"
        "assert CloudXSetup(ssh_config=sys.argv[1], ssh_host_prefix='cloudX', non_interactive=True).cleanup_config()"
    )
    subprocess.run(
        [str(orig), "-I", "-c", code, str(theirs)], env={"HOME": str(home.path), "PATH": "/usr/bin:/bin"},
        cwd=home.path, check=True, capture_output=True, timeout=120,
    )  # fmt: skip
    resolved = ssh_g(theirs, "cloudx-dev-web1")[0]
    assert resolved.pop("proxycommand")[0].startswith("uvx cloudX-proxy connect %h %p")  # theirs adds --ssh-config
    assert resolved == {k: v for k, v in after.items() if k != "proxycommand"}


# --- 4. an Include counts only where ssh applies it to every host ------------------------------------
@pytest.mark.parametrize(
    "main_text,counts",
    [
        ("Host foo\n    User me\nInclude {config}\n", False),  # appended at the end: inside Host foo
        ("Match host foo\nInclude {config}\n", False),
        ("Host *\n    Include {config}\n", True),
        ("Match all\n    Include {config}\n", True),
        ("Include {home}/.ssh/cloud*/conf?g\n\nHost foo\n    User me\n", True),  # a glob of our file
        ('Include "{home}/.ssh/other" {config}\n', True),
    ],
)
def test_an_include_counts_only_where_ssh_applies_it_to_every_host(
    rig: Rig, home: Home, pyz: Path, main_text: str, counts: bool
) -> None:
    web = rig.add_instance()
    config = home.ssh_dir / "config"
    main = home.path / ".ssh" / "config"
    start = main_text.format(config=config, home=home.path)
    main.write_text(start)
    config.write_text(f"Host cloudX-dev-web\n    HostName {web}\n")
    before, _ = ssh_g(main, "cloudX-dev-web")
    assert "proxycommand" not in before
    foo = ssh_g(main, "foo")

    res = pyz_run(rig, home, pyz, "setup", "--instance", web, "--hostname", "web", "--yes")
    after_text = main.read_text()
    after, err = ssh_g(main, "cloudX-dev-web")
    assert ours(after, pyz) and after["hostname"] == [web], err
    if counts:
        assert after_text == start and "already includes" in res.stderr
    else:
        assert after_text == f"Include {config}\n\n" + start, "one at the top, the user's line kept"
        assert "sits inside a Host/Match block" in res.stderr and "added one at the top" in res.stderr
    assert ssh_g(main, "foo") == foo, "a host we do not own resolves as before"


# --- 5. our blocks above a catch-all --------------------------------------------------------------------
CATCH_ALL = "Host *\n    User me\n    ServerAliveInterval 30\n"


def test_blocks_go_above_a_catch_all_and_a_shadowing_one_is_named(rig: Rig, home: Home, pyz: Path, orig: Path) -> None:
    web = rig.add_instance()
    main = home.path / ".ssh" / "config"
    main.write_text(f"{MYBOX}\n{CATCH_ALL}")
    before, _ = ssh_g(main, "cloudX-dev-web")
    assert before["user"] == ["me"]
    rig.clear_calls()
    res = pyz_run(
        rig, home, pyz, "setup", "--instance", web, "--hostname", "web", "--ssh-config", str(main),
        "--ssh-dir", str(home.ssh_dir), "--yes",
    )  # fmt: skip
    text = main.read_text()
    assert (
        text.index("Host mybox")
        < text.index("Host cloudX-* ")
        < text.index("Host cloudX-dev-web")
        < text.index("Host *\n")
    )
    assert "(above 'Host *')" in res.stderr
    after, _ = ssh_g(main, "cloudX-dev-web")
    assert after["user"] == ["ec2-user"] and ours(after, pyz) and after["serveraliveinterval"] == ["30"]
    assert ssh_g(main, "mybox")[0]["user"] == ["me"], "the user's hosts resolve as before"
    assert {c["os_user"] for c in rig.calls("SendSSHPublicKey")} == {"ec2-user"}, "setup's login: not for 'me'"
    login = ssh_ok(rig, home, main, "cloudX-dev-web")
    assert login.returncode == 0 and login.stdout == "ok\n", login.stderr

    # A catch-all above blocks that exist already is not moved (the user put it there): setup says so.
    other = rig.make_home(home.path.parent / "home2")
    write_original(orig, other, {"env": "dev", "iid": web, "host": "web"})
    config = other.ssh_dir / "config"
    config.write_text(CATCH_ALL + "\n" + config.read_text())
    res = cli(rig, other, pyz, "setup", "--instance", web, "--hostname", "web", "--yes")
    # ssh then logs in as 'me' (the key is pushed for 'me'): the rig's sshd refuses, setup's check says so.
    assert "warning: 'Host *' (sets user) is above Host cloudX-*: ssh uses its values" in res.stderr
    assert config.read_text().startswith(CATCH_ALL)


# --- 6. quoted keywords and a BOM ------------------------------------------------------------------------
def test_a_quoted_keyword_starts_a_block_and_a_bom_does_not_crash(rig: Rig, home: Home, pyz: Path, orig: Path) -> None:
    write_original(orig, home, {"env": "dev", "iid": OTHER_IID, "host": "web"})
    config = home.ssh_dir / "config"
    theirs = config.read_text()
    # '"Host" mybox' after our host block: read as a block of its own, cleanup must not move it past 'Host mybox'.
    text = "Host mybox\n    User other\n\n" + theirs.replace(
        f"HostName {OTHER_IID}\n", f'HostName {OTHER_IID}\n\n"Host" mybox\n    User me\n'
    )
    config.write_text(text)
    hosts = ["mybox", "cloudx-dev-web", "cloudX-dev-web"]
    before = {h: ssh_g(config, h)[0] for h in hosts}
    assert before["mybox"]["user"] == ["other"]
    pyz_run(rig, home, pyz, "cleanup", "--ssh-config", str(config))
    assert {h: ssh_g(config, h)[0] for h in hosts} == before
    assert '"Host" mybox\n    User me\n' in config.read_text()

    # A BOM and an indented Host line (ssh refuses the BOM): list and cleanup work, cleanup drops the BOM.
    bom = home.path / "bom"
    bom.write_text(f"\ufeff  Host cloudx-dev-db\n    HostName {OTHER_IID}\n\n" + theirs)
    assert "Bad configuration option" in ssh_g(bom, "cloudx-dev-db")[1]
    listed = pyz_run(rig, home, pyz, "list", "--ssh-config", str(bom))
    assert f"db (cloudx-dev-db, {OTHER_IID})" in listed.stdout
    res = pyz_run(rig, home, pyz, "cleanup", "--ssh-config", str(bom))
    assert "removed the byte order mark" in res.stderr and not bom.read_text().startswith("\ufeff")
    after, err = ssh_g(bom, "cloudx-dev-db")
    assert after["hostname"] == [OTHER_IID] and after["proxycommand"] == ["uvx cloudx-proxy connect %h %p"], err

"""Switching from PyPI cloudx-proxy: our setup, cleanup and list over the configs its 0.17.6 wrote.

The starting configs are written by the original's own code (tests/requirements-original.txt,
installed by .ci/run into .venv-original: it has our import name, so it needs a venv of its own),
plus a hand-written pre-0.17 layout. Everything is checked through the real ssh: `ssh -G` of every
host before and after (only the ProxyCommand's program may change), and a real login through the rig.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

from helpers import cli, ssh_g, ssh_ok, write_original
from rig import Home, Rig

FORWARD = "    LocalForward 8080 localhost:80   # the user's own line\n"
MYBOX = "Host mybox\n\tHostName 192.0.2.10\n\tUser me\n"
OTHER_IID = "i-0123456789abcdef2"  # only resolved with ssh -G, never connected


def resolve_all(config: Path, hosts: list[str]) -> dict[str, dict[str, list[str]]]:
    """What ssh resolves for each host from this config: keyword -> values, as `ssh -G` prints them."""
    return {host: ssh_g(config, host) for host in hosts}


def proxy_tail(command: str) -> str:
    """A ProxyCommand from 'connect' on, without the '--user %r' we add."""
    return command[command.index(" connect ") + 1 :].removesuffix(" --user %r")


def assert_same_but_program(before: dict, after: dict, pyz: Path) -> None:
    """Every host resolves as before; a ProxyCommand may only run our program instead (same arguments)."""
    assert before.keys() == after.keys()
    for host, was in before.items():
        now = after[host]
        assert {k: v for k, v in now.items() if k != "proxycommand"} == {
            k: v for k, v in was.items() if k != "proxycommand"
        }, host
        if "proxycommand" in was:
            old, new = was["proxycommand"][0], now["proxycommand"][0]
            assert old == new or (new.startswith(f"{sys.executable} {pyz} connect ") and new.endswith(" --user %r")), (
                host,
                new,
            )
            assert proxy_tail(new) == proxy_tail(old), host


def host_patterns(text: str) -> list[str]:
    return [w for line in text.splitlines() if re.match(r"\s*host\s", line, re.I) for w in line.split()[1:]]


def duplicated(text: str) -> set[str]:
    patterns = host_patterns(text)
    return {p for p in patterns if patterns.count(p) > 1}


def test_setup_adopts_the_config_the_original_wrote(rig: Rig, home: Home, pyz: Path, original: Path) -> None:
    web, db = rig.add_instance(tags={"Name": "web"}), rig.add_instance()
    config = home.ssh_dir / "config"
    config.write_text(MYBOX)  # a block of the user's: the original keeps it under "NOT MANAGED"
    write_original(
        original,
        home,
        {"env": "dev", "iid": web, "host": "web"},
        {"env": "dev", "iid": db, "host": "db"},
        {"env": "prod", "iid": OTHER_IID, "host": "api", "profile": "ops", "key": "opskey", "aws_env": "work"},
    )
    text = config.read_text()
    assert "Host cloudx-dev-* cloudX-dev-*\n" in text and "#  NOT MANAGED BY cloudx-proxy" in text, "0.17.6's layout"
    text = text.replace(
        f"Host cloudx-dev-web\n    HostName {web}\n", f"Host cloudx-dev-web\n    HostName {web}\n{FORWARD}"
    )
    config.write_text(text)
    hosts = ["cloudx-dev-web", "cloudx-dev-db", "cloudx-prod-api", "cloudX-dev-web", "mybox"]
    before = resolve_all(config, hosts)

    dry = cli(
        rig, home, pyz, "setup", "--profile", "cloudX", "--instance", web, "--hostname", "web", "--yes", "--dry-run"
    )
    assert dry.returncode == 0, dry.stderr
    assert "    -    ProxyCommand uvx cloudx-proxy connect %h %p\n" in dry.stderr
    assert f"    +    ProxyCommand {sys.executable} {pyz} connect %h %p --user %r\n" in dry.stderr
    assert "adopting Host cloudx-dev-* cloudX-dev-*" in dry.stderr and config.read_text() == text

    rig.clear_calls()
    res = cli(rig, home, pyz, "setup", "--profile", "cloudX", "--instance", web, "--hostname", "web", "--yes")
    assert res.returncode == 0, res.stderr
    assert "ssh cloudx-dev-web\n" in res.stdout, "the host keeps its name (and its case)"
    assert "Adopted the configuration PyPI cloudx-proxy wrote" in res.stdout
    assert "Host cloudx-dev-* cloudX-dev-*: the ProxyCommand ran 'uvx cloudx-proxy', now " in res.stdout
    adopted = config.read_text()
    assert FORWARD in adopted and MYBOX in adopted, "the user's lines, byte for byte"
    assert duplicated(adopted) == set(), "no Host pattern twice"
    assert "Managed by cloudx-proxy v0.17.6" not in adopted and "#  GLOBAL" not in adopted and "#  dev" not in adopted
    assert adopted.count("# Configuration type: ") == 3, "generic, dev and prod banners are ours now"
    assert "uvx" not in adopted, "every environment is adopted, not only the one setup ran for"
    assert f"{pyz} connect %h %p --aws-env work --profile ops --ssh-key opskey --user %r\n" in adopted
    assert_same_but_program(before, resolve_all(config, hosts), pyz)

    login = ssh_ok(rig, home, config, "cloudx-dev-web")
    assert login.returncode == 0 and login.stdout == "ok\n", login.stderr
    assert {c["os_user"] for c in rig.calls("SendSSHPublicKey")} == {"ec2-user"}, "pushed for %r = ec2-user"

    again = cli(rig, home, pyz, "setup", "--profile", "cloudX", "--instance", web, "--hostname", "web", "--yes")
    assert again.returncode == 0, again.stderr
    assert config.read_text() == adopted, "a second run changes nothing"
    main = (home.path / ".ssh" / "config").read_text()
    assert main.count("Include") == 1

    listed = cli(rig, home, pyz, "list", "--ssh-config", str(config))
    assert listed.returncode == 0, listed.stderr
    for line in (f"web (cloudx-dev-web, {web})", f"db (cloudx-dev-db, {db})", f"api (cloudx-prod-api, {OTHER_IID})"):
        assert line in listed.stdout, listed.stdout

    resolved = resolve_all(config, hosts)
    cleaned = cli(rig, home, pyz, "cleanup", "--ssh-config", str(config))
    assert cleaned.returncode == 0, cleaned.stderr
    assert resolve_all(config, hosts) == resolved, "cleanup changes nothing ssh resolves"
    assert FORWARD in config.read_text() and MYBOX in config.read_text()


PRE_017 = """# Created by cloudx-proxy v0.6.2 on 2024-05-01 10:00:00
# Configuration type: generic
Host cloudx-*
    User ec2-user
    TCPKeepAlive yes
    ControlMaster auto
    ControlPath ~/.ssh/control/%r@%h:%p
    ControlPersist 4h

# Created by cloudx-proxy v0.6.2 on 2024-05-01 10:00:00
# Configuration type: environment
Host cloudx-dev-*
    IdentityFile {key}
    IdentitiesOnly yes
    ProxyCommand cloudx-proxy connect %h %p --profile cloudX --ssh-key cloudX

# Created by cloudx-proxy v0.6.2 on 2024-05-01 10:00:00
# Configuration type: host
Host cloudx-dev-web
    HostName {web}
{forward}
Host cloudx-dev-ubu
    HostName {ubu}

Host mybox
    HostName 192.0.2.10
"""
# Written above the generic block (ssh takes the first User it finds): this host logs in as ubuntu.
UBUNTU = "Host cloudx-dev-ubu\n    User ubuntu\n\n"


def test_pre_017_layout_new_host_in_a_differently_cased_environment(
    rig: Rig, home: Home, pyz: Path, tmp_path: Path
) -> None:
    web, api, ubu = rig.add_instance(), rig.add_instance(), rig.add_instance()
    config = home.ssh_dir / "config"
    start = UBUNTU + PRE_017.format(key=home.key, web=web, ubu=ubu, forward=FORWARD)
    config.write_text(start)
    (home.path / ".ssh" / "config").write_text(f"Include {config}\n")
    hosts = ["cloudx-dev-web", "cloudx-dev-ubu", "cloudX-dev-web", "mybox"]
    before = resolve_all(config, hosts)
    assert before["cloudx-dev-ubu"]["user"] == ["ubuntu"]

    res = cli(rig, home, pyz, "setup", "--instance", api, "--environment", "Dev", "--hostname", "api", "--yes")
    assert res.returncode == 0, res.stderr
    assert "using the existing environment 'dev' (matched 'Dev')" in res.stderr
    text = config.read_text()
    assert "Dev" not in text and text.count("Host cloudX-dev-* cloudx-dev-*\n") == 1, "Dev reuses the dev block"
    # As the original run as cloudX-proxy (the zipapp's name): lines lead with cloudX, a new host is cloudX-.
    assert text.index("Host cloudx-dev-ubu\n    H") < text.index("Host cloudX-dev-api\n") < text.index("Host mybox")
    assert FORWARD in text and text.startswith(UBUNTU)
    assert duplicated(text) == duplicated(start) == {"cloudx-dev-ubu"}, "only the user's own pair"
    after = resolve_all(config, hosts)
    # The wildcard lines now carry both spellings (as 0.17.4+ writes them): cloudX-dev-web gets our settings.
    assert after.pop("cloudX-dev-web")["proxycommand"] == after["cloudx-dev-web"]["proxycommand"]
    assert_same_but_program({h: v for h, v in before.items() if h != "cloudX-dev-web"}, after, pyz)
    assert ssh_ok(rig, home, config, "cloudX-dev-api").stdout == "ok\n"

    # --user %r: the key is pushed for the user ssh logs in as (the rig's sshd admits only ec2-user).
    rig.clear_calls()
    login = ssh_ok(rig, home, config, "cloudx-dev-ubu")
    assert login.returncode == 255 and "Permission denied" in login.stderr, login.stderr
    assert [c["os_user"] for c in rig.calls("SendSSHPublicKey")] == ["ubuntu"]
    assert home.pub.read_text().split()[1] in (rig.keys_root / ubu / "ubuntu").read_text()

    resolved = resolve_all(config, hosts + ["cloudX-dev-api"])
    cleaned = cli(rig, home, pyz, "cleanup", "--ssh-config", str(config))
    assert cleaned.returncode == 0, cleaned.stderr
    after = config.read_text()
    assert resolve_all(config, hosts + ["cloudX-dev-api"]) == resolved, "cleanup changes nothing ssh resolves"
    assert after.index(UBUNTU) < after.index("Host cloudX-* cloudx-*\n"), "the User block that came first stays first"
    listed = cli(rig, home, pyz, "list", "--ssh-config", str(config))
    names = {"web": "cloudx-dev-web", "api": "cloudX-dev-api", "ubu": "cloudx-dev-ubu"}
    assert all(f"{h} ({n}" in listed.stdout for h, n in names.items()), listed.stdout


def test_cleanup_converts_the_prefix_spelling(rig: Rig, home: Home, pyz: Path, original: Path) -> None:
    """cleanup --ssh-host-prefix cloudX: wildcard lines lead with cloudX, host names stay; setup follows."""
    write_original(original, home, {"env": "dev", "iid": OTHER_IID, "host": "web"})
    config = home.ssh_dir / "config"
    hosts = ["cloudx-dev-web", "cloudX-dev-web"]
    before = resolve_all(config, hosts)
    res = cli(rig, home, pyz, "cleanup", "--ssh-config", str(config), "--ssh-host-prefix", "cloudX")
    assert res.returncode == 0, res.stderr
    text = config.read_text()
    assert "Host cloudX-* cloudx-*\n" in text and "Host cloudX-dev-* cloudx-dev-*\n" in text
    assert "Host cloudx-dev-web\n" in text and "uvx cloudX-proxy connect %h %p" in text
    after = resolve_all(config, hosts)
    for host in hosts:
        assert {k: v for k, v in after[host].items() if k != "proxycommand"} == {
            k: v for k, v in before[host].items() if k != "proxycommand"
        }
    bad = cli(rig, home, pyz, "cleanup", "--ssh-config", str(config), "--ssh-host-prefix", "-x")
    assert bad.returncode == 2 and config.read_text() == text

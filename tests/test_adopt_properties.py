"""Property tests (hypothesis): for generated configs, what ssh resolves is kept or repaired.

Configs are drawn from blocks as PyPI cloudx-proxy 0.17 (both spellings, its banners, uvx), older
versions (one pattern, '# Created by' banners, unquoted paths with spaces) and setup write them,
mixed with a user's blocks that overlap ours (Host *, "Match" all, quoted keywords, their own
cloudx-* blocks, Match blocks, Includes inside blocks, relative and glob Includes, duplicates).
The real `ssh -G -F` must read every result. After `cleanup` (canonical_config) every host resolves
as after its repairs alone (repair_config: both spellings, quoted paths), hosts we do not own as
in the file with its paths quoted by hand, and every host entry of an environment we have a block
for runs a connect ProxyCommand; after setup's adoption (adopt_config) only a ProxyCommand's
program may differ; after setup's whole merge, hosts we do not own resolve as before and every
host of the environment setup wrote runs our ProxyCommand.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from argparse import Namespace
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
import cloudx_proxy as cp  # noqa: E402

WHEN = "2026-01-02 03:04:05"
PROGRAM = ["/usr/bin/python3", "/opt/cloudx_proxy.pyz"]
SSH_G = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
RULE = "# " + "=" * 78 + "\n"
MYBOX_CATCH_ALL = "Host mybox\n    HostName 192.0.2.1\n\nHost *\n    User me\n    ProxyCommand nc %h %p\n"
HOSTS = ["cloudx-dev-web", "cloudX-dev-web", "cloudx-dev-db", "cloudx-prod-api", "mybox", "x.corp"]
NOT_OURS = ["mybox", "x.corp"]
INC = "@INC@"  # the directory of included files, put in when a config is written for ssh
# Unquoted paths with spaces (before 0.17.2, hand edits): ssh refuses the whole file until they are quoted.
SPACED = {
    "    IdentityFile /k/First Last/cloudX\n": '    IdentityFile "/k/First Last/cloudX"\n',
    "    controlpath /k/First Last/%r@%h:%p\n": '    controlpath "/k/First Last/%r@%h:%p"\n',
}

GENERIC = [
    "Host cloudx-* cloudX-*\n    User ec2-user\n    TCPKeepAlive yes\n    IdentitiesOnly yes\n"
    "    ControlMaster auto\n    ControlPath ~/.ssh/control/%r@%h:%p\n    ControlPersist 4h\n",
    "Host cloudX-*\n    User ec2-user\n    TCPKeepAlive yes\n    ControlPersist 4h\n",
    "Host cloudx-*\n    User ec2-user\n    ServerAliveInterval 60\n",
    "Host cloudx-* cloudX-*\n    User ec2-user\n    controlpath /k/First Last/%r@%h:%p\n",
]
ENVIRONMENT = [
    "Host cloudx-dev-* cloudX-dev-*\n    IdentityFile /k/cloudX\n    ProxyCommand uvx cloudx-proxy connect %h %p\n",
    "Host cloudx-dev-*\n    IdentityFile /k/old\n    IdentitiesOnly yes\n"
    "    ProxyCommand cloudX-proxy connect %h %p --profile old --ssh-key old\n",
    "Host cloudX-dev-*\n    IdentityFile /k/ours\n    IdentitiesOnly yes\n"
    "    ProxyCommand /usr/bin/python3 /x.pyz connect %h %p --profile cloudX --user %r\n",
    "Host cloudx-prod-* cloudX-prod-*\n    IdentityFile /k/prod\n"
    "    ProxyCommand uvx cloudx-proxy connect %h %p --aws-env work --profile ops\n    Port 2200\n",
    "Host cloudx-dev-*\n    IdentityFile /k/First Last/cloudX\n    ProxyCommand uvx cloudx-proxy connect %h %p\n",
]
HOST = [
    "Host cloudx-dev-web\n    HostName i-0000000a\n",
    "Host cloudx-dev-web\n    HostName i-0000000b\n    LocalForward 8080 localhost:80\n",
    "Host cloudX-dev-web\n    HostName i-0000000c\n",
    "Host cloudx-dev-db\n    HostName i-0000000d\n    IdentityFile /k/db\n    User ubuntu\n",
    "Host cloudx-prod-api\n    HostName i-0000000e\n",
    "Host cloudx-prod-api\n    HostName i-0000000e\n    Port 2222\n",
]
FOREIGN = [
    "Host *\n    User me\n    ServerAliveInterval 30\n",
    "Host cloudx-dev-*\n    User dev\n    IdentityFile /k/mine\n",
    "Host mybox\n    HostName 192.0.2.1\n",
    "Host *.corp !y.corp\n    ProxyJump bastion\n    User corp\n",
    "Host cloudx-dev-web cloudx-other\n    LocalForward 9000 localhost:9000\n    Port 2022\n",
    "Host c*\n    IdentityFile /k/c\n    ControlPersist 1h\n",
    "Match host i-*\n    Port 2023\n",
    "Match user ubuntu\n    IdentityFile /k/u\n",
    "Match all\n    Compression yes\n",
    "# a comment of the user's\nHost mybox\n    Port 2024\n",
    '"Host" mybox\n    User quoted\n',
    '"Match" all\n    ServerAliveInterval 5\n',
    f"Host *\n    Include {INC}/extra\n",
    f"Host mybox\n    Include {INC}/*\n",
    "Host x.corp\n    Include inc/extra\n",  # relative: ~/.ssh/inc/extra of the passwd entry (absent: ignored)
]
# What the included file says (for mybox, x.corp and our hosts alike).
INCLUDED = "User included\nHost x.corp cloudx-dev-web\n    Port 2300\n"
BANNERS = [
    "",
    "# Created by cloudx-proxy v0.6.2 on 2024-05-01 10:00:00\n# Configuration type: {kind}\n",
    RULE + "#  {kind}\n" + RULE + "\n",
]
PREAMBLES = [
    "",
    "ServerAliveInterval 15\n\n",
    "# SSH Configuration - Managed by cloudx-proxy v0.17.6\n\n",
    f"Include {INC}/ext?a\n\n",
]


@st.composite
def configs(draw: st.DrawFn) -> str:
    """A config of 2-9 blocks in any order, some with banners."""
    pool = st.sampled_from(
        [("generic", b) for b in GENERIC]
        + [("environment", b) for b in ENVIRONMENT]
        + [("host", b) for b in HOST]
        + [("", b) for b in FOREIGN]
    )
    blocks = draw(st.lists(pool, min_size=2, max_size=9))
    text = draw(st.sampled_from(PREAMBLES))
    for kind, block in blocks:
        banner = draw(st.sampled_from(BANNERS)) if kind else ""
        text += banner.format(kind=kind) + block + "\n"
    return text


def resolve(tmp: Path, texts: list[str], hosts: list[str] = HOSTS) -> list[dict[str, list[str]]]:
    """`ssh -G` of every host for each config text, in one shell (cheap): host -> printed lines."""
    files = []
    (tmp / "inc").mkdir(exist_ok=True)
    (tmp / "inc" / "extra").write_text(INCLUDED)
    for n, text in enumerate(texts):
        files.append(tmp / f"config{n}")
        files[-1].write_text(text.replace(INC, str(tmp / "inc")))
    script = 'for f in $FILES; do for h in $HOSTS; do echo "=== $f $h"; ssh -G -F "$f" "$h" 2>&1; done; done'
    out = subprocess.run(
        ["sh", "-c", script],
        env={"PATH": "/usr/bin:/bin", "FILES": " ".join(map(str, files)), "HOSTS": " ".join(hosts)},
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=120,
    ).stdout
    results: list[dict[str, list[str]]] = [{} for _ in texts]
    current: list[str] = []
    for line in out.splitlines():
        if line.startswith("=== "):
            _, name, host = line.split(" ")
            current = results[files.index(Path(name))].setdefault(host, [])
        else:
            current.append(line)
    return results


def without_program(lines: list[str]) -> list[str]:
    """ssh -G lines with a ProxyCommand cut to its arguments from 'connect' on (less our '--user %r')."""
    out = []
    for line in lines:
        if line.startswith("proxycommand ") and " connect " in line:
            line = "proxycommand " + line.split(" connect ", 1)[1].removesuffix(" --user %r")
        out.append(line)
    return out


@pytest.fixture(scope="module")
def tmp(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not shutil.which("ssh"):
        pytest.skip("no ssh client")
    return tmp_path_factory.mktemp("adopt-props")


def quoted_by_hand(text: str) -> str:
    """The config as it meant to be: its unquoted paths with spaces quoted (ssh refuses it otherwise)."""
    for bad, good in SPACED.items():
        text = text.replace(bad, good)
    return text


def read_by_ssh(resolved: dict[str, list[str]]) -> bool:
    """True when ssh read the config for every host (it prints a hostname line, no error)."""
    return all(any(ln.startswith("hostname ") for ln in lines) for lines in resolved.values())


def served_hosts(text: str) -> list[str]:
    """Host entries (of HOSTS) whose environment has a block with a connect ProxyCommand in this config."""
    parsed = cp.parse_cloudx_config(text)
    envs = {k for k, e in parsed["environments"].items() if " connect " in e["directives"].get("proxycommand", "")}
    return [h["host"] for h in parsed["hosts"] if h["environment"].lower() in envs and h["host"] in HOSTS]


def runs_connect(lines: list[str], program: str = "") -> bool:
    return any(ln.startswith(f"proxycommand {program}") and " connect %h %p" in ln for ln in lines)


@SSH_G
@given(text=configs())
@example(text=PREAMBLES[2] + RULE + "#  GLOBAL\n" + RULE + "\n" + GENERIC[0] + "\n" + HOST[1] + "\n" + FOREIGN[0])
@example(text=FOREIGN[1] + "\n" + GENERIC[2] + "\n" + ENVIRONMENT[1] + "\n" + HOST[0] + "\n" + HOST[1])
@example(text="Host mybox\n    User other\n\n" + HOST[0] + "\n" + FOREIGN[10] + "\n" + GENERIC[0])  # "Host" mybox
@example(text=GENERIC[2] + "\n" + ENVIRONMENT[2] + "\n" + "Host cloudx-dev-web\n    HostName i-1\n")  # spelling
def test_cleanup_and_adoption_keep_what_ssh_resolves(tmp: Path, text: str) -> None:
    repaired, _ = cp.repair_config(text)
    cleaned, _ = cp.canonical_config(text, WHEN)
    adopted, _ = cp.adopt_config(text, PROGRAM, WHEN)
    converted, _ = cp.canonical_config(text, WHEN, "cloudx")
    meant = quoted_by_hand(text)
    distinct = list(dict.fromkeys([meant, repaired, cleaned, adopted]))  # ssh -G costs ~20 ms a host
    resolved = dict(zip(distinct, resolve(tmp, distinct)))
    before, after_repair, after_cleanup, after_adoption = (resolved[t] for t in (meant, repaired, cleaned, adopted))
    assert read_by_ssh(after_cleanup) and read_by_ssh(after_adoption), (text, cleaned, adopted)
    assert after_cleanup == after_repair, ("cleanup's reordering changed what ssh resolves", text, cleaned)
    for host in NOT_OURS:
        assert after_cleanup[host] == before[host], (host, text, cleaned)
    for host in served_hosts(text):
        assert runs_connect(after_cleanup[host]), (host, "no ProxyCommand after cleanup", text, cleaned)
    for host in HOSTS:
        assert without_program(after_adoption[host]) == without_program(before[host]), (host, text, adopted)
    assert "uvx" not in adopted and "cloudX-proxy connect" not in adopted, "every original ProxyCommand adopted"
    again, dropped = cp.canonical_config(cleaned, "2030-01-01 00:00:00")
    assert again.replace("2030-01-01 00:00:00", WHEN) == cleaned and dropped == [], "cleanup is stable"
    assert cp.canonical_config(converted, WHEN, "cloudx")[0] == converted


def run_setup_config(home: Path, text: str, replace: bool) -> str:
    """What setup's real config step (setup_config) writes over `text` for host 'new' in environment dev.

    The user answers 'replace' or, with --yes, keeps an environment block that differs from setup's. The
    prefix is what Setup finds (no --ssh-host-prefix); only the program's argv is fixed (setup_program).
    """
    config = home / ".ssh" / "cloudX" / "config"
    config.parent.mkdir(parents=True, exist_ok=True)
    config.write_text(text)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HOME", str(home))
        mp.setattr(cp, "setup_program", lambda s: PROGRAM)
        args = dict(profile="cloudX", ssh_key="cloudX", ssh_config=None, ssh_dir=None, aws_env=None, op_vault=None)
        args.update(instance=None, hostname=None, environment=None, ssh_host_prefix=None, yes=not replace)
        s = cp.Setup(Namespace(**args, dry_run=False), {})
        s.when = WHEN
        mp.setattr(s, "ask", lambda question, default: "r")
        cp.setup_config(s, "dev", "new", "i-0123456789abcdef0")
    return config.read_text()


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=configs(), replace=st.booleans())
@example(text=MYBOX_CATCH_ALL, replace=False)
@example(text=ENVIRONMENT[1] + "\n" + HOST[0], replace=True)
def test_setup_serves_our_hosts_and_keeps_the_users(tmp: Path, text: str, replace: bool) -> None:
    home = Path(tempfile.mkdtemp(dir=tmp))
    merged = run_setup_config(home, text, replace)
    new = cp.existing_names(merged, cp.config_prefix(merged) or "cloudX", "dev", "new")[1]
    hosts = [h for h in HOSTS if h.lower().startswith("cloudx-dev-")] + [new]
    before, after = resolve(tmp, [quoted_by_hand(text), merged], HOSTS + [new])
    assert read_by_ssh(after), (text, merged)
    for host in NOT_OURS:
        assert after[host] == before[host], (host, text, merged)
    for host in hosts:  # a kept environment block without a ProxyCommand gets ours
        assert runs_connect(after[host], PROGRAM[0]), (host, text, merged)
    if replace:  # the environment block ssh uses for dev hosts is setup's own: its key is offered
        assert f"identityfile {home}/.ssh/cloudX/cloudX" in after[new], (text, merged)
    assert run_setup_config(home, merged, replace) == merged, "a second setup changes nothing"


def test_setup_yes_over_a_proxyless_environment_block_serves_the_new_host(tmp: Path) -> None:
    """Found when the property above ran the real setup_config instead of a copy that always replaced the
    block: the user's 'Host cloudx-dev-*' (User, IdentityFile, no ProxyCommand) was kept as the environment
    block, so the host just added had no way in. Kept now, with our ProxyCommand added to it."""
    home = Path(tempfile.mkdtemp(dir=tmp))
    merged = run_setup_config(home, FOREIGN[1], replace=False)
    (after,) = resolve(tmp, [merged], ["cloudx-dev-new"])
    assert runs_connect(after["cloudx-dev-new"], PROGRAM[0]), merged

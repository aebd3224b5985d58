"""Property tests (hypothesis): for generated configs, what ssh resolves is kept.

Configs are drawn from blocks as PyPI cloudx-proxy 0.17 (both spellings, its banners, uvx), older
versions (one pattern, '# Created by' banners) and setup write them, mixed with a user's blocks that
overlap ours (Host *, their own cloudx-* blocks, Match blocks, duplicates). The real `ssh -G` of
every host must be the same after `cleanup` (canonical_config); after setup's adoption
(adopt_config) only a ProxyCommand's program may differ.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
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
HOSTS = ["cloudx-dev-web", "cloudX-dev-web", "cloudx-dev-db", "cloudx-prod-api", "mybox", "x.corp"]

GENERIC = [
    "Host cloudx-* cloudX-*\n    User ec2-user\n    TCPKeepAlive yes\n    IdentitiesOnly yes\n"
    "    ControlMaster auto\n    ControlPath ~/.ssh/control/%r@%h:%p\n    ControlPersist 4h\n",
    "Host cloudX-*\n    User ec2-user\n    TCPKeepAlive yes\n    ControlPersist 4h\n",
    "Host cloudx-*\n    User ec2-user\n    ServerAliveInterval 60\n",
]
ENVIRONMENT = [
    "Host cloudx-dev-* cloudX-dev-*\n    IdentityFile /k/cloudX\n    ProxyCommand uvx cloudx-proxy connect %h %p\n",
    "Host cloudx-dev-*\n    IdentityFile /k/old\n    IdentitiesOnly yes\n"
    "    ProxyCommand cloudX-proxy connect %h %p --profile old --ssh-key old\n",
    "Host cloudX-dev-*\n    IdentityFile /k/ours\n    IdentitiesOnly yes\n"
    "    ProxyCommand /usr/bin/python3 /x.pyz connect %h %p --profile cloudX --user %r\n",
    "Host cloudx-prod-* cloudX-prod-*\n    IdentityFile /k/prod\n"
    "    ProxyCommand uvx cloudx-proxy connect %h %p --aws-env work --profile ops\n    Port 2200\n",
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
]
BANNERS = [
    "",
    "# Created by cloudx-proxy v0.6.2 on 2024-05-01 10:00:00\n# Configuration type: {kind}\n",
    RULE + "#  {kind}\n" + RULE + "\n",
]
PREAMBLES = ["", "ServerAliveInterval 15\n\n", "# SSH Configuration - Managed by cloudx-proxy v0.17.6\n\n"]


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


def resolve(tmp: Path, texts: list[str]) -> list[dict[str, list[str]]]:
    """`ssh -G` of every host for each config text, in one shell (cheap): host -> printed lines."""
    files = []
    for n, text in enumerate(texts):
        files.append(tmp / f"config{n}")
        files[-1].write_text(text)
    script = 'for f in $FILES; do for h in $HOSTS; do echo "=== $f $h"; ssh -G -F "$f" "$h" 2>&1; done; done'
    out = subprocess.run(
        ["sh", "-c", script],
        env={"PATH": "/usr/bin:/bin", "FILES": " ".join(map(str, files)), "HOSTS": " ".join(HOSTS)},
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


@SSH_G
@given(text=configs())
@example(text=PREAMBLES[2] + RULE + "#  GLOBAL\n" + RULE + "\n" + GENERIC[0] + "\n" + HOST[1] + "\n" + FOREIGN[0])
@example(text=FOREIGN[1] + "\n" + GENERIC[2] + "\n" + ENVIRONMENT[1] + "\n" + HOST[0] + "\n" + HOST[1])
def test_cleanup_and_adoption_keep_what_ssh_resolves(tmp: Path, text: str) -> None:
    cleaned, _ = cp.canonical_config(text, WHEN)
    adopted, _ = cp.adopt_config(text, PROGRAM, WHEN)
    converted, _ = cp.canonical_config(text, WHEN, "cloudx")
    distinct = list(dict.fromkeys([text, cleaned, adopted]))  # ssh -G costs ~20 ms a host: only what differs
    resolved = dict(zip(distinct, resolve(tmp, distinct)))
    before, after_cleanup, after_adoption = resolved[text], resolved[cleaned], resolved[adopted]
    assert after_cleanup == before, ("cleanup changed what ssh resolves", text, cleaned)
    for host in HOSTS:
        assert without_program(after_adoption[host]) == without_program(before[host]), (host, text, adopted)
    assert "uvx" not in adopted and "cloudX-proxy connect" not in adopted, "every original ProxyCommand adopted"
    again, dropped = cp.canonical_config(cleaned, "2030-01-01 00:00:00")
    assert again.replace("2030-01-01 00:00:00", WHEN) == cleaned and dropped == [], "cleanup is stable"
    assert cp.canonical_config(converted, WHEN, "cloudx")[0] == converted

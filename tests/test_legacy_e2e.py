"""Legacy ~/.ssh/vscode setups end to end: a home as the old cloudx-proxy left it (only
~/.ssh/vscode, hosts whose ProxyCommand runs connect without flags, so they rely on connect's
directory-dependent defaults), then our setup and migrate; every host is proven through the real
ssh, the real aws CLI and the rig. The old `uvx cloudx-proxy` program is replaced by our zipapp
with the same flag-less arguments, as a user who aliased it would have it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from helpers import cli, ssh_g_last
from rig import Home, Rig, ssh_config_argv


def legacy_home(rig: Rig, root: Path, pyz: Path, host_id: str) -> tuple[Home, str]:
    """HOME with profile 'vscode', ~/.ssh/vscode/{vscode,vscode.pub,config} and an Include of it."""
    home = rig.make_home(root, profile="vscode", ssh_dir="vscode", key="vscode")
    vscode = home.ssh_dir
    config = (
        "# Created by cloudX-proxy v0.15.0 on 2025-03-01 10:00:00\n"
        "# Configuration type: generic\n"
        "Host cloudx-*\n    User ec2-user\n    TCPKeepAlive yes\n"
        "    ControlMaster auto\n    ControlPath ~/.ssh/control/%r@%h:%p\n    ControlPersist 4h\n\n"
        "# Created by cloudX-proxy v0.15.0 on 2025-03-01 10:00:00\n"
        "# Configuration type: environment\n"
        f"Host cloudx-dev-*\n    IdentityFile {vscode}/vscode\n    IdentitiesOnly yes\n"
        f"    ProxyCommand {sys.executable} {pyz} connect %h %p\n\n"
        "# Created by cloudX-proxy v0.15.0 on 2025-03-01 10:00:00\n"
        "# Configuration type: host\n"
        f"Host cloudx-dev-web\n    HostName {host_id}\n    # my notes\n    ServerAliveInterval 30\n"
    )
    (vscode / "config").write_text(config)
    (home.path / ".ssh" / "config").write_text(f"Include {vscode}/config\n\nHost elsewhere\n    User me\n")
    return home, config


def ssh(rig: Rig, home: Home, host: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """ssh HOST echo ok through ~/.ssh/config (and so its Include)."""
    argv = ssh_config_argv(home, home.path / ".ssh" / "config", host, "echo", "ok")
    return subprocess.run(argv, env=env or rig.env(home), capture_output=True, text=True, timeout=120)


def tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_legacy_hosts_work_before_setup_after_setup_yes_and_after_migrate(rig: Rig, pyz: Path, tmp_path: Path) -> None:
    web = rig.add_instance(tags={"Name": "web"})
    home, legacy_text = legacy_home(rig, tmp_path / "home", pyz, web)
    vscode, cloudx = home.path / ".ssh" / "vscode", home.path / ".ssh" / "cloudX"
    res = ssh(rig, home, "cloudx-dev-web")
    assert (res.returncode, res.stdout) == (0, "ok\n"), f"the legacy home works before: {res.stderr}"

    # setup --yes, an id in upper case, no Name tag: stays in ~/.ssh/vscode and says how to migrate
    new = rig.add_instance()
    res = cli(rig, home, pyz, "setup", "--instance", new.upper(), "--ssh-host-prefix", "cloudx", "--yes")
    assert res.returncode == 0, res.stderr
    assert "cloudx-proxy migrate" in res.stderr
    assert not cloudx.exists(), "no ~/.ssh/cloudX: flag-less connects keep resolving to ~/.ssh/vscode"
    text = (vscode / "config").read_text()
    host = f"cloudx-dev-instance-{new[-7:]}"
    assert f"Host {host}\n    HostName {new}\n" in text, "hostname instance-<last 7>, id written lower case"
    assert "    # my notes\n    ServerAliveInterval 30\n" in text
    assert set((home.path / ".ssh").iterdir()) >= {vscode}
    res = ssh(rig, home, "cloudx-dev-web")
    assert (res.returncode, res.stdout) == (0, "ok\n"), f"the old host still works after setup: {res.stderr}"
    before = {h: ssh_g_last(home.path / ".ssh" / "config", h, rig.env(home)) for h in ("cloudx-dev-web", host)}

    # migrate --dry-run changes nothing; migrate moves it and both hosts keep working
    snapshot = tree(home.path / ".ssh")
    res = cli(rig, home, pyz, "migrate", "--dry-run")
    assert res.returncode == 0, res.stderr
    assert "would move" in res.stderr and tree(home.path / ".ssh") == snapshot
    res = cli(rig, home, pyz, "migrate")
    assert res.returncode == 0, res.stderr
    assert not vscode.exists() and (cloudx / "vscode").exists()
    assert (home.path / ".ssh" / "config").read_text() == f"Include {cloudx}/config\n\nHost elsewhere\n    User me\n"
    assert (home.path / ".ssh" / "config.bak").exists()
    migrated = (cloudx / "config").read_text()
    assert "    # my notes\n    ServerAliveInterval 30\n" in migrated
    assert str(vscode) not in migrated
    for h, old in before.items():
        now = ssh_g_last(home.path / ".ssh" / "config", h, rig.env(home))
        changed = {k for k in old.keys() | now.keys() if old.get(k) != now.get(k)}
        assert changed <= {"identityfile", "proxycommand"}, (h, changed)
        assert now["identityfile"] == f"{cloudx}/vscode"
    res = ssh(rig, home, "cloudx-dev-web")
    assert (res.returncode, res.stdout) == (0, "ok\n"), f"the old host after migrate: {res.stderr}"
    assert legacy_text.count("\n") < migrated.count("\n")


def test_migrate_to_an_odd_target_dir_works_and_injects_nothing(rig: Rig, pyz: Path, tmp_path: Path) -> None:
    """--target-dir with a space, '%' and '$(...)': the migrated config works through real ssh."""
    iid = rig.add_instance()
    home, _ = legacy_home(rig, tmp_path / "home", pyz, iid)
    pwned = tmp_path / "PWNED"
    target = tmp_path / f"odd dir 100% $(touch {pwned})"
    res = cli(rig, home, pyz, "migrate", "--target-dir", str(target))
    assert res.returncode == 0, res.stderr
    assert (target / "config").exists() and not (home.path / ".ssh" / "vscode").exists()
    assert ssh_g_last(home.path / ".ssh" / "config", "cloudx-dev-web", rig.env(home))[
        "identityfile"
    ] == f"{target}/vscode".replace("%", "%%")
    res = ssh(rig, home, "cloudx-dev-web")
    assert (res.returncode, res.stdout) == (0, "ok\n"), res.stderr
    assert not pwned.exists(), "nothing in the path ran"
    assert [c["instance_ids"] for c in rig.calls("SendSSHPublicKey")] == [[iid]]


def test_interactive_setup_offers_migrate(rig: Rig, pyz: Path, tmp_path: Path) -> None:
    web = rig.add_instance()
    home, _ = legacy_home(rig, tmp_path / "home", pyz, web)
    new = rig.add_instance(tags={"Name": "api"})
    # yes to migrate, then the defaults (an environment block that differs is kept)
    argv = ["setup", "--instance", new, "--hostname", "api", "--ssh-host-prefix", "cloudx"]
    res = cli(rig, home, pyz, *argv, stdin="y\n" + "\n" * 5)
    assert res.returncode == 0, res.stderr
    assert "Migrate it to" in res.stderr
    cloudx = home.path / ".ssh" / "cloudX"
    assert not (home.path / ".ssh" / "vscode").exists()
    text = (cloudx / "config").read_text()
    assert f"Host cloudx-dev-api\n    HostName {new}\n" in text
    assert not (cloudx / "cloudX").exists(), "the legacy key goes on being used"
    assert "connected" in res.stderr, "setup's own ssh check went through the migrated config"


def test_setup_dry_run_without_credentials(rig: Rig, home: Home, pyz: Path) -> None:
    """No credentials: the dry run shows the aws calls, goes on without their answers, writes nothing."""
    (home.path / ".aws" / "credentials").write_text("")
    files = tree(home.path)
    res = cli(rig, home, pyz, "setup", "--dry-run", "--yes", "--instance", "I-0123456789ABCDEF0", "--environment", "qa")
    assert res.returncode == 0, res.stderr
    assert "aws sts get-caller-identity" in res.stderr
    assert "aws ec2 describe-instances --instance-ids i-0123456789abcdef0" in res.stderr.replace(rig.aws_v1, "aws")
    assert "+Host cloudX-qa-instance-abcdef0" in res.stderr and "+    HostName i-0123456789abcdef0" in res.stderr
    assert {k: v for k, v in tree(home.path).items() if not k.startswith(".cache")} == files

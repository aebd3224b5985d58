"""End-to-end tests of setup: the real aws CLI against moto, real ssh-keygen, and a final real ssh
through the generated config (which runs our connect as its ProxyCommand)."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from rig import Home, Rig, ssh_config_argv


def setup(
    rig: Rig, home: Home, pyz: Path, *args: str, stdin: str | None = None, aws: str = "v1", timeout: float = 240
) -> subprocess.CompletedProcess[str]:
    """Run `python pyz setup ARGS` with the rig's environment."""
    return subprocess.run(
        [sys.executable, str(pyz), "setup", *args],
        env=rig.env(home, aws),
        input=stdin,
        stdin=None if stdin is not None else subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def ssh_via_config(rig: Rig, home: Home, config: Path, host: str, *remote: str) -> subprocess.CompletedProcess[str]:
    """ssh HOST through the written config only (no multiplexing master left behind)."""
    return subprocess.run(
        ssh_config_argv(home, config, host, *remote), env=rig.env(home), capture_output=True, text=True, timeout=120
    )


def user_files(home: Home) -> list[Path]:
    """Every file and dir under HOME except our cache (bytecode and locks, not user data)."""
    return sorted(p.relative_to(home.path) for p in home.path.rglob("*") if ".cache" not in p.parts)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_setup_then_ssh_through_the_written_config(rig: Rig, home: Home, pyz: Path) -> None:
    for f in (home.key, home.pub):
        f.unlink()
    iid = rig.add_instance(tags={"Name": "web"})
    res = setup(rig, home, pyz, "--instance", iid, "--yes")
    assert res.returncode == 0, res.stderr
    assert "ssh cloudX-dev-web" in res.stdout
    assert "remote.SSH.configFile" not in res.stdout + res.stderr
    assert "no settings directory of VS Code" in res.stderr, "no editor here: one line says so"
    config = home.ssh_dir / "config"
    text = config.read_text()
    assert (
        "Host cloudX-* cloudx-*\n" in text  # both spellings, as the original 0.17.4+ writes them
        and "Host cloudX-dev-* cloudx-dev-*\n" in text
        and f"Host cloudX-dev-web\n    HostName {iid}\n" in text
    )
    assert (
        f"ProxyCommand {sys.executable} {pyz} connect %h %p --profile cloudX --ssh-key cloudX --ssh-dir {home.ssh_dir}"
        in text
    )
    assert mode(home.ssh_dir) == 0o700 and mode(config) == 0o600
    assert mode(home.key) == 0o600 and home.pub.read_text().startswith("ssh-ed25519 ")
    assert mode(home.path / ".ssh" / "control") == 0o700
    assert (home.path / ".ssh" / "config").read_text() == f"Include {config}\n"
    assert mode(home.path / ".ssh" / "config") == 0o600
    res = ssh_via_config(rig, home, config, "cloudX-dev-web", "echo through-config")
    assert res.returncode == 0, res.stderr
    assert res.stdout == "through-config\n"


def test_rerun_is_idempotent_and_foreign_lines_survive(rig: Rig, home: Home, pyz: Path) -> None:
    # the rig lives for the whole session: a Name no other test gives, so the lookup by name is unique
    iid = rig.add_instance(tags={"Name": "rerun-api"})
    main = home.path / ".ssh" / "config"
    original = "# mine\r\nHost old-box\r\n\tHostName 192.0.2.1\r\n\r\nMatch host *.corp\r\n  User me\r\n"
    main.write_text(original, newline="")
    assert setup(rig, home, pyz, "--instance", "rerun-api", "--yes").returncode == 0
    first = (home.ssh_dir / "config").read_bytes()
    included = main.read_bytes().decode()
    assert included == f"# mine\r\nInclude {home.ssh_dir / 'config'}\r\n\r\n" + original[len("# mine\r\n") :]
    assert (home.path / ".ssh" / "config.bak").read_bytes() == original.encode(), "backup of the original"
    res = setup(rig, home, pyz, "--instance", iid, "--hostname", "rerun-api", "--yes")
    assert res.returncode == 0, res.stderr
    assert (home.ssh_dir / "config").read_bytes() == first, "nothing rewritten"
    assert main.read_bytes().decode() == included, "Include added once"


def test_host_updated_in_place_and_environment_kept_with_yes(rig: Rig, home: Home, pyz: Path) -> None:
    first = rig.add_instance()
    second = rig.add_instance()
    assert setup(rig, home, pyz, "--instance", first, "--hostname", "box", "--yes").returncode == 0
    assert setup(rig, home, pyz, "--instance", first, "--hostname", "other", "--yes").returncode == 0
    res = setup(rig, home, pyz, "--instance", second, "--hostname", "box", "--ssh-key", "second", "--yes")
    assert res.returncode == 0, res.stderr
    text = (home.ssh_dir / "config").read_text()
    assert text.count("Host cloudX-dev-box\n") == 1 and f"HostName {second}" in text and f"HostName {first}" in text
    assert text.index("Host cloudX-dev-box") < text.index("Host cloudX-dev-other"), "updated in place"
    assert "keeping the existing environment block" in res.stderr
    assert "--ssh-key cloudX " in text and "--ssh-key second" not in text
    assert text.count("Host cloudX-dev-*") == 1 and text.count("Host cloudX-*") == 1


def test_interactive_replace_of_the_environment_block(rig: Rig, home: Home, pyz: Path) -> None:
    iid = rig.add_instance()
    assert setup(rig, home, pyz, "--instance", iid, "--hostname", "h", "--yes").returncode == 0
    res = setup(rig, home, pyz, "--instance", iid, "--hostname", "h", "--ssh-key", "newkey", stdin="r\n")
    assert res.returncode == 0, res.stderr
    assert "+ProxyCommand" in res.stderr and "-ProxyCommand" in res.stderr, "the difference is shown"
    text = (home.ssh_dir / "config").read_text()
    assert "--ssh-key newkey" in text and "--ssh-key cloudX " not in text
    assert ssh_via_config(rig, home, home.ssh_dir / "config", "cloudX-dev-h", "true").returncode == 0


def test_instance_by_name_ambiguous_or_unknown(rig: Rig, home: Home, pyz: Path) -> None:
    a = rig.add_instance(tags={"Name": "twin"})
    b = rig.add_instance(tags={"Name": "twin"})
    res = setup(rig, home, pyz, "--instance", "twin", "--yes")
    assert res.returncode == 2
    assert a in res.stderr and b in res.stderr
    res = setup(rig, home, pyz, "--instance", "no-such-name", "--yes")
    assert res.returncode == 1 and "no instance named 'no-such-name'" in res.stderr
    assert not (home.ssh_dir / "config").exists()


@pytest.mark.parametrize(
    "args",
    [
        ["--instance", "i-123", "--yes"],
        ["--hostname", "a b", "--yes"],
        ["--environment", "dev;rm", "--yes"],
        ["--ssh-host-prefix", "-x", "--yes"],
        ["--profile", "a/b", "--yes"],
        ["--ssh-dir", "/tmp/a\nb", "--yes"],
        ["--ssh-config", '/tmp/"q"/config', "--yes"],
    ],
)
def test_bad_input_exits_2_and_writes_nothing(rig: Rig, home: Home, pyz: Path, args: list[str]) -> None:
    before = user_files(home)
    res = setup(rig, home, pyz, *args)
    assert res.returncode == 2, res.stderr
    assert len(res.stderr.strip().splitlines()) == 1
    assert user_files(home) == before
    assert rig.calls() == []


def test_environment_needed_for_a_role(rig: Rig, home: Home, pyz: Path, tmp_path: Path) -> None:
    """Credentials of a user not named cloudX-{env}-{user}: --environment is required with --yes."""
    iam = rig.moto_client("iam")
    iam.create_user(UserName="plainuser")
    key = iam.create_access_key(UserName="plainuser")["AccessKey"]
    (home.path / ".aws" / "credentials").write_text(
        f"[cloudX]\naws_access_key_id = {key['AccessKeyId']}\naws_secret_access_key = {key['SecretAccessKey']}\n"
    )
    iid = rig.add_instance()
    res = setup(rig, home, pyz, "--instance", iid, "--hostname", "x", "--yes")
    assert res.returncode == 2 and "pass --environment" in res.stderr
    res = setup(rig, home, pyz, "--instance", iid, "--hostname", "x", "--environment", "qa", "--yes")
    assert res.returncode == 0, res.stderr
    assert "Host cloudX-qa-x\n" in (home.ssh_dir / "config").read_text()


def test_no_credentials_with_yes_says_how(rig: Rig, home: Home, pyz: Path) -> None:
    (home.path / ".aws" / "credentials").write_text("")
    res = setup(rig, home, pyz, "--instance", rig.add_instance(), "--yes")
    assert res.returncode == 1
    assert "aws configure --profile cloudX" in res.stderr


def test_interactive_aws_configure(rig: Rig, home: Home, pyz: Path) -> None:
    """Without credentials, setup runs `aws configure` on the terminal and goes on."""
    creds = (home.path / ".aws" / "credentials").read_text().split()
    akid, secret = creds[creds.index("aws_access_key_id") + 2], creds[creds.index("aws_secret_access_key") + 2]
    (home.path / ".aws" / "credentials").write_text("")
    iid = rig.add_instance()
    res = setup(rig, home, pyz, "--instance", iid, "--hostname", "cfg", stdin=f"{akid}\n{secret}\neu-west-1\njson\n")
    assert res.returncode == 0, res.stderr
    assert akid in (home.path / ".aws" / "credentials").read_text()
    assert "Host cloudX-dev-cfg\n" in (home.ssh_dir / "config").read_text()


def test_dry_run_writes_nothing(rig: Rig, home: Home, pyz: Path) -> None:
    for f in (home.key, home.pub):
        f.unlink()
    before = user_files(home)
    res = setup(rig, home, pyz, "--instance", rig.add_instance(), "--hostname", "dry", "--yes", "--dry-run")
    assert res.returncode == 0, res.stderr
    assert "+Host cloudX-dev-dry" in res.stderr and "would create an ed25519 key pair" in res.stderr
    assert user_files(home) == before


def test_odd_paths_round_trip_through_ssh(rig: Rig, home: Home, pyz: Path, tmp_path: Path) -> None:
    """A key dir with a space, a quote and a percent sign still works end to end."""
    odd = tmp_path / "my keys 100%'s"
    iid = rig.add_instance()
    res = setup(rig, home, pyz, "--instance", iid, "--hostname", "odd", "--ssh-dir", str(odd), "--yes")
    assert res.returncode == 0, res.stderr
    res = ssh_via_config(rig, home, odd / "config", "cloudX-dev-odd", "echo odd-ok")
    assert res.returncode == 0, res.stderr
    assert res.stdout == "odd-ok\n"


def test_mismatched_key_pair_is_refused(rig: Rig, home: Home, pyz: Path) -> None:
    other = home.path / "other"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other)], check=True)
    home.pub.write_text((home.path / "other.pub").read_text())
    res = setup(rig, home, pyz, "--instance", rig.add_instance(), "--hostname", "k", "--yes")
    assert res.returncode == 1 and "does not belong to" in res.stderr
    assert not (home.ssh_dir / "config").exists()


def test_loose_key_permissions_are_fixed(rig: Rig, home: Home, pyz: Path) -> None:
    os.chmod(home.key, 0o644)
    os.chmod(home.ssh_dir, 0o755)
    res = setup(rig, home, pyz, "--instance", rig.add_instance(), "--hostname", "p", "--yes")
    assert res.returncode == 0, res.stderr
    assert mode(home.key) == 0o600 and mode(home.ssh_dir) == 0o700


def test_setup_markers_reported(rig: Rig, home: Home, pyz: Path) -> None:
    marker = Path("/home/ec2-user/.install-running")
    marker.touch()
    try:
        res = setup(rig, home, pyz, "--instance", rig.add_instance(), "--hostname", "m", "--yes")
    finally:
        marker.unlink()
    assert res.returncode == 0, res.stderr
    assert "setup is still running" in res.stderr


def test_symlinked_config_is_written_through(rig: Rig, home: Home, pyz: Path, tmp_path: Path) -> None:
    real = tmp_path / "dotfiles" / "ssh_config"
    real.parent.mkdir()
    real.write_text("Host mine\n  User me\n")
    link = home.path / ".ssh" / "config"
    link.symlink_to(real)
    res = setup(rig, home, pyz, "--instance", rig.add_instance(), "--hostname", "s", "--yes")
    assert res.returncode == 0, res.stderr
    assert link.is_symlink()
    assert real.read_text().startswith(f"Include {home.ssh_dir / 'config'}\n")

"""cleanup and migrate: round trips with byte-level checks of untouched lines (no AWS needed)."""

from __future__ import annotations

import os
import shlex
import stat
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import cloudx_proxy as cp  # noqa: E402

MESSY = (
    "# my settings\n"
    "ServerAliveInterval 30\n"
    "\n"
    "Host cloudX-dev-web\n"
    "    HostName i-0123456789abcdef0\n"
    "Host mine\n"
    "\tHostName 192.0.2.7   # keep me\n"
    "# Created by cloudX-proxy v0.1.0 on 2026-01-01 00:00:00\n"
    "# Configuration type: environment\n"
    "Host cloudX-dev-*\n"
    "    IdentityFile /k/key\n"
    "    ProxyCommand python3 /x.pyz connect %h %p --profile p\n"
    "Host cloudX-*\n"
    "    User ec2-user\n"
    "Match host *.corp\n"
    "  User me\n"
    "Host cloudX-dev-web\n"
    "    HostName i-22222222\n"
)


def run(home: Path, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {"HOME": str(home), "PATH": os.environ.get("PATH", "/usr/bin:/bin")}
    return subprocess.run(
        [sys.executable, str(Path(cp.__file__)), *args],
        env=env,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_canonical_order_and_duplicates() -> None:
    text, dropped = cp.canonical_config(MESSY, "2026-02-02 00:00:00")
    assert dropped == [
        "Host cloudX-dev-* now answers to every prefix spelling: cloudX-dev-* cloudx-dev-*",
        "Host cloudX-* now answers to every prefix spelling: cloudX-* cloudx-*",
        "dropped duplicate host block Host cloudX-dev-web (ssh reads an earlier one)",
    ]
    assert text.startswith("# my settings\nServerAliveInterval 30\n\n# Created by cloudX-proxy")
    order = [
        text.index(s)
        for s in (
            "Host cloudX-* cloudx-*\n",
            "Host cloudX-dev-* cloudx-dev-*\n",
            "Host cloudX-dev-web\n",
            "Host mine\n",
            "Match host",
        )
    ]
    assert order == sorted(order)
    assert "i-0123456789abcdef0" in text and "i-22222222" not in text, "ssh used the first: it stays"
    assert "Host mine\n\tHostName 192.0.2.7   # keep me\n" in text, "foreign lines byte for byte"
    assert "Match host *.corp\n  User me\n" in text
    assert text.count("# Configuration type:") == 3
    again, dropped = cp.canonical_config(text, "2026-03-03 00:00:00")
    assert dropped == [] and again.replace("2026-03-03", "2026-02-02") == text, "stable"


def test_cleanup_command_round_trip(tmp_path: Path) -> None:
    config = tmp_path / ".ssh" / "cloudX" / "config"
    config.parent.mkdir(parents=True)
    config.write_text(MESSY)
    res = run(tmp_path, "cleanup", "--dry-run")
    assert res.returncode == 0, res.stderr
    assert "-Host cloudX-dev-web" in res.stderr and config.read_text() == MESSY, "dry run writes nothing"
    res = run(tmp_path, "cleanup")
    assert res.returncode == 0, res.stderr
    assert "dropped duplicate host block" in res.stderr
    assert (config.parent / "config.bak").read_text() == MESSY
    cleaned = config.read_text()
    assert stat.S_IMODE(config.stat().st_mode) == 0o600
    res = run(tmp_path, "cleanup")
    assert "already clean" in res.stderr and config.read_text() == cleaned


def test_cleanup_keeps_crlf() -> None:
    text, _ = cp.canonical_config(MESSY.replace("\n", "\r\n"), "2026-02-02 00:00:00")
    assert "\n" not in text.replace("\r\n", "")


def _legacy_home(home: Path) -> Path:
    legacy = home / ".ssh" / "vscode"
    legacy.mkdir(parents=True, mode=0o700)
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(legacy / "vscode")], check=True)
    (legacy / "config").write_text(
        "Host cloudx-dev-*\n"
        f"    IdentityFile {legacy}/vscode\n"
        "    ProxyCommand uvx cloudx-proxy connect %h %p\n"
        "Host cloudx-dev-web\n    HostName i-0123456789abcdef0\n"
    )
    (home / ".ssh" / "config").write_text(f"Include {legacy}/config\n\nHost other\n  User x\n")
    return legacy


def test_migrate_moves_keys_and_rewrites_paths(tmp_path: Path) -> None:
    legacy = _legacy_home(tmp_path)
    key = (legacy / "vscode").read_bytes()
    target = tmp_path / ".ssh" / "cloudX"
    res = run(tmp_path, "migrate", "--dry-run")
    assert res.returncode == 0, res.stderr
    assert "would move" in res.stderr and not target.exists()
    res = run(tmp_path, "migrate")
    assert res.returncode == 0, res.stderr
    assert not legacy.exists()
    assert (target / "vscode").read_bytes() == key
    assert stat.S_IMODE((target / "vscode").stat().st_mode) == 0o600
    config = (target / "config").read_text()
    assert f"IdentityFile {target}/vscode\n" in config
    assert f"connect %h %p --profile vscode --ssh-key vscode --ssh-dir {target}\n" in config, "keeps its defaults"
    assert "Host cloudx-dev-web\n    HostName i-0123456789abcdef0\n" in config
    assert (tmp_path / ".ssh" / "config").read_text() == f"Include {target}/config\n\nHost other\n  User x\n"


def test_migrate_never_overwrites_without_asking(tmp_path: Path) -> None:
    legacy = _legacy_home(tmp_path)
    main_before = (tmp_path / ".ssh" / "config").read_text()
    target = tmp_path / ".ssh" / "cloudX"
    target.mkdir(mode=0o700)
    (target / "vscode").write_text("someone else's key\n")
    res = run(tmp_path, "migrate", stdin="")
    assert res.returncode == 1 and "exists and differs; nothing was migrated" in res.stderr
    assert (target / "vscode").read_text() == "someone else's key\n"
    assert sorted(p.name for p in legacy.iterdir()) == ["config", "vscode", "vscode.pub"], "all or nothing"
    assert (tmp_path / ".ssh" / "config").read_text() == main_before


def test_migrate_confirmed_overwrite_is_backed_up(tmp_path: Path) -> None:
    legacy = _legacy_home(tmp_path)
    key = (legacy / "vscode").read_bytes()
    target = tmp_path / ".ssh" / "cloudX"
    target.mkdir(mode=0o700)
    (target / "vscode").write_text("someone else's key\n")
    asked: list[str] = []
    assert cp.migrate_legacy(str(tmp_path), str(target), False, lambda q: asked.append(q) is None) == 3
    assert asked == [f"{target}/vscode exists and differs. Overwrite it (after a backup)?"]
    assert (target / "vscode").read_bytes() == key
    assert (target / "vscode.bak").read_text() == "someone else's key\n"
    assert (tmp_path / ".ssh" / "config.bak").exists(), "~/.ssh/config backed up before its rewrite"


HOME = "/home/u"
SRC = HOME + "/.ssh/vscode"
LEGACY_DEFAULTS = {"--profile": "vscode", "--ssh-key": "vscode", "--ssh-dir": HOME + "/.ssh/cloudX"}


def test_migrate_text_replaces_whole_components_and_keeps_the_rest() -> None:
    text = (
        "Include vscode/config ~/.ssh/vscode-old/config conf.d/*\r\n"
        "Host cloudx-dev-*\r\n"
        "    IdentityFile ~/.ssh/vscode/vscode\r\n"
        "\tidentityfile=/home/u/.ssh/vscode-old/vscode   # mine\r\n"
        "    CertificateFile $HOME/.ssh/vscode/cert.pub\r\n"
        "    LocalForward 8080 localhost:80\r\n"
        "    ProxyCommand uvx cloudx-proxy connect %h %p --aws-env prod\r\n"
        "Host mine\r\n"
        "    ProxyCommand ssh -W %h:%p jump # /home/u/.ssh/vscode\r\n"
    )
    new, notes = cp.migrate_config_text(text, SRC, HOME + "/.ssh/cloudX", HOME, LEGACY_DEFAULTS)
    assert new.split("\r\n") == [
        "Include /home/u/.ssh/cloudX/config ~/.ssh/vscode-old/config conf.d/*",
        "Host cloudx-dev-*",
        "    IdentityFile ~/.ssh/cloudX/vscode",
        "\tidentityfile=/home/u/.ssh/vscode-old/vscode   # mine",
        "    CertificateFile /home/u/.ssh/cloudX/cert.pub",
        "    LocalForward 8080 localhost:80",
        "    ProxyCommand uvx cloudx-proxy connect %h %p --profile vscode --ssh-key vscode"
        " --ssh-dir /home/u/.ssh/cloudX --aws-env prod",
        "Host mine",
        "    ProxyCommand ssh -W %h:%p jump # /home/u/.ssh/vscode",
        "",
    ]
    assert notes == ["left as it is (not a cloudx-proxy connect): ssh -W %h:%p jump # /home/u/.ssh/vscode"]
    again, _ = cp.migrate_config_text(new, SRC, HOME + "/.ssh/cloudX", HOME, LEGACY_DEFAULTS)
    assert again == new, "idempotent"


@pytest.mark.parametrize("target", ["/t/my keys", "/t/100%", "/t/$(touch pwned)", "/t/it's `x` ;|&"])
def test_migrate_text_quotes_odd_targets_as_setup_does(target: str) -> None:
    text = (
        "Host cloudx-dev-*\n"
        f"    IdentityFile {SRC}/vscode\n"
        f"    ProxyCommand /usr/bin/python3 /opt/cloudx_proxy.pyz connect %h %p --ssh-dir={SRC}\n"
    )
    new, _ = cp.migrate_config_text(text, SRC, target, HOME, {"--profile": "vscode", "--ssh-key": "vscode"})
    ident = next(line for line in new.splitlines() if "IdentityFile" in line).split(None, 1)[1]
    assert cp.ssh_words(ident) == [(target + "/vscode").replace("%", "%%")]
    assert ident == cp.quote_config_value(target + "/vscode")
    proxy = next(line for line in new.splitlines() if "ProxyCommand" in line).split(None, 1)[1]
    # what sh runs after ssh's %-expansion (%h/%p filled in)
    argv = shlex.split(proxy.replace("%h", "i-1").replace("%p", "22").replace("%%", "%"))
    assert argv == [
        "/usr/bin/python3", "/opt/cloudx_proxy.pyz", "connect", "i-1", "22",
        "--profile", "vscode", "--ssh-key", "vscode", f"--ssh-dir={target}",
    ]  # fmt: skip


def test_migrate_adds_no_flags_when_cloudx_already_set_the_defaults(tmp_path: Path) -> None:
    legacy = _legacy_home(tmp_path)
    (tmp_path / ".ssh" / "cloudX").mkdir(mode=0o700)  # flag-less connects already used cloudX defaults
    target = tmp_path / "elsewhere"
    res = run(tmp_path, "migrate", "--target-dir", str(target))
    assert res.returncode == 0, res.stderr
    assert not legacy.exists()
    config = (target / "config").read_text()
    assert "ProxyCommand uvx cloudx-proxy connect %h %p\n" in config
    assert f"IdentityFile {target}/vscode\n" in config


def test_migrate_refuses_a_target_inside_the_legacy_dir(tmp_path: Path) -> None:
    legacy = _legacy_home(tmp_path)
    res = run(tmp_path, "migrate", "--target-dir", str(legacy / "sub"))
    assert res.returncode == 2 and (legacy / "config").exists()


def test_migrate_without_legacy_dir(tmp_path: Path) -> None:
    res = run(tmp_path, "migrate")
    assert res.returncode == 1 and "nothing to migrate" in res.stderr

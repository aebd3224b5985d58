"""End to end (issue 19): setup makes VS Code-family Remote-SSH ready in settings.json, and doctor
checks it. The zipapp runs as a subprocess with HOME set to a fresh directory, against the rig."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import cli
from rig import Home, Rig

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import cloudx_proxy as cp  # noqa: E402

MINE = (
    "{\r\n"
    "    // my editor\r\n"
    '    "editor.fontSize": 13, /* big enough */\r\n'
    '    "[python]": { "remote.SSH.connectTimeout": 5 },\r\n'
    '    "remote.SSH.remotePlatform": { "build": "windows", "cloudX-*": "windows" },\r\n'
    '    "remote.SSH.connectTimeout": 30\r\n'
    "    // the end\r\n"
    "}\r\n"
)


def code_settings(home: Home, text: str | None = MINE, app: str = "Code") -> Path:
    """~/.config/<app>/User/settings.json with the given text (None: the directory only)."""
    user = home.path / ".config" / app / "User"
    user.mkdir(parents=True)
    path = user / "settings.json"
    if text is not None:
        path.write_bytes(text.encode("utf-8"))
        path.chmod(0o644)
    return path


def tree(home: Home) -> dict[str, bytes]:
    """Every file under HOME (our cache aside) and its bytes."""
    return {
        str(p.relative_to(home.path)): p.read_bytes()
        for p in sorted(home.path.rglob("*"))
        if p.is_file() and ".cache" not in p.parts
    }


def doctor_lines(rig: Rig, home: Home, pyz: Path, editor: str = "VS Code") -> dict[str, str]:
    """doctor's lines about one editor, by check."""
    res = cli(rig, home, pyz, "doctor", "--json")
    return {f["check"]: f["level"] + " " + f["detail"] for f in json.loads(res.stdout) if f["check"].startswith(editor)}


def test_setup_applies_the_settings_rerun_changes_nothing_doctor_before_and_after(
    rig: Rig, home: Home, pyz: Path
) -> None:
    settings = code_settings(home)
    before = doctor_lines(rig, home, pyz)
    assert before["VS Code connectTimeout"].startswith("warn 30 s in")
    assert before["VS Code serverInstallTimeout"].startswith("warn 30 s (not set: the default)")
    assert before["VS Code remotePlatform"].startswith("warn cloudx-* not in")
    iid = rig.add_instance(tags={"Name": "web"})
    res = cli(rig, home, pyz, "setup", "--instance", iid, "--yes")
    assert res.returncode == 0, res.stderr
    new = settings.read_bytes().decode("utf-8")
    assert new == MINE.replace('"remote.SSH.connectTimeout": 30\r\n', '"remote.SSH.connectTimeout": 90,\r\n').replace(
        '"cloudX-*": "windows" }', '"cloudX-*": "windows", "cloudx-*": "linux" }'
    ).replace("    // the end\r\n", '    // the end\r\n    "remote.SSH.serverInstallTimeout": 120\r\n')
    value = cp.parse_jsonc(new).value  # type: ignore[union-attr]
    assert value["remote.SSH.remotePlatform"] == {"build": "windows", "cloudX-*": "windows", "cloudx-*": "linux"}
    assert value["[python]"] == {"remote.SSH.connectTimeout": 5}
    assert "remote.SSH.configFile" not in value and "remote.SSH.showLoginTerminal" not in value
    assert (settings.parent / "settings.json.bak").read_bytes() == MINE.encode(), "backup of the original"
    assert stat.S_IMODE(settings.stat().st_mode) == 0o644, "the file's mode is kept"
    assert f"VS Code: updated {settings}" in res.stderr
    after = doctor_lines(rig, home, pyz)
    assert after["VS Code connectTimeout"] == "ok 90 s"
    assert after["VS Code serverInstallTimeout"] == "ok 120 s"
    assert after["VS Code remotePlatform"].startswith('warn cloudX-* is "windows"'), "the user's choice, reported"
    files = tree(home)
    res = cli(rig, home, pyz, "setup", "--instance", iid, "--yes")
    assert res.returncode == 0, res.stderr
    assert tree(home) == files, "a re-run changes nothing (no new backup either)"
    assert "already has them" in res.stderr


def test_dry_run_shows_the_diff_and_writes_nothing(rig: Rig, home: Home, pyz: Path) -> None:
    settings = code_settings(home, '{\n    "editor.fontSize": 13\n}\n')
    cursor = code_settings(home, None, app="Cursor")  # installed, no settings.json yet
    files = tree(home)
    iid = rig.add_instance()
    res = cli(rig, home, pyz, "setup", "--instance", iid, "--hostname", "d", "--yes", "--dry-run")
    assert res.returncode == 0, res.stderr
    assert tree(home) == files
    assert f"[dry run] would change {settings}" in res.stderr
    assert '+    "remote.SSH.connectTimeout": 90,' in res.stderr
    assert f"would change {cursor}" in res.stderr
    res = cli(rig, home, pyz, "setup", "--instance", iid, "--hostname", "d", "--yes")
    assert res.returncode == 0, res.stderr
    assert f"Cursor: created {cursor}" in res.stderr and f"VS Code: updated {settings}" in res.stderr
    assert cp.parse_jsonc(cursor.read_text()).value == {  # type: ignore[union-attr]
        "remote.SSH.connectTimeout": 90,
        "remote.SSH.serverInstallTimeout": 120,
        "remote.SSH.remotePlatform": {"cloudX-*": "linux", "cloudx-*": "linux"},
    }


def test_interactive_asks_once_and_no_keeps_the_file(rig: Rig, home: Home, pyz: Path) -> None:
    settings = code_settings(home, "{}")
    cursor = code_settings(home, "{}", app="Cursor")
    iid = rig.add_instance()
    res = cli(rig, home, pyz, "setup", "--instance", iid, "--hostname", "i", stdin="n\n")
    assert res.returncode == 0, res.stderr
    assert res.stderr.count("Remote-SSH settings of VS Code, Cursor? [y/n]") == 1
    assert settings.read_text() == "{}" and cursor.read_text() == "{}"
    res = cli(rig, home, pyz, "setup", "--instance", iid, "--hostname", "i", stdin="y\n")
    assert res.returncode == 0, res.stderr
    for path in (settings, cursor):
        assert cp.parse_jsonc(path.read_text()).value["remote.SSH.connectTimeout"] == 90  # type: ignore[union-attr]


def test_opt_out_and_no_editor(rig: Rig, home: Home, pyz: Path) -> None:
    iid = rig.add_instance()
    res = cli(rig, home, pyz, "setup", "--instance", iid, "--hostname", "o", "--yes")
    assert res.returncode == 0, res.stderr
    assert [line for line in res.stderr.splitlines() if "VS Code" in line or "Remote-SSH" in line] == [
        f"{cp.PROG}: VS Code: no settings directory of VS Code, Code - Insiders, VSCodium, Cursor found;"
        " no editor settings to change"
    ]
    settings = code_settings(home, "{}")
    res = cli(rig, home, pyz, "setup", "--instance", iid, "--hostname", "o", "--yes", "--no-editor-settings")
    assert res.returncode == 0, res.stderr
    assert settings.read_text() == "{}" and "settings.json" not in res.stderr


def test_xdg_config_home_is_used(rig: Rig, home: Home, pyz: Path) -> None:
    xdg = home.path / "xdg"
    settings = xdg / "Code" / "User" / "settings.json"
    settings.parent.mkdir(parents=True)
    settings.write_text("{}\n")
    res = cli(
        rig, home, pyz, "setup", "--instance", rig.add_instance(), "--yes", extra_env={"XDG_CONFIG_HOME": str(xdg)}
    )
    assert res.returncode == 0, res.stderr
    assert cp.parse_jsonc(settings.read_text()).value["remote.SSH.serverInstallTimeout"] == 120  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("text", "doctor"),
    [
        ('{\n  "a": 1\n  "b": 2\n}\n', "settings: warn cannot read"),
        ('{\n  "remote.SSH.connectTimeout": 30,\n  "remote.SSH.connectTimeout": 60\n}\n', "settings: warn cannot read"),
        ('{\n  "remote.SSH.connectTimeout": "30"\n}\n', 'connectTimeout: warn "30" in'),
        ("[]\n", "settings: warn cannot read"),
        (b"{\xff}".decode("latin-1"), "settings: warn cannot read"),
    ],
    ids=["syntax error", "key twice", "timeout a string", "not an object", "not UTF-8"],
)
def test_unreadable_settings_are_left_alone_with_the_lines_to_add(
    rig: Rig, home: Home, pyz: Path, text: str, doctor: str
) -> None:
    settings = code_settings(home, None)
    settings.write_bytes(text.encode("latin-1") if "\xff" in text else text.encode())
    original = settings.read_bytes()
    res = cli(rig, home, pyz, "setup", "--instance", rig.add_instance(), "--hostname", "u", "--yes")
    assert res.returncode == 0, res.stderr
    assert settings.read_bytes() == original and not (settings.parent / "settings.json.bak").exists()
    assert f"VS Code: not changing {settings}: " in res.stderr
    assert '      "remote.SSH.connectTimeout": 90,' in res.stderr
    check, line = doctor.split(": ", 1)
    assert doctor_lines(rig, home, pyz)[f"VS Code {check}"].startswith(line)


def test_symlinked_settings_are_edited_through_the_link(rig: Rig, home: Home, pyz: Path, tmp_path: Path) -> None:
    real = tmp_path / "dotfiles" / "vscode-settings.json"
    real.parent.mkdir()
    real.write_text('{\n  "editor.fontSize": 13\n}\n')
    link = code_settings(home, None)
    link.symlink_to(real)
    res = cli(rig, home, pyz, "setup", "--instance", rig.add_instance(), "--hostname", "l", "--yes")
    assert res.returncode == 0, res.stderr
    assert link.is_symlink() and os.readlink(link) == str(real)
    assert cp.parse_jsonc(real.read_text()).value["remote.SSH.connectTimeout"] == 90  # type: ignore[union-attr]


@pytest.fixture
def immutable_dir(tmp_path: Path) -> Iterator[Path]:
    """A directory nobody (root included) can write: a read-only dotfiles checkout."""
    path = tmp_path / "ro-dotfiles"
    path.mkdir()
    (path / "settings.json").write_text('{\n  "editor.fontSize": 13\n}\n')
    chattr = shutil.which("chattr")
    if not chattr or subprocess.run([chattr, "+i", str(path)], capture_output=True).returncode != 0:
        pytest.skip("chattr +i is not available here")
    try:
        yield path
    finally:
        subprocess.run([chattr, "-i", str(path)], check=True)


def test_symlink_into_a_read_only_place_is_left_alone(rig: Rig, home: Home, pyz: Path, immutable_dir: Path) -> None:
    real = immutable_dir / "settings.json"
    original = real.read_bytes()
    link = code_settings(home, None)
    link.symlink_to(real)
    res = cli(rig, home, pyz, "setup", "--instance", rig.add_instance(), "--hostname", "r", "--yes")
    assert res.returncode == 0, res.stderr
    assert real.read_bytes() == original and link.is_symlink()
    assert f"VS Code: not changing {link}: {immutable_dir} is not writable" in res.stderr
    assert '"remote.SSH.remotePlatform": {"cloudX-*": "linux", "cloudx-*": "linux"}' in res.stderr


def test_doctor_config_file_that_hides_our_hosts(rig: Rig, home: Home, pyz: Path) -> None:
    iid = rig.add_instance()
    assert cli(rig, home, pyz, "setup", "--instance", iid, "--hostname", "c", "--yes").returncode == 0
    other = home.path / ".ssh" / "other_config"
    other.write_text("Host box\n  HostName 192.0.2.1\n")
    code_settings(home, json.dumps({"remote.SSH.configFile": str(other)}))
    lines = doctor_lines(rig, home, pyz)
    assert lines["VS Code configFile"].startswith(f"FAIL remote.SSH.configFile names {other}, without the cloudX-*")
    other.write_text(f"Include {home.ssh_dir / 'config'}\nHost box\n  HostName 192.0.2.1\n")
    assert doctor_lines(rig, home, pyz)["VS Code configFile"].startswith("ok ")
    (home.path / ".config" / "Code" / "User" / "settings.json").write_text(
        json.dumps({"remote.SSH.configFile": "~/.ssh/cloudX/config"})
    )
    assert doctor_lines(rig, home, pyz)["VS Code configFile"].startswith("ok ")

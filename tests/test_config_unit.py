"""Unit tests: SSH config rendering, parsing, merging and the Include line (pure functions)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import cloudx_proxy as cp  # noqa: E402

WHEN = "2026-01-02 03:04:05"
IID = "i-0123456789abcdef0"

HAND_EDITED = (
    "# my own settings\r\n"
    "Host=bastion\r\n"
    "\tHostName 10.0.0.1   # trailing comment\r\n"
    '\tUser "me"\r\n'
    "\r\n"
    'Match host *.corp exec "true"\r\n'
    "    ForwardAgent no\r\n"
    "Host a b c\r\n"
    "  Port 2222"
)


def blocks_for(
    prefix: str = "cloudX", env: str = "dev", host: str = "web", iid: str = IID, proxy: str = "P"
) -> list[tuple[str, str, str]]:
    return [
        ("generic", f"{prefix}-*", cp.render_generic_block(prefix)),
        (
            "environment",
            f"{prefix}-{env}-*",
            cp.render_env_block(prefix, env, cp.render_identity("/k/key", None), proxy),
        ),
        ("host", f"{prefix}-{env}-{host}", cp.render_host_block(prefix, env, host, iid)),
    ]


def test_split_and_join_are_byte_exact() -> None:
    for text in (HAND_EDITED, "", "Host x\n", "\n\n# only comments\n", HAND_EDITED.replace("\r\n", "\n") + "\n"):
        assert cp.join_config(cp.split_config(text)) == text


def test_split_recognises_host_and_match_spellings() -> None:
    blocks = cp.split_config(HAND_EDITED)
    assert [(b.keyword, b.patterns) for b in blocks] == [
        (None, ""),
        ("host", "bastion"),
        ("match", 'host *.corp exec "true"'),
        ("host", "a b c"),
    ]
    assert blocks[1].is_host("BASTION") and not blocks[3].is_host("a")


def test_render_generic_matches_the_reference() -> None:
    assert cp.render_generic_block("cloudX") == (
        "Host cloudX-*\n    User ec2-user\n    TCPKeepAlive yes\n    ControlMaster auto\n"
        "    ControlPath ~/.ssh/control/%r@%h:%p\n    ControlPersist 4h\n"
    )
    windows = cp.render_generic_block("cloudX", windows=True)
    assert "    # ControlMaster auto\n" in windows and "    # ControlPersist 4h\n" in windows


def test_merge_into_empty_file_has_three_tiers_with_banners() -> None:
    text, notes = cp.merge_config("", blocks_for(), {"cloudX-dev-web"}, WHEN)
    assert notes == [
        "added generic block Host cloudX-*",
        "added environment block Host cloudX-dev-*",
        "added host block Host cloudX-dev-web",
    ]
    assert text.count("# Created by cloudX-proxy v") == 3
    assert text.index("# Configuration type: generic") < text.index("Host cloudX-*")
    assert text.index("Host cloudX-*") < text.index("Host cloudX-dev-*") < text.index("Host cloudX-dev-web")
    assert f"    HostName {IID}\n" in text
    assert text.endswith("\n") and not text.endswith("\n\n")


def test_merge_is_idempotent() -> None:
    once, _ = cp.merge_config("", blocks_for(), {"cloudX-dev-web"}, WHEN)
    twice, notes = cp.merge_config(once, blocks_for(), {"cloudX-dev-web"}, "2030-01-01 00:00:00")
    assert twice == once
    assert all(n.startswith("kept") for n in notes)


def test_merge_keeps_foreign_lines_byte_for_byte() -> None:
    merged, _ = cp.merge_config(HAND_EDITED, blocks_for(), {"cloudX-dev-web"}, WHEN)
    assert merged.startswith(HAND_EDITED)
    assert "\r\nHost cloudX-dev-web\r\n" in merged, "new lines follow the file's CRLF"
    assert "\n" not in merged.replace("\r\n", "")


def test_merge_updates_a_host_in_place_and_keeps_other_hosts() -> None:
    first, _ = cp.merge_config("", blocks_for(host="web", iid=IID), {"cloudX-dev-web"}, WHEN)
    second, _ = cp.merge_config(first, blocks_for(host="db", iid="i-11111111"), {"cloudX-dev-db"}, WHEN)
    third, notes = cp.merge_config(second, blocks_for(host="web", iid="i-22222222"), {"cloudX-dev-web"}, WHEN)
    assert "updated host block Host cloudX-dev-web" in notes
    assert third.count("Host cloudX-dev-web\n") == 1 and "i-22222222" in third and IID not in third
    assert third.index("Host cloudX-dev-web") < third.index("Host cloudX-dev-db"), "in place"
    assert third.count("Host cloudX-*\n") == 1 and third.count("Host cloudX-dev-*\n") == 1


def test_merge_keeps_a_differing_environment_unless_told() -> None:
    first, _ = cp.merge_config("", blocks_for(proxy="OLD"), {"cloudX-dev-web"}, WHEN)
    kept, notes = cp.merge_config(first, blocks_for(proxy="NEW"), {"cloudX-dev-web"}, WHEN)
    assert "ProxyCommand OLD" in kept and "kept environment block Host cloudX-dev-*" in notes
    replaced, notes = cp.merge_config(first, blocks_for(proxy="NEW"), {"cloudX-dev-web", "cloudX-dev-*"}, WHEN)
    assert "ProxyCommand NEW" in replaced and "ProxyCommand OLD" not in replaced
    assert replaced.count("Host cloudX-dev-*") == 1


def test_merge_drops_duplicate_host_blocks() -> None:
    dup = "Host cloudX-dev-web\n    HostName i-11111111\n\nHost cloudX-dev-web\n    HostName i-22222222\n"
    merged, _ = cp.merge_config(dup, blocks_for(), {"cloudX-dev-web"}, WHEN)
    assert merged.count("Host cloudX-dev-web") == 1 and IID in merged


def test_insert_include_above_first_host() -> None:
    text = "# top\nForwardAgent no\n\nHost a\n  User x\nHost b\n"
    out = cp.insert_include(text, "/h/.ssh/cloudX/config")
    assert out == "# top\nForwardAgent no\n\nInclude /h/.ssh/cloudX/config\n\nHost a\n  User x\nHost b\n"
    assert cp.insert_include(out, "/h/.ssh/cloudX/config") is None, "once"


@pytest.mark.parametrize(
    "text,expected",
    [
        ("", "Include /c\n"),
        ("ServerAliveInterval 30", "ServerAliveInterval 30\n\nInclude /c\n"),
        ("Match all\n  User y\n", "Include /c\n\nMatch all\n  User y\n"),
        ("host=x\r\n", "Include /c\r\n\r\nhost=x\r\n"),
    ],
)
def test_insert_include_cases(text: str, expected: str) -> None:
    assert cp.insert_include(text, "/c") == expected


def test_insert_include_recognises_existing_forms() -> None:
    assert cp.insert_include('Include "/a b/config"\nHost x\n', "/a b/config") is None
    assert cp.insert_include("include /other /c\n", "/c") is None
    assert cp.insert_include("Include /a b/config\n", "/a b/config") is None
    assert 'Include "/a b/config"' in (cp.insert_include("Host x\n", "/a b/config") or "")


def test_proxy_command_quoting() -> None:
    cmd = cp.render_proxy_command(
        ["/usr/bin/python3", "/opt/my tools/cloudx_proxy.pyz"], "prof", "key", "/home/u/.ssh/100%/cloudX", "prod"
    )
    assert cmd == (
        "/usr/bin/python3 '/opt/my tools/cloudx_proxy.pyz' connect %h %p --profile prof --ssh-key key "
        "--ssh-dir /home/u/.ssh/100%%/cloudX --aws-env prod --user %r"
    )
    assert "--aws-env" not in cp.render_proxy_command(["x"], "p", "k", "/d", None)
    win = cp.render_proxy_command(
        [r"C:\Program Files\Python\python.exe", r"C:\t\x.pyz"], "p", "k", r"C:\Users\a b\.ssh", None, windows=True
    )
    assert win.startswith('"C:\\Program Files\\Python\\python.exe" C:\\t\\x.pyz connect %h %p')


def test_identity_lines() -> None:
    assert cp.render_identity("/k/my key", None) == ['IdentityFile "/k/my key"', "IdentitiesOnly yes"]
    assert cp.render_identity("/k/key", "~/.1password/agent.sock") == [
        "IdentityAgent ~/.1password/agent.sock",
        "IdentityFile /k/key.pub",
        "IdentitiesOnly yes",
    ]


@pytest.mark.parametrize(
    "arn,env",
    [
        ("arn:aws:iam::123456789012:user/cloudX-dev-alice", "dev"),
        ("arn:aws:iam::123456789012:user/cloudx-prod-bob", "prod"),
        ("arn:aws:iam::123456789012:user/teams/CLOUDX-qa-carol", "qa"),
        ("arn:aws:iam::123456789012:user/alice", None),
        ("arn:aws:sts::123456789012:assumed-role/AWSReservedSSO_Dev/alice", None),
    ],
)
def test_env_from_identity(arn: str, env: str | None) -> None:
    assert cp.env_from_identity(arn)[0] == env


def test_names_from_tags() -> None:
    assert cp.names_from_tags({"Name": "web"}) == (None, "web")
    assert cp.names_from_tags({"Name": "cloudX-dev-web | alice"}) == ("dev", "web")
    assert cp.names_from_tags({"Name": "cloudx-dev-web", "cloudX:environment": "prod"}) == ("prod", "web")
    assert cp.names_from_tags({"Environment": "qa"}) == ("qa", None)


@pytest.mark.parametrize("value", ["web", "web-1", "db.internal", "a_b"])
def test_host_part_accepted(value: str) -> None:
    assert cp.validate_host_part("hostname", value) == value


@pytest.mark.parametrize("value", ["", "-web", "a b", "a*", "a?", "a;b", "a/b", "é", "a\nb", "x" * 64])
def test_host_part_rejected(value: str) -> None:
    with pytest.raises(cp.CloudxError) as e:
        cp.validate_host_part("hostname", value)
    assert e.value.exit_code == cp.EXIT_USAGE


def test_vscode_settings_snippet() -> None:
    import json

    snippet = json.loads(cp.render_vscode_settings('/h/.ssh/my "x"/config', "cloudX"))
    assert snippet["remote.SSH.configFile"] == '/h/.ssh/my "x"/config'
    assert snippet["remote.SSH.connectTimeout"] == 90
    assert snippet["remote.SSH.remotePlatform"] == {"cloudX-*": "linux"}

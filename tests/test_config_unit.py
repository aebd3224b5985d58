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
    # Unquoted, ssh reads two files ('/a' and '~/.ssh/b/config'): not ours; the user's line stays.
    assert cp.insert_include("Include /a b/config\n", "/a b/config") == 'Include /a b/config\n\nInclude "/a b/config"\n'
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

    snippet = json.loads("{" + "".join(cp.render_editor_snippet(cp.editor_patterns("cloudX"))) + "}")
    assert "remote.SSH.configFile" not in snippet, "our Include already shows the hosts; configFile hides others"
    assert snippet["remote.SSH.connectTimeout"] == 90
    assert snippet["remote.SSH.remotePlatform"] == {"cloudX-*": "linux", "cloudx-*": "linux"}


# What PyPI cloudx-proxy 0.17.6's setup wrote for two hosts (copied from its output; the e2e tests in
# test_adopt_e2e.py run its own code).
RULE = "# " + "=" * 78 + "\n"
ORIGINAL_017 = (
    "# SSH Configuration - Managed by cloudx-proxy v0.17.6\n\n"
    f"{RULE}#  GLOBAL\n{RULE}\n"
    "Host cloudx-* cloudX-*\n    User ec2-user\n    TCPKeepAlive yes\n    IdentitiesOnly yes\n"
    "    ControlMaster auto\n    ControlPath ~/.ssh/control/%r@%h:%p\n    ControlPersist 4h\n\n"
    f"{RULE}#  dev\n{RULE}\n"
    "Host cloudx-dev-* cloudX-dev-*\n    IdentityFile /h/.ssh/cloudX/cloudX\n"
    "    ProxyCommand uvx cloudx-proxy connect %h %p\n\n"
    "Host cloudx-dev-web\n    HostName i-0123456789abcdef0\n    LocalForward 8080 localhost:80\n\n"
    f"{RULE}#  NOT MANAGED BY cloudx-proxy - PRESERVED AS-IS\n{RULE}\n"
    "Host mybox\n    HostName 192.0.2.1\n"
)
PROGRAM = ["/usr/bin/python3", "/opt/cloudx_proxy.pyz"]


def test_the_originals_blocks_and_banners_are_recognised() -> None:
    blocks = cp.split_config(ORIGINAL_017)
    assert cp.join_config(blocks) == ORIGINAL_017
    assert [b.words() for b in blocks[1:]] == [
        ["cloudx-*", "cloudX-*"],
        ["cloudx-dev-*", "cloudX-dev-*"],
        ["cloudx-dev-web"],
        ["mybox"],
    ]
    assert blocks[1].is_host("cloudX-*") and blocks[2].is_host("CLOUDX-dev-*") and not blocks[4].is_host("cloudx-*")
    assert [b.original_banner() for b in blocks[1:]] == [True, True, False, True]
    assert blocks[0].lines == ["# SSH Configuration - Managed by cloudx-proxy v0.17.6\n", "\n"]
    assert not cp.ConfigBlock("host", "a b", ["Host a b\n"]).is_host("a")


@pytest.mark.parametrize(
    "command,adopted",
    [
        ("uvx cloudx-proxy connect %h %p", "connect %h %p --user %r"),
        ("uvx cloudX-proxy connect %h %p --profile p --ssh-key k", "connect %h %p --profile p --ssh-key k --user %r"),
        ("cloudx-proxy connect %h %p --aws-env 'a b'", "connect %h %p --aws-env 'a b' --user %r"),
        (
            "cloudX-proxy connect %h %p --ssh-config ~/.ssh/x/config",
            "connect %h %p --ssh-config ~/.ssh/x/config --user %r",
        ),
        ("/usr/local/bin/uvx cloudx-proxy@0.17.6 connect %h %p --user me", "connect %h %p --user me"),
        ("/usr/bin/python3 /x.pyz connect %h %p", None),  # ours already
        ("/home/u/bin/cloudx-proxy connect %h %p", None),  # a path: may be ours (pip install of this project)
        ("nc %h %p", None),
        ("uvx cloudx-proxy", None),
    ],
)
def test_adopt_proxy_command(command: str, adopted: str | None) -> None:
    expected = None if adopted is None else "/usr/bin/python3 /opt/cloudx_proxy.pyz " + adopted
    assert cp.adopt_proxy_command(command, PROGRAM) == expected


def test_adopt_config_touches_only_the_proxy_commands_and_banners() -> None:
    text, notes = cp.adopt_config(ORIGINAL_017, PROGRAM, WHEN)
    assert notes == [
        "Host cloudx-dev-* cloudX-dev-*: the ProxyCommand ran 'uvx cloudx-proxy', "
        "now /usr/bin/python3 /opt/cloudx_proxy.pyz (same arguments, plus --user %r)"
    ]
    assert text.startswith(f"# Created by cloudX-proxy v{cp.__version__} on {WHEN}\n# Configuration type: generic\n")
    assert "Managed by" not in text and "#  GLOBAL" not in text and "#  dev\n" not in text
    assert "    ProxyCommand /usr/bin/python3 /opt/cloudx_proxy.pyz connect %h %p --user %r\n" in text
    assert (
        f"{RULE}#  NOT MANAGED BY cloudx-proxy - PRESERVED AS-IS\n{RULE}\nHost mybox\n    HostName 192.0.2.1\n" in text
    )
    assert "Host cloudx-dev-web\n    HostName i-0123456789abcdef0\n    LocalForward 8080 localhost:80\n" in text
    assert cp.adopt_config(text, PROGRAM, WHEN) == (text, []), "once"


def test_merge_adopts_in_place_and_keeps_the_users_lines() -> None:
    text, _ = cp.adopt_config(ORIGINAL_017, PROGRAM, WHEN)
    merged, notes = cp.merge_config(
        text, blocks_for(prefix="cloudx", iid="i-0123456789abcdef1"), {"cloudx-dev-web"}, "2027-01-01 00:00:00"
    )
    assert notes == [
        "kept generic block Host cloudx-*",
        "kept environment block Host cloudx-dev-*",
        "updated host block Host cloudx-dev-web",
    ]
    assert "Host cloudx-dev-web\n    HostName i-0123456789abcdef1\n    LocalForward 8080 localhost:80\n" in merged
    assert merged.count("Host ") == 4, "nothing added"
    # A host spelled cloudX under the adopted blocks: no pattern twice, the new host after its environment.
    again, notes = cp.merge_config(merged, blocks_for(prefix="cloudX", host="db"), {"cloudX-dev-db"}, WHEN)
    assert "added host block Host cloudX-dev-db" in notes and again.count("cloudX-*") == 1
    assert again.index("Host cloudx-dev-web") < again.index("Host cloudX-dev-db") < again.index("NOT MANAGED")


def test_merge_adds_a_missing_spelling_to_the_wildcard_lines() -> None:
    text = "Host cloudX-*\n    User ec2-user\n\nHost cloudX-dev-*  # mine\n    ProxyCommand P\n"
    blocks = [
        ("generic", "cloudx-*", "Host cloudx-* cloudX-*\n    User ec2-user\n"),
        ("environment", "cloudx-dev-*", "Host cloudx-dev-* cloudX-dev-*\n    ProxyCommand P\n"),
    ]
    merged, notes = cp.merge_config(text, blocks, set(), WHEN)
    assert "Host cloudX-* cloudx-*\n" in merged and "Host cloudX-dev-* cloudx-dev-*  # mine\n" in merged
    assert notes == [
        "added cloudx-* to the Host line of the generic block",
        "added cloudx-dev-* to the Host line of the environment block",
    ]
    assert cp.merge_config(merged, blocks, set(), WHEN)[0] == merged


def test_owned_lines_change_in_place() -> None:
    block = cp.split_config("Host x\n  IdentityFile /old  # my key\n  LocalForward 1 h:1\n  ProxyCommand old\n")[1]
    rendered = ["IdentityFile /new", "IdentitiesOnly yes", "ProxyCommand new"]
    assert cp.set_owned_lines(block, "environment", rendered, "\n")
    assert "".join(block.lines) == (
        "Host x\n  IdentityFile /new  # my key\n  LocalForward 1 h:1\n  ProxyCommand new\n    IdentitiesOnly yes\n"
    )
    assert not cp.set_owned_lines(block, "environment", rendered, "\n"), "nothing left to change"


def test_new_block_goes_below_the_comment_that_introduces_the_next() -> None:
    text = "Host cloudX-dev-*\n    ProxyCommand P\n\n# my server\nHost mybox\n    Port 2\n"
    blocks = [
        ("environment", "cloudX-dev-*", "Host cloudX-dev-*\n    ProxyCommand P\n"),
        ("host", "cloudX-dev-web", "Host cloudX-dev-web\n    HostName i-1\n"),
    ]
    merged, _ = cp.merge_config(text, blocks, set(), WHEN)
    assert merged.endswith("Host cloudX-dev-web\n    HostName i-1\n\n# my server\nHost mybox\n    Port 2\n")
    assert merged.startswith("Host cloudX-dev-*\n    ProxyCommand P\n\n# Created by")


def test_names_and_prefix_already_in_the_config() -> None:
    assert cp.config_prefix(ORIGINAL_017) == "cloudx"
    assert cp.config_prefix("Host cloudX-*\n") == "cloudX"
    assert cp.config_prefix("Host cloudx-dev-a\nHost cloudx-dev-b\n") == "cloudx"
    assert cp.config_prefix("Host cloudx-dev-a\nHost cloudX-dev-b\n") is None
    assert cp.config_prefix("Host other\n") is None
    assert cp.existing_names(ORIGINAL_017, "cloudX", "Dev", "WEB") == ("dev", "cloudx-dev-web")
    assert cp.existing_names(ORIGINAL_017, "cloudX", "prod", "api") == ("prod", "cloudX-prod-api")


@pytest.mark.parametrize(
    "a,b,overlap",
    [
        ("*", "anything", True),
        ("cloudx-*", "cloudX-dev-web", True),  # case ignored: errs on the safe side
        ("cloudx-dev-*", "cloudx-prod-*", False),
        ("a*c", "ab*", True),
        ("a?c", "abd", False),
        ("*a*", "*b*", True),
        ("*.corp", "*.com", False),
        ("web", "web", True),
        ("web", "db", False),
    ],
)
def test_glob_overlap(a: str, b: str, overlap: bool) -> None:
    assert cp.glob_overlap(a, b) is overlap and cp.glob_overlap(b, a) is overlap


def test_cleanup_keeps_a_users_earlier_block_first_and_converts_the_prefix() -> None:
    text = "Host *\n    User me\n\nHost cloudx-dev-web\n    HostName i-1\n\nHost cloudx-*\n    User ec2-user\n"
    cleaned, _ = cp.canonical_config(text, WHEN)
    assert cleaned.index("Host *\n") < cleaned.index("Host cloudx-* cloudX-*\n"), "both set User: the order stays"
    converted, _ = cp.canonical_config(ORIGINAL_017, WHEN, "cloudX")
    assert "Host cloudX-* cloudx-*\n" in converted and "Host cloudX-dev-* cloudx-dev-*\n" in converted
    assert "uvx cloudX-proxy connect" in converted and "Host cloudx-dev-web\n" in converted
    assert "NOT MANAGED" not in converted and "Managed by" not in converted


def test_include_forms_ssh_reads() -> None:
    """A relative Include in ~/.ssh/config is read relative to ~/.ssh (ssh takes it from the passwd
    entry, so the e2e rig's HOME cannot show it with ssh -G), globs as glob(3) expands them."""
    ssh_dir, ours = "/h/.ssh", "/h/.ssh/cloudX/config"
    for text in ("Include cloudX/config\n", "Include cloudX/*\n", 'include "cloud?/config"\n', "Include /h/.ssh/c*/c*"):
        assert cp.include_position(text, ours, ssh_dir) == "before", text
    assert cp.include_position("Include cloudX/.*\n", ours, ssh_dir) == "missing"
    assert cp.include_position("Include /h/.ssh/cloudX/.c*\n", "/h/.ssh/cloudX/.config", ssh_dir) == "before"
    assert cp.include_position("Include cloudX/*/config\n", ours, ssh_dir) == "missing"
    assert cp.include_position("Host * !x\n Include cloudX/config\n", ours, ssh_dir) == "inside"
    assert cp.include_position('"Match" all\n Include cloudX/config\n', ours, ssh_dir) == "before"
    assert cp.insert_include("Include cloudX/config\n", ours, ssh_dir) is None, "no second Include"


@pytest.mark.parametrize(
    "line,expected",
    [
        ("identityfile /Users/First Last/k\n", 'identityfile "/Users/First Last/k"\n'),
        ("  IdentityAgent=/a b/s  # mine\r\n", '  IdentityAgent="/a b/s"  # mine\r\n'),
        ('\tControlPath "/a b/%r"\n', '\tControlPath "/a b/%r"\n'),
        ("IdentityFile '/a b/k'\n", "IdentityFile '/a b/k'\n"),
        ("IdentityFile /a\\ b/k\n", "IdentityFile /a\\ b/k\n"),
        ("UserKnownHostsFile ~/.ssh/a /etc/b\n", "UserKnownHostsFile ~/.ssh/a /etc/b\n"),
        ("UserKnownHostsFile /Users/A B/kh\n", 'UserKnownHostsFile "/Users/A B/kh"\n'),
        ("ProxyCommand a b c\n", "ProxyCommand a b c\n"),
    ],
)
def test_requote_path_line(line: str, expected: str) -> None:
    assert cp.requote_path_line(line) == expected
    assert cp.requote_path_line(expected) == expected, "idempotent"


def test_tokenizer_reads_keywords_as_ssh_does() -> None:
    assert cp.section_match('"Host" x y\n') == ("host", "x y")
    assert cp.section_match('"Host"=x\n') == ("host", "=x"), "after a quoted keyword '=' is part of the value"
    assert cp.section_match("\ufeff  Host x\n") == ("host", "x")
    assert cp.section_match("Hostname x\n") is None and cp.section_match("Host#x\n") is None
    assert cp.parse_directive('"User" me # c\n') == ("user", "me", "c")
    blocks = cp.split_config('Host a\n  User x\n"Host" b\n  User y\n')
    assert [b.words() for b in blocks] == [[], ["a"], ["b"]]
    parsed = cp.parse_cloudx_config("\ufeff  Host cloudX-dev-web\n    HostName i-1\n")
    assert parsed["hosts"][0]["host"] == "cloudX-dev-web"


def test_prefix_spellings_as_the_original() -> None:
    assert cp.prefix_spellings("cloudX") == ["cloudX", "cloudx"]
    assert cp.prefix_spellings("cloudx") == ["cloudx", "cloudX"]
    assert cp.prefix_spellings("MyCo") == ["MyCo", "myco"] and cp.prefix_spellings("co") == ["co"]


def test_migrate_reads_a_quoted_keyword() -> None:
    text = '"ProxyCommand" uvx cloudx-proxy connect %h %p\n\t"IdentityFile" /h/.ssh/vscode/vscode\n'
    out, notes = cp.migrate_config_text(text, "/h/.ssh/vscode", "/h/.ssh/cloudX", "/h", {"--profile": "vscode"})
    assert (
        out
        == '"ProxyCommand" uvx cloudx-proxy connect %h %p --profile vscode\n\t"IdentityFile" /h/.ssh/cloudX/vscode\n'
    )
    assert notes == []


def test_shadowing_catch_all_is_named() -> None:
    text = "Host * !x\n    User me\n\nMatch all\n    Port 2\n\nHost cloudX-*\n    User ec2-user\n    Port 22\n"
    assert cp.shadowing_catch_alls(text, ["cloudX-*"]) == [
        "'Host * !x' (sets user) is above Host cloudX-*",
        "'Match all' (sets port) is above Host cloudX-*",
    ]
    assert cp.shadowing_catch_alls("Host cloudX-*\n    User a\nHost *\n    User b\n", ["cloudX-*"]) == []

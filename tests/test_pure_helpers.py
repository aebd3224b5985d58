"""Properties of the pure helpers with an oracle of their own (issue 25).

Each property draws inputs that are mostly valid (documented formats, well-formed AWS answers) next to
near misses, decides independently of cloudx_proxy whether the helper must accept or refuse, and checks
the value it returns. Each runs inside a test that counts the outcomes, so a helper that always refuses
(or always raises) fails the count even where every single example would hold.
"""

from __future__ import annotations

import math
import re
import sys
from collections import Counter
from pathlib import Path
from typing import Any, Callable

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import cloudx_proxy as cp  # noqa: E402

IID = "i-0123456789abcdef0"
OTHER = "i-0fedcba9876543210"
RUNS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def outcomes(test: Callable[..., str]) -> Counter[str]:
    """Run a @given function (it returns an outcome name per example) and count the outcomes."""
    seen: Counter[str] = Counter()

    def record(*args: Any, **kwargs: Any) -> None:
        seen[test(*args, **kwargs)] += 1

    given_args = test.hypothesis_strategies  # type: ignore[attr-defined]
    RUNS(given(**given_args)(record))()
    return seen


def with_strategies(**strategies: st.SearchStrategy[Any]) -> Callable[[Callable[..., str]], Callable[..., str]]:
    def wrap(test: Callable[..., str]) -> Callable[..., str]:
        test.hypothesis_strategies = strategies  # type: ignore[attr-defined]
        return test

    return wrap


def refused(call: Callable[[], Any]) -> cp.CloudxError | None:
    try:
        call()
    except cp.CloudxError as e:
        return e
    return None


# --- validators: documented formats, near misses -----------------------------------------------
HEX = "0123456789abcdefABCDEF"


def make_id(kind: int, digits: str) -> str:
    """0-5: 'i-' and 8 or 17 hex digits (any case); 6, 7: a digit too few or too many; 8, 9: a wrong start."""
    if kind < 6:
        return "i-" + digits[: (8, 17)[kind % 2]]
    if kind < 8:
        return "i-" + digits[: (7, 9, 16, 18)[kind % 2 + 2 * (len(digits) % 2)]]
    return ("I_", " i-", "i-g", "")[len(digits) % 4] + digits[:8]


ids = st.builds(make_id, st.integers(0, 9), st.text(st.sampled_from(HEX), min_size=18, max_size=24))


@with_strategies(value=ids)
def check_instance_id(value: str) -> str:
    ok = re.fullmatch(r"i-([0-9a-f]{8}|[0-9a-f]{17})", value.lower()) is not None  # EC2's documented form
    error = refused(lambda: cp.validate_instance_id(value))
    assert (error is None) == ok, (value, error)
    assert cp.is_instance_id(value) == ok
    if error is not None:
        assert error.exit_code == cp.EXIT_USAGE and "8 or 17 hex digits" in error.message
        return "refused"
    assert cp.validate_instance_id(value) == value.lower()
    return "accepted"


def test_instance_ids() -> None:
    seen = outcomes(check_instance_id)
    assert seen["accepted"] > seen["refused"] / 2 > 0, seen  # about 3 in 5 accepted


REGIONS = ["eu-west-1", "us-east-1", "ap-southeast-2", "us-gov-west-1", "eu-central-2", "il-central-1"]
NEAR_REGIONS = ["eu-west", "EU-west-1", "eu-west-123", "eu--west-1", "euwest-1", "e-west-1", "eu-west-1 ", ""]


@with_strategies(value=st.one_of(st.sampled_from(REGIONS), st.sampled_from(REGIONS), st.sampled_from(NEAR_REGIONS)))
def check_region(value: str) -> str:
    ok = value in REGIONS
    error = refused(lambda: cp.validate_region(value))
    assert (error is None) == ok, (value, error)
    if error:
        assert error.exit_code == cp.EXIT_USAGE and "eu-west-1" in error.message
        return "refused"
    assert cp.validate_region(value) == value
    return "accepted"


def test_regions() -> None:
    seen = outcomes(check_region)
    assert seen["accepted"] > seen["refused"] > 0, seen


numbers = st.one_of(st.integers(-10, 4000), st.floats(-10, 4000, allow_nan=False), st.sampled_from([0.999, 3600.001]))
timeouts = st.one_of(numbers, numbers.map(str), st.sampled_from(["nan", "inf", "-inf", "", "ten", None]))


@with_strategies(value=timeouts)
def check_timeout(value: Any) -> str:
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = math.nan
    ok = math.isfinite(number) and 1 <= number <= 3600
    error = refused(lambda: cp.validate_timeout(value))
    assert (error is None) == ok, (value, error)
    if error:
        assert error.exit_code == cp.EXIT_USAGE
        return "refused"
    assert cp.validate_timeout(value) == number
    return "accepted"


def test_timeouts() -> None:
    seen = outcomes(check_timeout)
    assert seen["accepted"] > seen["refused"] > 0, seen


ports = st.one_of(
    st.integers(-5, 70000), st.integers(-5, 70000).map(str), st.sampled_from(["022", "+22", " 22", "2.2"])
)


@with_strategies(value=ports)
def check_port(value: Any) -> str:
    text = str(value)
    ok = text.isascii() and text.isdigit() and len(text) <= 5 and 1 <= int(text) <= 65535
    error = refused(lambda: cp.validate_port(value))
    assert (error is None) == ok, (value, error)
    if error:
        assert error.exit_code == cp.EXIT_USAGE
        return "refused"
    assert cp.validate_port(value) == int(text)
    return "accepted"


def test_ports() -> None:
    seen = outcomes(check_port)
    assert seen["accepted"] > seen["refused"] > 0, seen


# --- AWS answers: well-formed ones, with a model of what they mean -----------------------------
STATES = ["pending", "running", "shutting-down", "terminated", "stopping", "stopped"]
some_id = st.sampled_from([IID, OTHER, "i-12345678"])
instances = st.lists(st.tuples(some_id, st.sampled_from(STATES)), max_size=3)


def describe_answer(reservations: list[list[tuple[str, str]]]) -> dict[str, Any]:
    return {
        "Reservations": [
            {"Instances": [{"InstanceId": i, "State": {"Code": 16, "Name": s}, "Tags": []} for i, s in insts]}
            for insts in reservations
        ]
    }


@with_strategies(reservations=st.lists(instances, max_size=3))
def check_instance_state(reservations: list[list[tuple[str, str]]]) -> str:
    flat = [pair for insts in reservations for pair in insts]
    want = next((s for i, s in flat if i == IID), None)
    assert cp.parse_instance_state(describe_answer(reservations), IID) == want
    assert [inst["InstanceId"] for inst in cp.parse_instances(describe_answer(reservations))] == [i for i, _ in flat]
    return "found" if want else "absent"


def test_instance_state_is_the_first_match() -> None:
    seen = outcomes(check_instance_state)
    assert seen["found"] > 0 and seen["absent"] > 0, seen


@with_strategies(entries=st.lists(st.tuples(some_id, st.sampled_from(["Online", "ConnectionLost", "Inactive"]))))
def check_ping_status(entries: list[tuple[str, str]]) -> str:
    want = next((s for i, s in entries if i == IID), "NotRegistered")
    data = {"InstanceInformationList": [{"InstanceId": i, "PingStatus": s} for i, s in entries]}
    assert cp.parse_ping_status(data, IID) == want
    return want


def test_ping_status_is_the_first_match() -> None:
    seen = outcomes(check_ping_status)
    assert seen["Online"] > 0 and seen["NotRegistered"] > 0, seen


@with_strategies(states=st.lists(st.sampled_from(STATES), max_size=2))
def check_previous_state(states: list[str]) -> str:
    data = {"StartingInstances": [{"InstanceId": IID, "PreviousState": {"Code": 80, "Name": s}} for s in states]}
    assert cp.parse_previous_state(data) == (states[0] if states else None)
    return "state" if states else "none"


def test_previous_state_is_the_first_entry() -> None:
    seen = outcomes(check_previous_state)
    assert seen["state"] > 0 and seen["none"] > 0, seen


tag_keys = st.sampled_from(["Name", "Environment", "cloudX:environment", "owner", "a b"])
tag_values = st.text(st.sampled_from("abcXYZ-_. 09é"), max_size=12)


@with_strategies(pairs=st.lists(st.tuples(tag_keys, tag_values), max_size=5))
def check_tags(pairs: list[tuple[str, str]]) -> str:
    inst = {"InstanceId": IID, "Tags": [{"Key": k, "Value": v} for k, v in pairs]}
    assert cp.parse_tags(inst) == dict(pairs)
    return "tags" if pairs else "none"


def test_tags_are_read_as_given() -> None:
    seen = outcomes(check_tags)
    assert seen["tags"] > 0 and seen["none"] > 0, seen


ARN_USERS = st.text(st.sampled_from("abcdXYZ-_.@+=,09"), min_size=1, max_size=20)


@with_strategies(kind=st.sampled_from(["user", "assumed-role/Role", "root"]), user=ARN_USERS)
def check_identity(kind: str, user: str) -> str:
    arn = f"arn:aws:iam::123456789012:{kind}/{user}" if kind != "root" else "arn:aws:iam::123456789012:root"
    assert cp.parse_identity({"Arn": arn, "Account": "123456789012", "UserId": "AIDA"}) == arn
    assert cp.parse_identity(None) == "" and cp.parse_identity({}) == ""
    return kind


def test_identity_is_the_arn() -> None:
    seen = outcomes(check_identity)
    assert len(seen) == 3, seen


# --- setup's names and config readers: cases the mutation run found untested -------------------
def test_tag_env_conflict_names_both_and_the_one_used() -> None:
    tags = {"Name": "cloudX-dev-web | team", "Environment": "prod"}
    assert cp.tag_env_conflict(tags, "prod") == (
        "the Name tag 'cloudX-dev-web | team' implies environment 'dev' but the Environment tag says 'prod': "
        "using 'prod'"
    )
    assert "cloudX:environment tag says 'qa'" in (cp.tag_env_conflict({**tags, "cloudX:environment": "qa"}, "qa") or "")
    assert cp.tag_env_conflict({"Name": "cloudX-Dev-web", "Environment": "dev"}, "dev") is None, "case ignored"
    assert cp.tag_env_conflict({"Name": "web", "Environment": "dev"}, "dev") is None, "no legacy Name"
    assert cp.tag_env_conflict({"Name": "cloudx-dev-web"}, "dev") is None, "no environment tag"
    assert cp.tag_env_conflict({"Name": "cloudx-dev-web", "Environment": ""}, "dev") is None, "an empty tag is none"


def test_parse_connect_options_reads_only_connects_flags() -> None:
    proxy = "uvx cloudx-proxy --profile before connect %h %p --profile p --ssh-key k --ssh-dir '/a b' "
    proxy += "--aws-env e --region r --user %r --ssh-config /c/config --timeout 9"
    assert cp.parse_connect_options(proxy) == {
        "profile": "p", "ssh-key": "k", "ssh-dir": "/a b", "aws-env": "e", "region": "r", "user": "%r",
        "ssh-config": "/c/config",
    }  # fmt: skip
    assert cp.parse_connect_options("nc --profile x %h %p") == {}, "no connect: not ours"
    assert cp.parse_connect_options("x connect %h %p --profile") == {}, "a flag without its value"
    assert cp.parse_connect_options("x connect %h --ssh-dir /a%%b") == {"ssh-dir": "/a%b"}, "%% is ssh's %"
    assert cp.parse_connect_options("x connect %h --ssh-dir 'it''s") == {"ssh-dir": "'it''s"}, "unbalanced quote"


def test_ssh_words_follow_argv_split() -> None:
    assert cp.ssh_words(r"a\ b c") == ["a b", "c"], "backslash-space outside quotes joins"
    assert cp.ssh_words(r'"g\ h"') == ["g\\ h"], "inside quotes it stays"
    assert cp.ssh_words(r"\\f \"x \'y") == ["\\f", '"x', "'y"]
    assert cp.ssh_words(r'"i\"j" ' + "'k l'") == ['i"j', "k l"]
    assert cp.ssh_words("  a\t b  ") == ["a", "b"] and cp.ssh_words('""') == [""] and cp.ssh_words("") == []
    assert cp.ssh_words("a'b c'd") == ["ab cd"]


def test_config_prefix_is_the_generic_blocks_first_spelling() -> None:
    assert cp.config_prefix("Host cloudX-* cloudx-*\n") == "cloudX"
    assert cp.config_prefix("Host cloudx-* cloudX-*\n") == "cloudx"
    assert cp.config_prefix("Host cloudx-dev-a\nHost cloudx-dev-b\n") == "cloudx"
    assert cp.config_prefix("Host cloudX-dev-a cloudX-dev-b\nHost x\n") == "cloudX"
    assert cp.config_prefix("Host cloudx-dev-*\nHost cloudx-*\n") == "cloudx"


def test_a_one_line_banner_takes_only_itself() -> None:
    text = "Host a\n    User x\n# Configuration type: host\nHost b\n    HostName i-1\n"
    assert [b.lines for b in cp.split_config(text)] == [
        [],
        ["Host a\n", "    User x\n"],
        ["# Configuration type: host\n", "Host b\n", "    HostName i-1\n"],
    ]


ORIGINAL_HEADER = "# SSH Configuration - Managed by cloudx-proxy v0.17.6\n"
ORIGINAL_RULE = "# " + "=" * 78 + "\n"


def original_generic(header_gap: str) -> str:
    return f"{ORIGINAL_HEADER}{header_gap}{ORIGINAL_RULE}#  GLOBAL\n{ORIGINAL_RULE}\nHost cloudx-* cloudX-*\n    User ec2-user\n"


def test_adoption_drops_the_originals_header_and_the_blank_line_under_it() -> None:
    blocks = [("generic", "cloudX-*", cp.render_generic_block("cloudX"))]
    for gap in ("\n", ""):
        merged, notes = cp.merge_config(original_generic(gap), blocks, set(), "2026-01-02 03:04:05")
        assert any(n.startswith("adopted generic block") for n in notes), notes
        assert merged.startswith("# Created by cloudX-proxy"), repr(merged)


def test_a_later_copy_of_a_host_block_with_lines_of_the_users_is_kept() -> None:
    host = cp.render_host_block("cloudX", "dev", "web", "i-0123456789abcdef0")
    text = "Host cloudX-dev-web\n    HostName i-1\n\nHost cloudX-dev-web\n    User me\n\nHost cloudX-dev-web\n    HostName i-2\n"
    merged, _ = cp.merge_config(text, [("host", "cloudX-dev-web", host)], {"cloudX-dev-web"}, "2026-01-02 03:04:05")
    assert "    User me\n" in merged, "the user's copy stays"
    assert "i-2" not in merged and "i-1" not in merged, "copies of only setup's lines go"


def test_shell_words_of_an_unbalanced_quote_are_the_blank_separated_words() -> None:
    program = ["/usr/bin/python3", "/opt/cloudx_proxy.pyz"]
    adopted = cp.adopt_proxy_command("uvx cloudx-proxy connect %h %p --aws-env 'it", program)
    assert adopted == "/usr/bin/python3 /opt/cloudx_proxy.pyz connect %h %p --aws-env 'it --user %r"
    words, settings = cp.proxy_settings("/p/x 'a connect %h %p --profile p --ssh-dir /d", "/home/u")
    assert words == ["/p/x", "'a"] and settings == ("p", "cloudX", "/d", "")


def test_a_generic_block_names_a_custom_prefix() -> None:
    text = (
        "# Configuration type: generic\nHost myco-*\n    User ec2-user\n\n"
        "Host myco-dev-*\n    ProxyCommand x connect %h %p --profile p\n\nHost myco-dev-web\n    HostName i-1\n"
    )
    parsed = cp.parse_cloudx_config(text)
    assert parsed["generic"] == ["myco-*"] and list(parsed["environments"]) == ["dev"]
    assert parsed["environments"]["dev"]["options"] == {"profile": "p"}
    assert [(h["host"], h["name"], h["environment"]) for h in parsed["hosts"]] == [("myco-dev-web", "web", "dev")]


def test_identity_answers_that_are_not_an_arn_are_refused() -> None:
    for arn in (5, None, ["arn"], "arn:aws:iam::1:user/a\nb", "arn:aws:iam::1:user/\x1b[31m", "a" * 2049):
        error = refused(lambda arn=arn: cp.parse_identity({"Arn": arn}))
        assert error is not None and "invalid caller ARN" in error.message, arn
    assert cp.parse_identity({"Arn": "a" * 2048}) == "a" * 2048


def test_cache_dir_on_windows_is_under_localappdata(monkeypatch: Any) -> None:
    import os
    import types

    # Only the module's view of sys says Windows (pytest itself must not take its Windows paths).
    monkeypatch.setattr(cp, "sys", types.SimpleNamespace(platform="win32"))
    assert cp.cache_dir({"LOCALAPPDATA": "/L", "XDG_CACHE_HOME": "/x"}, "/h") == os.path.join("/L", "cloudx-proxy")
    assert cp.cache_dir({"XDG_CACHE_HOME": "/x"}, "/h") == os.path.join("/x", "cloudx-proxy"), "no LOCALAPPDATA"


def test_user_known_hosts_file_with_several_files_is_not_quoted() -> None:
    several = ("    UserKnownHostsFile /a/known ~/.ssh/k2 %d/k3 $HOME/k4\n", "UserKnownHostsFile=known /b\n")
    for line in several:  # the first file may be relative; only the later ones decide
        assert cp.requote_path_line(line) == line
    assert cp.requote_path_line("    UserKnownHostsFile /Users/First Last/known\n") == (
        '    UserKnownHostsFile "/Users/First Last/known"\n'
    ), "a later word that cannot be a file: one path with a blank"


GENERIC = [("generic", "cloudX-*", cp.render_generic_block("cloudX"))]
GENERIC_TEXT = cp.render_banner("generic", "W") + cp.render_generic_block("cloudX")


def test_a_block_appended_after_a_blank_line_gets_no_second_one() -> None:
    for text in ("Host a\n    User b\n\n", "Host a\n    User b\n", "Host a\n    User b"):
        assert cp.merge_config(text, GENERIC, set(), "W")[0] == "Host a\n    User b\n\n" + GENERIC_TEXT, repr(text)


def test_the_originals_header_stays_when_no_block_of_the_original_is_adopted() -> None:
    text = "# SSH Configuration - Managed by cloudx-proxy v0.17.6\n\nHost mybox\n    User me\n"
    assert cp.merge_config(text, GENERIC, set(), "W")[0] == text + "\n" + GENERIC_TEXT


def test_an_adopted_proxy_command_gets_our_banner_above_its_block() -> None:
    program = ["/usr/bin/python3", "/x.pyz"]
    text, notes = cp.adopt_config("Host cloudx-dev-*\n    ProxyCommand uvx cloudx-proxy connect %h %p\n", program, "W")
    assert text == (
        "# Created by cloudX-proxy v0.1.0 on W\n# Configuration type: environment\n"
        "Host cloudx-dev-*\n    ProxyCommand /usr/bin/python3 /x.pyz connect %h %p --user %r\n"
    ).replace("v0.1.0", f"v{cp.__version__}")
    assert len(notes) == 1
    mine = "Host cloudx-dev-*\n    ProxyCommand nc %h %p\n"
    assert cp.adopt_config(mine, program, "W") == (mine, []), "not the original's: left alone"


def test_env_settings_unquote_paths_but_not_the_proxy_command() -> None:
    lines = ["Host cloudX-dev-*\n", '    IdentityFile "/a b/k"\n', '    IdentityAgent "/s o/ck"\n']
    lines.append('    ProxyCommand "/p q/x" connect %h %p --profile p\n')
    identity, agent, proxy = cp.env_settings(lines, "/home/u")
    assert identity == ["/a b/k"] and agent == ["/s o/ck"]
    assert proxy == (["/p q/x"], ("p", "cloudX", "/home/u/.ssh/cloudX", ""))
    assert cp.env_settings(['    ProxyCommand "x connect %h %p --profile p"\n'], "/h")[2] == (
        ["x connect %h %p --profile p"],
        ("cloudX", "cloudX", "/h/.ssh/cloudX", ""),
    ), "the shell reads a quoted ProxyCommand as one word: no connect, no options"


def test_an_environment_lists_its_own_spellings_only() -> None:
    parsed = cp.parse_cloudx_config("Host cloudx-dev-* cloudX-dev-* mine-*\n    ProxyCommand x connect %h %p\n")
    assert parsed["environments"]["dev"]["patterns"] == ["cloudx-dev-*", "cloudX-dev-*"]


def test_config_values_are_quoted_as_ssh_reads_them() -> None:
    assert cp.validate_config_path("--ssh-dir", "/a b/c%d") == "/a b/c%d"
    assert cp.quote_config_value("/k/50%/key") == "/k/50%%/key", "'%' doubled by default"
    assert cp.quote_config_value("/k/50%/key", percent=False) == "/k/50%/key"
    assert cp.quote_config_value('/a b/"c"\\d') == '"/a b/\\"c\\"\\\\d"'
    assert cp.quote_config_value("") == '""' and cp.quote_config_value("#x") == '"#x"'
    assert cp.render_identity("/k/50% off/key", None) == ['IdentityFile "/k/50%% off/key"', "IdentitiesOnly yes"]


def test_a_blocks_body_is_its_meaningful_lines() -> None:
    block = cp.ConfigBlock("host", "a", ["# Created by x\n", "Host   a\n", "\n", "  # mine\n", "    User\tb  \n"])
    assert block.body() == ["Host a", "User b"]


def test_host_list_says_when_there_is_nothing_to_list() -> None:
    empty, one = cp.parse_cloudx_config(""), cp.parse_cloudx_config("Host cloudX-dev-web\n    HostName i-1\n")
    usage = "Usage:\n  Connect with SSH:  ssh <hostname>\n"
    head = "=== cloudX-proxy Configured Hosts ===\n\n"
    assert cp.render_host_list(empty, None, False) == head + "No cloudX hosts configured.\n\n" + usage
    assert (
        cp.render_host_list(one, "prod", False) == head + "No cloudX hosts configured in environment prod.\n\n" + usage
    )
    assert cp.render_host_list(one, None, False) == head + "Environment: dev\n  web (cloudX-dev-web, i-1)\n\n" + usage


def test_members_are_indented_as_the_first_member_that_starts_a_line() -> None:
    edited = cp.edit_editor_settings('{"x": [1,\n 2], "y": 3,\n  "z": 4\n}\n', cp.editor_patterns("cloudX"))
    assert edited == (
        '{"x": [1,\n 2], "y": 3,\n  "z": 4,\n  "remote.SSH.connectTimeout": 90,\n'
        '  "remote.SSH.serverInstallTimeout": 120,\n'
        '  "remote.SSH.remotePlatform": {\n    "cloudX-*": "linux",\n    "cloudx-*": "linux"\n  }\n}\n'
    )

"""The VS Code-family settings.json editor (issue 19): the JSONC reader, the byte-preserving edit,
the per-platform settings directories and doctor's findings.

For every input, either the edit reads back as the original plus our settings with every other byte
unchanged (only the digits of a timeout we raise differ; everything else is inserted), or it raises
ValueError and setup leaves the file alone.
"""

from __future__ import annotations

import json
import sys
from collections import Counter
from pathlib import Path
from typing import Any, Callable

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
import cloudx_proxy as cp  # noqa: E402

PATTERNS = cp.editor_patterns("cloudX")
CT, SIT, RP = "remote.SSH.connectTimeout", "remote.SSH.serverInstallTimeout", "remote.SSH.remotePlatform"
OURS = {CT: 90, SIT: 120, RP: {"cloudX-*": "linux", "cloudx-*": "linux"}}


def jsonc(text: str) -> Any:
    node = cp.parse_jsonc(text)
    return None if node is None else node.value


def canonical(value: Any) -> str:
    """Equality that tells 1 from 1.0 from true."""
    return json.dumps(value, sort_keys=True)


def low_timeouts(text: str) -> list[tuple[int, int, str]]:
    """The spans of our top-level timeouts the edit must raise, with the value it must write."""
    root = cp.parse_jsonc(text)
    if root is None:
        return []
    least = dict(cp.EDITOR_MINIMUMS)
    return [
        (node.start, node.end, str(least[key]))
        for key, _start, node in root.members
        if key in least and node.value < least[key]
    ]


def is_subsequence(needle: str, haystack: str) -> bool:
    """needle's characters appear in haystack in order (haystack = needle plus insertions)."""
    it = iter(haystack)
    return all(ch in it for ch in needle)


def strip_jsonc(text: str) -> str:
    """JSON from JSONC by a route of its own: a leading BOM, comments and trailing commas removed
    (a comment becomes a space). ValueError for an unterminated string or block comment."""
    text = text[1:] if text.startswith("\ufeff") else text
    out, i = [], 0
    while i < len(text):
        if text[i] == '"':
            j = i + 1
            while j < len(text) and text[j] != '"':
                j += 2 if text[j] == "\\" else 1
            if j >= len(text):
                raise ValueError("unterminated string")
            out.append(text[i : j + 1])
            i = j + 1
        elif text.startswith("//", i):
            while i < len(text) and text[i] not in "\r\n":
                i += 1
            out.append(" ")
        elif text.startswith("/*", i):
            end = text.find("*/", i + 2)
            if end < 0:
                raise ValueError("unterminated comment")
            out.append(" ")
            i = end + 2
        else:
            out.append(text[i])
            i += 1
    plain = "".join(out)
    # A comma is trailing when only JSON whitespace separates it from a closing bracket and a value
    # (not '{', '[' or another comma) comes before it. Strings are skipped as above.
    result, i, last = [], 0, ""
    while i < len(plain):
        c = plain[i]
        if c == '"':
            j = i + 1
            while plain[j] != '"':
                j += 2 if plain[j] == "\\" else 1
            result.append(plain[i : j + 1])
            i, last = j + 1, '"'
            continue
        if c == "," and last not in ("{", "[", ",", "") and plain[i + 1 :].lstrip(" \t\r\n")[:1] in ("}", "]"):
            i += 1
            continue
        if c not in " \t\r\n":
            last = c
        result.append(c)
        i += 1
    return "".join(result)


def no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    keys = [k for k, _ in pairs]
    if len(set(keys)) != len(keys):
        raise ValueError("a key twice")
    return dict(pairs)


def refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def oracle(text: str) -> tuple[str | None, Any]:
    """(why setup must refuse the file or None, its settings) decided without cloudx_proxy: stdlib json
    after strip_jsonc, then the types our keys must have."""
    try:
        plain = strip_jsonc(text)
        if not plain.strip(" \t\r\n"):
            return None, {}  # no value at all: setup writes a new object
        value = json.loads(plain, object_pairs_hook=no_duplicates, parse_constant=refuse_constant)
    except (ValueError, RecursionError) as e:
        return f"not JSONC: {e}", None
    if not isinstance(value, dict):
        return "not an object", None
    for key in (CT, SIT):
        if key in value and (isinstance(value[key], bool) or not isinstance(value[key], (int, float))):
            return f"{key} is not a number", None
    if RP in value and not isinstance(value[RP], dict):
        return f"{RP} is not an object", None
    return None, value


def with_ours(value: dict[str, Any]) -> dict[str, Any]:
    """The settings after setup, by the rule in the README: timeouts raised to 90 and 120, never
    lowered; our patterns added to remotePlatform as linux unless the user chose a platform."""
    want = dict(value)
    for key, least in ((CT, 90), (SIT, 120)):
        want[key] = max(want[key], least) if key in want else least
    want[RP] = {**{p: "linux" for p in PATTERNS}, **want.get(RP, {})}
    return want


def check_edit(text: str) -> str:
    """Edited as the oracle says (cleanly, see assert_edit_ok), or refused exactly when it says so."""
    why, value = oracle(text)
    try:
        new = cp.edit_editor_settings(text, PATTERNS)
    except ValueError as e:
        assert why is not None, f"refused ({e}) a file the oracle reads: {text!r}"
        return "refused"
    assert why is None, f"edited a file the oracle refuses ({why}): {text!r}"
    assert canonical(oracle(new)[1]) == canonical(with_ours(value))
    assert_edit_ok(text, new)
    return "edited"


def assert_edit_ok(old: str, new: str) -> None:
    """new reads as old plus our settings, keeps every byte of old (bar raised timeouts), and is final."""
    before = jsonc(old) or {}
    assert canonical(jsonc(new)) == canonical(cp.merge_editor_settings(before, PATTERNS))
    expected_old = old
    for start, end, value in sorted(low_timeouts(old), reverse=True):
        expected_old = expected_old[:start] + value + expected_old[end:]
    assert new.startswith(expected_old[:1]) or not expected_old
    assert is_subsequence(expected_old, new), "a byte of the original was dropped or changed"
    assert cp.edit_editor_settings(new, PATTERNS) == new, "a second run changes nothing"
    first = old.find("\n")
    if first > 0 and old[first - 1] == "\r":  # a CRLF file: every line we add ends in CRLF
        assert new.replace("\r\n", "").count("\n") == old.replace("\r\n", "").count("\n")


# --- the corpus: real-looking settings files ----------------------------------------------------
EDITED = {
    "empty file": "",
    "only whitespace": "\n\n",
    "only a comment": "// settings\n",
    "empty object": "{}",
    "empty object, newline": "{}\n",
    "empty object on two lines": "{\n}\n",
    "default VS Code file": '{\n    "workbench.colorTheme": "Default Dark+",\n    "editor.fontSize": 14\n}\n',
    "comments between members": (
        "{\n"
        "    // the look\n"
        '    "workbench.colorTheme": "Solarized", /* mine */\n'
        "    /* size */\n"
        '    "editor.fontSize": 13\n'
        "}\n"
    ),
    "comment after the last member": '{\n  "editor.fontSize": 13 // small\n  // end of my settings\n}\n',
    "trailing comma": '{\n\t"editor.fontSize": 13,\n\t"files.autoSave": "afterDelay",\n}\n',
    "nested connectTimeout untouched": (
        '{\n  "[python]": {\n    "remote.SSH.connectTimeout": 5\n  },\n'
        '  "other": {"remote.SSH.connectTimeout": 1, "remote.SSH.remotePlatform": {}}\n}\n'
    ),
    "platform with other hosts": (
        '{\n    "remote.SSH.remotePlatform": {\n        "build-box": "linux",\n        "win": "windows"\n    }\n}\n'
    ),
    "platform cloudX windows kept": '{\n  "remote.SSH.remotePlatform": {"cloudX-*": "windows"}\n}\n',
    "platform one-line empty": '{\n  "remote.SSH.remotePlatform": {}\n}\n',
    "platform one-line trailing comma": '{\n  "remote.SSH.remotePlatform": {"a": "linux",},\n}\n',
    "lower timeout": '{\n  "remote.SSH.connectTimeout": 30,\n  "remote.SSH.serverInstallTimeout": 60\n}\n',
    "lower timeout, float, last": '{\n  "a": 1,\n  "remote.SSH.connectTimeout": 60.5\n}',
    "higher timeout kept": '{\n  "remote.SSH.connectTimeout": 300,\n  "remote.SSH.serverInstallTimeout": 1e3\n}\n',
    "CRLF": '{\r\n    "editor.fontSize": 14,\r\n    "remote.SSH.connectTimeout": 15\r\n}\r\n',
    "BOM": '\ufeff{\n    "editor.fontSize": 14\n}\n',
    "tabs": '{\n\t"a": {\n\t\t"b": [1, 2,],\n\t},\n}',
    "unicode escapes and characters": '{\n  "ü\\u00e9\\ud83d\\ude00": "\\"x\\" \\\\ \\/ 😀 \u2028",\n  "n": -0.5e-3\n}\n',
    "one line": '{"editor.fontSize": 14}',
    "one line with trailing comma": '{"editor.fontSize": 14,}',
    "brace after the last value": '{\n    "a": 1}',
    "comment in an empty object": "{ /* nothing yet */ }\n",
    "configFile and showLoginTerminal left alone": (
        '{\n  "remote.SSH.configFile": "~/.ssh/cloudX/config",\n  "remote.SSH.showLoginTerminal": true\n}\n'
    ),
    "no final newline": '{\n  "a": [\n    1\n  ]\n}',
    "comment-only with no newline": "/* x */",
    "comment after the closing brace": '{\n  "a": 1\n} // end\n',
    "block comment before the closing brace": '{\n  "a": 1 /* one\n  two */\n}\n',
    "first member on the brace's line": '{ "a": 1,\n  "b": [\n    2\n  ]\n}\n',
    "platform multi-line, members on the brace's line": '{\n  "remote.SSH.remotePlatform": { "x": "linux",\n    "y": "linux" }\n}\n',
}

REFUSED = {
    "not an object": "[]\n",
    "a string at top level": '"x"',
    "syntax error: missing comma": '{\n  "a": 1\n  "b": 2\n}\n',
    "syntax error: unterminated string": '{\n  "a": "x\n}\n',
    "unterminated comment": '{\n  /* "a": 1\n}\n',
    "key twice": '{\n  "remote.SSH.connectTimeout": 30,\n  "remote.SSH.connectTimeout": 120\n}\n',
    "key twice, nested": '{\n  "x": {"a": 1, "a": 2}\n}\n',
    "timeout as a string": '{\n  "remote.SSH.connectTimeout": "30"\n}\n',
    "timeout as true": '{\n  "remote.SSH.serverInstallTimeout": true\n}\n',
    "timeout null": '{\n  "remote.SSH.connectTimeout": null\n}\n',
    "platform not an object": '{\n  "remote.SSH.remotePlatform": "linux"\n}\n',
    "single quotes": "{'a': 1}",
    "unquoted key": "{a: 1}",
    "two values": "{} {}",
    "leading comma": "{,}",
    "double comma": '{"a": 1,,}',
    "control character in a string": '{"a": "\x01"}',
    "bad escape": '{"a": "\\x"}',
    "NaN": '{"a": NaN}',
    "leading zero": '{"a": 01}',
    "non-JSON whitespace": '{\u00a0"a": 1}',
    "BOM in the middle": '{"a": 1}\ufeff',
}


@pytest.mark.parametrize("name", list(EDITED))
def test_corpus_edited(name: str) -> None:
    old = EDITED[name]
    new = cp.edit_editor_settings(old, PATTERNS)
    assert_edit_ok(old, new)


@pytest.mark.parametrize("name", list(REFUSED))
def test_corpus_refused(name: str) -> None:
    with pytest.raises(ValueError):
        cp.edit_editor_settings(REFUSED[name], PATTERNS)


def test_exact_output_matches_the_files_style() -> None:
    old = '{\r\n\t"editor.fontSize": 14 // big\r\n\t// the end\r\n}\r\n'
    assert cp.edit_editor_settings(old, PATTERNS) == (
        '{\r\n\t"editor.fontSize": 14, // big\r\n\t// the end\r\n'
        '\t"remote.SSH.connectTimeout": 90,\r\n'
        '\t"remote.SSH.serverInstallTimeout": 120,\r\n'
        '\t"remote.SSH.remotePlatform": {\r\n\t\t"cloudX-*": "linux",\r\n\t\t"cloudx-*": "linux"\r\n\t}\r\n'
        "}\r\n"
    )
    trailing = '{\n  "a": 1,\n}\n'
    assert cp.edit_editor_settings(trailing, PATTERNS) == (
        '{\n  "a": 1,\n  "remote.SSH.connectTimeout": 90,\n  "remote.SSH.serverInstallTimeout": 120,\n'
        '  "remote.SSH.remotePlatform": {\n    "cloudX-*": "linux",\n    "cloudx-*": "linux",\n  },\n}\n'
    )
    assert cp.edit_editor_settings("", PATTERNS) == (
        '{\n    "remote.SSH.connectTimeout": 90,\n    "remote.SSH.serverInstallTimeout": 120,\n'
        '    "remote.SSH.remotePlatform": {\n        "cloudX-*": "linux",\n        "cloudx-*": "linux"\n    }\n}\n'
    )


def test_the_platform_object_keeps_its_one_line_or_its_lines() -> None:
    rest = '  "remote.SSH.connectTimeout": 90,\n  "remote.SSH.serverInstallTimeout": 120\n}\n'
    ours = '"cloudX-*": "linux", "cloudx-*": "linux"'
    for inner, edited in (
        ("{}", "{" + ours + "}"),
        ('{"a": "linux"}', '{"a": "linux", ' + ours + "}"),
        ('{"a": "linux",}', '{"a": "linux", ' + ours + ",}"),
        ('{\n    "a": "linux"\n  }', '{\n    "a": "linux",\n    "cloudX-*": "linux",\n    "cloudx-*": "linux"\n  }'),
    ):
        old = '{\n  "remote.SSH.remotePlatform": ' + inner + "\n}\n"
        assert cp.edit_editor_settings(old, PATTERNS) == '{\n  "remote.SSH.remotePlatform": ' + edited + ",\n" + rest


def test_only_the_digits_of_a_lower_timeout_change() -> None:
    old = '{\n  "remote.SSH.connectTimeout": 30, // was too short\n  "remote.SSH.serverInstallTimeout": 500,\n'
    old += '  "remote.SSH.remotePlatform": {"cloudX-*": "linux", "cloudx-*": "windows"}\n}\n'
    assert cp.edit_editor_settings(old, PATTERNS) == old.replace(": 30,", ": 90,")


def test_user_platform_and_larger_values_are_kept() -> None:
    old = EDITED["platform cloudX windows kept"]
    got = jsonc(cp.edit_editor_settings(old, PATTERNS))
    assert got[RP] == {"cloudX-*": "windows", "cloudx-*": "linux"}
    got = jsonc(cp.edit_editor_settings(EDITED["higher timeout kept"], PATTERNS))
    assert got[CT] == 300 and got[SIT] == 1000.0


def test_nested_keys_are_not_ours() -> None:
    got = jsonc(cp.edit_editor_settings(EDITED["nested connectTimeout untouched"], PATTERNS))
    assert got["[python]"] == {CT: 5} and got["other"] == {CT: 1, RP: {}}
    assert got[CT] == 90


def test_patterns_both_spellings() -> None:
    assert cp.editor_patterns("cloudX") == ["cloudX-*", "cloudx-*"]
    assert cp.editor_patterns("cloudx") == ["cloudx-*", "cloudX-*"]
    assert cp.editor_patterns("Acme") == ["Acme-*", "acme-*"]
    assert cp.editor_patterns("dev") == ["dev-*"]


def test_snippet_is_the_settings_setup_writes() -> None:
    snippet = "{" + "".join(cp.render_editor_snippet(PATTERNS)) + "}"
    assert json.loads(snippet) == OURS
    assert "configFile" not in snippet and "showLoginTerminal" not in snippet


def test_jsonc_reader_errors_name_the_line() -> None:
    with pytest.raises(ValueError, match="line 3"):
        cp.parse_jsonc('{\n  "a": 1\n  "b": 2\n}')
    with pytest.raises(ValueError, match="twice"):
        cp.parse_jsonc('{"a": 1, "a": 1}')


def test_deep_nesting_is_refused_not_a_crash() -> None:
    with pytest.raises(ValueError):
        cp.edit_editor_settings('{"a": ' + "[" * 100_000 + "]" * 100_000 + "}", PATTERNS)


# --- settings directories per platform ------------------------------------------------------------
def test_settings_dirs_linux() -> None:
    dirs = dict(cp.editor_settings_dirs("linux", {}, "/home/u"))
    assert dirs == {
        "VS Code": "/home/u/.config/Code/User",
        "Code - Insiders": "/home/u/.config/Code - Insiders/User",
        "VSCodium": "/home/u/.config/VSCodium/User",
        "Cursor": "/home/u/.config/Cursor/User",
    }
    assert dict(cp.editor_settings_dirs("linux", {"XDG_CONFIG_HOME": "/x/cfg"}, "/home/u"))["VS Code"] == (
        "/x/cfg/Code/User"
    )
    # a relative XDG_CONFIG_HOME is invalid by the spec: ignored
    assert dict(cp.editor_settings_dirs("linux", {"XDG_CONFIG_HOME": "cfg"}, "/home/u"))["Cursor"] == (
        "/home/u/.config/Cursor/User"
    )


def test_settings_dirs_macos() -> None:
    dirs = dict(cp.editor_settings_dirs("darwin", {"XDG_CONFIG_HOME": "/x"}, "/Users/u"))
    assert dirs["VS Code"] == "/Users/u/Library/Application Support/Code/User"
    assert dirs["Code - Insiders"] == "/Users/u/Library/Application Support/Code - Insiders/User"


def test_settings_dirs_windows() -> None:
    env = {"APPDATA": r"C:\Users\u\AppData\Roaming"}
    dirs = dict(cp.editor_settings_dirs("win32", env, r"C:\Users\u"))
    assert dirs["VS Code"] == r"C:\Users\u\AppData\Roaming\Code\User"
    assert dirs["VSCodium"] == r"C:\Users\u\AppData\Roaming\VSCodium\User"
    assert dict(cp.editor_settings_dirs("win32", {}, r"C:\Users\u"))["Cursor"] == (
        r"C:\Users\u\AppData\Roaming\Cursor\User"
    )


# --- doctor's findings (pure) --------------------------------------------------------------------
def fact(settings: dict[str, Any] | None, error: str | None = None, shows: bool | None = None) -> dict[str, Any]:
    return {"name": "VS Code", "path": "/h/s.json", "settings": settings, "error": error, "shows_hosts": shows}


def by_check(findings: list[tuple[str, str, str, str]]) -> dict[str, tuple[str, str, str, str]]:
    return {f[1]: f for f in findings}


def test_doctor_missing_timeout_is_the_default_15() -> None:
    got = by_check(cp.editor_findings([fact({})], PATTERNS, "/h/.ssh/cloudX/config"))
    level, _check, detail, fix = got["VS Code connectTimeout"]
    assert level == cp.WARN and detail.startswith("15 s (not set: the default)")
    assert "setup" in fix and '"remote.SSH.connectTimeout": 90' in fix
    assert got["VS Code serverInstallTimeout"][0] == cp.WARN
    assert got["VS Code remotePlatform"][0] == cp.WARN
    assert "VS Code configFile" not in got


def test_doctor_after_setup_is_ok() -> None:
    got = by_check(cp.editor_findings([fact(dict(OURS))], PATTERNS, "/c"))
    assert [f[0] for f in got.values()] == [cp.OK, cp.OK, cp.OK]
    got = by_check(
        cp.editor_findings([fact({CT: 30, SIT: "x", RP: {"cloudX-*": "windows", "cloudx-*": "linux"}})], PATTERNS, "/c")
    )
    assert got["VS Code connectTimeout"][0] == cp.WARN and got["VS Code connectTimeout"][2].startswith("30 s in")
    assert got["VS Code serverInstallTimeout"][0] == cp.WARN
    assert got["VS Code remotePlatform"][0] == cp.WARN and '"windows"' in got["VS Code remotePlatform"][2]


def test_doctor_config_file() -> None:
    ok = by_check(cp.editor_findings([fact({**OURS, "remote.SSH.configFile": "~/x"}, shows=True)], PATTERNS, "/c"))
    assert ok["VS Code configFile"][0] == cp.OK
    bad = by_check(cp.editor_findings([fact({**OURS, "remote.SSH.configFile": "~/x"}, shows=False)], PATTERNS, "/c"))
    level, _c, detail, fix = bad["VS Code configFile"]
    assert level == cp.FAIL and "will not see" in detail and "Include /c" in fix


def test_doctor_unreadable_settings() -> None:
    got = cp.editor_findings([fact(None, error='the key "a" appears twice')], PATTERNS, "/c")
    assert len(got) == 1 and got[0][0] == cp.WARN and "twice" in got[0][2]


# --- property tests ------------------------------------------------------------------------------
SCALARS = st.one_of(
    st.integers(-(10**6), 10**6),
    st.floats(allow_nan=False, allow_infinity=False),
    st.booleans(),
    st.none(),
    st.text(max_size=8),
)
JSON_VALUES = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=8,
)
TIMEOUT_VALUES = st.one_of(  # mostly numbers: a file setup must refuse is the exception
    st.integers(-5, 300),
    st.integers(-5, 300),
    st.floats(0, 300, allow_nan=False),
    st.sampled_from(['"30"', "true", "null"]),
)
PLATFORM_ENTRIES = st.dictionaries(
    st.sampled_from(["cloudX-*", "cloudx-*", "build-box", "cloudX-dev-web"]),
    st.sampled_from(["linux", "windows", "macOS"]),
)
KEYS = st.sampled_from(
    [CT, SIT, RP, "editor.fontSize", "[python]", "files.exclude", "remote.SSH.configFile", "ü\u2028"]
)


@st.composite
def settings_files(draw: st.DrawFn) -> str:
    """A settings.json as people have them: any indentation, newlines, comments, trailing commas,
    a BOM, nested objects (some holding our keys), our keys in any form, sometimes twice."""
    nl = draw(st.sampled_from(["\n", "\r\n"]))
    unit = draw(st.sampled_from(["    ", "  ", "\t", ""]))
    comment = st.sampled_from(["", " // note", " /* note */", " /* a\n b */"])
    members = []
    for key in draw(st.lists(KEYS, max_size=6, unique=True) | st.lists(KEYS, max_size=3)):  # a key twice, rarely
        if key in (CT, SIT):
            value = str(draw(TIMEOUT_VALUES))
        elif key == RP:
            entries = draw(PLATFORM_ENTRIES)
            inner = [f"{json.dumps(k)}: {json.dumps(v)}" for k, v in entries.items()]
            if draw(st.booleans()):
                value = "{" + ", ".join(inner) + ("," if inner and draw(st.booleans()) else "") + "}"
            else:
                lines = [f"{unit * 2}{m}," for m in inner]
                if lines and not draw(st.booleans()):
                    lines[-1] = lines[-1][:-1]
                value = "{" + nl + "".join(line + nl for line in lines) + unit + "}"
        elif key == "[python]":
            value = '{"remote.SSH.connectTimeout": ' + str(draw(st.integers(0, 100))) + "}"
        else:
            value = json.dumps(draw(JSON_VALUES))
        lead = draw(st.sampled_from(["", f"{unit}// about it{nl}", f"{unit}/* about it */{nl}"]))
        members.append((lead, f"{unit}{json.dumps(key)}: {value}", draw(comment)))
    trailing = draw(st.booleans()) and bool(members)
    body = ""
    for index, (lead, member, after) in enumerate(members):
        comma = "," if index < len(members) - 1 or trailing else ""
        body += lead + member + comma + after + nl
    body += draw(st.sampled_from(["", f"{unit}// the end{nl}"]))
    text = "{" + nl + body + "}" + draw(st.sampled_from(["", nl]))
    if draw(st.booleans()):
        text = "{}" if not members and draw(st.booleans()) else text
    return ("\ufeff" if draw(st.booleans()) else "") + text


def run_counting(strategy: st.SearchStrategy[Any], examples: int, check: Callable[[Any], str]) -> Counter[str]:
    """Run check on each example hypothesis draws and count its outcomes ('edited' / 'refused')."""
    seen: Counter[str] = Counter()

    @settings(max_examples=examples, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(strategy)
    def run(value: Any) -> None:
        seen[check(value)] += 1

    run()
    return seen


def test_corpus_agrees_with_the_oracle() -> None:
    for name, text in {**EDITED, **REFUSED}.items():
        if name == "nested connectTimeout untouched":
            continue
        assert (oracle(text)[0] is None) == (name in EDITED), name
        check_edit(text)


def test_property_real_looking_files() -> None:
    seen = run_counting(settings_files(), 400, check_edit)
    assert seen["edited"] > seen["refused"] > 0, seen  # mostly edited (about 3 in 4)


def mutate(text: str, data: st.DataObject) -> str:
    pos = data.draw(st.integers(0, len(text)))
    cut = data.draw(st.integers(0, 3))
    junk = data.draw(st.sampled_from(["", "{", "}", ",", '"', "/", "*", ":", "\n", "]", "x"]))
    return text[:pos] + junk + text[pos + cut :]


def test_property_mutated_files_edit_cleanly_or_are_refused() -> None:
    seen = run_counting(st.tuples(settings_files(), st.data()), 300, lambda t: check_edit(mutate(t[0], t[1])))
    assert seen["edited"] > 0 and seen["refused"] > 0, seen


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.text(max_size=8), JSON_VALUES, max_size=6), st.sampled_from([None, 0, 2, 4, "\t"]))
@example({"remote.SSH.connectTimeout": 1}, None)
def test_property_plain_json_reads_as_stdlib_json(value: dict[str, Any], indent: Any) -> None:
    text = json.dumps(value, indent=indent)
    assert canonical(jsonc(text)) == canonical(json.loads(text))
    check_edit(text)


def test_property_any_text_is_edited_cleanly_or_refused() -> None:
    chars = st.sampled_from(list('{}[]:,"/*\n\r\t 0123a-.e\\u\ufeff') + ["true", "null"])
    seen = run_counting(st.lists(chars, max_size=30).map("".join), 300, check_edit)
    assert seen["refused"] > 0, seen


# --- the file side, on real files ----------------------------------------------------------------
def test_plan_refuses_what_it_cannot_replace(tmp_path: Path) -> None:
    dangling = tmp_path / "dangling.json"
    dangling.symlink_to(tmp_path / "missing" / "settings.json")
    assert "does not exist" in (cp.plan_editor_settings(str(dangling), PATTERNS)[2] or "")
    directory = tmp_path / "dir.json"
    directory.mkdir()
    assert "not a regular file" in (cp.plan_editor_settings(str(directory), PATTERNS)[2] or "")
    latin = tmp_path / "latin.json"
    latin.write_bytes(b'{"a": "\xe9"}')
    assert "not UTF-8" in (cp.plan_editor_settings(str(latin), PATTERNS)[2] or "")
    missing = tmp_path / "new" / "settings.json"
    missing.parent.mkdir()
    old, new, why = cp.plan_editor_settings(str(missing), PATTERNS)
    assert old == "" and why is None and jsonc(new or "") == OURS


def test_write_goes_through_the_link_keeps_the_mode_and_backs_up(tmp_path: Path) -> None:
    real = tmp_path / "dotfiles" / "settings.json"
    real.parent.mkdir()
    real.write_text("{\n  // mine\n}\n")
    real.chmod(0o640)
    link = tmp_path / "User" / "settings.json"
    link.parent.mkdir()
    link.symlink_to(real)
    assert cp.write_editor_settings(str(link), PATTERNS, str(tmp_path / "cache")) is None
    assert link.is_symlink() and jsonc(real.read_text()) == OURS
    assert real.read_text().startswith("{\n  // mine\n")
    assert (real.stat().st_mode & 0o777) == 0o640
    assert (real.parent / "settings.json.bak").read_text() == "{\n  // mine\n}\n"
    assert cp.write_editor_settings(str(link), PATTERNS, str(tmp_path / "cache")) is None
    assert sorted(p.name for p in real.parent.iterdir()) == ["settings.json", "settings.json.bak"], "no new backup"


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.one_of(settings_files(), st.sampled_from(list(REFUSED.values()))))
def test_property_the_file_is_edited_cleanly_or_left_byte_for_byte(tmp_path: Path, text: str) -> None:
    import tempfile

    with tempfile.TemporaryDirectory(dir=tmp_path) as work:
        path = Path(work) / "settings.json"
        path.write_bytes(text.encode("utf-8"))
        why = cp.write_editor_settings(str(path), PATTERNS, str(Path(work) / "cache"))
        after = path.read_bytes().decode("utf-8")
        assert (why is None) == (oracle(text)[0] is None), (why, text)
        if why is not None:
            assert after == text and not (Path(work) / "settings.json.bak").exists()
        else:
            assert canonical(oracle(after)[1]) == canonical(with_ours(oracle(text)[1]))
            assert_edit_ok(text, after)


def test_a_crlf_file_that_starts_with_an_empty_line_stays_crlf() -> None:
    new = cp.edit_editor_settings('\r\n{\r\n  "a": 1\r\n}\r\n', PATTERNS)
    assert new.startswith('\r\n{\r\n  "a": 1,\r\n  "remote.SSH.connectTimeout": 90,\r\n')
    assert "\n" not in new.replace("\r\n", ""), "no bare LF"

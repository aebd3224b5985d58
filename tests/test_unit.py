"""Unit tests: the pure functions of cloudx_proxy (validation, parsing, rendering), no processes."""

from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import cloudx_proxy as cp  # noqa: E402

IID = "i-0123456789abcdef0"


# --- validation ------------------------------------------------------------
@pytest.mark.parametrize("value", [IID, "i-12345678", "i-abcdef01"])
def test_instance_id_accepted(value: str) -> None:
    assert cp.validate_instance_id(value) == value


@pytest.mark.parametrize("value", ["I-0123456789ABCDEF0", "i-0123456789ABCdef0", "I-ABCDEF01"])
def test_instance_id_in_upper_case_is_accepted_and_lowered(value: str) -> None:
    assert cp.validate_instance_id(value) == value.lower()
    assert cp.is_instance_id(value)


@pytest.mark.parametrize(
    "value",
    [
        "",
        "i-",
        "i-123",
        "i-0123456789ABCDEFG",
        "\u0130-12345678",
        "i-0123456789abcdef",
        "i-0123456789abcdef01",
        "x-12345678",
        " i-12345678",
        "i-12345678\n",
        "i-1234567g",
        "i-12345678;ls",
        "-i-12345678",
    ],
)
def test_instance_id_rejected(value: str) -> None:
    with pytest.raises(cp.CloudxError) as e:
        cp.validate_instance_id(value)
    assert e.value.exit_code == cp.EXIT_USAGE


@pytest.mark.parametrize("value,expected", [("22", 22), ("1", 1), ("65535", 65535), (2222, 2222)])
def test_port_accepted(value: str, expected: int) -> None:
    assert cp.validate_port(value) == expected


@pytest.mark.parametrize("value", ["0", "65536", "-1", "22a", "", "2 2", "0x16", "1e3", "²"])
def test_port_rejected(value: str) -> None:
    with pytest.raises(cp.CloudxError) as e:
        cp.validate_port(value)
    assert e.value.exit_code == cp.EXIT_USAGE


@pytest.mark.parametrize("value", ["cloudX", "vscode", "my-profile_2", "user@corp", "a.b", "default", "x+y=z,w:1"])
def test_name_accepted(value: str) -> None:
    assert cp.validate_name("profile", value) == value


@pytest.mark.parametrize(
    "value",
    [
        "",
        "a b",
        "a'b",
        'a"b',
        "a;b",
        "a|b",
        "a&b",
        "$(x)",
        "`x`",
        "a/b",
        "a\\b",
        "..",
        "a..b",
        "-x",
        "--help",
        "a\nb",
        "a\tb",
        "a*b",
        "a?b",
        "~x",
        "a#b",
        "a<b",
        "a>b",
        "x" * 200,
        "é",
    ],
)
def test_name_rejected(value: str) -> None:
    with pytest.raises(cp.CloudxError) as e:
        cp.validate_name("profile", value)
    assert e.value.exit_code == cp.EXIT_USAGE


@pytest.mark.parametrize("value", ["eu-west-1", "us-east-1", "us-gov-west-1", "ap-southeast-3", "cn-north-1"])
def test_region_accepted(value: str) -> None:
    assert cp.validate_region(value) == value


@pytest.mark.parametrize("value", ["", "eu-west", "EU-WEST-1", "eu west 1", "eu-west-1;x", "europe"])
def test_region_rejected(value: str) -> None:
    with pytest.raises(cp.CloudxError):
        cp.validate_region(value)


def test_os_user_and_timeout() -> None:
    assert cp.validate_os_user("ec2-user") == "ec2-user"
    assert cp.validate_timeout("90") == 90.0
    for bad in ["root;x", "Ec2", "", "a b"]:
        with pytest.raises(cp.CloudxError):
            cp.validate_os_user(bad)
    for bad in ["0", "-5", "abc", "nan", "inf", "4000"]:
        with pytest.raises(cp.CloudxError):
            cp.validate_timeout(bad)


@pytest.mark.parametrize("value", ["", "a\nb", "a\0b", "a\rb"])
def test_path_rejected(value: str) -> None:
    with pytest.raises(cp.CloudxError):
        cp.validate_path("--ssh-dir", value)


# --- parsing ---------------------------------------------------------------
KEY_B64 = "AAAAC3NzaC1lZDI1NTE5AAAAIHfWq0Zkz1m3kQz1hQk1Xg0gq9b6m1E1fU5mV9B1b2c3"


def test_public_key_parsed_without_comment() -> None:
    assert cp.parse_public_key(f"ssh-ed25519 {KEY_B64} alice@laptop\n", "k.pub") == f"ssh-ed25519 {KEY_B64}"
    assert cp.parse_public_key(f"ssh-rsa {KEY_B64}", "k.pub") == f"ssh-rsa {KEY_B64}"


@pytest.mark.parametrize(
    "text",
    [
        "",
        "-----BEGIN OPENSSH PRIVATE KEY-----\nabc\n",
        f"ssh-dss {KEY_B64}",
        "ssh-ed25519",
        f"ssh-ed25519 {KEY_B64}\nssh-rsa {KEY_B64}",
    ],
)
def test_public_key_rejected(text: str) -> None:
    with pytest.raises(cp.CloudxError):
        cp.parse_public_key(text, "k.pub")


def test_default_profile_and_key(tmp_path: Path) -> None:
    home = str(tmp_path)
    assert cp.default_profile_and_key(home) == ("cloudX", "cloudX", os.path.join(home, ".ssh", "cloudX"))
    (tmp_path / ".ssh" / "vscode").mkdir(parents=True)
    assert cp.default_profile_and_key(home) == ("vscode", "vscode", os.path.join(home, ".ssh", "vscode"))
    (tmp_path / ".ssh" / "cloudX").mkdir()
    assert cp.default_profile_and_key(home)[:2] == ("cloudX", "cloudX")


def _setup_args(**over: object) -> object:
    from argparse import Namespace

    base: dict[str, object] = dict(
        profile=None, ssh_key=None, ssh_config=None, ssh_dir=None, aws_env=None, op_vault=None,
        instance=None, hostname=None, environment=None, ssh_host_prefix="cloudX", yes=True, dry_run=True,
    )  # fmt: skip
    base.update(over)
    return Namespace(**base)


def test_setup_works_in_a_legacy_vscode_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Only ~/.ssh/vscode: setup stays there with its defaults (creating ~/.ssh/cloudX would change
    what flag-less ProxyCommands resolve to); explicit options and ~/.ssh/cloudX win."""
    monkeypatch.setenv("HOME", str(tmp_path))
    vscode = tmp_path / ".ssh" / "vscode"
    vscode.mkdir(parents=True)
    s = cp.Setup(_setup_args(), {})  # type: ignore[arg-type]
    assert (s.legacy, s.ssh_dir, s.profile, s.key) == (True, str(vscode), "vscode", "vscode")
    assert s.ssh_config == str(vscode / "config") and s.key_path == str(vscode / "vscode")
    s = cp.Setup(_setup_args(profile="p", ssh_key="k"), {})  # type: ignore[arg-type]
    assert (s.legacy, s.ssh_dir, s.profile, s.key) == (True, str(vscode), "p", "k")
    s = cp.Setup(_setup_args(ssh_dir=str(tmp_path / "d")), {})  # type: ignore[arg-type]
    assert (s.legacy, s.profile) == (False, "cloudX")
    (tmp_path / ".ssh" / "cloudX").mkdir()
    s = cp.Setup(_setup_args(), {})  # type: ignore[arg-type]
    assert (s.legacy, s.ssh_dir, s.profile) == (False, str(tmp_path / ".ssh" / "cloudX"), "cloudX")


def test_setup_instance_in_upper_case_is_lowered(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    assert cp.Setup(_setup_args(instance="I-0123456789ABCDEF0"), {}).instance == IID  # type: ignore[arg-type]
    assert cp.Setup(_setup_args(instance="I-web"), {}).instance == "I-web", "a Name tag stays a Name tag"  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "facts,action",
    [
        ((False, True, False, False, False), "none"),  # not macOS
        ((True, False, False, False, False), "none"),  # 1Password's socket absent
        ((True, True, False, False, False), "create"),
        ((True, True, True, True, True), "ok"),
        ((True, True, True, True, False), "replace"),  # a symlink elsewhere
        ((True, True, False, True, False), "replace"),  # a dangling symlink
        ((True, True, True, False, False), "keep"),  # a real socket: maybe a running agent
    ],
)
def test_op_agent_link_action(facts: tuple[bool, bool, bool, bool, bool], action: str) -> None:
    assert cp.op_agent_link_action(*facts) == action


def test_op_agent_link_on_macos_creates_and_repairs_the_symlink(tmp_path: Path) -> None:
    home = str(tmp_path)
    mac = tmp_path / "Library" / "Group Containers" / "2BUA8C4S2C.com.1password" / "t" / "agent.sock"
    link = tmp_path / ".1password" / "agent.sock"
    assert cp.op_agent_link(home, "darwin") is None and not link.parent.exists(), "no 1Password socket: nothing"
    mac.parent.mkdir(parents=True)
    mac.touch()
    assert cp.op_agent_link(home, "linux") is None and not link.parent.exists(), "only on macOS"
    assert cp.op_agent_link(home, "darwin") == str(link)
    assert link.is_symlink() and os.readlink(link) == str(mac)
    assert (link.parent.stat().st_mode & 0o777) == 0o700
    link.unlink()
    link.symlink_to(tmp_path / "old.sock")
    assert cp.op_agent_link(home, "darwin") == str(link) and os.readlink(link) == str(mac), "repointed"
    link.unlink()
    link.write_text("a live socket")
    assert cp.op_agent_link(home, "darwin") == str(link) and link.read_text() == "a live socket", "never deleted"


def test_moved_path_whole_components() -> None:
    h, src, dst = "/home/u", "/home/u/.ssh/vscode", "/t/new"
    assert cp.moved_path("/home/u/.ssh/vscode/key", src, dst, h) == "/t/new/key"
    assert cp.moved_path("/home/u/.ssh/vscode", src, dst, h) == "/t/new"
    assert cp.moved_path("/home/u/.ssh/vscode-old/key", src, dst, h) is None
    assert cp.moved_path("/home/u/.ssh/vscodex", src, dst, h) is None
    assert cp.moved_path("~/.ssh/vscode/key", src, "/home/u/.ssh/cloudX", h) == "~/.ssh/cloudX/key"
    assert cp.moved_path("~/.ssh/vscode/key", src, dst, h) == "/t/new/key"
    assert cp.moved_path("${HOME}/.ssh/vscode/k", src, dst, h) == "/t/new/k"
    assert cp.moved_path("vscode/config", src, dst, h, "/home/u/.ssh") == "/t/new/config"
    assert cp.moved_path("vscode/config", src, dst, h) is None


@pytest.mark.parametrize("line", ["a 'b c' \"d $e\" f\\ g", "x;y|z && w", "p --o='q r' %h %%p", "unterminated 'x"])
def test_sh_words_agree_with_shlex(line: str) -> None:
    import shlex

    words = cp.sh_words(line)
    if "unterminated" in line:
        assert words is None
        return
    assert words is not None
    lexer = shlex.shlex(line, posix=True, punctuation_chars=";&|<>()")
    lexer.whitespace_split = True
    assert [w[2] for w in words] == list(lexer)
    assert all(line[a:b].strip() == line[a:b] and line[a:b] for a, b, _ in words)


def test_resolve_region_order() -> None:
    section = {"region": "us-east-2"}
    assert cp.resolve_region("ap-south-1", {"AWS_REGION": "us-west-1"}, section) == ("ap-south-1", "--region")
    assert cp.resolve_region(None, {"AWS_REGION": "us-west-1", "AWS_DEFAULT_REGION": "x"}, section) == (
        "us-west-1",
        "AWS_REGION",
    )
    assert cp.resolve_region(None, {"AWS_DEFAULT_REGION": "ca-central-1"}, section)[0] == "ca-central-1"
    assert cp.resolve_region(None, {}, section) == ("us-east-2", "profile")
    assert cp.resolve_region(None, {}, None) == ("eu-west-1", "default")


def test_profile_section() -> None:
    config = {"default": {"region": "a"}, "profile cloudX": {"region": "b"}}
    assert cp.profile_section(config, "cloudX") == {"region": "b"}
    assert cp.profile_section(config, "default") == {"region": "a"}
    assert cp.profile_section(config, "other") is None


def test_sso_cache_file_names_match_the_aws_cli() -> None:
    config = {"sso-session corp": {"sso_start_url": "https://corp.awsapps.com/start"}}
    assert cp.sso_cache_file(config, {"sso_session": "corp"}) == hashlib.sha1(b"corp").hexdigest() + ".json"
    url = "https://legacy.awsapps.com/start"
    assert cp.sso_cache_file({}, {"sso_start_url": url}) == hashlib.sha1(url.encode()).hexdigest() + ".json"
    assert cp.sso_cache_file({}, {"region": "eu-west-1"}) is None


def test_sso_token_expiry() -> None:
    now = cp.parse_aws_time("2026-06-01T12:00:00Z")
    assert now is not None
    assert cp.parse_aws_time("2026-06-01T12:00:00UTC") == now
    assert not cp.sso_token_expired({"expiresAt": "2026-06-01T13:00:00Z"}, now)
    assert cp.sso_token_expired({"expiresAt": "2026-06-01T11:00:00Z"}, now)
    assert cp.sso_token_expired(None, now)
    assert cp.sso_token_expired({}, now)
    refreshable = {
        "expiresAt": "2026-06-01T11:00:00Z",
        "refreshToken": "r",
        "registrationExpiresAt": "2026-09-01T00:00:00Z",
    }
    assert not cp.sso_token_expired(refreshable, now)
    assert cp.sso_token_expired(dict(refreshable, registrationExpiresAt="2026-05-01T00:00:00Z"), now)


def test_parse_aws_json() -> None:
    described = {
        "Reservations": [
            {
                "Instances": [
                    {"InstanceId": "i-other", "State": {"Name": "running"}},
                    {"InstanceId": IID, "State": {"Code": 80, "Name": "stopped"}},
                ]
            }
        ]
    }
    assert cp.parse_instance_state(described, IID) == "stopped"
    assert cp.parse_instance_state({"Reservations": []}, IID) is None
    assert cp.parse_instance_state(None, IID) is None
    info = {"InstanceInformationList": [{"InstanceId": IID, "PingStatus": "Online"}]}
    assert cp.parse_ping_status(info, IID) == "Online"
    assert cp.parse_ping_status({"InstanceInformationList": []}, IID) == "NotRegistered"
    started = {
        "StartingInstances": [
            {"InstanceId": IID, "CurrentState": {"Name": "pending"}, "PreviousState": {"Name": "stopped"}}
        ]
    }
    assert cp.parse_previous_state(started) == "stopped"


# --- aws error classification ----------------------------------------------
def _err(code: str, op: str, msg: str = "boom") -> str:
    return f"\nAn error occurred ({code}) when calling the {op} operation: {msg}\n"


@pytest.mark.parametrize(
    "stderr,needle,hint",
    [
        ("\nThe config profile (nope) could not be found\n", "profile 'p' not found", "aws configure --profile p"),
        (
            '\nUnable to locate credentials. You can configure credentials by running "aws configure".\n',
            "no AWS credentials",
            "aws configure",
        ),
        (
            "\nError when retrieving token from sso: Token has expired and refresh failed\n",
            "SSO session",
            "aws sso login --profile p",
        ),
        (
            "\nThe SSO session associated with this profile has expired or is otherwise invalid.\n",
            "SSO session",
            "aws sso login --profile p",
        ),
        (_err("ExpiredToken", "DescribeInstances"), "have expired", "aws sso login"),
        (_err("AccessDeniedException", "SendSSHPublicKey"), "ec2-instance-connect:SendSSHPublicKey", "IAM"),
        (_err("UnauthorizedOperation", "StartInstances"), "ec2:StartInstances", "IAM"),
        (_err("AccessDeniedException", "DescribeInstanceInformation"), "ssm:DescribeInstanceInformation", "IAM"),
        (_err("InvalidInstanceID.NotFound", "DescribeInstances"), "not found in region r", "--region"),
        (_err("EC2InstanceNotFoundException", "SendSSHPublicKey"), "not found in region r", "--region"),
        (_err("ThrottlingException", "DescribeInstanceInformation"), "throttled", "again"),
        ('\nCould not connect to the endpoint URL: "https://ssm.r.amazonaws.com/"\n', "cannot reach AWS", "network"),
        (_err("InvalidClientTokenId", "GetCallerIdentity"), "rejected the credentials", "get-caller-identity"),
    ],
)
def test_classify_aws_error(stderr: str, needle: str, hint: str) -> None:
    err = cp.classify_aws_error(stderr, "Op", "p", "r", IID)
    assert needle in err.message
    assert err.hint and hint in err.hint
    assert err.exit_code == cp.EXIT_ERROR


def test_classify_keeps_the_aws_code() -> None:
    err = cp.classify_aws_error(
        _err("EC2InstanceStateInvalidException", "SendSSHPublicKey", "not running"), "x", "p", "r"
    )
    assert err.code == "EC2InstanceStateInvalidException"
    assert "not running" in err.message
    err = cp.classify_aws_error(
        _err("RequestLimitExceeded", "DescribeInstances").replace("operation:", "operation (reached max retries: 4):"),
        "x",
        "p",
        "r",
    )
    assert err.code == "RequestLimitExceeded"


def test_render_error_is_one_line() -> None:
    line = cp.render_error(cp.CloudxError("bad\nthing", "do\nthis"))
    assert "\n" not in line
    assert line == "cloudx-proxy: error: bad thing (hint: do this)"


# --- argv builders and records ----------------------------------------------
def test_session_argv() -> None:
    argv = cp.build_session_argv("/usr/bin/aws", IID, 2222, "prof", "us-east-1")
    assert argv[:3] == ["/usr/bin/aws", "ssm", "start-session"]
    assert argv[argv.index("--target") + 1] == IID
    assert argv[argv.index("--document-name") + 1] == "AWS-StartSSHSession"
    assert argv[argv.index("--parameters") + 1] == "portNumber=2222"
    assert argv[argv.index("--profile") + 1] == "prof"
    assert argv[argv.index("--region") + 1] == "us-east-1"
    assert "--cli-connect-timeout" in argv and "--cli-read-timeout" in argv


def test_push_record_fresh() -> None:
    expect = {"key": "ssh-ed25519 AAA", "config": "/c", "credentials": "/k"}
    now = 1_000_000.0
    assert cp.push_record_fresh(dict(expect, t=now - 5), expect, now)
    assert not cp.push_record_fresh(dict(expect, t=now - cp.PUSH_REUSE_SECONDS - 1), expect, now)
    assert not cp.push_record_fresh(dict(expect, t=now + 30), expect, now), "clock went backwards"
    assert not cp.push_record_fresh(dict(expect, key="ssh-ed25519 BBB", t=now), expect, now), "key changed"
    assert not cp.push_record_fresh(dict(expect, config="/other", t=now), expect, now)
    assert not cp.push_record_fresh(None, expect, now)
    assert not cp.push_record_fresh({"t": "yesterday", **expect}, expect, now)
    assert cp.PUSH_REUSE_SECONDS < 60


def test_cache_dir(tmp_path: Path) -> None:
    assert cp.cache_dir({"XDG_CACHE_HOME": "/x"}, "/h") == os.path.join("/x", "cloudx-proxy")
    assert cp.cache_dir({}, "/h") == os.path.join("/h", ".cache", "cloudx-proxy")


def test_find_program_looks_on_path_then_standard_dirs(tmp_path: Path) -> None:
    tool = tmp_path / "bin" / "aws"
    tool.parent.mkdir()
    tool.write_text("#!/bin/sh\n")
    tool.chmod(0o755)
    found, looked = cp.find_program("aws", str(tool.parent))
    assert found == str(tool)
    missing, looked = cp.find_program("definitely-not-a-program-xyz", str(tmp_path))
    assert missing is None
    assert looked[0] == str(tmp_path) and "/usr/local/bin" in looked


def test_atomic_write_and_private_dir(tmp_path: Path) -> None:
    d = cp.ensure_private_dir(str(tmp_path / "a" / "b"))
    assert os.stat(d).st_mode & 0o777 == 0o700
    target = os.path.join(d, "f")
    cp.atomic_write(target, "one\n")
    cp.atomic_write(target, "two\n")
    assert Path(target).read_text() == "two\n"
    assert os.stat(target).st_mode & 0o777 == 0o600
    assert sorted(os.listdir(d)) == ["f"], "no temp files left behind"


def test_color_only_when_enabled(monkeypatch: pytest.MonkeyPatch) -> None:
    err = cp.CloudxError("boom", "fix it")
    monkeypatch.setattr(cp, "_COLOR", False)
    assert "\033[" not in cp.render_error(err)
    monkeypatch.setattr(cp, "_COLOR", True)
    assert cp.render_error(err) == "cloudx-proxy: \033[31merror\033[0m: boom (\033[33mhint\033[0m: fix it)"
    findings = [("FAIL", "key", "missing", "run setup")]
    assert "\033[31mFAIL" in cp.render_findings(findings, color=True)
    assert "\033[" not in cp.render_findings(findings, color=False)


def test_no_color_on_a_terminal_when_asked(tmp_path: Path) -> None:
    """NO_COLOR and --no-color turn colors off even on a terminal (run under script(1) for a tty)."""
    import shutil
    import subprocess

    if not shutil.which("script"):
        pytest.skip("script(1) not installed")
    base = f"{sys.executable} {Path(cp.__file__)} connect i-1"
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path)}
    runs = {
        "tty": subprocess.run(["script", "-qc", base, "/dev/null"], env=env, capture_output=True, text=True),
        "NO_COLOR": subprocess.run(
            ["script", "-qc", base, "/dev/null"], env=dict(env, NO_COLOR="1"), capture_output=True, text=True
        ),
        "--no-color": subprocess.run(
            ["script", "-qc", base + " --no-color", "/dev/null"], env=env, capture_output=True, text=True
        ),
    }
    assert "\033[31merror" in runs["tty"].stdout
    assert "\033[" not in runs["NO_COLOR"].stdout and "error:" in runs["NO_COLOR"].stdout
    assert "\033[" not in runs["--no-color"].stdout and "error:" in runs["--no-color"].stdout


def test_setup_dry_run_without_an_aws_cli(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """No aws CLI anywhere (PATH and the standard install places) and no ~/.aws: the dry run
    still shows the aws calls it would make and the diffs, and writes nothing."""
    import shutil

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("ssh", "ssh-keygen"):
        found = shutil.which(tool)
        if found:
            (bin_dir / tool).symlink_to(found)
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("PATH", str(bin_dir))
    monkeypatch.setattr(cp, "_standard_dirs", lambda program: [])
    argv = ["setup", "--dry-run", "--yes", "--instance", "I-0123456789ABCDEF0", "--environment", "dev"]
    assert cp.main(argv) == 0
    err = capsys.readouterr().err
    assert "warning: aws not found" in err
    assert "would run: aws sts get-caller-identity --profile cloudX" in err
    assert "would run: aws ec2 describe-instances --instance-ids i-0123456789abcdef0" in err
    assert "+Host cloudX-dev-instance-abcdef0" in err and "+    HostName i-0123456789abcdef0" in err
    assert "would create an ed25519 key pair" in err
    assert [p for p in home.rglob("*") if ".cache" not in p.parts] == []


def test_connect_takes_an_instance_id_in_upper_case(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """ssh lowercases %h itself, but connect run by hand (or by another tool) gets it as typed."""
    monkeypatch.setenv("HOME", str(tmp_path))
    assert cp.main(["connect", "I-0123456789ABCDEF0", "--dry-run"]) == 0
    err = capsys.readouterr().err
    assert "[dry run] connect i-0123456789abcdef0 port 22" in err and "I-0" not in err

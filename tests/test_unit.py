"""Unit tests: the pure functions of cloudx_proxy (validation, parsing, rendering), no processes."""

from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import cloudx_proxy as cp  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent

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


# --- the local trust boundary (issue 12) -------------------------------------
def test_ensure_private_dir_refuses_what_is_not_ours(tmp_path: Path) -> None:
    mine = tmp_path / "mine"
    mine.mkdir(mode=0o777)
    os.chmod(mine, 0o777)
    assert cp.ensure_private_dir(str(mine)) == str(mine) and os.stat(mine).st_mode & 0o777 == 0o700
    link = tmp_path / "link"
    link.symlink_to(mine)
    assert cp.ensure_private_dir(str(link)) == str(link), "a symlink of ours to a dir of ours is fine"
    if os.getuid() == 0:
        os.chown(mine, 1, 1)  # daemon: someone else
        for path in (mine, link):
            with pytest.raises(OSError, match="owned by uid 1, not by you"):
                cp.ensure_private_dir(str(path))
        os.chown(mine, 0, 0)
        os.lchown(link, 1, 1)
        with pytest.raises(OSError, match="symlink owned by uid 1"):
            cp.ensure_private_dir(str(link))


def test_files_in_the_cache_are_opened_without_following_symlinks(tmp_path: Path) -> None:
    target = tmp_path / "target.json"
    target.write_text('{"t": 1}')
    link = tmp_path / "push.json"
    link.symlink_to(target)
    assert cp.read_json_file(str(target)) == {"t": 1}
    assert cp.read_json_file(str(link)) is None
    os.chmod(target, 0o666)
    assert cp.read_json_file(str(target)) is None, "a file others can write is not trusted"
    lock = tmp_path / "lock"
    lock.symlink_to(target)
    with cp.FileLock(str(lock), 0):
        assert not lock.is_symlink() and lock.is_file()
    assert target.read_text() == '{"t": 1}'
    with cp.FileLock(str(tmp_path), 0):  # a directory can be locked as it is
        pass


def test_update_file_dry_run_creates_nothing(tmp_path: Path) -> None:
    config = tmp_path / "config"
    config.write_text("a\n")
    cache = tmp_path / "cache"
    old, new = cp.update_file(str(config), lambda text: text + "b\n", str(cache), dry_run=True)
    assert (old, new) == ("a\n", "a\nb\n")
    assert not cache.exists() and sorted(os.listdir(tmp_path)) == ["config"]
    assert cp.update_file(str(config), lambda text: None, str(cache), dry_run=True) == ("a\n", None)


@pytest.mark.skipif(os.getuid() != 0, reason="needs root to hand the cache dir to another user")
def test_update_file_locks_the_directory_when_the_cache_is_not_ours(tmp_path: Path) -> None:
    config, cache = tmp_path / "config", tmp_path / "cache"
    config.write_text("a\n")
    cache.mkdir()
    os.chown(cache, 1, 1)
    assert cp.update_file(str(config), lambda text: text + "b\n", str(cache)) == ("a\n", "a\nb\n")
    assert config.read_text() == "a\nb\n" and os.listdir(cache) == []


def test_run_cmd_decodes_any_bytes() -> None:
    proc = cp.run_cmd([sys.executable, "-c", "import os; os.write(1, b'ok \\xff\\xfe'); os.write(2, b'\\x80')"], 30)
    assert proc.stdout == "ok \ufffd\ufffd" and proc.stderr == "\ufffd"


def test_main_turns_a_bug_into_one_line(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    def broken(args: object) -> int:
        raise KeyError("InstanceId\x1b[31m")

    monkeypatch.setattr(cp, "cmd_list", broken)
    assert cp.main(["list"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "internal error: KeyError" in err and "\x1b" not in err
    assert "--verbose" in err
    assert cp.main(["list", "-v"]) == 1
    err = capsys.readouterr().err
    assert "Traceback" in err and err.strip().splitlines()[-1].startswith("cloudx-proxy: error: internal error")


# --- doctor: pure findings from facts ---------------------------------------
def healthy_facts(**changes: object) -> cp.DoctorFacts:
    facts: dict[str, object] = dict(
        target="cloudX-dev-web", instance_id=IID, config_path="/h/.ssh/cloudX/config",
        parsed={"hosts": [{}], "environments": {"dev": {}}},
        python="3.11.7", python_ok=True, aws_path="/bin/aws", aws_version="aws-cli/2.9.19 Python/3.11",
        plugin_path="/bin/session-manager-plugin", plugin_version="1.2.0", ssh_path="/bin/ssh", ssh_mux=True,
        ssh_version="OpenSSH_9.6p1, OpenSSL 3.0", keygen="/bin/ssh-keygen", profile="cloudX", profile_error=None,
        profile_detail="'cloudX' in /h/.aws/config, region eu-west-1 (from profile)", ssh_dir="/h/.ssh/cloudX",
        ssh_dir_mode=0o700, priv="/h/.ssh/cloudX/cloudX", pub="/h/.ssh/cloudX/cloudX.pub", pub_exists=True,
        priv_exists=True, agent=None, priv_loose=False, key_matches=True, main_config="/h/.ssh/config",
        include_where="before", ssh_refusal=[], proxies=[("cloudX-dev-*", None)], control="/h/.ssh/control", control_exists=True,
        cache="/h/.cache/cloudx-proxy", cache_stat={"uid": 5, "mode": 0o700, "is_dir": 1, "link_uid": -1, "my_uid": 5},
        region="eu-west-1",
        aws_results={
            "sts": {"Arn": "arn:aws:iam::1:user/cloudX-dev-alice"},
            "ec2": {"Reservations": [{"Instances": [{"InstanceId": IID, "State": {"Name": "running"},
                                                     "Tags": [{"Key": "cloudxuser", "Value": "cloudX-dev-alice"}]}]}]},
            "ssm": {"InstanceInformationList": [{"InstanceId": IID, "PingStatus": "Online"}]},
            "start": cp.CloudxError("dry run", code="DryRunOperation"),
        },
    )  # fmt: skip
    facts.update(changes)
    return cp.DoctorFacts(**facts)


def test_doctor_findings_healthy() -> None:
    text = cp.render_findings(cp.doctor_findings(healthy_facts()))
    assert text.splitlines() == [
        "ok    python: 3.11.7",
        "ok    aws: v2 at /bin/aws",
        "ok    session-manager-plugin: 1.2.0 at /bin/session-manager-plugin",
        "ok    ssh: /bin/ssh",
        "ok    ssh version: OpenSSH_9.6p1, OpenSSL 3.0",
        "ok    ssh-keygen: /bin/ssh-keygen",
        "ok    profile: 'cloudX' in /h/.aws/config, region eu-west-1 (from profile)",
        "ok    key: /h/.ssh/cloudX/cloudX (0600), public key matches",
        "ok    ssh config: /h/.ssh/cloudX/config: 1 hosts in 1 environments",
        "ok    include: /h/.ssh/config includes it where ssh applies it to every host",
        "ok    proxy command: cloudX-dev-* runs an existing program",
        "ok    control dir: /h/.ssh/control",
        "ok    cache dir: /h/.cache/cloudx-proxy (0700)",
        "ok    credentials: arn:aws:iam::1:user/cloudX-dev-alice",
        f"ok    instance: {IID} running in eu-west-1",
        "ok    cloudxuser tag: cloudX-dev-alice",
        "ok    ssm: PingStatus Online",
        "ok    start permission: ec2:StartInstances allowed (dry run)",
        "18 checks: 18 ok, 0 warn, 0 FAIL",
    ]


@pytest.mark.parametrize(
    "changes,line",
    [
        ({"aws_path": None}, "FAIL  aws: not found on PATH or in the standard places -- fix: install AWS CLI v2"),
        ({"priv_loose": True}, "FAIL  key: /h/.ssh/cloudX/cloudX is readable by others (ssh refuses it)"),
        ({"key_matches": False}, "FAIL  key: /h/.ssh/cloudX/cloudX.pub does not match /h/.ssh/cloudX/cloudX"),
        ({"ssh_dir_mode": 0o755}, "warn  ssh dir: /h/.ssh/cloudX is accessible by others (755)"),
        ({"include_where": "inside"}, "FAIL  include: the Include in /h/.ssh/config sits inside a Host/Match block"),
        ({"parsed": None}, "FAIL  ssh config: /h/.ssh/cloudX/config not found"),
        ({"proxies": [("cloudX-dev-*", "/gone.pyz")]}, "FAIL  proxy command: cloudX-dev-*: /gone.pyz does not exist"),
        ({"control_exists": False}, "warn  control dir: /h/.ssh/control missing (ssh cannot share connections)"),
        (
            {"ssh_version": "OpenSSH_8.9p1 Ubuntu-3ubuntu0.1"},
            "warn  ssh version: OpenSSH_8.9p1 Ubuntu-3ubuntu0.1: Open",
        ),
        (
            {"ssh_version": "OpenSSH_9.2p1 Debian-2+deb12u3, OpenSSL"},
            "ok    ssh version: OpenSSH_9.2p1 Debian-2+deb12u3",
        ),
        ({"ssh_version": "OpenSSH_9.2p1 Debian-2+deb12u1"}, "warn  ssh version: OpenSSH_9.2p1 Debian-2+deb12u1: Open"),
        ({"cache_stat": {"uid": 7, "mode": 0o755, "is_dir": 1, "link_uid": -1, "my_uid": 5}}, "is owned by uid 7"),
        ({"cache_stat": {"uid": 5, "mode": 0o777, "is_dir": 1, "link_uid": -1, "my_uid": 5}}, "mode 777"),
        ({"cache_stat": {"uid": 5, "mode": 0o700, "is_dir": 1, "link_uid": 9, "my_uid": 5}}, "symlink made by uid 9"),
        ({"cache_stat": None}, "ok    cache dir: /h/.cache/cloudx-proxy (not created yet)"),
        ({"aws_results": None, "instance_id": None}, "FAIL  instance: cloudX-dev-web is not a host in"),
        ({"instance_id": None}, "FAIL  instance: cloudX-dev-web is not a host in"),  # credentials work, host unknown
        ({"profile_error": cp.CloudxError("profile 'x' not found", "aws configure")}, "FAIL  profile: profile 'x'"),
    ],
)
def test_doctor_findings_report_each_problem(changes: dict[str, object], line: str) -> None:
    text = cp.render_findings(cp.doctor_findings(healthy_facts(**changes)))
    assert any(ln.startswith(line) or (line in ln and "cache dir" in ln) for ln in text.splitlines()), text


@pytest.mark.parametrize(
    "answer,line",
    [
        ({"Reservations": [{"Instances": [{"InstanceId": IID}]}]}, f"warn  instance: {IID} is unknown"),
        ({"Reservations": "x"}, "FAIL  instance: unexpected answer from AWS: Reservations is str, not a list"),
        ({"Reservations": [{"Instances": [{"State": {"Name": "run\nning"}}]}]}, "FAIL  instance: unexpected answer"),
        (
            {
                "Reservations": [
                    {"Instances": [{"State": {"Name": "running"}, "Tags": [{"Key": "cloudxuser", "Value": "b\x1b"}]}]}
                ]
            },
            "FAIL  cloudxuser tag: the instance belongs to 'b\\x1b', you are cloudX-dev-alice",
        ),
    ],
)
def test_doctor_checks_what_aws_says(answer: object, line: str) -> None:
    results = dict(healthy_facts().aws_results or {}, ec2=answer)
    text = cp.render_findings(cp.doctor_findings(healthy_facts(aws_results=results)))
    assert any(ln.startswith(line) for ln in text.splitlines()), text


def test_parse_openssh_version() -> None:
    assert cp.parse_openssh_version("OpenSSH_9.2p1 Debian-2+deb12u3, OpenSSL 3.0.15") == (9, 2)
    assert cp.parse_openssh_version("OpenSSH_for_Windows_9.5p1, LibreSSL 3.8.2") == (9, 5)
    assert cp.parse_openssh_version("ssh: unknown option") is None
    assert cp.openssh_patched("OpenSSH_8.4p1 Debian-5+deb11u3") and not cp.openssh_patched("OpenSSH_8.4p1 Debian-5")


def test_error_lines_from_aws_text_stay_one_clean_line(capsys: pytest.CaptureFixture[str]) -> None:
    hostile = "An error occurred (Boom) when calling the DescribeInstances operation: bad\x1b]0;owned\x07\nline"
    e = cp.classify_aws_error(hostile, "DescribeInstances", "p", "eu-west-1")
    assert cp.printable(e.message) == "DescribeInstances failed: Boom: bad\\x1b]0;owned\\x07"
    assert cp.printable("a\nb\tc") == "a b c"
    text = cp.render_findings([(cp.FAIL, "instance", e.message + "\nforged line", "")])
    assert text.count("\n") == 2 and "\x1b" not in text


# --- connect: the cold wait's schedule, the hand-off record --------------------------------
def test_a_young_instance_is_looked_at_sparsely_then_every_poll_interval() -> None:
    launched = 1000.0
    rounds, last = [], None
    while True:
        due = cp.next_round_at(launched + 0.3 if last is None else last, launched, last)
        if due > launched + 25:
            break
        rounds.append(round(due - launched, 3))
        last = due
    assert rounds == [8.0, 15.0, 17.0, 19.0, 21.0, 23.0, 25.0]


def test_the_schedule_never_looks_back_and_an_unknown_launch_polls_now() -> None:
    assert cp.next_round_at(50.0, None, None) == 50.0
    assert cp.next_round_at(50.0, None, 50.0) == 50.0 + cp.POLL_SECONDS
    assert cp.next_round_at(70.0, None, 50.0) == 70.0
    # Late (a slow round): due now, not in the past; a launch long ago is polled densely.
    assert cp.next_round_at(1030.0, 1000.0, 1016.0) == 1031.0
    assert cp.next_round_at(1000.3, 1000.0, 1008.0) == 1015.0, "after the young look, the dense phase"
    assert cp.next_round_at(5000.0, 1000.0, None) == 5001.0


def test_parse_handoff_waits_for_the_whole_record_and_ignores_forgeries() -> None:
    nonce = b"cloudx-proxy-handoff-ab"
    record = b"\n" + nonce + b'\x003\x00a1\x00eu-west-1\x00StartSession\x00{"SessionId": "s"}\x00' + nonce + b"\n"
    assert cp.parse_handoff(b"warning\n" + record, nonce) == (["a1", "eu-west-1", "StartSession"], '{"SessionId": "s"}')
    for cut in range(len(record)):
        assert cp.parse_handoff(record[:cut], nonce) is None
    other = record.replace(nonce, b"cloudx-proxy-handoff-xx")
    assert cp.parse_handoff(other, nonce) is None
    assert cp.parse_handoff(record.replace(b"\x003\x00", b"\x009\x00", 1), nonce) is None


def test_plugin_env_carries_the_answer_only_where_aws_named_it() -> None:
    env = {"PATH": "/bin", "CLOUDX_PROXY_HANDOFF": "n", "CLOUDX_PROXY_PLUGIN": "/p", "AWS_PROFILE": "x"}
    args = [cp.SSM_RESPONSE_ENV, "r", "StartSession", "p", "{}", "e"]
    assert cp.plugin_env(env, args, "{}") == {"PATH": "/bin", "AWS_PROFILE": "x", cp.SSM_RESPONSE_ENV: "{}"}
    assert cp.plugin_env(env, ['{"SessionId": "s"}', *args[1:]], "") == {"PATH": "/bin", "AWS_PROFILE": "x"}
    assert cp.session_id_of(args, '{"SessionId": "s-1"}') == "s-1"
    assert cp.session_id_of(args, "not json") is None
    assert cp.session_id_of(['{"SessionId": "a b"}'], "") is None, "a session id is checked before use"


def test_may_prompt_follows_the_profile_chain() -> None:
    config = {
        "profile dev": {"role_arn": "arn:aws:iam::1:role/r", "source_profile": "base"},
        "profile base": {"mfa_serial": "arn:aws:iam::1:mfa/u"},
        "profile proc": {"credential_process": "/bin/creds"},
        "profile loop": {"source_profile": "loop"},
        "profile plain": {"region": "eu-west-1"},
    }
    assert cp.may_prompt(config, {}, "dev") and cp.may_prompt(config, {}, "proc")
    assert not cp.may_prompt(config, {}, "plain") and not cp.may_prompt(config, {}, "loop")
    assert cp.may_prompt(config, {"plain": {"credential_process": "x"}}, "plain")
    assert not cp.may_prompt(config, {"plain": {"aws_access_key_id": "A"}}, "plain")

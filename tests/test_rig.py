"""The rig's own tests: only the real aws CLI, ssh and sshd, no project code."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest
from conftest import require_v1_old, require_v2
from rig import Home, Rig

REGION = "eu-west-1"
PROFILE = "cloudX"
PROXY = (
    "aws ssm start-session --target %h --document-name AWS-StartSSHSession "
    f"--parameters portNumber=%p --region {REGION} --profile {PROFILE}"
)
TIMEOUT = 90


def run(argv: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=TIMEOUT, stdin=subprocess.DEVNULL)


def aws(rig: Rig, home: Home, *args: str, variant: str = "v1", **env_extra: str) -> subprocess.CompletedProcess:
    env = {**rig.env(home.path, variant), **env_extra}
    return run(["aws", *args, "--profile", home.profile, "--region", REGION], env)


def push_key(rig: Rig, home: Home, iid: str, variant: str = "v1") -> None:
    res = aws(
        rig,
        home,
        "ec2-instance-connect",
        "send-ssh-public-key",
        "--instance-id",
        iid,
        "--instance-os-user",
        "ec2-user",
        "--ssh-public-key",
        f"file://{home.pub}",
        variant=variant,
    )
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["Success"] is True


def ssh(
    rig: Rig, home: Home, iid: str, *remote: str, variant: str = "v1", **env_extra: str
) -> subprocess.CompletedProcess:
    env = {**rig.env(home.path, variant), **env_extra}
    return run(rig.ssh_argv(home, iid, PROXY, *remote), env)


def aws_error(code: str, operation: str) -> str:
    return f"An error occurred ({code}) when calling the {operation} operation"


def state_of(rig: Rig, home: Home, iid: str, *states: str) -> str:
    """The state describe-instances shows (optionally filtered on instance-state-name)."""
    filters = ["--filters", f"Name=instance-state-name,Values={','.join(states)}"] if states else []
    res = aws(
        rig,
        home,
        "ec2",
        "describe-instances",
        "--instance-ids",
        iid,
        *filters,
        "--query",
        "Reservations[0].Instances[0].State.Name",
        "--output",
        "text",
    )
    assert res.returncode == 0, res.stderr
    return res.stdout.strip()


def plugin_calls_for(rig: Rig, iid: str) -> list[dict]:
    return [c for c in rig.plugin_calls() if c["target"] == iid]


def sleep_until(t: float) -> None:
    time.sleep(max(0.0, t - time.time()))


def ping_of(rig: Rig, home: Home, *ids: str) -> dict[str, str]:
    """PingStatus by instance id, as describe-instance-information shows it (absent: not there)."""
    res = aws(rig, home, "ssm", "describe-instance-information", "--filters", f"Key=InstanceIds,Values={','.join(ids)}")
    assert res.returncode == 0, res.stderr
    return {i["InstanceId"]: i["PingStatus"] for i in json.loads(res.stdout)["InstanceInformationList"]}


def start_session_args(iid: str) -> tuple[str, ...]:
    return (
        "ssm",
        "start-session",
        "--target",
        iid,
        "--document-name",
        "AWS-StartSSHSession",
        "--parameters",
        "portNumber=22",
    )


def test_ssh_through_aws_cli(rig: Rig, home: Home, aws_variant: str) -> None:
    iid = rig.add_instance()
    rig.clear_calls()
    push_key(rig, home, iid, aws_variant)
    res = ssh(rig, home, iid, "echo", "hello", variant=aws_variant)
    assert res.returncode == 0, res.stderr
    assert res.stdout == "hello\n"
    # v1 with a new plugin passes the response in the environment; v2.9 always as argv.
    (call,) = plugin_calls_for(rig, iid)
    assert call["form"] == ("env" if aws_variant == "v1" else "arg")
    assert (call["portNumber"], call["region"], call["profile"]) == ("22", REGION, PROFILE)
    assert call["endpoint"] == rig.endpoint_url
    # The endpoint logged both calls with the instance and the home's access key.
    log = rig.calls()
    assert [c["action"] for c in log] == ["SendSSHPublicKey", "StartSession"]
    assert all(c["instance_ids"] == [iid] for c in log)
    akid = (home.path / ".aws" / "credentials").read_text().split("aws_access_key_id = ")[1]
    assert {c["access_key"] for c in log} == {akid.split()[0]}
    assert call["session_id"].startswith(akid.split()[0] + "-")


def test_ssh_without_push_is_denied(rig: Rig, home: Home) -> None:
    iid = rig.add_instance()
    res = ssh(rig, home, iid, "true")
    assert res.returncode == 255
    assert "Permission denied" in res.stderr
    assert len(plugin_calls_for(rig, iid)) == 1  # the tunnel itself worked


def test_expired_key_is_refused(rig: Rig, home: Home) -> None:
    iid = rig.add_instance()
    rig.knobs(key_ttl=1)
    try:
        push_key(rig, home, iid)
    finally:
        rig.knobs(key_ttl=60)
    keys = (rig.keys_root / iid / "ec2-user").read_text()
    assert keys.startswith('expiry-time="') and home.pub.read_text().split()[1] in keys
    time.sleep(2)
    res = ssh(rig, home, iid, "true")
    assert res.returncode == 255
    assert "Permission denied" in res.stderr


def test_start_session_on_stopped_instance(rig: Rig, home: Home) -> None:
    iid = rig.add_instance(state="stopped")
    res = aws(
        rig,
        home,
        "ssm",
        "start-session",
        "--target",
        iid,
        "--document-name",
        "AWS-StartSSHSession",
        "--parameters",
        "portNumber=22",
    )
    assert res.returncode == 255
    assert f"{aws_error('TargetNotConnected', 'StartSession')}: {iid} is not connected." in res.stderr
    assert plugin_calls_for(rig, iid) == []


def test_send_key_errors(rig: Rig, home: Home) -> None:
    iid = rig.add_instance(state="stopped")
    res = aws(
        rig,
        home,
        "ec2-instance-connect",
        "send-ssh-public-key",
        "--instance-id",
        iid,
        "--instance-os-user",
        "ec2-user",
        "--ssh-public-key",
        f"file://{home.pub}",
    )
    assert res.returncode == 255
    assert aws_error("EC2InstanceStateInvalidException", "SendSSHPublicKey") in res.stderr
    res = aws(
        rig,
        home,
        "ec2-instance-connect",
        "send-ssh-public-key",
        "--instance-id",
        "i-0123456789abcdef0",
        "--instance-os-user",
        "ec2-user",
        "--ssh-public-key",
        f"file://{home.pub}",
    )
    assert res.returncode == 255
    assert aws_error("EC2InstanceNotFoundException", "SendSSHPublicKey") in res.stderr


def test_ssm_ping_status(rig: Rig, home: Home) -> None:
    online = rig.add_instance(ssh=False)
    forced = rig.add_instance(ssh=False)
    rig.set_instance(forced, ssm="ConnectionLost")
    stopped = rig.add_instance(state="stopped", ssh=False)
    held = rig.add_instance(ssh=False, hold="offline")
    late = rig.add_instance(ssh=False, online_delay=3600)
    got = ping_of(rig, home, online, forced, stopped, held, late)
    assert got == {online: "Online", forced: "ConnectionLost", stopped: "ConnectionLost"}


def test_stopping_then_start_pending_then_running(rig: Rig, home: Home) -> None:
    """Every window is ended by the test (release), so no step races the clock."""
    iid = rig.add_instance()
    rig.begin_stopping(iid)  # stopping until released
    assert rig.moto_state(iid) == "stopped"
    # The state filter applies to the effective state (moto alone says "stopped").
    assert state_of(rig, home, iid, "stopping", "running") == "stopping"
    res = aws(rig, home, "ec2", "start-instances", "--instance-ids", iid)
    assert res.returncode == 255
    assert (
        f"{aws_error('IncorrectInstanceState', 'StartInstances')}: The instance '{iid}' "
        "is not in a state from which it can be started." in res.stderr
    )
    rig.release(iid)
    assert state_of(rig, home, iid) == "stopped"

    rig.set_instance(iid, hold="pending")
    res = aws(rig, home, "ec2", "start-instances", "--instance-ids", iid)
    assert res.returncode == 0, res.stderr
    (starting,) = json.loads(res.stdout)["StartingInstances"]
    assert starting["PreviousState"]["Name"] == "stopped"
    assert starting["CurrentState"] == {"Code": 0, "Name": "pending"}
    assert state_of(rig, home, iid, "pending") == "pending"
    assert ping_of(rig, home, iid) == {iid: "ConnectionLost"}  # it was Online before the stop
    rig.release(iid)
    assert state_of(rig, home, iid) == "running"
    assert ping_of(rig, home, iid) == {iid: "Online"}


def test_timed_windows_end_by_themselves(rig: Rig, home: Home) -> None:
    """begin_stopping(seconds) and pending_seconds still end on their own (checked only after)."""
    iid = rig.add_instance(ssh=False)
    rig.begin_stopping(iid, 0.5)
    t0 = time.time()  # after the call: the window began no later than this
    sleep_until(t0 + 0.6)
    assert state_of(rig, home, iid) == "stopped"
    rig.set_instance(iid, pending_seconds=0.5)
    res = aws(rig, home, "ec2", "start-instances", "--instance-ids", iid)
    t1 = time.time()
    assert res.returncode == 0, res.stderr
    sleep_until(t1 + 0.6)
    assert state_of(rig, home, iid) == "running"
    # A long window holds for as long as the test needs, and release() ends it.
    rig.set_instance(iid, pending_seconds=3600, started_now=True)
    assert state_of(rig, home, iid) == "pending"
    rig.release(iid)
    assert state_of(rig, home, iid) == "running"


def test_hold_offline_until_released(rig: Rig, home: Home) -> None:
    never = rig.add_instance(hold="offline")
    was = rig.add_instance(ssh=False)
    rig.set_instance(was, hold="offline")
    slow = rig.add_instance(ssh=False, hold="offline", online_delay=3600)
    # EC2 says running (a key can be pushed); SSM is not Online, so no session.
    assert state_of(rig, home, never) == "running"
    push_key(rig, home, never)
    assert ping_of(rig, home, never, was, slow) == {was: "ConnectionLost"}
    res = aws(rig, home, *start_session_args(never))
    assert res.returncode == 255
    assert f"{aws_error('TargetNotConnected', 'StartSession')}: {never} is not connected." in res.stderr
    assert plugin_calls_for(rig, never) == []
    for iid in (never, was, slow):
        rig.release(iid)
    # Online at once; online_delay counts from the release (slow was never Online: still absent).
    assert ping_of(rig, home, never, was, slow) == {never: "Online", was: "Online"}
    res = ssh(rig, home, never, "echo", "hello")
    assert res.returncode == 0, res.stderr
    assert res.stdout == "hello\n"
    with pytest.raises(ValueError):
        rig.set_instance(never, hold="stopped")


def test_wait_for_call_orders_a_waiting_connect(rig: Rig, home: Home) -> None:
    """The pattern for connect tests: once the code under test has polled, release the instance."""
    iid = rig.add_instance(hold="offline")
    push_key(rig, home, iid)
    rig.clear_calls()
    poll = (
        f"aws ssm describe-instance-information --filters Key=InstanceIds,Values=%h --region {REGION} "
        f'--profile {PROFILE} --query "InstanceInformationList[0].PingStatus" --output text'
    )
    proxy = f"sh -c 'until {poll} | grep -qx Online; do sleep 0.1; done; exec {PROXY}'"
    env = rig.env(home.path)
    proc = subprocess.Popen(
        rig.ssh_argv(home, iid, proxy, "echo", "hello"),
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        polls = rig.wait_for_call("DescribeInstanceInformation", iid, count=2)
        assert len(polls) >= 2 and proc.poll() is None  # still waiting: the instance is held
        assert rig.calls("StartSession") == []
        released = time.time()
        rig.release(iid)
        (call,) = rig.wait_for_plugin_call(iid)
        out, err = proc.communicate(timeout=TIMEOUT)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    assert out == "hello\n"
    assert call["redeemed"] is True
    (start,) = rig.calls("StartSession")
    assert start["t"] >= released
    with pytest.raises(TimeoutError):
        rig.wait_for_call("NoSuchAction", timeout=0.2)


def test_flap_then_connect_refused(rig: Rig, home: Home) -> None:
    iid = rig.add_instance(ssh=False, flap=1)
    args = start_session_args(iid)
    res = aws(rig, home, *args)
    assert res.returncode == 255
    assert aws_error("TargetNotConnected", "StartSession") in res.stderr
    assert plugin_calls_for(rig, iid) == []
    # The flap is used up; with no sshd behind it the plugin cannot connect.
    res = aws(rig, home, *args)
    assert res.returncode != 0
    assert "failed to connect" in res.stderr
    assert len(plugin_calls_for(rig, iid)) == 1


def test_fault_injection(rig: Rig, home: Home) -> None:
    rig.fault("DescribeInstances", "UnauthorizedOperation", "You are not authorized.", status=403)
    rig.fault("GetCallerIdentity", "AccessDenied", "Nope.", status=403)
    rig.fault("DescribeInstanceInformation", "AccessDeniedException", "No SSM for you.")
    try:
        res = aws(rig, home, "ec2", "describe-instances")
        assert res.returncode == 255
        assert f"{aws_error('UnauthorizedOperation', 'DescribeInstances')}: You are not authorized." in res.stderr
        res = aws(rig, home, "sts", "get-caller-identity")
        assert res.returncode == 255
        assert f"{aws_error('AccessDenied', 'GetCallerIdentity')}: Nope." in res.stderr
        res = aws(rig, home, "ssm", "describe-instance-information")
        assert res.returncode == 255
        assert f"{aws_error('AccessDeniedException', 'DescribeInstanceInformation')}: No SSM for you." in res.stderr
        # count=1: the next call goes through; a delay-only fault just slows it.
        rig.fault("GetCallerIdentity", delay=1.0)
        t0 = time.monotonic()
        res = aws(rig, home, "sts", "get-caller-identity")
        assert res.returncode == 0, res.stderr
        assert time.monotonic() - t0 >= 1.0
        assert json.loads(res.stdout)["Arn"].endswith(":user/cloudX-dev-alice")
    finally:
        rig.clear_faults()


def test_plugin_arg_form(rig: Rig, home: Home) -> None:
    iid = rig.add_instance()
    push_key(rig, home, iid)
    res = ssh(rig, home, iid, "echo", "hello", RIG_PLUGIN_VERSION="1.2.0.0")
    assert res.returncode == 0, res.stderr
    assert res.stdout == "hello\n"
    assert [c["form"] for c in plugin_calls_for(rig, iid)] == ["arg"]


@pytest.mark.parametrize("mode", ["early", "mid"])
def test_plugin_failure_modes(rig: Rig, home: Home, mode: str) -> None:
    iid = rig.add_instance()
    push_key(rig, home, iid)
    res = ssh(rig, home, iid, "echo", "hello", RIG_PLUGIN_MODE=mode)
    assert res.returncode == 255
    assert "hello" not in res.stdout
    assert "Cannot perform start session" in res.stderr


def test_plugin_cli(rig: Rig, tmp_path: Path) -> None:
    plugin = str(rig.bin_dir / "session-manager-plugin")
    env = rig.env(tmp_path)
    assert run([plugin, "--version"], env).stdout == "1.2.707.0\n"
    res = run([plugin], env)  # the real plugin's texts (session.go)
    assert res.returncode == 0
    assert res.stdout == (
        "\nThe Session Manager plugin was installed successfully. Use the AWS CLI to start a session.\n\n"
    )
    res = run([plugin, "help"], env)
    assert res.stdout == "\nUnknown operation help. \nUse session-manager-plugin --version to check the version.\n\n"
    # The vanishing knob refuses the rig's shared copy (later tests need it).
    res = run([plugin, "--version"], {**env, "RIG_PLUGIN_VANISH_AFTER_VERSION": "1"})
    assert res.returncode == 3 and "rig.plugin_dir()" in res.stderr
    assert os.access(plugin, os.X_OK)


def variant_env(rig: Rig, home: Home, variant: str) -> dict[str, str]:
    if variant == "v2":
        require_v2(rig)
    elif variant == "v1old":
        require_v1_old(rig)
    return rig.env(home.path, variant)


@pytest.mark.parametrize("variant", ["v1", "v2", "v1old"])
def test_plain_start_session_reaches_sshd(rig: Rig, home: Home, variant: str) -> None:
    """aws ssm start-session alone: the plugin's SessionId line, then sshd's banner; who ran it, how."""
    iid = rig.add_instance()
    env = variant_env(rig, home, variant)
    argv = ["aws", *start_session_args(iid), "--profile", PROFILE, "--region", REGION]
    proc = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        out, err = proc.communicate(timeout=TIMEOUT)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    (call,) = plugin_calls_for(rig, iid)
    sid = call["session_id"]
    assert out.startswith(f"\nStarting session with SessionId: {sid}\nSSH-2.0-".encode()), out
    assert call["ppid"] == proc.pid  # run by the aws process itself
    assert call["exe"] == str(rig.bin_dir / "session-manager-plugin")
    # v1 >= 1.30.3 with a new plugin passes the answer in the environment; v2.9 and v1 1.29 in argv.
    form = "env" if variant == "v1" else "arg"
    assert call["form"] == form
    first = "AWS_SSM_START_SESSION_RESPONSE" if form == "env" else "<response>"
    assert call["argv"][:4] == [first, REGION, "StartSession", PROFILE]
    assert json.loads(call["argv"][4])["Target"] == iid
    assert call["argv"][5] == rig.endpoint_url and len(call["argv"]) == 6
    assert call["profile_found"] is True and call["redeemed"] is True
    assert rig.sessions()[sid] == {"target": iid, "redeemed": True, "terminated": False}
    # aws runs the plugin with the keys a user types ignored, nothing blocked.
    assert {"SIGINT", "SIGQUIT", "SIGTSTP"} <= set(call["sig_ignored"]) and call["sig_blocked"] == []
    # Only v1 >= 1.30.3 asks the plugin its version first.
    asked = [c for c in rig.plugin_version_calls() if c["ppid"] == proc.pid]
    assert len(asked) == (1 if variant == "v1" else 0)


def test_ssh_through_aws_v1_old(rig: Rig, home: Home, tmp_path: Path) -> None:
    """awscli 1.29 never asks the plugin --version: a plugin that vanishes after --version still works."""
    require_v1_old(rig)
    iid = rig.add_instance()
    push_key(rig, home, iid, "v1old")
    env = {
        **rig.env(home.path, "v1old", plugin_dir=rig.plugin_dir(tmp_path / "bin")),
        "RIG_PLUGIN_VANISH_AFTER_VERSION": "1",
    }
    res = run(rig.ssh_argv(home, iid, PROXY, "echo", "hello"), env)
    assert res.returncode == 0, res.stderr
    assert res.stdout == "hello\n"
    (call,) = plugin_calls_for(rig, iid)
    assert call["form"] == "arg" and call["exe"] == str(tmp_path / "bin" / "session-manager-plugin")
    assert [c["user_agent"].split()[0] for c in rig.calls() if iid in c["instance_ids"]] == ["aws-cli/1.29.85"] * 2


def test_plugin_vanishing_after_version(rig: Rig, home: Home, tmp_path: Path) -> None:
    """aws v1 asks --version first; then the plugin is gone, so aws ends the session it started."""
    iid = rig.add_instance()
    bin_dir = rig.plugin_dir(tmp_path / "bin")
    env = {**rig.env(home.path, plugin_dir=bin_dir), "RIG_PLUGIN_VANISH_AFTER_VERSION": "1"}
    res = run(["aws", *start_session_args(iid), "--profile", PROFILE, "--region", REGION], env)
    assert res.returncode != 0
    assert "SessionManagerPlugin is not found" in res.stderr
    assert not (bin_dir / "session-manager-plugin").exists()
    assert plugin_calls_for(rig, iid) == []
    (start,) = [c for c in rig.calls("StartSession") if c["instance_ids"] == [iid]]
    sids = [s for s, v in rig.sessions().items() if v["target"] == iid]
    assert len(sids) == 1 and rig.sessions()[sids[0]] == {"target": iid, "redeemed": False, "terminated": True}
    assert len(rig.calls("TerminateSession")) >= 1


def test_plugin_token_is_one_use(rig: Rig, home: Home) -> None:
    """The plugin redeems the session's token; a second use, a wrong token, or a terminated session is refused."""
    iid = rig.add_instance()
    ssm = rig.endpoint_client("ssm", REGION)
    params = {"Target": iid, "DocumentName": "AWS-StartSSHSession", "Parameters": {"portNumber": ["22"]}}

    def start() -> dict:
        answer = ssm.start_session(**params)
        answer.pop("ResponseMetadata")
        return answer

    def plugin(answer: dict | str, profile: str = PROFILE) -> subprocess.CompletedProcess:
        env = rig.env(home.path)
        first = answer if isinstance(answer, str) else json.dumps(answer)
        if not isinstance(answer, str):  # the env form, as aws v1 >= 1.30.3 uses it
            env["AWS_SSM_START_SESSION_RESPONSE"] = first
            first = "AWS_SSM_START_SESSION_RESPONSE"
        argv = [str(rig.bin_dir / "session-manager-plugin"), first, REGION, "StartSession", profile]
        return run([*argv, json.dumps(params), rig.endpoint_url], env)

    answer = start()
    sid = answer["SessionId"]
    res = plugin(answer)
    assert res.returncode == 0, res.stderr
    assert res.stdout.startswith(f"\nStarting session with SessionId: {sid}\nSSH-2.0-")
    res = plugin(json.dumps(answer), profile="nosuch")  # the same answer again, in argv
    refused = f"Cannot perform start session: the data channel of session {sid} refused its token"
    assert res.returncode == 1
    assert f"{refused}: token already used\n" in res.stderr
    assert res.stdout == f"\nStarting session with SessionId: {sid}\n{refused}: token already used\n"
    wrong = {**start(), "TokenValue": "forged"}
    res = plugin(wrong)
    assert res.returncode == 1 and "refused its token: unknown session or token" in res.stderr
    ended = start()
    ssm.terminate_session(SessionId=ended["SessionId"])
    res = plugin(ended)
    assert res.returncode == 1 and "refused its token: session terminated" in res.stderr
    res = plugin("AWS_SSM_START_SESSION_RESPONSE")  # the variable named but not set
    assert res.returncode == 1
    assert res.stdout == "Cannot perform start session: unexpected end of JSON input\n"
    calls = plugin_calls_for(rig, iid)
    assert [(c["redeemed"], c["profile_found"]) for c in calls] == [
        (True, True),
        (False, False),
        (False, True),
        (False, True),
    ]
    assert rig.sessions()[wrong["SessionId"]]["redeemed"] is False


def test_close_leaves_no_process(tmp_path: Path) -> None:
    r = Rig(tmp_path / "rig2")
    r.start()
    try:
        r.add_instance()
        pids = [p.pid for p in r.procs]
        assert len(pids) == 3  # moto, endpoint, one sshd
    finally:
        r.close()
    alive = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        state, pgid = fields[0], int(fields[2])
        if state != "Z" and (int(entry) in pids or pgid in pids):
            alive.append(stat)
    assert alive == []

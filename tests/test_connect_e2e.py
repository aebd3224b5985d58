"""End-to-end tests of connect: real ssh through our ProxyCommand, the real aws CLI, moto, sshd.

See docs/test-rig.md for the rig. Every test creates its own instance and HOME.
"""

from __future__ import annotations

import hashlib
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import skip_or_fail
from helpers import actions, find_python, live, live_pids, ssh, ssh_released
from rig import Home, Rig, cmdline, descendants

ROOT = Path(__file__).resolve().parent.parent


def connect(
    rig: Rig, home: Home, pyz: Path, *args: str, aws: str = "v1", env: dict[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """Run the zipapp's connect directly (stdin closed), as a user testing it would."""
    return subprocess.run(
        [sys.executable, str(pyz), "connect", *args],
        env=env or rig.env(home, aws),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


# --- warm path ---------------------------------------------------------------
def test_warm_connect_runs_a_command(rig: Rig, home: Home, pyz: Path, aws_variant: str) -> None:
    iid = rig.add_instance()
    res = ssh(rig, home, pyz, iid, "echo hello; whoami", aws=aws_variant)
    assert res.returncode == 0, res.stderr
    assert res.stdout == "hello\nec2-user\n"
    assert "Pushing SSH key..." in res.stderr and "Starting session..." in res.stderr
    # Two calls, side by side: the push (the check) and the session; nothing started in case it is stopped.
    assert sorted(actions(rig)) == ["SendSSHPublicKey", "StartSession"]
    assert rig.plugin_calls()[0]["target"] == iid


@pytest.mark.parametrize("route", ["hand-off", "no hand-off", "wrapper"])
def test_the_plugin_runs_only_after_the_key_is_pushed(
    rig: Rig, home: Home, pyz: Path, tmp_path: Path, aws_variant: str, route: str
) -> None:
    """The plugin's SSH handshake needs the key: whatever runs the plugin, it runs after the push.

    With the hand-off the session starts beside the push and the hand-off waits for it; when
    aws runs the plugin itself behind a wrapper that sets its own PATH (the stand-in is
    bypassed), its bytes are held until the push has returned; without the hand-off
    (Windows' path) the session starts only after the push.
    """
    iid = rig.add_instance()
    env = rig.env(home, aws_variant)
    if route == "no hand-off":
        env["CLOUDX_PROXY_NO_HANDOFF"] = "1"
    elif route == "wrapper":
        (tmp_path / "wrapper").mkdir()
        wrapper = tmp_path / "wrapper" / "aws"
        real = {"v1": rig.aws_v1, "v1old": rig.aws_v1_old, "v2": rig.aws_v2}[aws_variant]
        wrapper.write_text(f'#!/bin/sh\nPATH="{env["PATH"]}"\nexport PATH\nexec {real} "$@"\n')
        wrapper.chmod(0o755)
        env["PATH"] = f"{wrapper.parent}:{env['PATH']}"
    rig.fault("SendSSHPublicKey", delay=2.0)
    res = ssh(rig, home, pyz, iid, "echo ordered", env=env)
    assert res.returncode == 0, res.stderr
    assert res.stdout == "ordered\n"
    (push,) = rig.calls("SendSSHPublicKey")
    (session,) = [c for c in rig.plugin_calls() if c.get("target") == iid]
    (first_in,) = [c for c in rig.plugin_stdin_calls() if c["session_id"] == session["session_id"]]
    assert first_in["t"] >= push["t"] + 2.0, "a byte from ssh reached the plugin before the push was answered"


def test_repeat_connect_reuses_the_key_push(rig: Rig, home: Home, pyz: Path) -> None:
    iid = rig.add_instance()
    assert ssh(rig, home, pyz, iid, "true").returncode == 0
    rig.clear_calls()
    res = ssh(rig, home, pyz, iid, "echo again")
    assert res.returncode == 0, res.stderr
    assert res.stdout == "again\n"
    assert actions(rig) == ["StartSession"], "a repeat connect is the session alone"
    # A new key pair means a new push.
    for f in (home.key, home.pub):
        f.unlink()
    subprocess.run(["ssh-keygen", "-t", "ed25519", "-N", "", "-q", "-f", str(home.key)], check=True)
    rig.clear_calls()
    res = ssh(rig, home, pyz, iid, "echo rekeyed")
    assert res.returncode == 0, res.stderr
    assert "SendSSHPublicKey" in actions(rig)


def test_expired_push_record_is_not_reused(rig: Rig, home: Home, pyz: Path) -> None:
    iid = rig.add_instance()
    assert ssh(rig, home, pyz, iid, "true").returncode == 0
    cache = home.path / ".cache" / "cloudx-proxy"
    records = list(cache.glob(f"push-*{iid}*.json"))
    assert len(records) == 1
    old = time.time() - 120
    os.utime(records[0], (old, old))
    text = records[0].read_text()
    records[0].write_text(re.sub(r'"t": [0-9.]+', f'"t": {old}', text))
    rig.clear_calls()
    assert ssh(rig, home, pyz, iid, "true").returncode == 0
    assert "SendSSHPublicKey" in actions(rig)


def test_refused_session_on_a_reused_push_checks_the_instance(rig: Rig, home: Home, pyz: Path) -> None:
    """A fresh push record is no proof: a session refused before any byte sends the connect down the full path."""
    iid = rig.add_instance()
    assert ssh(rig, home, pyz, iid, "true").returncode == 0
    rig.set_instance(iid, ssm="ConnectionLost")  # the agent drops: StartSession is refused
    rig.clear_calls()
    res = ssh(rig, home, pyz, iid, "true", args="--timeout 3")
    assert res.returncode != 0
    assert "ConnectionLost" in res.stderr and "SSM agent" in res.stderr, res.stderr
    acts = actions(rig)
    assert acts[0] == "StartSession", "the record was tried first"
    assert "SendSSHPublicKey" in acts and "DescribeInstanceInformation" in acts, "then checked, not trusted"
    assert "StartInstances" not in acts


def test_scp_round_trip_with_checksum(rig: Rig, home: Home, pyz: Path, tmp_path: Path) -> None:
    iid = rig.add_instance()
    data = os.urandom(5_000_000)
    src = tmp_path / "blob.bin"
    src.write_bytes(data)
    proxy = f"{sys.executable} {pyz} connect %h %p"
    base = rig.ssh_argv(home, iid, proxy)[1:-1]  # the -o options, without "ssh" and the host
    env = rig.env(home)
    up = subprocess.run(
        ["scp", *base, str(src), f"{iid}:/tmp/blob-{iid}.bin"], env=env, capture_output=True, text=True, timeout=120
    )
    assert up.returncode == 0, up.stderr
    res = ssh(rig, home, pyz, iid, f"sha256sum /tmp/blob-{iid}.bin")
    assert res.stdout.split()[0] == hashlib.sha256(data).hexdigest()
    back = tmp_path / "back.bin"
    down = subprocess.run(
        ["scp", *base, f"{iid}:/tmp/blob-{iid}.bin", str(back)], env=env, capture_output=True, text=True, timeout=120
    )
    assert down.returncode == 0, down.stderr
    assert back.read_bytes() == data


def test_during_a_session_the_proxy_pid_is_the_plugin(rig: Rig, home: Home, pyz: Path, aws_variant: str) -> None:
    """The process ssh started execs the real plugin: no python or aws process of the connect stays."""
    iid = rig.add_instance()
    # the session lasts until the test closes ssh's stdin, however long the checks take under load
    argv = rig.ssh_argv(home, iid, f"{sys.executable} {pyz} connect %h %p", "echo ready; cat >/dev/null")
    proc = subprocess.Popen(
        argv,
        env=rig.env(home, aws_variant),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None and proc.stdin is not None
        assert proc.stdout.readline() == "ready\n"
        tree = live(descendants(proc.pid))
        assert len(tree) == 1, [cmdline(p) for p in tree]
        assert "session-manager-plugin" in cmdline(tree[0]) and f'"Target": "{iid}"' in cmdline(tree[0])
        (call,) = rig.plugin_calls()
        assert call["pid"] == tree[0] and call["ppid"] == proc.pid, "the plugin runs in the pid ssh started"
        assert call["form"] == ("env" if aws_variant == "v1" else "arg"), "as this aws CLI passes the answer"
        ours = [
            p for p in live_pids()
            if p != proc.pid and (str(pyz) in cmdline(p) or ("start-session" in cmdline(p) and iid in cmdline(p)))
        ]  # fmt: skip
        assert ours == [], [cmdline(p) for p in ours]
    finally:
        proc.stdin.close()  # the remote `cat` ends, and the session with it
        proc.wait(timeout=30)
    assert proc.returncode == 0


# --- cold path -----------------------------------------------------------------
def test_cold_connect_from_stopped(rig: Rig, home: Home, pyz: Path, aws_variant: str) -> None:
    iid = rig.add_instance(state="stopped", pending_seconds=1, online_delay=3)
    res = ssh(rig, home, pyz, iid, "echo up", aws=aws_variant)
    assert res.returncode == 0, res.stderr
    assert res.stdout == "up\n"
    assert f"Starting instance {iid}..." in res.stderr
    assert "Waiting for SSM connectivity..." in res.stderr
    assert actions(rig).count("StartInstances") == 1
    assert rig.moto_state(iid) == "running"


def test_cold_connect_from_stopping(rig: Rig, home: Home, pyz: Path) -> None:
    iid = rig.add_instance(online_delay=1)
    rig.begin_stopping(iid)  # stopping until the test releases it
    # it saw "stopping" and waits for "stopped"
    res = ssh_released(
        rig, home, pyz, iid, "echo back", lambda: rig.wait_for_call("DescribeInstances", instance_id=iid)
    )
    assert res.returncode == 0, res.stderr
    assert res.stdout == "back\n"
    assert "stopping" in res.stderr
    assert f"Starting instance {iid}..." in res.stderr


def test_connect_waits_for_a_pending_instance(rig: Rig, home: Home, pyz: Path) -> None:
    """Someone else started it: pending until the test says so, however slow the machine."""
    iid = rig.add_instance(state="stopped")
    rig.moto_client("ec2").start_instances(InstanceIds=[iid])
    rig.set_instance(iid, started_now=True, hold="pending")
    # the push is refused, then the wait's first probe too
    res = ssh_released(
        rig, home, pyz, iid, "echo ok", lambda: rig.wait_for_call("SendSSHPublicKey", instance_id=iid, count=2)
    )
    assert res.returncode == 0, res.stderr
    assert res.stdout == "ok\n"
    assert "Waiting for SSM connectivity..." in res.stderr
    assert f"Starting instance {iid}" not in res.stderr, "it was pending: started by someone else"


def test_session_retried_when_the_agent_flaps(rig: Rig, home: Home, pyz: Path) -> None:
    iid = rig.add_instance(state="stopped", online_delay=1, flap=2)
    res = ssh(rig, home, pyz, iid, "echo steady")
    assert res.returncode == 0, res.stderr
    assert res.stdout == "steady\n"
    acts = actions(rig)  # the first StartSession went beside the refused push
    assert acts[acts.index("StartInstances") :].count("StartSession") == 3, acts
    assert "TargetNotConnected" not in res.stderr, "retried quietly"


# --- errors --------------------------------------------------------------------
def test_timeout_waiting_for_online_names_the_vscode_setting(rig: Rig, home: Home, pyz: Path) -> None:
    iid = rig.add_instance(state="stopped", online_delay=600)
    started = time.monotonic()
    res = connect(rig, home, pyz, iid, "--timeout", "4")
    assert res.returncode == 1
    assert time.monotonic() - started < 30
    assert res.stdout == ""
    assert "timed out" in res.stderr and "remote.SSH.connectTimeout" in res.stderr
    assert len(res.stderr.strip().splitlines()[-1]) > 0


def test_ssm_offline_on_a_running_instance(rig: Rig, home: Home, pyz: Path) -> None:
    iid = rig.add_instance(ssm="ConnectionLost")
    res = connect(rig, home, pyz, iid, "--timeout", "3")
    assert res.returncode == 1
    assert "ConnectionLost" in res.stderr and "SSM agent" in res.stderr
    assert "StartInstances" not in actions(rig)


def test_unknown_instance(rig: Rig, home: Home, pyz: Path) -> None:
    res = connect(rig, home, pyz, "i-0aaaaaaaaaaaaaaaa")
    assert res.returncode == 1
    assert "instance i-0aaaaaaaaaaaaaaaa not found in region eu-west-1" in res.stderr
    assert "Traceback" not in res.stderr


def test_terminated_instance(rig: Rig, home: Home, pyz: Path) -> None:
    iid = rig.add_instance()
    rig.moto_client("ec2").terminate_instances(InstanceIds=[iid])
    res = connect(rig, home, pyz, iid)
    assert res.returncode == 1
    assert f"instance {iid} is terminated" in res.stderr


def test_access_denied_names_the_permission(rig: Rig, home: Home, pyz: Path) -> None:
    iid = rig.add_instance()
    rig.fault("SendSSHPublicKey", "AccessDeniedException", "User is not authorized", count=5)
    res = connect(rig, home, pyz, iid)
    assert res.returncode == 1
    assert "ec2-instance-connect:SendSSHPublicKey" in res.stderr
    assert not rig.plugin_calls(), "a session that started beside the refused push is never handed to the plugin"
    assert actions(rig).count("StartSession") <= 1


def test_no_credentials(rig: Rig, home: Home, pyz: Path) -> None:
    (home.path / ".aws" / "credentials").write_text("")
    res = connect(rig, home, pyz, rig.add_instance())
    assert res.returncode == 1
    assert "no AWS credentials for profile 'cloudX'" in res.stderr
    assert "aws configure --profile cloudX" in res.stderr


def test_unknown_profile_fails_before_any_aws_call(rig: Rig, home: Home, pyz: Path) -> None:
    res = connect(rig, home, pyz, rig.add_instance(), "--profile", "nosuch")
    assert res.returncode == 1
    assert "AWS profile 'nosuch' not found" in res.stderr
    assert rig.calls() == []


def test_expired_sso_login_fails_at_once(rig: Rig, home: Home, pyz: Path) -> None:
    (home.path / ".aws" / "config").write_text(
        "[profile cloudX]\nsso_session = corp\nsso_account_id = 123456789012\nsso_role_name = Dev\nregion = eu-west-1\n"
        "[sso-session corp]\nsso_start_url = https://corp.awsapps.com/start\nsso_region = eu-west-1\n"
    )
    cache = home.path / ".aws" / "sso" / "cache"
    cache.mkdir(parents=True)
    (cache / (hashlib.sha1(b"corp").hexdigest() + ".json")).write_text(
        '{"accessToken": "x", "expiresAt": "2020-01-01T00:00:00Z", "region": "eu-west-1"}'
    )
    res = connect(rig, home, pyz, rig.add_instance())
    assert res.returncode == 1
    assert "aws sso login --profile cloudX" in res.stderr
    assert rig.calls() == [], "no aws process, no API call"


def test_plugin_missing_is_reported_before_the_session(rig: Rig, home: Home, pyz: Path) -> None:
    iid = rig.add_instance()
    env = rig.env(home)
    env["PATH"] = ":".join(p for p in env["PATH"].split(":") if p != str(rig.bin_dir))
    res = connect(rig, home, pyz, iid, env=env)
    assert res.returncode == 1
    assert "session-manager-plugin was not found" in res.stderr
    assert "/usr/local/sessionmanagerplugin/bin" in res.stderr, "says where it looked"
    assert rig.calls() == []


def test_aws_found_off_path_in_a_standard_place(rig: Rig, home: Home, pyz: Path) -> None:
    """A GUI-started ssh has a short PATH: aws is still found where installers put it."""
    if not os.path.exists("/usr/bin/aws"):
        pytest.skip("needs an aws CLI in /usr/bin (Debian's awscli)")
    iid = rig.add_instance()
    env = rig.env(home, "v2")
    env["PATH"] = str(rig.bin_dir)  # the plugin only: no aws on PATH at all
    env["AWS_ENDPOINT_URL"] = rig.endpoint_url
    res = connect(rig, home, pyz, iid, "--dry-run", env=env)
    assert res.returncode == 0
    assert "aws: /usr/bin/aws" in res.stderr


def test_aws_env_directory(rig: Rig, home: Home, pyz: Path) -> None:
    iid = rig.add_instance()
    env_dir = home.path / ".aws" / "aws-envs" / "prod"
    env_dir.mkdir(parents=True)
    for name in ("config", "credentials"):
        text = (home.path / ".aws" / name).read_text().replace("cloudX", "prodprofile")
        (env_dir / name).write_text(text)
        (home.path / ".aws" / name).write_text("")
    res = ssh(rig, home, pyz, iid, "echo prod", args="--profile prodprofile --aws-env prod")
    assert res.returncode == 0, res.stderr
    assert res.stdout == "prod\n"
    res = connect(rig, home, pyz, iid, "--aws-env", "staging")
    assert res.returncode == 1
    assert "aws-envs/staging does not exist" in res.stderr


def test_region_from_profile_env_and_flag(rig: Rig, tmp_path: Path, pyz: Path) -> None:
    iid = rig.add_instance(region="us-east-1")
    home = rig.make_home(tmp_path / "h", region="us-east-1")
    assert ssh(rig, home, pyz, iid, "true").returncode == 0
    other = rig.make_home(tmp_path / "h2", region="eu-west-1")
    res = connect(rig, other, pyz, iid)
    assert "not found in region eu-west-1" in res.stderr
    assert ssh(rig, other, pyz, iid, "true", args="--region us-east-1").returncode == 0
    env = rig.env(other)
    env["AWS_DEFAULT_REGION"] = "us-east-1"
    assert ssh(rig, other, pyz, iid, "true", env=env).returncode == 0


# --- dry run, input validation, entry points -------------------------------------
def test_dry_run_needs_no_aws_cli(tmp_path: Path, pyz: Path) -> None:
    env = {"PATH": str(tmp_path / "nothing"), "HOME": str(tmp_path)}
    res = subprocess.run(
        [sys.executable, "-S", str(pyz), "connect", "i-0123456789abcdef0", "2222", "--dry-run"],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert res.returncode == 0, res.stderr
    assert res.stdout == ""
    assert "ssm start-session --target i-0123456789abcdef0 --document-name AWS-StartSSHSession" in res.stderr
    assert "portNumber=2222" in res.stderr
    assert "ec2 start-instances" in res.stderr


BAD_INPUTS = [
    ["i-123"],
    ["i-0123456789abcdef0", "0"],
    ["i-0123456789abcdef0", "70000"],
    ["i-0123456789abcdef0", "22;id"],
    ["i-0123456789abcdef0", "--profile", "a b"],
    ["i-0123456789abcdef0", "--profile", "$(id)"],
    ["i-0123456789abcdef0", "--region", "eu-west-1;id"],
    ["i-0123456789abcdef0", "--ssh-key", "../id_rsa"],
    ["i-0123456789abcdef0", "--aws-env", "../../etc"],
    ["i-0123456789abcdef0", "--user", "root;id"],
    ["i-0123456789abcdef0", "--timeout", "soon"],
    ["I-0123456789ABCDEFG"],
    [],
    ["i-0123456789abcdef0", "--bogus"],
]


@pytest.mark.parametrize("args", BAD_INPUTS, ids=lambda a: " ".join(a) or "nothing")
def test_bad_input_exits_2_with_one_line(rig: Rig, home: Home, pyz: Path, args: list[str]) -> None:
    res = connect(rig, home, pyz, *args)
    assert res.returncode == 2
    assert res.stdout == ""
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("cloudx-proxy: error:"), res.stderr
    assert rig.calls() == []


def test_entry_points_agree(pyz: Path, tmp_path: Path) -> None:
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path)}
    ways = [
        [sys.executable, str(pyz)],
        [sys.executable, str(ROOT / "cloudx_proxy.py")],
        [sys.executable, "-m", "cloudx_proxy"],
    ]
    outs = []
    for way in ways:
        v = subprocess.run([*way, "--version"], env=env, cwd=ROOT, capture_output=True, text=True, timeout=30)
        bad = subprocess.run([*way, "connect", "nope"], env=env, cwd=ROOT, capture_output=True, text=True, timeout=30)
        outs.append((v.returncode, v.stdout, bad.returncode, bad.stderr))
    assert outs[0][0] == 0 and outs[0][1].startswith("cloudx-proxy ")
    assert outs[0][2] == 2
    assert outs[0] == outs[1] == outs[2]


def test_zipapp_build_is_reproducible(tmp_path: Path) -> None:
    a, b = tmp_path / "a.pyz", tmp_path / "b.pyz"
    for target in (a, b):
        subprocess.run([sys.executable, str(ROOT / "build_zipapp.py"), str(target)], check=True, capture_output=True)
        time.sleep(1.1)  # a build that stamped the time would differ
    assert a.read_bytes() == b.read_bytes()
    assert a.read_bytes().startswith(b"#!/usr/bin/env python3\n")


@pytest.mark.parametrize("version", ["3.9", "3.10", "3.11", "3.12", "3.13"])
def test_zipapp_runs_on_each_python(pyz: Path, tmp_path: Path, version: str) -> None:
    exe = find_python(version)
    if not exe:
        skip_or_fail(f"python{version} not installed")
    assert exe is not None
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    res = subprocess.run(
        [str(exe), str(pyz), "connect", "i-0123456789abcdef0", "--dry-run"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert res.returncode == 0, res.stderr
    assert "start-session" in res.stderr
    bad = subprocess.run([str(exe), str(pyz), "connect", "i-1"], env=env, capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2


def test_verbose_output_has_no_secrets(rig: Rig, home: Home, pyz: Path) -> None:
    iid = rig.add_instance()
    secret = re.search(r"aws_secret_access_key = (\S+)", (home.path / ".aws" / "credentials").read_text())
    assert secret
    res = ssh(rig, home, pyz, iid, "true", args="-v")
    assert res.returncode == 0, res.stderr
    assert "debug:" in res.stderr
    assert secret.group(1) not in res.stderr + res.stdout
    assert "PRIVATE KEY" not in res.stderr


def test_killed_lock_holder_does_not_block(rig: Rig, home: Home, pyz: Path) -> None:
    """A connect killed while holding the start lock leaves nothing that blocks the next one."""
    iid = rig.add_instance(state="stopped", online_delay=1)
    cache = home.path / ".cache" / "cloudx-proxy"
    cache.mkdir(parents=True, mode=0o700)
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import fcntl,os,sys,time; fd=os.open(sys.argv[1],os.O_RDWR|os.O_CREAT); "
            "fcntl.flock(fd,fcntl.LOCK_EX); print('locked',flush=True); time.sleep(60)",
            str(cache / f"lock-eu-west-1-{iid}"),
        ],
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "locked\n"
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait(timeout=10)
        res = ssh(rig, home, pyz, iid, "echo free")
        assert res.returncode == 0, res.stderr
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait()

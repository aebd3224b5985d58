"""Faults injected at the rig's endpoint, instance state changes, plugin failures and concurrency:
each test would fail without the behaviour it names."""

from __future__ import annotations

import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from helpers import actions, ssh
from rig import Home, Rig


@pytest.mark.parametrize("code,status", [("ThrottlingException", 400), ("InternalServerError", 500)])
def test_throttling_and_5xx_are_retried(rig: Rig, home: Home, pyz: Path, code: str, status: int) -> None:
    iid = rig.add_instance()
    rig.fault("SendSSHPublicKey", code, "slow down", status=status, count=2)
    rig.fault("StartSession", code, "slow down", status=status, count=1)
    res = ssh(rig, home, pyz, iid, "echo survived")
    assert res.returncode == 0, res.stderr
    assert res.stdout == "survived\n"
    assert actions(rig).count("SendSSHPublicKey") == 3
    assert actions(rig).count("StartSession") == 2


def test_throttling_that_outlasts_the_retries(rig: Rig, home: Home, pyz: Path) -> None:
    iid = rig.add_instance()
    rig.fault("SendSSHPublicKey", "ThrottlingException", "Rate exceeded", count=50)
    res = ssh(rig, home, pyz, iid, "true")
    assert res.returncode != 0
    lines = [ln for ln in res.stderr.splitlines() if ln.startswith("cloudx-proxy: error:")]
    assert len(lines) == 1 and "throttled SendSSHPublicKey" in lines[0]
    assert actions(rig).count("SendSSHPublicKey") == 5, "AWS_MAX_ATTEMPTS=5 in standard retry mode"


def test_a_hanging_endpoint_times_out_and_is_retried(rig: Rig, home: Home, pyz: Path) -> None:
    """The first key push hangs past --cli-read-timeout (20 s): the CLI gives up on it and retries."""
    iid = rig.add_instance()
    rig.fault("SendSSHPublicKey", delay=25, count=1)
    started = time.monotonic()
    res = ssh(rig, home, pyz, iid, "echo patient")
    assert res.returncode == 0, res.stderr
    assert 19 < time.monotonic() - started < 60


def test_credentials_expiring_between_calls(rig: Rig, home: Home, pyz: Path) -> None:
    iid = rig.add_instance(state="stopped", online_delay=1)
    rig.fault("StartInstances", "RequestExpired", "Request has expired.", count=5)
    res = ssh(rig, home, pyz, iid, "true")
    assert res.returncode != 0
    assert "the AWS credentials of profile 'cloudX' have expired" in res.stderr
    assert "aws sso login --profile cloudX" in res.stderr


@pytest.mark.parametrize("change", ["stopped", "terminated"])
def test_instance_changes_while_we_wait(rig: Rig, home: Home, pyz: Path, change: str) -> None:
    iid = rig.add_instance(state="stopped", online_delay=600)
    proc = subprocess.Popen(
        [sys.executable, str(pyz), "connect", iid],
        env=rig.env(home),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 60
        while "StartInstances" not in actions(rig):
            assert time.monotonic() < deadline and proc.poll() is None
            time.sleep(0.2)
        time.sleep(2)
        ec2 = rig.moto_client("ec2")
        (ec2.stop_instances if change == "stopped" else ec2.terminate_instances)(InstanceIds=[iid])
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 1
    assert f"instance {iid} became {change} while waiting" in err
    assert out == ""


@pytest.mark.parametrize("mode", ["early", "mid"])
def test_plugin_failure_reaches_ssh(rig: Rig, home: Home, pyz: Path, mode: str) -> None:
    iid = rig.add_instance()
    env = rig.env(home)
    env["RIG_PLUGIN_MODE"] = mode
    remote = "true" if mode == "early" else "head -c 200000 /dev/zero"
    res = ssh(rig, home, pyz, iid, remote, env=env)
    assert res.returncode != 0
    if mode == "early":
        assert "Cannot perform start session" in res.stderr
    # A key push kept from the failed session may make the next connect faster, never make it fail.
    res = ssh(rig, home, pyz, iid, "echo again")
    assert res.returncode == 0, res.stderr
    assert res.stdout == "again\n"


def test_ten_parallel_connects_start_the_instance_once(rig: Rig, home: Home, pyz: Path) -> None:
    iid = rig.add_instance(state="stopped", pending_seconds=1, online_delay=2)
    with ThreadPoolExecutor(10) as pool:
        results = list(pool.map(lambda n: ssh(rig, home, pyz, iid, f"echo {n}", timeout=300), range(10)))
    assert [r.returncode for r in results] == [0] * 10, [r.stderr for r in results if r.returncode]
    assert sorted(r.stdout for r in results) == sorted(f"{n}\n" for n in range(10))
    assert actions(rig).count("StartInstances") == 1


def test_two_setups_at_once_keep_both_hosts(rig: Rig, home: Home, pyz: Path) -> None:
    ids = [rig.add_instance(), rig.add_instance()]
    procs = [
        subprocess.Popen(
            [sys.executable, str(pyz), "setup", "--instance", iid, "--hostname", f"par{n}", "--yes"],
            env=rig.env(home),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        for n, iid in enumerate(ids)
    ]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [o[1] for o in outs]
    text = (home.ssh_dir / "config").read_text()
    assert f"Host cloudX-dev-par0\n    HostName {ids[0]}\n" in text
    assert f"Host cloudX-dev-par1\n    HostName {ids[1]}\n" in text
    assert text.count("Host cloudX-* cloudx-*\n") == 1 and text.count("Host cloudX-dev-* cloudx-dev-*\n") == 1
    assert (home.path / ".ssh" / "config").read_text().count("Include ") == 1


def test_malformed_aws_config_is_a_clear_error(rig: Rig, home: Home, pyz: Path) -> None:
    (home.path / ".aws" / "config").write_text("region = eu-west-1\n[profile cloudX\nregion=\n")
    res = subprocess.run(
        [sys.executable, str(pyz), "connect", rig.add_instance()],
        env=rig.env(home),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert res.returncode == 1
    assert "cannot read AWS config file" in res.stderr and "Traceback" not in res.stderr


def test_odd_main_ssh_config_gets_include_in_the_right_place(rig: Rig, home: Home, pyz: Path) -> None:
    main = home.path / ".ssh" / "config"
    original = (
        "\ufeff# top\r\nInclude ~/.ssh/conf.d/*\r\n\tServerAliveInterval=30\r\nhost=a*\r\n  User x\r\nMatch all\r\n"
    )
    main.write_bytes(original.encode())
    res = subprocess.run(
        [sys.executable, str(pyz), "setup", "--instance", rig.add_instance(), "--hostname", "odd", "--yes"],
        env=rig.env(home),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert res.returncode == 0, res.stderr
    text = main.read_bytes().decode()
    include = f"Include {home.ssh_dir / 'config'}\r\n\r\n"
    assert text == original.replace("host=a*", include + "host=a*")


def test_non_utf8_ssh_config_is_refused_unchanged(rig: Rig, home: Home, pyz: Path) -> None:
    main = home.path / ".ssh" / "config"
    main.write_bytes(b"Host x\n  User \xff\xfe\n")
    res = subprocess.run(
        [sys.executable, str(pyz), "setup", "--instance", rig.add_instance(), "--hostname", "u", "--yes"],
        env=rig.env(home),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert res.returncode == 1 and "not UTF-8" in res.stderr
    assert main.read_bytes() == b"Host x\n  User \xff\xfe\n"


def test_verbose_setup_and_doctor_print_no_secrets(rig: Rig, home: Home, pyz: Path) -> None:
    iid = rig.add_instance()
    creds = (home.path / ".aws" / "credentials").read_text()
    secret = creds.split("aws_secret_access_key = ")[1].split()[0]
    outputs = []
    for args in (["-v", "setup", "--instance", iid, "--hostname", "sec", "--yes"], ["-v", "doctor", "cloudX-dev-sec"]):
        res = subprocess.run(
            [sys.executable, str(pyz), *args],
            env=rig.env(home),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=240,
        )
        outputs.append(res.stdout + res.stderr)
    assert "debug:" in outputs[0]
    for out in outputs:
        assert secret not in out and "PRIVATE KEY" not in out


@pytest.mark.parametrize("start", ["stopped", "stopping"])
def test_cold_connect_without_describe_permission(rig: Rig, home: Home, pyz: Path, start: str) -> None:
    """The reference's minimal IAM policy has no ec2:DescribeInstances: connect still works."""
    iid = rig.add_instance(state="stopped" if start == "stopped" else "running", pending_seconds=1, online_delay=2)
    if start == "stopping":
        rig.begin_stopping(iid, seconds=6)
    rig.fault(
        "DescribeInstances", "UnauthorizedOperation", "You are not authorized to perform this operation.", count=1000
    )
    try:
        res = ssh(rig, home, pyz, iid, "echo minimal")
    finally:
        rig.clear_faults()
    assert res.returncode == 0, res.stderr
    assert res.stdout == "minimal\n"
    assert "StartInstances" in actions(rig)

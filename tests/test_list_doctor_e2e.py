"""list and doctor: hand-edited configs (pure parsing) and end to end against the rig."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import cli
from rig import Home, Rig

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import cloudx_proxy as cp  # noqa: E402

HAND_EDITED = (
    "\ufeff# Created by cloudX-proxy v0.1.0 on 2026-01-01 00:00:00\r\n"
    "# Configuration type: generic\r\n"
    "Host cloudX-*\r\n"
    "    User ec2-user\r\n"
    "\r\n"
    "Host cloudX-pre-prod-*\r\n"
    "    ProxyCommand python3 /x.pyz connect %h %p --profile pp --ssh-key key\r\n"
    "Host=cloudX-dev-*\r\n"
    '\tProxyCommand "python3" /x.pyz connect %h %p --profile devp --aws-env corp\r\n'
    "Host cloudX-dev-web # the web box\r\n"
    "    HostName i-0123456789abcdef0\r\n"
    "Host cloudX-pre-prod-api cloudX-pre-prod-api2\r\n"
    "    HostName=i-11111111\r\n"
    "host cloudX-dev-db\r\n"
    '  hostname "i-22222222"\r\n'
    "Host other\r\n"
    "  HostName 10.0.0.1\r\n"
    "Match host *.corp\r\n"
    "  User me\r\n"
)


def test_parse_hand_edited_config() -> None:
    parsed = cp.parse_cloudx_config(HAND_EDITED)
    hosts = {h["host"]: h for h in parsed["hosts"]}  # type: ignore[attr-defined]
    assert set(hosts) == {"cloudX-dev-web", "cloudX-pre-prod-api", "cloudX-pre-prod-api2", "cloudX-dev-db"}
    assert hosts["cloudX-dev-web"]["comment"] == "the web box"
    assert hosts["cloudX-pre-prod-api"]["environment"] == "pre-prod" and hosts["cloudX-pre-prod-api"]["name"] == "api"
    assert hosts["cloudX-dev-db"]["instance_id"] == "i-22222222"
    envs = parsed["environments"]
    assert envs["dev"]["options"] == {"profile": "devp", "aws-env": "corp"}  # type: ignore[index]
    assert envs["pre-prod"]["options"] == {"profile": "pp", "ssh-key": "key"}  # type: ignore[index]


def test_render_list_groups_and_sorts() -> None:
    text = cp.render_host_list(cp.parse_cloudx_config(HAND_EDITED), None, False)
    assert text.index("Environment: dev") < text.index("Environment: pre-prod")
    assert "  db (cloudX-dev-db, i-22222222)\n  web (cloudX-dev-web, i-0123456789abcdef0, the web box)\n" in text
    filtered = cp.render_host_list(cp.parse_cloudx_config(HAND_EDITED), "PRE-PROD", True)
    assert "Environment: dev" not in filtered and "api2 (cloudX-pre-prod-api2, i-11111111)" in filtered
    assert "profile: pp, key: key" in filtered and "Generic Patterns:" in filtered


def test_thousand_hosts_parse_quickly() -> None:
    text = "Host cloudX-*\n  User ec2-user\nHost cloudX-dev-*\n  ProxyCommand x connect %h %p\n" + "".join(
        f"Host cloudX-dev-h{i:04d}\n  HostName i-{i:08x}\n" for i in range(1000)
    )
    started = time.perf_counter()
    out = cp.render_host_list(cp.parse_cloudx_config(text), None, False)
    elapsed = time.perf_counter() - started
    assert out.count("(cloudX-dev-h") == 1000
    assert elapsed < 1.0, f"1,000 hosts took {elapsed:.2f} s"


def test_include_position() -> None:
    assert cp.include_position("Include /c\nHost a\n", "/c") == "before"
    assert cp.include_position("Host a\n  User b\nInclude /c\n", "/c") == "inside"
    assert cp.include_position("Host a\n", "/c") == "missing"


# --- end to end --------------------------------------------------------------------
@pytest.fixture
def configured(rig: Rig, home: Home, pyz: Path) -> tuple[Home, str]:
    """A HOME after a real setup of one healthy instance (host cloudX-dev-web)."""
    iid = rig.add_instance(tags={"Name": "web", "cloudxuser": "cloudX-dev-alice"})
    res = cli(rig, home, pyz, "setup", "--instance", iid, "--yes")
    assert res.returncode == 0, res.stderr
    rig.clear_calls()
    return home, iid


def test_list_after_setup(rig: Rig, configured: tuple[Home, str], pyz: Path) -> None:
    home, iid = configured
    res = cli(rig, home, pyz, "list")
    assert res.returncode == 0, res.stderr
    assert f"Environment: dev\n  web (cloudX-dev-web, {iid})\n" in res.stdout
    data = json.loads(cli(rig, home, pyz, "list", "--json").stdout)
    assert data["environments"][0]["hosts"][0]["instance_id"] == iid
    assert data["environments"][0]["profile"] == "cloudX"
    assert rig.calls() == [], "plain list asks AWS nothing"


def test_list_without_config(rig: Rig, home: Home, pyz: Path) -> None:
    res = cli(rig, home, pyz, "list")
    assert res.returncode == 1
    assert "setup" in res.stderr and res.stdout == ""


def test_list_status_uses_a_constant_number_of_calls(rig: Rig, configured: tuple[Home, str], pyz: Path) -> None:
    home, first = configured
    counts = []
    ids = [first]
    for n in (2, 4):
        while len(ids) < n:
            iid = rig.add_instance()
            res = cli(rig, home, pyz, "setup", "--instance", iid, "--hostname", f"h{len(ids)}", "--yes")
            assert res.returncode == 0, res.stderr
            if len(ids) % 2:
                rig.moto_client("ec2").stop_instances(InstanceIds=[iid])
            ids.append(iid)
        rig.clear_calls()
        res = cli(rig, home, pyz, "list", "--status", "--json")
        assert res.returncode == 0, res.stderr
        hosts = [h for e in json.loads(res.stdout)["environments"] for h in e["hosts"]]
        assert {h["instance_id"] for h in hosts} == set(ids)
        assert {h["state"] for h in hosts} <= {"running", "stopped"} and len({h["state"] for h in hosts}) == 2
        counts.append(sorted(c["action"] for c in rig.calls()))
    assert counts[0] == counts[1] == ["DescribeInstanceInformation", "DescribeInstances"]


def test_doctor_healthy(rig: Rig, configured: tuple[Home, str], pyz: Path) -> None:
    home, _ = configured
    res = cli(rig, home, pyz, "doctor", "cloudX-dev-web")
    assert res.returncode == 0, res.stdout + res.stderr
    assert "FAIL" not in res.stdout.replace(", 0 FAIL", "")
    assert "ok    ssm: PingStatus Online" in res.stdout
    assert "ok    credentials: arn:aws:iam::" in res.stdout
    # The cache dir is ours and private; Debian 12's OpenSSH 9.2 carries the CVE-2023-51385 fix.
    assert f"ok    cache dir: {home.path / '.cache' / 'cloudx-proxy'} (0700)" in res.stdout
    assert "ok    ssh version: OpenSSH_" in res.stdout or "warn  ssh version: OpenSSH_" in res.stdout
    data = json.loads(cli(rig, home, pyz, "doctor", "cloudX-dev-web", "--json").stdout)
    assert {f["check"] for f in data} >= {
        "python",
        "aws",
        "session-manager-plugin",
        "key",
        "include",
        "instance",
        "ssm",
    }


def _doctor(rig: Rig, home: Home, pyz: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return cli(rig, home, pyz, "doctor", "cloudX-dev-web", env=env)


def test_doctor_plugin_missing(rig: Rig, configured: tuple[Home, str], pyz: Path) -> None:
    home, _ = configured
    env = rig.env(home)
    env["PATH"] = ":".join(p for p in env["PATH"].split(":") if p != str(rig.bin_dir))
    res = _doctor(rig, home, pyz, env)
    assert res.returncode == 1 and "FAIL  session-manager-plugin: not found" in res.stdout


def test_doctor_expired_credentials(rig: Rig, configured: tuple[Home, str], pyz: Path) -> None:
    home, _ = configured
    rig.fault("GetCallerIdentity", "ExpiredToken", "The security token included in the request is expired")
    res = _doctor(rig, home, pyz)
    assert (
        res.returncode == 1 and "FAIL  credentials: the AWS credentials of profile 'cloudX' have expired" in res.stdout
    )


def test_doctor_key_permissions(rig: Rig, configured: tuple[Home, str], pyz: Path) -> None:
    home, _ = configured
    os.chmod(home.key, 0o644)
    res = _doctor(rig, home, pyz)
    assert res.returncode == 1 and "FAIL  key:" in res.stdout and f"chmod 600 {home.key}" in res.stdout


def test_doctor_include_missing(rig: Rig, configured: tuple[Home, str], pyz: Path) -> None:
    home, _ = configured
    (home.path / ".ssh" / "config").write_text("Host elsewhere\n  User x\n")
    res = _doctor(rig, home, pyz)
    assert res.returncode == 1 and "FAIL  include:" in res.stdout


def test_doctor_instance_stopped_and_ssm_offline(rig: Rig, configured: tuple[Home, str], pyz: Path) -> None:
    home, iid = configured
    rig.set_instance(iid, ssm="ConnectionLost")
    res = _doctor(rig, home, pyz)
    assert res.returncode == 1 and "FAIL  ssm: PingStatus ConnectionLost" in res.stdout
    rig.set_instance(iid, ssm=None)
    rig.moto_client("ec2").stop_instances(InstanceIds=[iid])
    res = _doctor(rig, home, pyz)
    assert f"warn  instance: {iid} is stopped" in res.stdout


def test_doctor_wrong_owner_tag(rig: Rig, home: Home, pyz: Path) -> None:
    iid = rig.add_instance(tags={"cloudxuser": "cloudX-dev-bob"})
    assert cli(rig, home, pyz, "setup", "--instance", iid, "--hostname", "web", "--yes").returncode == 0
    res = _doctor(rig, home, pyz)
    assert "FAIL  cloudxuser tag: the instance belongs to cloudX-dev-bob, you are cloudX-dev-alice" in res.stdout

"""End-to-end tests of how a connect ends: stale beliefs, ssh going away, retries, the path without exec.

Real ssh, the real aws CLI and the rig (docs/test-rig.md). ``CLOUDX_PROXY_NO_HANDOFF=1``
selects the path Windows takes (the session runs under aws, and we wait for it)
on Linux, so that it is tested too.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import helpers
import pytest
from helpers import GONE_WITHIN, NATURAL_END, actions, marked_processes, wait_for, wait_gone
from rig import Home, Rig, cmdline, descendants

NO_HANDOFF = {"CLOUDX_PROXY_NO_HANDOFF": "1"}


def ssh_argv(rig: Rig, home: Home, pyz: Path, iid: str, *remote: str, args: str = "") -> list[str]:
    return rig.ssh_argv(home, iid, f"{sys.executable} {pyz} connect %h %p {args}".strip(), *remote)


def env_for(rig: Rig, home: Home, handoff: bool) -> dict[str, str]:
    env = rig.env(home)
    if not handoff:
        env.update(NO_HANDOFF)
    return env


def ssh(
    rig: Rig, home: Home, pyz: Path, iid: str, *remote: str, handoff: bool = True, args: str = ""
) -> subprocess.CompletedProcess[str]:
    """helpers.ssh(), on the hand-off path or (handoff=False) the path Windows takes."""
    return helpers.ssh(rig, home, pyz, iid, *remote, args=args, env=env_for(rig, home, handoff))


def stop(rig: Rig, iid: str) -> None:
    """Stop the instance behind our back (idle auto-stop, a colleague, poweroff)."""
    rig.moto_client("ec2").stop_instances(InstanceIds=[iid])
    assert rig.moto_state(iid) == "stopped"


def reconnect_after_stop(
    rig: Rig, home: Home, pyz: Path, iid: str
) -> tuple[subprocess.CompletedProcess[str], list[str]]:
    """Stop the instance behind our back, then connect: it succeeds; its result and API calls."""
    stop(rig, iid)
    rig.clear_calls()
    res = ssh(rig, home, pyz, iid, "echo back")
    assert res.returncode == 0, res.stderr
    assert res.stdout == "back\n"
    return res, actions(rig)


# --- processes -------------------------------------------------------------------
def connect_processes(rig: Rig, marks: list[str], known: set[int]) -> list[int]:
    """Live (not zombie) processes of one connect: known pids, or naming its instance or HOME on
    their command line or in their environment; not the rig's own (an sshd per instance)."""
    return marked_processes(marks, known, skip=[p.pid for p in rig.procs])


# --- 1. a fresh key-push record is no proof -------------------------------------------
def test_reconnect_after_a_stop_within_the_reuse_window(rig: Rig, home: Home, pyz: Path) -> None:
    iid = rig.add_instance(online_delay=1)
    assert ssh(rig, home, pyz, iid, "true").returncode == 0
    assert list((home.path / ".cache" / "cloudx-proxy").glob(f"push-*{iid}*")), "a fresh push record"
    res, acts = reconnect_after_stop(rig, home, pyz, iid)
    assert acts[0] == "StartSession" and acts.count("StartInstances") == 1, acts
    assert "TargetNotConnected" not in res.stderr, "the refusal is handled, not shown"


def test_five_concurrent_reconnects_after_a_stop_no_handoff(rig: Rig, home: Home, pyz: Path) -> None:
    """VSCode reconnecting several times at once: all succeed, one StartInstances (on the path without exec)."""
    iid = rig.add_instance(pending_seconds=1, online_delay=2)
    assert ssh(rig, home, pyz, iid, "true", handoff=False).returncode == 0
    stop(rig, iid)
    rig.clear_calls()
    with ThreadPoolExecutor(5) as pool:
        results = list(pool.map(lambda n: ssh(rig, home, pyz, iid, f"echo {n}", handoff=False), range(5)))
    assert [r.returncode for r in results] == [0] * 5, [r.stderr for r in results if r.returncode]
    assert sorted(r.stdout for r in results) == [f"{n}\n" for n in range(5)]
    assert actions(rig).count("StartInstances") == 1


def test_a_cold_connect_right_after_another_ignores_its_stale_online(rig: Rig, home: Home, pyz: Path) -> None:
    """The last connect started the instance and saw it Online seconds ago; it was stopped since.

    Neither belief holds: no session on that Online, no waiting for that start.
    """
    iid = rig.add_instance(state="stopped", pending_seconds=1, online_delay=2)
    assert ssh(rig, home, pyz, iid, "true").returncode == 0
    cache = home.path / ".cache" / "cloudx-proxy"
    assert list(cache.glob(f"online-*{iid}")), "the first connect polled and saw Online"
    for record in cache.glob("push-*"):
        record.unlink()  # a first connect: only the Online marker is left to believe
    res, acts = reconnect_after_stop(rig, home, pyz, iid)
    after_start = acts[acts.index("StartInstances") :]  # the first StartSession went beside the refused push
    assert acts.count("StartInstances") == 1 and after_start.count("StartSession") == 1, acts
    assert "being started by another connection" not in res.stderr, "that start was over: Online came after it"
    assert after_start.index("StartSession") > after_start.index("DescribeInstanceInformation"), "Online seen anew"


# --- 2. ssh going away ---------------------------------------------------------------
PHASES = ["checks", "cold wait", "session"]


@pytest.mark.parametrize(
    "phase,sig,handoff",
    [
        ("checks", signal.SIGTERM, True),
        ("checks", signal.SIGHUP, False),
        ("cold wait", signal.SIGTERM, False),
        ("cold wait", signal.SIGHUP, True),
        ("session", signal.SIGTERM, True),
        ("session", signal.SIGHUP, False),
    ],
    ids=lambda v: getattr(v, "name", str(v)),
)
def test_ssh_going_away_stops_every_process(
    rig: Rig, home: Home, pyz: Path, phase: str, sig: signal.Signals, handoff: bool
) -> None:
    """Killed while connecting, ssh sends no signal (only its pipes close); in a session it hangs up on us."""
    if phase == "checks":
        iid = rig.add_instance()
        rig.fault("SendSSHPublicKey", delay=NATURAL_END, count=1)  # the key push (the check) hangs
        ready = lambda: "SendSSHPublicKey" in actions(rig)  # noqa: E731
        remote: tuple[str, ...] = ("true",)
    elif phase == "cold wait":
        iid = rig.add_instance(state="stopped", online_delay=600)
        ready = lambda: "StartInstances" in actions(rig)  # noqa: E731 - the wait has begun
        remote = ("true",)
    else:
        iid = rig.add_instance()
        remote = (f"echo ready; sleep {NATURAL_END:.0f}",)
    proc = subprocess.Popen(
        ssh_argv(rig, home, pyz, iid, *remote),
        env=env_for(rig, home, handoff),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    marks = [iid, str(home.path)]
    try:
        if phase == "session":
            assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
        else:
            wait_for(phase, lambda: ready() or proc.poll() is not None)
        assert proc.poll() is None, proc.communicate()[1]
        tree = set(descendants(proc.pid))
        runs = "session-manager-plugin" if phase == "session" and handoff else "connect"
        assert any(runs in cmdline(p) for p in tree), f"the ProxyCommand runs {runs}"
        os.kill(proc.pid, sig)
        proc.communicate(timeout=30)
        # Nothing would end them by itself for NATURAL_END s: the wait is bounded for load only.
        left, gone_at = wait_gone(lambda: connect_processes(rig, marks, tree))
        assert not left, (f"still running {GONE_WITHIN:.0f} s after ssh went away", [cmdline(p) for p in left])
        # No API call after ssh went away: a call needs a live process with this HOME (its aws
        # credentials), and none is left; no window of time to watch the log for.
        assert gone_at and not connect_processes(rig, marks, tree)
    finally:
        for pid in connect_processes(rig, marks, set()):
            os.kill(pid, signal.SIGKILL)
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
        rig.clear_faults()


# --- 3. retries and refused keys -------------------------------------------------------
def test_a_retry_after_a_late_boot_pushes_the_key_again(rig: Rig, home: Home, pyz: Path) -> None:
    """The agent drops three times right after boot; by the last retry the first push has expired."""
    iid = rig.add_instance(state="stopped", online_delay=1, flap=3)
    rig.knobs(key_ttl=6)
    try:
        res = ssh(rig, home, pyz, iid, "echo late")
    finally:
        rig.knobs(key_ttl=60)
    assert res.returncode == 0, res.stderr
    assert res.stdout == "late\n"
    acts = actions(rig)
    acts = acts[acts.index("StartInstances") :]  # the first StartSession went beside the refused push
    first_session = acts.index("StartSession")
    assert acts.count("StartSession") == 4
    assert acts[first_session:].count("SendSSHPublicKey") >= 3, acts


def test_a_refused_key_on_a_reused_push_is_forgotten(rig: Rig, home: Home, pyz: Path) -> None:
    """ssh's authentication fails on a key push we reused (the key is gone): the next connect pushes again."""
    iid = rig.add_instance()
    assert ssh(rig, home, pyz, iid, "true").returncode == 0
    for keys in (rig.keys_root / iid).iterdir():
        keys.unlink()  # as if the key had expired or the instance had been replaced; our record does not know
    res = ssh(rig, home, pyz, iid, "true")
    assert res.returncode == 255 and "Permission denied" in res.stderr, res.stderr
    cache = home.path / ".cache" / "cloudx-proxy"
    wait_for("the watcher to forget the push", lambda: not list(cache.glob(f"push-*{iid}*")), timeout=10)
    rig.clear_calls()
    res = ssh(rig, home, pyz, iid, "echo pushed")
    assert res.returncode == 0, res.stderr
    assert "SendSSHPublicKey" in actions(rig)


# --- 6. the path without exec ---------------------------------------------------------------
def test_no_handoff_path_warm_and_cold(rig: Rig, home: Home, pyz: Path) -> None:
    """Windows' path (the session runs under aws; we wait for it), selected on Linux for tests."""
    iid = rig.add_instance(state="stopped", pending_seconds=1, online_delay=2)
    res = ssh(rig, home, pyz, iid, "echo cold", handoff=False)
    assert res.returncode == 0, res.stderr
    assert res.stdout == "cold\n" and f"Starting instance {iid}..." in res.stderr
    cache = home.path / ".cache" / "cloudx-proxy"
    for record in cache.glob("push-*"):
        record.unlink()  # a first connect
    rig.clear_calls()
    res = ssh(rig, home, pyz, iid, "echo warm", handoff=False)
    assert res.returncode == 0, res.stderr
    assert res.stdout == "warm\n"
    assert sorted(actions(rig)) == ["SendSSHPublicKey", "StartSession"]

"""The edges of a connect (issue 24), through real ssh, the real aws CLIs and the rig.

- No SSH byte reaches the instance before the key push has returned, whatever runs the plugin.
- Every StartSession that succeeded is handed to a plugin or terminated.
- Every wait (a lock too) notices ssh going away.
- The stand-in is never taken for the real plugin, and never runs itself.
- The plugin starts as aws would start it (signals, descriptors).
- No traceback, whatever signal comes when; nothing of ours left.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import live, ssh_released, wait_for
from rig import Home, Rig, cmdline, descendants

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
import cloudx_proxy as cp  # noqa: E402

AWS = ["v1", "v1old", "v2"]
FRONTS = ("itself", "wrapper", "bypass")


def proxy(pyz: Path, args: str = "") -> str:
    return f"{sys.executable} {pyz} connect %h %p {args}".strip()


def real_aws(rig: Rig, variant: str) -> str:
    path = {"v1": rig.aws_v1, "v1old": rig.aws_v1_old, "v2": rig.aws_v2}[variant]
    if path is None:
        from conftest import skip_or_fail

        skip_or_fail(f"aws {variant} is not installed")
    assert path is not None
    return path


def front_aws(rig: Rig, env: dict[str, str], variant: str, kind: str, where: Path) -> None:
    """Put something in front of aws on env's PATH: "itself" (nothing), "wrapper" (a /bin/sh script
    that logs and execs aws: PATH kept, the stand-in is reached), "bypass" (a shim that sets its
    own PATH, as version managers do: aws runs the real plugin itself)."""
    real = real_aws(rig, variant)
    if kind == "itself":
        return
    where.mkdir(parents=True, exist_ok=True)
    script = where / "aws"
    if kind == "wrapper":
        script.write_text(f'#!/bin/sh\necho "aws $1 $2" >> "{where}/log"\nexec {real} "$@"\n')
    else:
        script.write_text(f'#!/bin/sh\nPATH="{env["PATH"]}"\nexport PATH\nexec {real} "$@"\n')
    script.chmod(0o755)
    env["PATH"] = f"{where}:{env['PATH']}"


def run_ssh(rig: Rig, home: Home, pyz: Path, iid: str, remote: str, env: dict[str, str], args: str = "") -> tuple:
    res = subprocess.run(
        rig.ssh_argv(home, iid, proxy(pyz, args), remote), env=env, capture_output=True, text=True, timeout=180
    )
    return res.returncode, res.stdout, res.stderr


def alive(pid: int) -> bool:
    return bool(live([pid]))


def ours(rig: Rig, iid: str, skip: set[int] = frozenset()) -> list[int]:  # type: ignore[assignment]
    """Live processes naming the instance (our connect, aws, the plugin, sh), but the rig, us and `skip`."""
    mine = {os.getpid(), *(p.pid for p in rig.procs), *skip}
    return [
        int(e) for e in os.listdir("/proc")
        if e.isdigit() and int(e) not in mine and iid in cmdline(int(e)) and alive(int(e))
    ]  # fmt: skip


def kill_group(proc: subprocess.Popen) -> None:  # type: ignore[type-arg]
    """Kill what is left of a process group the test started (by its leader's pid), and reap the leader."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


def open_sessions(rig: Rig, iid: str) -> list[str]:
    return [sid for sid, s in rig.sessions().items() if s["target"] == iid and not s["terminated"]]


# --- 1. no SSH byte before the key -------------------------------------------------------
# Every aws with aws itself, a wrapper and a shim; the wrapper cases each with an odd cache path.
ODD_CACHE = {"v1": "colon:dir", "v1old": "dollar$HOME", "v2": "a space"}
CASES = [(aws, front, ODD_CACHE[aws] if front == "wrapper" else "plain") for aws in AWS for front in FRONTS]


@pytest.mark.parametrize(("aws", "front", "cache"), CASES, ids=["-".join(c) for c in CASES])
def test_no_ssh_byte_reaches_the_instance_before_the_key_push_returns(
    rig: Rig, home: Home, pyz: Path, tmp_path: Path, aws: str, front: str, cache: str
) -> None:
    """The push takes 3 s, and the instance has no key until it returns: ssh logs in all the same.

    The plugin may start before (aws runs it itself behind a shim), but its first byte from
    ssh comes after the push's answer.
    """
    env = rig.env(home, aws)
    front_aws(rig, env, aws, front, tmp_path / "front")
    if cache != "plain":
        env["XDG_CACHE_HOME"] = str(tmp_path / cache)
    iid = rig.add_instance()
    rig.fault("SendSSHPublicKey", delay=3.0)
    rc, out, err = run_ssh(rig, home, pyz, iid, "echo keyed", env)
    assert rc == 0, err
    assert out == "keyed\n"
    assert "Permission denied" not in err
    (push,) = rig.calls("SendSSHPublicKey")
    (session,) = [c for c in rig.plugin_calls() if c.get("target") == iid]
    (first_in,) = [c for c in rig.plugin_stdin_calls() if c["session_id"] == session["session_id"]]
    assert first_in["t"] >= push["t"] + 3.0, "a byte from ssh reached the plugin before the push was answered"
    if front == "wrapper":
        assert "aws ssm start-session" in (tmp_path / "front" / "log").read_text()
    if front == "bypass":
        assert session["ppid"] != os.getpid(), "aws ran the plugin itself"
    if cache == "plain" and front != "bypass":
        starts = [c["t"] for c in rig.calls("StartSession")]
        assert starts and starts[0] < push["t"] + 3.0, "the session started beside the push"


def test_a_wrapper_in_front_of_aws_starts_the_session_beside_the_push(
    rig: Rig, home: Home, pyz: Path, tmp_path: Path
) -> None:
    """A plain /bin/sh wrapper (logging, then exec aws) gets the fast path and the hand-off."""
    env = rig.env(home)
    front_aws(rig, env, "v1", "wrapper", tmp_path / "front")
    iid = rig.add_instance()
    rig.fault("SendSSHPublicKey", delay=2.0)
    proc = subprocess.Popen(
        rig.ssh_argv(home, iid, proxy(pyz), "echo fast"), env=env, stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    (push,) = rig.calls("SendSSHPublicKey")
    (start,) = rig.calls("StartSession")
    assert start["t"] < push["t"] + 2.0, "StartSession was answered while the push was held"
    (session,) = [c for c in rig.plugin_calls() if c.get("target") == iid]
    assert session["ppid"] == proc.pid, "the hand-off: the plugin is the process ssh started"


# --- 2. every StartSession that succeeded is handed to a plugin or terminated ---------------
@pytest.mark.parametrize("front", ["itself", "bypass"])
def test_a_session_beside_a_failed_push_is_terminated(
    rig: Rig, home: Home, pyz: Path, tmp_path: Path, front: str
) -> None:
    """Every key push throttled: the push fails after its retries, the session it started beside is ended."""
    env = rig.env(home)
    env["AWS_MAX_ATTEMPTS"] = "2"  # the user's choice wins over ours (5): the push fails sooner
    front_aws(rig, env, "v1", front, tmp_path / "front")
    iid = rig.add_instance()
    rig.fault("SendSSHPublicKey", code="ThrottlingException", message="Rate exceeded", count=50)
    rc, _, err = run_ssh(rig, home, pyz, iid, "true", env)
    assert rc == 255, err
    assert "ThrottlingException" in err or "Rate exceeded" in err or "throttl" in err.lower(), err
    assert rig.calls("StartSession"), "the session started beside the push"
    assert "Traceback" not in err
    wait_for("our processes to end", lambda: not ours(rig, iid))
    assert not open_sessions(rig, iid), rig.sessions()


@pytest.mark.parametrize("front", ["itself", "bypass"])
def test_ssh_gone_during_the_push_terminates_the_session_beside_it(
    rig: Rig, home: Home, pyz: Path, tmp_path: Path, front: str
) -> None:
    """ssh is killed while the push hangs (VS Code's connect timeout): the session is ended, we exit."""
    env = rig.env(home)
    front_aws(rig, env, "v1", front, tmp_path / "front")
    iid = rig.add_instance()
    rig.fault("SendSSHPublicKey", delay=60)
    proc = subprocess.Popen(
        rig.ssh_argv(home, iid, proxy(pyz), "true"), env=env, stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True,
    )  # fmt: skip
    try:
        rig.wait_for_call("StartSession", iid)
        if front == "bypass":
            rig.wait_for_plugin_call(iid)  # aws runs the plugin: the token is redeemed
        else:
            wait_for("the session's answer", lambda: rig.sessions())
        connect = [p for p in descendants(proc.pid) if "connect" in cmdline(p) and str(pyz) in cmdline(p)]
        assert len(connect) == 1
        proc.terminate()
        proc.wait(timeout=30)
        wait_for("the connect to end", lambda: not alive(connect[0]))
        wait_for("every process of the connect to end", lambda: not ours(rig, iid))
        assert [s for s in rig.sessions().values() if s["target"] == iid], "StartSession succeeded"
        assert not open_sessions(rig, iid), rig.sessions()
    finally:
        kill_group(proc)


def test_ssh_gone_during_a_push_beside_the_session_exits_non_zero(rig: Rig, home: Home, pyz: Path) -> None:
    """Our stdin and stdout close while the push is in flight: no session carried anything, exit 1."""
    iid = rig.add_instance()
    rig.fault("SendSSHPublicKey", delay=60)
    proc = subprocess.Popen(
        [sys.executable, str(pyz), "connect", iid], env=rig.env(home), stdin=subprocess.PIPE,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        rig.wait_for_call("StartSession", iid)
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.close()
        proc.stdout.close()
        assert proc.wait(timeout=60) == 1
        assert proc.stderr is not None
        err = proc.stderr.read()
        assert b"Traceback" not in err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


# --- 3. every wait watches ssh ----------------------------------------------------------------
def test_a_connect_waiting_on_the_lock_ends_when_its_ssh_goes(rig: Rig, home: Home, pyz: Path) -> None:
    """Two cold connects: the second waits for the first one's poll lock; its ssh is killed: it ends,
    while the instance is still held (before the fix it waited for the first to see Online)."""
    iid = rig.add_instance(state="stopped", hold="pending")
    env = rig.env(home)
    poll_lock = home.path / ".cache" / "cloudx-proxy" / f"wait-eu-west-1-{iid}"
    first = subprocess.Popen(
        rig.ssh_argv(home, iid, proxy(pyz), "echo first"), env=env, stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    second = None
    try:
        rig.wait_for_call("StartInstances", iid)
        wait_for("the first connect to poll (it holds the poll lock)", poll_lock.exists)
        second = subprocess.Popen(
            rig.ssh_argv(home, iid, proxy(pyz, "--verbose"), "true"), env=env, stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True,
        )  # fmt: skip
        read_until(second, f"waiting for lock {poll_lock}")
        (connect,) = [p for p in descendants(second.pid) if "connect" in cmdline(p) and str(pyz) in cmdline(p)]
        second.kill()  # ssh's pipes close; no signal reaches the connect
        second.wait()
        wait_for("the waiting connect to end", lambda: not alive(connect), timeout=20)
        assert first.poll() is None, "the first connect still waits (the instance is held)"
        rig.release(iid)
        out, err = first.communicate(timeout=120)
        assert first.returncode == 0, err
        assert out == "first\n"
    finally:
        for p in (first, second):
            if p is not None and p.poll() is None:
                p.kill()
                p.communicate()


def read_until(proc: subprocess.Popen, text: str, timeout: float = 60.0) -> None:  # type: ignore[type-arg]
    """Read proc's stderr until text shows (fail after timeout)."""
    import select

    assert proc.stderr is not None
    fd, seen, deadline = proc.stderr.fileno(), b"", time.monotonic() + timeout
    while text.encode() not in seen:
        left = deadline - time.monotonic()
        assert left > 0, f"no {text!r} in {seen.decode(errors='replace')}"
        if select.select([fd], [], [], left)[0]:
            chunk = os.read(fd, 65536)
            assert chunk, f"stderr ended before {text!r}: {seen.decode(errors='replace')}"
            seen += chunk


# --- 4. the stand-in is never taken for the real plugin -------------------------------------
def test_the_stand_in_directory_on_path_is_not_taken_for_the_plugin(rig: Rig, home: Home, pyz: Path) -> None:
    env = rig.env(home)
    iid = rig.add_instance()
    assert run_ssh(rig, home, pyz, iid, "true", env)[0] == 0
    (stand_in,) = (home.path / ".cache" / "cloudx-proxy").glob("plugin-*")
    env["PATH"] = f"{stand_in}:{env['PATH']}"
    rc, out, err = run_ssh(rig, home, pyz, iid, "echo real-plugin", env, "--verbose")
    assert rc == 0, err
    assert out == "real-plugin\n"
    handed = [line for line in err.splitlines() if "handing the session to" in line]
    assert len(handed) == 1 and str(stand_in) not in handed[0] and "cloudx-proxy/plugin" not in handed[0], err
    wait_for("nothing of the connect left (no looping stand-in)", lambda: not ours(rig, iid), timeout=20)


def test_a_plugin_wrapper_that_calls_the_plugin_by_name(rig: Rig, home: Home, pyz: Path, tmp_path: Path) -> None:
    """A wrapper named session-manager-plugin that takes itself off PATH and calls the plugin by name
    (--version and the session): it finds the real plugin, not our stand-in."""
    env = rig.env(home)
    wrap = tmp_path / "wrap"
    wrap.mkdir()
    (wrap / "session-manager-plugin").write_text(
        f'#!/bin/sh\necho "$1" >> "{wrap}/log"\nPATH=${{PATH#{wrap}:}}\nexport PATH\nexec session-manager-plugin "$@"\n'
    )
    (wrap / "session-manager-plugin").chmod(0o755)
    env["PATH"] = f"{wrap}:{env['PATH']}"
    iid = rig.add_instance()
    proc = subprocess.Popen(
        rig.ssh_argv(home, iid, proxy(pyz), "echo wrapped"), env=env, stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
    )  # fmt: skip
    try:
        out, err = proc.communicate(timeout=60)
    finally:
        kill_group(proc)
    assert proc.returncode == 0, err
    assert out == "wrapped\n"
    calls = (wrap / "log").read_text().split()
    assert calls[0] == "--version" and len(calls) == 2, calls
    wait_for("nothing of the connect left (no looping stand-in)", lambda: not ours(rig, iid), timeout=20)


def test_the_stand_in_refuses_to_run_itself(tmp_path: Path) -> None:
    """The stand-in named as the real plugin (its directory on the user's PATH): one line, exit 1, no loop."""
    script = tmp_path / "session-manager-plugin"
    script.write_text(cp.STAND_IN_SH)
    script.chmod(0o700)
    env = {"PATH": f"{tmp_path}:/usr/bin:/bin", "CLOUDX_PROXY_PLUGIN": str(script), "CLOUDX_PROXY_PATH": "/usr/bin"}
    res = subprocess.run([str(script), "--version"], env=env, capture_output=True, text=True, timeout=10)
    assert res.returncode == 1
    assert "stand-in" in res.stderr and res.stderr.count("\n") == 1, res.stderr


# --- 5. the plugin starts as aws would start it ------------------------------------------
# Shell builtins only: a forking shell blocks every signal around fork(), so a child reading
# /proc/$$/status would see that, not what the plugin was started with.
RECORDER = """#!/bin/sh
if [ "$1" != --version ]; then
  {{
    while read -r line; do case $line in SigIgn*|SigBlk*) echo "$line";; esac; done < /proc/$$/status
    for fd in /proc/$$/fd/*; do printf '%s ' "${{fd##*/}}"; done
    echo
  }} > "{out}/$$"
fi
exec "{real}" "$@"
"""


def _recorded(out: Path) -> dict[str, str]:
    (record,) = list(out.iterdir())
    lines = record.read_text().splitlines()
    fields = dict(line.split(":", 1) for line in lines[:2])
    fds = {int(fd) for fd in lines[2].split()} - {0, 1, 2}
    return {"SigIgn": fields["SigIgn"].strip(), "SigBlk": fields["SigBlk"].strip(), "fds": str(sorted(fds))}


@pytest.mark.parametrize("aws", AWS)
def test_the_plugin_gets_the_signals_and_descriptors_aws_would_give_it(
    rig: Rig, home: Home, pyz: Path, tmp_path: Path, aws: str
) -> None:
    """A recorder in the plugin's place notes its signal dispositions, mask and descriptors, once
    under the hand-off (connect started by a program that leaves a descriptor open, not by ssh) and once
    run by aws itself: the same."""
    real_aws(rig, aws)
    plugin_dir = rig.plugin_dir(tmp_path / "bin")
    real = plugin_dir / "real-session-manager-plugin"
    (plugin_dir / "session-manager-plugin").rename(real)
    seen: dict[str, dict[str, str]] = {}
    for route in ("handoff", "under-aws"):
        out = tmp_path / route
        out.mkdir()
        (plugin_dir / "session-manager-plugin").write_text(RECORDER.format(out=out, real=real))
        (plugin_dir / "session-manager-plugin").chmod(0o755)
        env = rig.env(home, aws, plugin_dir=plugin_dir)
        if route == "under-aws":
            env["CLOUDX_PROXY_NO_HANDOFF"] = "1"
        iid = rig.add_instance()
        r, w = os.pipe()  # r: a descriptor the caller leaves open (inheritable)
        caller_fd = r
        try:
            proc = subprocess.Popen(
                [sys.executable, str(pyz), "connect", iid], env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                stderr=subprocess.PIPE, pass_fds=(r,),
            )  # fmt: skip
        finally:
            os.close(r)
            os.close(w)
        assert proc.stdin is not None and proc.stdout is not None
        banner = b""
        while b"SSH-2.0" not in banner:
            chunk = proc.stdout.read1(4096)  # type: ignore[attr-defined]
            assert chunk, proc.stderr.read() if proc.stderr else b""
            banner += chunk
        proc.stdin.close()
        proc.wait(timeout=60)
        seen[route] = _recorded(out)
    assert seen["handoff"] == seen["under-aws"], seen
    assert str(caller_fd) not in seen["handoff"]["fds"].strip("[]").split(", "), "the caller's descriptor leaked"


# --- 6. no traceback, whatever signal comes when ---------------------------------------------
DRIVER = """
import os, signal, subprocess, sys
sys.path.insert(0, {root!r})
import cloudx_proxy as cp
moment, sig = sys.argv[1], getattr(signal, sys.argv[2])
kids = open(sys.argv[3], "a")

def fire():
    os.kill(os.getpid(), sig)

if moment == "preparing":  # the run and the stand-in directory are being prepared
    real = cp.stand_in_dir
    def stand_in_dir(cache):
        fire()
        return real(cache)
    cp.stand_in_dir = stand_in_dir
elif moment == "spawning":  # a child exists, not yet ours
    real_popen = subprocess.Popen
    class Popen(real_popen):
        def __init__(self, *a, **k):
            super().__init__(*a, **k)
            kids.write(f"{{self.pid}}\\n"); kids.flush()
            if "send-ssh-public-key" in a[0]:
                fire()
    subprocess.Popen = Popen
elif moment == "stopping":  # the clean-up after a session under aws
    real_stop_all = cp.ProcessSet.stop_all
    def stop_all(self):
        fire()
        real_stop_all(self)
    cp.ProcessSet.stop_all = stop_all
elif moment == "settling":  # ending the session beside a failed push
    real_settle = cp.settle_session
    def settle_session(run):
        if run.pending is not None:
            fire()
        real_settle(run)
    cp.settle_session = settle_session
sys.argv[0] = "cloudx-proxy"
sys.exit(cp.main(["connect", sys.argv[4]]))
"""


@pytest.mark.parametrize("sig", ["SIGHUP", "SIGTERM"])
@pytest.mark.parametrize("moment", ["preparing", "spawning", "stopping", "settling"])
def test_a_signal_at_any_moment_gives_no_traceback_and_leaves_nothing(
    rig: Rig, home: Home, tmp_path: Path, moment: str, sig: str
) -> None:
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER.format(root=str(ROOT)))
    kids = tmp_path / "kids"
    kids.touch()
    env = rig.env(home)
    if moment == "stopping":  # aws runs the plugin, which fails at once: connect() returns, then the clean-up
        env.update(CLOUDX_PROXY_NO_HANDOFF="1", RIG_PLUGIN_MODE="early")
    if moment == "settling":
        env["AWS_MAX_ATTEMPTS"] = "2"  # the push fails sooner
        rig.fault("SendSSHPublicKey", code="ThrottlingException", message="Rate exceeded", count=50)
    if moment == "spawning":
        rig.fault("SendSSHPublicKey", delay=60)  # the push's aws lives on unless we stop it
    iid = rig.add_instance()
    proc = subprocess.Popen(
        [sys.executable, str(driver), moment, sig, str(kids), iid], env=env, stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    assert proc.stdin is not None and proc.stderr is not None
    try:
        proc.wait(timeout=120)  # ssh stays: the connect ends by itself ("stopping") or by the signal
    finally:
        if not proc.stdin.closed:
            proc.stdin.close()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    err = proc.stderr.read()
    proc.stderr.close()
    assert b"Traceback" not in err, err.decode()
    assert proc.returncode == (255 if moment == "stopping" else 1), err.decode()  # "stopping": aws's own exit
    for pid in [int(p) for p in kids.read_text().split()]:
        wait_for(f"child {pid} to be gone", lambda pid=pid: not alive(pid), timeout=10)
    wait_for("nothing of the connect left", lambda: not ours(rig, iid), timeout=10)
    if moment in ("spawning", "settling"):
        assert [s for s in rig.sessions().values() if s["target"] == iid], "StartSession succeeded"
        assert not open_sessions(rig, iid), rig.sessions()


# --- 7. smaller edges ----------------------------------------------------------------------
def test_a_cache_below_a_directory_others_may_change_gets_no_hand_off(
    rig: Rig, home: Home, pyz: Path, tmp_path: Path
) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)  # writable by every user, no sticky bit: our directory could be swapped
    env = rig.env(home)
    env["XDG_CACHE_HOME"] = str(shared / "cache")
    iid = rig.add_instance()
    proc = subprocess.Popen(
        rig.ssh_argv(home, iid, proxy(pyz, "--verbose"), "echo safe"), env=env, stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert out == "safe\n"
    assert "no hand-off to the plugin" in err and "may be changed by other users" in err, err
    (session,) = [c for c in rig.plugin_calls() if c.get("target") == iid]
    assert session["ppid"] != proc.pid, "aws ran the plugin"
    shared.chmod(0o1777)  # the sticky bit: nobody else may rename what is ours
    assert cp.unsafe_parent(str(shared / "cache" / "cloudx-proxy" / "x")) is None


def test_unsafe_parent_names_the_directory(tmp_path: Path) -> None:
    top = tmp_path / "top"
    (top / "a" / "b").mkdir(parents=True)
    assert cp.unsafe_parent(str(top / "a" / "b" / "x")) is None
    (top / "a").chmod(0o757)
    assert str(top / "a") in (cp.unsafe_parent(str(top / "a" / "b" / "x")) or "")
    (top / "a").chmod(0o1757)
    assert cp.unsafe_parent(str(top / "a" / "b" / "x")) is None
    (top / "a").chmod(0o755)
    other = tmp_path / "other"
    (other / "x").mkdir(parents=True)
    if os.getuid() == 0 and shutil.which("chown"):
        subprocess.run(["chown", "cloudxother", str(other)], check=False)
        if other.stat().st_uid != 0:
            assert "belongs to uid" in (cp.unsafe_parent(str(other / "x" / "y")) or "")
    link = top / "link"
    link.symlink_to(top / "a")
    assert cp.unsafe_parent(str(link / "b" / "x")) is None


def test_two_versions_keep_their_own_stand_in(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cache = tmp_path / "cache"
    first = cp.stand_in_dir(str(cache))
    assert first is not None
    script = Path(first) / "session-manager-plugin"
    assert script.read_text() == cp.STAND_IN_SH
    monkeypatch.setattr(cp, "STAND_IN_SH", cp.STAND_IN_SH.replace("# cloudx-proxy's", "# a later cloudx-proxy's"))
    second = cp.stand_in_dir(str(cache))
    assert second is not None and second != first
    assert script.read_text() != cp.STAND_IN_SH, "the other version's stand-in is left as it was"
    assert (Path(second) / "session-manager-plugin").read_text() == cp.STAND_IN_SH


def test_no_stand_in_where_a_path_cannot_go_on_path(tmp_path: Path) -> None:
    assert cp.stand_in_dir(str(tmp_path / "a:b")) is None
    assert cp.stand_in_dir("relative/cache") is None
    assert cp.stand_in_dir(str(tmp_path / "ok")) is not None


SHELLS = ["/bin/sh", "/bin/dash", "/bin/bash", "/bin/mksh", "/bin/posh", "/bin/busybox"]


@pytest.mark.parametrize("shell", SHELLS)
def test_the_session_token_never_reaches_an_external_program(tmp_path: Path, shell: str) -> None:
    """A `printf` program first on PATH logs its argv: under every shell the stand-in either hands the
    answer back through the builtin printf, or runs the real plugin; the token is never in an argv."""
    if not os.path.exists(shell):
        from conftest import skip_or_fail

        skip_or_fail(f"{shell} is not installed (.ci/run installs mksh, posh and busybox)")
    fake = tmp_path / "fake"
    fake.mkdir()
    log = tmp_path / "argv.log"
    (fake / "printf").write_text(f'#!/bin/sh\necho "$@" >> {log}\n')
    (fake / "printf").chmod(0o755)
    real = tmp_path / "real"
    real.write_text("#!/bin/sh\necho real-plugin\n")
    real.chmod(0o755)
    script = tmp_path / "session-manager-plugin"
    script.write_text(cp.STAND_IN_SH)
    answer = '{"SessionId": "s-1", "TokenValue": "SECRET-TOKEN", "StreamUrl": "wss://h/"}'
    args = [cp.SSM_RESPONSE_ENV, "eu-west-1", "StartSession", "cloudX", '{"Target": "i-1"}', "https://ssm"]
    env = {
        "PATH": f"{fake}:/usr/bin:/bin", "CLOUDX_PROXY_PLUGIN": str(real), "CLOUDX_PROXY_HANDOFF": "cloudx-n",
        cp.SSM_RESPONSE_ENV: answer,
    }  # fmt: skip
    argv = [shell, "sh", str(script), *args] if shell.endswith("busybox") else [shell, str(script), *args]
    res = subprocess.run(argv, env=env, capture_output=True, timeout=10)
    assert not log.exists() or "SECRET-TOKEN" not in log.read_text()
    captured = cp.parse_handoff(res.stderr, b"cloudx-n")
    assert captured == (args, answer) or res.stdout == b"real-plugin\n", (res.stdout, res.stderr)


@pytest.mark.parametrize(("value", "handoff"), [("", True), ("0", True), ("1", False), ("yes", False)])
def test_no_handoff_variable(rig: Rig, home: Home, pyz: Path, value: str, handoff: bool) -> None:
    env = rig.env(home)
    env["CLOUDX_PROXY_NO_HANDOFF"] = value
    iid = rig.add_instance()
    proc = subprocess.Popen(
        rig.ssh_argv(home, iid, proxy(pyz), "true"), env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    (session,) = [c for c in rig.plugin_calls() if c.get("target") == iid]
    assert (session["ppid"] == proc.pid) is handoff


def test_sso_refresh_due() -> None:
    now = 1_800_000_000.0
    iso = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now + 600))
    later = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now + 3600))
    assert cp.sso_refresh_due({"refreshToken": "r", "expiresAt": iso}, now)
    assert not cp.sso_refresh_due({"refreshToken": "r", "expiresAt": later}, now)
    assert not cp.sso_refresh_due({"expiresAt": iso}, now), "no refresh token: aws cannot refresh"
    assert cp.sso_refresh_due({"refreshToken": "r", "expiresAt": "soon"}, now)
    assert not cp.sso_refresh_due(None, now)
    edge = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now + cp.SSO_REFRESH_WINDOW))
    assert not cp.sso_refresh_due({"refreshToken": "r", "expiresAt": edge}, now)


def test_a_stop_that_ends_between_the_refused_start_and_the_look_is_started(rig: Rig, home: Home, pyz: Path) -> None:
    """StartInstances is refused (stopping); the stop ends before DescribeInstances answers: connect
    starts the instance, it does not fail with IncorrectInstanceState."""
    iid = rig.add_instance(online_delay=1)
    rig.begin_stopping(iid)  # stopping until the test releases it
    rig.fault("DescribeInstances", delay=3)  # the look after the refused start: answered after the release
    res = ssh_released(
        rig, home, pyz, iid, "echo started",
        lambda: (rig.wait_for_call("StartInstances", iid), rig.wait_for_call("DescribeInstances", iid)),
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert res.stdout == "started\n"
    assert [c["action"] for c in rig.calls() if c["action"] == "StartInstances"] == ["StartInstances"] * 2

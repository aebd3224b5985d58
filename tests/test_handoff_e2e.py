"""The hand-off and the processes of a connect, tried as users meet them.

Real ssh, the real aws CLI and the rig (docs/test-rig.md): the stand-in script and the
guard run under the real /bin/sh; the edges are a terminal prompt (MFA), a kill -9, a
closed terminal, an orphaned connect, a wrapper that bypasses PATH and a plugin that
cannot be run.
"""

from __future__ import annotations

import os
import pty
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import GONE_WITHIN, NATURAL_END, actions, live, marked_processes, proc_state, wait_for, wait_gone
from rig import Home, Rig, cmdline, descendants

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import cloudx_proxy as cp  # noqa: E402


def proxy(pyz: Path, args: str = "") -> str:
    return f"{sys.executable} {pyz} connect %h %p {args}".strip()


# --- the stand-in and the guard, under the real /bin/sh --------------------------------
def _stand_in(tmp_path: Path, real: str) -> Path:
    script = tmp_path / "session-manager-plugin"
    script.write_text(cp.STAND_IN_SH)
    script.chmod(0o700)
    (tmp_path / "real").write_text(real)
    (tmp_path / "real").chmod(0o700)
    return script


def test_the_stand_in_hands_back_argv_and_answer_and_passes_the_rest(tmp_path: Path) -> None:
    script = _stand_in(tmp_path, '#!/bin/sh\necho "real $*"\n')
    answer = '{"SessionId": "s-1", "TokenValue": "tok\\u00e9 $x `y`", "StreamUrl": "wss://h/\'q"}'
    args = [cp.SSM_RESPONSE_ENV, "eu-west-1", "StartSession", "cloudX", '{"Target": "i-1"}', "https://ssm"]
    env = {"PATH": "/usr/bin:/bin", "CLOUDX_PROXY_PLUGIN": str(tmp_path / "real")}
    nonce = "cloudx-proxy-handoff-0123"
    res = subprocess.run(
        [str(script), *args],
        env={**env, "CLOUDX_PROXY_HANDOFF": nonce, cp.SSM_RESPONSE_ENV: answer},
        capture_output=True,
    )
    assert res.returncode == 0 and res.stdout == b"", "nothing on ssh's stdout"
    assert cp.parse_handoff(b"aws says\n" + res.stderr, nonce.encode()) == (args, answer)
    assert cp.session_id_of(args, answer) == "s-1"
    # The old CLIs' form: the answer itself in argv[1].
    old = [answer, *args[1:]]
    res = subprocess.run([str(script), *old], env={**env, "CLOUDX_PROXY_HANDOFF": nonce}, capture_output=True)
    assert cp.parse_handoff(res.stderr, nonce.encode()) == (old, "")
    assert cp.session_id_of(old, "") == "s-1"
    # --version, and any call without our variable, is the real plugin's.
    res = subprocess.run([str(script), "--version"], env={**env, "CLOUDX_PROXY_HANDOFF": nonce}, capture_output=True)
    assert res.stdout == b"real --version\n"
    res = subprocess.run([str(script), *args], env=env, capture_output=True)
    assert res.stdout.startswith(b"real AWS_SSM_START_SESSION_RESPONSE eu-west-1")


def test_the_stand_in_dies_when_nobody_reads_its_record(tmp_path: Path) -> None:
    """The connect was killed: the stand-in's write fails, aws gets a failure, not a hang."""
    script = _stand_in(tmp_path, "#!/bin/sh\n")
    r, w = os.pipe()
    os.close(r)
    env = {"PATH": "/usr/bin:/bin", "CLOUDX_PROXY_HANDOFF": "n", "CLOUDX_PROXY_PLUGIN": "/bin/true"}
    proc = subprocess.Popen([str(script), "{}", "r", "StartSession", "p", "{}", "e"], env=env, stderr=w)
    os.close(w)
    assert proc.wait(timeout=10) != 0


def test_the_guard_kills_what_is_left_when_its_pipe_closes() -> None:
    guard = cp.Guard()
    kids = [subprocess.Popen(["sleep", "60"]) for _ in range(3)]
    try:
        for k in kids:
            guard.add(k.pid)
        kids[1].kill()
        kids[1].wait()
        guard.remove(kids[1].pid)
        assert guard.proc is not None
        guard_pid = guard.proc.pid
        guard.close()  # as when we die: the pipe closes
        for k in (kids[0], kids[2]):
            assert k.wait(timeout=10) == -signal.SIGKILL
        assert proc_state(guard_pid) is None, "the guard itself is reaped"
    finally:
        for k in kids:
            if k.poll() is None:
                k.kill()
                k.wait()


# --- fallbacks ---------------------------------------------------------------------------
def test_a_wrapper_that_bypasses_path_keeps_the_session_under_aws(
    rig: Rig, home: Home, pyz: Path, tmp_path: Path
) -> None:
    """The stand-in is never called: aws runs the real plugin itself and we wait, with aws's exit status."""
    wrapper_dir = tmp_path / "wrapper"
    wrapper_dir.mkdir()
    wrapper = wrapper_dir / "aws"
    env = rig.env(home)
    wrapper.write_text(f'#!/bin/sh\nPATH="{env["PATH"]}"\nexport PATH\nexec {rig.aws_v1} "$@"\n')
    wrapper.chmod(0o755)
    env["PATH"] = f"{wrapper_dir}:{env['PATH']}"
    iid = rig.add_instance()
    proc = subprocess.Popen(
        rig.ssh_argv(home, iid, proxy(pyz), "echo under-aws"), env=env, stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert out == "under-aws\n"
    (call,) = rig.plugin_calls()
    assert call["ppid"] != proc.pid, "aws ran the plugin (its parent is not ssh)"
    env["RIG_PLUGIN_MODE"] = "early"
    res = subprocess.run(
        rig.ssh_argv(home, iid, proxy(pyz), "true"), env=env, capture_output=True, text=True, timeout=120
    )
    assert res.returncode == 255 and "Cannot perform start session" in res.stderr


def test_a_plugin_that_cannot_be_run_after_the_capture_ends_the_session(
    rig: Rig, home: Home, pyz: Path, tmp_path: Path
) -> None:
    """exec fails after the hand-over: TerminateSession on the captured id, one clear line, no traceback."""
    own = rig.plugin_dir(tmp_path / "plugin-bin")  # a private copy: it removes itself
    plugin = own / "session-manager-plugin"
    env = rig.env(home, plugin_dir=own)
    env["RIG_PLUGIN_VANISH_AFTER_VERSION"] = "1"
    iid = rig.add_instance()
    res = subprocess.run(
        [sys.executable, str(pyz), "connect", iid], env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True,
        timeout=120,
    )  # fmt: skip
    assert res.returncode == 1, res.stderr
    assert res.stdout == ""
    errors = [line for line in res.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1 and f"cannot run {plugin}" in errors[0], res.stderr
    assert "Traceback" not in res.stderr
    acts = [c["action"] for c in rig.calls() if iid in c["instance_ids"] or c["action"] == "TerminateSession"]
    assert acts.count("StartSession") == 1 and acts[-1] == "TerminateSession", acts
    assert acts.index("StartSession") < acts.index("TerminateSession"), acts
    (session,) = [s for s in rig.sessions().values() if s["target"] == iid]
    assert session["terminated"] and not session["redeemed"], "the captured session was ended, unused"


def test_no_real_plugin_is_an_error_before_any_session(rig: Rig, home: Home, pyz: Path, tmp_path: Path) -> None:
    env = rig.env(home)
    env["PATH"] = "/usr/bin:/bin:" + os.path.dirname(rig.aws_v1)
    iid = rig.add_instance()
    res = subprocess.run(
        [sys.executable, str(pyz), "connect", iid], env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True,
        timeout=60,
    )  # fmt: skip
    assert res.returncode == 1
    assert "session-manager-plugin was not found" in res.stderr
    assert "StartSession" not in actions(rig)


# --- whatever kills us, nothing of ours outlives us -------------------------------------
def _connect_children(rig: Rig, home: Home, iid: str, ssh_pid: int = 0) -> list[int]:
    """Live processes naming the instance or HOME (command line or environment), but ssh (not ours:
    it may still be exiting), the rig and us."""
    return marked_processes([iid, str(home.path)], skip=[ssh_pid, *(p.pid for p in rig.procs)])


def test_a_connect_killed_with_sigkill_leaves_no_aws_process(rig: Rig, home: Home, pyz: Path) -> None:
    iid = rig.add_instance()
    rig.fault("SendSSHPublicKey", delay=NATURAL_END, count=1)  # the push hangs: its aws process is in flight
    proc = subprocess.Popen(
        rig.ssh_argv(home, iid, proxy(pyz), "true"), env=rig.env(home), stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
    )  # fmt: skip
    try:
        wait_for("the key push", lambda: "SendSSHPublicKey" in actions(rig))
        ours = [p for p in descendants(proc.pid) if "connect" in cmdline(p) and "cloudx_proxy" in cmdline(p)]
        assert len(ours) == 1
        aws = [p for p in descendants(ours[0]) if "send-ssh-public-key" in cmdline(p)]
        assert len(aws) == 1, [cmdline(p) for p in descendants(ours[0])]
        os.kill(ours[0], signal.SIGKILL)  # the OOM killer, timeout -s KILL
        # every process of the connect (the session beside the push too); nothing would end them
        # by itself for NATURAL_END s, so the bound is there for load only
        left, _ = wait_gone(lambda: live(aws) + _connect_children(rig, home, iid, proc.pid))
        assert not live(aws), "the aws child outlived a SIGKILLed connect"
        assert not left, (f"still running {GONE_WITHIN:.0f} s after the SIGKILL", [cmdline(p) for p in left])
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def test_an_orphaned_connect_ends_even_if_its_pipes_stay_open(rig: Rig, home: Home, pyz: Path) -> None:
    """Where poll() reports no hang-up on a pipe (macOS), our parent going away is the sign: exit soon.

    Here the pipes stay open (the test holds their other ends), so only the parent check can end us.
    """
    iid = rig.add_instance(state="stopped", online_delay=600)
    r_in, w_in = os.pipe()
    r_out, w_out = os.pipe()
    parent = subprocess.Popen(
        [sys.executable, "-c", "import subprocess,sys; subprocess.Popen(sys.argv[1:]).wait()",
         sys.executable, str(pyz), "connect", iid],
        env=rig.env(home), stdin=r_in, stdout=w_out, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    os.close(r_in)
    os.close(w_out)
    try:
        wait_for("the start", lambda: "StartInstances" in actions(rig))
        (ours,) = [p for p in descendants(parent.pid) if str(pyz) in cmdline(p)]
        parent.kill()
        parent.wait()
        # the cold wait would go on for 600 s: the bound is there for load only
        left, _ = wait_gone(lambda: live([ours]) + _connect_children(rig, home, iid))
        assert not live([ours]), f"the orphaned connect still runs {GONE_WITHIN:.0f} s after its parent died"
        assert not left, [cmdline(p) for p in left]
        # no process with this HOME is left to poll AWS: no window of time to watch the log for
        assert actions(rig).count("SendSSHPublicKey") <= 2, "no more polling"
    finally:
        os.close(w_in)
        os.close(r_out)
        try:
            os.killpg(parent.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


# --- a child may need the terminal --------------------------------------------------------
def _pty_ssh(argv: list[str], env: dict[str, str]) -> tuple[int, int]:
    """ssh on a new pseudo-terminal (its controlling terminal, ssh the foreground job): (pid, master fd)."""
    pid, master = pty.fork()
    if pid == 0:
        try:
            os.execvpe(argv[0], argv, env)
        finally:
            os._exit(127)
    return pid, master


def _read_until(master: int, want: bytes, seen: bytearray, timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while want not in seen:
        left = deadline - time.monotonic()
        assert left > 0, f"no {want!r} on the terminal; it shows {bytes(seen)!r}"
        if select.select([master], [], [], left)[0]:
            try:
                data = os.read(master, 4096)
            except OSError:
                data = b""
            assert data, f"the terminal closed before {want!r}; it showed {bytes(seen)!r}"
            seen += data


def test_an_mfa_prompt_is_answered_on_the_terminal(rig: Rig, home: Home, pyz: Path) -> None:
    """A profile that assumes a role with mfa_serial: aws asks for the code on /dev/tty, and connect goes on."""
    creds = (home.path / ".aws" / "credentials").read_text().replace(f"[{home.profile}]", "[base]")
    (home.path / ".aws" / "credentials").write_text(creds)
    (home.path / ".aws" / "config").write_text(
        f"[profile {home.profile}]\nregion = eu-west-1\nsource_profile = base\n"
        "role_arn = arn:aws:iam::123456789012:role/cloudx-dev\n"
        "mfa_serial = arn:aws:iam::123456789012:mfa/cloudX-dev-alice\n"
    )
    iid = rig.add_instance()
    pid, master = _pty_ssh(rig.ssh_argv(home, iid, proxy(pyz), "echo mfa-ok"), rig.env(home))
    seen = bytearray()
    try:
        _read_until(master, b"Enter MFA code", seen)
        os.write(master, b"123456\n")
        _read_until(master, b"mfa-ok", seen)
        _, status = os.waitpid(pid, 0)
        pid = 0
        assert os.waitstatus_to_exitcode(status) == 0, bytes(seen)
        assert seen.count(b"Enter MFA code") == 1, "the CLI's credential cache serves the session call"
        assert actions(rig).count("AssumeRole") == 1
    finally:
        if pid:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        os.close(master)


ECHO = "echo ready; read line; echo got $line"


def echo_session(argv: list[str], env: dict[str, str], stderr: int, pause: float) -> None:
    """A session that is ready, then (after `pause` s with nothing flowing) echoes a line back; exit 0."""
    proc = subprocess.Popen(argv, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=stderr)
    try:
        assert proc.stdout is not None and proc.stdin is not None
        assert proc.stdout.readline() == b"ready\n"
        time.sleep(pause)
        proc.stdin.write(b"still-here\n")
        proc.stdin.flush()
        assert proc.stdout.readline() == b"got still-here\n"
        proc.stdin.close()
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.mark.parametrize("handoff", [True, False], ids=["handoff", "no-handoff"])
def test_a_closed_terminal_does_not_end_a_connect_or_a_session(rig: Rig, home: Home, pyz: Path, handoff: bool) -> None:
    """ssh's stderr is a terminal that is gone (a ControlPersist master's): every message fails with EIO,
    and the connect and the session go on (messages are best effort)."""
    iid = rig.add_instance()
    env = rig.env(home)
    if not handoff:
        env["CLOUDX_PROXY_NO_HANDOFF"] = "1"
    master, slave = pty.openpty()
    os.close(master)  # writes to the slave now fail with EIO
    try:
        echo_session(rig.ssh_argv(home, iid, proxy(pyz, "--verbose"), ECHO), env, slave, pause=0)
    finally:
        os.close(slave)


def test_a_session_idle_for_30_s_is_then_used(rig: Rig, home: Home, pyz: Path) -> None:
    iid = rig.add_instance()
    echo_session(rig.ssh_argv(home, iid, proxy(pyz), ECHO), rig.env(home), subprocess.PIPE, pause=30)


# --- our cache directory, however it is named ----------------------------------------------
@pytest.mark.parametrize("xdg", ["$HOME/.cache", "~/cache", "relative/cache"])
def test_a_cold_connect_with_an_odd_cache_path(rig: Rig, home: Home, pyz: Path, tmp_path: Path, xdg: str) -> None:
    """XDG_CACHE_HOME taken literally from an env file: '$' and '~' are only characters; a relative one is ignored."""
    iid = rig.add_instance(state="stopped", online_delay=1)
    env = rig.env(home)
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    if xdg.startswith("relative"):
        env["XDG_CACHE_HOME"] = xdg
        cache = home.path / ".cache" / "cloudx-proxy"
    else:
        env["XDG_CACHE_HOME"] = str(tmp_path / xdg)
        cache = tmp_path / xdg / "cloudx-proxy"
    res = subprocess.run(
        rig.ssh_argv(home, iid, proxy(pyz), "echo odd"), env=env, cwd=cwd, capture_output=True, text=True,
        timeout=180,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert res.stdout == "odd\n"
    assert list(cache.glob(f"push-*{iid}*")), "the cache was used"
    assert list(cache.glob("plugin-*/session-manager-plugin")), "the stand-in, in its versioned directory"
    assert not list(cwd.iterdir()), "nothing created under ssh's working directory"

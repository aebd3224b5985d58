"""Helpers the test modules share (the rig itself is tests/rig; fixtures are in conftest.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from rig import Home, Rig, cmdline, ssh_config_argv

# A connect whose ssh went away (or whose parent did) ends within about a second on an idle
# machine; on 2 busy cores under -n 3 it has taken several. GONE_WITHIN bounds that wait so that
# load cannot fail it; a test that uses it keeps whatever would end those processes by itself (a
# hanging AWS call, the cold wait, the remote command) at least NATURAL_END seconds away from
# the kill, so a process that ended for any other reason cannot make it pass.
GONE_WITHIN = 20.0
NATURAL_END = 300.0


def actions(rig: Rig) -> list[str]:
    """The actions the rig endpoint has logged, in order."""
    return [c["action"] for c in rig.calls()]


def wait_for(what: str, check: Callable[[], object], timeout: float = 90.0, interval: float = 0.02) -> None:
    """Poll check() until it is true; fail after `timeout` s (a ceiling, never a pass condition)."""
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(interval)


# --- running the program and ssh -------------------------------------------------------------
def cli(
    rig: Rig,
    home: Home,
    pyz: Path,
    *args: str,
    stdin: str | None = None,
    env: dict[str, str] | None = None,
    extra_env: dict[str, str] | None = None,
    timeout: float = 240,
) -> subprocess.CompletedProcess[str]:
    """`python PYZ ARGS` with the rig's environment (or `env`), plus `extra_env`; `stdin` as its
    input, else no input at all (no terminal to prompt on)."""
    return subprocess.run(
        [sys.executable, str(pyz), *args],
        env={**(env or rig.env(home)), **(extra_env or {})},
        input=stdin,
        stdin=None if stdin is not None else subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def ssh(
    rig: Rig,
    home: Home,
    pyz: Path,
    iid: str,
    *remote: str,
    aws: str = "v1",
    args: str = "",
    env: dict[str, str] | None = None,
    timeout: float = 180,
    python: str = sys.executable,
) -> subprocess.CompletedProcess[str]:
    """`ssh IID REMOTE...` with our zipapp's connect (plus `args`) as the ProxyCommand."""
    proxy = f"{python} {pyz} connect %h %p {args}".strip()
    argv = rig.ssh_argv(home, iid, proxy, *remote)
    return subprocess.run(argv, env=env or rig.env(home, aws), capture_output=True, text=True, timeout=timeout)


def ssh_ok(rig: Rig, home: Home, config: Path, host: str) -> subprocess.CompletedProcess[str]:
    """`ssh -F CONFIG HOST echo ok` through the rig."""
    return subprocess.run(
        ssh_config_argv(home, config, host, "echo ok"), env=rig.env(home), capture_output=True, text=True, timeout=120
    )


def ssh_g_run(config: Path, host: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """`ssh -G -F CONFIG HOST`: what ssh resolves for a host from this config alone."""
    return subprocess.run(
        ["ssh", "-G", "-F", str(config), host],
        env=env,
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=60,
    )


def ssh_g_values(out: str) -> dict[str, list[str]]:
    """`ssh -G` output as keyword -> every value, in order."""
    values: dict[str, list[str]] = {}
    for line in out.splitlines():
        key, _, value = line.partition(" ")
        values.setdefault(key, []).append(value)
    return values


def ssh_g(config: Path, host: str, env: dict[str, str] | None = None) -> dict[str, list[str]]:
    """What ssh resolves for a host from this config (keyword -> values); fails if ssh refuses it."""
    res = ssh_g_run(config, host, env)
    assert res.returncode == 0, res.stderr
    return ssh_g_values(res.stdout)


def ssh_g_last(config: Path, host: str, env: dict[str, str] | None = None) -> dict[str, str]:
    """ssh_g() with one value per keyword (the last of several, such as IdentityFile)."""
    return {key: values[-1] for key, values in ssh_g(config, host, env).items()}


# --- PyPI cloudx-proxy 0.17.6, the original (its venv: .venv-original) -----------------------
# Runs in the original's venv with HOME set to the test's home: CloudXSetup.setup_ssh_config is what
# its `setup` calls to write ~/.ssh/cloudX/config and the Include in ~/.ssh/config.
WRITE_CONFIG = """
import json, sys
from cloudx_proxy.setup import CloudXSetup
for c in json.loads(sys.argv[1]):
    s = CloudXSetup(profile=c["profile"], ssh_key=c["key"], aws_env=c["aws_env"], ssh_host_prefix="cloudx",
                    non_interactive=True)
    assert s.setup_ssh_config(c["env"], c["iid"], c["host"])
"""


def write_original(python: Path, home: Home, *hosts: dict[str, str | None]) -> None:
    """Let the original's own setup code write the config for these hosts (cwd outside the repo, -I)."""
    calls = [{"profile": "cloudX", "key": "cloudX", "aws_env": None, **h} for h in hosts]
    subprocess.run(
        [str(python), "-I", "-c", WRITE_CONFIG, json.dumps(calls)],
        env={"HOME": str(home.path), "PATH": "/usr/bin:/bin"},
        cwd=home.path,
        check=True,
        capture_output=True,
        timeout=120,
    )


# --- processes, from /proc ---------------------------------------------------------------
def proc_state(pid: int) -> str | None:
    """The state letter of /proc/PID/stat (R, S, Z, ...), None once the pid is gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return None


def live(pids: Iterable[int]) -> list[int]:
    """The pids that still run (zombies do not: PID 1 here reaps nobody)."""
    return [p for p in pids if proc_state(p) not in (None, "Z")]


def live_pids() -> list[int]:
    """Every running (not zombie) process."""
    return live(int(e) for e in os.listdir("/proc") if e.isdigit())


def environ_of(pid: int) -> bytes:
    """A process's environment block (b"" once it is gone or unreadable)."""
    try:
        return Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return b""


def marked_processes(marks: Iterable[str], known: Iterable[int] = (), skip: Iterable[int] = ()) -> list[int]:
    """Live processes that are `known`, or whose command line or environment names a mark (the
    instance, the test's HOME): a child that names neither on its command line still carries HOME
    (or a path below it) in its environment, and needs it to find its AWS credentials."""
    marks = list(marks)
    known, skip = set(known), {os.getpid(), *skip}
    found = []
    for pid in live_pids():
        if pid in skip:
            continue
        if pid in known or any(m in cmdline(pid) for m in marks):
            found.append(pid)
            continue
        env = environ_of(pid)
        if any(m.encode() in env for m in marks):
            found.append(pid)
    return found


def wait_gone(find: Callable[[], list[int]], within: float = GONE_WITHIN) -> tuple[list[int], float]:
    """Poll find() until it returns nothing or `within` s have passed: (the pids left, when they
    were first all gone, as time.time(), or 0.0)."""
    deadline = time.monotonic() + within
    while True:
        left = find()
        if not left:
            return [], time.time()
        if time.monotonic() >= deadline:
            return left, 0.0
        time.sleep(0.05)


# --- Pythons -------------------------------------------------------------------------------
PYENV_VERSIONS = Path("/root/.pyenv/versions")


def find_python(version: str) -> Path | None:
    """A real interpreter for a version: pyenv's (its shims refuse versions not selected), else one
    on PATH that is not a shim; None if there is none.

    .ci/run relies on the machine image's pyenv for 2.7 and 3.6-3.13: callers skip_or_fail() on
    None, so CI fails (not skips) when one is missing.
    """
    import shutil

    found = sorted(PYENV_VERSIONS.glob(f"{version}.*/bin/python{version}"))
    if found:
        return found[-1]
    on_path = shutil.which(f"python{version}")
    return Path(on_path) if on_path and "/shims/" not in on_path else None


# --- ssh while the test holds the instance ----------------------------------------------
def ssh_released(
    rig: Rig, home: Home, pyz: Path, iid: str, remote: str, waiting: Callable[[], object]
) -> subprocess.CompletedProcess[str]:
    """ssh IID REMOTE while the instance is held: once `waiting()` returns (connect is waiting), release it."""
    proc = subprocess.Popen(
        rig.ssh_argv(home, iid, f"{sys.executable} {pyz} connect %h %p", remote),
        env=rig.env(home), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        waiting()
        assert proc.poll() is None, "connect still waits for the held instance"
        rig.release(iid)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)

"""Crash safety of the files setup/cleanup write: a SIGKILL at every step of a write, and at chosen ones.

update_file() backs the file up, writes a temp file in the same directory, fsyncs it and renames it over
the target. Whatever the moment of a SIGKILL, the target must be byte-identical to the old or the new
version (never partial), PATH.bak must hold an earlier version once a write happened, and a killed run
must leave at most harmless temp files ('.tmp-*~', counted and reported) that the next run survives.

The moments are not left to chance: a process counts the file operations the write makes (os.open,
each data write, which it cuts in half, os.fsync, os.chmod, os.replace, os.unlink) and SIGKILLs itself
at the Nth, for every N from the first to the last, so every kill lands inside the write and each step
is hit once. No AWS is involved: cp.update_file() on ~200 KB files, and the real `cleanup` command
rewriting a ~200 KB config in a temporary HOME.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
import cloudx_proxy as cp  # noqa: E402

BANNER_RE = re.compile(rb"^(# Created by cloudX-proxy v\S+ on ).*$", re.M)

# Loops cp.update_file() on PATH, alternating two contents; '.' on stdout after each completed write.
# With a fault point it exits like a SIGKILL (os._exit, no cleanup) at that point of the first write.
DRIVER = r"""
import os, shutil, sys
sys.path.insert(0, sys.argv[1])
import cloudx_proxy as cp

path, cache, a_file, b_file, fault = sys.argv[2:7]
A = open(a_file, encoding="utf-8", newline="").read()
B = open(b_file, encoding="utf-8", newline="").read()


def die(*args, **kwargs):
    os._exit(137)


if fault == "backup-copy":  # the first backup written to its temp file, not yet renamed to PATH.bak
    real_replace = os.replace

    def replace_then_die_at_backup(src, dst):
        if str(dst).endswith(".bak"):
            die()
        real_replace(src, dst)

    os.replace = replace_then_die_at_backup
elif fault == "before-fsync":  # the new text written and flushed to its temp file, not yet fsynced
    real_fsync = os.fsync

    def fsync(fd):
        with open(os.readlink(f"/proc/self/fd/{fd}"), "rb") as f:  # the fd itself is write-only
            if f.read(64) == B.encode()[:64]:
                die()
        real_fsync(fd)

    os.fsync = fsync
elif fault == "before-replace":  # the temp file complete, not yet renamed over PATH
    real_replace = os.replace
    os.replace = lambda src, dst: die() if os.path.realpath(dst) == os.path.realpath(path) else real_replace(src, dst)

os.write(1, b"ready\n")
while True:
    cp.update_file(path, lambda old: B if old == A else A, cache)
    os.write(1, b".")
"""


# Imported first by a process under test (PYTHONPATH): numbers the file operations of the write and
# SIGKILLs the process at step CRASH_AT (0: never). Each step's name is appended to CRASH_TRACE.
# A data write is cut in two and the kill falls between the halves: a half-written temp file.
CRASH_HOOKS = r"""
import os, signal

_at = int(os.environ.get("CRASH_AT") or 0)
_trace = os.environ.get("CRASH_TRACE")
_step = 0


def _point(name, arg=""):
    global _step
    _step += 1
    if _trace:
        with _real_open_file(_trace, "a") as f:
            f.write(f"{name} {os.path.basename(str(arg))}\n")
    if _step == _at:
        os.kill(os.getpid(), signal.SIGKILL)


_real_open_file = open


def _hook(name):
    real = getattr(os, name)

    def hooked(*args, **kwargs):
        _point(name, args[-1] if name == "replace" else args[0] if args else "")
        result = real(*args, **kwargs)
        if name == "replace":  # the moment right after a rename, too
            _point("replaced", args[-1])
        return result

    setattr(os, name, hooked)


for _name in ("open", "fsync", "chmod", "replace", "unlink"):
    _hook(_name)


class _HalfWrites:
    def __init__(self, f):
        self._f = f

    def write(self, data):
        half = len(data) // 2
        self._f.write(data[:half])
        self._f.flush()
        _point("write-half", self._f.name)
        return half + self._f.write(data[half:])

    def __getattr__(self, name):
        return getattr(self._f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return self._f.__exit__(*exc)


_real_fdopen = os.fdopen


def _fdopen(fd, mode="r", *args, **kwargs):
    f = _real_fdopen(fd, mode, *args, **kwargs)
    return _HalfWrites(f) if "w" in mode else f


os.fdopen = _fdopen
"""

# Two writes by cp.update_file() (the first backs up to PATH.bak, the second to PATH.bak-<time>).
UPDATE_TWICE = r"""
import sys
sys.path.insert(0, sys.argv[1])
import cloudx_proxy as cp

path, cache, a_file, b_file = sys.argv[2:6]
A = open(a_file, encoding="utf-8", newline="").read()
B = open(b_file, encoding="utf-8", newline="").read()
for _ in range(2):
    cp.update_file(path, lambda old: B if old == A else A, cache)
"""


def big_config(tag: str, kb: int = 200) -> str:
    """An ~kb KB ssh config of foreign Host blocks (distinct per tag)."""
    blocks, i = [], 0
    while sum(map(len, blocks)) < kb * 1024:
        blocks.append(f"Host {tag}-host-{i}\n    HostName 10.0.{i // 256 % 256}.{i % 256}\n    User u{i}\n\n")
        i += 1
    return "".join(blocks)


def start(argv: list[str], env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, start_new_session=True, cwd="/"
    )


def kill_and_reap(proc: subprocess.Popen[bytes]) -> tuple[bytes, bytes]:
    """SIGKILL by pid (if still running) and wait; return what it printed."""
    try:
        os.kill(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    out, err = proc.communicate(timeout=30)
    return out, err


def leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.startswith(".tmp-"))


def backups(path: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in path.parent.iterdir() if p.name.startswith(path.name + ".bak")}


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    d = tmp_path / "ssh"
    d.mkdir(mode=0o700)
    a, b = big_config("old"), big_config("new")
    (tmp_path / "a.txt").write_text(a, encoding="utf-8", newline="")
    (tmp_path / "b.txt").write_text(b, encoding="utf-8", newline="")
    target = d / "config"
    target.write_text(a, encoding="utf-8", newline="")
    os.chmod(target, 0o600)
    (tmp_path / "driver.py").write_text(DRIVER, encoding="utf-8")
    return {"dir": d, "target": target, "a": tmp_path / "a.txt", "b": tmp_path / "b.txt", "tmp": tmp_path}


def driver_argv(f: dict[str, Path], fault: str = "none") -> list[str]:
    args = [ROOT, f["target"], f["tmp"] / "cache", f["a"], f["b"], fault]
    return [sys.executable, str(f["tmp"] / "driver.py"), *map(str, args)]


def crash_env(tmp: Path, at: int, trace: Path | None = None, **extra: str) -> dict[str, str]:
    """The environment of a process that is SIGKILLed at file operation `at` (0: never)."""
    hooks = tmp / "hooks"
    if not hooks.is_dir():
        hooks.mkdir()
        (hooks / "crash_hooks.py").write_text(CRASH_HOOKS, encoding="utf-8")
    env = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "CRASH_AT": str(at), **extra}
    env["PYTHONPATH"] = str(hooks)
    if trace is not None:
        env["CRASH_TRACE"] = str(trace)
    return env


def crash_steps(argv: list[str], tmp: Path, reset: Callable[[], None], **extra: str) -> list[str]:
    """The file operations one uninterrupted run makes, in order (each a crash point)."""
    reset()
    trace = tmp / "trace"
    trace.unlink(missing_ok=True)
    run = subprocess.run(argv, env=crash_env(tmp, 0, trace, **extra), capture_output=True, timeout=60, cwd="/")
    assert run.returncode == 0, run.stderr.decode(errors="replace")
    return trace.read_text().splitlines()


def crash_at(argv: list[str], tmp: Path, at: int, **extra: str) -> subprocess.CompletedProcess[bytes]:
    """Run argv, SIGKILLed by itself at file operation `at`; it must have died there."""
    run = subprocess.run(argv, env=crash_env(tmp, at, **extra), capture_output=True, timeout=60, cwd="/")
    assert run.returncode == -signal.SIGKILL, (at, run.returncode, run.stderr.decode(errors="replace"))
    return run


def test_update_file_survives_kill_9_at_every_step(files: dict[str, Path]) -> None:
    a, b = files["a"].read_bytes(), files["b"].read_bytes()
    target, tmp = files["target"], files["tmp"]
    (tmp / "update.py").write_text("import crash_hooks\n" + UPDATE_TWICE, encoding="utf-8")
    argv = [
        sys.executable,
        str(tmp / "update.py"),
        str(ROOT),
        str(target),
        str(tmp / "cache"),
        str(files["a"]),
        str(files["b"]),
    ]

    def reset() -> None:
        for p in files["dir"].iterdir():
            p.unlink()
        target.write_bytes(a)
        os.chmod(target, 0o600)

    steps = crash_steps(argv, tmp, reset)
    assert target.read_bytes() == a and set(backups(target)) >= {"config.bak"}, "two writes: B, then A again"
    assert sum(s.startswith("write-half") for s in steps) == 4, f"a backup and the config, twice: {steps}"
    outcome = {"old": 0, "new": 0}
    half_written_temps = 0
    began = time.monotonic()
    for at in range(1, len(steps) + 1):
        reset()
        crash_at(argv, tmp, at)
        where = f"killed at step {at} of {len(steps)} ({steps[at - 1]})"
        now = target.read_bytes()
        assert now in (a, b), f"{where}: the target is neither version ({len(now)} bytes)"
        outcome["old" if now == a else "new"] += 1
        assert target.is_file() and not target.is_symlink() and os.stat(target).st_mode & 0o777 == 0o600, where
        saved = backups(target)
        bad = {name: len(data) for name, data in saved.items() if data not in (a, b)}
        assert not bad, f"{where}: backups that hold no whole version: {bad}"
        if "config.bak" in saved:
            assert saved["config.bak"] == a, f"{where}: config.bak is not the version before the first write"
        stray = leftovers(files["dir"])
        half_written_temps += any((files["dir"] / n).read_bytes() not in (a, b) for n in stray)
        # the next run is not disturbed by what the killed one left, and removes the config's temp files
        _, new = cp.update_file(
            str(target), lambda old: b.decode() if old == a.decode() else a.decode(), str(tmp / "cache")
        )
        assert new is not None and target.read_bytes() == new.encode(), where
        assert not [n for n in leftovers(files["dir"]) if n.startswith(".tmp-config-")], where
    print(
        f"\nupdate_file: {len(steps)} kills, one at each step, in {time.monotonic() - began:.1f}s; target old/new "
        f"after a kill {outcome['old']}/{outcome['new']}; {half_written_temps} kills left a half-written temp file"
    )
    assert outcome["old"] and outcome["new"], "kills before and after the first rename"
    assert half_written_temps == 4, "each of the four data writes was cut in half by a kill"


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="the fault injection reads /proc/self/fd")
@pytest.mark.parametrize("fault", ["before-fsync", "before-replace"])
def test_a_crash_inside_the_atomic_write_keeps_the_old_file(files: dict[str, Path], fault: str) -> None:
    a, b = files["a"].read_bytes(), files["b"].read_bytes()
    proc = start(driver_argv(files, fault))
    try:
        proc.wait(timeout=30)
    finally:
        out, err = kill_and_reap(proc)
    assert proc.returncode == 137 and out == b"ready\n", err.decode(errors="replace")
    target = files["target"]
    assert target.read_bytes() == a
    assert backups(target) == {"config.bak": a}
    stray = leftovers(files["dir"])
    assert all((files["dir"] / name).read_bytes() == b for name in stray), "a leftover is the new text, never renamed"
    # The next run is not disturbed by the leftover.
    cp.update_file(str(target), lambda old: b.decode(), str(files["tmp"] / "cache"))
    assert target.read_bytes() == b and "config" not in leftovers(files["dir"])
    print(
        f"\n{fault}: {len(stray)} leftover temp file(s) after the crash, {len(leftovers(files['dir']))} after the next run"
    )


def test_a_crash_while_backing_up_leaves_no_corrupt_backup(files: dict[str, Path]) -> None:
    """A SIGKILL while the first backup is being written (before it is renamed to PATH.bak).

    Later runs never rewrite PATH.bak once it exists, so a backup written in place could stay truncated
    for good; it must be written to a temp file and renamed, like the config itself.
    """
    a, b = files["a"].read_bytes(), files["b"].read_bytes()
    proc = start(driver_argv(files, "backup-copy"))
    try:
        proc.wait(timeout=30)
    finally:
        out, err = kill_and_reap(proc)
    assert proc.returncode == 137 and out == b"ready\n", err.decode(errors="replace")
    target = files["target"]
    assert target.read_bytes() == a, "the target itself is untouched"
    cp.update_file(str(target), lambda old: b.decode(), str(files["tmp"] / "cache"))
    assert target.read_bytes() == b
    saved = backups(target)
    assert a in saved.values(), "some backup holds the version before the first write"
    bad = {name: len(data) for name, data in saved.items() if data not in (a, b)}
    assert not bad, f"truncated backups left behind (name: bytes of {len(a)}): {bad}"


# ---------------------------------------------------------------------------
# The real `cleanup` command, killed at random moments
# ---------------------------------------------------------------------------
def messy_config() -> str:
    """Setup's blocks out of order, with a duplicate, among ~200 KB of foreign blocks."""
    proxy = cp.render_proxy_command(["/usr/bin/python3", "/x/cloudx_proxy.pyz"], "cloudX", "cloudX", "/k", None)
    env_block = cp.render_env_block("cloudX", "dev", cp.render_identity("/k/cloudX", None), proxy)
    ours = [
        ("host", cp.render_host_block("cloudX", "dev", "web", "i-0123456789abcdef0")),
        ("environment", env_block),
        ("generic", cp.render_generic_block("cloudX")),
        ("host", cp.render_host_block("cloudX", "dev", "db", "i-0123456789abcdef1")),
        ("host", cp.render_host_block("cloudX", "dev", "web", "i-0123456789abcdef2")),
    ]
    text = "# my settings\nServerAliveInterval 30\n\n"
    for kind, block in ours:
        text += cp.render_banner(kind, "2020-01-01 00:00:00") + block + "\n" + big_config(kind, 40)
    return text


def normalized(data: bytes) -> bytes:
    return BANNER_RE.sub(rb"\1WHEN", data)


def test_cleanup_survives_kill_9_at_every_step(tmp_path: Path) -> None:
    home = tmp_path / "home"
    ssh_dir = home / ".ssh" / "cloudX"
    ssh_dir.mkdir(parents=True, mode=0o700)
    target = ssh_dir / "config"
    old = messy_config().encode()
    new, dropped = cp.canonical_config(old.decode(), "WHEN")
    assert dropped and normalized(new.encode()) != normalized(old), "cleanup has something to do"
    run_cleanup = f"import sys; sys.path.insert(0, {str(ROOT)!r}); import crash_hooks, cloudx_proxy as cp; sys.exit(cp.main(['cleanup']))"
    argv = [sys.executable, "-c", run_cleanup]

    def reset() -> None:
        for p in ssh_dir.iterdir():
            p.unlink()
        target.write_bytes(old)
        os.chmod(target, 0o600)

    steps = crash_steps(argv, tmp_path, reset, HOME=str(home))
    assert normalized(target.read_bytes()) == normalized(new.encode())
    assert backups(target) == {"config.bak": old}
    assert sum(s.startswith("write-half") for s in steps) == 2, f"the backup and the config: {steps}"
    outcome = {"old": 0, "new": 0}
    half_written_temps = 0
    began = time.monotonic()
    for at in range(1, len(steps) + 1):
        reset()
        crash_at(argv, tmp_path, at, HOME=str(home))
        where = f"killed at step {at} of {len(steps)} ({steps[at - 1]})"
        now = target.read_bytes()
        if now == old:
            outcome["old"] += 1
        else:
            assert normalized(now) == normalized(new.encode()), f"{where}: the config is neither version"
            outcome["new"] += 1
        assert os.stat(target).st_mode & 0o777 == 0o600, where
        saved = backups(target)
        assert set(saved) <= {"config.bak"} and saved.get("config.bak", old) == old, f"{where}: {sorted(saved)}"
        whole = (normalized(old), normalized(new.encode()))
        half_written_temps += any(normalized((ssh_dir / n).read_bytes()) not in whole for n in leftovers(ssh_dir))
        assert "config" not in leftovers(ssh_dir)
    reset()
    final = subprocess.run(argv, env=crash_env(tmp_path, 0, HOME=str(home)), capture_output=True, timeout=60, cwd="/")
    assert final.returncode == 0, final.stderr.decode(errors="replace")
    print(
        f"\ncleanup: {len(steps)} kills, one at each step, in {time.monotonic() - began:.1f}s; config old/new "
        f"after a kill {outcome['old']}/{outcome['new']}; {half_written_temps} kills left a half-written temp file"
    )
    assert outcome["old"] and outcome["new"], "kills before and after the rename"
    assert half_written_temps == 2, "both data writes (backup, config) were cut in half by a kill"

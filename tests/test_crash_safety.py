"""Crash safety of the files setup/cleanup write: kill -9 at random moments, and at chosen ones.

update_file() backs the file up, writes a temp file in the same directory, fsyncs it and renames it over
the target. Whatever the moment of a SIGKILL, the target must be byte-identical to the old or the new
version (never partial), PATH.bak must hold an earlier version once a write happened, and a killed run
must leave at most harmless temp files ('.tmp-*~', counted and reported) that the next run survives.

No AWS is involved: a driver process calls cp.update_file() in a loop on ~200 KB files, and the real
`cloudx_proxy.py cleanup` rewrites a ~200 KB config in a temporary HOME.
"""

from __future__ import annotations

import os
import random
import re
import selectors
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
import cloudx_proxy as cp  # noqa: E402

KILLS = 40
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


def wait_ready(proc: subprocess.Popen[bytes], timeout: float = 30) -> None:
    assert proc.stdout is not None
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    try:
        assert sel.select(timeout), "the driver never became ready"
        assert proc.stdout.readline() == b"ready\n", "the driver died before it was ready"
    finally:
        sel.close()


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


def test_update_file_survives_kill_9_at_random_moments(files: dict[str, Path]) -> None:
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    a, b = files["a"].read_bytes(), files["b"].read_bytes()
    target = files["target"]
    writes = kills_mid_write = stray_before = 0
    wrote = False
    outcome = {"old": 0, "new": 0}
    bad_backups: set[str] = set()
    began = time.monotonic()
    for i in range(KILLS):
        before = target.read_bytes()
        proc = start(driver_argv(files))
        try:
            wait_ready(proc)
            time.sleep(rng.uniform(0, 0.030))
            assert proc.poll() is None, "the driver stopped by itself"
        finally:
            out, err = kill_and_reap(proc)
        where = f"kill {i + 1} (seed {seed})"
        assert b"Traceback" not in err and err == b"", f"{where}: {err.decode(errors='replace')}"
        done = out.count(b".")
        writes += done
        now = target.read_bytes()
        assert now in (a, b), f"{where}: the target is neither version ({len(now)} bytes)"
        outcome["old" if now == before else "new"] += 1
        assert target.is_file() and not target.is_symlink() and os.stat(target).st_mode & 0o777 == 0o600
        wrote = wrote or writes > 0 or now != a
        if wrote:  # the first write backed up the first version
            saved = backups(target)
            assert saved.get("config.bak") == a, f"{where}: config.bak is not the version before the first write"
            bad_backups |= {name for name, data in saved.items() if data not in (a, b)}
        stray = leftovers(files["dir"])
        assert "config" not in stray
        kills_mid_write += len(stray) > stray_before
        stray_before = len(stray)
    # A run that is not killed still works next to the leftovers, and writes.
    _, new = cp.update_file(
        str(target), lambda old: b.decode() if old == a.decode() else a.decode(), str(files["tmp"] / "cache")
    )
    assert new is not None and target.read_bytes() == new.encode()
    stray = leftovers(files["dir"])
    corrupt_now = {name: len(data) for name, data in backups(target).items() if data not in (a, b)}
    print(
        f"\nupdate_file: {KILLS} kills in {time.monotonic() - began:.1f}s (seed {seed}), {writes} writes completed, "
        f"target old/new after kill {outcome['old']}/{outcome['new']}, {kills_mid_write} kills inside atomic_write "
        f"left {len(stray)} temp files, {len(backups(target))} backups; seen corrupt after a kill: "
        f"{sorted(bad_backups) or 'none'}; still corrupt at the end: {corrupt_now or 'none'}"
    )
    assert not bad_backups, (
        f"backups that held no earlier version after a kill (killed mid-copy): {sorted(bad_backups)}"
    )


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


def test_cleanup_survives_kill_9_at_random_moments(tmp_path: Path) -> None:
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    home = tmp_path / "home"
    ssh_dir = home / ".ssh" / "cloudX"
    ssh_dir.mkdir(parents=True, mode=0o700)
    target = ssh_dir / "config"
    old = messy_config().encode()
    new, dropped = cp.canonical_config(old.decode(), "WHEN")
    assert dropped and normalized(new.encode()) != normalized(old), "cleanup has something to do"
    env = {"HOME": str(home), "PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"}
    argv = [sys.executable, str(ROOT / "cloudx_proxy.py"), "cleanup"]

    def reset() -> None:
        target.write_bytes(old)
        os.chmod(target, 0o600)

    # One full run to time it: kills land anywhere from start-up to exit (and a little after).
    reset()
    began = time.monotonic()
    full = subprocess.run(argv, env=env, capture_output=True, timeout=60, start_new_session=True)
    span = time.monotonic() - began
    assert full.returncode == 0, full.stderr.decode(errors="replace")
    assert normalized(target.read_bytes()) == normalized(new.encode())
    assert backups(target) == {"config.bak": old}

    outcome = {"old": 0, "new": 0}
    bad_backups: set[str] = set()
    began = time.monotonic()
    for i in range(KILLS):
        reset()
        proc = start(argv, env)
        try:
            time.sleep(rng.uniform(0, span * 1.2))
        finally:
            out, err = kill_and_reap(proc)
        where = f"kill {i + 1} (seed {seed})"
        assert b"Traceback" not in err, f"{where}: {err.decode(errors='replace')}"
        now = target.read_bytes()
        if now == old:
            outcome["old"] += 1
        else:
            assert normalized(now) == normalized(new.encode()), f"{where}: the config is neither version"
            outcome["new"] += 1
        assert os.stat(target).st_mode & 0o777 == 0o600
        saved = backups(target)
        assert saved.get("config.bak") == old, f"{where}: config.bak changed"
        bad_backups |= {name for name, data in saved.items() if data != old}
        assert "config" not in leftovers(ssh_dir)
    reset()
    final = subprocess.run(argv, env=env, capture_output=True, timeout=60, start_new_session=True)
    assert final.returncode == 0, final.stderr.decode(errors="replace")
    print(
        f"\ncleanup: {KILLS} kills in {time.monotonic() - began:.1f}s (seed {seed}, run {span * 1000:.0f} ms), "
        f"config old/new after kill {outcome['old']}/{outcome['new']}, "
        f"{len(leftovers(ssh_dir))} leftover temp files, corrupt backups: {sorted(bad_backups) or 'none'}"
    )
    assert not bad_backups, f"backups that hold no earlier version (killed mid-copy): {sorted(bad_backups)}"

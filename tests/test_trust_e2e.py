"""The local trust boundary (issue 12), end to end: a hostile local environment and a hostile endpoint.

Run as root in CI, with a second local user ``cloudxother`` (made by .ci/run) that owns the cache
dirs and planted files we must refuse. A planted bytecode file creates a marker file when it runs:
the marker must never appear. Connects go through the real ssh, aws CLI and rig (docs/test-rig.md).
"""

from __future__ import annotations

import hashlib
import http.server
import importlib.util
import json
import marshal
import os
import pwd
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import zlib
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import skip_or_fail
from helpers import ssh
from rig import Home, Rig

ROOT = Path(__file__).resolve().parent.parent
OTHER = "cloudxother"
SOURCE = (ROOT / "cloudx_proxy.py").read_bytes()
MAGIC = importlib.util.MAGIC_NUMBER
SHA = hashlib.sha256(SOURCE).hexdigest()
# What build_zipapp.py's __main__ reads: the entry name and header for this interpreter and source.
ENTRY = f"code-{MAGIC.hex()}-{SHA[:32]}.bin"
HEADER = b"cloudx-proxy bytecode\n" + MAGIC + SHA.encode() + b"\n"
# The name the earlier __main__ (cache_tag, crc32, size) loaded without any check.
LEGACY_ENTRY = f"code-{sys.implementation.cache_tag}-{zlib.crc32(SOURCE):08x}-{len(SOURCE)}.bin"


@pytest.fixture(scope="module")
def other() -> tuple[int, int]:
    """uid and gid of the second local user."""
    if os.getuid() != 0:
        skip_or_fail("the hostile-environment tests run as root (they chown files to another user)")
    try:
        pw = pwd.getpwnam(OTHER)
    except KeyError:
        skip_or_fail(f"no local user {OTHER} (.ci/run creates it: useradd {OTHER})")
        raise
    return pw.pw_uid, pw.pw_gid


def plant(marker: Path) -> bytes:
    """Code that creates the marker when it runs: what an attacker would put in our cache."""
    return marshal.dumps(compile(f"open({str(marker)!r}, 'w').close()\n", "planted", "exec"))


def fill_hostile(cache: Path, marker: Path) -> None:
    """Plant code under the current and the legacy entry name."""
    cache.mkdir(parents=True, exist_ok=True)
    (cache / ENTRY).write_bytes(HEADER + plant(marker))
    (cache / LEGACY_ENTRY).write_bytes(plant(marker))


def chown_tree(path: Path, uid: int, gid: int) -> None:
    for p in [path, *path.rglob("*")]:
        os.lchown(p, uid, gid)


def version(pyz: Path, xdg: Path) -> subprocess.CompletedProcess[str]:
    """Run the zipapp's --version -v with XDG_CACHE_HOME=xdg (the bytecode loader runs first)."""
    env = {"PATH": "/usr/bin:/bin", "HOME": str(xdg.parent), "XDG_CACHE_HOME": str(xdg), "LANG": "C.UTF-8"}
    return subprocess.run(
        [sys.executable, str(pyz), "-v", "--version"], env=env, capture_output=True, text=True, timeout=60
    )


def good_entry(path: Path) -> bool:
    """True when path is a cache entry we wrote: our header, then code."""
    data = path.read_bytes()
    return data.startswith(HEADER) and type(marshal.loads(data[len(HEADER) :])) is type(good_entry.__code__)


# --- the bytecode loader (zipapp only, no AWS) --------------------------------------
@pytest.mark.parametrize("case", ["foreign owner", "group-writable", "foreign symlink", "our symlink to foreign"])
def test_planted_bytecode_in_an_untrusted_dir_never_runs(
    pyz: Path, tmp_path: Path, other: tuple[int, int], case: str
) -> None:
    marker = tmp_path / "PLANT-RAN"
    xdg = tmp_path / "xdg"
    xdg.mkdir()
    cache = xdg / "cloudx-proxy"
    if case in ("foreign owner", "group-writable"):
        fill_hostile(cache, marker)
        if case == "foreign owner":
            chown_tree(cache, *other)
            os.chmod(cache, 0o777)  # as in shared scratch space
        else:
            os.chmod(cache, 0o770)  # ours, but the group can plant
    else:
        elsewhere = tmp_path / "elsewhere"
        fill_hostile(elsewhere, marker)
        chown_tree(elsewhere, *other)
        cache.symlink_to(elsewhere)
        if case == "foreign symlink":
            os.lchown(cache, *other)
    res = version(pyz, xdg)
    assert res.returncode == 0 and res.stdout == "cloudx-proxy 0.1.0\n", res.stderr
    assert not marker.exists(), "planted bytecode ran"
    assert "compiling in memory" in res.stderr, "--verbose says why the cache is not used"
    assert "Traceback" not in res.stderr
    target = cache.resolve()
    assert sorted(os.listdir(target)) == sorted([ENTRY, LEGACY_ENTRY]), "nothing read, written or removed there"


def test_bad_entries_in_our_dir_are_replaced(pyz: Path, tmp_path: Path, other: tuple[int, int]) -> None:
    marker = tmp_path / "PLANT-RAN"
    xdg = tmp_path / "xdg"
    cache = xdg / "cloudx-proxy"
    cache.mkdir(parents=True, mode=0o700)
    entry = cache / ENTRY
    good = b""
    # A plant owned by someone else, a symlink, something that is not code, a truncated entry, garbage.
    cases = {
        "foreign file": lambda: (entry.write_bytes(HEADER + plant(marker)), os.chown(entry, *other)),
        "symlink": lambda: ((tmp_path / "t").write_bytes(HEADER + plant(marker)), entry.symlink_to(tmp_path / "t")),
        "not code": lambda: entry.write_bytes(HEADER + marshal.dumps({"not": "code"})),
        "truncated": lambda: entry.write_bytes(good[: len(good) // 2]),
        "garbage": lambda: entry.write_bytes(os.urandom(300)),
        "fifo": lambda: os.mkfifo(entry),  # must not block the start-up
        "other source": lambda: entry.write_bytes(HEADER.replace(SHA.encode(), b"0" * 64) + plant(marker)),
    }
    first = version(pyz, xdg)
    assert first.returncode == 0 and good_entry(entry), first.stderr
    good = entry.read_bytes()
    for case, make in cases.items():
        entry.unlink()
        make()
        res = version(pyz, xdg)
        assert res.returncode == 0 and res.stdout == "cloudx-proxy 0.1.0\n", (case, res.stderr)
        assert "Traceback" not in res.stderr and "replacing it" in res.stderr, (case, res.stderr)
        assert not entry.is_symlink() and entry.stat().st_uid == 0 and good_entry(entry), case
        assert not marker.exists(), f"{case}: planted bytecode ran"
        if case == "symlink":
            assert (tmp_path / "t").read_bytes().startswith(HEADER + plant(marker)[:8]), "its target is untouched"
    # The legacy entry (of the earlier loader) is never read, and is removed with the next write.
    (cache / LEGACY_ENTRY).write_bytes(plant(marker))
    entry.unlink()
    assert version(pyz, xdg).returncode == 0
    assert sorted(os.listdir(cache)) == [ENTRY] and not marker.exists()


# --- connect through the rig with a hostile cache dir ---------------------------------
def test_connect_with_a_foreign_cache_dir_full_of_traps(
    rig: Rig, home: Home, pyz: Path, tmp_path: Path, other: tuple[int, int]
) -> None:
    """Shared scratch space: another user made our cache dir (0777) and planted code and symlinks in it."""
    iid = rig.add_instance()
    marker = tmp_path / "PLANT-RAN"
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    xdg = tmp_path / "scratch"
    cache = xdg / "cloudx-proxy"
    fill_hostile(cache, marker)
    traps = [f"push-eu-west-1-{iid}-ec2-user-cloudX.json", f"lock-eu-west-1-{iid}", f"started-eu-west-1-{iid}"]
    traps += ["gate-1-1", "gate-1-1.pid", "gate-1-1.ready"]  # gate-like names (the real ones are unpredictable)
    for name in traps:
        (cache / name).symlink_to(victim)
    chown_tree(cache, *other)
    os.chmod(cache, 0o777)
    before = sorted(os.listdir(cache))
    env = dict(rig.env(home), XDG_CACHE_HOME=str(xdg))
    res = ssh(rig, home, pyz, iid, "echo ok", args="-v", env=env)
    assert res.returncode == 0 and res.stdout == "ok\n", res.stderr
    assert not marker.exists(), "planted bytecode ran"
    assert victim.read_text() == "precious\n"
    assert sorted(os.listdir(cache)) == before, "nothing created in (or removed from) someone else's dir"
    assert "owned by uid" in res.stderr and "Traceback" not in res.stderr


def test_connect_with_bad_entries_in_our_cache_dir(
    rig: Rig, home: Home, pyz: Path, tmp_path: Path, other: tuple[int, int]
) -> None:
    """Our own 0700 dir: a non-code entry, a plant owned by another user, a push record that is a symlink."""
    iid = rig.add_instance()
    marker = tmp_path / "PLANT-RAN"
    xdg = tmp_path / "xdg"
    cache = xdg / "cloudx-proxy"
    cache.mkdir(parents=True, mode=0o700)
    (cache / ENTRY).write_bytes(HEADER + marshal.dumps(42))
    (cache / LEGACY_ENTRY).write_bytes(plant(marker))
    os.chown(cache / LEGACY_ENTRY, *other)
    # A record that would make connect skip the key push if it were followed (and then fail).
    fake = tmp_path / "record.json"
    record = {
        "profile": "cloudX",
        "key": " ".join(home.pub.read_text().split()[:2]),
        "config": str(home.path / ".aws" / "config"),
        "credentials": str(home.path / ".aws" / "credentials"),
        "t": time.time() + 30,
    }
    fake.write_text(json.dumps(record))
    push = cache / f"push-eu-west-1-{iid}-ec2-user-cloudX.json"
    push.symlink_to(fake)
    res = ssh(rig, home, pyz, iid, "echo ok", args="-v", env=dict(rig.env(home), XDG_CACHE_HOME=str(xdg)))
    assert res.returncode == 0 and res.stdout == "ok\n", res.stderr
    assert not marker.exists(), "planted bytecode ran"
    assert any(c["action"] == "SendSSHPublicKey" and iid in c["instance_ids"] for c in rig.calls())
    assert good_entry(cache / ENTRY) and not (cache / LEGACY_ENTRY).exists()
    assert not push.is_symlink() and json.loads(fake.read_text()) == record, "the symlink was replaced, not followed"


# --- a hostile endpoint: what AWS returns reaches no config line ------------------------
DESCRIBE_XML = """<?xml version="1.0" encoding="UTF-8"?>
<DescribeInstancesResponse xmlns="http://ec2.amazonaws.com/doc/2016-11-15/">
<requestId>fake</requestId><reservationSet><item><reservationId>r-1</reservationId><ownerId>1</ownerId>
<instancesSet><item>{id}<instanceState><code>16</code><name>running</name></instanceState>
<tagSet><item><key>Name</key><value>trapped</value></item></tagSet></item></instancesSet>
</item></reservationSet></DescribeInstancesResponse>"""
ANSWERS = {
    "malformed id": "<instanceId>i-0123456789abcdef0&#10;    ProxyCommand sh -c 'touch /tmp/pwned'</instanceId>",
    "missing key": "",
}


class FakeEndpoint(http.server.BaseHTTPRequestHandler):
    """Answers DescribeInstances itself (with ANSWERS[server.case]); forwards everything else to the rig."""

    def do_POST(self) -> None:  # noqa: N802 - http.server's name
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        if b"Action=DescribeInstances" in body:
            status, data, ctype = 200, DESCRIBE_XML.format(id=ANSWERS[self.server.case]).encode(), "text/xml"  # type: ignore[attr-defined]
        else:
            headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "content-length")}
            request = urllib.request.Request(self.server.upstream + self.path, body, headers)  # type: ignore[attr-defined]
            try:
                with urllib.request.urlopen(request, timeout=60) as up:
                    status, data, ctype = up.status, up.read(), up.headers.get("Content-Type", "")
            except urllib.error.HTTPError as e:
                status, data, ctype = e.code, e.read(), e.headers.get("Content-Type", "")
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def fake_endpoint(rig: Rig) -> Iterator[http.server.ThreadingHTTPServer]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), FakeEndpoint)
    server.upstream = rig.endpoint_url  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


@pytest.mark.parametrize("case", sorted(ANSWERS))
def test_name_lookup_answer_is_validated(
    rig: Rig, home: Home, pyz: Path, fake_endpoint: http.server.ThreadingHTTPServer, case: str
) -> None:
    fake_endpoint.case = case  # type: ignore[attr-defined]
    main_config = home.path / ".ssh" / "config"
    main_config.write_text("Host mine\n  User me\n")
    env = dict(rig.env(home), AWS_ENDPOINT_URL=f"http://127.0.0.1:{fake_endpoint.server_address[1]}")
    res = subprocess.run(
        [sys.executable, str(pyz), "setup", "--instance", "trapped", "--environment", "dev", "--yes"],
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=240,
    )
    errors = [line for line in res.stderr.splitlines() if "error" in line]
    assert res.returncode == 1, res.stderr
    assert len(errors) == 1 and "unexpected answer from AWS" in errors[0], res.stderr
    assert "Traceback" not in res.stderr
    assert main_config.read_text() == "Host mine\n  User me\n"
    assert not (home.ssh_dir / "config").exists(), "no config written from a bad answer"


# --- children that print bytes that are not UTF-8 ---------------------------------------
def stand_in(bin_dir: Path, name: str, script: str) -> None:
    bin_dir.mkdir(exist_ok=True)
    path = bin_dir / name
    path.write_text("#!/bin/sh\n" + script)
    path.chmod(0o755)


def test_setup_check_survives_non_utf8_output(rig: Rig, home: Home, pyz: Path, tmp_path: Path) -> None:
    """The remote login script prints 0xff: setup's instance check reads on, no traceback."""
    iid = rig.add_instance()
    bin_dir = tmp_path / "bin"
    stand_in(bin_dir, "ssh", "printf '\\377\\376 motd\\ndone\\n'; printf 'warn \\377\\n' >&2\n")
    env = rig.env(home)
    env["PATH"] = f"{bin_dir}:{env['PATH']}"
    res = subprocess.run(
        [sys.executable, str(pyz), "setup", "--instance", iid, "--hostname", "bytes", "--yes"],
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert res.returncode == 0, res.stderr
    assert "the instance's setup is complete" in res.stderr and "Traceback" not in res.stderr


def test_doctor_survives_non_utf8_output_and_reports_the_cache_dir(
    rig: Rig, home: Home, pyz: Path, tmp_path: Path, other: tuple[int, int]
) -> None:
    bin_dir = tmp_path / "bin"
    stand_in(bin_dir, "session-manager-plugin", "printf '1.2.\\377\\n'\n")
    stand_in(bin_dir, "ssh", '[ "$1" = -V ] && printf "OpenSSH_9.\\377p1\\n" >&2; exit 0\n')
    xdg = tmp_path / "xdg"
    (xdg / "cloudx-proxy").mkdir(parents=True)
    os.chown(xdg / "cloudx-proxy", *other)
    env = dict(rig.env(home), XDG_CACHE_HOME=str(xdg))
    env["PATH"] = f"{bin_dir}:{env['PATH']}"
    res = subprocess.run(
        [sys.executable, str(pyz), "doctor"], env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True
    )
    assert "Traceback" not in res.stderr and res.stderr == "", res.stderr
    assert "ok    session-manager-plugin: 1.2.\ufffd" in res.stdout
    assert "warn  ssh version: cannot tell the OpenSSH version: OpenSSH_9.\ufffdp1" in res.stdout
    uid = other[0]
    assert f"warn  cache dir: {xdg / 'cloudx-proxy'} is owned by uid {uid}, not by you" in res.stdout
    os.chown(xdg / "cloudx-proxy", 0, 0)
    os.chmod(xdg / "cloudx-proxy", 0o775)
    res = subprocess.run([sys.executable, str(pyz), "doctor", "--json"], env=env, capture_output=True, text=True)
    cache = next(f for f in json.loads(res.stdout) if f["check"] == "cache dir")
    assert cache["level"] == "warn" and "writable by others (mode 775)" in cache["detail"]
    assert cache["fix"] == f"chmod 700 {xdg / 'cloudx-proxy'}"


# --- dry runs write nothing (besides the bytecode cache) ----------------------------------
def snapshot(root: Path) -> dict[str, tuple[int, int, int]]:
    """Every path under root with its mode, size and mtime; bytecode cache entries left out."""
    out = {}
    for p in [root, *root.rglob("*")]:
        if p.name.startswith("code-") and p.parent.name == "cloudx-proxy":
            continue
        st = p.lstat()
        out[str(p.relative_to(root))] = (st.st_mode, st.st_size, st.st_mtime_ns)
    return out


def test_dry_runs_write_nothing(rig: Rig, home: Home, pyz: Path) -> None:
    iid = rig.add_instance()
    legacy = home.path / ".ssh" / "vscode"
    legacy.mkdir(parents=True)
    (legacy / "config").write_text("Host cloudx-*\n  User ec2-user\n")
    (home.path / ".ssh" / "config").write_text(f"Include {legacy / 'config'}\n")
    home.ssh_dir.mkdir(exist_ok=True)
    (home.ssh_dir / "config").write_text("Host cloudX-dev-a\n  HostName i-11111111\nHost cloudX-*\n  User ec2-user\n")
    env = rig.env(home)
    subprocess.run([sys.executable, str(pyz), "--version"], env=env, check=True, capture_output=True)  # bytecode
    runs = {  # each would change something: what it says it would do
        "setup": (["--instance", iid, "--hostname", "dry", "--yes", "--dry-run"], "+Host cloudX-dev-dry"),
        "cleanup": (["--dry-run"], "would change"),
        "migrate": (["--dry-run"], "would change"),
        "connect": ([iid, "--dry-run"], "push the key (only a running instance accepts it)"),
        "list": (["--dry-run"], "would read"),
    }
    before = snapshot(home.path)
    for command, (args, says) in runs.items():
        res = subprocess.run(
            [sys.executable, str(pyz), command, *args],
            env=env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
        )
        assert res.returncode == 0 and says in res.stderr, (command, res.stderr)
        assert snapshot(home.path) == before, f"{command} --dry-run wrote something"

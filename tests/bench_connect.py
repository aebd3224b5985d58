#!/usr/bin/env python3
"""Benchmark `ssh HOST true` through our ProxyCommand against PyPI cloudx-proxy and a naive one.

Contenders, all driven by the real ``ssh`` client through the test rig (docs/test-rig.md):

* ours:  ``python3 cloudx_proxy.pyz connect %h %p --profile cloudX --ssh-key cloudX``
* ref:   PyPI ``cloudx-proxy==0.17.6`` in its own venv (boto3 + ``aws ssm start-session``)
* naive: ``sh -c 'aws ec2-instance-connect send-ssh-public-key ... && exec aws ssm start-session'``

Scenarios (runs interleaved across contenders, order rotated every round):

* warm:   instance running and Online; our push records are deleted first (a first connect)
* repeat: a connect right after a successful one (ours reuses its fresh push record)
* cold:   instance stopped, Online ``--online-delay`` s after StartInstances (naive cannot start it)

Per connect: wall time, client-side CPU time (ssh and every process below it), API calls
from the endpoint log (aws CLI processes vs boto3 calls) and when each first arrived. Also
the memory of the process tree that holds an open session, our own start-up cost and the
cost of one aws CLI process alone vs two side by side (what our warm connect runs).
Needs root, sshd and the rig's Python (moto, boto3, awscli v1), e.g.::

    /tmp/civenv/bin/python tests/bench_connect.py [--json bench.json]

A script, not a test: pytest does not collect it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent
sys.path.insert(0, str(TESTS))

from rig import Home, Rig, descendants, have_prerequisites  # noqa: E402

REF_VERSION = "0.17.6"
REF_VENV = Path.home() / ".cache" / "cloudx-bench" / f"venv-{REF_VERSION}"
PROFILE = "cloudX"
REGION = "eu-west-1"
OS_USER = "ec2-user"
SSH_TIMEOUT = 180.0
SCENARIOS = ("warm", "repeat", "cold")


# ---------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------
@dataclass
class Contender:
    """One way of connecting: a name and the ProxyCommand ssh runs."""

    name: str
    proxy: str
    describe: str
    marker: str = ""  # a cmdline substring that identifies its own (long-lived) process


@dataclass
class Run:
    """One timed `ssh HOST ...`: wall time, outcome, and what reached the endpoint."""

    seconds: float
    rc: int
    stderr: str
    calls: list[dict[str, Any]]
    started: float  # time.time() at spawn, to place the endpoint log on a timeline
    cpu: float | None = None  # CPU s of ssh and everything below it (None: not measurable)
    linger: float = 0.0  # s that processes of the ProxyCommand outlived ssh
    gap: float | None = None  # repeat: seconds since the previous connect ended

    @property
    def ok(self) -> bool:
        return self.rc == 0

    def summary(self) -> dict[str, Any]:
        """Per-connect counts: actions, aws CLI processes, boto3 calls, others."""
        agents = [c.get("user_agent", "") for c in self.calls]
        cli = sum("aws-cli/" in a for a in agents)
        boto = sum("Boto3/" in a for a in agents)
        return {
            "actions": dict(sorted(Counter(c["action"] for c in self.calls).items())),
            "aws_cli": cli,
            "boto3": boto,
            "other": len(agents) - cli - boto,
        }

    def timeline(self) -> dict[str, float]:
        """Seconds after spawn of the first call of each action, plus 'exit'."""
        out: dict[str, float] = {}
        for c in sorted(self.calls, key=lambda c: c["t"]):
            out.setdefault(c["action"], c["t"] - self.started)
        out["exit"] = self.seconds
        return out


@dataclass
class Stats:
    """Summary of a Series, in seconds."""

    min: float
    median: float
    max: float
    cpu_median: float | None
    linger_max: float


@dataclass
class Series:
    """All runs of one contender in one scenario."""

    runs: list[Run] = field(default_factory=list)

    def times(self) -> list[float]:
        return [r.seconds for r in self.runs if r.ok]

    def stats(self) -> Stats | None:
        """Wall time of the successful runs, their median CPU, the longest linger."""
        t = self.times()
        if not t:
            return None
        cpu = [r.cpu for r in self.runs if r.ok and r.cpu is not None]
        return Stats(
            min=min(t),
            median=statistics.median(t),
            max=max(t),
            cpu_median=statistics.median(cpu) if cpu else None,
            linger_max=max(r.linger for r in self.runs),
        )


# ---------------------------------------------------------------------------
# Processes
# ---------------------------------------------------------------------------
def children_map() -> dict[int, list[int]]:
    """ppid -> pids, from /proc."""
    out: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        out.setdefault(ppid, []).append(int(entry))
    return out


def cmdline(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [a.decode(errors="replace") for a in raw.split(b"\0") if a]


def short_command(argv: list[str], width: int = 64) -> str:
    """A compact command line: basenames of paths, truncated."""
    words = [os.path.basename(a) if a.startswith("/") else a for a in argv]
    text = " ".join(words)
    return text if len(text) <= width else text[: width - 3] + "..."


def status_kb(pid: int, key: str = "VmRSS") -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def pss_kb(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


class PeakSampler:
    """Samples, every 10 ms until stopped, the summed RSS below ssh (ssh excluded; our zipapp's processes
    anywhere): the transient peak of a connect."""

    def __init__(self, ssh_pid: int, marker: str) -> None:
        import threading

        self.ssh_pid, self.marker, self.peak_kb = ssh_pid, marker, 0
        self.done = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self) -> None:
        while not self.done.is_set():
            mine = [
                int(e) for e in os.listdir("/proc")
                if e.isdigit() and int(e) != self.ssh_pid and self.marker in " ".join(cmdline(int(e)))
            ]  # fmt: skip
            total = sum(status_kb(p) or 0 for p in dict.fromkeys([*descendants(self.ssh_pid), *mine]))
            self.peak_kb = max(self.peak_kb, total)
            self.done.wait(0.01)

    def stop(self) -> None:
        self.done.set()
        self.thread.join()


def kill_pids(pids: list[int]) -> None:
    """SIGKILL each pid (processes this script started, directly or through ssh)."""
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


def become_subreaper() -> bool:
    """Adopt orphaned descendants (PR_SET_CHILD_SUBREAPER), so their CPU time can be counted.

    ssh does not wait for its ProxyCommand, and the ProxyCommand's children may
    outlive it; as a subreaper we reap them and getrusage(RUSAGE_CHILDREN) sees them all.
    """
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        return bool(libc.prctl(36, 1, 0, 0, 0) == 0)  # PR_SET_CHILD_SUBREAPER
    except (OSError, AttributeError):
        return False


def children_cpu() -> float:
    """User + system CPU seconds of all reaped children (and their reaped descendants)."""
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def kill_tree(proc: subprocess.Popen[str]) -> None:
    """Kill a process we spawned and everything below it, by pid."""
    kill_pids([proc.pid, *descendants(proc.pid)])
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        pass


# ---------------------------------------------------------------------------
# Set-up
# ---------------------------------------------------------------------------
def real_python() -> str:
    """The real interpreter behind sys.executable (not a venv link or a pyenv shim)."""
    base = getattr(sys, "_base_executable", "") or sys.executable
    return os.path.realpath(base)


def build_zipapp(target: Path) -> str:
    res = subprocess.run(
        [sys.executable, str(ROOT / "build_zipapp.py"), str(target)], capture_output=True, text=True, check=True
    )
    return res.stdout.strip()


def ensure_reference(venv: Path, python: str) -> tuple[Path | None, str]:
    """cloudx-proxy==REF_VERSION in venv (made with python), reused if present."""
    exe = venv / "bin" / "cloudx-proxy"
    probe = [
        str(venv / "bin" / "python"),
        "-c",
        "import importlib.metadata as m; print(m.version('cloudx-proxy'), m.version('boto3'))",
    ]

    def installed() -> str | None:
        if not exe.exists():
            return None
        res = subprocess.run(probe, capture_output=True, text=True)
        words = res.stdout.split()
        return res.stdout.strip() if res.returncode == 0 and words[:1] == [REF_VERSION] else None

    found = installed()
    if found:
        return exe, f"reused {venv} ({found.replace(' ', ', boto3 ')})"
    print(
        f"setting up the reference: {python} -m venv {venv}; pip install cloudx-proxy=={REF_VERSION}", file=sys.stderr
    )
    try:
        subprocess.run([python, "-m", "venv", "--clear", str(venv)], check=True, capture_output=True, text=True)
        subprocess.run(
            [
                str(venv / "bin" / "python"),
                "-m",
                "pip",
                "install",
                "-q",
                "--disable-pip-version-check",
                f"cloudx-proxy=={REF_VERSION}",
            ],
            check=True,
            capture_output=True,
            text=True,
            timeout=600,
        )
    except (OSError, subprocess.SubprocessError) as e:
        detail = getattr(e, "stderr", "") or str(e)
        return None, f"cannot install cloudx-proxy=={REF_VERSION}: {detail.strip()[-400:]}"
    found = installed()
    if not found:
        return None, f"cloudx-proxy=={REF_VERSION} did not install into {venv}"
    return exe, f"installed into {venv} ({found.replace(' ', ', boto3 ')})"


def ssh_escape(text: str) -> str:
    """Protect a literal string from ssh's %-expansion in ProxyCommand."""
    return text.replace("%", "%%")


def naive_proxy(pub: Path) -> str:
    """The two aws calls a hand-written ProxyCommand would make."""
    base = f"--profile {PROFILE} --region {REGION}"
    inner = (
        f"aws ec2-instance-connect send-ssh-public-key --instance-id %h --instance-os-user "
        f"{OS_USER} --ssh-public-key {shlex.quote('file://' + ssh_escape(str(pub)))} {base}"
        f" >/dev/null && exec aws ssm start-session --target %h --document-name "
        f"AWS-StartSSHSession --parameters portNumber=%p {base}"
    )
    return f"sh -c {shlex.quote(inner)}"


# ---------------------------------------------------------------------------
# The benchmark
# ---------------------------------------------------------------------------
class Bench:
    """Owns the contenders and runs the scenarios on one rig and one HOME."""

    def __init__(
        self,
        rig: Rig,
        home: Home,
        env: dict[str, str],
        contenders: list[Contender],
        python: str,
        pyz: Path,
        verbose: bool,
    ) -> None:
        self.rig, self.home, self.env = rig, home, env
        self.contenders = contenders
        self.python, self.pyz = python, pyz
        self.verbose = verbose
        self.cache = home.path / ".cache" / "cloudx-proxy"
        self.instance_ids: list[str] = []
        self.warnings: list[str] = []
        self.subreaper = become_subreaper()

    def note(self, msg: str) -> None:
        if self.verbose:
            print(msg, file=sys.stderr, flush=True)

    def warn(self, msg: str) -> None:
        self.warnings.append(msg)
        print("warning: " + msg, file=sys.stderr, flush=True)

    # --- helpers -------------------------------------------------------------
    def reap_orphans(self, timeout: float = 10.0) -> float:
        """Wait until no adopted process is left (kill by pid after timeout); seconds waited."""
        if not self.subreaper:
            return 0.0
        keep = {p.pid for p in self.rig.procs}
        t0 = time.monotonic()
        killed = False
        while True:
            mine = [pid for pid in children_map().get(os.getpid(), []) if pid not in keep]
            alive = []
            for pid in mine:
                try:
                    done, _ = os.waitpid(pid, os.WNOHANG)
                except ChildProcessError:
                    continue
                if not done:
                    alive.append(pid)
            if not alive:
                return time.monotonic() - t0
            if time.monotonic() - t0 > timeout:
                if killed:
                    self.warn(f"cannot reap {alive}; CPU times may be incomplete")
                    return time.monotonic() - t0
                self.warn(
                    f"killing {len(alive)} processes still running {timeout:.0f} s after "
                    f"their ssh exited: {[short_command(cmdline(p)) for p in alive]}"
                )
                kill_pids(alive)
                killed, timeout = True, timeout + 5
            time.sleep(0.01)

    def forget_pushes(self) -> None:
        """Delete our push records (and start markers): the next connect is a first one."""
        for pattern in ("push-*", "started-*"):
            for f in self.cache.glob(pattern):
                f.unlink(missing_ok=True)

    def ssh(self, c: Contender, iid: str, *remote: str) -> Run:
        """Time `ssh iid REMOTE` through c's ProxyCommand, with a clean endpoint log."""
        argv = self.rig.ssh_argv(self.home, iid, c.proxy, *remote)
        self.rig.clear_calls()
        self.reap_orphans()
        cpu0 = children_cpu()
        started = time.time()
        t0 = time.perf_counter()
        proc = subprocess.Popen(
            argv, env=self.env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        try:
            _, err = proc.communicate(timeout=SSH_TIMEOUT)
        except subprocess.TimeoutExpired:
            kill_tree(proc)
            _, err = proc.communicate()
            err += f"\n[bench] killed after {SSH_TIMEOUT:.0f} s"
        seconds = time.perf_counter() - t0
        linger = self.reap_orphans()
        cpu = children_cpu() - cpu0 if self.subreaper else None
        run = Run(
            seconds=seconds,
            rc=proc.returncode,
            stderr=err,
            calls=self.rig.calls(),
            started=started,
            cpu=cpu,
            linger=linger,
        )
        self.note(
            f"  {c.name:5} {iid} {' '.join(remote):8} {seconds:6.2f} s rc={proc.returncode} {run.summary()['actions']}"
        )
        if not run.ok:
            self.warn(f"{c.name}: ssh {iid} {' '.join(remote)} exited {run.rc}: {err.strip()[-300:]}")
        return run

    def verify(self, iid: str) -> list[Contender]:
        """Connect once with each contender (untimed warm-up); drop those that fail."""
        good = []
        for c in self.contenders:
            run = self.ssh(c, iid, "echo", "bench-ok")
            if run.ok:
                good.append(c)
            else:
                self.warn(f"{c.name} does not connect through the rig; left out")
        return good

    # --- scenarios ------------------------------------------------------------
    def warm_and_repeat(self, iid: str, runs: int, scenarios: list[str]) -> dict[str, dict[str, Series]]:
        """Per round and contender: a warm connect (or an untimed one), then a repeat."""
        out: dict[str, dict[str, Series]] = {
            s: {c.name: Series() for c in self.contenders} for s in ("warm", "repeat") if s in scenarios
        }
        for r in range(runs):
            self.note(f"round {r + 1}/{runs} (warm/repeat)")
            k = r % len(self.contenders)
            for c in self.contenders[k:] + self.contenders[:k]:
                if c.name == "ours":
                    self.forget_pushes()
                first = self.ssh(c, iid, "true")
                if "warm" in out:
                    out["warm"][c.name].runs.append(first)
                if "repeat" in out and first.ok:
                    run = self.ssh(c, iid, "true")
                    run.gap = run.started - (first.started + first.seconds)
                    out["repeat"][c.name].runs.append(run)
        return out

    def stop(self, iid: str) -> None:
        """Stop the instance in moto and check that the endpoint shows it stopped and offline."""
        self.rig.moto_client("ec2").stop_instances(InstanceIds=[iid])
        deadline = time.monotonic() + 30
        while True:
            state, ping = self.endpoint_view(iid)
            if state == "stopped" and ping != "Online":
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"{iid} is still {state}/{ping} after stopping it")
            time.sleep(0.2)
        self.rig.clear_calls()

    def endpoint_view(self, iid: str) -> tuple[str, str | None]:
        """(EC2 state, SSM PingStatus) as the endpoint shows them to clients."""
        import boto3

        kw = {
            "endpoint_url": self.rig.endpoint_url,
            "region_name": REGION,
            "aws_access_key_id": "testing",
            "aws_secret_access_key": "testing",
        }
        ec2, ssm = boto3.client("ec2", **kw), boto3.client("ssm", **kw)
        res = ec2.describe_instances(InstanceIds=[iid])
        state = res["Reservations"][0]["Instances"][0]["State"]["Name"]
        info = ssm.describe_instance_information(Filters=[{"Key": "InstanceIds", "Values": [iid]}])[
            "InstanceInformationList"
        ]
        return state, (info[0]["PingStatus"] if info else None)

    def cold(self, iid: str, runs: int) -> dict[str, Series]:
        """Stopped instance; each contender starts it and waits for SSM Online."""
        contenders = [c for c in self.contenders if c.name != "naive"]
        out = {c.name: Series() for c in contenders}
        for r in range(runs):
            self.note(f"round {r + 1}/{runs} (cold)")
            k = r % len(contenders)
            for c in contenders[k:] + contenders[:k]:
                self.stop(iid)
                if c.name == "ours":
                    self.forget_pushes()
                out[c.name].runs.append(self.ssh(c, iid, "true"))
        self.stop(iid)
        return out

    # --- memory -----------------------------------------------------------------
    def memory(self, iid: str, settle: float = 1.0) -> dict[str, Any]:
        """RSS of the ssh process's descendants while a session is open, per contender."""
        out: dict[str, Any] = {}
        for c in self.contenders:
            argv = self.rig.ssh_argv(self.home, iid, c.proxy, "echo ready; sleep 6")
            t0 = time.perf_counter()
            proc = subprocess.Popen(
                argv, env=self.env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
            )
            peak = PeakSampler(proc.pid, str(self.pyz))
            try:
                assert proc.stdout is not None
                line = proc.stdout.readline()
                up = time.perf_counter() - t0
                peak.stop()
                if line != "ready\n":
                    self.warn(f"memory: {c.name} session did not come up ({line!r})")
                    continue
                time.sleep(settle)
                procs = []
                # ssh's descendants, and anything else running our zipapp (a forked watcher is reparented)
                mine = [
                    int(e) for e in os.listdir("/proc")
                    if e.isdigit() and int(e) != proc.pid and str(self.pyz) in " ".join(cmdline(int(e)))
                ]  # fmt: skip
                for pid in dict.fromkeys([*descendants(proc.pid), *mine]):
                    argv_p = cmdline(pid)
                    rss = status_kb(pid)
                    if rss is None or not argv_p:
                        continue
                    procs.append(
                        {
                            "pid": pid,
                            "command": short_command(argv_p),
                            "rss_kb": rss,
                            "pss_kb": pss_kb(pid),
                            "ours": any("cloudx_proxy" in a for a in argv_p),
                            "ref": any("cloudx-proxy" in a for a in argv_p),
                        }
                    )
                out[c.name] = {
                    "session_up_s": up,
                    "sampled_after_s": time.perf_counter() - t0,
                    "processes": procs,
                    "rss_kb": sum(p["rss_kb"] for p in procs),
                    "pss_kb": sum(p["pss_kb"] or 0 for p in procs),
                    "connector_alive": any(p["ours"] or p["ref"] for p in procs),
                    "peak_connect_rss_kb": peak.peak_kb,
                }
                proc.communicate(timeout=30)
            finally:
                peak.stop()
                if proc.poll() is None:
                    kill_tree(proc)
                self.reap_orphans()
        return out

    # --- start-up ------------------------------------------------------------------
    def startup(self, runs: int, ref_exe: Path | None) -> dict[str, Any]:
        """Median wall time of short commands, interleaved."""
        cmds = {
            "python -c pass": [self.python, "-c", "pass"],
            "pyz --version": [self.python, str(self.pyz), "--version"],
            "pyz connect --dry-run": [self.python, str(self.pyz), "connect", "i-0123456789abcdef0", "--dry-run"],
        }
        if ref_exe is not None:
            cmds["ref --version"] = [str(ref_exe), "--version"]
        samples: dict[str, list[float]] = {k: [] for k in cmds}
        for argv in cmds.values():  # warm the page cache and our bytecode cache
            subprocess.run(argv, env=self.env, capture_output=True, check=True)
        for _ in range(runs):
            for name, argv in cmds.items():
                t0 = time.perf_counter()
                subprocess.run(argv, env=self.env, capture_output=True, check=True)
                samples[name].append(time.perf_counter() - t0)
        med = {k: statistics.median(v) for k, v in samples.items()}
        base = med["python -c pass"]
        return {
            "runs": runs,
            "python": self.python,
            "samples_s": samples,
            "median_s": med,
            "version_over_pass": med["pyz --version"] / base,
            "version_minus_pass_ms": (med["pyz --version"] - base) * 1000,
            "dry_run_minus_pass_ms": (med["pyz connect --dry-run"] - base) * 1000,
        }

    def aws_cost(self, iid: str, runs: int) -> dict[str, Any]:
        """Wall time of our first two aws calls alone vs side by side (as a warm connect does)."""
        pub = self.home.pub.read_text().strip()
        base = ["--profile", PROFILE, "--region", REGION, "--output", "json"]
        calls = {
            "ssm": ["aws", "ssm", "describe-instance-information", "--filters", f"Key=InstanceIds,Values={iid}", *base],
            "push": [
                "aws",
                "ec2-instance-connect",
                "send-ssh-public-key",
                "--instance-id",
                iid,
                "--instance-os-user",
                OS_USER,
                "--ssh-public-key",
                pub,
                *base,
            ],
        }
        samples: dict[str, list[float]] = {"ssm alone": [], "push alone": [], "side by side": []}
        for _ in range(runs):
            for name, argv in calls.items():
                t0 = time.perf_counter()
                subprocess.run(argv, env=self.env, capture_output=True, check=True)
                samples[f"{name} alone"].append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            procs = [
                subprocess.Popen(argv, env=self.env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                for argv in calls.values()
            ]
            for proc in procs:
                proc.wait(timeout=SSH_TIMEOUT)
            samples["side by side"].append(time.perf_counter() - t0)
        return {"runs": runs, "samples_s": samples, "median_s": {k: statistics.median(v) for k, v in samples.items()}}

    def trace_ours(self, iid: str) -> list[str]:
        """One warm first connect of ours with -v: its debug lines (where the time goes)."""
        ours = next((c for c in self.contenders if c.name == "ours"), None)
        if ours is None:
            return []
        self.forget_pushes()
        traced = Contender("ours", ours.proxy + " -v", ours.describe)
        t0 = time.perf_counter()
        run = self.ssh(traced, iid, "true")
        lines = [line if len(line) <= 150 else line[:147] + "..." for line in run.stderr.splitlines() if line.strip()]
        tl = run.timeline()
        lines.append(
            "endpoint: "
            + ", ".join(f"{k} +{v:.2f}s" for k, v in tl.items())
            + f" (wall {time.perf_counter() - t0:.2f} s"
            + (f", CPU {run.cpu:.2f} s)" if run.cpu is not None else ")")
        )
        return lines

    def leftovers(self) -> list[str]:
        """Processes still running that belong to our instances (then killed by pid).

        The rig's own processes (moto, endpoint, sshd listeners) are not counted.
        """
        found = []
        skip = {os.getpid(), *(p.pid for p in self.rig.procs)}
        for entry in os.listdir("/proc"):
            if not entry.isdigit() or int(entry) in skip:
                continue
            argv = cmdline(int(entry))
            text = " ".join(argv)
            if any(iid in text for iid in self.instance_ids) or str(self.pyz) in text:
                found.append(f"{entry}: {short_command(argv, 100)}")
                kill_pids([int(entry)])
        return found


# ---------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------
def fmt_counts(s: dict[str, Any]) -> str:
    acts = ", ".join(f"{a} {n}" for a, n in s["actions"].items()) or "none"
    other = f", other {s['other']}" if s["other"] else ""
    return f"aws CLI processes {s['aws_cli']}, boto3 calls {s['boto3']}{other}: {acts}"


def series_report(name: str, title: str, series: dict[str, Series]) -> tuple[list[str], dict[str, Any]]:
    """Lines for one scenario and its JSON."""
    lines = [
        f"== {name}: {title} ==",
        f"  {'':6} {'ok':>5} {'min':>7} {'median':>7} {'max':>7} {'vs ref':>7}   CPU s (median)",
    ]
    stats = {k: v.stats() for k, v in series.items()}
    ref = stats.get("ref")
    data: dict[str, Any] = {}
    for cname, s in series.items():
        st = stats[cname]
        ok = f"{len(s.times())}/{len(s.runs)}"
        if st is None:
            lines.append(f"  {cname:6} {ok:>5}   (no successful run)")
        else:
            ratio = f"{st.median / ref.median:.2f}x" if ref and cname != "ref" else ""
            cpu = f"{st.cpu_median:.2f}" if st.cpu_median is not None else "?"
            lines.append(f"  {cname:6} {ok:>5} {st.min:7.2f} {st.median:7.2f} {st.max:7.2f} {ratio:>7}   {cpu}")
        data[cname] = {
            "stats_s": asdict(st) if st else None,
            "runs": [
                {
                    "seconds": r.seconds,
                    "rc": r.rc,
                    "cpu_s": r.cpu,
                    "linger_s": r.linger,
                    "gap_s": r.gap,
                    "calls": r.summary(),
                    "timeline_s": r.timeline(),
                    "calls_s": [
                        (c["action"], round(c["t"] - r.started, 2)) for c in sorted(r.calls, key=lambda c: c["t"])
                    ],
                }
                for r in s.runs
            ],
        }
    lines.append("  API calls per connect (endpoint log):")
    for cname, s in series.items():
        counts = Counter(json.dumps(r.summary(), sort_keys=True) for r in s.runs if r.ok)
        if not counts:
            continue
        for text, n in counts.most_common():
            lines.append(
                f"    {cname:6} {fmt_counts(json.loads(text))}"
                + (f"  [{n} of {sum(counts.values())} runs]" if len(counts) > 1 else "")
            )
    lines.append("  timeline, median s after spawn (first call of each action; exit):")
    for cname, s in series.items():
        tls = [r.timeline() for r in s.runs if r.ok]
        if not tls:
            continue
        keys = sorted({k for t in tls for k in t}, key=lambda k: statistics.median([t[k] for t in tls if k in t]))
        parts = [f"{k} {statistics.median([t[k] for t in tls if k in t]):.2f}" for k in keys]
        lines.append(f"    {cname:6} " + ", ".join(parts))
    lingers = {c: max(r.linger for r in s.runs) for c, s in series.items() if s.runs}
    if any(v > 0.05 for v in lingers.values()):
        lines.append("  processes outliving ssh, longest: " + ", ".join(f"{c} {v:.2f} s" for c, v in lingers.items()))
    gaps = [r.gap for s in series.values() for r in s.runs if r.gap is not None]
    if gaps:
        lines.append(f"  (each repeat started {max(gaps):.2f} s or less after the previous connect ended)")
    return lines, data


# What each contender must send per connect: (aws CLI processes, boto3 calls, actions).
EXPECTED: dict[tuple[str, str], tuple[int, int, dict[str, int]]] = {
    ("warm", "ours"): (2, 0, {"SendSSHPublicKey": 1, "StartSession": 1}),
    ("repeat", "ours"): (1, 0, {"StartSession": 1}),
    ("warm", "ref"): (1, 2, {"DescribeInstanceInformation": 1, "SendSSHPublicKey": 1, "StartSession": 1}),
    ("repeat", "ref"): (1, 2, {"DescribeInstanceInformation": 1, "SendSSHPublicKey": 1, "StartSession": 1}),
    ("warm", "naive"): (2, 0, {"SendSSHPublicKey": 1, "StartSession": 1}),
    ("repeat", "naive"): (2, 0, {"SendSSHPublicKey": 1, "StartSession": 1}),
}


# A cold connect to an instance that is Online 20 s after its start (issue 17's target).
COLD_AWS_MAX = 10


def sanity_checks(results: dict[str, dict[str, Series]], mem: dict[str, Any] | None) -> tuple[int, list[str]]:
    """Check calls per connect and that no process of ours holds a session: (checked, failures)."""
    checked, failures = 0, []
    for scenario, series in results.items():
        for cname, s in series.items():
            for n, run in enumerate(s.runs, 1):
                checked += 1
                got = run.summary()
                where = f"{scenario} {cname} run {n}"
                if not run.ok:
                    failures.append(f"{where}: ssh exited {run.rc}")
                    continue
                want = EXPECTED.get((scenario, cname))
                if want and (got["aws_cli"], got["boto3"], got["actions"]) != want:
                    failures.append(f"{where}: expected {want}, got {got}")
                if scenario == "cold" and got["actions"].get("StartInstances") != 1:
                    failures.append(f"{where}: expected one StartInstances, got {got}")
                if scenario == "cold" and cname == "ours" and got["aws_cli"] > COLD_AWS_MAX:
                    failures.append(f"{where}: expected at most {COLD_AWS_MAX} aws processes, got {got}")
                if got["other"]:
                    failures.append(f"{where}: {got['other']} calls neither aws CLI nor boto3")
    if mem and "ours" in mem:
        checked += 1
        ours = [p for p in mem["ours"]["processes"] if p["ours"]]
        if ours:
            failures.append(f"memory: expected no process of ours during the session (the plugin only), got {ours}")
    return checked, failures


def memory_report(mem: dict[str, Any]) -> list[str]:
    lines = ["== memory while a session is open (ssh's descendants, ssh itself excluded) =="]
    for cname, m in mem.items():
        lines.append(
            f"  {cname}: {len(m['processes'])} processes, RSS {m['rss_kb'] / 1024:.1f} MiB"
            f" (PSS {m['pss_kb'] / 1024:.1f} MiB); sampled {m['sampled_after_s']:.1f} s "
            f"after spawn (session up at {m['session_up_s']:.1f} s)"
        )
        for p in m["processes"]:
            lines.append(f"      {p['rss_kb'] / 1024:6.1f} MiB  {p['command']}")
    if "ours" in mem:
        alive = [p["command"] for p in mem["ours"]["processes"] if p["ours"]]
        lines.append(
            "  a process of ours (cmdline containing cloudx_proxy) during the session: "
            + (", ".join(alive) if alive else "none")
        )
    if "ref" in mem:
        lines.append(
            "  ref's cloudx-proxy process alive during the session: "
            + ("yes" if mem["ref"]["connector_alive"] else "no")
        )
    for a, b in (("ours", "ref"), ("naive", "ref")):
        if a in mem and b in mem and mem[b]["rss_kb"]:
            lines.append(f"  RSS {a}/{b}: {mem[a]['rss_kb'] / mem[b]['rss_kb']:.2f}x")
    for cname, m in mem.items():
        lines.append(f"  peak RSS while connecting, {cname}: {m['peak_connect_rss_kb'] / 1024:.1f} MiB")
    if "ours" in mem and "ref" in mem and mem["ref"]["peak_connect_rss_kb"]:
        ratio = mem["ours"]["peak_connect_rss_kb"] / mem["ref"]["peak_connect_rss_kb"]
        lines.append(f"  peak RSS ours/ref: {ratio:.2f}x")
    return lines


def startup_report(st: dict[str, Any]) -> list[str]:
    med = st["median_s"]
    lines = [f"== start-up (median of {st['runs']}, {st['python']}) =="]
    for k, v in med.items():
        lines.append(f"  {k:24} {v * 1000:7.1f} ms")
    lines.append(
        f"  pyz --version / python -c pass: {st['version_over_pass']:.2f}x "
        f"(+{st['version_minus_pass_ms']:.1f} ms); connect --dry-run: "
        f"+{st['dry_run_minus_pass_ms']:.1f} ms"
    )
    return lines


# ---------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n\n", 1)[1],
    )
    ap.add_argument("--runs", type=int, default=7, help="runs per contender, warm and repeat (7)")
    ap.add_argument("--cold-runs", type=int, default=2, help="runs per contender, cold (2)")
    ap.add_argument("--scenarios", default="warm,repeat,cold", help="comma-separated subset of warm,repeat,cold (all)")
    ap.add_argument("--aws", choices=("v1", "v2"), default="v1", help="aws CLI to use (v1)")
    ap.add_argument(
        "--aws-wrapper",
        action="store_true",
        help="put a /bin/sh script that execs the aws CLI first on PATH (as wrapper and shim users have it)",
    )
    ap.add_argument(
        "--pending-seconds",
        type=float,
        default=5.0,
        help="cold: seconds the instance shows 'pending' after a start (5)",
    )
    ap.add_argument(
        "--online-delay", type=float, default=20.0, help="cold: seconds from StartInstances to SSM Online (20)"
    )
    ap.add_argument(
        "--latency",
        type=float,
        default=0.0,
        help="seconds the rig endpoint waits before answering each AWS request (0)",
    )
    ap.add_argument("--startup-runs", type=int, default=20, help="start-up samples (20)")
    ap.add_argument("--aws-runs", type=int, default=5, help="samples of the aws CLI process cost (5)")
    ap.add_argument(
        "--skip-reference", action="store_true", help=f"do not set up or run PyPI cloudx-proxy=={REF_VERSION}"
    )
    ap.add_argument("--skip-memory", action="store_true", help="no memory sample")
    ap.add_argument(
        "--python",
        default=real_python(),
        help="interpreter for our zipapp and the reference venv (the real path behind sys.executable)",
    )
    ap.add_argument("--ref-venv", type=Path, default=REF_VENV, help=f"reference venv, reused if present ({REF_VENV})")
    ap.add_argument("--json", type=Path, help="also write every number to this file")
    ap.add_argument("--keep", action="store_true", help="keep the temp dir (rig logs)")
    ap.add_argument("-v", "--verbose", action="store_true", help="progress on stderr")
    args = ap.parse_args(argv)
    wanted = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    bad = [s for s in wanted if s not in SCENARIOS]
    if bad:
        ap.error(f"unknown scenario(s): {', '.join(bad)}")
    args.scenarios = wanted
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    why = have_prerequisites()
    if why:
        print(f"bench_connect: {why}", file=sys.stderr)
        return 2
    # On SIGTERM, unwind through the finally below so that the rig is closed.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
    t_start = time.monotonic()
    load_start = os.getloadavg()
    tmp = Path(tempfile.mkdtemp(prefix="cloudx-bench-"))
    rig = Rig(tmp / "rig")
    report: list[str] = []
    data: dict[str, Any] = {"args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}}
    bench: Bench | None = None
    try:
        rig.start()
        if args.latency:
            rig.knobs(latency=args.latency)
        pyz = tmp / "cloudx_proxy.pyz"
        built = build_zipapp(pyz)
        home = rig.make_home(tmp / "home", profile=PROFILE, region=REGION)
        env = rig.env(home, args.aws)
        if args.aws_wrapper:
            real_aws = shutil.which("aws", path=env["PATH"])
            wrapper = tmp / "wrapper" / "aws"
            wrapper.parent.mkdir()
            wrapper.write_text(f'#!/bin/sh\nexec {shlex.quote(str(real_aws))} "$@"\n')
            wrapper.chmod(0o755)
            env["PATH"] = f"{wrapper.parent}{os.pathsep}{env['PATH']}"
        aws_version = subprocess.run(["aws", "--version"], env=env, capture_output=True, text=True).stdout.strip()
        contenders = [
            Contender(
                "ours",
                f"{ssh_escape(args.python)} {ssh_escape(str(pyz))} connect %h %p "
                f"--profile {PROFILE} --ssh-key {PROFILE}",
                f"python3 cloudx_proxy.pyz connect ({built.split(' (', 1)[-1].rstrip(')')})",
            )
        ]
        ref_exe: Path | None = None
        if args.skip_reference:
            ref_note = "skipped (--skip-reference)"
        else:
            ref_exe, ref_note = ensure_reference(args.ref_venv, args.python)
            if ref_exe is None:
                print(f"warning: reference unavailable: {ref_note}", file=sys.stderr)
        if ref_exe is not None:
            contenders.append(
                Contender(
                    "ref",
                    f"{ssh_escape(str(ref_exe))} connect %h %p --profile {PROFILE} --ssh-key {PROFILE}",
                    f"PyPI cloudx-proxy {REF_VERSION}",
                )
            )
        contenders.append(
            Contender("naive", naive_proxy(home.pub), "sh -c 'aws send-ssh-public-key && exec aws start-session'")
        )

        bench = Bench(rig, home, env, contenders, args.python, pyz, args.verbose)
        warm_iid = rig.add_instance()
        bench.instance_ids.append(warm_iid)
        bench.contenders = bench.verify(warm_iid)
        names = [c.name for c in bench.contenders]
        report += [
            "cloudx-proxy connect benchmark",
            f"  {time.strftime('%Y-%m-%d %H:%M:%S')}  {platform.node()}  {os.cpu_count()} CPUs  "
            f"{platform.platform()}; load average at start "
            f"{' '.join(f'{x:.2f}' for x in load_start)}",
            f"  aws CLI: {aws_version or '?'} ({args.aws}"
            + (", behind a /bin/sh wrapper that execs it" if args.aws_wrapper else "")
            + f"); python for ours/ref: {args.python} "
            f"({platform.python_version()} runs the bench); endpoint latency {args.latency:g} s per AWS request",
            f"  ours:  {contenders[0].describe}",
            f"  ref:   {ref_note}" + ("" if "ref" in names else "  -> NOT RUN"),
            f"  naive: {naive_proxy(Path('PUB'))}",
            f"  contenders that connected: {', '.join(names)}; runs interleaved, order rotated "
            "per round; times are wall clock of `ssh HOST true` from spawn to exit, in seconds;",
            "  CPU s = user+system CPU of ssh and every process below it, orphans included "
            "(client side only: moto, endpoint and sshd are not counted)",
            "",
        ]
        data.update(
            meta={
                "aws": aws_version,
                "python": args.python,
                "zipapp": built,
                "reference": ref_note,
                "contenders": {c.name: c.proxy for c in bench.contenders},
            },
            scenarios={},
        )

        titles = {
            "warm": "running + Online; ours' push records deleted before each of its runs (a first connect)",
            "repeat": "a connect right after a successful one to the same instance (ours: fresh push record)",
            "cold": f"stopped; pending {args.pending_seconds:g} s, SSM Online "
            f"{args.online_delay:g} s after StartInstances; stopped again before every "
            "run (naive cannot start an instance: not run)",
        }
        results: dict[str, dict[str, Series]] = {}
        if "warm" in args.scenarios or "repeat" in args.scenarios:
            results.update(bench.warm_and_repeat(warm_iid, args.runs, args.scenarios))
        if "cold" in args.scenarios:
            cold_iid = rig.add_instance(
                state="stopped", pending_seconds=args.pending_seconds, online_delay=args.online_delay
            )
            bench.instance_ids.append(cold_iid)
            results["cold"] = bench.cold(cold_iid, args.cold_runs)
        for name in SCENARIOS:
            if name in results:
                lines, sdata = series_report(name, titles[name], results[name])
                report += lines + [""]
                data["scenarios"][name] = sdata

        mem = None if args.skip_memory else bench.memory(warm_iid)
        if mem is not None:
            data["memory"] = mem
            report += memory_report(mem) + [""]
        checked, failures = sanity_checks(results, mem)
        data["checks"] = {"checked": checked, "failures": failures}
        report.append(f"== sanity checks (calls per connect as designed; {checked} checked) ==")
        report += [f"  FAIL {f}" for f in failures] or ["  all passed"]
        report.append("")
        for f in failures:
            bench.warn(f"check failed: {f}")

        st = bench.startup(args.startup_runs, ref_exe if "ref" in names else None)
        data["startup"] = st
        report += startup_report(st) + [""]

        cost = bench.aws_cost(warm_iid, args.aws_runs)
        data["aws_cost"] = cost
        med = cost["median_s"]
        report += [
            f"== aws CLI process cost (median of {cost['runs']}; {args.aws}) ==",
            f"  describe-instance-information alone {med['ssm alone']:.2f} s, "
            f"send-ssh-public-key alone {med['push alone']:.2f} s, both side by side "
            f"{med['side by side']:.2f} s",
            "",
        ]

        trace = bench.trace_ours(warm_iid)
        data["trace_ours_warm"] = trace
        report += ["== one warm first connect of ours with -v =="] + [f"  {t}" for t in trace]
        report.append("")
    finally:
        left = bench.leftovers() if bench is not None else []
        rig.close()
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
    if left:
        report.append(f"processes left running after their ssh exited (killed): {len(left)}")
        report += [f"  {x}" for x in left]
    if bench is not None and bench.warnings:
        report.append("warnings:")
        report += [f"  {w}" for w in bench.warnings]
    elapsed = time.monotonic() - t_start
    report.append(
        "load average at end "
        + " ".join(f"{x:.2f}" for x in os.getloadavg())
        + " (other work on this machine shows up as noise)"
    )
    report.append(f"total bench time {elapsed:.0f} s" + (f"; rig dir kept: {tmp}" if args.keep else ""))
    data["leftover_processes"] = left
    data["warnings"] = bench.warnings if bench is not None else []
    data["elapsed_s"] = elapsed
    print("\n".join(report))
    if args.json:
        args.json.write_text(json.dumps(data, indent=2, default=str) + "\n")
    return 0 if bench is not None and not bench.warnings else 1


if __name__ == "__main__":
    sys.exit(main())

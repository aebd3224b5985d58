"""End-to-end test rig: real ssh + real aws CLI + moto + rig endpoint + real sshd.

See docs/test-rig.md. Every process started here runs in its own session and is
killed by process group in :meth:`Rig.close`.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
# aws CLI v1 from before 1.30.3 (tests/requirements-aws-old.txt), in a venv of its own.
V1_OLD_VENV = REPO / ".venv-aws-old"
V1_OLD_BEFORE = (1, 30, 3)  # from this version on, v1 asks the plugin --version and may use the env var
HOLDS = (None, "pending", "offline")
PYTHON = sys.executable
PY_BIN = os.path.dirname(PYTHON)
SSHD = "/usr/sbin/sshd"
SFTP_SERVER = "/usr/lib/openssh/sftp-server"
SYSTEM_AWS = "/usr/bin/aws"
LOGIN_USER = "ec2-user"
IAM_USER = "cloudX-dev-alice"
FAKE_CREDS = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing"}
START_TIMEOUT = 20.0
# An Amazon Linux 2 image from moto's built-in list (moto does not insist on it;
# describe_images over moto's ~1000 images costs seconds, so it is not looked up).
AMI_ID = "ami-04681a1dbd79675a5"


@dataclass
class Home:
    """A temporary HOME with AWS config/credentials and an ssh key pair."""

    path: Path
    ssh_dir: Path
    key: Path
    pub: Path
    profile: str
    region: str | None
    known_hosts: Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, proc: subprocess.Popen | None = None, timeout: float = START_TIMEOUT) -> None:
    """Wait until 127.0.0.1:port accepts connections (or fail if proc died)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            if proc is not None and proc.poll() is not None:
                raise RuntimeError(f"{proc.args!r} exited with {proc.returncode}")
            time.sleep(0.03)
    raise TimeoutError(f"nothing listening on 127.0.0.1:{port} after {timeout}s")


def _wait_for(found: Callable[[], list[dict]], count: int, timeout: float, what: str) -> list[dict]:
    """Poll found() every 0.05 s until it returns `count` items; TimeoutError after `timeout` s."""
    deadline = time.monotonic() + timeout
    while True:
        items = found()
        if len(items) >= count:
            return items
        if time.monotonic() >= deadline:
            raise TimeoutError(f"{len(items)} of {count} {what} after {timeout}s")
        time.sleep(0.05)


def old_v1_aws(venv: Path = V1_OLD_VENV) -> str | None:
    """The venv's aws script if it holds awscli older than 1.30.3 (read from its metadata), else None."""
    aws = venv / "bin" / "aws"
    if not os.access(aws, os.X_OK):
        return None
    for info in venv.glob("lib/python*/site-packages/awscli-*.dist-info"):
        version = tuple(int(p) for p in info.name[len("awscli-") : -len(".dist-info")].split(".")[:3])
        if version < V1_OLD_BEFORE:
            return str(aws)
    return None


def aws_major_version(path: str) -> int | None:
    """Major version of an aws CLI binary, or None if it does not run."""
    try:
        out = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    text = (out.stdout + out.stderr).strip()
    if text.startswith("aws-cli/"):
        return int(text.split("/")[1].split(".")[0])
    return None


class Rig:
    """Owns moto, the rig endpoint, one sshd per instance, and the fake plugin."""

    def __init__(self, workdir: Path) -> None:
        self.dir = Path(workdir)
        self.bin_dir = self.dir / "bin"
        self.v2_bin_dir = self.dir / "v2bin"
        self.v1_old_bin_dir = self.dir / "v1oldbin"
        self.plugin_log = self.dir / "plugin.log"
        self.host_key = self.dir / "ssh_host_ed25519_key"
        self.procs: list[subprocess.Popen] = []
        self.sshd: dict[str, subprocess.Popen] = {}
        self.moto_url = ""
        self.endpoint_url = ""
        self.aws_v1 = os.path.join(PY_BIN, "aws")
        self.aws_v2: str | None = None
        self.aws_v1_old: str | None = None
        self.keys_root: Path | None = None
        self._clients: dict[tuple[str, str], Any] = {}

    # --- lifecycle -----------------------------------------------------------
    def start(self) -> None:
        """Start moto and the endpoint; prepare host key, login user, bin dirs."""
        self.dir.mkdir(parents=True, exist_ok=True)
        self.bin_dir.mkdir(exist_ok=True)
        moto_port, ep_port = free_port(), free_port()
        self.moto_url = f"http://127.0.0.1:{moto_port}"
        self.endpoint_url = f"http://127.0.0.1:{ep_port}"
        moto = self._spawn([PYTHON, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(moto_port)], "moto.log")
        endpoint = self._spawn(
            [
                PYTHON,
                str(HERE / "endpoint.py"),
                "--port",
                str(ep_port),
                "--moto-url",
                self.moto_url,
                "--state-dir",
                str(self.dir),
            ],
            "endpoint.log",
        )
        # sshd reads authorized keys as the login user, so they live in a dir
        # that user can reach (pytest's tmp dirs are 0700 root).
        self.keys_root = Path(tempfile.mkdtemp(prefix="cloudx-rig-keys-"))
        self.keys_root.chmod(0o755)
        self._prepare_host()
        self._write_plugin()
        self._write_v2_wrapper()
        self._link_v1_old()
        wait_port(moto_port, moto)
        wait_port(ep_port, endpoint)

    def close(self) -> None:
        """Kill every process group this rig started and wait for them."""
        for proc in reversed(self.procs):
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        for proc in self.procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
        self.procs.clear()
        self.sshd.clear()
        if self.keys_root is not None:
            shutil.rmtree(self.keys_root, ignore_errors=True)
            self.keys_root = None

    def __enter__(self) -> Rig:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _spawn(self, argv: list[str], log_name: str) -> subprocess.Popen:
        log = open(self.dir / log_name, "ab")  # noqa: SIM115 - closed below once the child has it
        try:
            proc = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True, cwd=self.dir
            )
        finally:
            log.close()
        self.procs.append(proc)
        return proc

    def _prepare_host(self) -> None:
        if not self.host_key.exists():
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(self.host_key)], check=True)
        if subprocess.run(["id", "-u", LOGIN_USER], capture_output=True).returncode != 0:
            subprocess.run(["useradd", "-m", "-s", "/bin/sh", LOGIN_USER], check=True)
        # With UsePAM no, sshd refuses accounts whose password starts with "!" (locked).
        subprocess.run(["usermod", "-p", "*", LOGIN_USER], check=True)
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)

    def _write_plugin(self, bin_dir: Path | None = None) -> Path:
        plugin = (bin_dir or self.bin_dir) / "session-manager-plugin"
        plugin.write_text(f"#!{PYTHON} -S\n" + (HERE / "session_manager_plugin.py").read_text())
        plugin.chmod(0o755)
        if bin_dir is None:  # RIG_PLUGIN_VANISH_AFTER_VERSION will not remove the shared copy
            (self.bin_dir / ".rig-shared").write_text("")
        return plugin

    def plugin_dir(self, path: Path) -> Path:
        """A private dir holding a fresh copy of the stand-in plugin (for rig.env(plugin_dir=...)).

        Use it for tests that damage the plugin (RIG_PLUGIN_VANISH_AFTER_VERSION): the rig's
        shared copy serves every later test of the pytest worker.
        """
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        self._write_plugin(path)
        return path

    def _link_v1_old(self) -> None:
        aws = old_v1_aws()
        if aws is None:
            return
        self.v1_old_bin_dir.mkdir(exist_ok=True)
        link = self.v1_old_bin_dir / "aws"
        if not link.is_symlink():
            link.symlink_to(aws)  # its shebang names the venv's python
        self.aws_v1_old = str(link)

    def _write_v2_wrapper(self) -> None:
        if not os.path.exists(SYSTEM_AWS) or aws_major_version(SYSTEM_AWS) != 2:
            return
        self.v2_bin_dir.mkdir(exist_ok=True)
        wrapper = self.v2_bin_dir / "aws"
        # Debian's /usr/bin/aws with one line more: aws CLI v2 2.9 ignores AWS_ENDPOINT_URL. It stays
        # the aws CLI's own script (python, awscli.clidriver), as connect tells it from a wrapper.
        with open(SYSTEM_AWS) as f:
            shebang = f.readline()
        wrapper.write_text(
            f"{shebang}import os\nimport sys\n\nimport awscli.clidriver\n\n"
            'sys.argv[1:1] = ["--endpoint-url", os.environ["AWS_ENDPOINT_URL"]]\n'
            "sys.exit(awscli.clidriver.main())\n"
        )
        wrapper.chmod(0o755)
        self.aws_v2 = str(wrapper)

    # --- environments ----------------------------------------------------------
    def env(self, home: Path | Home, aws: str = "v1", plugin_dir: Path | None = None) -> dict[str, str]:
        """A clean environment for subprocesses using HOME and the chosen aws CLI.

        aws: "v1" (pip, next to sys.executable), "v2" (Debian's), "v1old" (awscli 1.29 in
        .venv-aws-old). plugin_dir: a dir from plugin_dir() to find the plugin in instead of the
        rig's shared one.
        """
        home_path = home.path if isinstance(home, Home) else Path(home)
        first = str(self.bin_dir if plugin_dir is None else plugin_dir)
        if aws == "v1":
            path = [first, PY_BIN, "/usr/bin", "/bin"]
        elif aws == "v2":
            if self.aws_v2 is None:
                raise RuntimeError("aws CLI v2 is not available")
            path = [first, str(self.v2_bin_dir), PY_BIN, "/usr/bin", "/bin"]
        elif aws == "v1old":
            if self.aws_v1_old is None:
                raise RuntimeError(f"aws CLI v1 older than 1.30.3 is not installed in {V1_OLD_VENV}")
            path = [first, str(self.v1_old_bin_dir), PY_BIN, "/usr/bin", "/bin"]
        else:
            raise ValueError(f"aws must be 'v1', 'v2' or 'v1old', not {aws!r}")
        return {
            "HOME": str(home_path),
            "PATH": ":".join(path),
            "AWS_ENDPOINT_URL": self.endpoint_url,
            "AWS_EC2_METADATA_DISABLED": "true",  # never reach for 169.254.169.254
            "AWS_PAGER": "",
            "LANG": "C.UTF-8",
            "RIG_PLUGIN_LOG": str(self.plugin_log),
        }

    def make_home(
        self,
        home: Path,
        profile: str = "cloudX",
        region: str | None = "eu-west-1",
        ssh_dir: str = "cloudX",
        key: str = "cloudX",
    ) -> Home:
        """Write ~/.aws config + credentials (a moto IAM key) and an ed25519 key pair."""
        home = Path(home)
        aws_dir = home / ".aws"
        aws_dir.mkdir(parents=True, exist_ok=True)
        akid, secret = self._iam_access_key()
        section = "default" if profile == "default" else f"profile {profile}"
        config = f"[{section}]\n" + (f"region = {region}\n" if region else "")
        for name, text in (
            ("config", config),
            ("credentials", f"[{profile}]\naws_access_key_id = {akid}\naws_secret_access_key = {secret}\n"),
        ):
            (aws_dir / name).write_text(text)
            (aws_dir / name).chmod(0o600)
        kdir = home / ".ssh" / ssh_dir
        kdir.mkdir(parents=True, exist_ok=True)
        (home / ".ssh").chmod(0o700)
        kdir.chmod(0o700)
        keyfile = kdir / key
        if not keyfile.exists():
            subprocess.run(
                ["ssh-keygen", "-t", "ed25519", "-N", "", "-q", "-C", f"{profile}@rig", "-f", str(keyfile)], check=True
            )
        return Home(
            path=home,
            ssh_dir=kdir,
            key=keyfile,
            pub=Path(f"{keyfile}.pub"),
            profile=profile,
            region=region,
            known_hosts=home / ".ssh" / "known_hosts",
        )

    def _iam_access_key(self) -> tuple[str, str]:
        iam = self.moto_client("iam")
        try:
            iam.create_user(UserName=IAM_USER)
        except iam.exceptions.EntityAlreadyExistsException:
            pass
        keys = iam.list_access_keys(UserName=IAM_USER)["AccessKeyMetadata"]
        if len(keys) >= 2:  # moto enforces AWS's quota of two keys per user
            oldest = min(keys, key=lambda k: k["CreateDate"])
            iam.delete_access_key(UserName=IAM_USER, AccessKeyId=oldest["AccessKeyId"])
        k = iam.create_access_key(UserName=IAM_USER)["AccessKey"]
        return k["AccessKeyId"], k["SecretAccessKey"]

    # --- instances ---------------------------------------------------------------
    def moto_client(self, service: str, region: str = "eu-west-1") -> Any:
        """A boto3 client talking to moto directly (not logged by the endpoint)."""
        key = (service, region)
        if key not in self._clients:
            self._clients[key] = boto3.client(service, endpoint_url=self.moto_url, region_name=region, **FAKE_CREDS)
        return self._clients[key]

    def add_instance(
        self,
        state: str = "running",
        region: str = "eu-west-1",
        tags: dict | None = None,
        ssh: bool = True,
        **knobs: Any,
    ) -> str:
        """Create an instance in moto (running or stopped), its sshd, and register it."""
        if state not in ("running", "stopped"):
            raise ValueError("state must be 'running' or 'stopped'")
        if knobs.get("hold") not in HOLDS:
            raise ValueError(f"hold must be one of {HOLDS}, not {knobs['hold']!r}")
        ec2 = self.moto_client("ec2", region)
        kw: dict[str, Any] = {}
        if tags:
            kw["TagSpecifications"] = [
                {"ResourceType": "instance", "Tags": [{"Key": k, "Value": str(v)} for k, v in tags.items()]}
            ]
        iid = ec2.run_instances(ImageId=AMI_ID, MinCount=1, MaxCount=1, InstanceType="t3.micro", **kw)["Instances"][0][
            "InstanceId"
        ]
        if state == "stopped":
            ec2.stop_instances(InstanceIds=[iid])
        reg: dict[str, Any] = {"instance_id": iid, "region": region, "state": state}
        if ssh:
            port, keys_dir = self._start_sshd(iid)
            reg.update(ssh_port=port, keys_dir=str(keys_dir))
        reg.update(knobs)
        self._control("/_rig/instance", reg)
        return iid

    def _start_sshd(self, iid: str) -> tuple[int, Path]:
        assert self.keys_root is not None, "call start() first"
        keys_dir = self.keys_root / iid
        keys_dir.mkdir(mode=0o755)
        port = free_port()
        cfg = self.dir / f"sshd-{iid}.conf"
        cfg.write_text(
            "\n".join(
                [
                    f"Port {port}",
                    "ListenAddress 127.0.0.1",
                    f"HostKey {self.host_key}",
                    f"PidFile {self.dir / f'sshd-{iid}.pid'}",
                    f"AuthorizedKeysFile {keys_dir}/%u",
                    "UsePAM no",
                    "StrictModes no",
                    "PasswordAuthentication no",
                    "KbdInteractiveAuthentication no",
                    "PubkeyAuthentication yes",
                    f"AllowUsers {LOGIN_USER}",
                    "PrintMotd no",
                    "UseDNS no",
                    "LogLevel VERBOSE",
                    f"Subsystem sftp {SFTP_SERVER}",
                    "",
                ]
            )
        )
        proc = self._spawn([SSHD, "-D", "-e", "-f", str(cfg)], f"sshd-{iid}.log")
        self.sshd[iid] = proc
        wait_port(port, proc)
        return port, keys_dir

    def set_instance(self, instance_id: str, **knobs: Any) -> None:
        """Update an instance's knobs (pending_seconds, online_delay, ssm, flap, hold, ...).

        hold="pending" / "offline" holds the instance in that state until hold=None (release).
        """
        if knobs.get("hold") not in HOLDS:
            raise ValueError(f"hold must be one of {HOLDS}, not {knobs['hold']!r}")
        self._control("/_rig/instance", {"instance_id": instance_id, **knobs})

    def release(self, instance_id: str) -> None:
        """End a hold and a held stopping now: running/Online at once (online_delay counts from now)."""
        self._control("/_rig/release", {"instance_id": instance_id})

    def begin_stopping(self, instance_id: str, seconds: float | None = None) -> None:
        """Stop in moto now; the endpoint reports 'stopping' for `seconds` first (None: until release())."""
        self._control("/_rig/stopping", {"instance_id": instance_id, "seconds": seconds})

    def moto_state(self, instance_id: str, region: str = "eu-west-1") -> str:
        """moto's own state name (no overlays)."""
        res = self.moto_client("ec2", region).describe_instances(InstanceIds=[instance_id])
        return res["Reservations"][0]["Instances"][0]["State"]["Name"]

    # --- endpoint control ----------------------------------------------------------
    def _control(self, path: str, data: dict | None = None, method: str = "POST") -> Any:
        body = None if method == "GET" else json.dumps(data or {}).encode()
        req = urllib.request.Request(
            self.endpoint_url + path, data=body, method=method, headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(req, timeout=30) as resp:
            return json.loads(resp.read())

    def fault(
        self, action: str, code: str = "", message: str = "", status: int = 400, count: int = 1, delay: float = 0
    ) -> None:
        """Make the next `count` calls of `action` fail with `code` (and/or be delayed)."""
        self._control(
            "/_rig/fault",
            {"action": action, "code": code, "message": message, "status": status, "count": count, "delay": delay},
        )

    def clear_faults(self) -> None:
        self._control("/_rig/fault/clear")

    def knobs(self, **kw: Any) -> None:
        """Global endpoint knobs: key_ttl (seconds a pushed key stays valid), latency (seconds per AWS request)."""
        self._control("/_rig/knobs", kw)

    def calls(self, action: str | None = None) -> list[dict]:
        """The endpoint's request log, optionally only one action."""
        log = self._control("/_rig/log", method="GET")
        return [c for c in log if action is None or c["action"] == action]

    def clear_calls(self) -> None:
        self._control("/_rig/log/clear")

    def wait_for_call(
        self, action: str, instance_id: str | None = None, count: int = 1, timeout: float = 60.0
    ) -> list[dict]:
        """Wait until the log holds `count` calls of `action` (naming `instance_id`); return them.

        For ordering a test against the code under test ("once it has called StartInstances,
        release the instance") instead of sleeping. TimeoutError after `timeout` seconds.
        """
        return _wait_for(
            lambda: [c for c in self.calls(action) if instance_id is None or instance_id in c["instance_ids"]],
            count,
            timeout,
            f"{action} call(s) for {instance_id}",
        )

    def wait_for_plugin_call(self, instance_id: str | None = None, count: int = 1, timeout: float = 60.0) -> list[dict]:
        """Wait until the plugin log holds `count` session calls (for `instance_id`); return them.

        An entry is written once the token is redeemed, just before the plugin connects: from
        then on the session's process is the plugin (e.g. to read /proc during a session).
        """
        return _wait_for(
            lambda: [c for c in self.plugin_calls() if instance_id is None or c["target"] == instance_id],
            count,
            timeout,
            f"plugin session call(s) for {instance_id}",
        )

    def sessions(self) -> dict[str, dict]:
        """Sessions StartSession issued: {session id: {"target", "redeemed", "terminated"}}."""
        return self._control("/_rig/sessions", method="GET")

    def endpoint_client(self, service: str, region: str = "eu-west-1") -> Any:
        """A boto3 client talking to the rig endpoint (logged, with the endpoint's answers)."""
        return boto3.client(service, endpoint_url=self.endpoint_url, region_name=region, **FAKE_CREDS)

    def plugin_calls(self) -> list[dict]:
        """One entry per session-manager-plugin session invocation."""
        if not self.plugin_log.exists():
            return []
        return [json.loads(line) for line in self.plugin_log.read_text().splitlines() if line]

    def plugin_version_calls(self) -> list[dict]:
        """One entry ({"pid", "ppid", "exe"}) per `session-manager-plugin --version`."""
        path = Path(f"{self.plugin_log}.version")
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line]

    def plugin_stdin_calls(self) -> list[dict]:
        """One entry ({"session_id", "pid", "t"}) per plugin, when the first byte from its stdin came."""
        path = Path(f"{self.plugin_log}.stdin")
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line]

    def clear_plugin_calls(self) -> None:
        self.plugin_log.unlink(missing_ok=True)
        Path(f"{self.plugin_log}.version").unlink(missing_ok=True)
        Path(f"{self.plugin_log}.stdin").unlink(missing_ok=True)

    # --- ssh -------------------------------------------------------------------------
    def ssh_argv(
        self, home: Home, host: str, proxy_command: str, *remote: str, extra: list[str] | tuple[str, ...] = ()
    ) -> list[str]:
        """An ssh command line that uses only -o options (no config files)."""
        return [
            "ssh",
            "-F",
            "/dev/null",
            "-o",
            f"ProxyCommand={proxy_command}",
            "-o",
            f"User={LOGIN_USER}",
            "-o",
            f"IdentityFile={home.key}",
            "-o",
            "IdentitiesOnly=yes",
            "-o",
            "BatchMode=yes",
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            f"UserKnownHostsFile={home.known_hosts}",
            "-o",
            "LogLevel=ERROR",
            "-o",
            "ConnectTimeout=120",  # a cold start on a busy 2-core machine can take a while
            *extra,
            host,
            *remote,
        ]


def ssh_config_argv(home: Home, config: Path, host: str, *remote: str) -> list[str]:
    """ssh HOST through a written config file only (no connection sharing left behind)."""
    return [
        "ssh", "-F", str(config), "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no",
        "-o", f"UserKnownHostsFile={home.known_hosts}", "-o", "ControlMaster=no", "-o", "ControlPath=none",
        host, *remote,
    ]  # fmt: skip


def descendants(pid: int) -> list[int]:
    """Every process below pid (not pid itself), from /proc, parents before children."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            children.setdefault(int(stat.rsplit(")", 1)[1].split()[1]), []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(0), []):
            out.append(child)
            todo.append(child)
    return out


def cmdline(pid: int) -> str:
    """A process's command line as one string ("" once it is gone)."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def have_prerequisites() -> str | None:
    """Why the rig cannot run here, or None if it can."""
    if os.geteuid() != 0:
        return "the e2e rig needs root (sshd, useradd)"
    for tool in (SSHD, shutil.which("ssh"), shutil.which("ssh-keygen")):
        if not tool or not os.path.exists(tool):
            return f"missing {tool or 'ssh/ssh-keygen'} (apt-get install openssh-server)"
    return None

"""End-to-end tests of `setup --1password`: the key lives in 1Password (the `op` stand-in
tests/rig/op_stub.py, which generates real ed25519 keys), the private key only in a real
ssh-agent playing the 1Password SSH agent at $HOME/.1password/agent.sock, and a final real ssh
through the written config authenticates through that agent."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import skip_or_fail
from rig import Home, Rig, ssh_config_argv
from rig.op_stub import OpStub

TITLE = "cloudX SSH Key - cloudX"
PRIVATE_WARNING = "only the Private vault is enabled for the SSH agent by default"


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def ophome(rig: Rig) -> Iterator[Home]:
    """A HOME under a short path: unix socket paths are limited to ~104 bytes, and the agent
    socket setup looks for is $HOME/.1password/agent.sock. No key files in it."""
    root = Path(tempfile.mkdtemp(prefix="cx-op-", dir="/tmp"))
    try:
        home = rig.make_home(root / "h")
        for f in (home.key, home.pub):
            f.unlink()
        yield home
    finally:
        shutil.rmtree(root, ignore_errors=True)


@contextlib.contextmanager
def running_agent(sock: Path) -> Iterator[Path]:
    """A real ssh-agent in the foreground (-D) listening on sock; killed by pid at the end."""
    sock.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    proc = subprocess.Popen(
        ["ssh-agent", "-D", "-a", str(sock)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 10
        while not sock.exists():
            assert proc.poll() is None, f"ssh-agent exited with {proc.returncode}"
            assert time.monotonic() < deadline, "ssh-agent did not create its socket"
            time.sleep(0.02)
        yield sock
    finally:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        proc.wait(timeout=10)


@pytest.fixture
def agent(ophome: Home) -> Iterator[Path]:
    """A real ssh-agent listening where the 1Password agent does on Linux."""
    with running_agent(ophome.path / ".1password" / "agent.sock") as sock:
        yield sock


@pytest.fixture
def op(tmp_path: Path, agent: Path) -> OpStub:
    """The `op` stand-in (vaults Private and Work, signed in), loading keys into `agent`."""
    return OpStub(tmp_path, agent_sock=agent)


def setup(
    rig: Rig, home: Home, pyz: Path, env: dict[str, str], *args: str, timeout: float = 240, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    """Run `python pyz setup ARGS` with the given environment (rig env + the op stub)."""
    return subprocess.run(
        [sys.executable, str(pyz), "setup", *args],
        env=env,
        input=stdin,
        stdin=None if stdin is not None else subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def ssh_via_config(rig: Rig, home: Home, config: Path, host: str, *remote: str) -> subprocess.CompletedProcess[str]:
    """ssh HOST through the written config only (no SSH_AUTH_SOCK: the agent only via IdentityAgent)."""
    argv = ssh_config_argv(home, config, host, *remote)
    env = rig.env(home)
    assert "SSH_AUTH_SOCK" not in env
    return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120)


def agent_keys(sock: Path) -> list[str]:
    """'TYPE BASE64' of every key the agent holds."""
    res = subprocess.run(
        ["ssh-add", "-L"],
        env={"SSH_AUTH_SOCK": str(sock), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=30,
    )
    return [" ".join(line.split()[:2]) for line in res.stdout.splitlines() if line.startswith("ssh-")]


def files_with_private_keys(root: Path) -> list[Path]:
    found = []
    for p in root.rglob("*"):
        if p.is_file() and not p.is_symlink():
            try:
                if b"PRIVATE KEY" in p.read_bytes():
                    found.append(p)
            except OSError:
                pass
    return found


def assert_no_private_key_output(res: subprocess.CompletedProcess[str]) -> None:
    assert "PRIVATE KEY" not in res.stdout and "PRIVATE KEY" not in res.stderr, "private key material printed"


def assert_contract_calls(op: OpStub) -> None:
    """Every op call setup made is one of the contract's, and it never read a private key."""
    for argv in op.calls():
        assert argv[:1] in (["--version"], ["whoami"], ["item"], ["read"]) or argv == [
            "vault",
            "list",
            "--format",
            "json",
        ], argv
        if argv[:1] == ["read"]:
            assert argv[1].endswith("/public key"), f"setup read {argv[1]!r}"
    for rec in op.records():
        assert "unknown command" not in str(rec), rec


def test_creates_item_and_ssh_uses_the_agent(rig: Rig, ophome: Home, pyz: Path, op: OpStub, agent: Path) -> None:
    iid = rig.add_instance()
    env = op.env(rig.env(ophome))
    res = setup(rig, ophome, pyz, env, "--instance", iid, "--hostname", "op1", "--1password", "--yes")
    assert res.returncode == 0, res.stderr
    assert_no_private_key_output(res)
    assert_contract_calls(op)
    assert [r["rc"] for r in op.records()] == [0] * len(op.records()), op.records()

    # the item: one, in Private, created with the contract's exact command
    items = op.items()
    assert [(i["title"], i["vault"]["name"]) for i in items] == [(TITLE, "Private")]
    assert op.calls("item", "create") == [
        [
            "item",
            "create",
            "--category",
            "SSH Key",
            "--title",
            TITLE,
            "--vault",
            "Private",
            "--ssh-generate-key",
            "ed25519",
            "--format",
            "json",
        ]
    ]
    assert op.calls("whoami") and all(c == ["whoami", "--format", "json"] for c in op.calls("whoami"))
    assert op.calls("item", "list") and all(
        c == ["item", "list", "--categories", "SSH Key", "--format", "json"] for c in op.calls("item", "list")
    )
    assert PRIVATE_WARNING not in res.stderr

    # only the public key on disk
    pub = ophome.ssh_dir / "cloudX.pub"
    assert pub.read_text().split()[:2] == items[0]["public_key"].split()
    assert mode(pub) == 0o644
    assert not (ophome.ssh_dir / "cloudX").exists(), "no private key file"
    assert files_with_private_keys(ophome.path) == []
    assert items[0]["public_key"] in agent_keys(agent)

    # the config: agent socket (absolute), the .pub as IdentityFile
    config = ophome.ssh_dir / "config"
    text = config.read_text()
    assert f"IdentityAgent {agent}\n" in text
    assert str(agent).startswith("/")
    assert f"IdentityFile {pub}\n" in text
    assert "IdentitiesOnly yes\n" in text
    assert f"IdentityFile {ophome.ssh_dir / 'cloudX'}\n" not in text
    assert f"Host cloudX-dev-op1\n    HostName {iid}\n" in text

    # real ssh through the written config: the private key exists only in the agent
    res = ssh_via_config(rig, ophome, config, "cloudX-dev-op1", "echo via-agent")
    assert res.returncode == 0, res.stderr
    assert res.stdout == "via-agent\n"
    assert rig.calls("SendSSHPublicKey"), "connect pushed the public key"

    # and it is the agent that signs: without it, ssh cannot log in
    subprocess.run(
        ["ssh-add", "-D"], env={"SSH_AUTH_SOCK": str(agent), "PATH": "/usr/bin:/bin"}, capture_output=True, check=True
    )
    res = ssh_via_config(rig, ophome, config, "cloudX-dev-op1", "echo via-agent")
    assert res.returncode != 0 and res.stdout == ""


def test_existing_item_in_work_is_reused(rig: Rig, ophome: Home, pyz: Path, op: OpStub, agent: Path) -> None:
    op.set_agent_vaults(["Private", "Work"])  # the user enabled Work for the agent (setup checks ssh)
    seeded = op.add_item(TITLE, vault="Work")
    assert seeded["public_key"] in agent_keys(agent)
    op.clear_calls()
    iid = rig.add_instance()
    res = setup(
        rig, ophome, pyz, op.env(rig.env(ophome)), "--instance", iid, "--hostname", "op2", "--1password", "--yes"
    )
    assert res.returncode == 0, res.stderr
    assert_no_private_key_output(res)
    assert_contract_calls(op)
    assert op.calls("item", "create") == [], "the existing item is reused"
    assert len(op.items()) == 1
    assert (ophome.ssh_dir / "cloudX.pub").read_text().split()[:2] == seeded["public_key"].split()
    assert mode(ophome.ssh_dir / "cloudX.pub") == 0o644
    assert not (ophome.ssh_dir / "cloudX").exists()
    assert files_with_private_keys(ophome.path) == []
    reads = op.calls("read")
    assert reads and all(r[1].endswith("/public key") for r in reads)
    text = (ophome.ssh_dir / "config").read_text()
    assert f"IdentityAgent {ophome.path / '.1password' / 'agent.sock'}\n" in text
    assert f"IdentityFile {ophome.ssh_dir / 'cloudX.pub'}\n" in text


def test_named_vault_creates_there_and_warns(rig: Rig, ophome: Home, pyz: Path, op: OpStub) -> None:
    op.set_agent_vaults(["Private", "Work"])  # the user enabled Work for the agent (setup checks ssh)
    iid = rig.add_instance()
    res = setup(
        rig,
        ophome,
        pyz,
        op.env(rig.env(ophome)),
        "--instance",
        iid,
        "--hostname",
        "op3",
        "--1password",
        "Work",
        "--yes",
    )
    assert res.returncode == 0, res.stderr
    assert_no_private_key_output(res)
    assert_contract_calls(op)
    assert [(i["title"], i["vault"]["name"]) for i in op.items()] == [(TITLE, "Work")]
    create = op.calls("item", "create")
    assert len(create) == 1 and create[0][create[0].index("--vault") + 1] == "Work"
    assert PRIVATE_WARNING in res.stderr
    pub = ophome.ssh_dir / "cloudX.pub"
    assert pub.read_text().split()[:2] == op.items()[0]["public_key"].split()
    assert not (ophome.ssh_dir / "cloudX").exists()


def test_vault_not_enabled_for_the_agent_is_no_success(
    rig: Rig, ophome: Home, pyz: Path, op: OpStub, agent: Path
) -> None:
    """1Password's default: the agent serves only Private keys. A key made in Work is then not
    usable, and setup's connection check must not report success."""
    res = setup(
        rig,
        ophome,
        pyz,
        op.env(rig.env(ophome)),
        "--instance",
        rig.add_instance(),
        "--hostname",
        "op7",
        "--1password",
        "Work",
        "--yes",
    )
    assert PRIVATE_WARNING in res.stderr
    assert [(i["title"], i["vault"]["name"]) for i in op.items()] == [(TITLE, "Work")]
    assert agent_keys(agent) == []
    assert res.returncode != 0, res.stderr
    assert "Traceback" not in res.stderr
    assert_no_private_key_output(res)


def test_unknown_vault_fails_cleanly(rig: Rig, ophome: Home, pyz: Path, op: OpStub) -> None:
    res = setup(
        rig,
        ophome,
        pyz,
        op.env(rig.env(ophome)),
        "--instance",
        rig.add_instance(),
        "--hostname",
        "op4",
        "--1password",
        "Nope",
        "--yes",
    )
    assert res.returncode != 0
    assert "Nope" in res.stderr
    assert "Traceback" not in res.stderr
    assert op.items() == []
    assert not (ophome.ssh_dir / "config").exists()


def test_not_signed_in(rig: Rig, ophome: Home, pyz: Path, op: OpStub) -> None:
    op.set_signed_in(False)
    res = setup(
        rig,
        ophome,
        pyz,
        op.env(rig.env(ophome)),
        "--instance",
        rig.add_instance(),
        "--hostname",
        "op5",
        "--1password",
        "--yes",
    )
    assert res.returncode != 0
    assert "op signin" in res.stderr
    assert "Traceback" not in res.stderr
    assert op.calls("item", "create") == [] and op.items() == []
    assert not (ophome.ssh_dir / "config").exists()
    assert not (ophome.ssh_dir / "cloudX.pub").exists()


def test_op_missing(rig: Rig, ophome: Home, pyz: Path) -> None:
    env = rig.env(ophome)
    assert shutil.which("op", path=env["PATH"]) is None, "a real op is on the rig's PATH"
    res = setup(rig, ophome, pyz, env, "--instance", rig.add_instance(), "--hostname", "op6", "--1password", "--yes")
    assert res.returncode != 0
    assert "install" in res.stderr.lower() and "1password" in res.stderr.lower()
    assert "Traceback" not in res.stderr
    assert not (ophome.ssh_dir / "config").exists()


def test_snap_agent_socket_is_found(rig: Rig, ophome: Home, pyz: Path, tmp_path: Path) -> None:
    """Only the snap package's socket exists: IdentityAgent names it, and ssh works through it."""
    with running_agent(ophome.path / "snap" / "1password" / "current" / ".1password" / "agent.sock") as sock:
        op = OpStub(tmp_path, agent_sock=sock)
        res = setup(
            rig,
            ophome,
            pyz,
            op.env(rig.env(ophome)),
            "--instance",
            rig.add_instance(),
            "--hostname",
            "op8",
            "--1password",
            "--yes",
        )
        assert res.returncode == 0, res.stderr
        config = ophome.ssh_dir / "config"
        assert f"IdentityAgent {sock}\n" in config.read_text()
        res = ssh_via_config(rig, ophome, config, "cloudX-dev-op8", "echo snap")
        assert res.returncode == 0, res.stderr
        assert res.stdout == "snap\n"


def test_macos_socket_comes_first(rig: Rig, ophome: Home, pyz: Path, op: OpStub, agent: Path) -> None:
    """Both the macOS group-container socket and ~/.1password/agent.sock exist: the first in
    setup's order (the macOS one) is named."""
    mac = ophome.path / "Library" / "Group Containers" / "2BUA8C4S2C.com.1password" / "t" / "agent.sock"
    mac.parent.mkdir(parents=True)
    mac.symlink_to(agent)  # the same agent, so setup's connection check still works
    res = setup(
        rig,
        ophome,
        pyz,
        op.env(rig.env(ophome)),
        "--instance",
        rig.add_instance(),
        "--hostname",
        "op9",
        "--1password",
        "--yes",
    )
    assert res.returncode == 0, res.stderr
    text = (ophome.ssh_dir / "config").read_text()
    assert f'IdentityAgent "{mac}"\n' in text, "quoted: the path has a space"
    assert f"IdentityAgent {agent}\n" not in text


def test_no_agent_socket_warns_and_names_the_linux_default(rig: Rig, ophome: Home, pyz: Path, tmp_path: Path) -> None:
    """No agent at all: the config names $HOME/.1password/agent.sock, with a warning; the
    connection check then cannot succeed, so setup does not report success."""
    op = OpStub(tmp_path)
    res = setup(
        rig,
        ophome,
        pyz,
        op.env(rig.env(ophome)),
        "--instance",
        rig.add_instance(),
        "--hostname",
        "op10",
        "--1password",
        "--yes",
    )
    sock = ophome.path / ".1password" / "agent.sock"
    assert "warning" in res.stderr and str(sock) in res.stderr
    assert f"IdentityAgent {sock}\n" in (ophome.ssh_dir / "config").read_text()
    assert (ophome.ssh_dir / "cloudX.pub").exists() and not (ophome.ssh_dir / "cloudX").exists()
    assert res.returncode != 0
    assert "Traceback" not in res.stderr


def test_dry_run_creates_no_item_and_writes_nothing(rig: Rig, ophome: Home, pyz: Path, op: OpStub) -> None:
    before = sorted(p.relative_to(ophome.path) for p in ophome.path.rglob("*") if ".cache" not in p.parts)
    res = setup(
        rig,
        ophome,
        pyz,
        op.env(rig.env(ophome)),
        "--instance",
        rig.add_instance(),
        "--hostname",
        "op11",
        "--1password",
        "--yes",
        "--dry-run",
    )
    assert res.returncode == 0, res.stderr
    assert op.calls("item", "create") == [] and op.items() == []
    assert_contract_calls(op)
    after = sorted(p.relative_to(ophome.path) for p in ophome.path.rglob("*") if ".cache" not in p.parts)
    assert after == before


def test_item_titled_with_the_plain_key_name_is_found(
    rig: Rig, ophome: Home, pyz: Path, op: OpStub, agent: Path
) -> None:
    """As the reference: 'cloudX SSH Key - K' or, failing that, an item titled just 'K'."""
    seeded = op.add_item("cloudX")
    op.clear_calls()
    iid = rig.add_instance()
    res = setup(
        rig, ophome, pyz, op.env(rig.env(ophome)), "--instance", iid, "--hostname", "op12", "--1password", "--yes"
    )
    assert res.returncode == 0, res.stderr
    assert "found 'cloudX' in vault Private" in res.stderr
    assert op.calls("item", "create") == [] and len(op.items()) == 1
    assert (ophome.ssh_dir / "cloudX.pub").read_text().split()[:2] == seeded["public_key"].split()
    assert_contract_calls(op)


def test_interactive_vault_choice_when_the_vault_is_missing(rig: Rig, ophome: Home, pyz: Path, op: OpStub) -> None:
    iid = rig.add_instance()
    env = op.env(rig.env(ophome))
    res = setup(rig, ophome, pyz, env, "--instance", iid, "--hostname", "op13", "--1password", "Nope", stdin="1\n")
    assert res.returncode == 0, res.stderr
    assert "vault 'Nope' not found" in res.stderr and "1. Private" in res.stderr and "2. Work" in res.stderr
    assert [(i["title"], i["vault"]["name"]) for i in op.items()] == [(TITLE, "Private")]
    assert op.calls("vault", "list") == [["vault", "list", "--format", "json"]]
    assert_contract_calls(op)


def test_op_missing_falls_back_to_a_key_on_disk_when_chosen(rig: Rig, ophome: Home, pyz: Path) -> None:
    """Interactive: 1Password unavailable, the user accepts a key on disk (with --yes: an error, as
    the reference, see test_op_missing)."""
    iid = rig.add_instance()
    res = setup(rig, ophome, pyz, rig.env(ophome), "--instance", iid, "--hostname", "op14", "--1password", stdin="y\n")
    assert res.returncode == 0, res.stderr
    assert "1Password is not available" in res.stderr and "warning: not using 1Password" in res.stderr
    assert mode(ophome.ssh_dir / "cloudX") == 0o600, "a key pair on disk"
    text = (ophome.ssh_dir / "config").read_text()
    assert f"IdentityFile {ophome.ssh_dir / 'cloudX'}\n" in text and "IdentityAgent" not in text


def test_public_key_whose_private_key_is_in_an_agent(rig: Rig, ophome: Home, pyz: Path, agent: Path) -> None:
    """Only <key>.pub on disk, its private key in an agent: accepted with a warning, and ssh
    logs in through the agent."""
    key = ophome.ssh_dir / "cloudX"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    env = {**rig.env(ophome), "SSH_AUTH_SOCK": str(agent)}
    subprocess.run(["ssh-add", "-q", str(key)], env=env, check=True, capture_output=True)
    key.unlink()
    iid = rig.add_instance()
    res = setup(rig, ophome, pyz, env, "--instance", iid, "--hostname", "op15", "--yes")
    assert res.returncode == 0, res.stderr
    assert "has no private key beside it" in res.stderr
    config = ophome.ssh_dir / "config"
    assert f"IdentityFile {key}.pub\n" in config.read_text()
    argv = ssh_config_argv(ophome, config, "cloudX-dev-op15", "echo", "agent-ok")
    res = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120)
    assert (res.returncode, res.stdout) == (0, "agent-ok\n"), res.stderr


ORIGINAL_PYTHON = Path(__file__).resolve().parent.parent / ".venv-original" / "bin" / "python"


def test_dry_run_without_op_previews(rig: Rig, ophome: Home, pyz: Path) -> None:
    """No `op` at all: a dry run still previews (exit 0), says op is missing, shows the config
    with the agent, and writes nothing (the reference's dry run never looks for op either)."""
    env = rig.env(ophome)
    assert shutil.which("op", path=env["PATH"]) is None, "a real op is on the rig's PATH"
    before = sorted(p.relative_to(ophome.path) for p in ophome.path.rglob("*") if ".cache" not in p.parts)
    iid = rig.add_instance()
    res = setup(rig, ophome, pyz, env, "--instance", iid, "--hostname", "op16", "--1password", "--yes", "--dry-run")
    assert res.returncode == 0, res.stderr
    assert "[dry run] the 1Password CLI 'op' was not found" in res.stderr
    assert f"would find '{TITLE}' in 1Password or create it in vault Private" in res.stderr
    assert f"+    IdentityAgent {ophome.path / '.1password' / 'agent.sock'}" in res.stderr
    assert f"+    IdentityFile {ophome.ssh_dir / 'cloudX.pub'}" in res.stderr
    assert "Traceback" not in res.stderr
    after = sorted(p.relative_to(ophome.path) for p in ophome.path.rglob("*") if ".cache" not in p.parts)
    assert after == before


def test_1password_true_is_the_private_vault_and_setup_reminds_to_enable_the_key(
    rig: Rig, ophome: Home, pyz: Path, op: OpStub, agent: Path
) -> None:
    """`--1password true` names the default vault, as in the reference (checked against its own
    code), not a vault called 'true'; after creating the key setup says to enable it in the agent."""
    if not ORIGINAL_PYTHON.exists():
        skip_or_fail(f"{ORIGINAL_PYTHON} missing (.ci/run installs tests/requirements-original.txt there)")
    probe = "from cloudx_proxy.setup import CloudXSetup as S; print(S(op_vault='true', non_interactive=True).op_vault)"
    ref = subprocess.run(
        [str(ORIGINAL_PYTHON), "-I", "-c", probe],
        env={"HOME": str(ophome.path), "PATH": "/usr/bin:/bin"},
        cwd=ophome.path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert (ref.returncode, ref.stdout) == (0, "Private\n"), ref.stderr
    iid = rig.add_instance()
    res = setup(
        rig,
        ophome,
        pyz,
        op.env(rig.env(ophome)),
        "--instance",
        iid,
        "--hostname",
        "op17",
        "--1password",
        "true",
        "--yes",
    )
    assert res.returncode == 0, res.stderr
    assert [(i["title"], i["vault"]["name"]) for i in op.items()] == [(TITLE, "Private")]
    assert "vault 'true'" not in res.stderr and PRIVATE_WARNING not in res.stderr
    assert f"make sure '{TITLE}' is enabled in 1Password's SSH agent" in res.stderr
    res = ssh_via_config(rig, ophome, ophome.ssh_dir / "config", "cloudX-dev-op17", "echo true-vault")
    assert (res.returncode, res.stdout) == (0, "true-vault\n"), res.stderr

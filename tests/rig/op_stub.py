"""A stand-in for the 1Password CLI `op`, for the end-to-end tests of `setup --1password`.

Installed by :func:`install_op` (or :class:`OpStub`) as an executable `op` with the shebang
`#!<python> -S`; stdlib only. It understands exactly the calls setup is allowed to make:

    op --version
    op whoami --format json
    op item list --categories "SSH Key" --format json          (all vaults)
    op item create --category "SSH Key" --title T --vault V --ssh-generate-key ed25519 --format json
    op read "op://<vault name or id>/<item id or title>/<field label or id>"
    op vault list --format json

`--flag value` and `--flag=value` are both accepted (as the real op does). Anything else
(another subcommand, an unknown flag, a stray argument) exits 1 with an `[ERROR]` line, so a
test notices when setup calls something outside that contract.

State is one JSON file named by `OP_STUB_STATE`:

    {"version": "2.30.0", "signed_in": true, "account": {...whoami...},
     "vaults": [{"id", "name"}],  "agent_vaults": ["Private"],
     "items": [{"id", "title", "category": "SSH_KEY", "vault": {"id", "name"},
                "public_key", "private_key", "fingerprint", "created_at", "updated_at"}],
     "log": [{"argv": [...], "rc": 0}]}

`item create` generates a REAL ed25519 key pair with ssh-keygen and keeps the private key in
the state. To play the 1Password SSH agent: when `OP_STUB_AGENT_SOCK` is set, the private key
of a new item whose vault is in `agent_vaults` (like 1Password: only Private by default) is
loaded with `ssh-add` into the real ssh-agent listening on that socket.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import random
import string
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

VERSION = "2.30.0"
DEFAULT_VAULTS = ("Private", "Work")
ACCOUNT = {
    "url": "my.1password.com",
    "email": "alice@example.com",
    "user_uuid": "ALICEUSERUUID0000000000000",
    "account_uuid": "ACCOUNTUUID000000000000000",
}
NOT_SIGNED_IN = "account is not signed in"
NOT_SIGNED_IN_OTHER = "You are not currently signed in. Please run `op signin --help` for instructions"
SSH_KEY_CATEGORY = "SSH_KEY"


class OpError(Exception):
    """Printed as `[ERROR] <timestamp> <message>` on stderr; exit 1."""


def new_id() -> str:
    """A 1Password-style id: 26 lowercase letters and digits."""
    return "".join(random.choice(string.ascii_lowercase + string.digits) for _ in range(26))


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def initial_state(vaults: tuple[str, ...] | list[str] = DEFAULT_VAULTS, signed_in: bool = True) -> dict[str, Any]:
    return {
        "version": VERSION,
        "signed_in": signed_in,
        "account": dict(ACCOUNT),
        "vaults": [{"id": new_id(), "name": name} for name in vaults],
        "agent_vaults": ["Private"],
        "items": [],
        "log": [],
    }


# --- state file ------------------------------------------------------------------
@contextlib.contextmanager
def locked_state(state_file: Path | str) -> Iterator[dict[str, Any]]:
    """Read-modify-write the state under an exclusive lock (setup may run op concurrently)."""
    state_file = Path(state_file)
    with open(f"{state_file}.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            state = json.loads(state_file.read_text())
            yield state
            tmp = state_file.with_name(state_file.name + ".tmp")
            tmp.write_text(json.dumps(state, indent=1))
            os.replace(tmp, state_file)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def read_state(state_file: Path | str) -> dict[str, Any]:
    with locked_state(state_file) as state:
        copy: dict[str, Any] = json.loads(json.dumps(state))
        return copy


# --- keys and the agent --------------------------------------------------------------
def generate_key(title: str) -> dict[str, str]:
    """A real ed25519 pair: {'public_key': 'ssh-ed25519 AAAA...', 'private_key', 'fingerprint'}."""
    with tempfile.TemporaryDirectory(prefix="op-stub-") as tmp:
        path = os.path.join(tmp, "key")
        # The comment (inside the private key) names the item, as 1Password's agent does;
        # the public key 1Password shows has no comment, so it is cut off below.
        subprocess.run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", title, "-f", path], check=True, capture_output=True
        )
        private = Path(path).read_text()
        public = " ".join(Path(path + ".pub").read_text().split()[:2])
        fp = subprocess.run(
            ["ssh-keygen", "-l", "-E", "sha256", "-f", path + ".pub"], check=True, capture_output=True, text=True
        ).stdout.split()[1]
    return {"public_key": public, "private_key": private, "fingerprint": fp}


def agent_add(sock: str, private_key: str) -> None:
    """Load a private key into the ssh-agent at `sock` (ssh-add from a 0600 temp file)."""
    with tempfile.TemporaryDirectory(prefix="op-stub-") as tmp:
        path = os.path.join(tmp, "key")
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(private_key)
        env = {**os.environ, "SSH_AUTH_SOCK": sock}
        env.pop("SSH_ASKPASS", None)
        proc = subprocess.run(
            ["ssh-add", "-q", path], env=env, capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=30
        )
    if proc.returncode != 0:
        raise OpError(f"op stub: ssh-add into the agent at {sock} failed: {proc.stderr.strip()}")


def item_summary(item: dict[str, Any]) -> dict[str, Any]:
    """An item as `op item list --format json` shows it."""
    return {
        "id": item["id"],
        "title": item["title"],
        "version": 1,
        "vault": dict(item["vault"]),
        "category": item["category"],
        "last_edited_by": ACCOUNT["user_uuid"],
        "created_at": item["created_at"],
        "updated_at": item["updated_at"],
        "additional_information": item.get("fingerprint", ""),
    }


def item_full(item: dict[str, Any]) -> dict[str, Any]:
    """An item as `op item create/get --format json` shows it (an SSH Key item's fields)."""
    ref = f"op://{item['vault']['id']}/{item['id']}"
    out = item_summary(item)
    out["fields"] = [
        {
            "id": "public_key",
            "type": "STRING",
            "label": "public key",
            "value": item["public_key"],
            "reference": f"{ref}/public key",
        },
        {
            "id": "fingerprint",
            "type": "STRING",
            "label": "fingerprint",
            "value": item["fingerprint"],
            "reference": f"{ref}/fingerprint",
        },
        {
            "id": "private_key",
            "type": "SSHKEY",
            "label": "private key",
            "value": item["private_key"],
            "reference": f"{ref}/private key",
            "ssh_formats": {
                "openssh": {"reference": f"{ref}/private key?ssh-format=openssh", "value": item["private_key"]}
            },
        },
        {"id": "key_type", "type": "STRING", "label": "key type", "value": "ed25519", "reference": f"{ref}/key type"},
    ]
    return out


FIELDS = {
    "public key": "public_key",
    "public_key": "public_key",
    "private key": "private_key",
    "private_key": "private_key",
    "fingerprint": "fingerprint",
}


def find_vault(state: dict[str, Any], ref: str) -> dict[str, Any]:
    for vault in state["vaults"]:
        if ref == vault["id"] or ref.lower() == vault["name"].lower():
            return dict(vault)
    raise OpError(f'"{ref}" isn\'t a vault in this account. Specify the vault with its ID or name.')


def make_item(state: dict[str, Any], title: str, vault: dict[str, Any], agent_sock: str | None) -> dict[str, Any]:
    """A new SSH Key item with a real key, loaded into the agent (if any and the vault is enabled)."""
    item: dict[str, Any] = {
        "id": new_id(),
        "title": title,
        "category": SSH_KEY_CATEGORY,
        "vault": {"id": vault["id"], "name": vault["name"]},
        "created_at": _now(),
        "updated_at": _now(),
        **generate_key(title),
    }
    if agent_sock and in_agent(state, item):
        agent_add(agent_sock, item["private_key"])
    state["items"].append(item)
    return item


def in_agent(state: dict[str, Any], item: dict[str, Any]) -> bool:
    agent_vaults = state.get("agent_vaults")
    return agent_vaults is None or item["vault"]["name"] in agent_vaults


# --- command line --------------------------------------------------------------------
def parse_flags(args: list[str], allowed: dict[str, bool], positional: int = 0) -> tuple[dict[str, str], list[str]]:
    """`--flag value` / `--flag=value` (allowed[name] = takes a value) and at most `positional` args."""
    flags: dict[str, str] = {}
    rest: list[str] = []
    i = 0
    while i < len(args):
        arg = args[i]
        if arg.startswith("-") and arg != "-":
            name, eq, value = arg.partition("=")
            if name not in allowed:
                raise OpError(f"unknown flag: {name}")
            if allowed[name]:
                if not eq:
                    i += 1
                    if i >= len(args):
                        raise OpError(f"flag needs an argument: {name}")
                    value = args[i]
            elif eq:
                raise OpError(f"flag {name} takes no value")
            if name in flags:
                raise OpError(f"flag {name} given twice")
            flags[name] = value
        else:
            rest.append(arg)
        i += 1
    if len(rest) > positional:
        raise OpError(f"unexpected argument(s): {' '.join(rest[positional:])}")
    return flags, rest


def norm_category(name: str) -> str:
    key = name.replace(" ", "").replace("_", "").lower()
    if key in ("sshkey", "ssh"):
        return SSH_KEY_CATEGORY
    raise OpError(f'"{name}" isn\'t a supported category (the op stub knows only "SSH Key")')


def check_format(flags: dict[str, str]) -> bool:
    """True for --format json, False when absent (human output)."""
    fmt = flags.get("--format")
    if fmt is None:
        return False
    if fmt.lower() != "json":
        raise OpError(f'"{fmt}" isn\'t a valid format; use json or human-readable')
    return True


def require_signed_in(state: dict[str, Any]) -> None:
    if not state.get("signed_in", True):
        raise OpError(NOT_SIGNED_IN_OTHER)


def cmd_whoami(state: dict[str, Any], args: list[str]) -> str:
    flags, _ = parse_flags(args, {"--format": True})
    as_json = check_format(flags)
    if not state.get("signed_in", True):
        raise OpError(NOT_SIGNED_IN)
    acct = state["account"]
    if as_json:
        return json.dumps(acct, indent=2) + "\n"
    return f"URL:        {acct['url']}\nEmail:      {acct['email']}\nUser ID:    {acct['user_uuid']}\n"


def cmd_item_list(state: dict[str, Any], args: list[str]) -> str:
    flags, _ = parse_flags(args, {"--categories": True, "--format": True})
    as_json = check_format(flags)
    require_signed_in(state)
    items = state["items"]
    if "--categories" in flags:
        wanted = {norm_category(c.strip()) for c in flags["--categories"].split(",") if c.strip()}
        items = [i for i in items if i["category"] in wanted]
    if as_json:
        return json.dumps([item_summary(i) for i in items], indent=2) + "\n"
    lines = [f"{'ID':<28}{'TITLE':<40}{'VAULT':<16}EDITED"]
    lines += [f"{i['id']:<28}{i['title']:<40}{i['vault']['name']:<16}now" for i in items]
    return "\n".join(lines) + "\n"


def cmd_item_create(state: dict[str, Any], args: list[str]) -> str:
    flags, _ = parse_flags(
        args, {"--category": True, "--title": True, "--vault": True, "--ssh-generate-key": True, "--format": True}
    )
    as_json = check_format(flags)
    require_signed_in(state)
    if norm_category(flags.get("--category", "")) != SSH_KEY_CATEGORY:
        raise OpError("the op stub creates only SSH Key items")
    if "--ssh-generate-key" not in flags:
        raise OpError("the op stub creates SSH Key items only with --ssh-generate-key")
    if flags["--ssh-generate-key"].lower() != "ed25519":
        raise OpError(f'the op stub generates only ed25519 keys, not "{flags["--ssh-generate-key"]}"')
    title = flags.get("--title", "")
    if not title:
        raise OpError("the op stub needs --title")
    if "--vault" not in flags:
        raise OpError("more than one vault available: specify the vault with --vault")
    vault = find_vault(state, flags["--vault"])
    item = make_item(state, title, vault, os.environ.get("OP_STUB_AGENT_SOCK"))
    if as_json:
        return json.dumps(item_full(item), indent=2) + "\n"
    return (
        f"ID:          {item['id']}\nTitle:       {title}\nVault:       {vault['name']} ({vault['id']})\n"
        f"Category:    SSH_KEY\nFields:\n  public key:     {item['public_key']}\n"
        f"  fingerprint:    {item['fingerprint']}\n  private key:    [use 'op item get {item['id']} --reveal' to reveal]\n"
        "  key type:       ed25519\n"
    )


def cmd_read(state: dict[str, Any], args: list[str]) -> str:
    _, rest = parse_flags(args, {}, positional=1)
    if not rest:
        raise OpError("expected a secret reference: op read op://<vault>/<item>/<field>")
    ref = rest[0]
    require_signed_in(state)
    if not ref.startswith("op://") or "?" in ref:
        raise OpError(
            f"could not read secret '{ref}': invalid secret reference (the op stub takes op://vault/item/field)"
        )
    parts = ref[len("op://") :].split("/")
    if len(parts) != 3 or not all(parts):
        raise OpError(f"could not read secret '{ref}': invalid secret reference: expected op://vault/item/field")
    vault_ref, item_ref, field = parts
    try:
        vault = find_vault(state, vault_ref)
    except OpError as e:
        raise OpError(f"could not read secret '{ref}': {e}") from None
    in_vault = [i for i in state["items"] if i["vault"]["id"] == vault["id"]]
    matches = [i for i in in_vault if i["id"] == item_ref] or [i for i in in_vault if i["title"] == item_ref]
    if not matches:
        raise OpError(f"could not read secret '{ref}': could not find item {item_ref} in vault {vault['name']}")
    if len(matches) > 1:
        raise OpError(
            f"could not read secret '{ref}': More than one item matches \"{item_ref}\". "
            "Try again and specify the item by its ID"
        )
    key = FIELDS.get(field.lower())
    if key is None:
        raise OpError(f"could not read secret '{ref}': the item doesn't have a field named '{field}'")
    return str(matches[0][key]) + "\n"


def cmd_vault_list(state: dict[str, Any], args: list[str]) -> str:
    flags, _ = parse_flags(args, {"--format": True})
    as_json = check_format(flags)
    require_signed_in(state)
    vaults = [{"id": v["id"], "name": v["name"], "content_version": 1} for v in state["vaults"]]
    if as_json:
        return json.dumps(vaults, indent=2) + "\n"
    return "\n".join([f"{'ID':<28}NAME"] + [f"{v['id']:<28}{v['name']}" for v in vaults]) + "\n"


def dispatch(state: dict[str, Any], argv: list[str]) -> str:
    if argv == ["--version"]:
        return str(state.get("version", VERSION)) + "\n"
    if argv[:1] == ["whoami"]:
        return cmd_whoami(state, argv[1:])
    if argv[:2] == ["item", "list"]:
        return cmd_item_list(state, argv[2:])
    if argv[:2] == ["item", "create"]:
        return cmd_item_create(state, argv[2:])
    if argv[:1] == ["read"]:
        return cmd_read(state, argv[1:])
    if argv[:2] == ["vault", "list"]:
        return cmd_vault_list(state, argv[2:])
    shown = " ".join(argv) or "(nothing)"
    raise OpError(f"op stub: unknown command or flag: {shown} (outside the setup contract)")


def main(argv: list[str]) -> int:
    state_file = os.environ.get("OP_STUB_STATE")
    if not state_file or not os.path.exists(state_file):
        sys.stderr.write(
            f"[ERROR] {time.strftime('%Y/%m/%d %H:%M:%S')} op stub: OP_STUB_STATE is not set "
            "to an existing state file\n"
        )
        return 1
    with locked_state(state_file) as state:
        entry: dict[str, Any] = {"argv": list(argv), "rc": 0}
        state["log"].append(entry)
        try:
            out = dispatch(state, list(argv))
        except OpError as e:
            entry["rc"] = 1
            sys.stderr.write(f"[ERROR] {time.strftime('%Y/%m/%d %H:%M:%S')} {e}\n")
            return 1
    sys.stdout.write(out)
    return 0


# --- helpers for tests -----------------------------------------------------------------
def install_op(
    bin_dir: Path, state_file: Path, vaults: tuple[str, ...] | list[str] = DEFAULT_VAULTS, signed_in: bool = True
) -> Path:
    """Write `<bin_dir>/op` (this file with a `#!<python> -S` shebang) and a fresh state file."""
    bin_dir = Path(bin_dir)
    bin_dir.mkdir(parents=True, exist_ok=True)
    op = bin_dir / "op"
    op.write_text(f"#!{sys.executable} -S\n" + Path(__file__).read_text())
    op.chmod(0o755)
    Path(state_file).write_text(json.dumps(initial_state(vaults, signed_in), indent=1))
    return op


class OpStub:
    """An installed `op` stand-in plus its state, for one test.

    stub = OpStub(tmp_dir, agent_sock=sock)   # bin dir <tmp_dir>/opbin, state <tmp_dir>/op-state.json
    env = stub.env(rig.env(home))             # PATH starts with the stub's bin dir
    stub.add_item("cloudX SSH Key - cloudX", vault="Work")
    stub.calls() -> [["whoami", "--format", "json"], ...]; stub.items(); stub.set_signed_in(False)
    """

    def __init__(
        self,
        root: Path,
        agent_sock: Path | str | None = None,
        vaults: tuple[str, ...] | list[str] = DEFAULT_VAULTS,
        signed_in: bool = True,
    ) -> None:
        self.root = Path(root)
        self.bin_dir = self.root / "opbin"
        self.state_file = self.root / "op-state.json"
        self.agent_sock = str(agent_sock) if agent_sock is not None else None
        self.path = install_op(self.bin_dir, self.state_file, vaults, signed_in)

    def env(self, base: dict[str, str]) -> dict[str, str]:
        """`base` with the stub first on PATH and OP_STUB_STATE / OP_STUB_AGENT_SOCK set."""
        env = dict(base)
        env["PATH"] = f"{self.bin_dir}:{base.get('PATH', '/usr/bin:/bin')}"
        env["OP_STUB_STATE"] = str(self.state_file)
        if self.agent_sock:
            env["OP_STUB_AGENT_SOCK"] = self.agent_sock
        return env

    def state(self) -> dict[str, Any]:
        return read_state(self.state_file)

    def records(self) -> list[dict[str, Any]]:
        """Every invocation: {'argv': [...], 'rc': n}."""
        return list(self.state()["log"])

    def calls(self, *prefix: str) -> list[list[str]]:
        """The argv (after `op`) of every invocation, optionally only those starting with prefix."""
        return [r["argv"] for r in self.records() if r["argv"][: len(prefix)] == list(prefix)]

    def clear_calls(self) -> None:
        with locked_state(self.state_file) as state:
            state["log"] = []

    def items(self, title: str | None = None, vault: str | None = None) -> list[dict[str, Any]]:
        """Stored items (with their keys), optionally filtered by title and vault name."""
        return [
            i
            for i in self.state()["items"]
            if (title is None or i["title"] == title) and (vault is None or i["vault"]["name"] == vault)
        ]

    def add_item(self, title: str, vault: str = "Private") -> dict[str, Any]:
        """Seed an SSH Key item (a real key); loaded into the agent if its vault is agent-enabled."""
        with locked_state(self.state_file) as state:
            return dict(make_item(state, title, find_vault(state, vault), self.agent_sock))

    def set_signed_in(self, signed_in: bool) -> None:
        with locked_state(self.state_file) as state:
            state["signed_in"] = signed_in

    def set_agent_vaults(self, vaults: list[str] | None) -> None:
        """Vaults whose keys the agent serves (None: all); 1Password's default is Private only."""
        with locked_state(self.state_file) as state:
            state["agent_vaults"] = vaults

    def load_agent(self) -> None:
        """(Re)load every agent-enabled item's key into the agent, e.g. after restarting it."""
        if not self.agent_sock:
            raise RuntimeError("OpStub has no agent_sock")
        state = self.state()
        for item in state["items"]:
            if in_agent(state, item):
                agent_add(self.agent_sock, item["private_key"])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

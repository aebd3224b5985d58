"""Stand-in for AWS's session-manager-plugin, used by the test rig.

Called as the real one is (aws/session-manager-plugin, src/sessionmanagerplugin/session/session.go):
``session-manager-plugin RESPONSE_OR_ENVNAME REGION StartSession PROFILE PARAMETERS_JSON ENDPOINT_URL``.
When RESPONSE_OR_ENVNAME starts with ``AWS_SSM_START_SESSION_RESPONSE`` the StartSession answer is
read from that environment variable, which is then unset; otherwise it is the answer itself.
It needs nothing but its argv and environment (no aws process alive). Like the real one it prints
``\\nStarting session with SessionId: <id>\\n`` on stdout, then uses the session's token once: it
redeems TokenValue at the rig endpoint (``POST /_rig/redeem``, port from the StreamUrl's
``rig_redeem``), which accepts each issued token once. Instead of a websocket data channel it then
TCP-connects to host:port of the StreamUrl (the rig endpoint points that at the instance's sshd)
and bridges stdin/stdout to the socket; stdin EOF half-closes it and the session ends with sshd.

Failures print ``Cannot perform start session: ...`` on stdout (where the real plugin prints it)
and on stderr, and exit 1 (the real plugin exits 0: the rig makes failures visible to tests).

Env knobs: RIG_PLUGIN_VERSION (reported by --version), RIG_PLUGIN_LOG (JSON lines log, one per
session call), RIG_PLUGIN_MODE ("early": fail before connecting; "mid": fail after 2000 bytes),
RIG_PLUGIN_VANISH_AFTER_VERSION=1 (answer --version, then delete this file; refused in the rig's
shared bin dir, marked by ``.rig-shared``). --version calls are logged in RIG_PLUGIN_LOG + ".version". Standard library only; runs under ``python -S``.
"""

from __future__ import annotations

import configparser
import json
import os
import signal
import socket
import sys
import threading
import time
import urllib.parse

ENV_PREFIX = "AWS_SSM_START_SESSION_RESPONSE"
MID_LIMIT = 2000
DEFAULT_VERSION = "1.2.707.0"
INSTALLED = "\nThe Session Manager plugin was installed successfully. Use the AWS CLI to start a session.\n\n"
SHARED_MARK = ".rig-shared"
# Python ignores these itself at start-up, so what the plugin inherited for them is unknowable here.
PYTHON_IGNORES = {"SIGPIPE", "SIGXFSZ"}


def _log(entry: dict, suffix: str = "") -> None:
    path = os.environ.get("RIG_PLUGIN_LOG")
    if path:
        with open(path + suffix, "a") as f:
            f.write(json.dumps({**entry, "t": time.time()}) + "\n")


def _signal_masks() -> dict[str, list[str]]:
    """Signals inherited ignored (but SIGPIPE/SIGXFSZ) and blocked, from /proc/self/status."""
    out: dict[str, list[str]] = {"sig_ignored": [], "sig_blocked": []}
    try:
        with open("/proc/self/status") as f:
            fields = dict(line.split(":", 1) for line in f if ":" in line)
    except OSError:
        return out
    for key, field in (("sig_ignored", "SigIgn"), ("sig_blocked", "SigBlk")):
        mask = int(fields.get(field, "0").strip() or "0", 16)
        names = []
        for n in range(1, 65):
            if mask >> (n - 1) & 1:
                try:
                    names.append(signal.Signals(n).name)
                except ValueError:
                    names.append(str(n))
        out[key] = [n for n in names if key != "sig_ignored" or n not in PYTHON_IGNORES]
    return out


def _open_fds() -> list[int]:
    """Descriptors above 2 this process was started with (what its parent let it inherit)."""
    try:
        listed = [int(n) for n in os.listdir("/proc/self/fd")]
    except OSError:
        return []
    out = []
    for fd in listed:
        if fd > 2:
            try:
                os.fstat(fd)  # the listing's own descriptor is closed by now
                out.append(fd)
            except OSError:
                pass
    return sorted(out)


def _who() -> dict:
    return {"pid": os.getpid(), "ppid": os.getppid(), "exe": os.path.abspath(sys.argv[0])}


def _write_all(fd: int, data: bytes) -> None:
    while data:
        n = os.write(fd, data)
        data = data[n:]


def _fail(msg: str, on_stdout: bool = True) -> None:
    """Report like the real plugin (stdout) and on stderr; exit 1."""
    if on_stdout:
        try:
            _write_all(1, (msg + "\n").encode())
        except OSError:
            pass
    sys.stderr.write(msg + "\n")
    sys.stderr.flush()
    os._exit(1)


def _pump_stdin(sock: socket.socket, sid: str) -> None:
    """stdin -> socket; half-close the socket on EOF. The first byte's time is logged (".stdin")."""
    first = True
    try:
        while True:
            data = os.read(0, 65536)
            if not data:
                break
            if first:
                _log({"session_id": sid, "pid": os.getpid()}, ".stdin")
                first = False
            sock.sendall(data)
    except OSError:
        pass
    try:
        sock.shutdown(socket.SHUT_WR)
    except OSError:
        pass


def _profile_found(profile: str) -> bool | None:
    """Whether the profile (needed for ResumeSession) is in this environment's AWS files."""
    if not profile:
        return None
    home = os.path.expanduser("~")
    names: set[str] = set()
    for path, prefix in (
        (os.environ.get("AWS_CONFIG_FILE") or os.path.join(home, ".aws", "config"), "profile "),
        (os.environ.get("AWS_SHARED_CREDENTIALS_FILE") or os.path.join(home, ".aws", "credentials"), ""),
    ):
        parser = configparser.RawConfigParser()
        try:
            parser.read(path)
        except configparser.Error:
            continue
        for section in parser.sections():
            section = section.strip()
            names.add(section[len(prefix) :].strip() if prefix and section.startswith(prefix) else section)
    return profile in names


def _redeem(url: urllib.parse.SplitResult, session_id: str, token: str) -> str | None:
    """Use the session's token at the rig endpoint; None if accepted, else the reason."""
    port = (urllib.parse.parse_qs(url.query).get("rig_redeem") or [""])[0]
    if not port:
        return None  # a stream URL from elsewhere: nothing to redeem
    body = json.dumps({"session_id": session_id, "token": token}).encode()
    request = (
        f"POST /_rig/redeem HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    ).encode() + body
    try:
        with socket.create_connection(("127.0.0.1", int(port)), timeout=30) as sock:
            sock.sendall(request)
            answer = b""
            while chunk := sock.recv(65536):
                answer += chunk
    except OSError as e:
        return f"cannot reach the rig endpoint: {e}"
    head, _, payload = answer.partition(b"\r\n\r\n")
    if head.split(b" ", 2)[1:2] == [b"200"]:
        return None
    try:
        return str(json.loads(payload).get("error"))
    except ValueError:
        return head.split(b"\r\n", 1)[0].decode(errors="replace")


def _read_response(first: str) -> tuple[str, str]:
    """(form, raw answer): the env var named by argv[1] (then unset), or argv[1] itself."""
    if first.startswith(ENV_PREFIX):
        return "env", os.environ.pop(first, "")
    return "arg", first


def session(argv: list[str]) -> None:
    form, raw = _read_response(argv[0])
    region, operation = argv[1], argv[2]
    profile = argv[3] if len(argv) > 3 else ""
    params_json = argv[4] if len(argv) > 4 else "{}"
    endpoint = argv[5] if len(argv) > 5 else ""
    if operation != "StartSession":
        _fail("Invalid Operation")
    try:
        response = json.loads(raw)
    except ValueError as e:
        _fail(f"Cannot perform start session: {'unexpected end of JSON input' if not raw else e}")
    params = json.loads(params_json or "{}")
    port_number = ((params.get("Parameters") or {}).get("portNumber") or [None])[0]
    sid = str(response.get("SessionId") or "")
    entry = {
        **_who(),
        "form": form,
        "argv": ["<response>" if form == "arg" else argv[0], *argv[1:]],
        "target": params.get("Target"),
        "portNumber": port_number,
        "region": region,
        "profile": profile,
        "profile_found": _profile_found(profile),
        "endpoint": endpoint,
        "session_id": sid,
        "redeemed": None,
        "ld_library_path": os.environ.get("LD_LIBRARY_PATH"),
        "fds": FDS_AT_START,
        **_signal_masks(),
    }
    mode = os.environ.get("RIG_PLUGIN_MODE", "")
    if mode == "early":
        _log(entry)
        _fail("Cannot perform start session: EOF")
    _write_all(1, f"\nStarting session with SessionId: {sid}\n".encode())
    url = urllib.parse.urlsplit(response["StreamUrl"])
    refused = _redeem(url, sid, str(response.get("TokenValue") or ""))
    entry["redeemed"] = refused is None
    _log(entry)
    if refused:
        _fail(f"Cannot perform start session: the data channel of session {sid} refused its token: {refused}")
    _bridge(url, mode, sid)


def _bridge(url: urllib.parse.SplitResult, mode: str, sid: str) -> None:
    """Carry bytes between stdin/stdout and host:port of the stream URL; exit with the session."""
    try:
        sock = socket.create_connection((url.hostname, url.port or 443), timeout=5)
    except OSError as e:
        _fail(f"Cannot perform start session: failed to connect to {url.hostname}:{url.port}: {e}")
    sock.settimeout(None)
    threading.Thread(target=_pump_stdin, args=(sock, sid), daemon=True).start()
    sent = 0
    try:
        while True:
            data = sock.recv(65536)
            if not data:
                break
            if mode == "mid" and sent + len(data) >= MID_LIMIT:
                _write_all(1, data[: MID_LIMIT - sent])
                _fail("Cannot perform start session: websocket: close 1006 (abnormal closure)", on_stdout=False)
            _write_all(1, data)
            sent += len(data)
    except OSError as e:
        _fail(f"Session ended with an error: {e}", on_stdout=False)
    os._exit(0)


def version() -> None:
    _log(_who(), ".version")
    print(os.environ.get("RIG_PLUGIN_VERSION") or DEFAULT_VERSION, flush=True)
    if os.environ.get("RIG_PLUGIN_VANISH_AFTER_VERSION") != "1":
        return
    me = os.path.abspath(sys.argv[0])
    if os.path.exists(os.path.join(os.path.dirname(me), SHARED_MARK)):
        sys.stderr.write(
            "rig: RIG_PLUGIN_VANISH_AFTER_VERSION needs a private copy (rig.plugin_dir()), not the shared one\n"
        )
        sys.exit(3)
    os.unlink(me)


FDS_AT_START: list[int] = []


def main() -> None:
    FDS_AT_START.extend(_open_fds())
    args = sys.argv[1:]
    if not args:
        sys.stdout.write(INSTALLED)
    elif args == ["--version"]:
        version()
    elif len(args) < 3:
        sys.stdout.write(
            f"\nUnknown operation {args[0]}. \nUse session-manager-plugin --version to check the version.\n\n"
        )
    else:
        session(args)


if __name__ == "__main__":
    main()

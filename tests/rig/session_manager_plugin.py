"""Stand-in for AWS's session-manager-plugin, used by the test rig.

Called by the aws CLI as
``session-manager-plugin RESPONSE_OR_ENVNAME REGION StartSession PROFILE PARAMETERS_JSON URL``.
Instead of a websocket data channel it TCP-connects to host:port of the StreamUrl (the rig
endpoint points that at the instance's sshd) and bridges stdin/stdout to the socket.

Env knobs: RIG_PLUGIN_VERSION (reported by --version), RIG_PLUGIN_LOG (JSON lines log),
RIG_PLUGIN_MODE ("early": fail before connecting; "mid": fail after 2000 bytes).
Standard library only; runs under ``python -S``.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import threading
import urllib.parse

ENV_NAME = "AWS_SSM_START_SESSION_RESPONSE"
MID_LIMIT = 2000


def _log(entry: dict) -> None:
    path = os.environ.get("RIG_PLUGIN_LOG")
    if path:
        with open(path, "a") as f:
            f.write(json.dumps(entry) + "\n")


def _fail(msg: str) -> None:
    sys.stderr.write(msg + "\n")
    sys.stderr.flush()
    os._exit(1)


def _write_all(fd: int, data: bytes) -> None:
    while data:
        n = os.write(fd, data)
        data = data[n:]


def _pump_stdin(sock: socket.socket) -> None:
    """stdin -> socket; half-close the socket on EOF."""
    try:
        while True:
            data = os.read(0, 65536)
            if not data:
                break
            sock.sendall(data)
    except OSError:
        pass
    try:
        sock.shutdown(socket.SHUT_WR)
    except OSError:
        pass


def session(argv: list[str]) -> None:
    if len(argv) < 6:
        _fail("usage: session-manager-plugin RESPONSE REGION StartSession PROFILE PARAMS URL")
    first, region, _op, profile, params_json, endpoint = argv[:6]
    if first in os.environ and not first.lstrip().startswith("{"):
        form, response = "env", json.loads(os.environ[first])
    else:
        form, response = "arg", json.loads(first)
    params = json.loads(params_json or "{}")
    port_number = ((params.get("Parameters") or {}).get("portNumber") or [None])[0]
    _log(
        {
            "pid": os.getpid(),
            "form": form,
            "target": params.get("Target"),
            "portNumber": port_number,
            "region": region,
            "profile": profile,
            "endpoint": endpoint,
            "session_id": response.get("SessionId"),
        }
    )
    mode = os.environ.get("RIG_PLUGIN_MODE", "")
    if mode == "early":
        _fail("Cannot perform start session: EOF")
    url = urllib.parse.urlsplit(response["StreamUrl"])
    try:
        sock = socket.create_connection((url.hostname, url.port or 443), timeout=5)
    except OSError as e:
        _fail(f"Cannot perform start session: failed to connect to {url.hostname}:{url.port}: {e}")
    sock.settimeout(None)
    threading.Thread(target=_pump_stdin, args=(sock,), daemon=True).start()
    sent = 0
    try:
        while True:
            data = sock.recv(65536)
            if not data:
                break
            if mode == "mid" and sent + len(data) >= MID_LIMIT:
                _write_all(1, data[: MID_LIMIT - sent])
                _fail("Cannot perform start session: websocket: close 1006 (abnormal closure)")
            _write_all(1, data)
            sent += len(data)
    except OSError as e:
        _fail(f"Session ended with an error: {e}")
    os._exit(0)


def main() -> None:
    args = sys.argv[1:]
    if not args:
        print("The Session Manager plugin was installed successfully. Use the AWS CLI to start a session.")
        return
    if args[0] == "--version":
        print(os.environ.get("RIG_PLUGIN_VERSION") or "1.2.707.0")
        return
    session(args)


if __name__ == "__main__":
    main()

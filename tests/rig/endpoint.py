"""AWS endpoint for the test rig: answers what moto lacks, forwards the rest.

Run as ``python endpoint.py --port P --moto-url http://127.0.0.1:M --state-dir DIR``.
Standard library only. See docs/test-rig.md for the control API (``/_rig/...``).
"""

from __future__ import annotations

import argparse
import datetime as dt
import http.client
import json
import math
import os
import re
import secrets
import socket
import sys
import tempfile
import threading
import time
import urllib.parse
import uuid
import xml.etree.ElementTree as ET
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

STATE_CODES = {"pending": 0, "running": 16, "shutting-down": 32, "terminated": 48, "stopping": 64, "stopped": 80}
KEY_PREFIXES = ("ssh-ed25519", "ssh-rsa", "ecdsa-sha2-")
INSTANCE_DEFAULTS: dict[str, Any] = {
    "region": "eu-west-1",
    "ssh_port": None,
    "keys_dir": None,
    "pending_seconds": 0.0,
    "online_delay": 0.0,
    "ssm": None,
    "flap": 0,
    "hold": None,
}
# hold: "pending" shows a running instance as pending, "offline" keeps its agent from being
# Online, until the test releases it (hold None); see docs/test-rig.md.
HOLDS = (None, "pending", "offline")
CREDENTIAL_RE = re.compile(r"Credential=([^/,\s]+)/[^/]+/([^/]+)/([^/]+)/aws4_request")
HOP_HEADERS = {
    "connection",
    "keep-alive",
    "transfer-encoding",
    "content-length",
    "te",
    "upgrade",
    "proxy-connection",
    "trailer",
}


class AwsError(Exception):
    """An AWS-style error answer."""

    def __init__(self, code: str, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.code, self.message, self.status = code, message, status


class State:
    """Everything the endpoint remembers; guarded by ``lock``."""

    def __init__(self, moto_url: str, state_dir: str) -> None:
        self.lock = threading.RLock()
        self.moto = urllib.parse.urlsplit(moto_url)
        self.state_dir = state_dir
        self.log: list[dict[str, Any]] = []
        self.instances: dict[str, dict[str, Any]] = {}
        self.stopping: dict[str, float] = {}  # instance id -> overlay end time (inf: until released)
        # session id -> {"token", "target", "redeemed", "terminated"}: a token is redeemed once.
        self.sessions: dict[str, dict[str, Any]] = {}
        self.faults: dict[str, list[dict[str, Any]]] = {}
        # key_ttl: seconds a pushed key stays valid; latency: seconds every AWS request waits
        # before it is answered (real AWS calls cost a network round trip).
        self.knobs: dict[str, Any] = {"key_ttl": 60.0, "latency": 0.0}
        # A port bound but never listening: connecting to it is refused.
        self.dead_sock = socket.socket()
        self.dead_sock.bind(("127.0.0.1", 0))
        self.dead_port = self.dead_sock.getsockname()[1]

    # --- moto access -------------------------------------------------------
    def moto_request(
        self, method: str, path: str, headers: dict[str, str], body: bytes
    ) -> tuple[int, list[tuple[str, str]], bytes]:
        conn = http.client.HTTPConnection(self.moto.hostname, self.moto.port, timeout=60)
        try:
            conn.request(method, path, body=body, headers=headers)
            resp = conn.getresponse()
            return resp.status, resp.getheaders(), resp.read()
        finally:
            conn.close()

    def moto_ec2(self, region: str, action: str, params: dict[str, str]) -> ET.Element:
        body = urllib.parse.urlencode({"Action": action, "Version": "2016-11-15", **params})
        headers = {
            "Authorization": "AWS4-HMAC-SHA256 Credential=testing/20240101/"
            f"{region}/ec2/aws4_request, SignedHeaders=host, Signature=0",
            "Content-Type": "application/x-www-form-urlencoded; charset=utf-8",
        }
        status, _, data = self.moto_request("POST", "/", headers, body.encode())
        root = ET.fromstring(data)
        if status >= 400:
            raise AwsError(
                _find_text(root, "Code") or "InternalError", _find_text(root, "Message") or "moto error", status
            )
        return root

    def moto_states(self, region: str, ids: list[str]) -> dict[str, str]:
        """moto's state names for instances it knows (unknown ids are left out)."""
        if not ids:
            return {}
        try:
            root = self.moto_ec2(region, "DescribeInstances", {f"InstanceId.{n}": i for n, i in enumerate(ids, 1)})
        except AwsError:  # some id unknown: ask one by one
            if len(ids) == 1:
                return {}
            return {k: v for i in ids for k, v in self.moto_states(region, [i]).items()}
        return {
            _child_text(item, "instanceId") or "": _child_text(_child(item, "instanceState"), "name") or ""
            for item in _instance_items(root)
            if _child(item, "instanceState") is not None
        }

    def moto_state(self, region: str, instance_id: str) -> str | None:
        """moto's state name for an instance, or None if moto does not know it."""
        return self.moto_states(region, [instance_id]).get(instance_id)

    def redeem(self, session_id: str, token: str) -> str | None:
        """Accept a session's token once (the plugin's data channel); the reason if refused."""
        with self.lock:
            sess = self.sessions.get(session_id)
            if sess is None or not secrets.compare_digest(sess["token"], token):
                return "unknown session or token"
            if sess["terminated"]:
                return "session terminated"
            if sess["redeemed"]:
                return "token already used"
            sess["redeemed"] = True
            return None

    # --- effective state ---------------------------------------------------
    def effective_state(self, instance_id: str, moto_state: str | None, now: float | None = None) -> str | None:
        now = time.time() if now is None else now
        with self.lock:
            if self.stopping.get(instance_id, 0) > now:
                return "stopping"
            inst = self.instances.get(instance_id)
            if moto_state != "running" or not inst:
                return moto_state
            if inst.get("hold") == "pending":
                return "pending"
            started = inst.get("started_at")
            # A release after the start ends what is left of pending_seconds.
            released = inst.get("released_at") or 0.0
            if started is not None and released < started and now < started + float(inst["pending_seconds"] or 0):
                return "pending"
            return moto_state

    def ping_status(self, instance_id: str, state: str | None, now: float) -> str | None:
        inst = self.instances[instance_id]
        if inst.get("ssm"):
            return inst["ssm"]
        reached = agent_reached(inst, now)
        if state == "running" and reached:
            return "Online"
        if inst.get("was_online") or reached:
            return "ConnectionLost"
        return None


def agent_reached(inst: dict[str, Any], now: float) -> bool:
    """Whether the agent has come Online since the last start (or release): not while held."""
    started = inst.get("started_at")
    if inst.get("hold") or started is None:
        return False
    base = max(started, inst.get("released_at") or 0.0)
    return now >= base + float(inst["online_delay"] or 0)


def mark_started(inst: dict[str, Any], now: float) -> None:
    """The instance (re)starts now: remember whether it had been Online before."""
    inst["was_online"] = inst["was_online"] or agent_reached(inst, now)
    inst["started_at"] = now


def update_instance(inst: dict[str, Any], data: dict[str, Any], existed: bool, now: float) -> None:
    """Apply a partial knob update; holding remembers Online, releasing starts the clock."""
    if "hold" in data:
        if data["hold"] not in HOLDS:
            raise ValueError(f"hold must be one of {HOLDS}, not {data['hold']!r}")
        if data["hold"] and not inst.get("hold") and existed:
            inst["was_online"] = inst["was_online"] or agent_reached(inst, now)
        if data["hold"] is None and inst.get("hold"):
            inst["released_at"] = now
    if data.get("started_now"):  # e.g. after a start straight through moto
        mark_started(inst, now)
    inst.update({k: v for k, v in data.items() if k not in ("instance_id", "state", "started_now")})


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def _child(elem: ET.Element | None, name: str) -> ET.Element | None:
    if elem is None:
        return None
    for c in elem:
        if _local(c.tag) == name:
            return c
    return None


def _child_text(elem: ET.Element | None, name: str) -> str | None:
    c = _child(elem, name)
    return None if c is None else (c.text or "")


def _find_text(root: ET.Element, name: str) -> str | None:
    for e in root.iter():
        if _local(e.tag) == name:
            return e.text
    return None


def _instance_items(root: ET.Element) -> list[ET.Element]:
    return [e for e in root.iter() if _child(e, "instanceId") is not None]


def _set_state(state_elem: ET.Element | None, name: str) -> None:
    if state_elem is None:
        return
    code, nm = _child(state_elem, "code"), _child(state_elem, "name")
    if code is not None:
        code.text = str(STATE_CODES.get(name, 0))
    if nm is not None:
        nm.text = name


def _serialize(root: ET.Element) -> bytes:
    m = re.match(r"\{([^}]*)\}", root.tag)
    if m:
        ET.register_namespace("", m.group(1))
    return b'<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root)


def ec2_error_body(code: str, message: str) -> bytes:
    def esc(s: str) -> str:
        return s.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")

    return (
        f'<?xml version="1.0" encoding="UTF-8"?>\n<Response><Errors><Error><Code>{esc(code)}'
        f"</Code><Message>{esc(message)}</Message></Error></Errors>"
        f"<RequestID>{uuid.uuid4()}</RequestID></Response>"
    ).encode()


def _query_instance_ids(form: dict[str, list[str]]) -> list[str]:
    ids = []
    for k, vs in form.items():
        if k == "InstanceId" or k.startswith("InstanceId."):
            ids.extend(vs)
        elif re.fullmatch(r"Filter\.\d+\.Value\.\d+", k):
            ids.extend(v for v in vs if v.startswith("i-"))
    return ids


def _split_state_filter(form: dict[str, list[str]], body: bytes) -> tuple[bytes, set[str] | None]:
    """Take instance-state-name filters out of an EC2 query; renumber the others."""
    filters: dict[int, dict[str, Any]] = {}
    rest: list[tuple[str, str]] = []
    for k, vs in form.items():
        m = re.fullmatch(r"Filter\.(\d+)\.(Name|Value\.\d+)", k)
        if not m:
            rest.extend((k, v) for v in vs)
            continue
        f = filters.setdefault(int(m.group(1)), {"Name": "", "Values": []})
        if m.group(2) == "Name":
            f["Name"] = vs[0]
        else:
            f["Values"].extend(vs)
    states: set[str] | None = None
    n = 0
    for _, f in sorted(filters.items()):
        if f["Name"] == "instance-state-name":
            states = set(f["Values"]) if states is None else states & set(f["Values"])
            continue
        n += 1
        rest.append((f"Filter.{n}.Name", f["Name"]))
        rest.extend((f"Filter.{n}.Value.{j}", v) for j, v in enumerate(f["Values"], 1))
    if states is None:
        return body, None
    return urllib.parse.urlencode(rest).encode(), states


def _filter_states(root: ET.Element, states: set[str]) -> None:
    """Drop instances (and then empty reservations) whose state is not in ``states``."""
    for iset in [e for e in root.iter() if _local(e.tag) == "instancesSet"]:
        for item in list(iset):
            if _child_text(_child(item, "instanceState"), "name") not in states:
                iset.remove(item)
    for rset in [e for e in root.iter() if _local(e.tag) == "reservationSet"]:
        for res in list(rset):
            iset = _child(res, "instancesSet")
            if iset is None or len(iset) == 0:
                rset.remove(res)


def _json_instance_ids(body: Any) -> list[str]:
    if not isinstance(body, dict):
        return []
    ids: list[str] = []
    for key in ("InstanceId", "Target"):
        if isinstance(body.get(key), str):
            ids.append(body[key])
    if isinstance(body.get("InstanceIds"), list):
        ids.extend(str(x) for x in body["InstanceIds"])
    for f in body.get("Filters") or []:
        if isinstance(f, dict):
            ids.extend(str(v) for v in f.get("Values") or [])
    for f in body.get("InstanceInformationFilterList") or []:
        if isinstance(f, dict):
            ids.extend(str(v) for v in f.get("valueSet") or [])
    return ids


class Handler(BaseHTTPRequestHandler):
    """One HTTP request: control API, handled AWS actions, or forward to moto."""

    protocol_version = "HTTP/1.1"
    server_version = "rig-endpoint"
    st: State  # set on the class at startup

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - quiet
        pass

    # --- plumbing ----------------------------------------------------------
    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            out = b""
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return out
                out += self.rfile.read(size)
                self.rfile.readline()
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n) if n else b""

    def _send(
        self, status: int, body: bytes, ctype: str = "application/json", headers: list[tuple[str, str]] | None = None
    ) -> None:
        self.send_response(status)
        sent = set()
        for k, v in headers or []:
            if k.lower() not in HOP_HEADERS:
                self.send_header(k, v)
                sent.add(k.lower())
        if "content-type" not in sent:
            self.send_header("Content-Type", ctype)
        if "x-amzn-requestid" not in sent:
            self.send_header("x-amzn-RequestId", str(uuid.uuid4()))
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, status: int, obj: Any, ctype: str = "application/x-amz-json-1.1") -> None:
        self._send(status, json.dumps(obj).encode(), ctype)

    def do_GET(self) -> None:
        self._dispatch()

    do_POST = do_PUT = do_DELETE = do_HEAD = do_PATCH = do_GET

    def _dispatch(self) -> None:
        body = self._body()
        path = urllib.parse.urlsplit(self.path).path
        if path.startswith("/_rig/"):
            try:
                self._control(path, json.loads(body or b"{}"))
            except Exception as e:  # report control errors to the rig
                self._json(500, {"error": repr(e)}, "application/json")
            return
        self._aws(body)

    # --- control API -------------------------------------------------------
    def _control(self, path: str, data: dict[str, Any]) -> None:
        st = self.st
        with st.lock:
            if path == "/_rig/log" and self.command == "GET":
                return self._json(200, st.log, "application/json")
            if path == "/_rig/log/clear":
                st.log.clear()
            elif path == "/_rig/instance":
                iid = data["instance_id"]
                inst = st.instances.get(iid)
                existed = inst is not None
                if inst is None:
                    inst = st.instances[iid] = dict(
                        INSTANCE_DEFAULTS, started_at=None, released_at=None, was_online=False
                    )
                    state = data.get("state", "running")
                    if state == "running":
                        inst["started_at"] = time.time()
                    elif state == "stopped":
                        inst["was_online"] = True  # it ran before it was stopped
                update_instance(inst, data, existed, time.time())
            elif path == "/_rig/release":
                iid = data["instance_id"]
                st.stopping.pop(iid, None)
                if iid in st.instances:  # also ends what is left of pending_seconds
                    update_instance(st.instances[iid], {"hold": None}, True, time.time())
                    st.instances[iid]["released_at"] = time.time()
            elif path == "/_rig/redeem":
                refused = st.redeem(str(data.get("session_id") or ""), str(data.get("token") or ""))
                if refused:
                    return self._json(403, {"error": refused}, "application/json")
            elif path == "/_rig/sessions" and self.command == "GET":
                return self._json(
                    200,
                    {sid: {k: v for k, v in s.items() if k != "token"} for sid, s in st.sessions.items()},
                    "application/json",
                )
            elif path == "/_rig/stopping":
                iid = data["instance_id"]
                inst = st.instances.get(iid, {})
                region = data.get("region") or inst.get("region") or "eu-west-1"
                st.moto_ec2(region, "StopInstances", {"InstanceId.1": iid})
                seconds = data.get("seconds")
                st.stopping[iid] = math.inf if seconds is None else time.time() + float(seconds)
                if inst:
                    inst["was_online"] = inst["was_online"] or st.ping_status(iid, "running", time.time()) == "Online"
            elif path == "/_rig/fault":
                st.faults.setdefault(data["action"], []).append(
                    {
                        "code": data.get("code") or "",
                        "message": data.get("message") or "",
                        "status": int(data.get("status") or 400),
                        "count": int(data.get("count", 1)),
                        "delay": float(data.get("delay") or 0),
                    }
                )
            elif path == "/_rig/fault/clear":
                st.faults.clear()
            elif path == "/_rig/knobs":
                st.knobs.update(data)
            elif path == "/_rig/state":
                return self._json(
                    200, {"instances": st.instances, "knobs": st.knobs, "stopping": st.stopping}, "application/json"
                )
            else:
                return self._json(404, {"error": f"unknown control path {path}"}, "application/json")
        self._json(200, {"ok": True}, "application/json")

    # --- AWS requests ------------------------------------------------------
    def _aws(self, body: bytes) -> None:
        st = self.st
        m = CREDENTIAL_RE.search(self.headers.get("Authorization", ""))
        access_key, region, service = m.groups() if m else ("", "us-east-1", "")
        target = self.headers.get("X-Amz-Target", "")
        form: dict[str, list[str]] = {}
        payload: Any = None
        if target:
            action = target.rsplit(".", 1)[-1]
            try:
                payload = json.loads(body or b"{}")
            except ValueError:
                payload = {}
            ids = _json_instance_ids(payload)
        else:
            ctype = self.headers.get("Content-Type", "")
            raw = body.decode("utf-8", "replace") if "form-urlencoded" in ctype else ""
            raw = raw or urllib.parse.urlsplit(self.path).query
            form = urllib.parse.parse_qs(raw, keep_blank_values=True)
            action = (form.get("Action") or [""])[0]
            ids = _query_instance_ids(form)
        with st.lock:
            st.log.append(
                {
                    "t": time.time(),
                    "service": service,
                    "action": action,
                    "instance_ids": ids,
                    "access_key": access_key,
                    "user_agent": self.headers.get("User-Agent", "")[:200],
                    "os_user": str(payload.get("InstanceOSUser", "")) if isinstance(payload, dict) else "",
                }
            )
        xml_errors = not target and "form-urlencoded" in self.headers.get("Content-Type", "")
        latency = float(st.knobs.get("latency") or 0)
        if latency > 0:
            time.sleep(latency)
        try:
            self._maybe_fault(action)
            handler = getattr(self, f"_h_{service.replace('-', '_')}_{action}", None)
            if handler is not None:
                return handler(region, payload if target else form, access_key)
            self._forward(body, region, action, form)
        except AwsError as e:
            if xml_errors:
                self._send(e.status, ec2_error_body(e.code, e.message), "text/xml")
            else:
                self._json(e.status, {"__type": e.code, "message": e.message})

    def _maybe_fault(self, action: str) -> None:
        with self.st.lock:
            queue = self.st.faults.get(action) or []
            fault = queue[0] if queue else None
            if fault:
                fault["count"] -= 1
                if fault["count"] <= 0:
                    queue.pop(0)
        if fault:
            if fault["delay"]:
                time.sleep(fault["delay"])
            if fault["code"]:
                raise AwsError(fault["code"], fault["message"] or fault["code"], fault["status"])

    def _forward(self, body: bytes, region: str, action: str, form: dict[str, list[str]]) -> None:
        st = self.st
        if action == "StartInstances":
            now = time.time()
            for iid in _query_instance_ids(form):
                # moto would restart a terminated instance; AWS refuses, as it
                # does while the instance is still stopping.
                if st.stopping.get(iid, 0) > now or st.moto_state(region, iid) in ("terminated", "shutting-down"):
                    raise AwsError(
                        "IncorrectInstanceState",
                        f"The instance '{iid}' is not in a state from which it can be started.",
                    )
        states: set[str] | None = None
        if action == "DescribeInstances" and self.command == "POST":
            # moto would filter on its own state; filter on the effective one instead.
            body, states = _split_state_filter(form, body)
        headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_HEADERS}
        status, rheaders, data = st.moto_request(self.command, self.path, headers, body)
        if status < 300 and action in ("DescribeInstances", "DescribeInstanceStatus", "StartInstances"):
            data = self._rewrite(data, action, states)
        self._send(status, data, headers=rheaders)

    def _rewrite(self, data: bytes, action: str, states: set[str] | None) -> bytes:
        """Show effective states in moto's XML (and apply a held-back state filter)."""
        st = self.st
        try:
            root = ET.fromstring(data)
        except ET.ParseError:
            return data
        now = time.time()
        for item in _instance_items(root):
            iid = _child_text(item, "instanceId") or ""
            if action == "StartInstances":
                prev = _child_text(_child(item, "previousState"), "name")
                with st.lock:
                    inst = st.instances.get(iid)
                    if inst is not None and prev != "running":
                        mark_started(inst, now)
                if inst is not None:
                    cur = _child(item, "currentState")
                    moto_name = _child_text(cur, "name")
                    moto_name = "running" if moto_name == "pending" else moto_name
                    _set_state(cur, st.effective_state(iid, moto_name, now) or "pending")
            else:
                elem = _child(item, "instanceState")
                eff = st.effective_state(iid, _child_text(elem, "name"), now)
                if eff:
                    _set_state(elem, eff)
        if states is not None:
            _filter_states(root, states)
        return _serialize(root)

    # --- SSM ---------------------------------------------------------------
    def _h_ssm_DescribeInstanceInformation(self, region: str, body: dict, _ak: str) -> None:
        st = self.st
        wanted: set[str] | None = None
        for f in body.get("Filters") or []:
            if f.get("Key") == "InstanceIds":
                wanted = set(f.get("Values") or [])
        for f in body.get("InstanceInformationFilterList") or []:
            if f.get("key") == "InstanceIds" or f.get("key") == "instanceIds":
                wanted = set(f.get("valueSet") or [])
        with st.lock:
            candidates = [
                (iid, dict(i))
                for iid, i in st.instances.items()
                if i["region"] == region and (wanted is None or iid in wanted)
            ]
        out = []
        moto = st.moto_states(region, [iid for iid, _ in candidates])
        for iid, _inst in candidates:
            now = time.time()
            state = st.effective_state(iid, moto.get(iid), now)
            with st.lock:
                ping = st.ping_status(iid, state, now)
            if ping is None:
                continue
            out.append(
                {
                    "InstanceId": iid,
                    "PingStatus": ping,
                    "LastPingDateTime": now,
                    "AgentVersion": "3.3.0.0",
                    "IsLatestVersion": True,
                    "PlatformType": "Linux",
                    "PlatformName": "Amazon Linux",
                    "PlatformVersion": "2023",
                    "ResourceType": "EC2Instance",
                    "ComputerName": "ip-10-0-0-1",
                    "IPAddress": "10.0.0.1",
                }
            )
        self._json(200, {"InstanceInformationList": out})

    def _h_ssm_StartSession(self, region: str, body: dict, access_key: str) -> None:
        st = self.st
        target = str(body.get("Target") or "")
        not_connected = AwsError("TargetNotConnected", f"{target} is not connected.")
        with st.lock:
            inst = st.instances.get(target)
            if inst is None or inst["region"] != region:
                raise not_connected
        now = time.time()
        state = st.effective_state(target, st.moto_state(region, target), now)
        with st.lock:
            if st.ping_status(target, state, now) != "Online":
                raise not_connected
            if int(inst.get("flap") or 0) > 0:
                inst["flap"] = int(inst["flap"]) - 1
                raise not_connected
        doc = body.get("DocumentName")
        if doc != "AWS-StartSSHSession":
            raise AwsError("InvalidDocument", f"Document {doc} does not exist or is not supported by the rig.")
        port = str(((body.get("Parameters") or {}).get("portNumber") or ["22"])[0])
        mapped = inst["ssh_port"] if port == "22" and inst.get("ssh_port") else st.dead_port
        sid = f"{access_key or 'rig'}-{secrets.token_hex(8)}"
        token = secrets.token_urlsafe(32)
        with st.lock:
            st.sessions[sid] = {"token": token, "target": target, "redeemed": False, "terminated": False}
        # rig_redeem: the port the stand-in plugin redeems the token at (POST /_rig/redeem).
        query = f"role=publish_subscribe&rig_redeem={self.server.server_address[1]}"
        self._json(
            200,
            {
                "SessionId": sid,
                "TokenValue": token,
                "StreamUrl": f"wss://127.0.0.1:{mapped}/v1/data-channel/{sid}?{query}",
            },
        )

    def _h_ssm_TerminateSession(self, _region: str, body: dict, _ak: str) -> None:
        sid = str(body.get("SessionId", ""))
        with self.st.lock:
            if sid in self.st.sessions:
                self.st.sessions[sid]["terminated"] = True
        self._json(200, {"SessionId": sid})

    # --- EC2 Instance Connect ---------------------------------------------
    def _h_ec2_instance_connect_SendSSHPublicKey(self, region: str, body: dict, _ak: str) -> None:
        st = self.st
        iid = str(body.get("InstanceId") or "")
        user = str(body.get("InstanceOSUser") or "")
        key = str(body.get("SSHPublicKey") or "").strip()
        moto = st.moto_state(region, iid) if iid else None
        if moto is None:
            raise AwsError("EC2InstanceNotFoundException", f"Instance {iid} not found.")
        if st.effective_state(iid, moto) != "running":
            raise AwsError(
                "EC2InstanceStateInvalidException", f"Instance {iid} is not in a valid state for this operation."
            )
        if not key.startswith(KEY_PREFIXES) or "\n" in key:
            raise AwsError("InvalidArgsException", "The public key is not a valid SSH key.")
        if not re.fullmatch(r"[a-z_][a-z0-9_.-]{0,31}", user):
            raise AwsError("InvalidArgsException", f"Invalid InstanceOSUser: {user}")
        with st.lock:
            inst = st.instances.get(iid)
            if inst and inst.get("keys_dir"):
                _install_key(inst["keys_dir"], user, key, float(st.knobs["key_ttl"]))
        self._json(200, {"RequestId": str(uuid.uuid4()), "Success": True})


def _install_key(keys_dir: str, user: str, key: str, ttl: float) -> None:
    """Rewrite ``keys_dir/user`` atomically: unexpired keys plus ``key`` for ``ttl`` s."""
    now = dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)
    path = os.path.join(keys_dir, user)
    keep = []
    try:
        with open(path) as f:
            for line in f:
                m = re.match(r'expiry-time="(\d{14})Z"\s', line)
                if m and dt.datetime.strptime(m.group(1), "%Y%m%d%H%M%S") > now:
                    keep.append(line.rstrip("\n"))
    except FileNotFoundError:
        pass
    expiry = now + dt.timedelta(seconds=ttl)
    keep.append(f'expiry-time="{expiry:%Y%m%d%H%M%S}Z" {key}')
    fd, tmp = tempfile.mkstemp(dir=keys_dir, prefix=f".{user}.")
    with os.fdopen(fd, "w") as f:
        f.write("\n".join(keep) + "\n")
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--moto-url", required=True)
    ap.add_argument("--state-dir", required=True)
    args = ap.parse_args(argv)
    Handler.st = State(args.moto_url, args.state_dir)
    server = ThreadingHTTPServer(("127.0.0.1", args.port), Handler)
    server.daemon_threads = True
    print(f"rig endpoint on 127.0.0.1:{args.port} -> {args.moto_url}", file=sys.stderr, flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()

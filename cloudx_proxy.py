#!/usr/bin/env python3
"""cloudx-proxy: reach EC2 instances over SSH through AWS Systems Manager.

A single-file, standard-library-only drop-in for the PyPI ``cloudx-proxy``.
Put it in an SSH ``ProxyCommand``::

    ProxyCommand python3 /path/cloudx_proxy.pyz connect %h %p --profile cloudX

``connect`` finds the instance, starts it when it is stopped, waits for SSM,
pushes the public key with EC2 Instance Connect and hands stdin/stdout to
``aws ssm start-session``. AWS is reached only through the ``aws`` CLI.
stdout is the SSH byte stream: every message goes to stderr.
"""

from __future__ import annotations

__version__ = "0.1.0"

# ---------------------------------------------------------------------------
# Imports that connect needs (others are imported where they are used)
# ---------------------------------------------------------------------------
import json
import os
import re
import sys
import time

TYPE_CHECKING = False
if TYPE_CHECKING:  # names for annotations only; typing costs start-up time
    import argparse
    import subprocess
    from collections.abc import Callable, Mapping
    from typing import Any, NoReturn

# ---------------------------------------------------------------------------
# Constants
# ---------------------------------------------------------------------------
PROG = "cloudx-proxy"
EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130

DEFAULT_REGION = "eu-west-1"
DEFAULT_USER = "ec2-user"
DEFAULT_TIMEOUT = 300.0
SSM_DOCUMENT = "AWS-StartSSHSession"
# EC2 Instance Connect keeps a pushed key for 60 s; reuse a push only well
# inside that, so the SSH handshake after the session starts is covered too.
PUSH_REUSE_SECONDS = 40.0
# Re-push while waiting for SSM once the last push is this old.
PUSH_REFRESH_SECONDS = 30.0
# Another connect's "I started it" marker stops us starting again when it was
# written at most this long before we saw the instance not running.
START_MARKER_SECONDS = 10.0
# Timeouts handed to every aws call so that nothing hangs ssh forever.
AWS_CONNECT_TIMEOUT = 10
AWS_READ_TIMEOUT = 20
# Wall-clock limit for one aws process (its own retries included).
AWS_CALL_TIMEOUT = 90.0
# While waiting for SSM, look at the EC2 state about this often (a stop ends the wait; the
# key push every PUSH_REFRESH_SECONDS notices one too).
STATE_RECHECK_SECONDS = 20.0
# The aws CLI's own retries (throttling, 5xx, timeouts), unless the user chose.
AWS_RETRY_ENV = {"AWS_RETRY_MODE": "standard", "AWS_MAX_ATTEMPTS": "5"}

INSTANCE_ID_RE = re.compile(r"i-(?:[0-9a-f]{8}|[0-9a-f]{17})")
# Profile, key and aws-env names: no whitespace, quotes, shell metacharacters
# or path separators, and no leading '-' (it would read as an option).
NAME_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.@+=,:-]{0,127}")
REGION_RE = re.compile(r"[a-z]{2}(?:-[a-z]+)+-[0-9]{1,2}")
OS_USER_RE = re.compile(r"[a-z_][a-z0-9_.-]{0,31}")
PUBKEY_RE = re.compile(r"(ssh-ed25519|ssh-rsa|ecdsa-sha2-nistp(?:256|384|521))\s+([A-Za-z0-9+/]+={0,3})(?:\s.*)?")
AWS_ERROR_RE = re.compile(
    r"An error occurred \(([\w.]+)\) when calling the (\w+) operation"
    r"(?: \(reached max retries: \d+\))?: ?(.*)"
)

# The IAM permission each operation needs, for "access denied" hints.
PERMISSIONS = {
    "DescribeInstances": "ec2:DescribeInstances",
    "StartInstances": "ec2:StartInstances",
    "DescribeInstanceInformation": "ssm:DescribeInstanceInformation",
    "StartSession": "ssm:StartSession",
    "SendSSHPublicKey": "ec2-instance-connect:SendSSHPublicKey",
    "GetCallerIdentity": "sts:GetCallerIdentity",
}

AWS_INSTALL_HINT = "install AWS CLI v2: https://docs.aws.amazon.com/cli/latest/userguide/getting-started-install.html"
PLUGIN_INSTALL_HINT = (
    "install the Session Manager plugin: https://docs.aws.amazon.com/systems-manager/latest/"
    "userguide/session-manager-working-with-install-plugin.html"
)
SSM_AGENT_HINT = "check that the SSM agent runs on the instance and its instance role allows SSM"
VSCODE_TIMEOUT_HINT = (
    "the instance may still be starting: connect again; in VS Code allow for it with"
    ' "remote.SSH.connectTimeout": 90 (setup sets it; doctor checks it)'
)


def _standard_dirs(program: str) -> list[str]:
    """Where installers put ``aws`` / ``session-manager-plugin`` besides PATH."""
    home = os.path.expanduser("~")
    if sys.platform == "win32":
        pf = [os.environ.get(v) for v in ("ProgramFiles", "ProgramFiles(x86)", "ProgramW6432")]
        roots = [p for p in pf if p] or [r"C:\Program Files"]
        sub = r"Amazon\AWSCLIV2" if program == "aws" else r"Amazon\SessionManagerPlugin\bin"
        local = os.environ.get("LOCALAPPDATA", "")
        extra = [os.path.join(local, "Programs", "Python", "Scripts")] if local else []
        return [os.path.join(r, sub) for r in roots] + extra
    dirs = ["/usr/local/bin", "/opt/homebrew/bin", "/usr/bin", "/snap/bin", os.path.join(home, ".local", "bin")]
    if program == "aws":
        dirs += ["/usr/local/aws-cli/v2/current/bin", "/opt/local/bin"]
    else:
        dirs += ["/usr/local/sessionmanagerplugin/bin", "/opt/homebrew/opt/session-manager-plugin/bin"]
    return dirs


# ---------------------------------------------------------------------------
# The one error type
# ---------------------------------------------------------------------------
class CloudxError(Exception):
    """A failure the user can act on: one line, an optional hint, an exit code."""

    def __init__(self, message: str, hint: str | None = None, exit_code: int = EXIT_ERROR, code: str | None = None):
        super().__init__(message)
        self.message, self.hint, self.exit_code = message, hint, exit_code
        self.code = code  # the AWS error code, when the failure came from AWS


def usage_error(message: str, hint: str | None = None) -> CloudxError:
    """A CloudxError for bad input (exit 2)."""
    return CloudxError(message, hint, EXIT_USAGE)


# ---------------------------------------------------------------------------
# Output helpers: everything human-readable goes to stderr
# ---------------------------------------------------------------------------
_VERBOSE = False
_COLOR = False  # set by main(): a terminal, NO_COLOR unset and no --no-color
COLORS = {"error": "31", "FAIL": "31", "warn": "33", "hint": "33", "ok": "32"}


def paint(word: str, text: str | None = None) -> str:
    """text (default: word) in the color for word, when color is on."""
    text = word if text is None else text
    return f"\033[{COLORS[word]}m{text}\033[0m" if _COLOR and word in COLORS else text


def log(msg: str) -> None:
    """Print a progress line on stderr (best effort: a closed terminal must not end a connect)."""
    try:
        print(f"{PROG}: {msg}", file=sys.stderr, flush=True)
    except (OSError, ValueError):
        pass


def debug(msg: str) -> None:
    """Print a debug line on stderr when --verbose is on."""
    if _VERBOSE:
        log(f"debug: {msg}")


def quote_argv(argv: list[str]) -> str:
    """Render an argv the way a POSIX shell would need it typed."""
    import shlex

    return " ".join(shlex.quote(a) for a in argv)


def render_error(e: CloudxError) -> str:
    """One line for a failure: the message and, when there is one, the fix."""
    message = " ".join(e.message.split())
    hint = f" ({paint('hint')}: {' '.join(e.hint.split())})" if e.hint else ""
    return f"{PROG}: {paint('error')}: {message}{hint}"


# ---------------------------------------------------------------------------
# Pure helpers: validation, parsing, rendering
# ---------------------------------------------------------------------------
def validate_instance_id(value: str) -> str:
    """Return the instance id in lower case (as EC2 spells it), or raise a usage error."""
    lowered = (value or "").lower() if (value or "").isascii() else ""
    if not INSTANCE_ID_RE.fullmatch(lowered):
        raise usage_error(
            f"invalid instance id {value!r}: expected 'i-' and 8 or 17 hex digits",
            "example: i-0123456789abcdef0",
        )
    return lowered


def is_instance_id(value: str) -> bool:
    """True for an EC2 instance id in any case ('I-0ABC...' too)."""
    return value.isascii() and INSTANCE_ID_RE.fullmatch(value.lower()) is not None


def validate_port(value: str | int) -> int:
    """Return the port as an int in 1..65535, or raise a usage error."""
    text = str(value)
    if not re.fullmatch(r"[0-9]{1,5}", text) or not 1 <= int(text) <= 65535:
        raise usage_error(f"invalid port {value!r}: expected a number from 1 to 65535")
    return int(text)


def validate_name(kind: str, value: str) -> str:
    """Check a profile, key or aws-env name: no whitespace, quotes, metacharacters or paths."""
    if not NAME_RE.fullmatch(value or "") or ".." in value:
        raise usage_error(
            f"invalid {kind} {value!r}: use letters, digits and . _ - @ + = , : "
            "(no spaces, quotes, shell metacharacters, path separators or '..')"
        )
    return value


def validate_region(value: str) -> str:
    """Check an AWS region name such as eu-west-1."""
    if not REGION_RE.fullmatch(value or ""):
        raise usage_error(f"invalid region {value!r}: expected a region name such as eu-west-1")
    return value


def validate_os_user(value: str) -> str:
    """Check the OS user that EC2 Instance Connect authorizes the key for."""
    if not OS_USER_RE.fullmatch(value or ""):
        raise usage_error(f"invalid user {value!r}: expected a Linux user name such as ec2-user")
    return value


def validate_timeout(value: str | float) -> float:
    """Return the start-up timeout in seconds (1 to 3600)."""
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        seconds = -1.0
    if not 1 <= seconds <= 3600:
        raise usage_error(f"invalid timeout {value!r}: expected seconds from 1 to 3600")
    return seconds


def validate_path(kind: str, value: str) -> str:
    """Reject paths that no file can have or that would break a config line."""
    if not value or any(c in value for c in "\0\n\r"):
        raise usage_error(f"invalid {kind} {value!r}: empty or contains a control character")
    return value


def parse_public_key(text: str, path: str) -> str:
    """Return 'TYPE BASE64' from a .pub file's text, or raise."""
    line = text.strip()
    match = PUBKEY_RE.fullmatch(line) if "\n" not in line else None
    if not match:
        raise CloudxError(
            f"{path} is not an OpenSSH public key (ssh-ed25519, ssh-rsa or ecdsa)",
            f"regenerate it: ssh-keygen -y -f {path[:-4] if path.endswith('.pub') else path} > {path}",
        )
    return f"{match.group(1)} {match.group(2)}"


def default_profile_and_key(home: str) -> tuple[str, str, str]:
    """The reference tool's defaults: (profile, key name, ssh dir).

    ~/.ssh/cloudX if it exists, else ~/.ssh/vscode if that exists, else cloudX.
    """
    cloudx = os.path.join(home, ".ssh", "cloudX")
    vscode = os.path.join(home, ".ssh", "vscode")
    if os.path.exists(cloudx):
        return "cloudX", "cloudX", cloudx
    if os.path.exists(vscode):
        return "vscode", "vscode", vscode
    return "cloudX", "cloudX", cloudx


def profile_section(config: dict[str, dict[str, str]], profile: str) -> dict[str, str] | None:
    """The ``[profile P]`` (or ``[default]``) section of a parsed AWS config file."""
    names = ["default", "profile default"] if profile == "default" else [f"profile {profile}"]
    for name in names:
        if name in config:
            return config[name]
    return None


def may_prompt(config: dict[str, dict[str, str]], credentials: dict[str, dict[str, str]], profile: str) -> bool:
    """True when aws may ask on the terminal for this profile: an MFA code (mfa_serial) or a
    credential_process, in the profile or a source_profile it names."""
    seen: set[str] = set()
    while profile and profile not in seen:
        seen.add(profile)
        section = {**credentials.get(profile, {}), **(profile_section(config, profile) or {})}
        if section.keys() & {"mfa_serial", "credential_process"}:
            return True
        profile = section.get("source_profile", "")
    return False


def resolve_region(arg: str | None, environ: Mapping[str, str], section: dict[str, str] | None) -> tuple[str, str]:
    """Region and where it came from: --region, env, the profile, else eu-west-1."""
    if arg:
        return arg, "--region"
    for var in ("AWS_REGION", "AWS_DEFAULT_REGION"):
        if environ.get(var):
            return environ[var], var
    if section and section.get("region"):
        return section["region"], "profile"
    return DEFAULT_REGION, "default"


def sso_cache_file(config: dict[str, dict[str, str]], section: dict[str, str]) -> str | None:
    """Name of the SSO token cache file the aws CLI would use for a profile, if SSO."""
    import hashlib

    session = section.get("sso_session")
    if session:
        key = session
    elif section.get("sso_start_url"):
        key = section["sso_start_url"]
    else:
        return None
    return hashlib.sha1(key.encode("utf-8")).hexdigest() + ".json"


def parse_aws_time(text: str) -> float | None:
    """Parse an SSO cache timestamp ('2026-01-01T10:00:00Z' or '...UTC') to epoch."""
    import calendar

    m = re.match(r"(\d{4})-(\d\d)-(\d\d)T(\d\d):(\d\d):(\d\d)", text or "")
    if not m:
        return None
    return float(calendar.timegm(tuple(int(g) for g in m.groups()) + (0, 0, 0)))


def sso_token_expired(token: dict[str, Any] | None, now: float) -> bool:
    """True when an SSO login must be renewed: the token has expired and cannot be refreshed."""
    if not token:
        return True
    expires = parse_aws_time(str(token.get("expiresAt", "")))
    if expires is not None and expires > now:
        return False
    # aws CLI v2 refreshes an expired access token itself while the client
    # registration behind the refresh token is still valid.
    registration = parse_aws_time(str(token.get("registrationExpiresAt", "")))
    return not (token.get("refreshToken") and registration is not None and registration > now)


# botocore refreshes an SSO access token this long before it expires (its advisory window is 15
# minutes), with the session's refresh token: two aws processes at once may both try.
SSO_REFRESH_WINDOW = 16 * 60.0


def sso_refresh_due(token: dict[str, Any] | None, now: float) -> bool:
    """True when an aws call may refresh this SSO token (it has a refresh token and expires soon)."""
    if not token or not token.get("refreshToken"):
        return False
    expires = parse_aws_time(str(token.get("expiresAt", "")))
    return expires is None or expires - now < SSO_REFRESH_WINDOW


def classify_aws_error(
    stderr: str, operation: str, profile: str, region: str, instance_id: str | None = None
) -> CloudxError:
    """Turn the aws CLI's error output into one line with a fix."""
    text = stderr.strip()
    match = AWS_ERROR_RE.search(text)
    code = match.group(1) if match else None
    op = match.group(2) if match else operation
    detail = match.group(3).strip() if match else (text.splitlines()[-1].strip() if text else "no error output")
    login = f"aws sso login --profile {profile}"
    what = f"instance {instance_id}" if instance_id else "the instance"
    if "could not be found" in text and "profile" in text:
        return CloudxError(
            f"AWS profile '{profile}' not found", f"aws configure --profile {profile}", code="ProfileNotFound"
        )
    if "Unable to locate credentials" in text or "NoCredentialsError" in text:
        return CloudxError(
            f"no AWS credentials for profile '{profile}'", f"aws configure --profile {profile}", code="NoCredentials"
        )
    sso_markers = ("Token has expired", "SSO session", "UnauthorizedSSOToken", "Error loading SSO Token", "sso login")
    if any(m in text for m in sso_markers):
        return CloudxError(f"the AWS SSO session of profile '{profile}' has expired", login, code=code or "SSOExpired")
    if code in ("ExpiredToken", "ExpiredTokenException", "RequestExpired"):
        return CloudxError(
            f"the AWS credentials of profile '{profile}' have expired",
            f"{login} (SSO), or refresh the temporary credentials",
            code=code,
        )
    if code in ("InvalidClientTokenId", "UnrecognizedClientException", "AuthFailure", "SignatureDoesNotMatch"):
        return CloudxError(
            f"AWS rejected the credentials of profile '{profile}' ({code})",
            f"check them with: aws sts get-caller-identity --profile {profile}",
            code=code,
        )
    if code and ("AccessDenied" in code or code == "UnauthorizedOperation"):
        perm = PERMISSIONS.get(op, op)
        return CloudxError(
            f"access denied: profile '{profile}' lacks permission {perm}",
            "ask your administrator for the cloudX user policy (see README: IAM permissions)",
            code=code,
        )
    if code in ("InvalidInstanceID.NotFound", "InvalidInstanceID.Malformed", "EC2InstanceNotFoundException"):
        return CloudxError(
            f"{what} not found in region {region}",
            "check the instance id, and the region (--region or the profile's region)",
            code=code,
        )
    if code in ("ThrottlingException", "RequestLimitExceeded", "Throttling", "TooManyRequestsException"):
        return CloudxError(f"AWS throttled {op} after retries: {detail}", "wait a moment and connect again", code=code)
    if "Could not connect to the endpoint URL" in text or "Connect timeout on endpoint URL" in text:
        return CloudxError(
            f"cannot reach AWS ({op}) in region {region}",
            "check the network / proxy settings and the region",
            code="EndpointConnectionError",
        )
    if "Read timeout on endpoint URL" in text:
        return CloudxError(
            f"AWS did not answer {op} in time", "check the network and connect again", code="ReadTimeout"
        )
    if code:
        return CloudxError(f"{op} failed: {code}: {detail}", code=code)
    return CloudxError(f"aws {op} failed: {detail}")


def aws_base_args(profile: str, region: str) -> list[str]:
    """Options every aws call gets: profile, region, JSON output and network timeouts."""
    return [
        "--profile", profile,
        "--region", region,
        "--output", "json",
        "--cli-connect-timeout", str(AWS_CONNECT_TIMEOUT),
        "--cli-read-timeout", str(AWS_READ_TIMEOUT),
    ]  # fmt: skip


def build_session_argv(aws: str, instance_id: str, port: int, profile: str, region: str) -> list[str]:
    """The ``aws ssm start-session`` command that carries the SSH stream."""
    return [
        aws, "ssm", "start-session",
        "--target", instance_id,
        "--document-name", SSM_DOCUMENT,
        "--parameters", f"portNumber={port}",
        *aws_base_args(profile, region),
    ]  # fmt: skip


# What AWS returns is checked as strictly as user input: a hostile or broken
# endpoint (AWS_ENDPOINT_URL, a proxy) must not reach a config line or a log.
EC2_STATE_RE = re.compile(r"[a-z][a-z-]{0,31}")
PING_STATUS_RE = re.compile(r"[A-Za-z][A-Za-z-]{0,31}")
AWS_TEXT_MAX = 256


def aws_shape_error(what: str) -> CloudxError:
    """The one error for an AWS answer that is not what the API documents."""
    return CloudxError(
        f"unexpected answer from AWS: {what}",
        "check AWS_ENDPOINT_URL and any proxy between you and AWS",
    )


def aws_list(data: Any, key: str) -> list[Any]:
    """data[key] as a list ([] when data is null or the key is absent); another shape is an error."""
    if data is None:
        return []
    if not isinstance(data, dict):
        raise aws_shape_error(f"expected an object holding {key}, got {type(data).__name__}")
    value = data.get(key, [])
    if value is None:
        return []
    if not isinstance(value, list):
        raise aws_shape_error(f"{key} is {type(value).__name__}, not a list")
    return value


def aws_dict(value: Any, what: str) -> dict[str, Any]:
    """An object from an AWS answer; another shape is an error."""
    if not isinstance(value, dict):
        raise aws_shape_error(f"{what} is {type(value).__name__}, not an object")
    return value


def aws_value(value: Any, what: str, pattern: re.Pattern[str]) -> str:
    """A string from AWS that must match pattern in full (instance ids, states), else an error."""
    if not isinstance(value, str) or not pattern.fullmatch(value):
        shown = repr(value)[:80] if isinstance(value, str) else type(value).__name__
        raise aws_shape_error(f"invalid {what} {shown}")
    return value


def printable(text: str) -> str:
    """text safe for one output line: whitespace becomes a space, other control characters
    (terminal escapes) are shown escaped."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else " " if c.isspace() else repr(c)[1:-1] for c in text)


def aws_text(value: Any) -> str:
    """Free text from AWS (a tag, an ARN) made safe for one output line: printable, bounded."""
    text = value if isinstance(value, str) else repr(value)
    if len(text) > AWS_TEXT_MAX or not text.isprintable():
        return repr(text[:AWS_TEXT_MAX])
    return text


def parse_instances(data: Any) -> list[dict[str, Any]]:
    """The instances of a describe-instances answer (every reservation), each an object."""
    found = []
    for reservation in aws_list(data, "Reservations"):
        for inst in aws_list(aws_dict(reservation, "a reservation"), "Instances"):
            found.append(aws_dict(inst, "an instance"))
    return found


def instance_state_name(inst: dict[str, Any]) -> str:
    """The validated State.Name of one instance object; missing is an error."""
    state = aws_dict(inst.get("State"), "State of an instance")
    return aws_value(state.get("Name"), "instance state", EC2_STATE_RE)


def parse_tags(inst: dict[str, Any]) -> dict[str, str]:
    """An instance's tags as {key: value}; keys and values must be strings."""
    tags: dict[str, str] = {}
    for tag in aws_list(inst, "Tags"):
        tag = aws_dict(tag, "a tag")
        key, value = tag.get("Key"), tag.get("Value", "")
        if not isinstance(key, str) or not isinstance(value, str):
            raise aws_shape_error("a tag whose Key or Value is not a string")
        tags[key] = value
    return tags


def parse_instance_state(data: Any, instance_id: str) -> str | None:
    """EC2 state name of one instance from describe-instances JSON (None if absent)."""
    for inst in parse_instances(data):
        if inst.get("InstanceId") == instance_id:
            return instance_state_name(inst)
    return None


def parse_ping_status(data: Any, instance_id: str) -> str:
    """SSM PingStatus of one instance from describe-instance-information JSON."""
    for info in aws_list(data, "InstanceInformationList"):
        info = aws_dict(info, "an InstanceInformationList entry")
        if info.get("InstanceId") == instance_id:
            return aws_value(info.get("PingStatus"), "SSM PingStatus", PING_STATUS_RE)
    return "NotRegistered"


def parse_previous_state(data: Any) -> str | None:
    """PreviousState of the first instance in a start-instances response."""
    items = aws_list(data, "StartingInstances")
    if not items:
        return None
    previous = aws_dict(items[0], "a StartingInstances entry").get("PreviousState")
    if previous is None:
        return None
    return aws_value(aws_dict(previous, "PreviousState").get("Name"), "previous instance state", EC2_STATE_RE)


def parse_identity(data: Any) -> str:
    """The caller's ARN from sts get-caller-identity ('' when absent), printable."""
    if data is None:
        return ""
    arn = aws_dict(data, "the caller identity").get("Arn", "")
    if not isinstance(arn, str) or len(arn) > 2048 or not arn.isprintable():
        raise aws_shape_error(f"invalid caller ARN {repr(arn)[:80]}")
    return arn


def cache_dir(environ: Mapping[str, str], home: str) -> str:
    """Our cache directory: $XDG_CACHE_HOME/cloudx-proxy, ~/.cache/..., %LOCALAPPDATA%.

    Only the path: nothing is checked or created. Before using it, call
    ensure_private_dir(), which raises OSError unless the directory is ours and
    private; callers then run without the cache (or with a private temp dir).
    Files in it are opened through open_private() (no symlinks, owner checked).
    """
    if sys.platform == "win32" and environ.get("LOCALAPPDATA"):
        return os.path.join(environ["LOCALAPPDATA"], "cloudx-proxy")
    base = environ.get("XDG_CACHE_HOME", "")
    if not os.path.isabs(base):  # the XDG spec: a relative path is invalid and must be ignored
        base = os.path.join(home, ".cache")
    return os.path.join(base, "cloudx-proxy")


def push_record_fresh(record: object, expect: dict[str, str], now: float, window: float = PUSH_REUSE_SECONDS) -> bool:
    """True when a stored key push matches this connect and is recent enough to reuse.

    Any doubt (different key or config, unreadable record, clock gone backwards)
    means push afresh.
    """
    if not isinstance(record, dict) or any(record.get(k) != v for k, v in expect.items()):
        return False
    pushed = record.get("t")
    return isinstance(pushed, (int, float)) and 0 <= now - pushed < window


# --- setup: names, SSH config rendering and merging ---------------------------
# Line breaks besides '\n' that str.splitlines() honours but ssh does not.
CONFIG_PATH_FORBIDDEN = "\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"
HOST_PART_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,62}")
# A config line's keyword and the rest, as OpenSSH's strdelim() splits them: the keyword may be
# double-quoted ('"Host" x'; then only blanks follow it, an '=' belongs to the value), else one
# '=' and blanks around it may separate. A BOM counts as a blank here (ssh itself refuses it:
# doctor reports that), so that every parser of ours agrees on where a block starts.
DIRECTIVE_RE = re.compile(
    r'[\s\ufeff]*(?:"([A-Za-z][A-Za-z0-9]*)"\s*|([A-Za-z][A-Za-z0-9]*)(?=[\s="]|$)\s*(?:=\s*)?)(.*)', re.S
)
BANNER_PREFIXES = ("# Created by cloudX-proxy", "# Created by cloudx-proxy", "# Configuration type:")
# PyPI cloudx-proxy 0.17 heads its file with a version line and puts a section banner
# (rule, title, rule, blank line) above its generic block, each environment and its
# "NOT MANAGED BY cloudx-proxy" part; its ProxyCommands run 'uvx cloudx-proxy connect ...'.
ORIGINAL_HEADER_RE = re.compile(r"# SSH Configuration - Managed by cloud[xX]-proxy\b.*\r?\n?")
ORIGINAL_RULE_RE = re.compile(r"#\s*={10,}\s*\r?\n?")
ORIGINAL_PROGRAM_RE = re.compile(r"cloudx-proxy(?:[@=<>~!].*)?", re.I)
# Lines of setup's blocks that setup rewrites; every other line in them is the user's.
OWNED_KEYWORDS = {
    "generic": (),
    "environment": ("identityfile", "identityagent", "identitiesonly", "proxycommand"),
    "host": ("hostname",),
}
# ssh_config(5) keywords where the first value obtained wins (others, such as
# IdentityFile or LocalForward, add up); cleanup drops a duplicate block's line only
# when its keyword is one of these and an earlier block for the same hosts sets it.
FIRST_WINS_KEYWORDS = frozenset(
    [
        "hostname",
        "user",
        "port",
        "proxycommand",
        "proxyjump",
        "identitiesonly",
        "identityagent",
        "tcpkeepalive",
        "controlmaster",
        "controlpath",
        "controlpersist",
        "serveraliveinterval",
        "serveralivecountmax",
        "stricthostkeychecking",
        "userknownhostsfile",
        "forwardagent",
        "compression",
        "connecttimeout",
        "loglevel",
        "requesttty",
        "remotecommand",
        "addkeystoagent",
        "batchmode",
        "hostkeyalias",
    ]
)
# Keywords whose value is a path: an unquoted one with a blank is one path with spaces (requote_path_line).
REQUOTE_KEYWORDS = ("identityfile", "identityagent", "controlpath", "certificatefile", "userknownhostsfile")
IAM_USER_RE = re.compile(r"cloudx-([A-Za-z0-9_.]+)-(.+)", re.I)
OP_ITEM_TITLE = "cloudX SSH Key - {key}"
OP_AGENT_SOCKETS = (
    "~/Library/Group Containers/2BUA8C4S2C.com.1password/t/agent.sock",
    "~/.1password/agent.sock",
    "~/snap/1password/current/.1password/agent.sock",
)
OP_AGENT_PIPE = r"\\.\pipe\openssh-ssh-agent"
OP_INSTALL_HINT = "install the 1Password CLI: https://developer.1password.com/docs/cli/get-started/"


def split_lines(text: str) -> list[str]:
    """Lines as ssh reads them: split after each '\n' only (keeps '\r\n' and odd characters)."""
    return [line for line in re.split(r"(?<=\n)", text) if line]


def validate_host_part(kind: str, value: str) -> str:
    """A hostname, environment or prefix that becomes part of an SSH Host line."""
    if not HOST_PART_RE.fullmatch(value or ""):
        raise usage_error(f"invalid {kind} {value!r}: use letters, digits, '.', '_' and '-' (not first)")
    return value


def validate_config_path(kind: str, value: str, include: bool = False) -> str:
    """A path that is written into an SSH config line and must reach ssh unchanged.

    ssh has no escape for '${' (it expands environment variables in paths),
    line breaks or double quotes; an Include path is also globbed, so it may not
    have glob characters.
    """
    validate_path(kind, value)
    problems = [
        ('"', '"' in value),
        ("'${'", "${" in value),
        ("a line break", any(c in value for c in CONFIG_PATH_FORBIDDEN)),
        # ssh reads \\, \' and \" as escapes; an Include is globbed, where any backslash escapes
        (
            "a backslash there",
            re.search(r"\\([\\'\" ]|$)", value) is not None or (include and "\\" in value and sys.platform != "win32"),
        ),
        ("glob characters (*?[])", include and any(c in value for c in "*?[]")),
    ]
    what = next((name for name, bad in problems if bad), None)
    if what:
        raise usage_error(f"invalid {kind} {value!r}: {what} cannot be carried through an SSH config line")
    return value


def env_from_identity(arn: str) -> tuple[str | None, str]:
    """The cloudX environment of an IAM user 'cloudX-{env}-{user}' (any case), and the user name.

    Roles (SSO, assumed) carry no environment. The ARN comes from AWS: an
    environment that could not be a host name part is not one.
    """
    kind, _, name = arn.partition(":user/") if ":user/" in arn else ("", "", "")
    user = name.rsplit("/", 1)[-1]
    match = IAM_USER_RE.fullmatch(user) if user else None
    env = match.group(1) if match and HOST_PART_RE.fullmatch(match.group(1)) else None
    return env, aws_text(user or arn.rsplit("/", 1)[-1])


def _tag_names(tags: dict[str, str]) -> tuple[tuple[str, str] | None, str | None, str | None]:
    """((environment tag key, its value) or None, the env in a legacy Name 'cloudX-{env}-{host}', the hostname)."""
    name = tags.get("Name", "")
    name = name.split(" | ")[0].strip() if isinstance(name, str) else ""
    legacy = re.fullmatch(r"cloud[xX]-([^-]+)-(.+)", name)
    hostname = legacy.group(2) if legacy else (name or None)
    keys = ("cloudX:environment", "cloudx:environment", "Environment")
    from_tag = next(((k, tags[k]) for k in keys if tags.get(k)), None)
    return from_tag, (legacy.group(1) if legacy else None), hostname


def names_from_tags(tags: dict[str, str]) -> tuple[str | None, str | None]:
    """(environment, hostname) from instance tags, as the reference reads them.

    Environment: the cloudX:environment / cloudx:environment / Environment tag,
    else the env of a legacy Name 'cloudX-{env}-{host}'. Hostname: the Name tag
    (before ' | '), without a legacy prefix. Tags come from AWS, so an
    environment that is not a valid host name part is left out (setup then
    asks, or needs --environment); the hostname is cleaned by the caller.
    """
    from_tag, from_name, hostname = _tag_names(tags)
    env = (from_tag[1] if from_tag else None) or from_name
    if env is not None and not (isinstance(env, str) and HOST_PART_RE.fullmatch(env)):
        debug(f"ignoring the environment tag {aws_text(env)}: not usable in a host name")
        env = None
    return env, hostname


def tag_env_conflict(tags: dict[str, str], used: str) -> str | None:
    """A warning when the Name tag's environment and the environment tag differ (as the reference
    warns; compared ignoring case, as environments are matched), naming the one setup used."""
    from_tag, from_name, _ = _tag_names(tags)
    if not from_tag or not from_name or str(from_tag[1]).lower() == from_name.lower():
        return None
    name, (key, value) = aws_text(tags.get("Name", "")), from_tag
    return (
        f"the Name tag '{name}' implies environment '{aws_text(from_name)}' but the {key} tag says "
        f"'{aws_text(value)}': using '{used}'"
    )


def quote_proxy_arg(value: str, windows: bool = False) -> str:
    """Quote one ProxyCommand word for the shell ssh runs it with, and escape ssh's '%'."""
    import shlex

    if windows:
        quoted = f'"{value}"' if (not value or re.search(r'[\s&|<>^()"]', value)) else value
    else:
        quoted = shlex.quote(value)
    return quoted.replace("%", "%%")


def quote_config_value(value: str, percent: bool = True) -> str:
    """An ssh_config(5) value: '%' doubled (for %-expanded keywords), double-quoted with
    backslash escapes when it has whitespace, '#', quotes or backslashes."""
    if percent:
        value = value.replace("%", "%%")
    if value and not re.search(r"[\s#'\"\\]", value):
        return value
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def render_proxy_command(
    program: list[str], profile: str, key: str, ssh_dir: str, aws_env: str | None, windows: bool = False
) -> str:
    """The ProxyCommand that runs this program's connect with setup's choices.

    '--user %r' pushes the key for the user ssh logs in as (ssh refuses user names
    with shell metacharacters; connect validates what arrives).
    """
    words = [quote_proxy_arg(p, windows) for p in program] + ["connect", "%h", "%p"]
    for flag, value in (("--profile", profile), ("--ssh-key", key), ("--ssh-dir", ssh_dir), ("--aws-env", aws_env)):
        if value:
            words += [flag, quote_proxy_arg(value, windows)]
    return " ".join(words + ["--user", "%r"])


def render_banner(kind: str, when: str) -> str:
    """The two comment lines above each block setup writes."""
    return f"# Created by cloudX-proxy v{__version__} on {when}\n# Configuration type: {kind}\n"


def prefix_spellings(prefix: str) -> list[str]:
    """The prefix spellings our wildcard Host lines carry, the configured one first, as PyPI
    cloudx-proxy 0.17.4+ writes them ('Host cloudX-* cloudx-*'): ssh matches Host patterns
    case-sensitively, and host entries exist in both spellings."""
    return list(dict.fromkeys([prefix, prefix.lower(), *(["cloudX"] if prefix.lower() == "cloudx" else [])]))


def render_generic_block(prefix: str, windows: bool = False) -> str:
    """Host {prefix}-*: settings shared by every environment."""
    c = "# " if windows else ""  # Windows' OpenSSH has no multiplexing: left for the user to enable
    return (
        f"Host {prefix}-*\n    User ec2-user\n    TCPKeepAlive yes\n"
        f"    {c}ControlMaster auto\n    {c}ControlPath ~/.ssh/control/%r@%h:%p\n    {c}ControlPersist 4h\n"
    )


def render_env_block(prefix: str, env: str, identity: list[str], proxy_command: str) -> str:
    """Host {prefix}-{env}-*: authentication and the ProxyCommand."""
    lines = [f"Host {prefix}-{env}-*", *(f"    {line}" for line in identity), f"    ProxyCommand {proxy_command}"]
    return "\n".join(lines) + "\n"


def render_host_block(prefix: str, env: str, hostname: str, instance_id: str) -> str:
    """Host {prefix}-{env}-{hostname}: the instance id."""
    return f"Host {prefix}-{env}-{hostname}\n    HostName {instance_id}\n"


def render_identity(key_path: str, agent: str | None) -> list[str]:
    """IdentityFile lines: the private key, or with an agent (1Password) its public key."""
    if agent is None:
        return [f"IdentityFile {quote_config_value(key_path)}", "IdentitiesOnly yes"]
    lines = [f"IdentityAgent {quote_config_value(agent)}"] if agent else []
    return [*lines, f"IdentityFile {quote_config_value(key_path + '.pub')}", "IdentitiesOnly yes"]


class ConfigBlock:
    """A run of SSH config lines: the preamble (host is None) or one Host/Match block."""

    def __init__(self, keyword: str | None, patterns: str, lines: list[str]):
        self.keyword, self.patterns, self.lines = keyword, patterns, lines

    def words(self) -> list[str]:
        """The patterns of a Host line, unquoted, without a trailing comment ([] for Match and the preamble)."""
        return split_patterns(split_comment(self.patterns)[0]) if self.keyword == "host" else []

    def is_host(self, pattern: str) -> bool:
        """True for a Host block of that one pattern, in one or more spellings of case.

        PyPI cloudx-proxy writes every prefix spelling on its wildcard lines
        ('Host cloudx-* cloudX-*'); ssh itself matches patterns case-sensitively.
        """
        words = self.words()
        return bool(words) and all(w.lower() == pattern.lower() for w in words)

    def header_index(self) -> int:
        """Index of the Host/Match line: the lines above it are a banner."""
        return next((i for i, ln in enumerate(self.lines) if section_match(ln)), 0)

    def original_banner(self) -> bool:
        """True when the banner above the block is PyPI cloudx-proxy's section banner."""
        return any(ORIGINAL_RULE_RE.fullmatch(ln) for ln in self.lines[: self.header_index()])

    def body(self) -> list[str]:
        """The block's meaningful lines: no banner, comments or blank lines, whitespace folded."""
        return [" ".join(ln.split()) for ln in self.lines if ln.strip() and not ln.lstrip().startswith("#")]


def _banner_start(lines: list[str]) -> int:
    """Where a banner ends the given lines: ours (directly above), or the original's rule/title/rule."""
    i = len(lines)
    while i and lines[i - 1].startswith(BANNER_PREFIXES):
        i -= 1
    if i < len(lines):
        return i
    while i and not lines[i - 1].strip():
        i -= 1
    if (
        i >= 3
        and ORIGINAL_RULE_RE.fullmatch(lines[i - 1])
        and lines[i - 2].startswith("#")
        and ORIGINAL_RULE_RE.fullmatch(lines[i - 3])
    ):
        return i - 3
    return len(lines)


def split_config(text: str) -> list[ConfigBlock]:
    """Split an SSH config into its preamble and Host/Match blocks, keeping every byte.

    A banner directly above a Host line (ours, or PyPI cloudx-proxy's section
    banner with the blank lines below it) belongs to that block.
    """
    blocks = [ConfigBlock(None, "", [])]
    for line in split_lines(text):
        match = section_match(line)
        if match:
            prev = blocks[-1].lines
            start = _banner_start(prev)
            banner = prev[start:]
            del prev[start:]
            blocks.append(ConfigBlock(match[0], match[1], banner + [line]))
        else:
            blocks[-1].lines.append(line)
    return blocks


def join_config(blocks: list[ConfigBlock]) -> str:
    """The text of a list of blocks."""
    return "".join("".join(b.lines) for b in blocks)


def _block_lines(text: str, newline: str) -> list[str]:
    return [line.rstrip("\r\n") + newline for line in split_lines(text)]


def _directive_indexes(block: ConfigBlock, keyword: str) -> list[int]:
    """Indexes of the block's lines that set `keyword` (below the Host line)."""
    found = []
    for i in range(block.header_index() + 1, len(block.lines)):
        parsed = parse_directive(block.lines[i])
        if parsed and parsed[0] == keyword:
            found.append(i)
    return found


def set_owned_lines(
    block: ConfigBlock, kind: str, rendered: list[str], newline: str, keys: tuple[str, ...] | None = None
) -> bool:
    """Make the lines setup owns in a block (OWNED_KEYWORDS, or those of them in `keys`) say what
    `rendered` says, in place.

    A keyword whose values already match is left byte for byte; a differing one is
    rewritten where it stands (keeping its indent and trailing comment); every other
    line stays as it is. Returns True if anything changed.
    """
    changed = False
    for key in OWNED_KEYWORDS[kind] if keys is None else keys:
        want = [p for p in (parse_directive(ln) for ln in rendered) if p and p[0] == key]
        have = _directive_indexes(block, key)
        values = [(parse_directive(block.lines[i]) or ("", "", ""))[1] for i in have]
        if values == [p[1] for p in want]:
            continue
        changed = True
        keyword = next((ln.split()[0] for ln in rendered if (parse_directive(ln) or ("",))[0] == key), key)
        if have:
            first = block.lines[have[0]]
            indent = first[: len(first) - len(first.lstrip())] or "    "
            comment = (parse_directive(first) or ("", "", ""))[2] if len(have) == 1 else ""
            pos = have[0]
            for i in reversed(have):
                del block.lines[i]
        else:
            indent, comment = "    ", ""
            owned = [i for k in OWNED_KEYWORDS[kind] for i in _directive_indexes(block, k)]
            pos = max(owned) + 1 if owned else block.header_index() + 1
            if pos > 0 and not block.lines[pos - 1].endswith("\n"):
                block.lines[pos - 1] += newline
        tail = f"  # {comment}" if comment else ""
        block.lines[pos:pos] = [f"{indent}{keyword} {value}{tail}{newline}" for _, value, _ in want]
    return changed


def requote_path_line(line: str) -> str:
    """A path directive (REQUOTE_KEYWORDS) whose unquoted value has blanks, with the value double-quoted;
    any other line unchanged (so repairing twice changes nothing).

    Versions before 0.17.2 and hand edits wrote 'IdentityFile /Users/First Last/.ssh/cloudX/cloudX';
    ssh then refuses the whole config ('extra arguments at end of line'). As PyPI cloudx-proxy does,
    the value is wrapped, never rebuilt; one with a double quote or backslash is left alone.
    UserKnownHostsFile takes several files: quoted only when a later word cannot be a file of its own.
    """
    found = split_directive(line)
    parsed = parse_directive(line)
    if not found or not parsed or parsed[0] not in REQUOTE_KEYWORDS:
        return line
    value = parsed[1]
    words = ssh_words(value)
    if len(words) < 2 or '"' in value or "\\" in value:
        return line
    if parsed[0] == "userknownhostsfile" and all(w[:1] in ("/", "~", "%", "$") for w in words[1:]):
        return line
    start = len(line) - len(found[1].lstrip())
    return line[:start] + f'"{value}"' + line[start + len(value) :]


def requote_paths(block: ConfigBlock) -> bool:
    """Quote the unquoted path values with blanks in a block's lines (requote_path_line); True if any changed."""
    fixed = [requote_path_line(ln) for ln in block.lines]
    changed = fixed != block.lines
    block.lines[:] = fixed
    return changed


def _set_banner(block: ConfigBlock, kind: str, when: str, newline: str) -> None:
    """Replace whatever banner a block has with ours."""
    block.lines[: block.header_index()] = _block_lines(render_banner(kind, when), newline)


def _add_patterns(block: ConfigBlock, patterns: list[str], newline: str) -> list[str]:
    """Append patterns missing from a Host line (exact case), before its comment; returns those added."""
    missing = [p for p in patterns if p not in block.words()]
    if missing:
        i = block.header_index()
        line = block.lines[i]
        body = line.rstrip("\r\n")
        ending = line[len(body) :]
        cut = re.search(r"\s+#", body)
        head, comment = (
            (body[: cut.start()], body[cut.start() :]) if cut else (body.rstrip(), body[len(body.rstrip()) :])
        )
        block.lines[i] = f"{head.rstrip()} {' '.join(missing)}{comment}{ending}"
    return missing


def is_catch_all(block: ConfigBlock) -> bool:
    """A 'Host *' block (negations or not) or 'Match all': it applies to (nearly) every host."""
    if block.keyword == "match":
        return split_comment(block.patterns)[0].lower().split() == ["all"]
    return "*" in block.words()


def _insert_position(blocks: list[ConfigBlock], stem: str | None) -> int:
    """After the last block whose patterns all start with `stem` (case-insensitive); else the end.
    Never after the first catch-all (is_catch_all): ssh takes a value from the first block that sets it."""
    end = next((i for i in range(1, len(blocks)) if is_catch_all(blocks[i])), len(blocks))
    if stem:
        for index in range(len(blocks) - 1, 0, -1):
            words = blocks[index].words()
            if words and all(w.lower().startswith(stem.lower()) for w in words):
                return min(index + 1, end)
    return end


def shadowing_catch_alls(text: str, patterns: list[str]) -> list[str]:
    """For each of our blocks (by pattern) below a catch-all that sets a first-wins keyword it sets too:
    'Host * (sets user) is above Host cloudX-*'. ssh then uses the catch-all's value for our hosts."""
    found = []
    blocks = split_config(text)
    for pattern in patterns:
        at = next((i for i, b in enumerate(blocks) if b.is_host(pattern)), None)
        ours = {k for k, _ in block_keywords(blocks[at])} if at is not None else set()
        for block in blocks[1:at]:
            shared = sorted(ours & {k for k, _ in block_keywords(block)} & FIRST_WINS_KEYWORDS)
            if is_catch_all(block) and shared:
                header = " ".join(block.lines[block.header_index()].split())
                found.append(f"'{header}' (sets {', '.join(shared)}) is above Host {pattern}")
    return found


def _insert_block(blocks: list[ConfigBlock], index: int, pattern: str, lines: list[str], newline: str) -> None:
    """Insert a new block's lines before blocks[index], with blank lines around it.

    Comments and blank lines that trail the block before it stay above the
    block they introduce, so they move below the new one.
    """
    prev = blocks[index - 1].lines
    if index < len(blocks):
        keep = len(prev)
        while keep > 1 and (not prev[keep - 1].strip() or prev[keep - 1].lstrip().startswith("#")):
            keep -= 1
        trailing = prev[keep:]
        del prev[keep:]
        if prev and not prev[-1].endswith("\n"):
            prev[-1] += newline
        gap = [newline] if any(ln.strip() for b in blocks[:index] for ln in b.lines) else []
        after = trailing if trailing and not trailing[0].strip() else [newline] + trailing
        blocks.insert(index, ConfigBlock("host", pattern, gap + lines + after))
        return
    if prev and not prev[-1].endswith("\n"):
        prev[-1] += newline
    if any(line.strip() for b in blocks for line in b.lines) and (not prev or prev[-1].strip()):
        prev.append(newline)
    blocks.append(ConfigBlock("host", pattern, lines + [newline]))


def _drop_original_header(blocks: list[ConfigBlock]) -> None:
    """Remove PyPI cloudx-proxy's 'Managed by' line (and the blank line under it), first line or not."""
    for block in blocks:
        lines = block.lines
        for i, line in enumerate(lines):
            if ORIGINAL_HEADER_RE.fullmatch(line):
                end = i + 1 + (1 if i + 1 < len(lines) and not lines[i + 1].strip() else 0)
                del lines[i:end]
                return


def merge_config(
    text: str, new_blocks: list[tuple[str, str, str]], replace: set[str], when: str
) -> tuple[str, list[str]]:
    """Put setup's blocks into an SSH config, touching nothing else.

    new_blocks is [(kind, host pattern, block text)]. The first existing block of
    that pattern (in any case spellings, as PyPI cloudx-proxy writes them) is
    adopted where it stands: spellings on the new Host line that it lacks are
    added to it, and if its pattern is in `replace` the lines setup owns
    (OWNED_KEYWORDS) are made to match, every other line staying byte for byte.
    A block with the original's banner gets ours. A missing block is inserted
    after its environment (hosts) or setup's other blocks, else appended.
    Returns the new text and what was done, one phrase per block.
    """
    newline = "\r\n" if "\r\n" in text or text.endswith("\r") else "\n"
    blocks = split_config(text)
    notes = []
    prefix = next((p[:-2] for k, p, _ in new_blocks if k == "generic"), None)
    env_pattern = next((p for k, p, _ in new_blocks if k == "environment"), None)
    adopted = False
    for kind, pattern, block_text in new_blocks:
        lines = _block_lines(render_banner(kind, when) + block_text, newline)
        parsed = parse_directive(lines[2])
        spellings = split_patterns(parsed[1]) if parsed else [pattern]
        existing = [b for b in blocks if b.is_host(pattern)]
        if not existing:
            stem = (env_pattern[:-1] if kind == "host" and env_pattern else None) or (
                prefix + "-" if kind != "generic" and prefix else None
            )
            at = _insert_position(blocks, stem)
            _insert_block(blocks, at, pattern, lines, newline)
            above = next((b for b in blocks[at + 1 :] if is_catch_all(b)), None)
            where = f" (above '{' '.join(above.lines[above.header_index()].split())}')" if above else ""
            notes.append(f"added {kind} block Host {' '.join(spellings)}{where}")
            continue
        target = existing[0]
        changed = grew = False  # grew: a kept block got a line it lacked (no new banner then)
        if kind != "host":
            added = _add_patterns(target, spellings, newline)
            if added:
                changed = True
                notes.append(f"added {' '.join(added)} to the Host line of the {kind} block")
        if pattern in replace and set_owned_lines(target, kind, lines[3:], newline):
            changed = True
            notes.append(f"updated {kind} block Host {pattern}")
            if kind == "host":
                for dup in existing[1:]:  # later copies whose lines were all ours: ssh never read them
                    rest = dup.lines[dup.header_index() + 1 :]
                    if all(not ln.strip() or (parse_directive(ln) or ("",))[0] == "hostname" for ln in rest):
                        blocks.remove(dup)
        elif kind == "environment" and not _directive_indexes(target, "proxycommand"):
            # Kept (banner too), but without a ProxyCommand its hosts have no way in: ours joins its lines.
            set_owned_lines(target, kind, lines[3:], newline, ("proxycommand",))
            notes.append(f"added our ProxyCommand to the kept environment block Host {pattern} (it had none)")
            grew = True
        if target.original_banner():
            adopted = True
            notes.append(f"adopted {kind} block Host {' '.join(target.words())}, written by PyPI cloudx-proxy")
        elif not changed and not grew:
            notes.append(f"kept {kind} block Host {pattern}")
        if changed or target.original_banner():
            _set_banner(target, kind, when, newline)
    if adopted:
        _drop_original_header(blocks)
    merged = join_config(blocks)
    return merged.rstrip("\r\n") + newline, notes


def adopt_config(text: str, program: list[str], when: str, windows: bool = False) -> tuple[str, list[str]]:
    """Take over a config PyPI cloudx-proxy wrote: its ProxyCommands run this program, its banners become ours.

    In setup's generic and environment blocks (any case spellings), a ProxyCommand
    running the original ('uvx cloudx-proxy connect …') is rewritten in place by
    adopt_proxy_command; the original's section banners and 'Managed by' line are
    replaced by our banners; in every block of ours an unquoted path with spaces is
    quoted (requote_path_line). No other line changes. Returns the text and one note
    per adopted ProxyCommand or repaired block.
    """
    newline = "\r\n" if "\r\n" in text or text.endswith("\r") else "\n"
    parsed = parse_cloudx_config(text)
    kinds = {p.lower(): "generic" for p in parsed["generic"]}
    kinds.update({str(e["pattern"]).lower(): "environment" for e in parsed["environments"].values()})
    kinds.update({str(h["host"]).lower(): "host" for h in parsed["hosts"]})
    blocks = split_config(text)
    notes: list[str] = []
    changed = False
    for block in blocks[1:]:
        words = {w.lower() for w in block.words()}
        kind = kinds.get(words.pop(), "") if len(words) == 1 else ""
        if not kind:
            continue
        if requote_paths(block):
            notes.append(f"repaired Host {' '.join(block.words())}: quoted a path with spaces (ssh refused it)")
        if kind == "host":
            continue
        adopted = False
        for i in _directive_indexes(block, "proxycommand"):
            value = (parse_directive(block.lines[i]) or ("", "", ""))[1]
            command = adopt_proxy_command(value, program, windows)
            if command is not None:
                block.lines[i] = block.lines[i].replace(value, command, 1)
                program_was = value.split(" connect", 1)[0]
                notes.append(
                    f"Host {' '.join(block.words())}: the ProxyCommand ran '{program_was.strip()}', "
                    f"now {quote_argv(program)} (same arguments, plus --user %r)"
                )
                adopted = True
        if adopted or block.original_banner():
            _set_banner(block, kind, when, newline)
            changed = True
    if changed:
        _drop_original_header(blocks)
    return join_config(blocks), notes


def find_block(text: str, pattern: str) -> ConfigBlock | None:
    """The first Host block of that pattern (any case spellings) in a config, if any."""
    return next((b for b in split_config(text) if b.is_host(pattern)), None)


def ssh_words(value: str) -> list[str]:
    """Split a config value into words as OpenSSH's argv_split does (quotes, backslash escapes)."""
    words: list[str] = []
    word: list[str] | None = None
    quote = ""
    i = 0
    while i < len(value):
        ch = value[i]
        nxt = value[i + 1] if i + 1 < len(value) else ""
        if ch == "\\" and (nxt in "'\"\\" and nxt or (not quote and nxt == " ")):
            word = (word or []) + [nxt]
            i += 2
            continue
        if not quote and ch in " \t":
            if word is not None:
                words.append("".join(word))
            word = None
        elif not quote and ch in "'\"":
            quote, word = ch, word or []
        elif quote and ch == quote:
            quote = ""
        else:
            word = (word or []) + [ch]
        i += 1
    if word is not None:
        words.append("".join(word))
    return words


def include_names(item: str, wanted: str, ssh_dir: str) -> bool:
    """True if one word of an Include line names the file `wanted` as ssh reads it.

    ssh expands '~', takes a relative path as relative to ~/.ssh (for a user's config)
    and globs it (glob(3): '*' and '?' stay within one component, and match no leading '.').
    """
    import fnmatch

    path = os.path.expanduser(item)
    have = os.path.normpath(path if os.path.isabs(path) else os.path.join(ssh_dir, path)).split(os.sep)
    want = os.path.normpath(wanted).split(os.sep)
    return len(have) == len(want) and all(
        fnmatch.fnmatchcase(w, h) and (h.startswith(".") or not w.startswith(".")) for h, w in zip(have, want)
    )


def applies_to_all(block: ConfigBlock) -> bool:
    """True where ssh applies a line to every host: above the first block, in 'Host *' (no negation), 'Match all'."""
    if block.keyword is None:
        return True
    if block.keyword == "match":
        return split_comment(block.patterns)[0].lower().split() == ["all"]
    words = block.words()
    return "*" in words and not any(w.startswith("!") for w in words)


def include_position(text: str, config_path: str, ssh_dir: str | None = None) -> str:
    """Where a config includes config_path: 'before' (where ssh applies it to every host, see
    applies_to_all), 'inside' (only within other Host/Match blocks), or 'missing'."""
    ssh_dir = ssh_dir or os.path.join(os.path.expanduser("~"), ".ssh")
    wanted = os.path.normpath(os.path.expanduser(config_path))
    where = "missing"
    for block in split_config(text):
        for line in block.lines[block.header_index() + 1 if block.keyword else 0 :]:
            parsed = parse_directive(line)
            if (
                parsed
                and parsed[0] == "include"
                and any(include_names(w, wanted, ssh_dir) for w in ssh_words(parsed[1]))
            ):
                if applies_to_all(block):
                    return "before"
                where = "inside"
    return where


def insert_include(text: str, include_path: str, ssh_dir: str | None = None) -> str | None:
    """~/.ssh/config with 'Include PATH' above its first Host/Match block; None if ssh already applies one
    to every host (include_position). An Include of it inside a Host/Match block is kept (it is the user's).

    An Include at the end would fall inside the last Host block and apply only to it.
    """
    newline = "\r\n" if "\r\n" in text else "\n"
    if include_position(text, include_path, ssh_dir) == "before":
        return None
    lines = split_lines(text)
    include = f"Include {quote_config_value(include_path, percent=False)}{newline}"
    for index, line in enumerate(lines):
        if section_match(line):
            return "".join(lines[:index] + [include, newline] + lines[index:])
    if lines and not lines[-1].endswith("\n"):
        lines[-1] += newline
    gap = [newline] if any(line.strip() for line in lines) else []
    return "".join(lines + gap + [include])


# --- list / doctor / cleanup: reading a config back ----------------------------
def split_directive(line: str) -> tuple[str, str] | None:
    """(keyword lowercased, the rest of the line) as ssh splits them (DIRECTIVE_RE); None if no keyword.

    The one tokenizer every reader of ours uses: 'Key value', 'Key=value', '"Key" value',
    tabs, leading blanks (and a BOM).
    """
    match = DIRECTIVE_RE.match(line)
    if not match:
        return None
    return (match.group(1) or match.group(2)).lower(), match.group(3)


def section_match(line: str) -> tuple[str, str] | None:
    """('host' or 'match', the rest of the line without its line break) when the line starts a block."""
    found = split_directive(line)
    return (found[0], found[1].strip()) if found and found[0] in ("host", "match") else None


def split_comment(rest: str) -> tuple[str, str]:
    """A value and its trailing '# comment' (a '#' that starts a word outside double quotes)."""
    quoted = False
    for i, ch in enumerate(rest):
        if ch == '"':
            quoted = not quoted
        elif ch == "#" and not quoted and (i == 0 or rest[i - 1].isspace()):
            return rest[:i].strip(), rest[i + 1 :].strip()
    return rest.strip(), ""


def parse_directive(line: str) -> tuple[str, str, str] | None:
    """(keyword lowercased, value, trailing comment) of one config line; None for blank/comment lines.

    Accepts 'Key value', 'Key=value', '"Key" value', tabs, double-quoted values and a
    trailing '# comment' outside quotes, as a human may have written them.
    """
    found = split_directive(line)
    if not found:
        return None
    value, comment = split_comment(found[1])
    return found[0], value, comment


def unquote(value: str) -> str:
    """A config value without the double quotes around it (when it is one quoted word)."""
    return value[1:-1] if len(value) >= 2 and value[0] == value[-1] == '"' and '"' not in value[1:-1] else value


def split_patterns(value: str) -> list[str]:
    """The words of a Host line, quotes removed."""
    return [m.group(1) if m.group(1) is not None else m.group(2) for m in re.finditer(r'"([^"]*)"|(\S+)', value)]


def parse_connect_options(proxy_command: str) -> dict[str, str]:
    """--profile/--ssh-key/--ssh-dir/--aws-env/--region given to connect in a ProxyCommand."""
    import shlex

    try:
        words = shlex.split(proxy_command.replace("%%", "%"))
    except ValueError:
        words = proxy_command.split()
    found: dict[str, str] = {}
    if "connect" in words:
        words = words[words.index("connect") + 1 :]
        for i, word in enumerate(words[:-1]):
            if word in ("--profile", "--ssh-key", "--ssh-dir", "--ssh-config", "--aws-env", "--region", "--user"):
                found[word[2:]] = words[i + 1]
    return found


def _shell_words(value: str) -> list[str]:
    import shlex

    try:
        return shlex.split(value.replace("%%", "%"))
    except ValueError:
        return value.split()


def is_original_program(words: list[str]) -> bool:
    """True for the program of PyPI cloudx-proxy's ProxyCommands: 'uvx cloudx-proxy', a bare 'cloudX-proxy'."""
    if len(words) == 1:
        return ORIGINAL_PROGRAM_RE.fullmatch(words[0]) is not None
    return len(words) > 1 and os.path.basename(words[0]) == "uvx" and bool(ORIGINAL_PROGRAM_RE.fullmatch(words[-1]))


def adopt_proxy_command(value: str, program: list[str], windows: bool = False) -> str | None:
    """PyPI cloudx-proxy's ProxyCommand, run by this program with the same arguments; None if not the original's.

    Everything from 'connect' on is kept as written (its flags mean the same to
    our connect, defaults included); '--user %r' is added when absent.
    """
    words = _shell_words(value)
    found = re.search(r"(?:^|\s)connect(?=\s|$)", value)
    if "connect" not in words or not found or not is_original_program(words[: words.index("connect")]):
        return None
    adopted = " ".join([quote_proxy_arg(p, windows) for p in program] + [value[found.start() :].strip()])
    return adopted if "--user" in words else adopted + " --user %r"


def proxy_settings(value: str, home: str) -> tuple[list[str], tuple[str, str, str, str]]:
    """A ProxyCommand's program words, and the profile, key, ssh dir and aws-env its connect resolves."""
    words = _shell_words(value)
    opts = parse_connect_options(value)
    d_profile, d_key, d_dir = default_profile_and_key(home)
    ssh_dir = opts.get("ssh-dir") or (os.path.dirname(opts["ssh-config"]) if opts.get("ssh-config") else d_dir)
    resolved = (
        opts.get("profile", d_profile),
        opts.get("ssh-key", d_key),
        os.path.expanduser(ssh_dir),
        opts.get("aws-env", ""),
    )
    return words[: words.index("connect")] if "connect" in words else words, resolved


def env_settings(lines: list[str], home: str) -> tuple[list[str], list[str], Any]:
    """What an environment block does: its IdentityFile and IdentityAgent values and its ProxyCommand's settings."""
    found: dict[str, list[str]] = {}
    for line in lines:
        parsed = parse_directive(line)
        if parsed and parsed[0] in ("identityfile", "identityagent", "proxycommand"):
            found.setdefault(parsed[0], []).append(parsed[1] if parsed[0] == "proxycommand" else unquote(parsed[1]))
    proxy = proxy_settings(found["proxycommand"][0], home) if found.get("proxycommand") else None
    return found.get("identityfile", []), found.get("identityagent", []), proxy


def config_prefix(text: str) -> str | None:
    """The spelling of the cloudx host prefix a config already uses, if any.

    The first pattern of its generic block ('Host cloudx-* cloudX-*' gives cloudx),
    else the one spelling its hosts share.
    """
    hosts = set()
    for block in split_config(text):
        words = block.words()
        if words and block.is_host("cloudx-*"):
            return words[0][:-2]
        for word in words:
            if re.fullmatch(r"cloudx-[^*?!]+", word, re.I):
                hosts.add(word[:6])
    return hosts.pop() if len(hosts) == 1 else None


def existing_names(text: str, prefix: str, env: str, hostname: str) -> tuple[str, str]:
    """(environment, host name) to write: the spellings already in the config where they differ only in case.

    'Dev' reuses an existing 'dev' environment; an existing 'cloudx-dev-web' keeps
    its name when the prefix is cloudX (ssh matches Host names case-sensitively,
    and it is the name the user types and VSCode saved).
    """
    env_block = find_block(text, f"{prefix}-{env}-*")
    if env_block is not None:
        env = env_block.words()[0][len(prefix) + 1 : -2]
    host = f"{prefix}-{env}-{hostname}"
    host_block = find_block(text, host)
    return env, host_block.words()[0] if host_block is not None else host


def parse_cloudx_config(text: str) -> dict[str, Any]:
    """What setup wrote (or a human edited): generic patterns, environments and hosts.

    Hosts are Host patterns without wildcards under a known prefix; the
    environment of 'cloudX-pre-prod-web' is the longest known environment
    ('pre-prod') that matches, else the word after the prefix.
    """
    blocks = []
    for block in split_config(text):
        if block.keyword != "host":
            continue
        kind = next((ln.split(":", 1)[1].strip() for ln in block.lines if ln.startswith("# Configuration type:")), None)
        directives: dict[str, str] = {}
        for line in block.lines[block.header_index() + 1 :]:
            parsed = parse_directive(line)
            if parsed:
                directives.setdefault(parsed[0], unquote(parsed[1]))
        blocks.append((kind, block.words(), directives, split_comment(block.patterns)[1]))
    prefixes = {"cloudx"}
    for kind, patterns, _, _ in blocks:
        for p in patterns:
            if kind == "generic" or re.fullmatch(r"cloud[xX]-\*", p):
                prefixes.add(p[:-2].lower())
    generic: list[str] = []
    generic_lines: list[str] = []  # as the Host lines spell them: 'cloudX-* cloudx-*'
    envs: dict[str, dict[str, Any]] = {}
    for _kind, patterns, directives, _ in blocks:
        spelled: list[str] = []
        for p in patterns:
            if p.endswith("-*") and p[:-2].lower() in prefixes:
                generic.append(p)
                spelled.append(p)
                continue
            pre = next((x for x in sorted(prefixes, key=len, reverse=True) if p.lower().startswith(x + "-")), None)
            if pre and p.endswith("-*") and "*" not in p[:-2] and "?" not in p:
                name = p[len(pre) + 1 : -2]
                envs.setdefault(
                    name.lower(),
                    {
                        "name": name,
                        "pattern": p,
                        "patterns": [q for q in patterns if q.lower() == p.lower()],
                        "directives": directives,
                        "options": parse_connect_options(directives.get("proxycommand", "")),
                    },
                )
        generic_lines += [" ".join(spelled)] if spelled else []
    hosts = []
    for _kind, patterns, directives, comment in blocks:
        for p in patterns:
            if "*" in p or "?" in p or p.startswith("!"):
                continue
            pre = next((x for x in sorted(prefixes, key=len, reverse=True) if p.lower().startswith(x + "-")), None)
            if not pre:
                continue
            rest = p[len(pre) + 1 :]
            env_key = next((e for e in sorted(envs, key=len, reverse=True) if rest.lower().startswith(e + "-")), None)
            env_name = str(envs[env_key]["name"]) if env_key else rest.split("-", 1)[0]
            short = rest[len(env_name) + 1 :] if rest.lower().startswith(env_name.lower() + "-") else rest
            hosts.append(
                {
                    "host": p,
                    "name": short or p,
                    "environment": env_name,
                    "instance_id": directives.get("hostname", ""),
                    "comment": comment,
                }
            )
    return {"generic": generic, "generic_lines": generic_lines, "environments": envs, "hosts": hosts}


def preferred_spelling(pattern: str, tail: int) -> str:
    """A wildcard pattern as list shows it: its prefix (all but the last `tail` characters) spelled
    cloudX when it is cloudx in any case, as the original's list shows it whichever command name ran it."""
    cut = len(pattern) - tail
    return ("cloudX" if pattern[:cut].lower() == "cloudx" else pattern[:cut]) + pattern[cut:]


def render_host_list(
    parsed: dict[str, Any], environment: str | None, detailed: bool, status: dict[str, tuple[str, str]] | None = None
) -> str:
    """The text 'list' prints: hosts grouped by environment, sorted, short name first."""
    hosts = [h for h in parsed["hosts"] if not environment or h["environment"].lower() == environment.lower()]
    envs: dict[str, dict[str, Any]] = parsed["environments"]
    out = ["=== cloudX-proxy Configured Hosts ===", ""]
    if detailed:
        out.append("Generic Patterns:")
        # Each pattern once, in the preferred spelling (the Host lines carry both); hosts keep their own case.
        shown = [preferred_spelling(line.split()[0], 2) for line in parsed["generic_lines"]]
        shown += [preferred_spelling(str(e["pattern"]), len(e["name"]) + 3) for e in envs.values()]
        out += [f"  {pattern}" for pattern in dict.fromkeys(shown)]
        out.append("")
    groups: dict[str, list[dict[str, str]]] = {}
    for h in hosts:
        groups.setdefault(h["environment"], []).append(h)
    for env in sorted(groups, key=str.lower):
        out.append(f"Environment: {env}")
        if detailed and env.lower() in envs:
            info = envs[env.lower()]
            opts: dict[str, str] = info["options"]
            out.append(f"  profile: {opts.get('profile', '(default)')}, key: {opts.get('ssh-key', '(default)')}")
            out.append(f"  ProxyCommand: {info['directives'].get('proxycommand', '(none)')}")
        for h in sorted(groups[env], key=lambda x: (x["name"].lower(), x["host"])):
            extra = [h["host"], h["instance_id"] or "N/A"] + ([h["comment"]] if h["comment"] else [])
            line = f"  {h['name']} ({', '.join(extra)})"
            if status is not None:
                state, ping = status.get(h["instance_id"], ("unknown", "unknown"))
                line += f"  [{state}, SSM {ping}]"
            out.append(line)
        out.append("")
    if not groups:
        out += ["No cloudX hosts configured" + (f" in environment {environment}" if environment else "") + ".", ""]
    out += ["Usage:", "  Connect with SSH:  ssh <hostname>"]
    return "\n".join(out) + "\n"


# --- editor settings (VS Code family): reading and editing settings.json (JSONC) ------------
# Remote-SSH gives up after remote.SSH.connectTimeout (15 s when unset), and a stopped instance
# takes 30-90 s to come up; the first connect also installs the server. Setup raises these to
# at least the reference's values and never lowers a larger one.
EDITOR_MINIMUMS = (("remote.SSH.connectTimeout", 90), ("remote.SSH.serverInstallTimeout", 120))
EDITOR_DEFAULTS = {"remote.SSH.connectTimeout": 15, "remote.SSH.serverInstallTimeout": 30}
EDITOR_PLATFORM_KEY = "remote.SSH.remotePlatform"
EDITOR_CONFIG_KEY = "remote.SSH.configFile"
# (name shown, directory name under the platform's config dir)
EDITOR_APPS = (
    ("VS Code", "Code"),
    ("Code - Insiders", "Code - Insiders"),
    ("VSCodium", "VSCodium"),
    ("Cursor", "Cursor"),
)
# One JSONC token at a time: whitespace, comments, strings (strict JSON escapes, no control
# characters), numbers (JSON grammar), literals, punctuation. Anything else is an error.
# Compiled when used (re caches it): connect never needs it.
JSONC_TOKEN_PATTERN = (
    r"(?P<ws>[ \t\r\n]+)|(?P<comment>//[^\r\n]*|/\*.*?\*/)"
    r'|(?P<str>"(?:[^"\\\x00-\x1f]|\\["\\/bfnrt]|\\u[0-9a-fA-F]{4})*")'
    r"|(?P<num>-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?)|(?P<word>true|false|null)|(?P<punct>[{}\[\]:,])"
)


class JsoncNode:
    """A JSONC value: its span, its Python value and, for an object, its members and trailing comma."""

    __slots__ = ("start", "end", "value", "members", "trailing")

    def __init__(self, start: int, end: int, value: Any, members: list[tuple[str, int, JsoncNode]], trailing: int):
        self.start, self.end, self.value = start, end, value
        self.members = members  # (key, where the key starts, value) for an object
        self.trailing = trailing  # where an object's trailing comma is, or -1


def _jsonc_line(text: str, pos: int) -> str:
    return f"line {text.count(chr(10), 0, pos) + 1}"


def jsonc_tokens(text: str) -> list[tuple[str, int, int]]:
    """(kind, start, end) of each token of a JSONC text, comments and whitespace left out (pure).

    A BOM at the start is skipped. ValueError on anything JSONC does not allow.
    """
    token_re = re.compile(JSONC_TOKEN_PATTERN, re.S)
    tokens = []
    pos = 1 if text.startswith("\ufeff") else 0
    while pos < len(text):
        match = token_re.match(text, pos)
        if match is None:
            raise ValueError(f"unexpected {text[pos]!r} at {_jsonc_line(text, pos)}")
        kind = match.lastgroup or ""
        if kind not in ("ws", "comment"):
            tokens.append((text[pos] if kind == "punct" else kind, pos, match.end()))
        pos = match.end()
    return tokens


def parse_jsonc(text: str) -> JsoncNode | None:
    """The top-level value of a JSONC text (None when it has none: empty, or only comments) (pure).

    ValueError when the text is not JSONC or an object has a key twice: such a file is not ours to edit.
    """
    tokens = jsonc_tokens(text)
    if not tokens:
        return None
    try:
        node, end = _jsonc_value(text, tokens, 0)
    except RecursionError:
        raise ValueError("nested too deeply") from None
    if end != len(tokens):
        raise ValueError(f"unexpected {text[tokens[end][1]]!r} after the value at {_jsonc_line(text, tokens[end][1])}")
    return node


def _jsonc_token(text: str, tokens: list[tuple[str, int, int]], i: int) -> tuple[str, int, int]:
    if i >= len(tokens):
        raise ValueError("unexpected end of the text")
    return tokens[i]


def _jsonc_value(text: str, tokens: list[tuple[str, int, int]], i: int) -> tuple[JsoncNode, int]:
    """The value starting at token i and the index of the token after it."""
    kind, start, end = _jsonc_token(text, tokens, i)
    if kind in ("str", "num", "word"):
        return JsoncNode(start, end, json.loads(text[start:end]), [], -1), i + 1
    if kind not in "{[":
        raise ValueError(f"unexpected {text[start]!r} at {_jsonc_line(text, start)}")
    close = "}" if kind == "{" else "]"
    members: list[tuple[str, int, JsoncNode]] = []
    items: list[Any] = []
    keys: set[str] = set()
    trailing, i = -1, i + 1
    while _jsonc_token(text, tokens, i)[0] != close:
        key, key_start = "", -1
        if kind == "{":
            key_kind, key_start, key_end = tokens[i]
            if key_kind != "str":
                raise ValueError(f"expected a key in quotes at {_jsonc_line(text, key_start)}")
            key = json.loads(text[key_start:key_end])
            if key in keys:
                raise ValueError(f"the key {json.dumps(key)} appears twice")
            keys.add(key)
            if _jsonc_token(text, tokens, i + 1)[0] != ":":
                raise ValueError(f"expected ':' after {json.dumps(key)} at {_jsonc_line(text, key_start)}")
            i += 2
        node, i = _jsonc_value(text, tokens, i)
        members.append((key, key_start, node))
        items.append(node.value)
        sep, sep_start, _ = _jsonc_token(text, tokens, i)
        if sep == ",":
            i += 1
            trailing = sep_start if _jsonc_token(text, tokens, i)[0] == close else -1
        elif sep != close:
            raise ValueError(f"expected ',' or {close!r} at {_jsonc_line(text, sep_start)}")
    value: Any = {m[0]: m[2].value for m in members} if kind == "{" else items
    return JsoncNode(start, tokens[i][2], value, members if kind == "{" else [], trailing), i + 1


def editor_patterns(prefix: str) -> list[str]:
    """remotePlatform patterns for our hosts: the prefix in both spellings (cloudX-* and cloudx-*)."""
    spellings = [prefix, prefix.lower()] + (["cloudX"] if prefix.lower() == "cloudx" else [])
    return [f"{p}-*" for p in dict.fromkeys(spellings)]


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def merge_editor_settings(current: dict[str, Any], patterns: list[str]) -> dict[str, Any]:
    """The settings with ours applied: timeouts raised to the minimums, our patterns added to
    remotePlatform as linux; larger values and platforms the user chose are kept (pure)."""
    wanted = dict(current)
    for key, least in EDITOR_MINIMUMS:
        if key not in wanted or (_is_number(wanted[key]) and wanted[key] < least):
            wanted[key] = least
    platforms = dict(wanted.get(EDITOR_PLATFORM_KEY) or {})
    for pattern in patterns:
        platforms.setdefault(pattern, "linux")
    wanted[EDITOR_PLATFORM_KEY] = platforms
    return wanted


def render_editor_snippet(patterns: list[str]) -> list[str]:
    """The settings.json lines setup adds, for a user to paste when setup cannot edit the file."""
    platforms = ", ".join(f'"{p}": "linux"' for p in patterns)
    return [f'"{key}": {least},' for key, least in EDITOR_MINIMUMS] + [f'"{EDITOR_PLATFORM_KEY}": {{{platforms}}}']


def _line_indent(text: str, pos: int) -> str:
    """The spaces and tabs that start the line pos is on."""
    line = text[text.rfind("\n", 0, pos) + 1 : pos]
    return line[: len(line) - len(line.lstrip(" \t"))]


def _member_indent(text: str, obj: JsoncNode, unit: str) -> str:
    """The indentation of an object's members: that of the first one that starts a line (else one unit more)."""
    for _key, key_start, _node in obj.members:
        line_start = text.rfind("\n", 0, key_start) + 1
        if line_start > obj.start and not text[line_start:key_start].strip(" \t"):
            return text[line_start:key_start]
    return _line_indent(text, obj.start) + unit


def _insert_members(
    text: str, obj: JsoncNode, members: list[str], nl: str, indent: str, top: bool
) -> list[tuple[int, int, str]]:
    """Edits that add rendered members before an object's closing brace, in the object's style:
    on lines of their own (with a comma after the last one when the object has one there), or
    on the same line when a nested object is written on one line."""
    if not members:
        return []
    close = obj.end - 1
    if not top and "\n" not in text[obj.start : obj.end]:
        if not obj.members:
            return [(close, close, ", ".join(members))]
        if obj.trailing >= 0:
            return [(obj.trailing + 1, obj.trailing + 1, " " + ", ".join(members) + ",")]
        end = obj.members[-1][2].end
        return [(end, end, ", " + ", ".join(members))]
    edits = []
    if obj.members and obj.trailing < 0:
        end = obj.members[-1][2].end
        edits.append((end, end, ","))
    body = ("," + nl).join(indent + m for m in members) + ("," if obj.trailing >= 0 else "")
    line_start = text.rfind("\n", 0, close) + 1
    if line_start > obj.start and not text[line_start:close].strip(" \t"):
        edits.append((line_start, line_start, body + nl))  # the brace starts its line: insert lines above it
    else:
        edits.append((close, close, nl + body + nl + _line_indent(text, obj.start)))
    return edits


def edit_editor_settings(text: str, patterns: list[str]) -> str:
    """settings.json text with our Remote-SSH settings (merge_editor_settings) applied (pure).

    Only the bytes of a timeout we raise change, and members are inserted before the closing brace
    of their object; every other byte stays. ValueError when the text cannot be read with certainty
    (not JSONC, the top level not an object, a key twice, one of our keys of an unexpected type) or
    when the edited text does not read back as the original plus our keys: then it is not ours to edit.
    """
    root = parse_jsonc(text)
    first_nl = text.find("\n")
    nl = "\r\n" if first_nl > 0 and text[first_nl - 1] == "\r" else "\n"
    if root is None:  # empty, or only comments: an object after what is there, then as for '{}'
        gap = "" if not text.strip("\ufeff") or text.endswith("\n") else nl
        return edit_editor_settings(text + gap + "{" + nl + "}" + nl, patterns)
    if not isinstance(root.value, dict):
        raise ValueError("the top level is not an object")
    unit = _member_indent(text, root, "") or "    "
    indent = _member_indent(text, root, unit)
    edits: list[tuple[int, int, str]] = []
    added: list[str] = []
    nodes = {key: node for key, _start, node in root.members}
    platforms = [(json.dumps(p), '"linux"') for p in patterns]
    for key, least in EDITOR_MINIMUMS:
        node = nodes.get(key)
        if node is None:
            added.append(f"{json.dumps(key)}: {least}")
        elif not _is_number(node.value):
            raise ValueError(f"{json.dumps(key)} is {text[node.start : node.end]}, not a number of seconds")
        elif node.value < least:
            edits.append((node.start, node.end, str(least)))
    node = nodes.get(EDITOR_PLATFORM_KEY)
    if node is None:
        trail = "," if root.trailing >= 0 else ""
        inner = ("," + nl).join(f"{indent}{unit}{k}: {v}" for k, v in platforms) + trail
        added.append(f"{json.dumps(EDITOR_PLATFORM_KEY)}: {{{nl}{inner}{nl}{indent}}}")
    elif not isinstance(node.value, dict):
        raise ValueError(f"{json.dumps(EDITOR_PLATFORM_KEY)} is not an object")
    else:
        missing = [f"{k}: {v}" for (k, v), p in zip(platforms, patterns) if p not in node.value]
        edits += _insert_members(text, node, missing, nl, _member_indent(text, node, unit), False)
    edits += _insert_members(text, root, added, nl, indent, True)
    # From the end back; of two insertions at one place the one made first stays first.
    for index in sorted(range(len(edits)), key=lambda k: (edits[k][0], k), reverse=True):
        start, end, new_text = edits[index]
        text = text[:start] + new_text + text[end:]
    return _checked_edit(text, root.value, patterns)


def _checked_edit(new: str, current: dict[str, Any], patterns: list[str]) -> str:
    """new, when it reads back as current plus our settings; else ValueError."""
    got = parse_jsonc(new)
    wanted = merge_editor_settings(current, patterns)
    if got is None or json.dumps(got.value, sort_keys=True) != json.dumps(wanted, sort_keys=True):
        raise ValueError("the edited text would not read back as the original plus our settings")
    return new


def editor_settings_dirs(platform: str, environ: Mapping[str, str], home: str) -> list[tuple[str, str]]:
    """(editor, user settings directory) of each VS Code-family editor on this platform (pure):
    Linux $XDG_CONFIG_HOME (when absolute) or ~/.config, macOS ~/Library/Application Support,
    Windows %APPDATA%; then <App>/User."""
    import ntpath
    import posixpath

    if platform == "win32":
        base, join = environ.get("APPDATA") or ntpath.join(home, "AppData", "Roaming"), ntpath.join
    elif platform == "darwin":
        base, join = posixpath.join(home, "Library", "Application Support"), posixpath.join
    else:
        xdg = environ.get("XDG_CONFIG_HOME", "")
        base, join = xdg if posixpath.isabs(xdg) else posixpath.join(home, ".config"), posixpath.join
    return [(name, join(base, app, "User")) for name, app in EDITOR_APPS]


# ---------------------------------------------------------------------------
# File helpers
# ---------------------------------------------------------------------------
def _untrusted(st: os.stat_result, path: str) -> str | None:
    """Why a file or directory of ours may not be trusted (owner, group/other-writable), or None."""
    if sys.platform == "win32":
        return None  # per-user profile directories; no uid or mode bits to check
    if st.st_uid != os.getuid():
        return f"{path} is owned by uid {st.st_uid}, not by you (uid {os.getuid()})"
    if st.st_mode & 0o022:
        return f"{path} is writable by others (mode {st.st_mode & 0o777:o})"
    return None


def ensure_private_dir(path: str) -> str:
    """Create a 0700 directory (and parents) if missing; tighten ours if looser.

    Raises OSError when the existing directory cannot be trusted: owned by
    someone else, or a symlink that someone else made or that points at a
    directory that is not ours.
    """
    import stat

    os.makedirs(path, mode=0o700, exist_ok=True)
    if sys.platform == "win32":
        return path
    lst = os.lstat(path)
    st = os.stat(path) if stat.S_ISLNK(lst.st_mode) else lst
    if stat.S_ISLNK(lst.st_mode) and lst.st_uid != os.getuid():
        raise OSError(f"not using {path}: it is a symlink owned by uid {lst.st_uid}, not by you")
    if not stat.S_ISDIR(st.st_mode):
        raise OSError(f"not using {path}: not a directory")
    if st.st_uid != os.getuid():
        raise OSError(f"not using {path}: owned by uid {st.st_uid}, not by you (uid {os.getuid()})")
    if st.st_mode & 0o077:
        os.chmod(path, 0o700)
    return path


def open_private(path: str, flags: int = os.O_RDONLY, mode: int = 0o600) -> int:
    """os.open() a file of ours without following a symlink; OSError unless it is a regular file we own
    that nobody else can write (that is how files in the cache dir are opened)."""
    import stat

    # O_NONBLOCK: opening a FIFO put in a file's place must not hang us (fstat then rejects it)
    fd = os.open(path, flags | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0), mode)
    try:
        st = os.fstat(fd)
        why = "not a regular file" if not stat.S_ISREG(st.st_mode) else _untrusted(st, path)
        if why:
            raise OSError(f"not using {path}: {why}")
    except BaseException:
        os.close(fd)
        raise
    return fd


def atomic_write(path: str, text: str, mode: int = 0o600) -> None:
    """Write text (newlines as given) via a temp file, fsync and a rename: old or new, never partial."""
    atomic_write_bytes(path, text.encode("utf-8"), mode)


def atomic_write_bytes(path: str, data: bytes, mode: int = 0o600) -> None:
    """Write bytes via a temp file in the same directory, fsync and a rename."""
    directory, name = os.path.split(os.path.abspath(path))
    prefix = f".tmp-{name}-"
    for old in os.listdir(directory):  # temp files of writers that were killed
        pid = old[len(prefix) :].split("-", 1)[0] if old.startswith(prefix) and old.endswith("~") else ""
        if pid.isdigit() and int(pid) != os.getpid() and not _pid_alive(int(pid)):
            try:
                os.unlink(os.path.join(directory, old))
            except OSError:
                pass
    tmp = os.path.join(directory, f"{prefix}{os.getpid()}-{time.monotonic_ns()}~")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def _pid_alive(pid: int) -> bool:
    """True if a process with this pid exists (Windows: assume it does)."""
    if sys.platform == "win32":
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True


def read_json_file(path: str) -> Any:
    """Parsed JSON from a file of ours, or None when it is missing, unreadable or not to be trusted
    (a symlink, another owner, writable by others: see open_private)."""
    try:
        fd = open_private(path)
    except FileNotFoundError:
        return None
    except OSError as e:
        debug(f"ignoring {path}: {e.strerror or e}")
        return None
    try:
        with os.fdopen(fd, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


class FileLock:
    """An exclusive lock on a file (fcntl on POSIX, msvcrt on Windows), with a deadline.

    The OS drops the lock when its holder dies, so a killed connect never
    leaves a stale lock behind. The lock file is opened without following a
    symlink and must be ours (open_private); a symlink in its place (only we
    can have made one in our private dir) is replaced. A directory can be
    locked too (POSIX): then nothing is created.
    """

    def __init__(self, path: str, deadline: float, sleep: Callable[[float], None] = time.sleep):
        """``sleep`` waits between tries: connect passes its watch's, which ends with ssh."""
        self.path, self.deadline, self.fd, self.sleep = path, deadline, -1, sleep

    def __enter__(self) -> FileLock:
        self.fd = self._open()
        waited = False
        try:
            while not self._try_lock():
                if time.monotonic() >= self.deadline:
                    raise CloudxError(
                        f"timed out waiting for the lock {self.path}", "another connect holds it; try again"
                    )
                if not waited:
                    debug(f"waiting for lock {self.path}")
                    waited = True
                self.sleep(0.1)
        except BaseException:
            os.close(self.fd)
            raise
        return self

    def _open(self) -> int:
        import errno

        if sys.platform != "win32" and os.path.isdir(self.path) and not os.path.islink(self.path):
            fd = os.open(self.path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | getattr(os, "O_NOFOLLOW", 0))
            why = _untrusted(os.fstat(fd), self.path)
            if why:
                os.close(fd)
                raise OSError(f"not locking {self.path}: {why}")
            return fd
        try:
            return open_private(self.path, os.O_RDWR | os.O_CREAT)
        except OSError as e:
            if e.errno != errno.ELOOP or not os.path.islink(self.path):
                raise
        os.unlink(self.path)  # a symlink where our lock file belongs: never follow it
        return open_private(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL)

    def _try_lock(self) -> bool:
        try:
            if sys.platform == "win32":
                import msvcrt

                msvcrt.locking(self.fd, msvcrt.LK_NBLCK, 1)  # type: ignore[attr-defined,unused-ignore]
            else:
                import fcntl

                fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except OSError:
            return False

    def __exit__(self, *exc: object) -> None:
        try:
            if sys.platform == "win32":
                import msvcrt

                msvcrt.locking(self.fd, msvcrt.LK_UNLCK, 1)  # type: ignore[attr-defined,unused-ignore]
        finally:
            os.close(self.fd)  # closing releases an flock


def backup_file(path: str) -> str | None:
    """Copy a file to PATH.bak the first time, later to PATH.bak-YYYYmmdd-HHMMSS[-N]; return the copy.

    The copy is itself written atomically, so a crash never leaves a truncated backup.
    """
    if not os.path.exists(path):
        return None
    backup = path + ".bak"
    if os.path.exists(backup):
        stamp = path + time.strftime(".bak-%Y%m%d-%H%M%S")
        backup, n = stamp, 1
        while os.path.exists(backup):
            backup, n = f"{stamp}-{n}", n + 1
    with open(path, "rb") as f:
        data = f.read()
    atomic_write_bytes(backup, data, 0o600)
    return backup


def read_text(path: str) -> str:
    """A text file's content ('' when missing), byte-faithful (newlines kept as they are)."""
    try:
        with open(path, encoding="utf-8", newline="") as f:
            return f.read()
    except FileNotFoundError:
        return ""
    except UnicodeDecodeError:
        raise CloudxError(f"{path} is not UTF-8 text; refusing to edit it") from None
    except OSError as e:
        raise CloudxError(f"cannot read {path}: {e.strerror}") from None


def print_diff(path: str, old: str, new: str) -> None:
    """The unified diff a dry run would write to a file, on stderr."""
    import difflib

    log(f"[dry run] would change {path}:")
    for line in difflib.unified_diff(old.splitlines(), new.splitlines(), path, path + " (new)", lineterm=""):
        print(f"    {line}", file=sys.stderr)


def update_file(
    path: str, update: Callable[[str], str | None], cache: str, dry_run: bool = False, keep_mode: bool = False
) -> tuple[str, str | None]:
    """Read-modify-write a config file under a lock, after a backup, atomically.

    A symlinked file is written through to its target. `update` gets the current
    text and returns the new one (None: no change). Returns (old, new or None).
    A dry run only reads: no lock, no cache dir, no backup. When the cache dir
    cannot be trusted, the lock is taken on the file's directory instead. The
    file is written 0600 unless keep_mode keeps the mode it has.
    """
    real = os.path.realpath(path)
    if dry_run:
        old = read_text(real)
        new = update(old)
        return old, (None if new is None or new == old else new)
    import hashlib

    directory = os.path.dirname(real)
    try:
        ensure_private_dir(cache)
        lock = os.path.join(cache, "lock-file-" + hashlib.sha1(real.encode("utf-8")).hexdigest()[:16])
    except OSError as e:
        debug(f"{e}; locking {directory} instead")
        if not os.path.isdir(directory):
            ensure_private_dir(directory)
        lock = directory
    try:
        with FileLock(lock, time.monotonic() + 60):
            return _update_locked(real, update, keep_mode)
    except OSError as e:
        raise CloudxError(f"cannot update {real}: {e.strerror or e}", "check the directory's permissions") from None


def _update_locked(real: str, update: Callable[[str], str | None], keep_mode: bool = False) -> tuple[str, str | None]:
    """update_file's read-modify-write, with the lock held."""
    old = read_text(real)
    new = update(old)
    if new is None or new == old:
        return old, None
    directory = os.path.dirname(real)
    if not os.path.isdir(directory):
        ensure_private_dir(directory)
    backup = backup_file(real)
    if backup:
        debug(f"backed up {real} to {backup}")
    try:
        atomic_write(real, new, os.stat(real).st_mode & 0o7777 if keep_mode and os.path.exists(real) else 0o600)
    except OSError as e:
        raise CloudxError(f"cannot write {real}: {e.strerror}", "check the directory's permissions") from None
    return old, new


# ---------------------------------------------------------------------------
# Process runner: every external command goes through run_cmd
# ---------------------------------------------------------------------------
def find_program(
    name: str, path_var: str | None, skip: Callable[[str], bool] | None = None
) -> tuple[str | None, list[str]]:
    """Find an executable on PATH, then in its standard install places (but those ``skip`` names).

    Returns (path or None, the directories looked in).
    """
    exts = [""]
    if sys.platform == "win32":
        exts = [e.lower() for e in os.environ.get("PATHEXT", ".EXE;.BAT;.CMD").split(";") if e] + [""]
    dirs = [d for d in (path_var or "").split(os.pathsep) if d]
    looked: list[str] = []
    for d in dirs + [d for d in _standard_dirs(name) if d not in dirs]:
        looked.append(d)
        for ext in exts:
            candidate = os.path.join(d, name + ext)
            if os.path.isfile(candidate) and os.access(candidate, os.X_OK) and not (skip and skip(candidate)):
                return candidate, looked
    return None, looked


def run_cmd(argv: list[str], timeout: float, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run a command (ssh-keygen, op, ssh) with captured output, through ProcessSet.run.

    A missing program or a timeout is a CloudxError; output is decoded as UTF-8
    with replacement (a remote login script or a plugin may print any bytes).
    """
    import subprocess

    rc, out, err = ProcessSet().run(argv, env, timeout)
    return subprocess.CompletedProcess(argv, rc, out, err)


class SshGone(BaseException):
    """ssh went away while connect waited: every child is stopped and connect exits (not a CloudxError)."""


def ssh_gone(reason: str) -> SshGone:
    """The SshGone to raise; from now on SIGHUP and SIGTERM are ignored, so the clean-up is not interrupted."""
    ignore_hangups()
    return SshGone(reason)


# While a child is started and registered (ProcessSet.spawn), SIGHUP/SIGTERM wait here: a child
# that exists must be known to stop_all and to the guard before connect unwinds.
_HELD_SIGNALS: list[int] | None = None


def _ssh_gone_signal(signum: int, _frame: object) -> None:
    """SIGHUP/SIGTERM handler: unwind connect from wherever it waits (held during a spawn)."""
    import signal

    if _HELD_SIGNALS is not None:
        _HELD_SIGNALS.append(signum)
        return
    raise ssh_gone(signal.Signals(signum).name)


class HeldSignals:
    """A section that SIGHUP/SIGTERM do not interrupt: one that arrives ends connect (SshGone) after it."""

    def __enter__(self) -> None:
        global _HELD_SIGNALS
        self.outer = _HELD_SIGNALS is not None  # nested: the outer section raises
        if not self.outer:
            _HELD_SIGNALS = []

    def __exit__(self, *exc: object) -> None:
        global _HELD_SIGNALS
        if self.outer:
            return
        held, _HELD_SIGNALS = _HELD_SIGNALS, None
        if held:
            _ssh_gone_signal(held[0], None)


def ignore_hangups() -> None:
    """From now on SIGHUP and SIGTERM are ignored (connect is on its way out: its clean-up must finish)."""
    import signal

    if sys.platform != "win32":
        for sig in (signal.SIGHUP, signal.SIGTERM):
            signal.signal(sig, signal.SIG_IGN)


class SshWatch:
    """How a waiting connect notices that ssh went away (POSIX).

    ssh killed while it is still connecting sends us no signal; its pipes on
    our fds 0 and 1 close, and we are orphaned. Every wait of connect (for a
    child's output, or between poll rounds) is one poll() that also watches
    those fds for a hang-up (Linux reports it whatever the mask; macOS needs
    POLLHUP asked for) and looks at our parent at least twice a second, which
    works even where poll() reports nothing for a pipe.
    """

    TICK = 0.5
    ppid: int
    fds: list[int]
    inherited: dict[int, Any]  # SIGHUP's and SIGTERM's dispositions as we were started: the plugin gets them back

    def __init__(self) -> None:
        import signal

        if sys.platform == "win32":
            raise NotImplementedError("POSIX only")
        self.ppid = os.getppid()
        self.fds = [fd for fd in (0, 1) if _fd_open(fd)]
        self.inherited = {}
        for sig in (signal.SIGHUP, signal.SIGTERM):
            self.inherited[sig] = signal.getsignal(sig)
            signal.signal(sig, _ssh_gone_signal)

    def check(self) -> None:
        """SshGone if our parent (ssh) is gone."""
        if os.getppid() != self.ppid:
            raise ssh_gone("our parent process went away")

    def wait(self, reads: list[int], deadline: float) -> list[int]:
        """Wait until one of ``reads`` is readable (those returned) or the deadline; SshGone if ssh goes."""
        import select

        if sys.platform == "win32":
            raise NotImplementedError("POSIX only")
        poller = select.poll()
        for fd in reads:
            poller.register(fd, select.POLLIN)
        for fd in self.fds:
            poller.register(fd, select.POLLHUP)
        while True:
            self.check()
            left = deadline - time.monotonic()
            if left <= 0:
                return []
            ready = []
            for fd, events in poller.poll(min(left, self.TICK) * 1000):
                if fd in self.fds and events & select.POLLNVAL:
                    poller.unregister(fd)
                    self.fds.remove(fd)
                elif fd in self.fds:
                    raise ssh_gone(f"its pipe on our fd {fd} closed")
                else:
                    ready.append(fd)
            if ready:
                return ready

    def sleep(self, seconds: float) -> None:
        """Sleep, ending early with SshGone if ssh goes away."""
        self.wait([], time.monotonic() + seconds)


def _fd_open(fd: int) -> bool:
    """True if the descriptor is open."""
    try:
        os.fstat(fd)
        return True
    except OSError:
        return False


# The guard: a small sh that holds the pids of our live children and kills them when its
# stdin (a pipe only we write) closes, which happens however we die, SIGKILL included.
GUARD_SH = r"""p=' '
while read -r x; do
  case $x in
    -*) x=${x#-}; case $p in *" $x "*) p="${p%% $x *} ${p#* $x }";; esac;;
    *) p="$p$x ";;
  esac
done
[ -n "${p# }" ] && kill -KILL $p 2>/dev/null
exit 0"""


class Guard:
    """The sh that kills our children if we die without stopping them (POSIX; started with the first child)."""

    def __init__(self) -> None:

        self.proc: subprocess.Popen[bytes] | None = None
        self.failed = False

    def _write(self, line: str) -> None:
        import subprocess

        if self.failed:
            return
        try:
            if self.proc is None:
                self.proc = subprocess.Popen(
                    ["/bin/sh", "-c", GUARD_SH],
                    stdin=subprocess.PIPE,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            assert self.proc.stdin is not None
            os.write(self.proc.stdin.fileno(), line.encode() + b"\n")
        except OSError as e:
            debug(f"no guard process ({e}): a child may outlive a killed connect")
            self.failed = True

    def add(self, pid: int) -> None:
        """A child is ours: kill it if we die."""
        self._write(str(pid))

    def remove(self, pid: int) -> None:
        """A child has exited (not yet reaped): forget it."""
        self._write(f"-{pid}")

    def close(self) -> None:
        """Every child is reaped: let the guard end, and reap it."""
        if self.proc is not None:
            assert self.proc.stdin is not None
            try:
                self.proc.stdin.close()
            except OSError:
                pass
            self.proc.wait()
            self.proc = None


class ProcessSet:
    """The child processes of one command: the one owner of which pids are ours.

    Children stay in our process group, so that one that prompts on the
    terminal (aws asking for an MFA code, a credential_process) can read it.
    A child leaves the set only once it has exited, and is reaped then, so a
    pid is signalled only while it is ours. connect adds an SshWatch (its waits
    end when ssh goes away) and a Guard (its children die with it).
    """

    def __init__(self, watch: SshWatch | None = None, guard: Guard | None = None) -> None:
        self.live: list[subprocess.Popen[bytes]] = []
        self.watch, self.guard = watch, guard

    def spawn(self, argv: list[str], env: dict[str, str] | None, **kw: Any) -> subprocess.Popen[bytes]:
        """Start a child (signals such as SIGPIPE back at their defaults: Popen's restore_signals).

        SIGHUP/SIGTERM are held from before the child exists until it is ours and the guard's:
        one arriving then ends connect only after that (a mask would be inherited by the child).
        """
        import subprocess

        if self.watch is not None:
            self.watch.check()
        with HeldSignals():
            proc = subprocess.Popen(argv, env=env, **kw)
            self.live.append(proc)
            if self.guard is not None:
                self.guard.add(proc.pid)
        return proc

    def start(self, argv: list[str], env: dict[str, str] | None) -> subprocess.Popen[bytes]:
        """Start a child with captured output; a missing program is a CloudxError."""
        import subprocess

        if _VERBOSE:
            debug("run: " + quote_argv(argv))
        try:
            return self.spawn(argv, env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        except FileNotFoundError:
            raise CloudxError(f"{argv[0]} not found", AWS_INSTALL_HINT if "aws" in argv[0] else None) from None

    def run(self, argv: list[str], env: dict[str, str] | None, timeout: float) -> tuple[int, str, str]:
        """Run a child with captured output: (exit code, stdout, stderr); missing or too slow is a CloudxError."""
        return self.results([(argv, self.start(argv, env))], time.monotonic() + timeout)[0]

    def results(
        self, started: list[tuple[list[str], subprocess.Popen[bytes]]], deadline: float
    ) -> list[tuple[int, str, str]]:
        """Read started children's output to its end and reap them: (exit code, stdout, stderr) each.

        Past the deadline every one of them is stopped and that is a CloudxError.
        """
        t0 = time.monotonic()
        try:
            outputs = self.collect([p for _, p in started], deadline)
        except TimeoutError:
            for _, proc in started:
                self.stop(proc)
            argv = started[0][0]
            raise CloudxError(
                f"{os.path.basename(argv[0])} {' '.join(argv[1:3])} did not finish within {deadline - t0:.0f} s",
                "check the network connection to AWS",
            ) from None
        except BaseException:  # Ctrl-C, ssh gone: the children go too
            for _, proc in started:
                self.stop(proc)
            raise
        out = []
        for (argv, proc), (stdout, stderr) in zip(started, outputs):
            rc = self.reap(proc)
            debug(f"exit {rc} after {time.monotonic() - t0:.2f} s: {' '.join(argv[1:3])}")
            out.append((rc, stdout.decode("utf-8", "replace"), stderr.decode("utf-8", "replace")))
        return out

    def collect(self, procs: list[subprocess.Popen[bytes]], deadline: float) -> list[tuple[bytes, bytes]]:
        """Read the children's stdout and stderr to their end (without reaping); TimeoutError past the deadline."""
        if sys.platform == "win32":
            import subprocess

            try:
                return [p.communicate(timeout=max(0.0, deadline - time.monotonic())) for p in procs]
            except subprocess.TimeoutExpired:
                raise TimeoutError from None
        chunks: dict[int, list[bytes]] = {}
        for p in procs:
            assert p.stdout is not None and p.stderr is not None
            chunks[p.stdout.fileno()], chunks[p.stderr.fileno()] = [], []
        open_fds = list(chunks)
        while open_fds:
            for fd in self.readable(open_fds, deadline):
                data = os.read(fd, 65536)
                if data:
                    chunks[fd].append(data)
                else:
                    open_fds.remove(fd)
        out = []
        for p in procs:
            assert p.stdout is not None and p.stderr is not None
            out.append((b"".join(chunks[p.stdout.fileno()]), b"".join(chunks[p.stderr.fileno()])))
            p.stdout.close()
            p.stderr.close()
        return out

    def readable(self, fds: list[int], deadline: float) -> list[int]:
        """The fds that can be read; TimeoutError past the deadline (SshGone under a watch when ssh goes)."""
        if self.watch is not None:
            ready = self.watch.wait(fds, deadline)
        else:
            import select

            ready = select.select(fds, [], [], max(0.0, deadline - time.monotonic()))[0]
        if not ready:
            raise TimeoutError
        return ready

    def exited(self, proc: subprocess.Popen[bytes]) -> bool:
        """True once the child has exited; on POSIX it is left unreaped, so its pid stays ours."""
        if proc.returncode is not None:
            return True
        if sys.platform == "win32" or not hasattr(os, "waitid"):  # macOS before Python 3.13 neither
            return proc.poll() is not None
        try:
            return os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOWAIT | os.WNOHANG) is not None
        except ChildProcessError:
            return True

    def reap(self, proc: subprocess.Popen[bytes]) -> int:
        """Wait for a child to exit, then forget and reap it; its exit code.

        The guard forgets the pid while the child is a zombie, before the pid can be reused.
        """
        if sys.platform == "win32" or not hasattr(os, "waitid"):
            rc: int | None = proc.wait()
        else:
            rc = None
            if proc.returncode is None:
                try:
                    os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOWAIT)
                except ChildProcessError:
                    pass
        if proc in self.live:
            self.live.remove(proc)
            if self.guard is not None:
                self.guard.remove(proc.pid)
        return proc.wait() if rc is None else rc

    def stop(self, proc: subprocess.Popen[bytes], grace: float = 1.0) -> int:
        """Stop a child: SIGTERM, SIGKILL after grace; reap it."""
        if proc.returncode is None and proc in self.live:
            try:
                proc.terminate()
                end = time.monotonic() + grace
                while not self.exited(proc) and time.monotonic() < end:
                    time.sleep(0.01)
                if not self.exited(proc):
                    proc.kill()
            except OSError:
                pass
        return self.reap(proc)

    def sleep(self, seconds: float) -> None:
        """Sleep (under a watch: ending with SshGone when ssh goes away)."""
        if seconds > 0:
            if self.watch is not None:
                self.watch.sleep(seconds)
            else:
                time.sleep(seconds)

    def stop_all(self) -> None:
        """Stop every child that is still ours, then let the guard go."""
        for proc in list(self.live):
            self.stop(proc, grace=0.5)
        if self.guard is not None:
            self.guard.close()


class Aws:
    """How to run the aws CLI for one profile and region: the one helper for every call."""

    def __init__(
        self,
        path: str,
        profile: str,
        region: str,
        env: dict[str, str],
        instance_id: str | None = None,
        procs: ProcessSet | None = None,
    ):
        for key, value in AWS_RETRY_ENV.items():
            env.setdefault(key, value)  # in place: the session's aws process gets them too
        env["AWS_CLI_AUTO_PROMPT"] = "off"  # a user's cli_auto_prompt = on must never prompt in a ProxyCommand
        self.path, self.profile, self.region, self.env = path, profile, region, env
        self.instance_id = instance_id
        self.procs = procs if procs is not None else ProcessSet()

    def argv(self, args: list[str]) -> list[str]:
        """The full argv for an aws call."""
        return [self.path, *args, *aws_base_args(self.profile, self.region)]

    def __call__(self, args: list[str], timeout: float = AWS_CALL_TIMEOUT) -> Any:
        """Run ``aws ARGS`` and return its parsed JSON; failures raise a classified CloudxError."""
        return self.answer(args, *self.procs.run(self.argv(args), self.env, timeout))

    def answer(self, args: list[str], rc: int, out: str, err: str) -> Any:
        """The parsed JSON of a finished call, or its classified CloudxError raised."""
        if rc != 0:
            op = "".join(w.capitalize() for w in args[1].split("-")) if len(args) > 1 else args[0]
            op = op.replace("Ssh", "SSH")
            debug(f"aws stderr: {err.strip()}")
            raise classify_aws_error(err, op, self.profile, self.region, self.instance_id)
        try:
            return json.loads(out) if out.strip() else None
        except ValueError:
            raise CloudxError(f"unexpected output from aws {' '.join(args[:2])}") from None

    def interactive(self, args: list[str]) -> int:
        """Run an aws command on the user's terminal (aws configure); returns its exit code."""
        import subprocess

        if _VERBOSE:
            debug("run: " + quote_argv([self.path, *args]))
        return subprocess.call([self.path, *args], env=self.env)

    def many(self, calls: dict[str, list[str]], timeout: float = AWS_CALL_TIMEOUT) -> dict[str, Any]:
        """Run independent aws calls side by side; each result is its JSON or its CloudxError."""
        names = list(calls)
        started: list[tuple[list[str], subprocess.Popen[bytes]]] = []
        try:
            for n in names:
                started.append((self.argv(calls[n]), self.procs.start(self.argv(calls[n]), self.env)))
        except BaseException:
            for _, proc in started:
                self.procs.stop(proc)
            raise
        results: dict[str, Any] = {}
        for name, (rc, out, err) in zip(names, self.procs.results(started, time.monotonic() + timeout)):
            try:
                results[name] = self.answer(calls[name], rc, out, err)
            except CloudxError as e:
                results[name] = e
        return results


# ---------------------------------------------------------------------------
# aws operations returning plain data
# ---------------------------------------------------------------------------
def aws_push_key_args(instance_id: str, user: str, public_key: str) -> list[str]:
    """Arguments of the EC2 Instance Connect key push."""
    return [
        "ec2-instance-connect", "send-ssh-public-key",
        "--instance-id", instance_id,
        "--instance-os-user", user,
        "--ssh-public-key", public_key,
    ]  # fmt: skip


def aws_ssm_status_args(instance_id: str) -> list[str]:
    """Arguments of the SSM agent status query for one instance."""
    return ["ssm", "describe-instance-information", "--filters", f"Key=InstanceIds,Values={instance_id}"]


def aws_describe_args(instance_id: str) -> list[str]:
    """Arguments of describe-instances for one instance."""
    return ["ec2", "describe-instances", "--instance-ids", instance_id]


def aws_start_args(instance_id: str) -> list[str]:
    """Arguments of start-instances for one instance."""
    return ["ec2", "start-instances", "--instance-ids", instance_id]


def aws_instance_state(aws: Aws, instance_id: str) -> str:
    """Current EC2 state name of the instance; not found is an error."""
    state = parse_instance_state(aws(aws_describe_args(instance_id)), instance_id)
    if state is None:
        raise CloudxError(
            f"instance {instance_id} not found in region {aws.region}",
            "check the instance id, and the region (--region or the profile's region)",
        )
    return state


# ---------------------------------------------------------------------------
# connect
# ---------------------------------------------------------------------------
# Which processes exist, and who owns what. ssh starts us (the ProxyCommand, in ssh's
# process group: on a terminal, the foreground one, so an aws child can prompt for an MFA
# code). While we connect, at most two aws children run at once, each for one call: the
# first key push and the session (beside it only when a hand-off is possible and the profile
# can neither prompt nor refresh an SSO token: ConnectRun.session_beside_push), or a cold-wait
# round's key push and SSM poll. A small sh, the Guard, kills them if we die however we die;
# every wait (for a child, a lock, a poll round) also watches for ssh going away (SshWatch).
# The session is `aws ssm start-session` with a private directory first on its PATH: the
# session-manager-plugin there is our stand-in, which hands the plugin's argv and the
# StartSession answer back on its stderr (a pipe to us) and exits. We then stop aws, let the
# Guard go, and exec the real plugin on ssh's stdin/stdout: from then on the pid ssh started
# is session-manager-plugin and nothing of ours runs, except, after a reused key push, a
# forked watcher that lives AUTH_FAILURE_SECONDS at most. No SSH byte reaches the instance
# before the key push has returned, by construction: a session started beside the push gets
# pipes of ours for stdin and stdout, not ssh's, and nothing flows through them until the
# push has returned; then either the stand-in's record comes (hand-off), or the plugin that
# aws runs itself (a wrapper bypassed the stand-in) is seen printing, and we relay its bytes
# for the session. Every StartSession that succeeded is handed to a plugin or terminated
# (settle_session). State: the plan and the children are this process's; the key-push
# record, the start and Online markers, the locks and the stand-in live in our private cache
# directory and are shared by concurrent connects. Rule: on the warm path, start no process
# whose work may be thrown away (the instance is started only after the key push says it is
# not running; the session beside the push is the one the warm path needs).
class ConnectPlan:
    """Everything connect decided before talking to AWS (validated, resolved)."""

    instance_id: str
    port: int
    profile: str
    region: str
    region_source: str
    user: str
    key_name: str
    ssh_dir: str
    pub_path: str
    timeout: float
    env: dict[str, str]
    config_file: str
    credentials_file: str
    config: dict[str, dict[str, str]]
    cache: str

    def __init__(self, **fields: object) -> None:
        self.__dict__.update(fields)


def read_ini(path: str) -> dict[str, dict[str, str]] | None:
    """Sections of an AWS-style INI file, or None when it does not exist."""
    import configparser

    parser = configparser.RawConfigParser(strict=False, interpolation=None)
    try:
        with open(path, encoding="utf-8") as f:
            parser.read_file(f)
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError, configparser.Error) as e:
        raise CloudxError(f"cannot read AWS config file {path}: {str(e).splitlines()[0]}") from None
    return {name: dict(parser.items(name)) for name in parser.sections()}


def use_aws_env(env: dict[str, str], name: str, home: str) -> None:
    """Point env at ~/.aws/aws-envs/NAME/{config,credentials} (--aws-env); the directory must exist."""
    name = validate_name("aws-env", name)
    env_dir = os.path.join(home, ".aws", "aws-envs", name)
    if not os.path.isdir(env_dir):
        raise CloudxError(
            f"AWS environment directory {env_dir} does not exist",
            f"create it with config and credentials files, or drop --aws-env {name}",
        )
    env["AWS_CONFIG_FILE"] = os.path.join(env_dir, "config")
    env["AWS_SHARED_CREDENTIALS_FILE"] = os.path.join(env_dir, "credentials")


def require_aws(env: Mapping[str, str]) -> str:
    """The aws CLI's path (PATH, then its standard install places), or an error saying where we looked."""
    aws, looked = find_program("aws", env.get("PATH"))
    if not aws:
        raise CloudxError(f"the aws CLI was not found on PATH or in {', '.join(looked[-6:])}", AWS_INSTALL_HINT)
    return aws


def plan_connect(args: argparse.Namespace, environ: Mapping[str, str]) -> ConnectPlan:
    """Validate connect's arguments and resolve profile, region, key and AWS files (no AWS call)."""
    a = args
    instance_id = validate_instance_id(a.instance_id)
    port = validate_port(a.port)
    home = os.path.expanduser("~")
    d_profile, d_key, d_dir = default_profile_and_key(home)
    profile = validate_name("profile", a.profile if a.profile is not None else d_profile)
    key_name = validate_name("ssh key name", a.ssh_key if a.ssh_key is not None else d_key)
    user = validate_os_user(a.user)
    timeout = validate_timeout(a.timeout)
    if a.region is not None:
        validate_region(a.region)
    if a.ssh_dir is not None:
        ssh_dir = os.path.expanduser(validate_path("--ssh-dir", a.ssh_dir))
    elif a.ssh_config is not None:
        ssh_dir = os.path.dirname(os.path.expanduser(validate_path("--ssh-config", a.ssh_config)))
    else:
        ssh_dir = d_dir
    env = dict(environ)
    if a.aws_env is not None:
        use_aws_env(env, a.aws_env, home)
    config_file = os.path.expanduser(env.get("AWS_CONFIG_FILE") or os.path.join(home, ".aws", "config"))
    credentials_file = os.path.expanduser(
        env.get("AWS_SHARED_CREDENTIALS_FILE") or os.path.join(home, ".aws", "credentials")
    )
    config = read_ini(config_file) or {}
    region, source = resolve_region(a.region, env, profile_section(config, profile))
    if not REGION_RE.fullmatch(region):
        where = "the profile's region setting" if source == "profile" else source
        raise CloudxError(f"invalid region {region!r} from {where}", "fix it, or pass --region")
    return ConnectPlan(
        instance_id=instance_id, port=port, profile=profile, region=region, region_source=source,
        user=user, key_name=key_name, ssh_dir=ssh_dir, pub_path=os.path.join(ssh_dir, key_name + ".pub"),
        timeout=timeout, env=env, config_file=config_file, credentials_file=credentials_file,
        config=config, cache=_usable_cache_dir(environ, home),
    )  # fmt: skip


def _usable_cache_dir(environ: Mapping[str, str], home: str) -> str:
    """Our cache directory, or "" when there is none we may use (connect then goes without)."""
    try:
        return cache_dir(environ, home)
    except OSError as e:
        debug(f"no cache directory ({e}): no key-push reuse, no shared start")
        return ""


def check_profile(plan: ConnectPlan) -> None:
    """Fail fast, without an aws process, on an unknown profile or an expired SSO login."""
    section = profile_section(plan.config, plan.profile)
    creds = read_ini(plan.credentials_file) or {}
    env_creds = plan.profile == "default" and plan.env.get("AWS_ACCESS_KEY_ID")
    if section is None and plan.profile not in creds and not env_creds:
        raise CloudxError(
            f"AWS profile '{plan.profile}' not found in {plan.config_file} or {plan.credentials_file}",
            f"run: aws configure --profile {plan.profile}   (or {PROG} setup)",
        )
    if section is None:
        return
    cache_file = sso_cache_file(plan.config, section)
    if section.get("sso_session") and f"sso-session {section['sso_session']}" not in plan.config:
        raise CloudxError(
            f"profile '{plan.profile}' names sso_session '{section['sso_session']}', which is not in {plan.config_file}",
            f"aws configure sso --profile {plan.profile}",
        )
    if cache_file:
        home = os.path.expanduser("~")
        token = read_json_file(os.path.join(home, ".aws", "sso", "cache", cache_file))
        if sso_token_expired(token if isinstance(token, dict) else None, time.time()):
            raise CloudxError(
                f"the AWS SSO session of profile '{plan.profile}' has expired (or never logged in)",
                f"aws sso login --profile {plan.profile}",
            )


def read_public_key(path: str) -> str:
    """The public key to push, as 'TYPE BASE64'."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read(16384)
    except FileNotFoundError:
        raise CloudxError(
            f"public key {path} not found",
            f"run '{PROG} setup', or pass --ssh-key/--ssh-dir to name an existing key",
        ) from None
    except (OSError, UnicodeDecodeError) as e:
        raise CloudxError(f"cannot read public key {path}: {e}") from None
    return parse_public_key(text, path)


def locate_tools(env: dict[str, str], cache: str) -> tuple[str, str]:
    """Find aws and session-manager-plugin (never our stand-in, wherever PATH puts it); a tool off
    PATH has its directory added to the child PATH (when a directory can go on PATH)."""
    aws = require_aws(env)
    plugin, looked = find_program("session-manager-plugin", env.get("PATH"), lambda p: is_stand_in(p, cache))
    if not plugin:
        raise CloudxError(
            f"session-manager-plugin was not found on PATH or in {', '.join(looked[-6:])}", PLUGIN_INSTALL_HINT
        )
    path_dirs = env.get("PATH", "").split(os.pathsep)
    for tool in (aws, plugin):
        tool_dir = os.path.dirname(tool)
        if os.pathsep in tool_dir:
            debug(f"{os.path.basename(tool)} found off PATH at {tool}, whose directory cannot go on PATH")
        elif tool_dir not in path_dirs:
            debug(f"{os.path.basename(tool)} found off PATH at {tool}; adding {tool_dir} to PATH for aws")
            env["PATH"] = os.pathsep.join([tool_dir, *[d for d in path_dirs if d]])
            path_dirs = env["PATH"].split(os.pathsep)
    return aws, plugin


def is_stand_in(path: str, cache: str) -> bool:
    """True when path is (a link to) a stand-in plugin of ours: a file in a plugin* directory of the cache."""
    if not cache:
        return False
    real_dir = os.path.dirname(os.path.realpath(path))
    return os.path.dirname(real_dir) == os.path.realpath(cache) and os.path.basename(real_dir).startswith("plugin")


class PushCache:
    """Remembers the last successful key push, to skip it on a repeat connect (nothing without a cache dir)."""

    def __init__(self, plan: ConnectPlan, public_key: str):
        profile = re.sub(r"[^A-Za-z0-9_.-]", "_", plan.profile)  # ':' cannot be in a Windows file name
        name = f"push-{plan.region}-{plan.instance_id}-{plan.user}-{profile}.json"
        self.path = os.path.join(plan.cache, name) if plan.cache else ""
        self.expect = {
            "profile": plan.profile,
            "key": public_key,
            "config": plan.config_file,
            "credentials": plan.credentials_file,
        }

    def fresh(self) -> bool:
        """True when the last push for this profile/region/instance/user/key can be reused."""
        return self.pushed_at() is not None

    def pushed_at(self) -> float | None:
        """When the key was pushed, if that push can be reused."""
        record = read_json_file(self.path) if self.path else None
        if not isinstance(record, dict) or not push_record_fresh(record, self.expect, time.time()):
            return None
        return float(record["t"])

    def record(self, pushed_at: float) -> None:
        """Store a successful push (best effort: a cache that cannot be written costs time only)."""
        if not self.path:
            return
        try:
            ensure_private_dir(os.path.dirname(self.path))
            atomic_write(self.path, json.dumps({**self.expect, "t": pushed_at}))
        except OSError as e:
            debug(f"cannot write {self.path}: {e}")

    def forget(self) -> None:
        """Drop the record, so that the next connect pushes afresh."""
        if not self.path:
            return
        try:
            os.unlink(self.path)
        except OSError:
            pass


# --- constants of connect ---------------------------------------------------------
NO_HANDOFF_ENV = "CLOUDX_PROXY_NO_HANDOFF"  # tests: the path without exec (Windows') on POSIX
# StartSession refusals that come before the session carried any byte (the aws
# CLI exits 255 without reading stdin): the connect then checks the instance.
SESSION_REFUSED_RE = re.compile(r"An error occurred \(([A-Za-z0-9.]+)\) when calling the StartSession operation")
SESSION_REFUSALS = (
    "TargetNotConnected",
    "InvalidInstanceId",
    "InvalidTarget",
    "IncorrectInstanceState",
    "EC2InstanceStateInvalidException",
)
# The cold wait polls where the answer can change. No instance registers with SSM this
# soon after its start (t3.micro: 30-45 s; larger ones 60-90 s), so a young instance is
# looked at only at these ages (a short boot, a stop), and from then on every POLL_SECONDS.
YOUNG_POLL_AGES = (8.0,)
ONLINE_EARLIEST_SECONDS = 15.0
POLL_SECONDS = 2.0
# A round's aws processes start this much before the round is due, so that their
# requests go out on time (an aws process takes 0.6-1.2 s to start).
AWS_STARTUP_SECONDS = 0.8
# Another connect's "Online" (it polled while we waited for its lock) is used this long.
ONLINE_SHARE_SECONDS = 20.0
# A session on a reused key push that ends this soon may be a refused key: forget the push.
AUTH_FAILURE_SECONDS = 5.0
SSM_RESPONSE_ENV = "AWS_SSM_START_SESSION_RESPONSE"
# How long a session started beside a failed push may take to show what it did, and how long
# its TerminateSession may take (both bounded: the connect is on its way out).
SETTLE_SECONDS = 30.0
TERMINATE_SECONDS = 20.0


# --- the hand-off: the process ssh started becomes session-manager-plugin --------------
# aws runs session-manager-plugin by its bare name from PATH: once with --version (aws
# v1 >= 1.30.3, v2 >= 2.13.37; a version above 1.2.497.0 gets the StartSession answer in
# AWS_SSM_START_SESSION_RESPONSE), then with RESPONSE_OR_ENVNAME REGION StartSession
# PROFILE PARAMETERS ENDPOINT. The stand-in answers --version with the real plugin (so
# aws decides the form as without us) and hands the session call back to us, framed by
# a per-connect nonce. The answer (it holds the session token) goes through printf only
# where printf is the shell's builtin (`command -v` names a builtin without a path): it
# then appears in no process list; where it is not (mksh, posh), aws runs the real plugin.
# The real plugin runs with the user's PATH and a mark: a plugin wrapper that calls
# session-manager-plugin by name finds the real one, and a stand-in reached again
# (its directory on the user's PATH) refuses instead of running itself forever.
STAND_IN_SH = r"""#!/bin/sh
# cloudx-proxy's stand-in for session-manager-plugin: see "hand-off" in cloudx_proxy.py.
if [ -n "${CLOUDX_PROXY_STAND_IN-}" ]; then
  echo "cloudx-proxy: $0 is cloudx-proxy's stand-in, not session-manager-plugin: take its directory off PATH" >&2
  exit 1
fi
if [ "$#" -ge 6 ] && [ "$3" = StartSession ] && [ -n "${CLOUDX_PROXY_HANDOFF-}" ] &&
  [ "$(command -v printf)" = printf ]; then
  r=
  case $1 in
    *[!A-Za-z0-9_]*) ;;
    AWS_SSM_START_SESSION_RESPONSE*) eval "r=\${$1-}" ;;
  esac
  printf '\n%s\0%s\0' "$CLOUDX_PROXY_HANDOFF" "$#" >&2 &&
    printf '%s\0' "$@" "$r" >&2 &&
    printf '%s\n' "$CLOUDX_PROXY_HANDOFF" >&2 &&
    exit 0
  exit 1
fi
CLOUDX_PROXY_STAND_IN=1
PATH=${CLOUDX_PROXY_PATH-$PATH}
export CLOUDX_PROXY_STAND_IN PATH
exec "${CLOUDX_PROXY_PLUGIN:?}" "$@"
"""
STAND_IN_VARS = ("CLOUDX_PROXY_HANDOFF", "CLOUDX_PROXY_PLUGIN", "CLOUDX_PROXY_PATH", "CLOUDX_PROXY_STAND_IN")


def parse_handoff(data: bytes, nonce: bytes) -> tuple[list[str], str] | None:
    """The plugin's argv and the StartSession answer from the stand-in's record in aws's stderr,
    once the whole record is there; None while it is not (or never: no record)."""
    start = data.find(b"\n" + nonce + b"\0")
    end = data.find(b"\0" + nonce + b"\n", start + 1) if start >= 0 else -1
    if end < 0:
        return None
    fields = data[start + len(nonce) + 2 : end].split(b"\0")
    if not fields[0].isdigit() or len(fields) != int(fields[0]) + 2:
        return None
    text = [f.decode("utf-8", "surrogateescape") for f in fields[1:]]
    return text[:-1], text[-1]


def plugin_env(env: Mapping[str, str], args: list[str], response: str) -> dict[str, str]:
    """The real plugin's environment: ours, without our hand-off variables, plus the answer
    in the variable aws named (when it passed one rather than the JSON itself)."""
    out = {k: v for k, v in env.items() if k not in STAND_IN_VARS}
    if args and args[0].startswith(SSM_RESPONSE_ENV) and response:
        out[args[0]] = response
    return out


def plugin_session_id(stdout: bytes) -> str | None:
    """The SessionId a plugin run by aws announced on its stdout ('Starting session with SessionId: ID'), or None."""
    m = re.search(rb"Starting session with SessionId: ([A-Za-z0-9._:@+=-]{1,256})\r?\n", stdout)
    return m.group(1).decode() if m else None


def session_id_of(args: list[str], response: str) -> str | None:
    """The SessionId of a captured StartSession answer (argv or environment form), or None."""
    try:
        data = json.loads(response if args and args[0].startswith(SSM_RESPONSE_ENV) else args[0])
    except (ValueError, IndexError):
        return None
    sid = data.get("SessionId") if isinstance(data, dict) else None
    return sid if isinstance(sid, str) and re.fullmatch(r"[A-Za-z0-9._:@+=-]{1,256}", sid) else None


def handoff_wanted(env: Mapping[str, str]) -> bool:
    """May this connect hand the session to the plugin (POSIX, CLOUDX_PROXY_NO_HANDOFF unset, empty or 0)?"""
    return sys.platform != "win32" and env.get(NO_HANDOFF_ENV, "") in ("", "0")


def stand_in_path(cache: str) -> str:
    """Where this version's stand-in lives: a directory named by the script's checksum."""
    import binascii

    return os.path.join(cache, f"plugin-{binascii.crc32(STAND_IN_SH.encode()):08x}")


def stand_in_dir(cache: str) -> str | None:
    """Our private directory holding the stand-in plugin (written if missing or changed), or None
    when there is none we may use: connect then goes without the hand-off.

    The directory is named by the script's checksum, so two versions of us never overwrite each
    other's. It must be fit for PATH (absolute, no path separator in it) and safe to look up
    by name: ours, on an exec mount, and no directory above it that another user may change."""
    data = STAND_IN_SH.encode()
    path = stand_in_path(cache)
    script = os.path.join(path, "session-manager-plugin")
    try:
        if sys.platform == "win32" or not cache:
            raise OSError("no private cache directory")
        if not os.path.isabs(path) or os.pathsep in path:
            raise OSError(f"{path} cannot go on PATH")
        ensure_private_dir(cache)
        ensure_private_dir(path)
        unsafe = unsafe_parent(path)
        if unsafe:
            raise OSError(unsafe)
        if os.statvfs(path).f_flag & getattr(os, "ST_NOEXEC", 0):
            raise OSError(f"{path} is on a noexec mount")
        try:
            fd = open_private(script)
            with os.fdopen(fd, "rb") as f:
                current = f.read(len(data) + 1)
            mode = os.stat(script).st_mode & 0o777
        except FileNotFoundError:
            current, mode = b"", 0
        if current != data or mode != 0o700:
            atomic_write_bytes(script, data, 0o700)
    except OSError as e:
        debug(f"no hand-off to the plugin ({e}): the session runs under aws")
        return None
    return path


def unsafe_parent(path: str) -> str | None:
    """Why another user could swap a directory above ``path`` (None when nobody can, POSIX).

    Every directory on the way, and every symlink there, must belong to us or root, and a
    directory others may write must have the sticky bit (as /tmp has)."""
    import stat

    if sys.platform == "win32":
        return None
    uid, gid, done = os.getuid(), os.getgid(), os.sep
    checks = []
    for part in os.path.abspath(path).split(os.sep)[1:-1]:
        done = os.path.join(done, part)
        checks.append((done, os.lstat(done)))
    real = os.path.realpath(os.path.dirname(path))
    while True:
        checks.append((real, os.stat(real)))
        if real == os.path.dirname(real):
            break
        real = os.path.dirname(real)
    for where, st in checks:
        if st.st_uid not in (0, uid):
            return f"{where} belongs to uid {st.st_uid}"
        writable = st.st_mode & 0o002 or (st.st_mode & 0o020 and st.st_gid != gid)
        if stat.S_ISDIR(st.st_mode) and writable and not st.st_mode & stat.S_ISVTX:
            return f"{where} may be changed by other users (mode {st.st_mode & 0o7777:o}, no sticky bit)"
    return None


def watch_auth(record: str, seconds: float) -> int:
    """Fork a watcher that removes the key-push record if the session ends within seconds; the
    descriptor to leave open across exec (its closing, when the plugin ends, is the signal).

    The watcher is a grandchild (nobody has to reap it), holds none of ssh's descriptors
    and ends after at most `seconds`.
    """
    import select

    if sys.platform == "win32":
        raise NotImplementedError("POSIX only")
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            if os.fork() == 0:
                os.close(w)
                null = os.open(os.devnull, os.O_RDWR)
                for fd in (0, 1, 2):
                    os.dup2(null, fd)
                if select.select([r], [], [], seconds)[0] and not os.read(r, 1):
                    os.unlink(record)
        except BaseException:
            pass
        os._exit(0)
    os.close(r)
    os.waitpid(pid, 0)
    os.set_inheritable(w, True)
    return w


# --- one connect in progress ---------------------------------------------------------
class Session:
    """One `aws ssm start-session` child, its hand-off nonce and, when held, our ends of the pipes
    that stand for ssh's stdin and stdout until the key push has returned (see start_session)."""

    def __init__(self, proc: subprocess.Popen[bytes], nonce: bytes, to_aws: int = -1, from_aws: int = -1):
        self.proc, self.nonce, self.to_aws, self.from_aws = proc, nonce, to_aws, from_aws
        self.err = b""  # aws's stderr so far
        self.out = b""  # what a plugin run by aws printed while held

    def close_pipes(self) -> None:
        """Close our ends of the held pipes (a plugin run by aws then sees its stdin end)."""
        for fd in (self.to_aws, self.from_aws):
            if fd >= 0:
                try:
                    os.close(fd)
                except OSError:
                    pass
        self.to_aws = self.from_aws = -1


class ConnectRun:
    """One connect in progress: its plan, the processes it owns and what it has learnt."""

    def __init__(self, plan: ConnectPlan, aws: Aws, public_key: str, plugin: str):
        self.plan, self.aws, self.public_key, self.plugin = plan, aws, public_key, plugin
        self.procs = aws.procs
        self.watch = aws.procs.watch
        self.cache = PushCache(plan, public_key)
        self.deadline = time.monotonic() + plan.timeout
        handoff = handoff_wanted(plan.env)
        self.stand_in = stand_in_dir(plan.cache) if handoff else None
        self.pending: Session | None = None  # a session started beside a push still in flight
        self.session_started: float | None = None  # when ssh's bytes began to flow to a session
        self.reused_push = False
        self.held = ""  # refusal lines of the last session, shown if no retry succeeds
        self.poll_lock: FileLock | None = None  # held while this connect polls for the others
        self.doubted_at = 0.0  # when this connect last saw the instance not ready: older "Online" is stale

    def auth_doubt(self) -> bool:
        """True when a session on a reused key push ended so soon that ssh may have refused the key.

        ssh gives us no other sign of a failed login; forgetting costs one push.
        """
        started = self.session_started
        return self.reused_push and started is not None and time.monotonic() - started < AUTH_FAILURE_SECONDS

    def session_beside_push(self) -> bool:
        """May the session start while the key is pushed? Its bytes are held until the push has
        returned whoever runs the plugin, so only when a hand-off is possible (else we would relay
        the whole session), aws cannot ask on the terminal (two prompts at once) and no SSO token
        is due for a refresh (two refreshes at once)."""
        plan = self.plan
        if self.stand_in is None or may_prompt(plan.config, read_ini(plan.credentials_file) or {}, plan.profile):
            return False
        section = profile_section(plan.config, plan.profile)
        cache_file = sso_cache_file(plan.config, section) if section else None
        if not cache_file:
            return True
        token = read_json_file(os.path.join(os.path.expanduser("~"), ".aws", "sso", "cache", cache_file))
        return not sso_refresh_due(token if isinstance(token, dict) else None, time.time())

    def session_env(self, nonce: str) -> dict[str, str]:
        """aws's environment for the session: with the hand-off, our stand-in first on PATH."""
        env = {k: v for k, v in self.plan.env.items() if k not in STAND_IN_VARS}
        if self.stand_in is not None:
            env.update(
                CLOUDX_PROXY_HANDOFF=nonce, CLOUDX_PROXY_PLUGIN=self.plugin, CLOUDX_PROXY_PATH=env.get("PATH", "")
            )
            env["PATH"] = os.pathsep.join([self.stand_in, env.get("PATH", "")])
        return env


def start_session(run: ConnectRun, hold: bool) -> Session:
    """Start `aws ssm start-session`; ``hold``: on pipes of ours in place of ssh's stdin/stdout.

    A held session carries no byte of ssh's until run_session, which comes after the key push
    has returned: whoever runs the plugin (the stand-in's hand-off, or aws itself behind a
    wrapper that bypasses the stand-in), no SSH byte reaches the instance before the key.
    """
    import subprocess

    plan = run.plan
    nonce = "cloudx-proxy-handoff-" + os.urandom(8).hex()
    argv = build_session_argv(run.aws.path, plan.instance_id, plan.port, plan.profile, plan.region)
    if _VERBOSE:
        debug("run: " + quote_argv(argv))
    if not hold:
        return Session(run.procs.spawn(argv, run.session_env(nonce), stderr=subprocess.PIPE), nonce.encode())
    in_r, in_w = os.pipe()
    out_r, out_w = os.pipe()
    try:
        proc = run.procs.spawn(argv, run.session_env(nonce), stdin=in_r, stdout=out_w, stderr=subprocess.PIPE)
    except BaseException:
        for fd in (in_w, out_r):
            os.close(fd)
        raise
    finally:
        os.close(in_r)
        os.close(out_w)
    run.pending = Session(proc, nonce.encode(), in_w, out_r)
    return run.pending


def run_session(run: ConnectRun, session: Session | None = None) -> tuple[int, str | None]:
    """Start the session (unless started beside the push) and hand it to the plugin (no return then).

    Otherwise: (exit code, refusal code if StartSession refused before any byte).
    aws's stderr comes to us: the stand-in's record, or aws's error to recognise.
    A failed session forgets the key-push record.
    """
    log("Starting session...")
    session = session or start_session(run, hold=False)
    run.pending = None
    run.session_started = time.monotonic()
    held, refused = session_stderr(run, session)
    rc = run.procs.reap(session.proc)
    if (rc != 0 and not refused) or run.auth_doubt():  # a refusal says nothing of the key
        run.cache.forget()
    run.session_started = None
    if rc != 0 and refused:
        run.held = held
        return rc, refused
    _stderr_write(held)
    return rc, None


def session_stderr(run: ConnectRun, session: Session) -> tuple[str, str | None]:
    """Read aws's stderr until the stand-in's record (then hand off) or its end.

    Lines are passed on as they come (best effort: the session never depends on our stderr),
    except a StartSession refusal, which is held for the caller. A held session whose plugin
    aws runs itself (a first byte on its stdout) is relayed to ssh from then on.
    Returns (held lines, refusal code).
    """
    assert session.proc.stderr is not None
    fd, nonce = session.proc.stderr.fileno(), session.nonce
    shown, held, refused = 0, [], None
    while True:
        reads = [fd] + ([session.from_aws] if session.from_aws >= 0 else [])
        ready = run.watch.wait(reads, float("inf")) if run.watch is not None else [fd]
        if session.from_aws in ready:
            first = os.read(session.from_aws, 65536)
            if first:
                relay(run, session, first)  # aws runs the plugin: carry its bytes
            else:
                session.close_pipes()  # aws is gone without a plugin
            continue
        chunk = os.read(fd, 65536)
        session.err += chunk
        data = session.err
        record = data.find(b"\n" + nonce)
        if record >= 0:
            captured = parse_handoff(data, nonce)
            if captured is not None:
                _stderr_write(data[shown:record].decode("utf-8", "replace"))
                hand_off(run, session, *captured)
            if chunk:
                continue  # the record is coming: keep it until it is whole (it is never shown)
        visible = data if record < 0 else data[:record]
        end = len(visible) if not chunk else visible.rfind(b"\n", shown) + 1
        for raw in visible[shown:end].decode("utf-8", "replace").splitlines(keepends=True):
            m = SESSION_REFUSED_RE.search(raw)
            if m and m.group(1) in SESSION_REFUSALS:
                refused = m.group(1)
                held.append(raw)  # decided by the caller: checked and retried, or shown
            else:
                _stderr_write(raw)
        shown = max(shown, end)
        if not chunk:  # aws is done: it refused, failed, or ran the plugin itself
            session.proc.stderr.close()
            session.close_pipes()
            return "".join(held), refused


def relay(run: ConnectRun, session: Session, first: bytes) -> None:
    """Carry a held session's bytes between ssh and the plugin that aws runs itself (the rare
    path: a wrapper around aws that bypasses the stand-in) until the plugin's stdout ends."""
    import select

    assert session.proc.stderr is not None
    err, out = session.proc.stderr.fileno(), session.from_aws
    debug("aws runs the plugin itself (the stand-in was bypassed): relaying the session")
    reads = [0, out, err]
    try:
        _write_all(1, first)
        while out in reads:
            if run.watch is not None:
                run.watch.check()
            for fd in select.select(reads, [], [], SshWatch.TICK)[0]:
                data = os.read(fd, 65536)
                if not data:
                    reads.remove(fd)
                if fd == err:
                    _stderr_write(data.decode("utf-8", "replace"))
                elif fd == out:
                    _write_all(1, data)
                elif data and session.to_aws >= 0:
                    try:
                        _write_all(session.to_aws, data)
                    except OSError:  # the plugin stopped reading: its stdout ends soon
                        data = b""
                if fd == 0 and not data and session.to_aws >= 0:
                    os.close(session.to_aws)  # ssh is done writing: so is the plugin's stdin
                    session.to_aws = -1
    except BrokenPipeError:  # our stdout: ssh is gone
        raise ssh_gone("its pipe on our fd 1 closed") from None
    session.close_pipes()


def _write_all(fd: int, data: bytes) -> None:
    """Write every byte (blocking)."""
    while data:
        data = data[os.write(fd, data) :]


def _stderr_write(text: str) -> None:
    """Pass text to our stderr, best effort (a closed terminal, EPIPE, EAGAIN must not end a session)."""
    if not text:
        return
    try:
        sys.stderr.write(text)
        sys.stderr.flush()
    except (OSError, ValueError):
        pass


def hand_off(run: ConnectRun, session: Session, args: list[str], response: str) -> NoReturn:
    """Become the real session-manager-plugin, as aws would have run it (aws itself is stopped)."""
    session.proc.kill()  # the stand-in has answered; aws only waits to exit 0
    run.procs.reap(session.proc)
    session.close_pipes()
    run.procs.stop_all()  # nothing else is left; the guard ends
    keep = watch_auth(run.cache.path, AUTH_FAILURE_SECONDS) if run.reused_push and run.cache.path else None
    as_aws_child(run.watch, keep)
    debug(f"handing the session to {run.plugin}")
    try:
        os.execve(run.plugin, [run.plugin, *args], plugin_env(run.plan.env, args, response))
    except OSError as e:
        if keep is not None:
            os.close(keep)
        terminate_session(run, session_id_of(args, response))
        raise CloudxError(f"cannot run {run.plugin}: {e.strerror or e}", PLUGIN_INSTALL_HINT) from None


def as_aws_child(watch: SshWatch | None, keep: int | None) -> None:
    """Leave this process as aws's Popen leaves the plugin it runs (POSIX), before the exec.

    Signals: SIGPIPE and SIGXFSZ at their defaults (Python ignores both at start-up; Popen's
    restore_signals puts them back); SIGHUP and SIGTERM as ssh gave them to us (the handlers
    were ours alone); SIGINT, SIGQUIT and SIGTSTP ignored (aws ignores the terminal's keys while
    its plugin runs). The mask is untouched: aws passes its own on, which is ours. Descriptors:
    Popen closes every one above 2 (close_fds), so each is marked close-on-exec, but ``keep``,
    the auth watcher's pipe (its closing when the plugin ends is the watcher's signal).
    """
    import signal

    if sys.platform == "win32":
        return
    for sig in (signal.SIGPIPE, signal.SIGXFSZ):
        signal.signal(sig, signal.SIG_DFL)
    for signum, was in (watch.inherited if watch is not None else {}).items():
        signal.signal(signum, was if was is not None else signal.SIG_DFL)
    for sig in (signal.SIGINT, signal.SIGQUIT, signal.SIGTSTP):
        signal.signal(sig, signal.SIG_IGN)
    fd_dir = "/proc/self/fd" if os.path.isdir("/proc/self/fd") else "/dev/fd"
    try:
        fds = [int(name) for name in os.listdir(fd_dir) if name.isdigit()]
    except OSError:
        fds = list(range(3, min(os.sysconf("SC_OPEN_MAX"), 65536)))
    for fd in fds:
        if fd > 2 and fd != keep:
            try:
                os.set_inheritable(fd, False)
            except OSError:
                pass  # not open (the listing's own descriptor, or one of the fallback's range)


def terminate_session(run: ConnectRun, sid: str | None) -> None:
    """End a session that no plugin will carry: TerminateSession, best effort and bounded, ssh or not."""
    if not sid:
        return
    procs = ProcessSet(guard=run.procs.guard)  # no watch: this must run when ssh is already gone
    aws = Aws(run.aws.path, run.plan.profile, run.plan.region, run.aws.env, run.plan.instance_id, procs)
    try:
        aws(["ssm", "terminate-session", "--session-id", sid], timeout=TERMINATE_SECONDS)
        debug(f"session {sid} terminated")
    except CloudxError as e:
        debug(f"terminate-session {sid}: {e.message}")


def settle_session(run: ConnectRun) -> None:
    """The session started beside a push that failed, or beside a connect that ends otherwise: see
    what aws did with it (the stand-in's record, a plugin's first line, or an exit), stop aws,
    and terminate the session if StartSession opened one. SIGHUP and SIGTERM wait till the end."""
    import select

    session = run.pending
    if session is None:
        return
    with HeldSignals():
        assert session.proc.stderr is not None
        err = session.proc.stderr.fileno()
        reads = [fd for fd in (err, session.from_aws) if fd >= 0]
        deadline, sid = time.monotonic() + SETTLE_SECONDS, None
        while reads and sid is None and time.monotonic() < deadline:
            for fd in select.select(reads, [], [], max(0.0, deadline - time.monotonic()))[0]:
                data = os.read(fd, 65536)
                if not data:
                    reads.remove(fd)
                elif fd == err:
                    session.err += data
                else:
                    session.out += data
            captured = parse_handoff(session.err, session.nonce)
            sid = session_id_of(*captured) if captured else plugin_session_id(session.out)
        session.close_pipes()
        run.procs.stop(session.proc, grace=0.2)
        run.pending = None
        if reads and sid is None:
            debug("the session started beside the push did not show what it did in time")
        terminate_session(run, sid)


# --- the connect: warm path first, cold path when the instance is not ready ------------
def connect_dry_run(plan: ConnectPlan) -> int:
    """Print each step and the exact commands a connect would run; call nothing."""
    aws, _ = find_program("aws", plan.env.get("PATH"))
    plugin, _ = find_program("session-manager-plugin", plan.env.get("PATH"))
    aws_cmd = aws or "aws"
    tool = Aws(aws_cmd, plan.profile, plan.region, dict(plan.env), plan.instance_id)
    try:
        public_key, key = read_public_key(plan.pub_path), f"{plan.pub_path} (found)"
    except CloudxError as e:
        public_key, key = f"<{plan.pub_path}>", f"{plan.pub_path} ({e.message})"
    handoff = handoff_wanted(plan.env) and plan.cache
    session = (
        f"through a stand-in in {stand_in_path(plan.cache)}, then this process becomes the plugin"
        if handoff
        else "aws runs the plugin and this process waits for it"
    )
    steps = [
        f"[dry run] connect {plan.instance_id} port {plan.port}",
        f"[dry run] profile {plan.profile}, region {plan.region} (from {plan.region_source}), "
        f"AWS config {plan.config_file}",
        f"[dry run] public key {key}, pushed for user {plan.user}",
        f"[dry run] aws: {aws or 'not found'}; session-manager-plugin: {plugin or 'not found'}",
        f"[dry run] key push record: {PushCache(plan, public_key).path or 'none (no usable cache directory)'}",
        "[dry run] 1. push the key (only a running instance accepts it); if it is accepted, the session (3.):",
        "    " + quote_argv(tool.argv(aws_push_key_args(plan.instance_id, plan.user, public_key))),
        "[dry run] 2. if the instance is not running, or the session is refused: start it if stopped, then "
        f"wait for SSM PingStatus Online (polls from {ONLINE_EARLIEST_SECONDS:.0f} s after the start about every "
        f"{POLL_SECONDS:.0f} s, up to {plan.timeout:.0f} s in all):",
        "    " + quote_argv(tool.argv(aws_start_args(plan.instance_id))),
        "    " + quote_argv(tool.argv(aws_ssm_status_args(plan.instance_id))),
        f"[dry run] 3. the session on stdin/stdout ({session}):",
        "    " + quote_argv(build_session_argv(aws_cmd, plan.instance_id, plan.port, plan.profile, plan.region)),
    ]
    for line in steps:
        print(line, file=sys.stderr)
    return EXIT_OK


def cmd_connect(args: argparse.Namespace) -> int:
    """ProxyCommand entry: get the instance running and online, push the key, start the session."""
    plan = plan_connect(args, os.environ)
    if args.dry_run:
        return connect_dry_run(plan)
    check_profile(plan)
    public_key = read_public_key(plan.pub_path)
    aws_path, plugin = locate_tools(plan.env, plan.cache)
    procs = ProcessSet()
    run: ConnectRun | None = None
    try:
        if sys.platform != "win32":
            procs.watch, procs.guard = SshWatch(), Guard()  # from here on SIGHUP/SIGTERM are SshGone
        run = ConnectRun(
            plan, Aws(aws_path, plan.profile, plan.region, plan.env, plan.instance_id, procs), public_key, plugin
        )
        return connect(run)
    except SshGone as gone:
        debug(f"ssh went away ({gone}): every process of this connect stopped")
        if run is None or run.session_started is None:
            return EXIT_ERROR
        if run.auth_doubt():
            run.cache.forget()
        return EXIT_OK  # during a session: ssh's normal goodbye
    finally:
        ignore_hangups()  # on the way out, whatever comes: the clean-up runs to its end
        if run is not None:
            settle_session(run)
        procs.stop_all()


def connect(run: ConnectRun) -> int:
    """A reused key push or a fresh one, then the session; the cold path when the instance is not ready.

    The push is the check: EC2 Instance Connect accepts a key only from a running
    instance, and a target that is not Online refuses the session before it
    carries any byte. Either refusal sends the connect down the cold path.
    """
    plan = run.plan
    if run.cache.fresh():
        debug("key pushed moments ago for this instance: reusing it")
        run.reused_push = True
        rc, refused = run_session(run)
        if refused is None:
            return rc
        run.reused_push = False
        debug(f"StartSession refused ({refused}) despite a recent key push: checking the instance")
    log("Pushing SSH key...")
    pushed_at = time.time()
    # On the warm path both are needed: the session starts beside the push, held until the
    # push has returned (session_beside_push), else right after it.
    session = start_session(run, hold=True) if run.session_beside_push() else None
    try:
        run.aws(aws_push_key_args(plan.instance_id, plan.user, run.public_key))
        key_pushed: float | None = pushed_at
    except CloudxError as e:
        if e.code != "EC2InstanceStateInvalidException":
            settle_session(run)  # no plugin will carry what it opened
            raise
        debug(f"key push refused: {e.message}")
        key_pushed = None
    if key_pushed is not None:
        debug("key push ok")
        run.cache.record(key_pushed)
        rc, refused = run_session(run, session)
        if refused is None:
            return rc
        debug(f"StartSession refused ({refused}): waiting for the instance")
        run.doubted_at = time.time()
        launched, started = None, False
    else:
        run.doubted_at = pushed_at
        launched, started = ensure_started(run.aws, plan, run.deadline, pushed_at)
        # Not before the start: the session beside the push has been refused by now (a target that
        # is not running is not Online), and waiting for its aws to say so would delay the start.
        settle_session(run)
    key_pushed = wait_until_online(run, key_pushed, launched, started)
    while True:
        rc, refused = run_session(run)
        if refused is None:
            return rc
        if time.monotonic() >= run.deadline:
            _stderr_write(run.held)
            raise CloudxError("the SSM agent on the instance did not accept the session in time", VSCODE_TIMEOUT_HINT)
        # Right after boot the agent can drop for a moment; check (and re-push) before trying again.
        debug(f"StartSession refused ({refused}); checking again before a retry")
        key_pushed = wait_until_online(run, key_pushed, None, started, verify=True)


# --- the cold path: start the instance once, share one poller ---------------------------
def _start_lock(plan: ConnectPlan, name: str, deadline: float, procs: ProcessSet) -> FileLock | None:
    """Take a per-instance lock in our cache (None without a usable cache: connect goes on alone);
    the wait for it ends when ssh goes (procs' watch)."""
    if not plan.cache:
        return None
    try:
        ensure_private_dir(plan.cache)
        path = os.path.join(plan.cache, f"{name}-{plan.region}-{plan.instance_id}")
        return FileLock(path, deadline, procs.sleep).__enter__()
    except OSError as e:
        debug(f"no {name} lock ({e}); going on without it")
        return None


def _marker_age(path: str) -> float:
    """Seconds since a marker file was written (-1 if absent)."""
    try:
        return time.time() - os.path.getmtime(path)
    except OSError:
        return -1.0


def _touch(path: str) -> None:
    """Write an empty marker file (best effort)."""
    try:
        with open(path, "w", encoding="utf-8"):
            pass
    except OSError as e:
        debug(f"cannot write {path}: {e}")


def ensure_started(
    aws: Aws, plan: ConnectPlan, deadline: float, seen_at: float, grace: float = START_MARKER_SECONDS
) -> tuple[float | None, bool]:
    """Start the instance unless another connect just did: (when it was started, None if unknown;
    True if this process started it).

    A lock per instance makes concurrent connects call StartInstances once: the
    first records a marker, the others see it and only wait. A marker counts
    when written after ``seen_at - grace`` (we saw the instance not running at
    ``seen_at``): an older start may have been undone by a stop since. So is
    one followed by an ``Online`` seen before ``seen_at``: that start was over.
    """
    iid = plan.instance_id
    marker = os.path.join(plan.cache, f"started-{plan.region}-{iid}") if plan.cache else ""
    lock = _start_lock(plan, "lock", deadline, aws.procs)
    try:
        now, age = time.time(), _marker_age(marker) if lock else -1.0
        online_age = _marker_age(os.path.join(plan.cache, f"online-{plan.region}-{iid}")) if lock else -1.0
        over = 0 <= online_age <= age and now - online_age <= seen_at
        if age >= 0 and now - age >= seen_at - grace and not over:
            log(f"Instance {iid} is being started by another connection; waiting...")
            return now - age, False
        launched = _start(aws, plan, deadline, marker if lock else "")
        return launched, launched is not None
    finally:
        if lock:
            lock.__exit__()


def _start(aws: Aws, plan: ConnectPlan, deadline: float, marker: str) -> float | None:
    """StartInstances (waiting out a stop in progress); when we started it, None if it was already starting."""
    iid = plan.instance_id
    while True:
        round_start = time.monotonic()
        try:
            previous = parse_previous_state(aws(aws_start_args(iid)))
        except CloudxError as e:
            if e.code != "IncorrectInstanceState":
                raise
            try:
                state = aws_instance_state(aws, iid)
            except CloudxError as denied:
                if not is_denied(denied):
                    raise
                # Without ec2:DescribeInstances (the reference's minimal policy)
                # all we know is that it cannot be started yet: try again.
                debug("describe-instances denied; retrying start-instances")
                _pace(aws, round_start, deadline, f"starting {iid}: it is not in a state from which it can be started")
                continue
            if state in ("terminated", "shutting-down"):
                raise CloudxError(f"instance {iid} is {state}", "it cannot be started; use another instance") from None
            if state == "stopping":
                log(f"Instance {iid} is stopping; it will be started once stopped...")
                wait_for_state(aws, plan, deadline, "stopped")
                continue
            if state == "stopped":  # the stop ended between the two calls: start it now
                _pace(aws, round_start, deadline, f"starting {iid}: it was refused while it stopped")
                continue
            if state in ("pending", "running"):
                return None
            raise
        if previous == "stopped":
            if marker:
                _touch(marker)
            log(f"Starting instance {iid}...")
            return time.time()
        debug(f"start-instances: instance was {previous}")
        return None


def is_denied(error: CloudxError) -> bool:
    """True for an AWS permission refusal."""
    return bool(error.code) and ("AccessDenied" in str(error.code) or error.code == "UnauthorizedOperation")


def wait_for_state(aws: Aws, plan: ConnectPlan, deadline: float, wanted: str) -> None:
    """Poll describe-instances until the instance reaches a state, within the deadline."""
    while True:
        round_start = time.monotonic()
        state = aws_instance_state(aws, plan.instance_id)
        if state == wanted:
            return
        if state in ("terminated", "shutting-down"):
            raise CloudxError(f"instance {plan.instance_id} is {state}")
        _pace(aws, round_start, deadline, f"waiting for instance {plan.instance_id} to be {wanted} (it is {state})")


def _pace(aws: Aws, round_start: float, deadline: float, what: str, hint: str = VSCODE_TIMEOUT_HINT) -> None:
    """End a poll round: fail past the deadline, else sleep until the next is due (POLL_SECONDS after this one)."""
    if time.monotonic() >= deadline:
        raise CloudxError(f"timed out {what}", hint)
    aws.procs.sleep(min(round_start + POLL_SECONDS, deadline) - time.monotonic())


def next_round_at(now: float, launched: float | None, last: float | None) -> float:
    """When the next poll round of the cold wait is due (time.time() values; pure).

    A young instance (launched less than ONLINE_EARLIEST_SECONDS ago) is looked
    at only at YOUNG_POLL_AGES; then every POLL_SECONDS. An unknown launch time
    counts as old.
    """
    if launched is None:
        return now if last is None else max(now, last + POLL_SECONDS)
    after = (now if last is None else max(now, last + 1.0)) - launched
    for age in YOUNG_POLL_AGES:
        if age >= after:
            return launched + age
    steps = max(0, -int(-(after - ONLINE_EARLIEST_SECONDS) // POLL_SECONDS))
    return max(now, launched + ONLINE_EARLIEST_SECONDS + steps * POLL_SECONDS)


def shared_online(run: ConnectRun, key_pushed: float | None) -> float | None:
    """Wait for the connect that polls this instance; if it saw Online just now, our key push time.

    Connects waiting for one instance share one poller: the others wait for the
    per-instance lock, then use its result (a refused session still checks again).
    None means: poll ourselves (the lock is then held by the caller via run.poll_lock).
    """
    plan = run.plan
    lock = _start_lock(plan, "wait", run.deadline, run.procs)
    run.poll_lock = lock
    if lock is None:
        return None
    age = _marker_age(os.path.join(plan.cache, f"online-{plan.region}-{plan.instance_id}"))
    if not 0 <= age < ONLINE_SHARE_SECONDS or time.time() - age < run.doubted_at:
        return None  # none, old, or older than what this connect saw (not running, a refused session)
    lock.__exit__()
    run.poll_lock = None
    debug(f"another connect saw the instance Online {age:.1f} s ago")
    recorded = run.cache.pushed_at()  # the poller pushes for the same user and key too
    if recorded is not None and (key_pushed is None or recorded > key_pushed):
        key_pushed = recorded
    if key_pushed is not None and time.time() - key_pushed < PUSH_REFRESH_SECONDS:
        return key_pushed
    pushed_at = time.time()
    try:
        run.aws(aws_push_key_args(plan.instance_id, plan.user, run.public_key))
    except CloudxError as e:
        if e.code != "EC2InstanceStateInvalidException":
            raise
        return None  # not running after all: poll
    run.cache.record(pushed_at)
    return pushed_at


def wait_until_online(
    run: ConnectRun, key_pushed: float | None, launched: float | None, started: bool, verify: bool = False
) -> float:
    """Poll until SSM says Online with a fresh key pushed; returns when the key was pushed.

    ``launched``: when the instance was started (time.time()), None if unknown;
    ``started``: this process started it.
    ``verify`` (before a retry) pushes in the first round whatever the key's age:
    only a running instance accepts it.
    """
    try:
        if not verify:
            log("Waiting for SSM connectivity...")
            shared = shared_online(run, key_pushed)
            if shared is not None:
                return shared
        return Poll(run, key_pushed, launched, started, verify).until_online()
    finally:
        if run.poll_lock is not None:
            run.poll_lock.__exit__()
            run.poll_lock = None


class Poll:
    """The cold wait's poll rounds: what is known of the instance, and what each round asks.

    While the instance is not known to run, a round pushes the key (the push is
    the state probe: only a running instance accepts it); once it runs, a round
    asks SSM, and pushes again when the key is PUSH_REFRESH_SECONDS old. Now
    and then, and when a push is refused after one was accepted, EC2 is asked
    for the state (a stop ends the wait).
    """

    def __init__(self, run: ConnectRun, key_pushed: float | None, launched: float | None, started: bool, probe: bool):
        self.run, self.key_pushed, self.launched, self.probe = run, key_pushed, launched, probe
        self.started = started  # by this process: a stop then ends the wait
        self.running = key_pushed is not None and not probe
        self.status = "NotRegistered"
        self.state = "running" if self.running else "not running"
        self.checked = time.time()  # when EC2's state was last looked at (or the instance started)
        self.recheck = False  # a refused push after an accepted one: ask EC2 why
        self.can_describe = True  # the reference's minimal policy has no ec2:DescribeInstances
        self.restarted = False

    def calls(self) -> dict[str, list[str]]:
        """What this round asks."""
        plan, iid = self.run.plan, self.run.plan.instance_id
        calls: dict[str, list[str]] = {}
        stale = self.key_pushed is None or time.time() - self.key_pushed > PUSH_REFRESH_SECONDS
        if not self.running or stale or self.probe:
            calls["push"] = aws_push_key_args(iid, plan.user, self.run.public_key)
        if self.running:
            calls["ssm"] = aws_ssm_status_args(iid)
        elif self.can_describe and (self.recheck or time.time() - self.checked > STATE_RECHECK_SECONDS):
            calls["ec2"] = aws_describe_args(iid)
        self.probe = False
        return calls

    def until_online(self) -> float:
        """Poll rounds until SSM says Online with a key pushed; when the key was pushed."""
        run, iid = self.run, self.run.plan.instance_id
        due = time.time() if self.probe else next_round_at(time.time(), self.launched, None)
        while True:
            run.procs.sleep(due - AWS_STARTUP_SECONDS - time.time())
            sent = time.time()
            was_running = self.running
            self.take(run.aws.many(self.calls()), sent)
            debug(f"EC2 {self.state}, SSM PingStatus {self.status}")
            if self.running and self.status == "Online" and self.key_pushed is not None:
                if run.plan.cache and run.poll_lock is not None:
                    _touch(os.path.join(run.plan.cache, f"online-{run.plan.region}-{iid}"))
                return self.key_pushed
            if time.monotonic() >= run.deadline:
                hint = VSCODE_TIMEOUT_HINT if self.started else SSM_AGENT_HINT
                what = f"{iid} to be Online in SSM (EC2 {self.state}, SSM {self.status})"
                raise CloudxError(f"timed out after {run.plan.timeout:.0f} s waiting for {what}", hint)
            last = time.time()
            # It just turned out to run: ask SSM at once.
            due = last if self.running and not was_running else next_round_at(last, self.launched, last)
            due = min(due, time.time() + max(0.0, run.deadline - time.monotonic()))

    def take(self, results: dict[str, Any], sent: float) -> None:
        """Learn from one round's answers (a stop, or another failure, raises)."""
        if "ec2" in results:
            self.take_state(results["ec2"])
        if "push" in results:
            pushed = results["push"]
            if isinstance(pushed, CloudxError):
                if pushed.code != "EC2InstanceStateInvalidException":
                    raise pushed
                self.recheck = self.running  # it ran, and now refuses: ask EC2 why
                self.running, self.state = False, "not running"
            else:
                self.key_pushed, self.running, self.state = sent, True, "running"
                self.checked = time.time()
                self.run.cache.record(sent)
        if "ssm" in results:
            ssm = results["ssm"]
            if isinstance(ssm, CloudxError):
                raise ssm
            self.status = parse_ping_status(ssm, self.run.plan.instance_id)

    def take_state(self, described: Any) -> None:
        """Learn from describe-instances: a stopped instance is started once more, a gone one ends the wait."""
        run, iid = self.run, self.run.plan.instance_id
        self.checked, self.recheck = time.time(), False
        if isinstance(described, CloudxError) and is_denied(described):
            debug("describe-instances denied: following the key push and SSM alone")
            self.can_describe = False
            return
        if isinstance(described, CloudxError):
            raise described
        self.state = parse_instance_state(described, iid) or "missing"
        if self.state == "stopped" and not self.started and not self.restarted:
            self.restarted = True  # another connect's start did not take: start it ourselves
            self.launched, self.started = ensure_started(run.aws, run.plan, run.deadline, time.time(), grace=0.0)
            return
        if self.state in ("stopped", "stopping", "terminated", "shutting-down", "missing"):
            raise CloudxError(
                f"instance {iid} became {self.state} while waiting for it to start",
                "check the instance in the EC2 console (something stopped it), then connect again",
            )


# ---------------------------------------------------------------------------
# setup
# ---------------------------------------------------------------------------
class Setup:
    """Setup's validated choices and the I/O helpers its steps share."""

    def __init__(self, args: argparse.Namespace, environ: Mapping[str, str]):
        home = os.path.expanduser("~")
        self.home = home
        # A legacy ~/.ssh/vscode setup (no ~/.ssh/cloudX): its hosts' flag-less ProxyCommands use
        # connect's defaults (profile and key 'vscode' there), which creating ~/.ssh/cloudX would
        # change. Work in the vscode directory then, with its defaults, as the reference does.
        legacy = os.path.join(home, ".ssh", "vscode")
        self.legacy = (
            args.ssh_dir is None
            and args.ssh_config is None
            and os.path.isdir(legacy)
            and not os.path.exists(os.path.join(home, ".ssh", "cloudX"))
        )
        default_name = "vscode" if self.legacy else "cloudX"
        self.profile = validate_name("profile", args.profile if args.profile is not None else default_name)
        self.key = validate_name("ssh key name", args.ssh_key if args.ssh_key is not None else default_name)
        # As the original: the command name (or --ssh-host-prefix) picks the spelling, not the spelling the
        # config has. Every wildcard line setup owns leads with it (lead_spelling); new hosts are named with it.
        prefix = args.ssh_host_prefix if args.ssh_host_prefix is not None else default_host_prefix(sys.argv[0])
        self.prefix = validate_host_part("--ssh-host-prefix", prefix)
        self.hostname = validate_host_part("hostname", args.hostname) if args.hostname is not None else None
        self.environment = validate_host_part("environment", args.environment) if args.environment is not None else None
        self.instance = args.instance
        if self.instance is not None and (
            self.instance.startswith("i-") or not self.instance or is_instance_id(self.instance)
        ):
            self.instance = validate_instance_id(self.instance)
        elif self.instance is not None and (len(self.instance) > 255 or any(c in self.instance for c in "\0\r\n")):
            raise usage_error(f"invalid --instance {self.instance!r}: expected an instance id or a Name tag")
        for name in ("ssh_dir", "ssh_config"):
            if getattr(args, name) is not None:
                validate_path("--" + name.replace("_", "-"), getattr(args, name))
        if args.ssh_dir is not None:
            self.ssh_dir = os.path.abspath(os.path.expanduser(args.ssh_dir))
        elif args.ssh_config is not None:
            self.ssh_dir = os.path.dirname(os.path.abspath(os.path.expanduser(args.ssh_config)))
        else:
            self.ssh_dir = legacy if self.legacy else os.path.join(home, ".ssh", "cloudX")
        if args.ssh_config is not None:
            self.ssh_config = os.path.abspath(os.path.expanduser(args.ssh_config))
        else:
            self.ssh_config = os.path.join(self.ssh_dir, "config")
        self.adopted: list[str] = []  # what setup took over from PyPI cloudx-proxy, for the summary
        self.key_path = os.path.join(self.ssh_dir, self.key)
        # The resolved paths (HOME included) are what goes into the config lines.
        validate_config_path("--ssh-dir", self.key_path)
        validate_config_path("--ssh-config", self.ssh_config, include=True)
        self.yes, self.dry_run = bool(args.yes), bool(args.dry_run)
        self.op_vault: str | None = args.op_vault
        if self.op_vault is not None and self.op_vault.lower() == "true":
            self.op_vault = "Private"  # as the reference: '--1password true' is the default vault
        if self.op_vault is not None and (
            not self.op_vault.strip() or len(self.op_vault) > 100 or any(c in self.op_vault for c in "\0\r\n/")
        ):
            raise usage_error(f"invalid 1Password vault {self.op_vault!r}")
        self.env = dict(environ)
        self.aws_env = validate_name("aws-env", args.aws_env) if args.aws_env is not None else None
        if self.aws_env:
            use_aws_env(self.env, self.aws_env, home)
        self.cache = cache_dir(environ, home)
        self.windows = sys.platform == "win32"
        self.when = time.strftime("%Y-%m-%d %H:%M:%S")
        self._aws: Aws | None = None

    def aws(self) -> Aws:
        """The aws runner for the profile, with the region resolved as connect does."""
        if self._aws is None:
            aws_path = require_aws(self.env)
            config_file = os.path.expanduser(
                self.env.get("AWS_CONFIG_FILE") or os.path.join(self.home, ".aws", "config")
            )
            section = profile_section(read_ini(config_file) or {}, self.profile)
            region, _ = resolve_region(None, self.env, section)
            self._aws = Aws(aws_path, self.profile, validate_region(region), self.env)
        return self._aws

    def ask(self, question: str, default: str) -> str:
        """Ask on stderr, read a line from stdin; --yes takes the default."""
        if self.yes:
            return default
        print(f"{question} [{default}]: ", end="", file=sys.stderr, flush=True)
        line = sys.stdin.readline()
        if not line:
            raise usage_error("no answer (standard input is closed)", "pass the values as options and add --yes")
        return line.strip() or default

    def step(self, text: str) -> None:
        """A progress heading on stderr."""
        log(text)


def default_host_prefix(argv0: str) -> str:
    """The host prefix the command name implies, as in the reference.

    cloudx-proxy gives 'cloudx', cloudX-proxy (and the zipapp, the module) 'cloudX';
    the stem is compared so that cloudX-proxy.exe on Windows counts.
    """
    return "cloudx" if os.path.splitext(os.path.basename(argv0))[0] == "cloudx-proxy" else "cloudX"


# --- setup: a stable copy of this program for the ProxyCommand ------------------
# The zipapp that build_zipapp.py writes and setup installs when it runs from a cache:
# a shebang, this __main__.py and the module, with fixed timestamps and modes, so the
# same source always gives the same bytes.
ZIPAPP_SHEBANG = b"#!/usr/bin/env python3\n"
ZIPAPP_DATE = (1980, 1, 6, 0, 0, 0)  # inside the ZIP date range
# zipimport cannot cache bytecode, so importing the module from the archive
# would compile it on every start (tens of milliseconds on a ProxyCommand's
# path). This __main__ compiles it once per interpreter and keeps the code in
# the user's cache dir, keyed by the bytecode magic number and the sha256 of
# the source (written in here at build time, so nothing is hashed at start-up).
# The cache dir is someone else's if another user owns it or can write to it:
# then nothing there is read or written and the code is compiled in memory.
# Every file is opened relative to the checked directory's descriptor without
# following symlinks, and checked with fstat; an entry that is not code is
# deleted and compiled afresh.
ZIPAPP_MAIN = '''"""Run cloudx_proxy from this zipapp, with its bytecode cached per interpreter and source."""
import sys

# First, in code any Python from 2.7 on runs: an older interpreter gets one clear line, not a traceback.
if sys.version_info < (3, 9):
    sys.stderr.write(
        "cloudx-proxy: error: this needs Python 3.9 or newer, found Python %s at %s"
        " (hint: run it with a newer python3, e.g. python3.12 %s)\\n"
        % (".".join(str(n) for n in sys.version_info[:3]), sys.executable or "?", sys.argv[0])
    )
    sys.exit(2)

import marshal
import os

SOURCE_SHA256 = "@SOURCE_SHA256@"
HEADER = b"cloudx-proxy bytecode\\n"
NOFOLLOW = getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_BINARY", 0)  # O_BINARY: Windows would translate newlines
AT = os.name != "nt" and os.open in os.supports_dir_fd and os.listdir in os.supports_fd


def _note(msg):
    if "-v" in sys.argv[1:] or "--verbose" in sys.argv[1:]:
        sys.stderr.write("cloudx-proxy: debug: bytecode cache: %s\\n" % msg)


def _cache_dir():
    if os.name == "nt" and os.environ.get("LOCALAPPDATA"):
        return os.path.join(os.environ["LOCALAPPDATA"], "cloudx-proxy")
    base = os.environ.get("XDG_CACHE_HOME", "")
    if not os.path.isabs(base):  # the XDG rule: a relative path is ignored
        base = os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "cloudx-proxy")


def _magic():
    try:
        import _frozen_importlib_external  # loaded at start-up already: importlib.util costs time

        return _frozen_importlib_external.MAGIC_NUMBER
    except (ImportError, AttributeError):
        import importlib.util

        return importlib.util.MAGIC_NUMBER


def _why_not(st, what):
    if os.name == "nt":
        return None
    if st.st_uid != os.getuid():
        return "%s is owned by uid %d, not by us" % (what, st.st_uid)
    if st.st_mode & 0o022:
        return "%s is writable by others (mode %o)" % (what, st.st_mode & 0o777)
    return None


def _open_cache(path):
    """A descriptor of the cache dir if it is ours and private, None (Windows: use paths), or -1 (do not use)."""
    if not AT:
        if os.name != "nt":
            _note("no *at() calls to check %s safely: compiling in memory" % path)
            return -1
        try:
            os.makedirs(path, mode=0o700, exist_ok=True)
            return None
        except OSError as e:
            _note("cannot create %s (%s)" % (path, e))
            return -1
    flags = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0)
    try:
        os.makedirs(path, mode=0o700, exist_ok=True)
        link = os.lstat(path)
        if link.st_uid != os.getuid():
            _note("%s is owned by uid %d, not by us: compiling in memory" % (path, link.st_uid))
            return -1
        fd = os.open(path, flags)  # a symlink of ours is followed; what it points at is checked below
    except OSError as e:
        _note("cannot use %s (%s): compiling in memory" % (path, e))
        return -1
    why = _why_not(os.fstat(fd), path)
    if why:
        os.close(fd)
        _note(why + ": compiling in memory")
        return -1
    return fd


def _drop(dfd, cache, name):
    try:
        os.unlink(name if dfd is not None else os.path.join(cache, name), dir_fd=dfd)
    except OSError:
        pass


def _read(dfd, cache, name, header):
    try:
        flags = os.O_RDONLY | NOFOLLOW | getattr(os, "O_NONBLOCK", 0)  # a FIFO must not block us
        fd = os.open(name if dfd is not None else os.path.join(cache, name), flags, dir_fd=dfd)
    except FileNotFoundError:
        return None
    except OSError as e:
        _note("cannot open %s (%s): replacing it" % (name, e))
        _drop(dfd, cache, name)
        return None
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(f.fileno())
        why = _why_not(st, name) or (None if (st.st_mode & 0o170000) == 0o100000 else name + " is not a file")
        data = f.read() if not why else b""
    code = None
    if not why and data.startswith(header):
        try:
            code = marshal.loads(data[len(header):])
        except (ValueError, EOFError, TypeError):
            code = None
    if type(code) is not type(_read.__code__):
        _note("%s: %s: replacing it" % (name, why or "not code for this source"))
        _drop(dfd, cache, name)
        return None
    return code


def _write(dfd, cache, name, header, code, stems):
    tmp = "%s.%d.tmp" % (name, os.getpid())
    where = (lambda n: n) if dfd is not None else (lambda n: os.path.join(cache, n))
    try:
        for old in os.listdir(dfd if dfd is not None else cache):
            if old != name and old.startswith(stems):
                _drop(dfd, cache, old)
        fd = os.open(where(tmp), os.O_WRONLY | os.O_CREAT | os.O_EXCL | NOFOLLOW, 0o600, dir_fd=dfd)
        with os.fdopen(fd, "wb") as f:
            f.write(header + marshal.dumps(code))
        os.replace(where(tmp), where(name), src_dir_fd=dfd, dst_dir_fd=dfd)
    except OSError as e:
        _note("cannot write %s (%s)" % (name, e))
        _drop(dfd, cache, tmp)


def _load():
    archive = os.path.dirname(os.path.abspath(__file__))
    filename = os.path.join(archive, "cloudx_proxy.py")
    magic = _magic()
    header = HEADER + magic + SOURCE_SHA256.encode("ascii") + b"\\n"
    stem = "code-%s-" % magic.hex()
    name = "%s%s.bin" % (stem, SOURCE_SHA256[:32])
    cache = _cache_dir()
    dfd = _open_cache(cache)
    code = _read(dfd, cache, name, header) if dfd != -1 else None
    if code is None:
        code = compile(__loader__.get_data(filename), filename, "exec")
        if dfd != -1:
            # older entries of this interpreter, and those of the earlier cache_tag-keyed format
            _write(dfd, cache, name, header, code, (stem, "code-%s-" % sys.implementation.cache_tag))
    if dfd is not None and dfd >= 0:
        os.close(dfd)
    module = type(sys)("cloudx_proxy")
    module.__file__ = filename
    sys.modules["cloudx_proxy"] = module
    exec(code, module.__dict__)
    return module


_load().run()
'''


def render_zipapp(source: str) -> bytes:
    """The zipapp of a module source: shebang, __main__.py and cloudx_proxy.py; the same bytes for the same source."""
    import hashlib
    import io
    import zipfile

    data = source.encode("utf-8")
    main = ZIPAPP_MAIN.replace("@SOURCE_SHA256@", hashlib.sha256(data).hexdigest()).encode("utf-8")
    out = io.BytesIO()
    out.write(ZIPAPP_SHEBANG)
    with zipfile.ZipFile(out, "w") as archive:
        for name, content in (("__main__.py", main), ("cloudx_proxy.py", data)):
            info = zipfile.ZipInfo(name, date_time=ZIPAPP_DATE)
            info.external_attr = 0o100644 << 16  # a regular file, rw-r--r--
            info.create_system = 3  # Unix, wherever it is built
            info.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(info, content)
    return out.getvalue()


def running_source() -> str:
    """The source of the running program: this module's file, or its entry in the zipapp it runs from."""
    path = os.path.abspath(__file__)
    archive = os.path.dirname(path)
    if os.path.isfile(archive):  # __file__ is archive/cloudx_proxy.py inside a zipapp
        import zipfile

        with zipfile.ZipFile(archive) as z:
            return z.read(os.path.basename(path)).decode("utf-8")
    with open(path, encoding="utf-8") as f:
        return f.read()


def program_argv() -> list[str]:
    """How to run this program again from a ProxyCommand: the way the user runs it now."""
    arg0 = os.path.abspath(sys.argv[0]) if sys.argv and sys.argv[0] else ""
    if arg0.endswith(".pyz") or (os.path.isfile(arg0) and not arg0.endswith(".py") and _is_zip(arg0)):
        return [sys.executable, arg0]
    if os.path.splitext(os.path.basename(arg0))[0].lower() == "cloudx-proxy":
        return [arg0]  # an installed console script
    return [sys.executable, os.path.abspath(__file__)]


ZIPAPP_NAME = "cloudx_proxy.pyz"  # the stable copy setup installs beside the SSH config


def unstable_roots(environ: Mapping[str, str], home: str) -> list[tuple[str, str]]:
    """Directories whose contents may be cleaned away under a ProxyCommand: (directory, what it is).

    Caches (uv's and pipx's run caches live there), temp dirs and the Downloads folder.
    """
    import tempfile

    local = environ.get("LOCALAPPDATA", "")
    # pipx keeps `pipx run` venvs in PIPX_HOME/.cache; PIPX_HOME's default moved across versions
    pipx = [environ.get("PIPX_HOME", ""), os.path.join(home, ".local", "pipx")]
    pipx += [
        os.path.join(home, ".local", "share", "pipx"),
        os.path.join(home, "Library", "Application Support", "pipx"),
    ]
    pipx += [os.path.join(local, "pipx")] if local else []
    return [
        (environ.get("XDG_CACHE_HOME", ""), "a cache directory"),
        (os.path.join(home, ".cache"), "a cache directory"),
        (os.path.join(home, "Library", "Caches"), "a cache directory"),
        (environ.get("UV_CACHE_DIR", ""), "uv's cache"),
        *[(os.path.join(p, ".cache") if p else "", "pipx's run cache") for p in pipx],
        (os.path.join(local, "uv", "cache") if local else "", "uv's cache"),
        (tempfile.gettempdir(), "a temporary directory"),
        ("/tmp", "a temporary directory"),
        ("/var/tmp", "a temporary directory"),
        ("/var/folders", "macOS's temporary folders"),
        (os.path.join(home, "Downloads"), "the Downloads folder"),
    ]


def version_roots(environ: Mapping[str, str], home: str) -> list[tuple[str, str]]:
    """Where version managers keep interpreters that go away with their version: (directory, what)."""
    pyenv = environ.get("PYENV_ROOT") or os.path.join(home, ".pyenv")
    uv = environ.get("UV_PYTHON_INSTALL_DIR") or os.path.join(home, ".local", "share", "uv", "python")
    return [
        (os.path.join(pyenv, "versions"), "a pyenv version"),
        (uv, "a uv-managed Python"),
        (os.path.join(home, ".asdf", "installs"), "an asdf install"),
        (os.path.join(home, ".local", "share", "mise", "installs"), "a mise install"),
    ]


def unstable_place(path: str, roots: list[tuple[str, str]], home: str) -> str | None:
    """What may remove `path` ('a cache directory (~/.cache)'), or None when it is a stable place.

    The path is checked as written and with its symlinks resolved (a venv's python in a cache
    is a link out of it, and goes with it). A root that holds HOME itself (a home under /tmp,
    as in a container) is no less stable than the home, so it does not count.
    """

    def forms(p: str) -> set[str]:
        return {os.path.abspath(p), os.path.realpath(p)}

    def under(p: str, top: str) -> bool:
        return p == top or p.startswith(top.rstrip(os.sep) + os.sep)

    places, homes = forms(path), forms(home)
    for root, what in roots:
        tops = forms(root) if root else set()
        if any(under(p, t) for p in places for t in tops) and not any(under(h, t) for h in homes for t in tops):
            return f"{what} ({root})"
    return None


def setup_interpreter(s: Setup) -> str:
    """The Python for a ProxyCommand that must outlive caches: this one (or what its venv link
    points at) when stable, else `python3` from PATH (3.9+), else this one's real path, with a warning."""
    import shutil

    roots = unstable_roots(s.env, s.home) + version_roots(s.env, s.home)
    for candidate in (sys.executable, os.path.realpath(sys.executable)):
        if candidate and not unstable_place(candidate, roots, s.home):
            return candidate
    python3 = shutil.which("python3", path=s.env.get("PATH"))
    check = [python3 or "python3", "-c", "import sys; sys.exit(sys.version_info < (3, 9))"]
    if python3 and run_cmd(check, timeout=60, env=s.env).returncode == 0:
        return "python3"
    real = os.path.realpath(sys.executable)
    log(f"  warning: no python3 3.9+ on PATH: the ProxyCommand names {real}, {unstable_place(real, roots, s.home)}")
    return real


def setup_program(s: Setup) -> list[str]:
    """The argv a ProxyCommand runs this program with: as it runs now when that is stable; run from a
    cache, temp dir or download (uvx, pipx run), a zipapp of it installed beside the SSH config."""
    program = program_argv()
    roots = unstable_roots(s.env, s.home)
    why = unstable_place(program[-1], roots, s.home)
    if why is None:
        python_why = unstable_place(program[0], roots, s.home) if len(program) == 2 else None
        if python_why:
            interpreter = setup_interpreter(s)
            log(f"  {program[0]} is in {python_why}, which may be cleaned: the ProxyCommand runs {interpreter}")
            return [interpreter, program[1]]
        return program
    target = os.path.join(s.ssh_dir, ZIPAPP_NAME)
    interpreter = setup_interpreter(s)
    data = render_zipapp(running_source())
    said = f"  {PROG} runs from {program[-1]}, in {why}, which may be cleaned: "
    if s.dry_run:
        log(said + f"[dry run] would install it as {target} (run by {interpreter}) for the ProxyCommand")
        return [interpreter, target]
    ensure_private_dir(s.ssh_dir)
    try:
        with open(target, "rb") as f:
            same = f.read() == data
    except OSError:
        same = False
    if not same:
        atomic_write_bytes(target, data, 0o700)
    log(said + f"installed it as {target} (run by {interpreter}); the ProxyCommand runs that copy")
    return [interpreter, target]


def _is_zip(path: str) -> bool:
    import zipfile

    return zipfile.is_zipfile(path)


def setup_prerequisites(s: Setup) -> None:
    """Report the tools setup and connect use; missing ones warn, setup goes on."""
    s.step("Checking prerequisites...")
    tools = [
        ("aws", AWS_INSTALL_HINT),
        ("session-manager-plugin", PLUGIN_INSTALL_HINT),
        ("ssh", "install the OpenSSH client"),
        ("ssh-keygen", "install the OpenSSH client"),
    ]
    if s.op_vault is not None:
        tools.append(("op", OP_INSTALL_HINT))
    for name, hint in tools:
        path, _ = find_program(name, s.env.get("PATH"))
        if not path:
            log(f"  warning: {name} not found ({hint})")
            continue
        version = ""
        if name == "aws":
            proc = run_cmd([path, "--version"], timeout=60, env=s.env)
            match = re.search(r"aws-cli/(\d+)\.", proc.stdout + proc.stderr)
            version = f" (v{match.group(1)})" if match else ""
        log(f"  found {name}{version}: {path}")


def dry_run_aws(s: Setup, args: list[str]) -> Any:
    """In a dry run: show a read-only aws call and make it when the CLI and credentials allow; None if not."""
    try:
        aws = s.aws()
    except CloudxError as e:
        log(f"  [dry run] would run: {quote_argv(Aws('aws', s.profile, DEFAULT_REGION, dict(s.env)).argv(args))}")
        log(f"  [dry run] not asking AWS ({e.message}); going on without the answer")
        return None
    log(f"  [dry run] read-only: {quote_argv(aws.argv(args))}")
    try:
        return aws(args)
    except CloudxError as e:
        log(f"  [dry run] no answer ({e.message}); going on without it")
        return None


def setup_profile(s: Setup) -> tuple[str | None, str]:
    """Make sure the profile has working credentials; return (environment from the IAM user, user name)."""
    s.step(f"Checking AWS profile '{s.profile}'...")
    if s.dry_run:
        answer = dry_run_aws(s, ["sts", "get-caller-identity"])
        if not isinstance(answer, dict):
            log(f"  [dry run] without working credentials setup would run: aws configure --profile {s.profile}")
            return None, ""
        arn = str(answer.get("Arn", ""))
        env, user = env_from_identity(arn)
        log(
            f"  IAM user {user}: environment '{env}'" if env else f"  {arn or 'caller'}: environment from --environment"
        )
        return env, user
    aws = s.aws()
    try:
        identity = aws(["sts", "get-caller-identity"])
    except CloudxError as e:
        if e.code not in ("ProfileNotFound", "NoCredentials", "InvalidClientTokenId", "UnrecognizedClientException"):
            raise
        if s.yes or s.dry_run:
            raise CloudxError(
                f"profile '{s.profile}' has no working credentials ({e.message})",
                f"run: aws configure --profile {s.profile}   then setup again",
            ) from None
        log(f"Configure profile '{s.profile}' with the access key of your IAM user cloudX-{{env}}-{{user}}:")
        aws.interactive(["configure", "--profile", s.profile])
        s._aws = None
        aws = s.aws()
        identity = aws(["sts", "get-caller-identity"])
    arn = parse_identity(identity)
    env, user = env_from_identity(arn)
    if env:
        log(f"  IAM user {user}: environment '{env}'")
    else:
        log(
            f"  {arn or 'caller'} is not an IAM user named cloudX-{{env}}-{{user}} (SSO or role): environment from --environment"
        )
    return env, user


def describe_setup_instance(s: Setup, value: str) -> tuple[str, dict[str, str]]:
    """Resolve --instance (an id, or a Name tag) with one describe-instances: (id, tags)."""
    if value.startswith("i-"):
        args = aws_describe_args(value)
    else:
        args = ["ec2", "describe-instances", "--filters", json.dumps([{"Name": "tag:Name", "Values": [value]}])]
    if s.dry_run:
        data = dry_run_aws(s, args)
        if data is None:
            if not value.startswith("i-"):
                raise usage_error(
                    f"a dry run without AWS cannot look up the Name tag '{value}'", "pass --instance i-..."
                )
            return value, {}
    else:
        data = s.aws()(args)
    region = s._aws.region if s._aws else "?"
    found = []
    for inst in parse_instances(data):
        state = instance_state_name(inst)
        if state == "terminated":
            continue
        iid = aws_value(inst.get("InstanceId"), "instance id", INSTANCE_ID_RE)
        if value.startswith("i-") and iid != value:
            raise aws_shape_error(f"asked for {value}, got {iid}")
        found.append((iid, parse_tags(inst), state))
    if not found:
        what = f"instance {value}" if value.startswith("i-") else f"no instance named '{value}'"
        raise CloudxError(f"{what} not found in region {region}", "check --instance and the profile's region")
    if len(found) > 1:
        listing = ", ".join(f"{iid} ({state})" for iid, _, state in found)
        raise usage_error(f"the name '{value}' matches {len(found)} instances: {listing}", "pass the instance id")
    return found[0][0], found[0][1]


def setup_key(s: Setup) -> str | None:
    """Reuse <ssh-dir>/<key> (checking the pair and its permissions) or create an ed25519 key.

    Returns '' when only the public key is on disk (an agent, e.g. 1Password's, holds the
    private key: the config then names the .pub), else None.
    """
    s.step(f"Checking SSH key {s.key_path}...")
    if not s.dry_run:
        ensure_private_dir(s.ssh_dir)
    priv, pub = s.key_path, s.key_path + ".pub"
    keygen, _ = find_program("ssh-keygen", s.env.get("PATH"))
    if not os.path.exists(priv):
        if os.path.exists(pub):
            parse_public_key(read_text(pub), pub)
            log(
                f"  warning: {pub} has no private key beside it; using it on the assumption that an SSH agent "
                "(1Password, ssh-agent) holds the private key: ssh needs that agent running"
            )
            return ""
        if s.dry_run:
            log(f"  [dry run] would create an ed25519 key pair {priv}")
            return None
        if not keygen:
            raise CloudxError("ssh-keygen not found", "install the OpenSSH client")
        proc = run_cmd(
            [keygen, "-q", "-t", "ed25519", "-N", "", "-C", f"cloudX-proxy {s.key}", "-f", priv], timeout=60, env=s.env
        )
        if proc.returncode != 0:
            raise CloudxError(f"ssh-keygen failed: {proc.stderr.strip()}")
        os.chmod(priv, 0o600)
        os.chmod(pub, 0o644)
        log(f"  created key pair {priv}")
        return None
    if keygen:
        proc = run_cmd([keygen, "-y", "-P", "", "-f", priv], timeout=60, env=s.env)
        derived = proc.stdout.strip() if proc.returncode == 0 else ""
        if not derived:
            log(f"  warning: cannot read {priv} without its passphrase; not checking that {pub} matches")
        elif os.path.exists(pub):
            if parse_public_key(read_text(pub), pub) != parse_public_key(derived, priv):
                raise CloudxError(f"{pub} does not belong to {priv}", f"regenerate it: ssh-keygen -y -f {priv} > {pub}")
        elif not s.dry_run:
            atomic_write(pub, derived + "\n", 0o644)
            log(f"  wrote the missing public key {pub}")
    if sys.platform != "win32" and not s.dry_run:
        for path, mode in ((priv, 0o600), (pub, 0o644)):
            if os.path.exists(path) and os.stat(path).st_mode & 0o777 & ~mode:
                os.chmod(path, mode)
                log(f"  tightened permissions of {path} to {mode:o}")
    log(f"  using existing key {priv}")
    return None


def run_op(op: str, args: list[str], env: dict[str, str]) -> str:
    """Run the 1Password CLI; its [ERROR] line becomes a CloudxError."""
    proc = run_cmd([op, *args], timeout=120, env=env)
    if proc.returncode != 0:
        detail = " ".join(proc.stderr.split()) or f"exit {proc.returncode}"
        if "not signed in" in detail or "sign in" in detail:
            raise CloudxError(
                f"the 1Password CLI is not signed in ({detail})", "run: eval $(op signin)   then setup again"
            )
        raise CloudxError(f"op {' '.join(args[:2])} failed: {detail}")
    return proc.stdout


def op_agent_socket(home: str) -> tuple[str, bool]:
    """The 1Password SSH agent socket to name in IdentityAgent, and whether it exists ('' on Windows)."""
    if sys.platform == "win32":
        return "", os.path.exists(OP_AGENT_PIPE)
    candidates = [os.path.join(home, p[2:]) for p in OP_AGENT_SOCKETS]
    for path in candidates:
        if os.path.exists(path):
            return path, True
    return candidates[0] if sys.platform == "darwin" else candidates[1], False


def op_agent_link_action(darwin: bool, mac_exists: bool, link_exists: bool, link_is_symlink: bool, to_mac: bool) -> str:
    """What to do with ~/.1password/agent.sock, as the reference does on macOS.

    'none' (not macOS, or no 1Password socket in its group container), 'ok' (the link
    points there), 'create', 'replace' (a symlink elsewhere or dangling), 'keep' (a real
    socket or file: perhaps a running agent, never deleted).
    """
    if not darwin or not mac_exists:
        return "none"
    if link_is_symlink:
        return "ok" if to_mac else "replace"
    return "keep" if link_exists else "create"


def op_agent_link(home: str, platform: str) -> str | None:
    """On macOS, point ~/.1password/agent.sock at 1Password's socket (a path without spaces for
    IdentityAgent); returns that link, or None when there is nothing to link."""
    mac, link = (os.path.join(home, p[2:]) for p in OP_AGENT_SOCKETS[:2])
    is_link = os.path.islink(link)
    to_mac = is_link and os.path.realpath(link) == os.path.realpath(mac)
    action = op_agent_link_action(platform == "darwin", os.path.exists(mac), os.path.lexists(link), is_link, to_mac)
    if action == "none":
        return None
    if action in ("create", "replace"):
        try:
            ensure_private_dir(os.path.dirname(link))
            if action == "replace":
                os.unlink(link)
            os.symlink(mac, link)
        except OSError as e:
            log(f"  warning: cannot link {link} to 1Password's socket ({e.strerror}); naming {mac} instead")
            return None
        log(f"  linked {link} -> {mac} (1Password's SSH agent socket)")
    elif action == "keep":
        log(f"  {link} exists and is not a symlink (a running agent?): left as it is")
    return link


def op_choose_vault(s: Setup, op: str, wanted: str) -> str:
    """The vault to create the key in: `wanted` if 1Password has it, else (interactive) the user's pick."""
    try:
        vaults = json.loads(run_op(op, ["vault", "list", "--format", "json"], s.env) or "[]")
    except ValueError:
        raise CloudxError("unexpected output from op vault list") from None
    names = [str(v["name"]) for v in vaults if isinstance(v, dict) and v.get("name")]
    match = next((n for n in names if n.lower() == wanted.lower()), None)
    if match:
        return match
    if s.yes or not names:
        raise usage_error(
            f"1Password vault '{wanted}' not found (vaults: {', '.join(names) or 'none'})",
            "pass --1password VAULT with one of them",
        )
    log(f"  1Password vault '{wanted}' not found. Vaults:")
    for number, name in enumerate(names, 1):
        log(f"    {number}. {name}")
    default = str(names.index("Private") + 1) if "Private" in names else "1"
    answer = s.ask("Vault for the new SSH key (number)", default)
    if not answer.isdigit() or not 1 <= int(answer) <= len(names):
        raise usage_error(f"no vault number {answer!r}", f"answer a number from 1 to {len(names)}")
    return names[int(answer) - 1]


def setup_op_key(s: Setup) -> str | None:
    """Find or create the key in 1Password, export only its public key; returns the agent socket.

    The item is 'cloudX SSH Key - KEY' or, as the reference also accepts, plain 'KEY'. When
    1Password is unusable (no op, signed out), an interactive user may choose a key on disk
    instead: then None.
    """
    title = OP_ITEM_TITLE.format(key=s.key)
    s.step(f"Checking the 1Password SSH key '{title}'...")
    op = find_program("op", s.env.get("PATH"))[0] or ""
    try:
        if not op:
            raise CloudxError("the 1Password CLI 'op' was not found", OP_INSTALL_HINT)
        run_op(op, ["whoami", "--format", "json"], s.env)
    except CloudxError as e:
        if s.dry_run:  # a preview: say what a real run needs, and show the config it would write
            log(f"  [dry run] {e.message} ({e.hint}); a real run needs it" if e.hint else f"  [dry run] {e.message}")
            log(f"  [dry run] would find '{title}' in 1Password or create it in vault {s.op_vault or 'Private'}")
            return op_agent_socket(s.home)[0]
        if s.yes:
            raise
        log(f"  1Password is not available: {e.message}")
        if not s.ask("Use an SSH key on disk instead? [y/n]", "y").lower().startswith("y"):
            raise
        log(f"  warning: not using 1Password; the SSH key is {s.key_path} on disk")
        return None
    try:
        items = json.loads(run_op(op, ["item", "list", "--categories", "SSH Key", "--format", "json"], s.env) or "[]")
    except ValueError:
        raise CloudxError("unexpected output from op item list") from None
    items = [i for i in items if isinstance(i, dict)]
    found = [i for i in items if i.get("title") == title] or [i for i in items if i.get("title") == s.key]
    if found:
        item = found[0]
        title = str(item.get("title"))
        log(f"  found '{title}' in vault {item.get('vault', {}).get('name', '?')}")
    else:
        vault = op_choose_vault(s, op, s.op_vault or "Private")
        if s.dry_run:
            log(f"  [dry run] would create '{title}' in 1Password vault {vault}")
            return op_agent_socket(s.home)[0]
        if vault != "Private":
            log(
                f"  warning: only the Private vault is enabled for the SSH agent by default; enable {vault} in 1Password's SSH agent settings"
            )
        created = run_op(
            op,
            [
                "item",
                "create",
                "--category",
                "SSH Key",
                "--title",
                title,
                "--vault",
                vault,
                "--ssh-generate-key",
                "ed25519",
                "--format",
                "json",
            ],
            s.env,
        )
        try:
            item = json.loads(created)
        except ValueError:
            raise CloudxError("unexpected output from op item create") from None
        log(f"  created '{title}' in vault {vault}")
        log(f"  important: make sure '{title}' is enabled in 1Password's SSH agent (Settings > Developer)")
    vault_ref = item.get("vault", {}).get("id") or s.op_vault or "Private"
    public = run_op(op, ["read", f"op://{vault_ref}/{item.get('id')}/public key"], s.env).strip()
    public = parse_public_key(public, f"1Password item '{title}'")
    pub = s.key_path + ".pub"
    if not s.dry_run:
        ensure_private_dir(s.ssh_dir)
        atomic_write(pub, public + "\n", 0o644)
        log(f"  exported the public key to {pub} (the private key stays in 1Password)")
    linked = None if s.dry_run or sys.platform == "win32" else op_agent_link(s.home, sys.platform)
    agent, exists = (linked, True) if linked else op_agent_socket(s.home)
    if not exists:
        log(
            f"  warning: the 1Password SSH agent is not running ({agent or OP_AGENT_PIPE} not found): enable it in 1Password's settings"
        )
    return agent


def setup_config(s: Setup, env: str, hostname: str, instance_id: str, agent: str | None = None) -> str:
    """Write the three-tier config into --ssh-config, adopting what is there; returns the host name to use."""
    s.step(f"Writing SSH configuration {s.ssh_config}...")
    program = setup_program(s)
    proxy = render_proxy_command(program, s.profile, s.key, s.ssh_dir, s.aws_env, s.windows)
    result = {"host": f"{s.prefix}-{env}-{hostname}"}

    def update(old: str) -> str:
        text, adopted = adopt_config(old, program, s.when, s.windows)
        for note in adopted:
            log(f"  {note}" if note.startswith("repaired ") else f"  adopting {note}")
        s.adopted += [note for note in adopted if not note.startswith("repaired ")]
        text, led = lead_spelling(text, s.prefix)
        for note in led:
            log(f"  {note}")
        env_name, host = existing_names(text, s.prefix, env, hostname)
        if env_name != env:
            log(f"  using the existing environment '{env_name}' (matched '{env}')")
        result["host"] = host
        # Every spelling, as the original: a host spelled differently (cloudx-… under prefix cloudX),
        # written now or later, must still match the wildcard blocks.
        spellings = list(dict.fromkeys([*prefix_spellings(s.prefix), host[: len(s.prefix)]]))
        generic = render_generic_block(s.prefix, s.windows)
        generic = generic.replace(f"Host {s.prefix}-*", "Host " + " ".join(f"{p}-*" for p in spellings), 1)
        env_pattern = f"{s.prefix}-{env_name}-*"
        env_block = render_env_block(s.prefix, env_name, render_identity(s.key_path, agent), proxy)
        env_block = env_block.replace(
            f"Host {env_pattern}", "Host " + " ".join(f"{p}-{env_name}-*" for p in spellings), 1
        )
        replace = {host}
        current = find_block(text, env_pattern)
        if current is not None:
            wanted = ConfigBlock("host", env_pattern, env_block.splitlines())
            if env_settings(current.lines, s.home) != env_settings(wanted.lines, s.home):
                import difflib

                diff = difflib.unified_diff(current.body(), wanted.body(), "current", "setup", lineterm="", n=5)
                for line in diff:
                    print(f"    {line}", file=sys.stderr)
                if s.yes or s.dry_run:
                    log(f"  keeping the existing environment block Host {env_pattern} (shown above; --yes keeps it)")
                elif (
                    s.ask(f"The environment block Host {env_pattern} differs. [k]eep or [r]eplace?", "k")
                    .lower()
                    .startswith("r")
                ):
                    replace.add(env_pattern)
        blocks = [
            ("generic", f"{s.prefix}-*", generic),
            ("environment", env_pattern, env_block),
            (
                "host",
                host,
                render_host_block(s.prefix, env_name, hostname, instance_id).replace(
                    f"Host {s.prefix}-{env_name}-{hostname}", f"Host {host}", 1
                ),
            ),
        ]
        new, notes = merge_config(text, blocks, replace, s.when)
        for note in notes:
            log(f"  {note}")
        for shadow in shadowing_catch_alls(new, [p for _, p, _ in blocks]):
            log(f"  warning: {shadow}: ssh uses its values for these hosts; move it below our blocks")
        return new

    old, new = update_file(s.ssh_config, update, s.cache, s.dry_run)
    show_change(s, s.ssh_config, old, new)
    if not s.windows and not s.dry_run:
        ensure_private_dir(os.path.join(s.home, ".ssh", "control"))
    return result["host"]


def show_change(s: Setup, path: str, old: str, new: str | None) -> None:
    """In a dry run, print the diff that would be written."""
    if s.dry_run and new is not None:
        print_diff(path, old, new)


def setup_include(s: Setup) -> None:
    """Include --ssh-config from ~/.ssh/config, above its first Host/Match block."""
    main_config = os.path.join(s.home, ".ssh", "config")
    if os.path.realpath(main_config) == os.path.realpath(s.ssh_config):
        return
    if not s.dry_run:
        ensure_private_dir(os.path.dirname(main_config))
    where = {"position": "missing"}

    def update(text: str) -> str | None:
        where["position"] = include_position(text, s.ssh_config, os.path.dirname(main_config))
        return insert_include(text, s.ssh_config, os.path.dirname(main_config))

    old, new = update_file(main_config, update, s.cache, s.dry_run)
    show_change(s, main_config, old, new)
    log(f"  {main_config} {'now includes' if new is not None else 'already includes'} {s.ssh_config}")
    if where["position"] == "inside":
        log(
            f"  its Include of {s.ssh_config} sits inside a Host/Match block, where ssh applies it to that "
            "block's hosts only: added one at the top (your line is kept)"
        )


MARKER_CHECK = (
    'if [ -f "$HOME/.install-done" ]; then echo done; elif [ -f "$HOME/.install-running" ]; '
    "then echo running; else echo unknown; fi"
)


def check_instance(s: Setup, host: str) -> int:
    """Connect once through the new config and read the instance's setup markers."""
    s.step(f"Checking the connection: ssh {host}...")
    ssh, _ = find_program("ssh", s.env.get("PATH"))
    if not ssh:
        log("  warning: ssh not found; skipping the connection check")
        return EXIT_OK
    argv = [
        ssh, "-F", s.ssh_config, "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=accept-new",
        "-o", f"UserKnownHostsFile={os.path.join(s.home, '.ssh', 'known_hosts')}",
        "-o", "ControlMaster=no", "-o", "ControlPath=none", host, MARKER_CHECK,
    ]  # fmt: skip
    deadline = time.monotonic() + 1800
    while True:
        proc = run_cmd(argv, timeout=900, env=s.env)
        if proc.returncode != 0:
            detail = " ".join(proc.stderr.split())[-300:]
            hint = f"run: ssh -v {host}"
            if s.op_vault is not None:
                hint = "check that the 1Password SSH agent runs and serves the key's vault; then " + hint
            raise CloudxError(f"the configuration is written, but ssh {host} failed: {detail}", hint)
        status = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else "unknown"
        if status == "done":
            log("  connected; the instance's setup is complete")
            return EXIT_OK
        if status == "unknown":
            log("  connected; no setup markers (.install-done/.install-running) on the instance")
            return EXIT_OK
        log("  connected; the instance's setup is still running (~/.install-running)")
        if s.yes or time.monotonic() > deadline:
            return EXIT_OK
        try:
            wait = s.ask("Wait for it to finish? [y/n]", "y").lower().startswith("y")
        except CloudxError:  # no terminal to answer on: the config is written, report and finish
            wait = False
        if not wait:
            return EXIT_OK
        waited = time.monotonic()
        while time.monotonic() - waited < 10:
            time.sleep(1)
        log(f"  still waiting ({int(time.monotonic() - deadline + 1800)} s)...")


def setup_legacy(s: Setup) -> None:
    """A legacy ~/.ssh/vscode setup: offer migrate (interactive), else keep working there and say how."""
    if not s.legacy:
        return
    target = os.path.join(s.home, ".ssh", "cloudX")
    s.step(f"Found a legacy setup in {s.ssh_dir} (and no {target})")
    log("  ProxyCommands without --profile/--ssh-key there use profile and key 'vscode' (connect's defaults)")
    question = f"Migrate it to {target} now, keeping every host working? [y/n]"
    if not s.yes and not s.dry_run and s.ask(question, "y").lower().startswith("y"):
        migrate_legacy(s.home, target, False, lambda q: s.ask(q + " [y/n]", "n").lower().startswith("y"))
        s.legacy, s.ssh_dir = False, target
        s.ssh_config, s.key_path = os.path.join(target, "config"), os.path.join(target, s.key)
        log(f"  migrated; setup goes on in {target} with profile '{s.profile}' and key '{s.key}'")
        return
    log(
        f"  working in {s.ssh_dir} (profile '{s.profile}', key '{s.key}'), so those hosts keep working; "
        f"to move everything to {target} later: {PROG} migrate"
    )


def cmd_setup(args: argparse.Namespace) -> int:
    """Configure the AWS profile, the SSH key, the three-tier SSH config and check the instance."""
    s = Setup(args, os.environ)
    if s.dry_run:
        log("[dry run] nothing will be written, generated or configured")
    setup_prerequisites(s)
    setup_legacy(s)
    iam_env, _user = setup_profile(s)
    value = s.instance or s.ask("EC2 instance id (or Name tag)", "")
    if not value:
        raise usage_error("no instance given", "pass --instance i-... (an instance id or its Name tag)")
    if value.startswith("i-") or is_instance_id(value):
        value = validate_instance_id(value)
    instance_id, tags = describe_setup_instance(s, value)
    tag_env, tag_host = names_from_tags(tags)
    env = s.environment or tag_env or iam_env
    if not env and s.yes:
        raise usage_error(
            "cannot tell the cloudX environment: the caller is not an IAM user cloudX-{env}-{user} "
            "and the instance has no environment tag",
            "pass --environment",
        )
    env = env or s.ask("cloudX environment (e.g. dev)", "")
    # As the reference: without a Name tag, 'instance-' and the id's last 7 characters.
    hostname = s.hostname or s.ask(
        "Hostname for the SSH config", _safe_host_part(tag_host) or f"instance-{instance_id[-7:]}"
    )
    validate_host_part("environment", env)
    validate_host_part("hostname", hostname)
    conflict = tag_env_conflict(tags, env)
    if conflict:
        log(f"  warning: {conflict}" + (" (from --environment)" if s.environment else ""))
    log(f"  instance {instance_id}: environment '{env}', hostname '{hostname}'")
    agent = setup_op_key(s) if s.op_vault is not None else None
    if agent is None:
        agent = setup_key(s)
    host = setup_config(s, env, hostname, instance_id, agent)
    setup_include(s)
    setup_editors(s, bool(getattr(args, "no_editor_settings", False)))
    if s.dry_run:
        log(f"[dry run] would check the connection with: ssh {host}")
        return EXIT_OK
    rc = check_instance(s, host)
    if s.adopted:
        print("Adopted the configuration PyPI cloudx-proxy wrote (banners are ours now, every other line kept):")
        print("".join(f"    {line}\n" for line in dict.fromkeys(s.adopted)))
    print(f"Setup complete. Connect with:\n    ssh {host}\n")
    print(f"or from VS Code: Remote Explorer (Remote-SSH), {host}")
    return rc


def _safe_host_part(value: str | None) -> str | None:
    """A Name tag made usable as a host name part, or None."""
    if not value:
        return None
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "-", value).strip("-.")
    return cleaned if HOST_PART_RE.fullmatch(cleaned) else None


# ---------------------------------------------------------------------------
# editor settings (VS Code family)
# ---------------------------------------------------------------------------
def installed_editors(environ: Mapping[str, str], home: str) -> list[tuple[str, str]]:
    """(editor, its settings.json) for each VS Code-family editor whose user settings directory exists."""
    dirs = editor_settings_dirs(sys.platform, environ, home)
    return [(name, os.path.join(path, "settings.json")) for name, path in dirs if os.path.isdir(path)]


def editor_not_writable(path: str) -> str | None:
    """Why settings.json cannot be replaced through its path (read-only, a dangling symlink), or None."""
    real = os.path.realpath(path)
    if os.path.islink(path) and not os.path.exists(real):
        return f"it is a symlink to {real}, which does not exist"
    if os.path.exists(real) and not os.path.isfile(real):
        return f"{real} is not a regular file"
    if os.path.exists(real) and not os.access(real, os.W_OK):
        return f"{real} is not writable" + (" (settings.json links there)" if real != os.path.abspath(path) else "")
    if not os.access(os.path.dirname(real), os.W_OK):
        return f"{os.path.dirname(real)} is not writable"
    return None


def plan_editor_settings(path: str, patterns: list[str]) -> tuple[str, str | None, str | None]:
    """(the text of settings.json, the text setup would write or None when nothing changes,
    why setup must not touch it or None)."""
    why = editor_not_writable(path)
    if why:
        return "", None, why
    try:
        text = read_text(path)
    except CloudxError as e:
        return "", None, e.message
    try:
        new = edit_editor_settings(text, patterns)
    except ValueError as e:
        return text, None, str(e)
    return text, (None if new == text else new), None


def print_editor_instructions(name: str, path: str, why: str, patterns: list[str]) -> None:
    """Say why a settings.json is left alone, and what to add to it by hand."""
    log(f"  {name}: not changing {path}: {why}")
    log("  add these settings inside its outermost { } (keep larger timeouts; merge into a remotePlatform you have):")
    for line in render_editor_snippet(patterns):
        print(f"      {line}", file=sys.stderr)


def setup_editors(s: Setup, skip: bool) -> None:
    """Make each installed VS Code-family editor's Remote-SSH wait for a cold start (asks once; --yes applies)."""
    if skip:
        return
    editors = installed_editors(s.env, s.home)
    names = ", ".join(name for name, _app in EDITOR_APPS)
    if not editors:
        log(f"VS Code: no settings directory of {names} found; no editor settings to change")
        return
    s.step("Checking the Remote-SSH settings of " + ", ".join(name for name, _ in editors) + "...")
    patterns = editor_patterns(s.prefix)
    pending = []
    for name, path in editors:
        old, new, why = plan_editor_settings(path, patterns)
        if why:
            print_editor_instructions(name, path, why, patterns)
        elif new is None:
            log(f"  {name}: {path} already has them")
        else:
            pending.append((name, path))
            show_change(s, path, old, new)
    if not pending or s.dry_run:
        return
    question = (
        f"Set connectTimeout 90, serverInstallTimeout 120 and {' '.join(patterns)} as linux in the "
        f"Remote-SSH settings of {', '.join(name for name, _ in pending)}? [y/n]"
    )
    try:
        apply = s.yes or s.ask(question, "y").lower().startswith("y")
    except CloudxError:  # no terminal to answer on: leave the editors alone
        apply = False
    if not apply:
        log(f"  editor settings left unchanged ('{PROG} doctor' checks them; the README's VS Code section lists them)")
        return
    for name, path in pending:
        existed = os.path.exists(path)
        why = write_editor_settings(path, patterns, s.cache)
        if why:
            print_editor_instructions(name, path, why, patterns)
        elif existed:
            log(f"  {name}: updated {path} (the file before is kept next to it as {os.path.basename(path)}.bak*)")
        else:
            log(f"  {name}: created {path}")


def write_editor_settings(path: str, patterns: list[str], cache: str) -> str | None:
    """Apply our settings to settings.json (locked, backed up, atomic, through a symlink); why not, or None."""
    why: list[str] = []

    def update(text: str) -> str | None:
        try:
            return edit_editor_settings(text, patterns)
        except ValueError as e:
            why.append(str(e))
            return None

    try:
        update_file(path, update, cache, keep_mode=True)
    except CloudxError as e:
        why.append(e.message)
    return why[0] if why else None


# ---------------------------------------------------------------------------
# list
# ---------------------------------------------------------------------------
def default_ssh_config(home: str) -> str:
    """~/.ssh/cloudX/config if it exists, else ~/.ssh/vscode/config if that exists, else the first."""
    cloudx = os.path.join(home, ".ssh", "cloudX", "config")
    vscode = os.path.join(home, ".ssh", "vscode", "config")
    return vscode if not os.path.exists(cloudx) and os.path.exists(vscode) else cloudx


def aws_for_options(opts: Mapping[str, str], environ: Mapping[str, str]) -> Aws:
    """An aws runner for the profile/region/aws-env a ProxyCommand names (connect's defaults otherwise)."""
    home = os.path.expanduser("~")
    env = dict(environ)
    if opts.get("aws-env"):
        use_aws_env(env, opts["aws-env"], home)
    profile = validate_name("profile", opts.get("profile") or default_profile_and_key(home)[0])
    config_file = os.path.expanduser(env.get("AWS_CONFIG_FILE") or os.path.join(home, ".aws", "config"))
    region, _ = resolve_region(opts.get("region"), env, profile_section(read_ini(config_file) or {}, profile))
    return Aws(require_aws(env), profile, validate_region(region), env)


def fetch_status(parsed: dict[str, Any], environ: Mapping[str, str]) -> dict[str, tuple[str, str]]:
    """EC2 state and SSM PingStatus of every host: one call of each kind per profile, side by side."""
    envs: dict[str, dict[str, Any]] = parsed["environments"]
    groups: dict[tuple[tuple[str, str], ...], list[str]] = {}
    for h in parsed["hosts"]:
        if not INSTANCE_ID_RE.fullmatch(h["instance_id"]):
            continue
        opts: dict[str, str] = envs.get(h["environment"].lower(), {}).get("options", {})
        key = tuple(sorted((k, v) for k, v in opts.items() if k in ("profile", "region", "aws-env")))
        groups.setdefault(key, []).append(h["instance_id"])
    status: dict[str, tuple[str, str]] = {}
    for key, ids in groups.items():
        ids = sorted(set(ids))
        try:
            aws = aws_for_options(dict(key), environ)
        except CloudxError as e:
            status.update({i: (f"error: {e.message}", "unknown") for i in ids})
            continue
        res = aws.many(
            {
                "ec2": ["ec2", "describe-instances", "--filters", json.dumps([{"Name": "instance-id", "Values": ids}])],
                "ssm": [
                    "ssm",
                    "describe-instance-information",
                    "--filters",
                    json.dumps([{"Key": "InstanceIds", "Values": ids}]),
                ],
            }
        )
        for iid in ids:
            status[iid] = (_status_of(res["ec2"], iid, True), _status_of(res["ssm"], iid, False))
    return status


def _status_of(answer: Any, iid: str, ec2: bool) -> str:
    """One instance's EC2 state or SSM PingStatus for list --status; a bad answer reads as an error."""
    try:
        if isinstance(answer, CloudxError):
            raise answer
        return (parse_instance_state(answer, iid) or "not found") if ec2 else parse_ping_status(answer, iid)
    except CloudxError as e:
        return printable(f"error: {e.message}")


def list_json(
    path: str, parsed: dict[str, Any], environment: str | None, status: dict[str, tuple[str, str]] | None
) -> dict[str, Any]:
    """The machine-readable form of list."""
    envs: dict[str, dict[str, Any]] = parsed["environments"]
    out_envs: dict[str, dict[str, Any]] = {}
    for h in parsed["hosts"]:
        if environment and h["environment"].lower() != environment.lower():
            continue
        info = envs.get(h["environment"].lower(), {})
        opts: dict[str, str] = info.get("options", {})
        entry = out_envs.setdefault(
            h["environment"],
            {
                "name": h["environment"],
                "pattern": info.get("pattern"),
                "patterns": info.get("patterns"),
                "profile": opts.get("profile"),
                "ssh_key": opts.get("ssh-key"),
                "ssh_dir": opts.get("ssh-dir"),
                "aws_env": opts.get("aws-env"),
                "proxy_command": info.get("directives", {}).get("proxycommand"),
                "hosts": [],
            },
        )
        host = dict(h)
        if status is not None:
            host["state"], host["ping_status"] = status.get(h["instance_id"], ("unknown", "unknown"))
        entry["hosts"].append(host)
    for e in out_envs.values():
        e["hosts"].sort(key=lambda x: (x["name"].lower(), x["host"]))
    return {
        "config": path,
        "generic": parsed["generic"],
        "generic_lines": parsed["generic_lines"],
        "environments": [out_envs[k] for k in sorted(out_envs, key=str.lower)],
    }


def cmd_list(args: argparse.Namespace) -> int:
    """Print the configured hosts, grouped by environment (stdout)."""
    home = os.path.expanduser("~")
    path = (
        os.path.expanduser(validate_path("--ssh-config", args.ssh_config))
        if args.ssh_config
        else default_ssh_config(home)
    )
    environment = validate_host_part("environment", args.environment) if args.environment else None
    if args.dry_run:
        log(
            f"[dry run] would read {path}"
            + (f", environment {environment}" if environment else "")
            + (" and query AWS for each host's state" if args.status else "")
        )
        return EXIT_OK
    if not os.path.isfile(path):
        raise CloudxError(f"no SSH config at {path}", f"run '{PROG} setup' to create one, or pass --ssh-config")
    parsed = parse_cloudx_config(read_text(path))
    status = fetch_status(parsed, os.environ) if args.status else None
    if args.json:
        print(json.dumps(list_json(path, parsed, environment, status), indent=2))
    else:
        sys.stdout.write(render_host_list(parsed, environment, args.detailed, status))
    return EXIT_OK


# ---------------------------------------------------------------------------
# doctor
# ---------------------------------------------------------------------------
OK, WARN, FAIL = "ok", "warn", "FAIL"


def render_findings(findings: list[tuple[str, str, str, str]], color: bool = False) -> str:
    """One line per check: level, check, detail and, for warn/FAIL, the fix."""
    lines = []
    for level, check, detail, fix in findings:
        detail, fix = printable(detail), printable(fix)  # details quote AWS error messages
        line = f"{paint(level, f'{level:<5}') if color else f'{level:<5}'} {check}: {detail}"
        if fix and level != OK:
            line += f" -- fix: {fix}"
        lines.append(line)
    fails = sum(1 for f in findings if f[0] == FAIL)
    warns = sum(1 for f in findings if f[0] == WARN)
    lines.append(f"{len(findings)} checks: {len(findings) - fails - warns} ok, {warns} warn, {fails} FAIL")
    return "\n".join(lines) + "\n"


def proxy_program_words(proxy_command: str) -> list[str] | None:
    """The words of a ProxyCommand before 'connect' (the interpreter and program); None if unparsable."""
    import shlex

    try:
        words = shlex.split(proxy_command.replace("%%", "%"))
    except ValueError:
        return None
    return words[: words.index("connect") if "connect" in words else 1]


def proxy_program_unstable(proxy_command: str, roots: list[tuple[str, str]], home: str) -> str | None:
    """'PATH is in WHAT' for the first program word of a ProxyCommand in a place that may be cleaned."""
    for word in proxy_program_words(proxy_command) or []:
        if os.sep in word or (os.altsep and os.altsep in word):
            why = unstable_place(os.path.expanduser(word), roots, home)
            if why:
                return f"{word} is in {why}"
    return None


def proxy_python_unfit(proxy_command: str, path_var: str | None) -> str | None:
    """Why the Python a ProxyCommand runs our zipapp or module with cannot run it (it fails to start,
    as a pyenv shim of a removed version does, or is older than 3.9), or None; runs it once."""
    words = proxy_program_words(proxy_command) or []
    if len(words) < 2 or not words[1].endswith((".pyz", ".py")):
        return None
    exe = os.path.expanduser(words[0]) if os.sep in words[0] else find_program(words[0], path_var)[0]
    if not exe or not os.path.exists(exe):
        return None  # proxy_program_missing says so
    probe = "import sys; sys.stdout.write('%d.%d.%d' % tuple(sys.version_info[:3]))"
    proc = run_cmd([exe, "-c", probe], timeout=60)
    found = re.fullmatch(r"([0-9]+)\.([0-9]+)\.[0-9]+", proc.stdout.strip())
    if proc.returncode != 0 or not found:
        detail = " ".join(proc.stderr.split())[:120] or f"exit {proc.returncode}"
        return f"{words[0]} does not run ({detail})"
    if (int(found.group(1)), int(found.group(2))) < (3, 9):
        return f"{words[0]} is Python {proc.stdout.strip()}; {PROG} needs 3.9 or newer"
    return None


def proxy_program_missing(proxy_command: str) -> str | None:
    """The program (or zipapp/script) a ProxyCommand runs, if it does not exist."""
    words = proxy_program_words(proxy_command)
    if words is None:
        return proxy_command
    if not words:
        return "(empty)"
    for word in words:
        if os.sep in word or (os.altsep and os.altsep in word):
            if not os.path.exists(os.path.expanduser(word)):
                return word
        elif word not in ("-m", "-S", "-I", "-E", "cloudx_proxy") and not find_program(word, os.environ.get("PATH"))[0]:
            return word
    return None


def _tool_version(path: str, args: list[str]) -> str:
    proc = run_cmd([path, *args], timeout=60)
    return " ".join((proc.stdout or proc.stderr).split())[:60]


# OpenSSH before 9.6 expands shell metacharacters in a host name taken from a
# hostile ssh:// URL into %h before our validation can run (CVE-2023-51385).
OPENSSH_SAFE = (9, 6)
# Distribution builds below 9.6 that carry the fix (their changelogs name the CVE).
OPENSSH_PATCHED_RE = re.compile(r"Debian-2\+deb12u([0-9]+)|Debian-5\+deb11u([0-9]+)")
OPENSSH_PATCHED_FROM = (2, 3)  # deb12u2, deb11u3


def parse_openssh_version(text: str) -> tuple[int, int] | None:
    """(major, minor) from `ssh -V` output such as 'OpenSSH_9.2p1 Debian-2+deb12u3, OpenSSL ...'."""
    match = re.search(r"OpenSSH_(?:for_Windows_)?([0-9]+)\.([0-9]+)", text)
    return (int(match.group(1)), int(match.group(2))) if match else None


def openssh_patched(text: str) -> bool:
    """True when `ssh -V` names a distribution build known to carry the CVE-2023-51385 fix."""
    match = OPENSSH_PATCHED_RE.search(text)
    if not match:
        return False
    return any(g is not None and int(g) >= least for g, least in zip(match.groups(), OPENSSH_PATCHED_FROM))


class DoctorFacts:
    """What doctor found out (files, tools, AWS answers): the input of the pure doctor_findings()."""

    target: str | None
    instance_id: str | None
    config_path: str
    parsed: dict[str, Any] | None
    python: str
    python_ok: bool
    aws_path: str | None
    aws_version: str
    plugin_path: str | None
    plugin_version: str
    ssh_path: str | None
    ssh_mux: bool
    ssh_version: str
    keygen: str | None
    profile: str
    profile_error: CloudxError | None
    profile_detail: str
    ssh_dir: str
    ssh_dir_mode: int | None
    priv: str
    pub: str
    pub_exists: bool
    priv_exists: bool
    agent: str | None
    priv_loose: bool
    key_matches: bool | None
    main_config: str
    ssh_refusal: list[str]
    include_where: str | None
    proxies: list[tuple[str, str | None]]
    proxy_unstable: tuple[tuple[str, str], ...] = ()  # (pattern, 'PATH is in a cache directory (...)')
    proxy_python: tuple[tuple[str, str], ...] = ()  # (pattern, why its Python cannot run us)
    control: str | None
    control_exists: bool
    cache: str | None
    cache_stat: dict[str, int] | None
    aws_results: dict[str, Any] | None
    region: str
    editors: list[dict[str, Any]]
    patterns: list[str]

    def __init__(self, **fields: object) -> None:
        self.editors, self.patterns = [], []  # no editor installed
        self.__dict__.update(fields)


def doctor_target(
    args: argparse.Namespace, home: str
) -> tuple[str, dict[str, Any] | None, str | None, dict[str, Any] | None, dict[str, str]]:
    """Resolve doctor's target and options: (config path, parsed config, instance id, host entry, options)."""
    config_path = (
        os.path.expanduser(validate_path("--ssh-config", args.ssh_config))
        if args.ssh_config
        else default_ssh_config(home)
    )
    parsed = parse_cloudx_config(read_text(config_path)) if os.path.isfile(config_path) else None
    envs: dict[str, dict[str, Any]] = parsed["environments"] if parsed else {}
    target, instance_id, opts = args.target, None, {}
    host_entry = None
    if target:
        if target.startswith("i-"):
            instance_id = validate_instance_id(target)
        hosts = parsed["hosts"] if parsed else []
        host_entry = next((h for h in hosts if h["host"].lower() == target.lower() or h["instance_id"] == target), None)
        if host_entry is not None:
            instance_id = host_entry["instance_id"] or instance_id
            opts = envs.get(host_entry["environment"].lower(), {}).get("options", {})
        elif not instance_id:
            validate_host_part("host", target)
    elif len(envs) == 1:
        opts = next(iter(envs.values())).get("options", {})
    opts = dict(opts)
    for name in ("profile", "ssh_key", "ssh_dir", "aws_env"):
        if getattr(args, name) is not None:
            opts[name.replace("_", "-")] = getattr(args, name)
    return config_path, parsed, instance_id, host_entry, opts


def doctor_key_facts(ssh_dir: str, key: str, keygen: str | None) -> dict[str, Any]:
    """The key pair: which files exist, loose permissions, and whether the public key matches."""
    priv, pub = os.path.join(ssh_dir, key), os.path.join(ssh_dir, key + ".pub")
    mode = os.stat(ssh_dir).st_mode & 0o777 if sys.platform != "win32" and os.path.isdir(ssh_dir) else None
    facts: dict[str, Any] = dict(
        ssh_dir_mode=mode, priv=priv, pub=pub, pub_exists=os.path.exists(pub), priv_exists=os.path.exists(priv)
    )
    loose = bool(sys.platform != "win32" and facts["priv_exists"] and os.stat(priv).st_mode & 0o077)
    matches = None
    if facts["pub_exists"] and facts["priv_exists"] and keygen and not loose:
        derived = run_cmd([keygen, "-y", "-P", "", "-f", priv], timeout=30).stdout.strip()
        if derived:
            try:
                matches = parse_public_key(read_text(pub), pub) == parse_public_key(derived, priv)
            except CloudxError:
                matches = False
    return dict(facts, priv_loose=loose, key_matches=matches)


def cache_dir_stat(path: str) -> dict[str, int] | None:
    """Owner and mode of the cache dir and, for a symlink, of the link itself (None when missing;
    always on Windows, where doctor looks at no cache dir)."""
    if sys.platform == "win32":
        return None
    import stat

    try:
        lst = os.lstat(path)
        st = os.stat(path)
    except OSError:
        return None
    return {
        "uid": st.st_uid,
        "mode": st.st_mode & 0o777,
        "is_dir": int(stat.S_ISDIR(st.st_mode)),
        "link_uid": lst.st_uid if stat.S_ISLNK(lst.st_mode) else -1,
        "my_uid": os.getuid(),
    }


def gather_doctor_facts(args: argparse.Namespace, environ: Mapping[str, str]) -> DoctorFacts:
    """Everything doctor looks at: files, tool versions and (with a working profile) AWS, side by side."""
    import argparse

    home = os.path.expanduser("~")
    config_path, parsed, instance_id, host_entry, opts = doctor_target(args, home)
    envs: dict[str, dict[str, Any]] = parsed["environments"] if parsed else {}
    d_profile, d_key, d_dir = default_profile_and_key(home)
    profile = validate_name("profile", opts.get("profile") or d_profile)
    key = validate_name("ssh key name", opts.get("ssh-key") or d_key)
    ssh_dir = os.path.expanduser(opts.get("ssh-dir") or d_dir)
    path_var = environ.get("PATH")
    f = DoctorFacts(target=args.target, instance_id=instance_id, config_path=config_path, parsed=parsed)
    f.profile, f.ssh_dir, f.python = profile, ssh_dir, sys.version.split()[0]
    f.python_ok = sys.version_info >= (3, 9)

    f.aws_path = find_program("aws", path_var)[0]
    f.aws_version = _tool_version(f.aws_path, ["--version"]) if f.aws_path else ""
    f.plugin_path = find_program("session-manager-plugin", path_var)[0]
    f.plugin_version = _tool_version(f.plugin_path, ["--version"]) if f.plugin_path else ""
    f.ssh_path = find_program("ssh", path_var)[0]
    f.ssh_mux, f.ssh_version = False, ""
    if f.ssh_path:
        mux_argv = [f.ssh_path, "-G", "-o", "ControlMaster=auto", "-o", "ControlPath=none", "doctor.invalid"]
        f.ssh_mux = run_cmd(mux_argv, timeout=30).returncode == 0
        proc = run_cmd([f.ssh_path, "-V"], timeout=30)
        f.ssh_version = " ".join((proc.stderr or proc.stdout).split())[:100]
    f.keygen = find_program("ssh-keygen", path_var)[0]

    # AWS profile (from files: no aws process)
    aws = None
    f.profile_error, f.profile_detail, f.region = None, "", ""
    try:
        ns = argparse.Namespace(
            instance_id=instance_id or "i-00000000", port="22", profile=profile, ssh_key=key, user=DEFAULT_USER,
            timeout=DEFAULT_TIMEOUT, region=None, ssh_dir=ssh_dir, ssh_config=None, aws_env=opts.get("aws-env"),
        )  # fmt: skip
        plan = plan_connect(ns, environ)
        check_profile(plan)
        f.profile_detail = f"'{profile}' in {plan.config_file}, region {plan.region} (from {plan.region_source})"
        f.region = plan.region
        if f.aws_path:
            aws = Aws(f.aws_path, profile, plan.region, plan.env, instance_id)
    except CloudxError as e:
        f.profile_error = e

    f.agent = (
        envs.get(host_entry["environment"].lower(), {}).get("directives", {}).get("identityagent")
        if host_entry
        else None
    )
    f.__dict__.update(doctor_key_facts(ssh_dir, key, f.keygen))

    f.main_config = os.path.join(home, ".ssh", "config")
    f.include_where, f.proxies = None, []
    if parsed is not None:
        if os.path.realpath(f.main_config) != os.path.realpath(config_path):
            f.include_where = include_position(read_text(f.main_config), config_path)
        for info in envs.values():
            proxy = str(info["directives"].get("proxycommand", ""))
            f.proxies.append((str(info["pattern"]), proxy_program_missing(proxy) if proxy else "(no ProxyCommand)"))
            unstable = proxy_program_unstable(proxy, unstable_roots(environ, home), home)
            if unstable:
                f.proxy_unstable += ((str(info["pattern"]), unstable),)
            unfit = proxy_python_unfit(proxy, path_var) if proxy and not f.proxies[-1][1] else None
            if unfit:
                f.proxy_python += ((str(info["pattern"]), unfit),)
    f.ssh_refusal = ssh_config_refusal(f.ssh_path, f.main_config, config_path, parsed, args.target)
    f.control = os.path.join(home, ".ssh", "control") if sys.platform != "win32" else None
    f.control_exists = bool(f.control and os.path.isdir(f.control))
    f.cache = cache_dir(environ, home) if sys.platform != "win32" else None
    f.cache_stat = cache_dir_stat(f.cache) if f.cache else None
    config_text = read_text(config_path) if parsed is not None else ""
    f.patterns = editor_patterns(config_prefix(config_text) or default_host_prefix(sys.argv[0]))
    f.editors = editor_doctor_facts(environ, home, config_path, parsed, f.ssh_path)

    # AWS: credentials and the instance, side by side
    f.aws_results = None
    if aws is not None:
        calls = {"sts": ["sts", "get-caller-identity"]}
        if instance_id:
            calls.update(
                ec2=aws_describe_args(instance_id),
                ssm=aws_ssm_status_args(instance_id),
                start=["ec2", "start-instances", "--instance-ids", instance_id, "--dry-run"],
            )
        f.aws_results = aws.many(calls)
    return f


def doctor_findings(f: DoctorFacts) -> list[tuple[str, str, str, str]]:
    """What doctor reports, one (level, check, detail, fix) per check, from the gathered facts (pure)."""
    out: list[tuple[str, str, str, str]] = []
    add = out.append
    add((OK if f.python_ok else FAIL, "python", f.python, "install Python 3.9 or newer"))
    if f.aws_path:
        major = re.search(r"aws-cli/(\d+)", f.aws_version)
        add((OK, "aws", f"v{major.group(1) if major else '?'} at {f.aws_path}", ""))
    else:
        add((FAIL, "aws", "not found on PATH or in the standard places", AWS_INSTALL_HINT))
    add(
        (OK, "session-manager-plugin", f"{f.plugin_version} at {f.plugin_path}", "")
        if f.plugin_path
        else (FAIL, "session-manager-plugin", "not found", PLUGIN_INSTALL_HINT)
    )
    if f.ssh_path:
        add(
            (
                OK if f.ssh_mux else WARN,
                "ssh",
                f"{f.ssh_path}" + ("" if f.ssh_mux else " (no ControlMaster support)"),
                "comment out the Control* lines of the generic block",
            )
        )
        add(ssh_version_finding(f.ssh_version))
    else:
        add((FAIL, "ssh", "not found", "install the OpenSSH client"))
    add(
        (OK, "ssh-keygen", f.keygen, "")
        if f.keygen
        else (WARN, "ssh-keygen", "not found", "install the OpenSSH client")
    )
    if f.profile_error is not None:
        add((FAIL, "profile", f.profile_error.message, f.profile_error.hint or ""))
    else:
        add((OK, "profile", f.profile_detail, ""))
    out += key_findings(f)
    out += config_findings(f)
    out += editor_findings(f.editors, f.patterns, f.config_path)
    if f.control is not None:
        add(
            (OK, "control dir", f.control, "")
            if f.control_exists
            else (
                WARN,
                "control dir",
                f"{f.control} missing (ssh cannot share connections)",
                f"mkdir -m 700 {f.control}",
            )
        )
    if f.cache is not None:
        add(cache_dir_finding(f.cache, f.cache_stat))
    if f.aws_results is not None:
        sts = f.aws_results["sts"]
        user = ""
        try:
            if isinstance(sts, CloudxError):
                raise sts
            arn = parse_identity(sts)
            user = env_from_identity(arn)[1]
            add((OK, "credentials", aws_text(arn), ""))
        except CloudxError as e:
            add((FAIL, "credentials", e.message, e.hint or ""))
        if f.instance_id:
            out += instance_findings(f.aws_results, f.instance_id, f.region, user)
    if f.target and not f.instance_id:
        add((FAIL, "instance", f"{f.target} is not a host in {f.config_path}", f"run '{PROG} list' to see the hosts"))
    return out


def ssh_version_finding(version: str) -> tuple[str, str, str, str]:
    """The OpenSSH version check: below 9.6 (and not a patched distribution build) warns."""
    found = parse_openssh_version(version)
    shown = aws_text(version) or "(no output from ssh -V)"
    if found is None:
        return (WARN, "ssh version", f"cannot tell the OpenSSH version: {shown}", "use OpenSSH 9.6 or newer")
    if found >= OPENSSH_SAFE or openssh_patched(version):
        return (OK, "ssh version", shown, "")
    return (
        WARN,
        "ssh version",
        f"{shown}: OpenSSH before 9.6 lets a hostile ssh:// link run shell commands through %h (CVE-2023-51385)"
        " unless your distribution patched it",
        "upgrade OpenSSH to 9.6 or newer, and do not open ssh:// links from untrusted places",
    )


def cache_dir_finding(path: str, st: dict[str, int] | None) -> tuple[str, str, str, str]:
    """The cache dir check: it must be ours and writable by nobody else (else connect runs without it)."""
    if st is None:
        return (OK, "cache dir", f"{path} (not created yet)", "")
    fix = f"remove {path} (as its owner or root), or set XDG_CACHE_HOME to a directory of yours"
    if st["link_uid"] not in (-1, st["my_uid"]):
        return (WARN, "cache dir", f"{path} is a symlink made by uid {st['link_uid']}; not used", fix)
    if not st["is_dir"]:
        return (WARN, "cache dir", f"{path} is not a directory; not used", f"remove {path}")
    if st["uid"] != st["my_uid"]:
        return (
            WARN,
            "cache dir",
            f"{path} is owned by uid {st['uid']}, not by you: not used (someone may be planting code there)",
            fix,
        )
    if st["mode"] & 0o022:
        return (WARN, "cache dir", f"{path} is writable by others (mode {st['mode']:o}); not used", f"chmod 700 {path}")
    return (OK, "cache dir", f"{path} ({st['mode']:04o})", "")


def key_findings(f: DoctorFacts) -> list[tuple[str, str, str, str]]:
    """The ssh dir's permissions and the key pair."""
    out: list[tuple[str, str, str, str]] = []
    if f.ssh_dir_mode is not None and f.ssh_dir_mode & 0o077:
        out.append(
            (WARN, "ssh dir", f"{f.ssh_dir} is accessible by others ({f.ssh_dir_mode:o})", f"chmod 700 {f.ssh_dir}")
        )
    if not f.pub_exists:
        out.append((FAIL, "key", f"{f.pub} not found", f"run '{PROG} setup'"))
    elif f.agent:
        out.append((OK, "key", f"{f.pub} with agent {f.agent} (1Password)", ""))
    elif not f.priv_exists:
        out.append((FAIL, "key", f"{f.priv} not found (only the public key exists)", f"run '{PROG} setup'"))
    elif f.priv_loose:
        out.append((FAIL, "key", f"{f.priv} is readable by others (ssh refuses it)", f"chmod 600 {f.priv}"))
    elif f.key_matches is False:
        out.append((FAIL, "key", f"{f.pub} does not match {f.priv}", f"ssh-keygen -y -f {f.priv} > {f.pub}"))
    else:
        out.append((OK, "key", f"{f.priv} (0600)" + (", public key matches" if f.key_matches else ""), ""))
    return out


def ssh_config_refusal(
    ssh: str | None, main_config: str, config_path: str, parsed: dict[str, Any] | None, target: str | None
) -> list[str]:
    """The lines in which `ssh -G` refuses ~/.ssh/config (with what it includes), else our config; [] if it reads.

    One bad line anywhere (an unquoted path with a space in an included file) makes ssh refuse
    the whole config, for every host.
    """
    config = main_config if os.path.isfile(main_config) else config_path
    if not ssh or not os.path.isfile(config):
        return []
    hosts = [h["host"] for h in (parsed or {}).get("hosts", [])]
    host = target if target and HOST_PART_RE.fullmatch(target) else (hosts[0] if hosts else "doctor.invalid")
    proc = run_cmd([ssh, "-G", "-F", config, host], timeout=30)
    return [] if proc.returncode == 0 else [printable(ln) for ln in proc.stderr.splitlines() if " line " in ln][:5]


def ssh_refusal_findings(refusal: list[str], config_path: str) -> list[tuple[str, str, str, str]]:
    """A FAIL for each line ssh names when it refuses the config ('FILE line N: ...')."""
    out = []
    for line in refusal:
        found = re.match(r"(.+?):? line (\d+): (.*)", line)
        where, number, what = found.groups() if found else ("", "", line)
        fix = f"correct line {number} of {where}" if found else "run: ssh -G HOST   and correct what it names"
        if "extra arguments" in what:
            fix += ' (double-quote a path with spaces: IdentityFile "/Users/First Last/...")'
        if found and os.path.realpath(where) == os.path.realpath(config_path):
            fix = f"run '{PROG} cleanup' (it quotes paths with spaces in our blocks), or " + fix
        out.append((FAIL, "ssh reads config", f"ssh refuses the whole config, so every host fails: {line}", fix))
    return out


def config_findings(f: DoctorFacts) -> list[tuple[str, str, str, str]]:
    """The SSH config, the Include in ~/.ssh/config and each environment's ProxyCommand."""
    if f.parsed is None:
        return [(FAIL, "ssh config", f"{f.config_path} not found", f"run '{PROG} setup'")]
    hosts, envs = len(f.parsed["hosts"]), len(f.parsed["environments"])
    out = [(OK, "ssh config", f"{f.config_path}: {hosts} hosts in {envs} environments", "")]
    out += ssh_refusal_findings(f.ssh_refusal, f.config_path)
    main, path = f.main_config, f.config_path
    if f.include_where is not None:
        out.append(
            {
                "before": (OK, "include", f"{main} includes it where ssh applies it to every host", ""),
                "inside": (
                    FAIL,
                    "include",
                    f"the Include in {main} sits inside a Host/Match block (ssh applies it to that block's hosts only)",
                    f"run '{PROG} setup' (or move 'Include {path}' above the first Host line)",
                ),
                "missing": (
                    FAIL,
                    "include",
                    f"{main} does not include {path}",
                    f"run '{PROG} setup' (or add 'Include {path}' at its top)",
                ),
            }[f.include_where]
        )
    unstable, unfit = dict(f.proxy_unstable), dict(f.proxy_python)
    for pattern, missing in f.proxies:
        if missing:
            out.append((FAIL, "proxy command", f"{pattern}: {missing} does not exist", f"run '{PROG} setup' again"))
        elif pattern in unfit:
            out.append(
                (FAIL, "proxy command", f"{pattern}: {unfit[pattern]}", f"run '{PROG} setup' again with Python 3.9+")
            )
        elif pattern in unstable:
            out.append(
                (
                    WARN,
                    "proxy command",
                    f"{pattern}: {unstable[pattern]}, which may be cleaned",
                    f"run '{PROG} setup' again: it installs a stable copy beside the SSH config",
                )
            )
        else:
            out.append((OK, "proxy command", f"{pattern} runs an existing program", ""))
    return out


def editor_doctor_facts(
    environ: Mapping[str, str], home: str, config_path: str, parsed: dict[str, Any] | None, ssh: str | None
) -> list[dict[str, Any]]:
    """Each installed editor's settings.json: its settings (or why they cannot be read) and, when
    remote.SSH.configFile is set, whether the file it names gives our hosts."""
    out = []
    for name, path in installed_editors(environ, home):
        fact: dict[str, Any] = {"name": name, "path": path, "settings": None, "error": None, "shows_hosts": None}
        try:
            root = parse_jsonc(read_text(path))
            if root is not None and not isinstance(root.value, dict):
                raise ValueError("the top level is not an object")
            fact["settings"] = root.value if root is not None else {}
        except CloudxError as e:
            fact["error"] = e.message
        except ValueError as e:
            fact["error"] = str(e)
        named = (fact["settings"] or {}).get(EDITOR_CONFIG_KEY)
        if isinstance(named, str) and named.strip():
            fact["shows_hosts"] = config_file_shows_hosts(os.path.expanduser(named), config_path, parsed, ssh)
        out.append(fact)
    return out


def config_file_shows_hosts(path: str, config_path: str, parsed: dict[str, Any] | None, ssh: str | None) -> bool:
    """Whether ssh reading only `path` (Remote-SSH's remote.SSH.configFile) gets our hosts: what
    `ssh -G -F path HOST` makes of one of them, else whether path includes our config."""
    if not os.path.isfile(path):
        return False
    if os.path.realpath(path) == os.path.realpath(config_path):
        return True
    hosts = [h for h in (parsed or {}).get("hosts", []) if h["instance_id"]]
    if ssh and hosts:
        proc = run_cmd([ssh, "-G", "-F", path, hosts[0]["host"]], timeout=30)
        return proc.returncode == 0 and f"hostname {hosts[0]['instance_id']}" in proc.stdout.splitlines()
    return include_position(read_text(path), config_path) != "missing"


def editor_findings(
    editors: list[dict[str, Any]], patterns: list[str], config_path: str
) -> list[tuple[str, str, str, str]]:
    """Per installed editor: the Remote-SSH timeouts in force, the platform of our hosts, and
    whether remote.SSH.configFile (when set) names a file that gives our hosts (pure)."""
    out: list[tuple[str, str, str, str]] = []
    for e in editors:
        name, path, settings = e["name"], e["path"], e["settings"]
        if settings is None:
            add = " ".join(render_editor_snippet(patterns))
            out.append((WARN, f"{name} settings", f"cannot read {path}: {e['error']}", f"fix it, then add: {add}"))
            continue
        for key, least in EDITOR_MINIMUMS:
            value = settings.get(key, EDITOR_DEFAULTS[key])
            shown = json.dumps(value) + (" s" if _is_number(value) else "")
            shown += "" if key in settings else " (not set: the default)"
            check = f"{name} {key.rsplit('.', 1)[1]}"
            if _is_number(value) and value >= least:
                out.append((OK, check, shown, ""))
                continue
            why = (
                "a stopped instance takes 30-90 s to come up"
                if least == 90
                else "the first connect installs the server"
            )
            fix = f"run '{PROG} setup' again (it sets {least}), or set \"{key}\": {least} there"
            out.append((WARN, check, f"{shown} in {path}: {why}", fix))
        out.append(_platform_finding(name, path, settings.get(EDITOR_PLATFORM_KEY), patterns))
        if e["shows_hosts"] is not None:
            named, check = settings.get(EDITOR_CONFIG_KEY), f"{name} configFile"
            if e["shows_hosts"]:
                out.append((OK, check, f"remote.SSH.configFile {named} gives the {patterns[0]} hosts", ""))
                continue
            detail = (
                f"remote.SSH.configFile names {named}, without the {patterns[0]} hosts: Remote-SSH will not see them"
            )
            fix = f'remove "remote.SSH.configFile" from {path} (then ~/.ssh/config, which includes ours, is read)'
            out.append((FAIL, check, detail, f"{fix}, or add 'Include {config_path}' at the top of {named}"))
    return out


def _platform_finding(name: str, path: str, platforms: Any, patterns: list[str]) -> tuple[str, str, str, str]:
    """The remotePlatform check of one editor: our patterns mapped, and to linux."""
    check = f"{name} remotePlatform"
    pairs = ", ".join(f'"{p}": "linux"' for p in patterns)
    if platforms is not None and not isinstance(platforms, dict):
        return (WARN, check, f"remote.SSH.remotePlatform in {path} is not an object", f"make it {{{pairs}}}")
    platforms = platforms or {}
    missing = [p for p in patterns if p not in platforms]
    if missing:
        detail = f"{', '.join(missing)} not in remote.SSH.remotePlatform of {path}: Remote-SSH asks for the platform"
        return (WARN, check, detail, f"run '{PROG} setup' again, or add {pairs} there")
    other = [f"{p} is {json.dumps(platforms[p])}" for p in patterns if platforms[p] != "linux"]
    if other:
        return (
            WARN,
            check,
            f"{', '.join(other)} (cloudX instances run Linux)",
            'set it to "linux" unless yours do not',
        )
    return (OK, check, ", ".join(f"{p}: linux" for p in patterns), "")


def cmd_doctor(args: argparse.Namespace) -> int:
    """Check everything a connection needs and say what to fix; exit 1 if anything FAILs."""
    findings = doctor_findings(gather_doctor_facts(args, os.environ))
    if args.json:
        print(json.dumps([{"level": lv, "check": c, "detail": d, "fix": f} for lv, c, d, f in findings], indent=2))
    else:
        sys.stdout.write(render_findings(findings, color=_COLOR and sys.stdout.isatty()))
    return EXIT_ERROR if any(f[0] == FAIL for f in findings) else EXIT_OK


def instance_findings(res: dict[str, Any], iid: str, region: str, user: str) -> list[tuple[str, str, str, str]]:
    """Findings about one instance from describe-instances, SSM and a StartInstances dry run (pure)."""
    out: list[tuple[str, str, str, str]] = []
    add = out.append
    ec2, ssm, start = res["ec2"], res["ssm"], res["start"]
    state = None
    try:
        if isinstance(ec2, CloudxError):
            raise ec2
        instances = parse_instances(ec2)
        inst = instances[0] if instances else {}
        state = instance_state_name(inst) if inst.get("State") is not None else "unknown"
        tags = parse_tags(inst)
    except CloudxError as e:
        add((FAIL, "instance", e.message, e.hint or ""))
    else:
        add(
            {
                "running": (OK, "instance", f"{iid} running in {region}", ""),
                "stopped": (WARN, "instance", f"{iid} is stopped", "connect starts it (allow about a minute)"),
            }.get(
                state,
                (
                    FAIL if state in ("terminated", "shutting-down") else WARN,
                    "instance",
                    f"{iid} is {state}",
                    "use a running instance",
                ),
            )
        )
        owner = tags.get("cloudxuser")
        if owner is None:
            add(
                (
                    WARN,
                    "cloudxuser tag",
                    f"{iid} has no cloudxuser tag (ABAC access may be refused)",
                    "tag the instance cloudxuser=<your IAM user>",
                )
            )
        elif user and owner.lower() != user.lower():
            add(
                (
                    FAIL,
                    "cloudxuser tag",
                    f"the instance belongs to {aws_text(owner)}, you are {user}",
                    "use your own instance or your own credentials",
                )
            )
        else:
            add((OK, "cloudxuser tag", aws_text(owner), ""))
    try:
        if isinstance(ssm, CloudxError):
            raise ssm
        ping = parse_ping_status(ssm, iid)
        level = OK if ping == "Online" else (WARN if state != "running" else FAIL)
        add((level, "ssm", f"PingStatus {ping}", SSM_AGENT_HINT))
    except CloudxError as e:
        add((FAIL, "ssm", e.message, e.hint or ""))
    if isinstance(start, CloudxError) and start.code == "DryRunOperation":
        add((OK, "start permission", "ec2:StartInstances allowed (dry run)", ""))
    elif (
        isinstance(start, CloudxError) and start.code and ("Unauthorized" in start.code or "AccessDenied" in start.code)
    ):
        add((FAIL, "start permission", start.message, start.hint or ""))
    elif isinstance(start, CloudxError):
        add((WARN, "start permission", f"dry run inconclusive: {start.message}", ""))
    return out


# ---------------------------------------------------------------------------
# cleanup and migrate
# ---------------------------------------------------------------------------
def glob_overlap(a: str, b: str) -> bool:
    """True if some host name matches both ssh patterns ('*' and '?'); case is ignored, to err on the safe side."""
    a, b = a.lower(), b.lower()
    if not any(c in "*?" for c in a + b):
        return a == b
    memo: dict[tuple[int, int], bool] = {}

    def meet(i: int, j: int) -> bool:
        if (i, j) not in memo:
            memo[i, j] = False  # a cycle (two '*' consuming nothing) proves nothing
            found = i == len(a) and j == len(b)
            found = found or (i < len(a) and a[i] == "*" and meet(i + 1, j))
            found = found or (j < len(b) and b[j] == "*" and meet(i, j + 1))
            if not found and i < len(a) and j < len(b) and (a[i] in "*?" or b[j] in "*?" or a[i] == b[j]):
                step = (i if a[i] == "*" else i + 1, j if b[j] == "*" else j + 1)
                found = step != (i, j) and meet(*step)
            memo[i, j] = found
        return memo[i, j]

    return meet(0, 0)


def block_keywords(block: ConfigBlock) -> list[tuple[str, str]]:
    """(keyword, value) of each directive below a block's Host/Match line."""
    found = (parse_directive(ln) for ln in block.lines[block.header_index() + 1 :])
    return [(p[0], p[1]) for p in found if p]


def block_facts(block: ConfigBlock, words: list[str]) -> tuple[str | None, frozenset[str], tuple[str, ...]]:
    """What blocks_commute needs of a block: its keyword, the keywords it sets, its positive Host patterns."""
    keys = (split_directive(ln) for ln in block.lines[block.header_index() + 1 :])
    return block.keyword, frozenset(k[0] for k in keys if k), tuple(w for w in words if w[:1] != "!")


def blocks_commute(
    a: tuple[str | None, frozenset[str], tuple[str, ...]], b: tuple[str | None, frozenset[str], tuple[str, ...]]
) -> bool:
    """True if swapping two adjacent blocks (their block_facts) cannot change what ssh resolves for any host.

    ssh takes most settings from the first block that sets them (others add up in
    order), so two Host blocks commute when no host matches both or they set no
    keyword in common. Match blocks (their conditions read settings) and Include
    lines commute with nothing.
    """
    if a[0] != "host" or b[0] != "host":
        return False
    if a[1].isdisjoint(b[1]) and "include" not in a[1] | b[1]:
        return True
    return not any(glob_overlap(x, y) for x in a[2] for y in b[2])


def _ineffective(block: ConfigBlock, earlier: ConfigBlock) -> bool:
    """True if ssh never uses a line of `block` because `earlier` (before it) matches every host it does.

    Every directive must be a first-wins keyword that `earlier` sets, or an
    IdentityFile `earlier` names too; a comment counts as the user's and keeps it.
    """
    words, before = block.words(), earlier.words()
    if not words or any(w.startswith("!") for w in words + before) or not set(words) <= set(before):
        return False
    rest = block.lines[block.header_index() + 1 :]
    if any(ln.lstrip().startswith("#") and not ln.startswith(BANNER_PREFIXES) for ln in rest):
        return False
    theirs = block_keywords(earlier)
    keys = {k for k, _ in theirs}
    return all(
        (k in FIRST_WINS_KEYWORDS and k in keys) or (k == "identityfile" and (k, v) in theirs)
        for k, v in block_keywords(block)
    )


def _widen_prefix(block: ConfigBlock, size: int, prefix: str | None, newline: str, rename: bool = True) -> None:
    """A wildcard Host line of ours gets every spelling of its prefix (its first `size` characters;
    prefix_spellings), as the original's setup and cleanup write it, so host entries in either spelling
    get its settings. When its prefix is `prefix` in any case, that spelling leads; with `rename`,
    PyPI cloudx-proxy's 'uvx cloudX-proxy' is named in it too, as the original's cleanup did."""
    words = block.words()
    convert = prefix is not None and words[0][:size].lower() == prefix.lower()
    lead = prefix if prefix is not None and convert else words[0][:size]
    wanted = list(dict.fromkeys([p + words[0][size:] for p in prefix_spellings(lead)] + words))
    if wanted != words:
        i = block.header_index()
        line = block.lines[i]
        cut = re.search(r"\s+#", line)
        comment = line[cut.start() :].rstrip("\r\n") if cut else ""
        block.lines[i] = "Host " + " ".join(wanted) + comment + newline
        block.patterns = (section_match(block.lines[i]) or ("", ""))[1]
    if rename and convert and lead.lower() == "cloudx":
        block.lines = [re.sub(r"\buvx cloud[xX]-proxy\b", f"uvx {lead}-proxy", ln) for ln in block.lines]


def _widen_wildcards(
    blocks: list[ConfigBlock], parsed: dict[str, Any], prefix: str | None, newline: str, rename: bool = True
) -> list[str]:
    """_widen_prefix on each of our generic and environment blocks (by parse_cloudx_config); returns notes."""
    generic_patterns = {p.lower() for p in parsed["generic"]}
    env_patterns = {str(e["pattern"]).lower(): name for name, e in parsed["environments"].items()}
    notes = []
    for block in blocks[1:]:
        words = block.words()
        lowered = {w.lower() for w in words}
        pattern = lowered.pop() if len(lowered) == 1 else ""
        if pattern in generic_patterns:
            _widen_prefix(block, len(pattern) - 2, prefix, newline, rename)
        elif pattern in env_patterns:
            _widen_prefix(block, len(pattern) - len(env_patterns[pattern]) - 3, prefix, newline, rename)
        now = block.words()
        if now != words and set(now) == set(words):
            notes.append(f"Host {' '.join(words)} now leads with {now[0]}: {' '.join(now)}")
        elif now != words:
            notes.append(f"Host {' '.join(words)} now answers to every prefix spelling: {' '.join(now)}")
    return notes


def lead_spelling(text: str, prefix: str) -> tuple[str, list[str]]:
    """setup's wildcard Host lines (generic and every environment) lead with `prefix`, the other spellings
    after it, as PyPI cloudx-proxy's setup writes each line it owns ('Host cloudX-* cloudx-*' for cloudX);
    host entries, lines that are not ours and the rest of every block keep their bytes. Returns the text and notes."""
    newline = "\r\n" if "\r\n" in text or text.endswith("\r") else "\n"
    blocks = split_config(text)
    notes = _widen_wildcards(blocks, parse_cloudx_config(text), prefix, newline, rename=False)
    return join_config(blocks), notes


def repair_config(text: str, prefix: str | None = None, rename: bool = True) -> tuple[str, list[str]]:
    """cleanup's repairs, in place, as the original's cleanup makes them: our wildcard Host lines get
    every prefix spelling (_widen_prefix; with `prefix`, that spelling leads; with `rename` too, 'uvx
    cloudx-proxy' follows it) and unquoted paths with spaces in our blocks are quoted (requote_path_line);
    a leading BOM goes. Returns the text and notes."""
    newline = "\r\n" if "\r\n" in text else "\n"
    parsed = parse_cloudx_config(text)
    generic_patterns = {p.lower() for p in parsed["generic"]}
    env_patterns = {str(e["pattern"]).lower() for e in parsed["environments"].values()}
    hosts = {h["host"].lower() for h in parsed["hosts"]}
    notes = ["removed the byte order mark at the start (ssh refuses the file with it)"] if text[:1] == "\ufeff" else []
    blocks = split_config(text[1:] if notes else text)
    notes += _widen_wildcards(blocks, parsed, prefix, newline, rename)
    for block in blocks[1:]:
        lowered = {w.lower() for w in block.words()}
        pattern = lowered.pop() if len(lowered) == 1 else ""
        if pattern in generic_patterns | env_patterns | hosts and requote_paths(block):
            notes.append(f"Host {' '.join(block.words())}: quoted a path with spaces (ssh refused it unquoted)")
    return join_config(blocks), notes


def canonical_config(text: str, when: str, prefix: str | None = None, rename: bool = True) -> tuple[str, list[str]]:
    """Our blocks in three-tier order with fresh banners, without copies ssh never reads.

    Two repairs come first, as the original's cleanup makes them: our wildcard Host
    lines get every prefix spelling (_widen_prefix; with `prefix`, that spelling
    leads; `rename`: see repair_config), and unquoted paths with spaces in our
    blocks are quoted. Beyond those (and the rename), nothing ssh resolves for any
    host changes: a block moves past another only
    where the two commute (blocks_commute), so a user's block that must stay
    before ours does; foreign blocks keep their order and their bytes. A later
    block of ours is dropped only if every line of it is shadowed by an earlier
    block for the same hosts (ssh uses the first). PyPI cloudx-proxy's banners
    become ours. Returns the text and what was done.
    """
    import heapq

    # Repaired first: where blocks may move depends on the patterns they end up with.
    text, notes = repair_config(text, prefix, rename)
    newline = "\r\n" if "\r\n" in text else "\n"
    parsed = parse_cloudx_config(text)
    envs: dict[str, dict[str, Any]] = parsed["environments"]
    env_of = {h["host"].lower(): h["environment"].lower() for h in parsed["hosts"]}
    generic_patterns = {p.lower() for p in parsed["generic"]}
    env_patterns = {str(e["pattern"]).lower(): name for name, e in envs.items()}
    blocks = split_config(text)
    preamble, rest = blocks[0], blocks[1:]

    words_of = [b.words() for b in rest]

    def kind_of(i: int) -> str:
        words = {w.lower() for w in words_of[i]}
        pattern = words.pop() if len(words) == 1 else ""
        if pattern in generic_patterns:
            return "generic"
        return "environment" if pattern in env_patterns else "host" if pattern in env_of else ""

    kinds = [kind_of(i) for i in range(len(rest))]
    kept: list[int] = []
    for i, block in enumerate(rest):
        if kinds[i] and any(kinds[j] and _ineffective(block, rest[j]) for j in kept):
            notes.append(
                f"dropped duplicate {kinds[i]} block Host {' '.join(block.words())} (ssh reads an earlier one)"
            )
            continue
        kept.append(i)

    def sort_key(i: int) -> tuple[int, str, int, str, int]:
        kind, pattern = kinds[i], (words_of[i] or [""])[0].lower()
        if kind == "generic":
            return (0, "", 0, "", i)
        if kind:
            env = env_patterns.get(pattern) or env_of.get(pattern, "")
            return (1, env, 0 if kind == "environment" else 1, pattern, i)
        return (2, "", 0, "", i)

    after: dict[int, list[int]] = {i: [] for i in kept}
    waiting = dict.fromkeys(kept, 0)
    foreign = [i for i in kept if not kinds[i]]
    for x, y in zip(foreign, foreign[1:]):  # the user's blocks keep their order
        after[x].append(y)
        waiting[y] += 1
    facts = {i: block_facts(rest[i], words_of[i]) for i in kept}
    ours = [i for i in kept if kinds[i]]
    for x, y in sorted({(min(i, j), max(i, j)) for i in ours for j in kept if i != j}):
        if not blocks_commute(facts[x], facts[y]):
            after[x].append(y)
            waiting[y] += 1
    keys = {i: sort_key(i) for i in kept}
    ready = [keys[i] for i in kept if not waiting[i]]
    heapq.heapify(ready)
    order = []
    while ready:
        i = heapq.heappop(ready)[-1]
        order.append(i)
        for j in after[i]:
            waiting[j] -= 1
            if not waiting[j]:
                heapq.heappush(ready, keys[j])

    def body(block: ConfigBlock) -> list[str]:
        lines = [
            ln
            for ln in block.lines[block.header_index() :]
            if not ln.startswith(BANNER_PREFIXES) and not ORIGINAL_HEADER_RE.fullmatch(ln)
        ]
        while lines and not lines[-1].strip():
            lines.pop()
        return [ln if ln.endswith("\n") else ln + newline for ln in lines]

    out = [ln for ln in preamble.lines if not ln.startswith(BANNER_PREFIXES) and not ORIGINAL_HEADER_RE.fullmatch(ln)]
    while out and not out[-1].strip():
        out.pop()
    if out:
        out[-1] = out[-1] if out[-1].endswith("\n") else out[-1] + newline
        out.append(newline)
    for i in order:
        block, kind = rest[i], kinds[i]
        banner = _block_lines(render_banner(kind, when), newline) if kind else []
        out += banner + body(block) + [newline]
    return "".join(out).rstrip("\r\n") + newline, notes


def cmd_cleanup(args: argparse.Namespace) -> int:
    """Rewrite the SSH config in canonical order without duplicates (backup first; --dry-run shows the diff)."""
    home = os.path.expanduser("~")
    path = (
        os.path.expanduser(validate_path("--ssh-config", args.ssh_config))
        if args.ssh_config
        else default_ssh_config(home)
    )
    if not os.path.isfile(path):
        raise CloudxError(f"no SSH config at {path}", f"run '{PROG} setup' first, or pass --ssh-config")
    notes: list[str] = []

    # As the original's cleanup: the command name picks the spelling our wildcard lines lead with. Only an
    # explicit --ssh-host-prefix renames 'uvx cloudx-proxy' too: that changes what ssh -G shows, the order does not.
    prefix = args.ssh_host_prefix if args.ssh_host_prefix is not None else default_host_prefix(sys.argv[0])
    validate_host_part("--ssh-host-prefix", prefix)
    rename = args.ssh_host_prefix is not None

    def update(old: str) -> str:
        new, dropped = canonical_config(old, time.strftime("%Y-%m-%d %H:%M:%S"), prefix, rename)
        notes.extend(dropped)
        # Only the banners' dates changed: nothing to clean.
        same = [ln for ln in new.splitlines() if not ln.startswith("# Created by")] == [
            ln for ln in old.splitlines() if not ln.startswith("# Created by")
        ]
        return old if same else new

    old, new = update_file(path, update, cache_dir(os.environ, home), args.dry_run)
    for note in notes:
        log(note)
    parsed = parse_cloudx_config(new or old)
    ours = parsed["generic"][:1] + [str(e["pattern"]) for e in parsed["environments"].values()]
    for shadow in shadowing_catch_alls(new or old, ours):
        log(f"warning: {shadow}: ssh uses its values for these hosts (kept there: it is yours)")
    if new is None:
        log(f"{path} is already clean")
    elif args.dry_run:
        print_diff(path, old, new)
    else:
        log(f"rewrote {path} (backup beside it)")
    return EXIT_OK


# Path directives migrate rewrites, and whether ssh expands %-tokens in them.
MIGRATE_PATH_KEYWORDS = {
    "identityfile": True,
    "identityagent": True,
    "certificatefile": True,
    "controlpath": True,
    "userknownhostsfile": True,
    "include": False,
}
SHELL_OPERATORS = ";&|<>()"


def sh_words(text: str) -> list[tuple[int, int, str]] | None:
    """POSIX-shell words of a command line as (start, end, value); operators are words of their own.

    None when a quote is left open. Only as much of sh as a ProxyCommand needs:
    quotes, backslashes, blanks and the operator characters.
    """
    words: list[tuple[int, int, str]] = []
    i, n = 0, len(text)
    while i < n:
        if text[i] in " \t":
            i += 1
            continue
        start, value = i, []
        if text[i] in SHELL_OPERATORS:
            while i < n and text[i] in SHELL_OPERATORS:
                i += 1
            words.append((start, i, text[start:i]))
            continue
        while i < n and text[i] not in " \t" + SHELL_OPERATORS:
            ch = text[i]
            if ch == "'":
                end = text.find("'", i + 1)
                if end < 0:
                    return None
                value.append(text[i + 1 : end])
                i = end + 1
            elif ch == '"':
                i += 1
                while i < n and text[i] != '"':
                    if text[i] == "\\" and i + 1 < n and text[i + 1] in '$`"\\':
                        i += 1
                    value.append(text[i])
                    i += 1
                if i >= n:
                    return None
                i += 1
            elif ch == "\\" and i + 1 < n:
                value.append(text[i + 1])
                i += 2
            else:
                value.append(ch)
                i += 1
        words.append((start, i, "".join(value)))
    return words


def moved_path(value: str, source: str, target: str, home: str, relative_to: str | None = None) -> str | None:
    """`value` with the directory `source` replaced by `target`, or None if it is not in `source`.

    Whole components only ('.../vscode-old' is not in '.../vscode'); '~/', '$HOME/' and
    '${HOME}/' spellings count; a '~/' path stays '~/' when the target is under HOME.
    relative_to: the directory a relative value is relative to (an Include's ~/.ssh).
    """
    rel = source[len(home) + 1 :] if source.startswith(home + "/") else None
    forms = [(source, False)]
    if rel:
        forms += [(f"~/{rel}", True), (f"$HOME/{rel}", False), (f"${{HOME}}/{rel}", False)]
    if relative_to and source.startswith(relative_to + "/"):
        forms.append((source[len(relative_to) + 1 :], False))
    for form, tilde in forms:
        if value == form or value.startswith(form + "/"):
            rest = value[len(form) :]
            if tilde and target.startswith(home + "/"):
                return "~" + target[len(home) :] + rest
            return target + rest
    return None


def _with_value(line: str, value: str, comment: str = "") -> str:
    """A config line with its value replaced: indentation, keyword (quoted or not) and line ending kept."""
    found = split_directive(line)
    head = line[: len(line) - len(found[1])] if found else ""
    body = line.rstrip("\r\n")
    ending = line[len(body) :]
    return head + value + (f" # {comment}" if comment else "") + ending


def migrate_proxy_command(value: str, source: str, target: str, home: str, add: dict[str, str]) -> str | None:
    """A connect ProxyCommand with paths in `source` moved to `target` and the `add` flags it lacks
    (the defaults it relied on); None when it is not ours or needs no change.

    Changed words are re-quoted as setup quotes them; every other word is kept as written.
    """
    words = sh_words(value)
    if not words:
        return None
    plain = [w[2] for w in words]
    at = next((i for i, w in enumerate(plain) if w == "connect" and i > 0), None)
    if at is None or not any("cloudx" in os.path.basename(w).lower() for w in plain[:at]):
        return None
    edits: dict[int, str] = {}
    seen: set[str] = set()
    insert_at = words[at][1]
    positionals = 0
    i = at + 1
    while i < len(words) and not (plain[i] and plain[i][0] in SHELL_OPERATORS):
        word = plain[i]
        flag, eq, inline = word.partition("=")
        if word.startswith("-") and word != "-":
            seen.add(flag)
            takes_value = flag.startswith("--") and flag not in ("--dry-run", "--verbose", "--help", "--no-color")
            path_value = inline if eq else (plain[i + 1] if takes_value and i + 1 < len(words) else None)
            where = i if eq else i + 1
            if flag in ("--ssh-dir", "--ssh-config") and path_value is not None:
                unescaped = path_value.replace("%%", "\0")
                if "%" not in unescaped:  # an ssh %-token in it: leave the word alone
                    new = moved_path(unescaped.replace("\0", "%"), source, target, home)
                    if new is not None:
                        edits[where] = (flag + "=" if eq else "") + quote_proxy_arg(os.path.expanduser(new))
            i += 1 if eq or not takes_value else 2
            continue
        if positionals < 2:
            positionals += 1
            insert_at = words[i][1]
        i += 1
    wanted = dict(add)
    if "--ssh-config" in seen:
        wanted.pop("--ssh-dir", None)
    extra = "".join(f" {flag} {quote_proxy_arg(v)}" for flag, v in wanted.items() if flag not in seen)
    if not edits and not extra:
        return None
    changes = [(words[k][0], words[k][1], text) for k, text in edits.items()]
    if extra:
        changes.append((insert_at, insert_at, extra))
    out, last = [], 0
    for start, end, text in sorted(changes):
        out += [value[last:start], text]
        last = end
    return "".join(out) + value[last:]


def migrate_config_text(
    text: str, source: str, target: str, home: str, add: dict[str, str] | None = None
) -> tuple[str, list[str]]:
    """Point an SSH config at `target` instead of the legacy `source` directory.

    Path directives (IdentityFile, Include, ...) and our connect ProxyCommands are re-rendered
    with setup's quoting; a ProxyCommand also gets the `add` flags it lacks (the defaults it
    relied on while only ~/.ssh/vscode existed). Every other byte stays. Returns the text and
    a note per line it could not rewrite.
    """
    out, notes = [], []
    ssh_dir = os.path.join(home, ".ssh")
    for line in split_lines(text):
        parsed = parse_directive(line)
        if not parsed:
            out.append(line)
            continue
        keyword, value, comment = parsed
        if keyword == "proxycommand":
            raw = (split_directive(line) or ("", ""))[1].strip()  # '"ProxyCommand" …' too
            new = migrate_proxy_command(raw, source, target, home, add or {})
            if new is not None:
                line = _with_value(line, new)
            elif source in raw or "/.ssh/" + os.path.basename(source) in raw:
                notes.append(f"left as it is (not a {PROG} connect): {raw}")
        elif keyword in MIGRATE_PATH_KEYWORDS:
            pct = "%%" if MIGRATE_PATH_KEYWORDS[keyword] else "%"  # the value is as written: '%' escaped or not
            src, dst, hm, sd = (p.replace("%", pct) for p in (source, target, home, ssh_dir))
            words = ssh_words(value)
            moved = [moved_path(w, src, dst, hm, sd if keyword == "include" else None) for w in words]
            if any(m is not None for m in moved):
                rendered = [quote_config_value(m if m is not None else w, percent=False) for w, m in zip(words, moved)]
                line = _with_value(line, " ".join(rendered), comment)
        out.append(line)
    return "".join(out), notes


def migrate_plan(source: str, target: str) -> list[tuple[str, str, str]]:
    """The files to move: (name, source path, target path); regular files only, no temp files."""
    plan = []
    for name in sorted(os.listdir(source)):
        src = os.path.join(source, name)
        if os.path.isfile(src) and not name.endswith(("~", ".tmp")) and not name.startswith(".tmp-"):
            plan.append((name, src, os.path.join(target, name)))
    return plan


def migrated_link(src: str, source: str, target: str, moved: set[str]) -> str:
    """What the symlink `src` in the legacy dir must say once it sits in `target`: it resolves to the
    same file, or to that file's new place when the file moves too. A relative link stays relative
    (rewritten for the new depth); an absolute one that points elsewhere is kept as written."""
    text = os.readlink(src)
    real_source, real_target = os.path.realpath(source), os.path.realpath(target)
    final = os.path.realpath(src)
    if os.path.dirname(final) == real_source and os.path.basename(final) in moved:
        final = os.path.join(real_target, os.path.basename(final))
    elif os.path.isabs(text):
        return text
    return final if os.path.isabs(text) else os.path.relpath(final, real_target)


def migrate_contents(
    plan: list[tuple[str, str, str]], source: str, target: str, home: str, add: dict[str, str]
) -> tuple[dict[str, bytes], dict[str, str], str | None, str | None]:
    """What migrate writes: (bytes per moved regular file, link text per moved symlink, the file
    outside the dir a symlinked config is edited in (else None), the key of the config's new text
    in the bytes: 'config', the name of the file it links to in the dir, '' for that outside file,
    or None without a config)."""
    moved = {name for name, _, _ in plan}
    contents: dict[str, bytes] = {}
    links = {name: migrated_link(src, source, target, moved) for name, src, _ in plan if os.path.islink(src)}
    for name, src, _dst in plan:
        if name not in links:
            contents[name] = read_text_bytes(src)
    through, key = None, None
    for name, src, _dst in plan:
        if name != "config":
            continue
        text, notes = migrate_config_text(read_text(src), source, target, home, add)
        for note in notes:
            log(f"  {src}: {note}")
        real = os.path.realpath(src)
        if name not in links:
            key = name
        elif os.path.dirname(real) == os.path.realpath(source) and os.path.basename(real) in contents:
            key = os.path.basename(real)  # the file the link names moves with it
        else:
            key, through = "", real  # a file elsewhere (a dotfiles repo): edited in place, through the link
        contents[key] = text.encode("utf-8")
    return contents, links, through, key


def migrate_conflicts(plan: list[tuple[str, str, str]], contents: dict[str, bytes], links: dict[str, str]) -> list[str]:
    """The target files that exist and differ from what migrate would put there."""
    out = []
    for name, _src, dst in plan:
        if not os.path.lexists(dst):
            continue
        if name in links:
            same = os.path.islink(dst) and os.readlink(dst) == links[name]
        else:
            same = os.path.isfile(dst) and not os.path.islink(dst) and read_text_bytes(dst) == contents[name]
        if not same:
            out.append(dst)
    return out


def place_link(dst: str, text: str) -> None:
    """Create (or replace) the symlink dst -> text atomically: a temp link beside it, then a rename."""
    tmp = os.path.join(os.path.dirname(dst), f".tmp-{os.path.basename(dst)}-{os.getpid()}~")
    if os.path.lexists(tmp):
        os.unlink(tmp)
    os.symlink(text, tmp)
    os.replace(tmp, dst)


def migrate_legacy(home: str, target: str, dry_run: bool, confirm: Callable[[str], bool] | None) -> int:
    """Move ~/.ssh/vscode to `target`, keeping every host in its config working.

    All or nothing: a differing file at the target is overwritten only when `confirm` says so
    (after a backup); otherwise nothing is changed. Symlinks move as symlinks that still resolve;
    a symlinked config is edited through its link. Returns the number of files moved.
    """
    source = os.path.join(home, ".ssh", "vscode")
    if not os.path.isdir(source):
        raise CloudxError(f"nothing to migrate: {source} does not exist")
    if os.path.realpath(source) == os.path.realpath(target) or target.startswith(source + os.sep):
        raise usage_error("--target-dir is the legacy directory itself, or inside it")
    # The defaults flag-less connects used here, which the move changes: make them explicit.
    d_profile, d_key, d_dir = default_profile_and_key(home)
    add = {"--profile": d_profile, "--ssh-key": d_key, "--ssh-dir": target} if d_dir == source else {}
    plan = migrate_plan(source, target)
    contents, links, through, config_key = migrate_contents(plan, source, target, home, add)
    overwrite = migrate_conflicts(plan, contents, links)
    if overwrite and not dry_run:
        for dst in overwrite:
            if confirm is None or not confirm(f"{dst} exists and differs. Overwrite it (after a backup)?"):
                raise CloudxError(
                    f"{dst} exists and differs; nothing was migrated",
                    "move it aside (or pass --target-dir), then migrate again",
                )
    main_config = os.path.join(home, ".ssh", "config")
    target_config = os.path.join(target, "config")

    def update_main(old: str) -> str:
        new, notes = migrate_config_text(old, source, target, home, add)
        for note in notes:
            log(f"  {main_config}: {note}")
        if any(name == "config" for name, _, _ in plan):
            return insert_include(new, target_config) or new
        return new

    cache = cache_dir(os.environ, home)
    if dry_run:
        migrate_preview(plan, contents, links, through, overwrite, config_key, target)
        old, new = update_file(main_config, update_main, cache, True)
        if new is not None:
            print_diff(main_config, old, new)
        log("[dry run] nothing was changed")
        return 0
    ensure_private_dir(target)
    if through is not None:
        edited = str(contents[config_key or ""], "utf-8")
        update_file(through, lambda old: edited, cache)
        log(f"  updated {through} (the file {os.path.join(source, 'config')} links to; backup beside it)")
    for name, src, dst in plan:
        if dst in overwrite:
            backup = backup_file(dst)
            log(f"  backed up {dst} to {backup}")
        if name in links:
            place_link(dst, links[name])
            continue
        mode = stat_mode(src)
        mode = (mode & 0o644 or 0o644) if name.endswith(".pub") else (mode & 0o600 or 0o600)
        atomic_write_bytes(dst, contents[name], 0o600 if name == "config" else mode)
    for name, src, dst in plan:
        if os.path.lexists(src):
            os.unlink(src)
        log(f"moved {src} -> {dst}" + (f" (a symlink to {links[name]})" if name in links else ""))
    old, new = update_file(main_config, update_main, cache)
    if new is not None:
        log(f"updated {main_config} (backup beside it)")
    if not os.listdir(source):
        os.rmdir(source)
        log(f"removed the empty {source}")
    else:
        log(f"left in {source}: {', '.join(sorted(os.listdir(source)))}")
    broken = [dst for _, _, dst in plan if not os.path.exists(dst)]
    if broken:
        raise CloudxError(f"migrated, but {', '.join(broken)} no longer resolve", "fix those symlinks by hand")
    return len(plan)


def migrate_preview(
    plan: list[tuple[str, str, str]], contents: dict[str, bytes], links: dict[str, str], through: str | None,
    overwrite: list[str], config_key: str | None, target: str,
) -> None:  # fmt: skip
    """A dry run's account of the moves, the links and the diff of the config (where it is written)."""
    for name, src, dst in plan:
        how = f" as a symlink to {links[name]}" if name in links else ""
        log(
            f"[dry run] would move {src} -> {dst}{how}"
            + (" (overwriting it after a backup)" if dst in overwrite else "")
        )
        if name == "config" and config_key is not None:
            print_diff(
                through or os.path.join(target, config_key), read_text(src), contents[config_key].decode("utf-8")
            )


def cmd_migrate(args: argparse.Namespace) -> int:
    """Move a legacy ~/.ssh/vscode setup to ~/.ssh/cloudX, rewriting paths, ProxyCommands and the Include."""
    home = os.path.expanduser("~")
    if args.target_dir:
        validate_config_path("--target-dir", args.target_dir)
        target = os.path.abspath(os.path.expanduser(args.target_dir))
        validate_config_path("--target-dir", os.path.join(target, "config"), include=True)
    else:
        target = os.path.join(home, ".ssh", "cloudX")

    def confirm(question: str) -> bool:
        print(f"{question} [y/N]: ", end="", file=sys.stderr, flush=True)
        return sys.stdin.readline().strip().lower().startswith("y")

    moved = migrate_legacy(home, target, args.dry_run, confirm if sys.stdin.isatty() else None)
    if not args.dry_run:
        log(f"migrated {moved} files to {target}; every host keeps its profile and key")
        log("if VS Code's remote.SSH.configFile names the old config, remove it (~/.ssh/config includes the new one)")
    return EXIT_OK


def read_text_bytes(path: str) -> bytes:
    """A file's bytes."""
    with open(path, "rb") as f:
        return f.read()


def stat_mode(path: str) -> int:
    """Permission bits of a file."""
    return os.stat(path).st_mode & 0o777


# ---------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------
CONNECT_EPILOG = """examples:
  cloudx-proxy connect i-0123456789abcdef0
  cloudx-proxy connect i-0123456789abcdef0 22 --profile myprofile --ssh-key mykey
  cloudx-proxy connect i-0123456789abcdef0 2222 --region us-east-1
  cloudx-proxy connect i-0123456789abcdef0 22 --profile myprofile --aws-env prod
  cloudx-proxy connect i-0123456789abcdef0 --dry-run

in ~/.ssh/config (what setup writes):
  ProxyCommand python3 /path/to/cloudx_proxy.pyz connect %h %p --profile cloudX --ssh-key cloudX

defaults: if ~/.ssh/cloudX exists, profile and key 'cloudX' there; else if
~/.ssh/vscode exists, 'vscode'; else 'cloudX'. The key pushed is
<ssh-dir>/<ssh-key>.pub. Region: --region, AWS_REGION/AWS_DEFAULT_REGION,
the profile's region, else eu-west-1."""


SETUP_EPILOG = """examples:
  cloudx-proxy setup
  cloudx-proxy setup --profile myprofile --ssh-key mykey
  cloudx-proxy setup --ssh-config ~/.ssh/cloudx/config
  cloudx-proxy setup --instance i-0123456789abcdef0 --hostname myserver --yes
  cloudx-proxy setup --instance web --environment dev --yes --dry-run

writes three blocks to the SSH config (default ~/.ssh/cloudX/config):
  Host cloudX-*             User, keep-alive, connection sharing
  Host cloudX-{env}-*       IdentityFile and the ProxyCommand running this program
  Host cloudX-{env}-{host}  HostName i-...
and includes that file from ~/.ssh/config. In the settings.json of each installed
VS Code, Code - Insiders, VSCodium or Cursor it raises remote.SSH.connectTimeout to 90
and serverInstallTimeout to 120 and maps cloudX-* (and cloudx-*) to linux in
remote.SSH.remotePlatform (asked once; --no-editor-settings skips it). Existing files
are backed up first."""


LIST_EPILOG = """examples:
  cloudx-proxy list
  cloudx-proxy list --environment dev
  cloudx-proxy list --detailed
  cloudx-proxy list --ssh-config ~/.ssh/cloudx/config
  cloudx-proxy list --json --status"""


def build_parser() -> argparse.ArgumentParser:
    """The argparse parser with one subcommand per command."""
    import argparse

    class Parser(argparse.ArgumentParser):
        def error(self, message: str) -> NoReturn:
            """One line on stderr and exit 2, instead of argparse's usage block."""
            raise usage_error(f"{message}", f"see: {self.prog} --help")

    verbose = Parser(add_help=False)
    verbose.add_argument(
        "-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help="debug lines on stderr"
    )
    verbose.add_argument("--no-color", action="store_true", default=argparse.SUPPRESS, help="no colors on a terminal")
    parser = Parser(
        prog=PROG,
        description="SSH to EC2 instances through AWS Systems Manager (stdlib-only cloudX client).",
        parents=[verbose],
    )
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    sub.required = True
    p = sub.add_parser(
        "connect",
        parents=[verbose],
        help="connect to an instance (used as the SSH ProxyCommand)",
        description="Start the instance if needed, push the SSH key and open an SSM session on stdin/stdout.",
        epilog=CONNECT_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("instance_id", metavar="INSTANCE_ID", help="EC2 instance id, e.g. i-0123456789abcdef0")
    p.add_argument("port", metavar="PORT", nargs="?", default="22", help="port on the instance (default: 22)")
    p.add_argument("--profile", help="AWS profile (default: cloudX, or vscode for a legacy ~/.ssh/vscode setup)")
    p.add_argument("--region", help="AWS region (default: from the profile, else eu-west-1)")
    p.add_argument("--ssh-key", help="SSH key name in the ssh dir (default: as --profile)")
    p.add_argument("--ssh-config", help="SSH config file; its directory is the ssh dir unless --ssh-dir is given")
    p.add_argument("--ssh-dir", help="directory holding the SSH key (default: ~/.ssh/cloudX)")
    p.add_argument("--aws-env", help="use ~/.aws/aws-envs/AWS_ENV/{config,credentials}")
    p.add_argument("--user", default=DEFAULT_USER, help="OS user the key is pushed for (default: ec2-user)")
    p.add_argument("--timeout", default=str(DEFAULT_TIMEOUT), help="seconds to wait for start-up (default: 300)")
    p.add_argument("--dry-run", action="store_true", help="print each step and command; call nothing")
    p.set_defaults(func=cmd_connect)
    p = sub.add_parser(
        "setup",
        parents=[verbose],
        help="configure the AWS profile, SSH key and SSH config, and check the instance",
        description="Set up the AWS profile, an SSH key, the three-tier SSH config and check the instance.",
        epilog=SETUP_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--profile", help="AWS profile (default: cloudX; vscode in a legacy ~/.ssh/vscode setup)")
    p.add_argument("--ssh-key", help="SSH key name (default: cloudX; vscode in a legacy ~/.ssh/vscode setup)")
    p.add_argument("--ssh-config", help="SSH config file to write (default: <ssh-dir>/config)")
    p.add_argument("--ssh-dir", help="directory for the key and config (default: ~/.ssh/cloudX)")
    p.add_argument("--aws-env", help="use ~/.aws/aws-envs/AWS_ENV/{config,credentials}")
    p.add_argument(
        "--1password",
        dest="op_vault",
        nargs="?",
        const="Private",
        default=None,
        metavar="VAULT",
        help="keep the key in 1Password and use its SSH agent (vault default: Private)",
    )
    p.add_argument("--instance", help="instance id, or the value of its Name tag")
    p.add_argument("--hostname", help="host name in the SSH config (default: the Name tag)")
    p.add_argument("--environment", help="cloudX environment (default: from the instance tags or the IAM user)")
    p.add_argument(
        "--ssh-host-prefix", help="prefix of the SSH host names (default: cloudX; cloudx when run as cloudx-proxy)"
    )
    p.add_argument(
        "--no-editor-settings",
        action="store_true",
        help="leave the Remote-SSH settings of VS Code, Code - Insiders, VSCodium and Cursor alone",
    )
    p.add_argument("--yes", action="store_true", help="non-interactive: take the defaults, never prompt")
    p.add_argument("--dry-run", action="store_true", help="show what would change; write nothing")
    p.set_defaults(func=cmd_setup)
    p = sub.add_parser(
        "list",
        parents=[verbose],
        help="list the configured hosts, grouped by environment",
        description="List the hosts in the SSH config that setup writes, grouped by environment.",
        epilog=LIST_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--ssh-config", help="SSH config to read (default: ~/.ssh/cloudX/config, else ~/.ssh/vscode/config)")
    p.add_argument("--environment", help="only this environment (case-insensitive)")
    p.add_argument(
        "--detailed", action="store_true", help="also the patterns and each environment's profile, key, ProxyCommand"
    )
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--status", action="store_true", help="add each instance's EC2 state and SSM PingStatus (asks AWS)")
    p.add_argument("--dry-run", action="store_true", help="say what would be read; read nothing")
    p.set_defaults(func=cmd_list)
    p = sub.add_parser(
        "doctor",
        parents=[verbose],
        help="check what a connection needs and say what to fix",
        description="Check tools, profile, key, SSH config and (given a host) the instance; exit 1 on any FAIL.",
        epilog="examples:\n  cloudx-proxy doctor\n  cloudx-proxy doctor cloudX-dev-web\n  cloudx-proxy doctor i-0123456789abcdef0 --json",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "target", metavar="HOST_OR_INSTANCE", nargs="?", help="a host from the SSH config, or an instance id"
    )
    p.add_argument("--ssh-config", help="SSH config (default: ~/.ssh/cloudX/config)")
    p.add_argument("--profile", help="AWS profile (default: from the host's ProxyCommand, else as connect)")
    p.add_argument("--ssh-key", help="SSH key name (default: from the host's ProxyCommand, else as connect)")
    p.add_argument("--ssh-dir", help="SSH key directory (default: from the host's ProxyCommand, else as connect)")
    p.add_argument("--aws-env", help="use ~/.aws/aws-envs/AWS_ENV")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_doctor)
    p = sub.add_parser(
        "cleanup",
        parents=[verbose],
        help="rewrite the SSH config in three-tier order, dropping duplicate blocks",
        description="Rewrite the SSH config in canonical three-tier order with fresh banners; duplicates: the last wins.",
        epilog="examples:\n  cloudx-proxy cleanup --dry-run\n  cloudx-proxy cleanup --ssh-config ~/.ssh/cloudx/config",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--ssh-config", help="SSH config (default: ~/.ssh/cloudX/config)")
    p.add_argument(
        "--ssh-host-prefix",
        help="the spelling wildcard Host lines lead with (default: cloudX; cloudx when run as cloudx-proxy); "
        "host names are kept",
    )
    p.add_argument("--dry-run", action="store_true", help="show the diff; write nothing")
    p.set_defaults(func=cmd_cleanup)
    p = sub.add_parser(
        "migrate",
        parents=[verbose],
        help="move a legacy ~/.ssh/vscode setup to ~/.ssh/cloudX",
        description="Move config and keys from ~/.ssh/vscode, rewrite the paths in them and the Include in ~/.ssh/config.",
        epilog="examples:\n  cloudx-proxy migrate --dry-run\n  cloudx-proxy migrate --target-dir ~/.ssh/cloudX",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--target-dir", help="where to move it (default: ~/.ssh/cloudX)")
    p.add_argument("--dry-run", action="store_true", help="show the moves and diffs; change nothing")
    p.set_defaults(func=cmd_migrate)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, run the command; CloudxError becomes error/hint lines and an exit code.

    Anything else that escapes a command is one 'internal error' line and exit 1
    (the traceback only with --verbose).
    """
    global _VERBOSE, _COLOR
    args = None
    try:
        args = build_parser().parse_args(argv)
        _VERBOSE = bool(getattr(args, "verbose", False))
        _COLOR = sys.stderr.isatty() and not os.environ.get("NO_COLOR") and not getattr(args, "no_color", False)
        return int(args.func(args))
    except CloudxError as e:
        e.message, e.hint = printable(e.message), printable(e.hint) if e.hint else e.hint  # may quote AWS
        print(render_error(e), file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except SshGone:  # SIGHUP/SIGTERM at a moment connect's own handling could not catch it
        return EXIT_ERROR
    except OSError as e:
        if _VERBOSE:
            raise
        print(render_error(CloudxError(str(e), "run again with --verbose for details")), file=sys.stderr)
        return EXIT_ERROR
    except Exception as e:  # noqa: BLE001 - the last-resort handler: a bug is one line, not a traceback
        if _VERBOSE:
            import traceback

            traceback.print_exc()
        detail = aws_text(" ".join(f"{type(e).__name__}: {e}".split())[:AWS_TEXT_MAX])
        hint = "run again with --verbose for the traceback, and report it" if not _VERBOSE else "report it"
        print(render_error(CloudxError(f"internal error: {detail}", hint)), file=sys.stderr)
        return EXIT_ERROR


def run() -> None:
    """Console and zipapp entry point."""
    sys.exit(main())


if __name__ == "__main__":
    run()

"""Property tests (hypothesis) over what AWS hands back: any answer, however broken or hostile, gives
a validated value or one CloudxError, never another exception, and nothing unchecked reaches a config
line or an output line.

The answers are generated near the documented shapes (describe-instances, describe-instance-information,
start-instances, get-caller-identity, tags) with every field possibly missing, of the wrong type or
holding hostile text, plus arbitrary JSON.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import cloudx_proxy as cp  # noqa: E402

IID = "i-0123456789abcdef0"
MANY = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])

hostile = st.one_of(
    st.text(max_size=30),
    st.sampled_from(["", " ", "\n", "i-0123456789abcdef0\nProxyCommand x", "\x1b[31mred", "-x", "a" * 400]),
)
json_scalar = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True), hostile)
any_json = st.recursive(
    json_scalar, lambda kids: st.lists(kids, max_size=3) | st.dictionaries(hostile, kids, max_size=3), max_leaves=12
)


def maybe(value: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """The value, or something of another type, or nothing at all (a missing key)."""
    return st.one_of(value, value, any_json, st.just(MISSING))


MISSING = object()


def obj(**fields: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """A JSON object with these fields, each possibly missing or wrong."""
    return st.fixed_dictionaries({k: maybe(v) for k, v in fields.items()}).map(
        lambda d: {k: v for k, v in d.items() if v is not MISSING}
    )


instance_id = st.one_of(st.just(IID), st.sampled_from(["i-12345678", "i-0123456789ABCDEF0"]), hostile)
state_name = st.one_of(st.sampled_from(["running", "stopped", "pending", "terminated", "stopping"]), hostile)
tag = obj(
    Key=st.one_of(st.sampled_from(["Name", "Environment", "cloudX:environment", "cloudxuser"]), hostile), Value=hostile
)
instance = obj(InstanceId=instance_id, State=obj(Name=state_name, Code=st.integers()), Tags=st.lists(tag, max_size=4))
describe = st.one_of(any_json, obj(Reservations=st.lists(obj(Instances=st.lists(instance, max_size=3)), max_size=3)))
info = st.one_of(
    any_json,
    obj(
        InstanceInformationList=st.lists(
            obj(InstanceId=instance_id, PingStatus=st.one_of(st.sampled_from(["Online", "ConnectionLost"]), hostile)),
            max_size=3,
        )
    ),
)
started = st.one_of(any_json, obj(StartingInstances=st.lists(obj(PreviousState=obj(Name=state_name)), max_size=2)))
identity = st.one_of(
    any_json, obj(Arn=st.one_of(st.just("arn:aws:iam::123456789012:user/cloudX-dev-alice"), hostile.map(str)))
)


def one_line(text: str) -> bool:
    return text.isprintable() and "\n" not in text


@MANY
@given(describe)
def test_instance_state(data: Any) -> None:
    try:
        state = cp.parse_instance_state(data, IID)
    except cp.CloudxError as e:
        assert e.exit_code == 1 and one_line(e.message)
        return
    assert state is None or cp.EC2_STATE_RE.fullmatch(state)


@MANY
@given(info)
def test_ping_status(data: Any) -> None:
    try:
        status = cp.parse_ping_status(data, IID)
    except cp.CloudxError as e:
        assert one_line(e.message)
        return
    assert cp.PING_STATUS_RE.fullmatch(status)


@MANY
@given(started)
def test_previous_state(data: Any) -> None:
    try:
        state = cp.parse_previous_state(data)
    except cp.CloudxError as e:
        assert one_line(e.message)
        return
    assert state is None or cp.EC2_STATE_RE.fullmatch(state)


@MANY
@given(identity)
def test_identity_and_its_environment(data: Any) -> None:
    try:
        arn = cp.parse_identity(data)
    except cp.CloudxError as e:
        assert one_line(e.message)
        return
    env, user = cp.env_from_identity(arn)
    assert env is None or cp.HOST_PART_RE.fullmatch(env)
    assert one_line(user)


class FakeAws:
    """Stands in for the aws CLI: returns one canned answer (the thing under test is our parsing)."""

    region = "eu-west-1"

    def __init__(self, answer: Any):
        self.answer = answer

    def __call__(self, args: list[str]) -> Any:
        return self.answer


class SetupWithAnswer:
    dry_run = False

    def __init__(self, answer: Any):
        self._aws = FakeAws(answer)

    def aws(self) -> FakeAws:
        return self._aws


@MANY
@given(describe, st.sampled_from([IID, "web"]))
def test_setup_lookup_gives_a_valid_id_or_one_error(data: Any, value: str) -> None:
    """What describe_setup_instance returns is safe to write: the HostName line stays one line."""
    try:
        iid, tags = cp.describe_setup_instance(SetupWithAnswer(data), value)  # type: ignore[arg-type]
    except cp.CloudxError as e:
        assert e.exit_code in (1, 2) and one_line(e.message)
        return
    assert cp.INSTANCE_ID_RE.fullmatch(iid)
    assert value == "web" or iid == value
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in tags.items())
    env, hostname = cp.names_from_tags(tags)
    assert env is None or cp.HOST_PART_RE.fullmatch(env)
    block = cp.render_host_block("cloudX", env or "dev", "web", iid)
    assert block.count("\n") == 2


@MANY
@given(st.dictionaries(hostile, hostile, max_size=4))
def test_names_from_any_tags(tags: dict[str, str]) -> None:
    env, hostname = cp.names_from_tags(tags)
    assert env is None or cp.HOST_PART_RE.fullmatch(env)
    assert hostname is None or isinstance(hostname, str)


answer_or_error = st.one_of(st.just(cp.CloudxError("boom", code="X")), any_json)


@MANY
@given(describe, info, answer_or_error, st.sampled_from(["", "cloudX-dev-alice"]))
def test_doctor_instance_findings_are_one_line_each(ec2: Any, ssm: Any, start: Any, user: str) -> None:
    findings = cp.instance_findings({"ec2": ec2, "ssm": ssm, "start": start}, IID, "eu-west-1", user)
    assert findings
    for level, check, detail, fix in findings:
        assert level in (cp.OK, cp.WARN, cp.FAIL) and one_line(check) and one_line(detail) and one_line(fix)


@MANY
@given(st.one_of(describe, info))
def test_list_status_is_one_line(data: Any) -> None:
    for ec2 in (True, False):
        assert one_line(cp._status_of(data, IID, ec2))

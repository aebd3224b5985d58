"""Shared fixtures: the end-to-end rig (see docs/test-rig.md), the `e2e` marker, the Hypothesis profiles."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from rig import Home, Rig, have_prerequisites

IN_CI = os.environ.get("CI", "").lower() == "true"

# Tests that take no `rig` fixture but need the machine the rig needs: whole modules (root and a
# second local user, a rig of their own, pyenv's Pythons) and single tests (pyenv's Pythons).
E2E_MODULES = ("test_rig.py", "test_old_pythons.py", "test_trust_e2e.py")
E2E_TESTS = ("test_zipapp_runs_on_each_python",)


@pytest.hookimpl(tryfirst=True)  # before `-m` deselects by marker
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark `e2e` every test that needs the rig: it uses the `rig` fixture (directly or through
    another fixture, such as `home`), or it is in E2E_MODULES / E2E_TESTS. `pytest -m "not e2e"`
    runs the rest (pure checks in *_e2e.py modules included) without root, sshd or aws."""
    for item in items:
        name = getattr(item, "originalname", item.name)
        if "rig" in getattr(item, "fixturenames", ()) or item.path.name in E2E_MODULES or name in E2E_TESTS:
            item.add_marker(pytest.mark.e2e)


def _hypothesis_profiles() -> None:
    """`ci` (loaded when CI=true): derandomized, so a CI failure comes back with the same command on
    the same commit, and the failing example's @reproduce_failure blob is printed. `dev` (otherwise):
    random, with the blob printed too. HYPOTHESIS_PROFILE=ci|dev chooses one by hand. Loaded here,
    before the test modules build their own settings() on top of it."""
    try:
        from hypothesis import settings
    except ImportError:  # only the property tests need it
        return
    settings.register_profile("ci", derandomize=True, print_blob=True, database=None)
    settings.register_profile("dev", print_blob=True)
    settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE") or ("ci" if IN_CI else "dev"))


_hypothesis_profiles()


DEFAULT_REGION = "eu-west-1"
DEFAULT_PROFILE = "cloudX"


def skip_or_fail(reason: str) -> None:
    """Skip locally; in CI (CI=true) fail, so CI never passes on skipped e2e tests."""
    if IN_CI:
        pytest.fail(f"e2e prerequisite missing in CI: {reason}", pytrace=False)
    pytest.skip(reason)


def require_v2(rig: Rig) -> str:
    """Path of the aws CLI v2 wrapper, or skip (fail in CI) when v2 is absent."""
    if rig.aws_v2 is None:
        skip_or_fail("aws CLI v2 not installed at /usr/bin/aws (apt-get install awscli)")
    assert rig.aws_v2 is not None
    return rig.aws_v2


def require_v1_old(rig: Rig) -> str:
    """Path of aws CLI v1 older than 1.30.3 (StartSession answer in argv), or skip (fail in CI)."""
    if rig.aws_v1_old is None:
        skip_or_fail("aws CLI v1 < 1.30.3 not in .venv-aws-old (.ci/run installs tests/requirements-aws-old.txt)")
    assert rig.aws_v1_old is not None
    return rig.aws_v1_old


@pytest.fixture(scope="session")
def rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    """One rig (moto + endpoint + plugin) for the whole test session."""
    reason = have_prerequisites()
    if reason:
        skip_or_fail(reason)
    r = Rig(tmp_path_factory.mktemp("rig"))
    try:
        r.start()
        yield r
    finally:
        r.close()


@pytest.fixture(params=["v1", "v1old", "v2"])
def aws_variant(request: pytest.FixtureRequest, rig: Rig) -> str:
    """Parametrize a test over aws CLI v1 (pip), v1 before 1.30.3 (the StartSession answer in argv)
    and v2 (Debian); each skipped locally, failed in CI, if absent."""
    if request.param == "v2":
        require_v2(rig)
    if request.param == "v1old":
        require_v1_old(rig)
    return request.param


@pytest.fixture(autouse=True)
def _fresh_rig(request: pytest.FixtureRequest) -> None:
    """Before each test that uses the rig (one per pytest worker, shared by every test it runs):
    no fault, call or plugin call left from an earlier test, and the endpoint knobs at their
    defaults. A test that takes no rig does not start one."""
    if "rig" not in request.fixturenames:
        return
    rig: Rig = request.getfixturevalue("rig")
    rig.clear_faults()
    rig.knobs(key_ttl=60, latency=0.0)
    rig.clear_calls()
    rig.clear_plugin_calls()


@pytest.fixture
def home(rig: Rig, tmp_path: Path) -> Home:
    """A fresh HOME with profile cloudX (eu-west-1), credentials and an ssh key."""
    return rig.make_home(tmp_path / "home", profile=DEFAULT_PROFILE, region=DEFAULT_REGION)


ROOT = Path(__file__).resolve().parent.parent


ORIGINAL_PYTHON = ROOT / ".venv-original" / "bin" / "python"


@pytest.fixture(scope="session")
def original() -> Path:
    """The python of the venv holding PyPI cloudx-proxy 0.17.6 (.ci/run makes it: our import name)."""
    if not ORIGINAL_PYTHON.exists():
        skip_or_fail(f"{ORIGINAL_PYTHON} missing (.ci/run installs tests/requirements-original.txt there)")
    return ORIGINAL_PYTHON


@pytest.fixture(scope="session")
def pyz(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The zipapp, built once per test session with build_zipapp.py (as users get it)."""
    import subprocess
    import sys

    target = tmp_path_factory.mktemp("dist") / "cloudx_proxy.pyz"
    subprocess.run([sys.executable, str(ROOT / "build_zipapp.py"), str(target)], check=True, capture_output=True)
    return target

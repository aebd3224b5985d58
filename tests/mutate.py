"""Sampled mutation testing of cloudx_proxy.py's pure helpers against the fast tests (docs/testing.md).

One small bug at a time, in the section from the banner ``# Pure helpers`` to ``# File helpers``
(the editor-settings part included): a comparison flipped, ``and``/``or`` swapped, a ``not`` dropped,
True/False swapped or a small integer changed, a returned value replaced by ``None``. Each mutant is
written into a scratch copy of the repository (the worktree is never touched) and the fast tests run
there: ``pytest -m "not e2e" -p no:randomly -x -q`` with a fixed Hypothesis seed. A mutant is killed
when the tests fail (or outlive --timeout); it survives when they pass.

    .venv/bin/python tests/mutate.py --sample 40 --seed 1      # everyday check: a seeded sample
    .venv/bin/python tests/mutate.py --list                     # every mutant, numbered
    .venv/bin/python tests/mutate.py --only 17 --only 203       # re-run chosen mutants
    .venv/bin/python tests/mutate.py --only 17 --tests tests/test_pure_helpers.py   # does a new test kill it?
    .venv/bin/python tests/mutate.py                            # all of them (hours)

Survivors that are equivalent to the original (no test can tell them apart) are listed in
EQUIVALENT below by their description, with one line of why; they count as killed in the score.
"""

from __future__ import annotations

import argparse
import ast
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MODULE = ROOT / "cloudx_proxy.py"
START_BANNER = "# Pure helpers"
END_BANNER = "# File helpers"
# The tests that need no rig, quickest to fail first. Used as the whole selection until the `e2e`
# marker exists (tests/conftest.py); with the marker, every other test file follows, filtered by it.
FAST_FILES = [
    "tests/test_unit.py",
    "tests/test_config_unit.py",
    "tests/test_editor_settings.py",
    "tests/test_pure_helpers.py",
    "tests/test_properties_aws.py",
    "tests/test_adopt_properties.py",
    "tests/test_properties.py",
]
SMALL_INTS = range(-1, 11)

# description (as --list prints it, without the number) -> why no test can tell it from the original.
EQUIVALENT: dict[str, str] = {
    "line 1108:70: 3 -> 2: if pattern in replace and set_owned_lines(target, kind, lines[3:], newline):": (
        "lines[2] is the rendered Host line; 'host' is no OWNED_KEYWORDS entry, so set_owned_lines skips it"
    ),
    'line 1727:34: 0 -> 1: line_start = text.rfind("\\n", 0, close) + 1': (
        "differs only when the one line break before close is at 0; then obj.start >= 1, so "
        "'line_start > obj.start' is false for line_start 1 and 0 alike"
    ),
    'line 1339:47: 1 -> 0: words = words[words.index("connect") + 1 :]': (
        "the one word more is 'connect' itself, which is no flag: the (flag, value) pairs read are the same"
    ),
    'line 1767:40: 0 -> 1: trail = "," if root.trailing >= 0 else ""': (
        "a trailing comma follows the object's '{' and a member, so its index is never 0"
    ),
}


@dataclass
class Mutant:
    line: int
    start: tuple[int, int]  # (line, col) of the replaced span, 1-based lines
    end: tuple[int, int]
    text: str  # replacement source
    what: str

    def describe(self, source_lines: list[str]) -> str:
        return f"line {self.line}:{self.start[1]}: {self.what}: {source_lines[self.line - 1].strip()[:100]}"


FLIP = {
    ast.Eq: ast.NotEq,
    ast.NotEq: ast.Eq,
    ast.Lt: ast.GtE,
    ast.GtE: ast.Lt,
    ast.Gt: ast.LtE,
    ast.LtE: ast.Gt,
    ast.In: ast.NotIn,
    ast.NotIn: ast.In,
    ast.Is: ast.IsNot,
    ast.IsNot: ast.Is,
}
OP_TEXT = {
    ast.Eq: "==",
    ast.NotEq: "!=",
    ast.Lt: "<",
    ast.GtE: ">=",
    ast.Gt: ">",
    ast.LtE: "<=",
    ast.In: "in",
    ast.NotIn: "not in",
    ast.Is: "is",
    ast.IsNot: "is not",
}


def section(lines: list[str]) -> tuple[int, int]:
    """1-based line numbers (first, last) of the pure-helpers section, banners excluded."""
    first = next(i for i, ln in enumerate(lines, 1) if ln.startswith(START_BANNER))
    last = next(i for i, ln in enumerate(lines, 1) if ln.startswith(END_BANNER) and i > first)
    return first + 2, last - 2


def in_fstring(tree: ast.AST) -> set[int]:
    """ids of nodes inside f-strings (their positions are unreliable before Python 3.12)."""
    inside: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.JoinedStr):
            inside.update(id(n) for n in ast.walk(node))
    return inside


def in_annotations(tree: ast.AST) -> set[int]:
    skip: set[int] = set()
    for node in ast.walk(tree):
        for ann in (getattr(node, "annotation", None), getattr(node, "returns", None)):
            if isinstance(ann, ast.AST):
                skip.update(id(n) for n in ast.walk(ann))
    return skip


def mutants(source: str) -> list[Mutant]:
    lines = source.splitlines()
    first, last = section(lines)
    tree = ast.parse(source)
    skip = in_fstring(tree) | in_annotations(tree)
    found: list[Mutant] = []

    def span(node: ast.AST, text: str, what: str) -> None:
        lineno, end_lineno = node.lineno, node.end_lineno  # type: ignore[attr-defined]
        if lineno < first or (end_lineno or lineno) > last or id(node) in skip:
            return
        start = (lineno, node.col_offset)  # type: ignore[attr-defined]
        end = (end_lineno, node.end_col_offset)  # type: ignore[attr-defined]
        found.append(Mutant(lineno, start, end, text, what))

    for node in ast.walk(tree):
        if isinstance(node, ast.Compare):
            for i, op in enumerate(node.ops):
                flipped = FLIP.get(type(op))
                if flipped is None:
                    continue
                new = ast.Compare(node.left, [*node.ops[:i], flipped(), *node.ops[i + 1 :]], node.comparators)
                span(node, f"({ast.unparse(new)})", f"{OP_TEXT[type(op)]} -> {OP_TEXT[flipped]}")
        elif isinstance(node, ast.BoolOp):
            other = ast.Or() if isinstance(node.op, ast.And) else ast.And()
            names = ("and", "or") if isinstance(node.op, ast.And) else ("or", "and")
            span(node, f"({ast.unparse(ast.BoolOp(other, node.values))})", f"{names[0]} -> {names[1]}")
        elif isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
            span(node, f"({ast.unparse(node.operand)})", "not dropped")
        elif isinstance(node, ast.Constant) and isinstance(node.value, bool):
            span(node, str(not node.value), f"{node.value} -> {not node.value}")
        elif isinstance(node, ast.Constant) and type(node.value) is int and node.value in SMALL_INTS:
            span(node, str(node.value + 1), f"{node.value} -> {node.value + 1}")
            if node.value > 0:
                span(node, str(node.value - 1), f"{node.value} -> {node.value - 1}")
        elif isinstance(node, ast.Return) and node.value is not None and not is_none(node.value):
            span(node, "return None", "return value -> None")
    found.sort(key=lambda m: (m.start, m.what))
    return found


def is_none(node: ast.AST) -> bool:
    return isinstance(node, ast.Constant) and node.value is None


def apply(source: str, m: Mutant) -> str:
    lines = source.splitlines(keepends=True)
    (l1, c1), (l2, c2) = m.start, m.end
    # AST columns are UTF-8 byte offsets.
    head = lines[l1 - 1].encode()[:c1].decode()
    tail = lines[l2 - 1].encode()[c2:].decode()
    return "".join(lines[: l1 - 1]) + head + m.text + tail + "".join(lines[l2:])


def has_e2e_marker(root: Path) -> bool:
    conftest = root / "tests" / "conftest.py"
    text = conftest.read_text(encoding="utf-8") if conftest.exists() else ""
    return "e2e" in text and "add_marker" in text


def pytest_args(root: Path) -> list[str]:
    """The fast tests in root (the scratch copy): -m "not e2e" once the marker exists, else FAST_FILES."""
    files = [f for f in FAST_FILES if (root / f).exists()]
    if has_e2e_marker(root):
        rest = sorted(str(p.relative_to(root)) for p in (root / "tests").glob("test_*.py"))
        files += [f for f in rest if f not in files]
    return ["-m", "not e2e", "-p", "no:randomly", "-x", "-q", "--hypothesis-seed=0", *files]


def scratch_copy() -> Path:
    """A copy of the repository's module, tests and pyproject in a temp dir (no venvs, no caches)."""
    work = Path(tempfile.mkdtemp(prefix="cloudx-mutate-"))
    shutil.copy2(ROOT / "pyproject.toml", work / "pyproject.toml")
    shutil.copytree(ROOT / "tests", work / "tests", ignore=shutil.ignore_patterns("__pycache__", ".hypothesis"))
    return work


def run_tests(work: Path, source: str, timeout: float, tests: list[str] | None = None) -> tuple[str, float]:
    (work / "cloudx_proxy.py").write_text(source, encoding="utf-8")
    started = time.monotonic()
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    env.pop("PYTEST_ADDOPTS", None)
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "pytest", *(pytest_args(work) if tests is None else ["-x", "-q", *tests])],
            cwd=work,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            timeout=timeout,
            start_new_session=True,
        )
    except subprocess.TimeoutExpired:
        return "timeout", time.monotonic() - started
    run_tests.last_output = proc.stdout.decode("utf-8", "replace")  # type: ignore[attr-defined]
    # 0: all passed (survived); 1: a test failed, 2: a test module failed to import (killed);
    # anything else (usage error, no tests): the run itself is broken, not scored.
    result = {0: "survived", 1: "killed", 2: "killed"}.get(proc.returncode, f"error {proc.returncode}")
    return result, time.monotonic() - started


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sample", type=int, help="run this many mutants drawn at random (default: all)")
    p.add_argument("--seed", type=int, default=1, help="seed of the sample (default 1)")
    p.add_argument("--only", type=int, action="append", default=[], help="run mutant number N (repeatable)")
    p.add_argument("--list", action="store_true", help="print every mutant with its number and exit")
    p.add_argument(
        "--timeout",
        type=float,
        help="seconds per mutant before it counts as killed (an endless loop); default 5 times the unmutated run, >= 300",
    )
    p.add_argument(
        "--tests", nargs="+", metavar="TEST", help="run only these pytest arguments (to see a new test kill a mutant)"
    )
    args = p.parse_args(argv)

    source = MODULE.read_text(encoding="utf-8")
    lines = source.splitlines()
    every = mutants(source)
    numbered = list(enumerate(every, 1))
    if args.list:
        for i, m in numbered:
            print(f"{i:5d} {m.describe(lines)}")
        print(f"{len(numbered)} mutants", file=sys.stderr)
        return 0
    chosen = numbered
    if args.only:
        chosen = [(i, m) for i, m in numbered if i in args.only]
    elif args.sample is not None:
        chosen = sorted(random.Random(args.seed).sample(numbered, min(args.sample, len(numbered))))
    chosen = [(i, m) for i, m in chosen if compiles(apply(source, m))]
    work = scratch_copy()
    selection = " ".join(pytest_args(work) if args.tests is None else args.tests)
    print(f"{len(chosen)} of {len(numbered)} mutants; pytest {selection}", flush=True)
    try:
        baseline, took = run_tests(work, source, args.timeout or 3600, args.tests)
        if baseline != "survived":
            print(getattr(run_tests, "last_output", "")[-3000:])
            print(f"the unmutated module does not pass the fast tests ({baseline}): nothing to measure")
            return 1
        timeout = args.timeout or max(300.0, 5 * took)
        print(f"unmutated: pass in {took:.0f} s; a mutant's run is stopped after {timeout:.0f} s", flush=True)
        survivors, equivalent, errors = [], [], []
        for n, (i, m) in enumerate(chosen, 1):
            result, took = run_tests(work, apply(source, m), timeout, args.tests)
            desc = m.describe(lines)
            if result == "survived" and desc in EQUIVALENT:
                result = "equivalent"
                equivalent.append((i, desc))
            elif result == "survived":
                survivors.append((i, desc))
            elif result.startswith("error"):
                errors.append((i, desc))
            print(f"[{n}/{len(chosen)}] #{i} {result} ({took:.0f} s) {desc}", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    scored = len(chosen) - len(errors)
    killed = scored - len(survivors)
    print(f"\nscore: {killed}/{scored} = {100 * killed / max(scored, 1):.1f} % (equivalent counted as killed)")
    for i, desc in survivors:
        print(f"  survived #{i} {desc}")
    for i, desc in equivalent:
        print(f"  equivalent #{i} {desc}: {EQUIVALENT[desc]}")
    for i, desc in errors:
        print(f"  pytest error #{i} {desc}")
    return 0


def compiles(source: str) -> bool:
    try:
        compile(source, "cloudx_proxy.py", "exec")
    except SyntaxError:
        return False
    return True


if __name__ == "__main__":
    sys.exit(main())

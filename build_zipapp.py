#!/usr/bin/env python3
"""Build dist/cloudx_proxy.pyz, byte-identical on every build.

The archive (its __main__.py, fixed timestamps and modes) is rendered by the
module's own render_zipapp(), the one setup uses to install a stable copy of
itself when it runs from a cache: one recipe for both.
"""

from __future__ import annotations

import hashlib
import re
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent
MODULE = ROOT / "cloudx_proxy.py"
TARGET = ROOT / "dist" / "cloudx_proxy.pyz"
sys.path.insert(0, str(ROOT))
import cloudx_proxy  # noqa: E402 - the module next to this file, not an installed one


def module_version(source: str) -> str:
    """The __version__ string declared in the module."""
    match = re.search(r'^__version__ = "([^"]+)"', source, re.M)
    if not match:
        raise SystemExit("build_zipapp: no __version__ in cloudx_proxy.py")
    return match.group(1)


def build(target: Path = TARGET) -> Path:
    """Write the zipapp to target (through a temp file beside it) and return its path."""
    data = cloudx_proxy.render_zipapp(MODULE.read_text(encoding="utf-8"))
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + ".tmp")
    partial.write_bytes(data)
    partial.chmod(0o755)
    shutil.move(str(partial), str(target))
    return target


def main(argv: list[str] | None = None) -> int:
    """Build, then print the version, size and sha256 of the result."""
    args = sys.argv[1:] if argv is None else argv
    target = Path(args[0]).resolve() if args else TARGET
    path = build(target)
    data = path.read_bytes()
    version = module_version(MODULE.read_text(encoding="utf-8"))
    print(f"built {path} (cloudx-proxy {version}, {len(data)} bytes, sha256 {hashlib.sha256(data).hexdigest()})")
    return 0


if __name__ == "__main__":
    sys.exit(main())

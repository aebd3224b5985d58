#!/usr/bin/env python3
"""Build dist/cloudx_proxy.pyz with the stdlib zipapp module, byte-identical on every build.

zipapp stamps a generated __main__.py with the current time, so we write our
own __main__.py, give every file a fixed timestamp and mode, and let zipapp
add the files in sorted order.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import sys
import tempfile
import zipapp
from pathlib import Path

ROOT = Path(__file__).resolve().parent
MODULE = ROOT / "cloudx_proxy.py"
TARGET = ROOT / "dist" / "cloudx_proxy.pyz"
INTERPRETER = "/usr/bin/env python3"
FIXED_MTIME = 315964800  # 1980-01-06, inside the ZIP date range
# zipimport cannot cache bytecode, so importing the module from the archive
# would compile it on every start (tens of milliseconds on a ProxyCommand's
# path). This __main__ compiles it once per Python version and keeps the code
# in the user's 0700 cache dir, keyed by the source's CRC and size.
MAIN_PY = '''"""Run cloudx_proxy from this zipapp, with its bytecode cached per Python version."""
import marshal
import os
import sys
import zlib


def _cache_dir():
    if os.name == "nt" and os.environ.get("LOCALAPPDATA"):
        return os.path.join(os.environ["LOCALAPPDATA"], "cloudx-proxy")
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "cloudx-proxy")


def _load():
    archive = os.path.dirname(os.path.abspath(__file__))
    source = __loader__.get_data(os.path.join(archive, "cloudx_proxy.py"))
    tag = sys.implementation.cache_tag
    cache = _cache_dir()
    stem = "code-%s-" % tag
    path = os.path.join(cache, "%s%08x-%d.bin" % (stem, zlib.crc32(source), len(source)))
    code = None
    if tag:
        try:
            with open(path, "rb") as f:
                code = marshal.loads(f.read())
        except (OSError, ValueError, EOFError, TypeError):
            code = None
    if code is None:
        code = compile(source, os.path.join(archive, "cloudx_proxy.py"), "exec")
        if tag:
            try:
                os.makedirs(cache, mode=0o700, exist_ok=True)
                for old in os.listdir(cache):
                    if old.startswith(stem):
                        os.unlink(os.path.join(cache, old))
                tmp = "%s.%d.tmp" % (path, os.getpid())
                with os.fdopen(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "wb") as f:
                    f.write(marshal.dumps(code))
                os.replace(tmp, path)
            except OSError:
                pass
    module = type(sys)("cloudx_proxy")
    module.__file__ = os.path.join(archive, "cloudx_proxy.py")
    sys.modules["cloudx_proxy"] = module
    exec(code, module.__dict__)
    return module


_load().run()
'''


def module_version(source: str) -> str:
    """The __version__ string declared in the module."""
    match = re.search(r'^__version__ = "([^"]+)"', source, re.M)
    if not match:
        raise SystemExit("build_zipapp: no __version__ in cloudx_proxy.py")
    return match.group(1)


def build(target: Path = TARGET) -> Path:
    """Write the zipapp to target and return its path."""
    source = MODULE.read_text(encoding="utf-8")
    with tempfile.TemporaryDirectory() as tmp:
        stage = Path(tmp) / "app"
        stage.mkdir()
        (stage / "cloudx_proxy.py").write_text(source, encoding="utf-8", newline="\n")
        (stage / "__main__.py").write_text(MAIN_PY, encoding="utf-8", newline="\n")
        for path in stage.iterdir():
            os.chmod(path, 0o644)
            os.utime(path, (FIXED_MTIME, FIXED_MTIME))
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(target.name + ".tmp")
        zipapp.create_archive(stage, partial, interpreter=INTERPRETER, compressed=True)
        os.chmod(partial, 0o755)
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

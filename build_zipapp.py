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
# path). This __main__ compiles it once per interpreter and keeps the code in
# the user's cache dir, keyed by the bytecode magic number and the sha256 of
# the source (written in here at build time, so nothing is hashed at start-up).
# The cache dir is someone else's if another user owns it or can write to it:
# then nothing there is read or written and the code is compiled in memory.
# Every file is opened relative to the checked directory's descriptor without
# following symlinks, and checked with fstat; an entry that is not code is
# deleted and compiled afresh.
MAIN_PY = '''"""Run cloudx_proxy from this zipapp, with its bytecode cached per interpreter and source."""
import marshal
import os
import sys

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
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
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
        digest = hashlib.sha256(source.encode("utf-8")).hexdigest()
        (stage / "__main__.py").write_text(MAIN_PY.replace("@SOURCE_SHA256@", digest), encoding="utf-8", newline="\n")
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

"""Building the shim: ``shim.c``, shipped with the package, compiled by a C compiler of the user's.

The installed package stays pure Python; the shim is built on demand
(``kvmspe shim build``) with the system's ``cc`` or a given one, e.g.
Debian's ``aarch64-linux-gnu-gcc`` to cross-build for an arm64 target that
has no compiler (then ``kvmspe shim run --lib`` there).
"""

from __future__ import annotations

import hashlib
import os
import shlex
import shutil
import subprocess
import tempfile
from importlib import resources
from pathlib import Path

from ..errors import KvmspeError

__all__ = ["BUILD_TIMEOUT", "CFLAGS", "ShimBuildError", "build", "default_path", "source"]

#: Warnings are errors: the shim is small and must build cleanly everywhere.
CFLAGS = ("-shared", "-fPIC", "-O2", "-Wall", "-Wextra", "-Werror", "-std=gnu11")
LIBS = ("-ldl", "-lpthread")
#: Seconds a compile may take.
BUILD_TIMEOUT = 120.0


class ShimBuildError(KvmspeError):
    """The shim could not be built: no compiler, or the compiler failed (its message is kept)."""


def source() -> str:
    """The shim's C source as shipped with the package."""
    return resources.files(__package__).joinpath("shim.c").read_text(encoding="utf-8")


def _tag() -> str:
    return hashlib.sha256(source().encode()).hexdigest()[:12]


def default_path() -> Path:
    """Where ``shim build`` puts the shim for this machine and this source, and ``shim run`` looks."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "kvmspe" / f"libkvmspe-shim-{os.uname().machine}-{_tag()}.so"


def build(out: str | os.PathLike[str] | None = None, cc: str | None = None) -> Path:
    """Compile the shim to ``out`` (default :func:`default_path`) with ``cc``
    (default ``$CC``, else ``cc``); the file appears whole or not at all."""
    target = Path(out) if out is not None else default_path()
    compiler = shlex.split(cc or os.environ.get("CC") or "cc")
    if not compiler or shutil.which(compiler[0]) is None:
        raise ShimBuildError(
            f"no C compiler {' '.join(compiler) or '(empty)'!r} on PATH: install one (Debian: gcc;"
            " for arm64: gcc-aarch64-linux-gnu) or give --cc"
        )
    if target.is_dir():
        raise ShimBuildError(f"{target} is a directory; give the path of the library to write")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ShimBuildError(f"cannot create {target.parent}: {exc.strerror}") from None
    with tempfile.TemporaryDirectory(prefix="kvmspe-shim-build-") as tmp:
        src = Path(tmp) / "shim.c"
        src.write_text(source(), encoding="utf-8")
        built = Path(tmp) / "shim.so"
        cmd = [*compiler, *CFLAGS, "-o", str(built), str(src), *LIBS]
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=BUILD_TIMEOUT, check=False)
        except subprocess.TimeoutExpired:
            raise ShimBuildError(f"{compiler[0]} did not finish within {BUILD_TIMEOUT:g} s") from None
        except OSError as exc:
            raise ShimBuildError(f"cannot run {compiler[0]}: {exc.strerror}") from None
        if done.returncode != 0:
            first = next((ln for ln in done.stderr.splitlines() if "error" in ln), done.stderr.strip())
            raise ShimBuildError(f"{compiler[0]} failed (exit {done.returncode}): {first[:300]}")
        staged = target.with_name(f".{target.name}.{os.getpid()}.tmp")
        try:
            shutil.copyfile(built, staged)
            os.chmod(staged, 0o755)
            os.replace(staged, target)
        except OSError as exc:
            staged.unlink(missing_ok=True)
            raise ShimBuildError(f"cannot write {target}: {exc.strerror}") from None
    return target

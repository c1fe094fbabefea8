"""The guest's initramfs: a cached base (busybox, Python, test tools) plus a small per-run overlay.

Linux accepts several newc cpio archives one after the other as one
initramfs, so the base is written once into the cache and each run only
appends an overlay with /init, the commands to run and the kvmspe checkout.
"""

from __future__ import annotations

import compileall
import hashlib
import importlib.util
import json
import os
import py_compile
import shutil
import stat
import sys
from pathlib import Path
from typing import BinaryIO

from config import STDLIB_SKIP
from fetch import extract_deb, log, unpack_wheel

HERE = Path(__file__).resolve().parent
# Python 3.11's bytecode magic: precompiled .pyc files are only written when the host's Python is 3.11 too.
PY311_MAGIC = (3495).to_bytes(2, "little") + b"\r\n"
MERGED = ("bin", "sbin", "lib")  # Debian's merged /usr: /bin -> usr/bin and so on
DROP = ("usr/share/doc", "usr/share/man", "usr/share/lintian", "usr/share/locale", "usr/share/info")


class Cpio:
    """A minimal writer of the newc format the kernel unpacks."""

    def __init__(self, out: BinaryIO) -> None:
        self.out = out
        self.ino = 1
        self.seen: set[str] = set()

    def _entry(
        self, name: str, mode: int, data: bytes = b"", mtime: int = 0, rdev: tuple[int, int] = (0, 0)
    ) -> None:
        name = name.strip("/")
        if name in self.seen:
            return
        self.seen.add(name)
        enc = name.encode() + b"\0"
        fields = [self.ino, mode, 0, 0, 1, mtime, len(data), 0, 0, rdev[0], rdev[1], len(enc), 0]
        self.ino += 1
        hdr = b"070701" + b"".join(b"%08X" % f for f in fields)
        self.out.write(hdr + enc + b"\0" * (-(len(hdr) + len(enc)) % 4))
        self.out.write(data + b"\0" * (-len(data) % 4))

    def dir(self, name: str) -> None:
        self._entry(name, stat.S_IFDIR | 0o755)

    def file(self, name: str, data: bytes, mode: int = 0o644, mtime: int = 0) -> None:
        self._entry(name, stat.S_IFREG | mode, data, mtime)

    def symlink(self, name: str, target: str) -> None:
        self._entry(name, stat.S_IFLNK | 0o777, target.encode())

    def chardev(self, name: str, major: int, minor: int) -> None:
        self._entry(name, stat.S_IFCHR | 0o600, rdev=(major, minor))

    def tree(self, root: Path, prefix: str) -> None:
        """Add ROOT's contents under PREFIX, sorted, keeping modes, mtimes and symlinks."""
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames.sort()
            rel = os.path.relpath(dirpath, root)
            base = prefix if rel == "." else f"{prefix}/{rel}"
            self.dir(base)
            for name in sorted(filenames) + [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]:
                path = os.path.join(dirpath, name)
                st = os.lstat(path)
                if stat.S_ISLNK(st.st_mode):
                    self.symlink(f"{base}/{name}", os.readlink(path))
                elif stat.S_ISREG(st.st_mode):
                    with open(path, "rb") as fh:
                        self.file(f"{base}/{name}", fh.read(), stat.S_IMODE(st.st_mode), int(st.st_mtime))

    def trailer(self) -> None:
        self._entry("TRAILER!!!", 0)


def _merge_into(src: Path, dest: Path) -> None:
    """Copy an extracted package into the staging tree, mapping /bin, /sbin, /lib into /usr."""
    for dirpath, dirnames, filenames in os.walk(src):
        rel = Path(dirpath).relative_to(src)
        parts = rel.parts
        if parts and parts[0] in MERGED:
            parts = ("usr", *parts)
        target_dir = dest.joinpath(*parts)
        rel_s = "/".join(parts)
        if any(rel_s == d or rel_s.startswith(d + "/") for d in DROP):
            dirnames[:] = []
            continue
        if rel_s.startswith("usr/lib/python3.11"):
            sub = rel_s[len("usr/lib/python3.11") :].strip("/").split("/")[0]
            if sub in STDLIB_SKIP:
                dirnames[:] = []
                continue
        target_dir.mkdir(parents=True, exist_ok=True)
        for name in filenames + [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]:
            s = Path(dirpath) / name
            t = target_dir / name
            if t.exists() or t.is_symlink():
                continue
            if s.is_symlink():
                t.symlink_to(os.readlink(s))
            else:
                shutil.copy2(s, t)


def base_key(runtime_debs: list[Path], wheels: list[Path]) -> str:
    h = hashlib.sha256()
    for p in [*runtime_debs, *wheels]:
        h.update(p.name.encode() + b"\0")
    for p in (Path(__file__), HERE / "config.py"):
        h.update(p.read_bytes())
    h.update(importlib.util.MAGIC_NUMBER)
    return h.hexdigest()[:16]


def build_base(cache: Path, runtime_debs: list[Path], wheels: list[Path]) -> Path:
    """The cached base archive: busybox, Debian's arm64 Python 3.11, the test tools, /dev/console."""
    key = base_key(runtime_debs, wheels)
    out = cache / "base" / f"base-{key}.cpio"
    if out.exists():
        return out
    log("building the initramfs base (busybox, python3.11 arm64, test tools)")
    stage = cache / "base" / f"stage-{key}"
    shutil.rmtree(stage, ignore_errors=True)
    stage.mkdir(parents=True)
    for deb in runtime_debs:
        tree = extract_deb(deb, cache / "extract" / deb.stem)
        _merge_into(tree, stage)
    site = stage / "usr/lib/python3/dist-packages"
    site.mkdir(parents=True, exist_ok=True)
    for whl in wheels:
        unpack_wheel(whl, site)
    bindir = stage / "usr/bin"
    if not (bindir / "python3").exists():
        (bindir / "python3").symlink_to("python3.11")
    if not (bindir / "busybox").exists():
        raise RuntimeError("busybox-static did not provide /bin/busybox")
    if importlib.util.MAGIC_NUMBER == PY311_MAGIC:
        # Debian compiles .pyc at install time; without them every guest import compiles under TCG.
        mode = py_compile.PycInvalidationMode.UNCHECKED_HASH
        for d, shown in (
            (stage / "usr/lib/python3.11", "/usr/lib/python3.11"),
            (site, str(site)[len(str(stage)) :]),
        ):
            compileall.compile_dir(d, ddir=shown, quiet=2, invalidation_mode=mode, workers=1)
    else:
        log(f"host Python is {sys.version.split()[0]}, not 3.11: the guest compiles its own bytecode")
    part = out.with_suffix(".part")
    with open(part, "wb") as fh:
        cpio = Cpio(fh)
        for top in ("dev", "proc", "sys", "tmp", "root", "run", "mnt"):
            cpio.dir(top)
        cpio.chardev("dev/console", 5, 1)
        cpio.chardev("dev/null", 1, 3)
        for top in MERGED:
            cpio.symlink(top, f"usr/{top}")
        cpio.tree(stage / "usr", "usr")
        if (stage / "etc").is_dir():
            cpio.tree(stage / "etc", "etc")
        cpio.trailer()
    part.replace(out)
    shutil.rmtree(stage, ignore_errors=True)
    for old in (cache / "base").glob("base-*.cpio"):
        if old != out:
            old.unlink()
    return out


def _checkout_files(src_root: Path) -> list[tuple[str, Path]]:
    """The parts of a kvmspe checkout the guest needs: src/, tests/, pyproject.toml, and the
    docs (README.md, docs/), whose examples for arm64 KVM the guest runs."""
    files: list[tuple[str, Path]] = []
    for top in ("src", "tests", "docs"):
        for dirpath, dirnames, filenames in os.walk(src_root / top):
            dirnames[:] = sorted(
                d for d in dirnames if d not in ("__pycache__", ".hypothesis") and not d.endswith(".egg-info")
            )
            for name in sorted(filenames):
                if name.endswith((".pyc", ".pyo")):
                    continue
                p = Path(dirpath) / name
                files.append((str(p.relative_to(src_root)), p))
    files.append(("pyproject.toml", src_root / "pyproject.toml"))
    files.append(("README.md", src_root / "README.md"))
    return files


def build_overlay(
    dest: Path, src_root: Path, steps_sh: str, extra: dict[str, Path] | None = None
) -> Path:
    """/init, /testbed/steps.sh and /kvmspe (the checkout, plus ``extra``: checkout-relative
    name -> file built on the host), as the archive appended to the base."""
    init = (HERE / "init.sh").read_bytes()
    with open(dest, "wb") as fh:
        cpio = Cpio(fh)
        cpio.file("init", init, 0o755)
        cpio.dir("testbed")
        cpio.file("testbed/steps.sh", steps_sh.encode(), 0o644)
        cpio.dir("kvmspe")
        made = {"kvmspe"}
        for rel, path in _checkout_files(src_root) + sorted((extra or {}).items()):
            parts = rel.split("/")
            for i in range(1, len(parts)):
                d = "kvmspe/" + "/".join(parts[:i])
                if d not in made:
                    cpio.dir(d)
                    made.add(d)
            cpio.file(f"kvmspe/{rel}", path.read_bytes(), 0o644, int(path.stat().st_mtime))
        cpio.trailer()
    return dest


def assemble(base: Path, overlay: Path, dest: Path) -> Path:
    with open(dest, "wb") as out:
        for part in (base, overlay):
            with open(part, "rb") as fh:
                shutil.copyfileobj(fh, out, 1 << 20)
    return dest


def describe(path: Path) -> str:
    return json.dumps({"file": path.name, "bytes": path.stat().st_size})

"""Everything the testbed downloads, and the cache that keeps it between runs.

Debian's arm64 packages come through a private apt configuration (its own
sources list, state, lists and archive directories under the cache), so the
host's apt sources and architectures are never changed. The guest's test
tools come from PyPI as pure-Python wheels. Each file is downloaded once and
found again by name on the next run; only what is missing is fetched.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import subprocess
import sys
import tarfile
import time
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TypedDict, cast

from config import (
    ARCHIVE,
    KERNELS,
    KEYRING,
    LISTS_MAX_AGE,
    RUNTIME_PACKAGES,
    RUNTIME_SUITE,
    UAPI_PACKAGE,
    UAPI_SUITE,
    WHEELS,
    KernelSpec,
)


class FetchError(Exception):
    """A download or an install step failed; the message is one line for the user."""


def cache_dir() -> Path:
    """KVMSPE_TESTBED_CACHE, else $XDG_CACHE_HOME/kvmspe-testbed, else ~/.cache/kvmspe-testbed."""
    explicit = os.environ.get("KVMSPE_TESTBED_CACHE")
    if explicit:
        return Path(explicit).expanduser().resolve()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base).expanduser().resolve() / "kvmspe-testbed"


@contextmanager
def locked(cache: Path) -> Iterator[None]:
    """Serialise cache writers: two runs sharing a cache must not download into the same files."""
    cache.mkdir(parents=True, exist_ok=True)
    with open(cache / "lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def log(msg: str) -> None:
    print(f"testbed: {msg}", file=sys.stderr, flush=True)


def _run(
    argv: list[str], what: str, timeout: float, cwd: Path | None = None, with_stderr: bool = False
) -> str:
    """Run a host tool, bounded; on failure raise FetchError with its last line of output."""
    try:
        proc = subprocess.run(
            argv, cwd=cwd, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL
        )
    except subprocess.TimeoutExpired:
        raise FetchError(f"{what}: no answer within {timeout:.0f} s") from None
    except FileNotFoundError:
        raise FetchError(f"{what}: {argv[0]} is not installed") from None
    if proc.returncode != 0:
        lines = [ln.strip() for ln in (proc.stderr + proc.stdout).splitlines() if ln.strip()]
        errors = [ln for ln in lines if ln.startswith(("E:", "ERROR", "error"))]
        last = (errors or lines or ["(no output)"])[-1]
        raise FetchError(f"{what}: {last}")
    return proc.stdout + ("\n" + proc.stderr if with_stderr else "")


# --- host tools ------------------------------------------------------------------------------


def ensure_host_tools() -> None:
    """qemu-system-aarch64 (Debian: qemu-system-arm), pip, and the arm64 cross compiler that builds
    kvmspe's C conformance program for the guests, installed with the host's own apt."""
    missing = []
    if shutil.which("qemu-system-aarch64") is None:
        missing.append("qemu-system-arm")
    if shutil.which("aarch64-linux-gnu-gcc") is None:
        missing += ["gcc-aarch64-linux-gnu", "libc6-dev-arm64-cross"]
    if subprocess.run([sys.executable, "-m", "pip", "--version"], capture_output=True).returncode != 0:
        missing.append("python3-pip")
    if shutil.which("dpkg-deb") is None or shutil.which("apt-get") is None:
        raise FetchError("the testbed needs a Debian host: dpkg-deb and apt-get are missing")
    if not missing:
        return
    if os.geteuid() != 0:
        raise FetchError(
            f"{', '.join(missing)} missing and this is not root: apt-get install {' '.join(missing)}"
        )
    log(f"installing {' '.join(missing)} with apt-get")
    env_note = "apt-get update (the host's own sources)"
    _run(["apt-get", "update", "-q"], env_note, timeout=600)
    _run(
        ["apt-get", "install", "-y", "-q", "--no-install-recommends", *missing],
        f"apt-get install {' '.join(missing)}",
        timeout=900,
    )


# --- the private apt -------------------------------------------------------------------------


class Apt:
    """apt-get/apt-cache with their own sources list and state under the cache."""

    def __init__(self, cache: Path) -> None:
        self.root = cache / "apt"
        for sub in ("lists/partial", "archives/partial", "etc/preferences.d", "etc/sources.list.d"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        (self.root / "status").touch()
        suites = sorted({RUNTIME_SUITE, UAPI_SUITE, *(k.suite for k in KERNELS)})
        lines = [f"deb [arch=arm64 signed-by={KEYRING}] {ARCHIVE} {suite} main" for suite in suites]
        sources = self.root / "etc/sources.list"
        text = "\n".join(lines) + "\n"
        if not sources.exists() or sources.read_text() != text:
            sources.write_text(text)
            (self.root / "lists.stamp").unlink(missing_ok=True)
        r = self.root
        self.opts = [
            "-o", "APT::Architecture=arm64",
            "-o", "APT::Architectures::=arm64",
            "-o", f"Dir::Etc::SourceList={r}/etc/sources.list",
            "-o", f"Dir::Etc::SourceParts={r}/etc/sources.list.d",
            "-o", f"Dir::Etc::Preferences={r}/etc/preferences",
            "-o", f"Dir::Etc::PreferencesParts={r}/etc/preferences.d",
            "-o", f"Dir::State={r}",
            "-o", f"Dir::State::Lists={r}/lists",
            "-o", f"Dir::State::status={r}/status",
            "-o", f"Dir::Cache={r}",
            "-o", f"Dir::Cache::archives={r}/archives",
            "-o", "Acquire::Languages=none",
            "-o", "Acquire::Retries=2",
            "-o", "Acquire::http::Timeout=30",
            "-o", "Debug::NoLocking=1",
        ]  # fmt: skip

    def lists_age(self) -> float | None:
        stamp = self.root / "lists.stamp"
        return time.time() - stamp.stat().st_mtime if stamp.exists() else None

    def update(self) -> None:
        if not Path(KEYRING).exists():
            raise FetchError(f"{KEYRING} is missing: apt-get install debian-archive-keyring")
        log(f"apt-get update (private, arm64: {ARCHIVE})")
        out = _run(
            ["apt-get", *self.opts, "update", "-q"],
            f"cannot reach Debian's archive {ARCHIVE}",
            timeout=600,
            with_stderr=True,
        )

        # apt-get update exits 0 even when a source failed; its "W:"/"Err:" lines say so.
        bad = [ln for ln in out.splitlines() if ln.startswith(("W: Failed to fetch", "E:"))]
        if bad:
            why = bad[0].removeprefix("W: Failed to fetch ").removeprefix("E: ")
            raise FetchError(f"cannot reach Debian's archive {ARCHIVE}: {' '.join(why.split())}")
        (self.root / "lists.stamp").touch()

    def show(self, spec: str) -> dict[str, str]:
        """The first record apt-cache shows for NAME/SUITE or NAME=VERSION."""
        out = _run(["apt-cache", *self.opts, "show", spec], f"apt-cache show {spec}", timeout=120)
        record: dict[str, str] = {}
        for line in out.splitlines():
            if not line.strip():
                if record:
                    break
                continue
            if line[0] in " \t":
                continue
            key, _, value = line.partition(":")
            record[key] = value.strip()
        if "Package" not in record:
            raise FetchError(f"Debian's archive has no package {spec}")
        return record

    def exists(self, spec: str) -> bool:
        try:
            self.show(spec)
        except FetchError:
            return False
        return True

    def download(self, name: str, version: str, dest: Path) -> None:
        tmp = dest.parent / f".part-{name}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        try:
            _run(
                ["apt-get", *self.opts, "download", "-q", f"{name}={version}"],
                f"cannot download {name} {version} from Debian's archive {ARCHIVE}",
                timeout=900,
                cwd=tmp,
            )
            debs = list(tmp.glob("*.deb"))
            if len(debs) != 1:
                raise FetchError(f"apt-get download {name}={version} gave {len(debs)} files")
            debs[0].replace(dest)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


def _deps(record: dict[str, str]) -> list[str]:
    names = []
    for alt in record.get("Depends", "").split(","):
        first = alt.split("|")[0].strip()
        if first:
            names.append(first.split()[0].split(":")[0])
    return names


# --- what a run needs ------------------------------------------------------------------------


@dataclass(frozen=True)
class Deb:
    name: str
    version: str
    arch: str

    @property
    def filename(self) -> str:
        return f"{self.name}_{self.version.replace(':', '%3a')}_{self.arch}.deb"


@dataclass(frozen=True)
class Kernel:
    label: str
    aliases: tuple[str, ...]
    description: str
    image: Path
    release: str
    package: str


class Resolved(TypedDict):
    """What resolve() found: [name, version, arch] per runtime package, the uapi package, the kernels."""

    sources: str
    runtime: list[list[str]]
    uapi: list[str]
    kernels: list[dict[str, str]]


class Cache:
    """Resolves package names once (kept in resolved.json), downloads what is missing."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.debs = root / "debs"
        self.debs.mkdir(parents=True, exist_ok=True)
        self._apt: Apt | None = None
        self.resolved_file = root / "resolved.json"

    @property
    def apt(self) -> Apt:
        if self._apt is None:
            self._apt = Apt(self.root)
        return self._apt

    def _fresh_lists(self) -> None:
        age = self.apt.lists_age()
        if age is None or age > LISTS_MAX_AGE:
            self.apt.update()

    def _load_resolved(self) -> Resolved | None:
        try:
            data = json.loads(self.resolved_file.read_text())
        except (OSError, ValueError):
            return None
        if not isinstance(data, dict) or data.get("sources") != self._sources_key():
            return None
        return cast(Resolved, data)

    @staticmethod
    def _sources_key() -> str:
        return json.dumps(
            [ARCHIVE, RUNTIME_SUITE, RUNTIME_PACKAGES, UAPI_SUITE, UAPI_PACKAGE,
             [(k.suite, k.meta) for k in KERNELS]]
        )  # fmt: skip

    def resolve(self, refresh: bool) -> Resolved:
        """Package names and versions for every role; reuses the last resolution while it is fresh.

        Refreshing means an apt-get update (at most once per LISTS_MAX_AGE or on
        demand), so a warm cache needs no network at all.
        """
        cached = self._load_resolved()
        age = self.apt.lists_age()
        if cached is not None and not refresh and age is not None and age <= LISTS_MAX_AGE:
            return cached
        try:
            self._fresh_lists() if not refresh else self.apt.update()
        except FetchError:
            if cached is not None and not refresh:
                log("cannot refresh the package lists; using the last resolution in the cache")
                return cached
            raise
        runtime = []
        for name in RUNTIME_PACKAGES:
            rec = self.apt.show(f"{name}/{RUNTIME_SUITE}")
            runtime.append([rec["Package"], rec["Version"], rec["Architecture"]])
        uapi = self.apt.show(f"{UAPI_PACKAGE}/{UAPI_SUITE}")
        kernels = []
        for spec in KERNELS:
            kernels.append(self._resolve_kernel(spec))
        data: Resolved = {
            "sources": self._sources_key(),
            "runtime": runtime,
            "uapi": [uapi["Package"], uapi["Version"], uapi["Architecture"]],
            "kernels": kernels,
        }
        self.resolved_file.write_text(json.dumps(data, indent=1) + "\n")
        return data

    def _resolve_kernel(self, spec: KernelSpec) -> dict[str, str]:
        """Follow the meta package to the package holding the image; prefer its unsigned twin."""
        meta = self.apt.show(f"{spec.meta}/{spec.suite}")
        image_pkg = next(
            (d for d in _deps(meta) if d.startswith("linux-image-") and d[12:13].isdigit()), None
        )
        if image_pkg is None:
            raise FetchError(f"{spec.meta}/{spec.suite} depends on no linux-image-VERSION package")
        rec = self.apt.show(f"{image_pkg}={meta['Version']}")
        binary = next((d for d in _deps(rec) if d.startswith("linux-binary-")), None)
        if binary is not None:  # newer suites: the image lives in linux-binary-*
            candidates = ["linux-binary-unsigned-" + binary[len("linux-binary-") :], binary]
        else:
            candidates = [image_pkg + "-unsigned", image_pkg]
        for name in candidates:
            if self.apt.exists(f"{name}={meta['Version']}"):
                rec = self.apt.show(f"{name}={meta['Version']}")
                return {
                    "label": spec.label_for(meta["Version"]),
                    "package": name,
                    "version": rec["Version"],
                    "arch": rec["Architecture"],
                    "aliases": ",".join(spec.aliases),
                    "description": spec.description,
                }
        raise FetchError(f"none of {', '.join(candidates)} is in Debian's archive")

    def deb(self, name: str, version: str, arch: str) -> Path:
        d = Deb(name, version, arch)
        path = self.debs / d.filename
        if not path.exists():
            log(f"downloading {name} {version} ({arch})")
            self.apt.download(name, version, path)
        return path


def extract_deb(deb: Path, dest: Path) -> Path:
    """dpkg-deb -x into DEST once (a stamp file marks a complete extraction)."""
    stamp = dest / ".extracted"
    if stamp.exists():
        return dest
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True)
    _run(["dpkg-deb", "-x", str(deb), str(dest)], f"dpkg-deb -x {deb.name}", timeout=600)
    stamp.touch()
    return dest


def extract_kernel_image(deb: Path, dest: Path) -> tuple[Path, str]:
    """Only the kernel image out of a kernel package, and the release it belongs to."""
    meta = dest / "release"
    image = dest / "Image"
    if image.exists() and meta.exists():
        return image, meta.read_text().strip()
    dest.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen(["dpkg-deb", "--fsys-tarfile", str(deb)], stdout=subprocess.PIPE)
    found: tuple[bytes, str] | None = None
    assert proc.stdout is not None
    try:
        with tarfile.open(fileobj=proc.stdout, mode="r|") as tar:
            for member in tar:
                name = member.name.lstrip("./")
                parts = name.split("/")
                release = None
                if parts[:1] == ["boot"] and len(parts) == 2 and parts[1].startswith("vmlinuz-"):
                    release = parts[1][len("vmlinuz-") :]
                elif (
                    parts[:3] == ["usr", "lib", "modules"]
                    and len(parts) == 5
                    and parts[4] in ("vmlinuz", "vmlinuz.unsigned")
                ):
                    release = parts[3]
                if release and member.isfile():
                    fh = tar.extractfile(member)
                    assert fh is not None
                    found = (fh.read(), release)
                    break
    finally:
        proc.stdout.close()
        proc.kill()
        proc.wait()
    if found is None:
        raise FetchError(f"{deb.name} holds no /boot/vmlinuz-* nor /usr/lib/modules/*/vmlinuz")
    data, release = found
    if data[:2] == b"\x1f\x8b":
        import gzip

        data = gzip.decompress(data)
    if data[56:60] != b"ARMd":
        raise FetchError(f"the kernel in {deb.name} is not an arm64 Image (no ARMd magic)")
    tmp = dest / "Image.part"
    tmp.write_bytes(data)
    tmp.replace(image)
    meta.write_text(release + "\n")
    return image, release


# --- wheels ----------------------------------------------------------------------------------


def wheels(cache: Path) -> list[Path]:
    """The pinned pure-Python test tools, downloaded with pip once, else taken from the host."""
    wdir = cache / "wheels"
    wdir.mkdir(parents=True, exist_ok=True)
    out = []
    for name, version in WHEELS:
        stem = name.replace("-", "_").lower()
        have = [p for p in wdir.glob("*.whl") if p.name.lower().startswith(f"{stem}-{version}-")]
        if have:
            out.append(have[0])
            continue
        log(f"downloading wheel {name}=={version}")
        argv = [
            sys.executable, "-m", "pip", "download", "--quiet", "--disable-pip-version-check",
            "--no-deps", "--only-binary=:all:", "--python-version", "3.11",
            "--platform", "any", "--implementation", "py", "-d", str(wdir), f"{name}=={version}",
        ]  # fmt: skip
        _run(argv, f"pip download {name}=={version}", timeout=600)
        have = [p for p in wdir.glob("*.whl") if p.name.lower().startswith(f"{stem}-{version}-")]
        if not have:
            raise FetchError(f"pip download {name}=={version} left no wheel")
        out.append(have[0])
    return out


def unpack_wheel(wheel: Path, site: Path) -> None:
    with zipfile.ZipFile(wheel) as zf:
        zf.extractall(site)


# --- the uapi headers ------------------------------------------------------------------------


def uapi_dir(cache: Path, deb: Path, version: str) -> Path:
    """A directory with linux/kvm.h and the arm64 asm/kvm.h side by side (as an arm64 /usr/include)."""
    out = cache / "uapi" / version
    if (out / ".ready").exists():
        return out / "include"
    tree = extract_deb(deb, cache / "extract" / deb.stem)
    inc = out / "include"
    shutil.rmtree(out, ignore_errors=True)
    shutil.copytree(tree / "usr/include/linux", inc / "linux")
    for sub in ("asm-generic",):
        if (tree / "usr/include" / sub).is_dir():
            shutil.copytree(tree / "usr/include" / sub, inc / sub)
    asm = tree / "usr/lib/linux/uapi/arm64/asm"
    if not (asm / "kvm.h").exists():
        raise FetchError(f"{deb.name} has no usr/lib/linux/uapi/arm64/asm/kvm.h")
    shutil.copytree(asm, inc / "asm")
    (out / ".ready").touch()
    return inc

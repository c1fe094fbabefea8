"""What the testbed fetches and how it boots: every name, version and limit in one place."""

from __future__ import annotations

import os
from dataclasses import dataclass

# Debian's archive (KVMSPE_TESTBED_ARCHIVE: a mirror), reached with apt through a private configuration.
ARCHIVE = os.environ.get("KVMSPE_TESTBED_ARCHIVE", "http://deb.debian.org/debian")
KEYRING = "/usr/share/keyrings/debian-archive-keyring.gpg"
# Package lists older than this are refreshed (apt-get update); a warm cache needs no network.
LISTS_MAX_AGE = 7 * 24 * 3600


@dataclass(frozen=True)
class KernelSpec:
    """A Debian arm64 kernel, named by its meta package in a suite."""

    suite: str
    meta: str  # e.g. linux-image-cloud-arm64: depends on the versioned image package
    suffix: str  # added to "MAJOR.MINOR" to make the label
    aliases: tuple[str, ...]
    description: str

    def label_for(self, version: str) -> str:
        major_minor = ".".join(version.split(".")[:2])
        return major_minor + self.suffix


# bookworm's 6.1 (the oldest kernel kvmspe is used on; unknown VCPU feature bits answer ENOENT),
# and the newest suite's kernel with 4 KiB pages and with 16 KiB pages.
KERNELS = (
    KernelSpec("bookworm", "linux-image-cloud-arm64", "", ("bookworm",), "Debian 12 cloud, 4 KiB pages"),
    KernelSpec("sid", "linux-image-cloud-arm64", "", ("sid", "sid-4k"), "Debian unstable cloud, 4 KiB pages"),
    KernelSpec("sid", "linux-image-arm64-16k", "-16k", ("sid-16k",), "Debian unstable, 16 KiB pages"),
)

# Debian 12's arm64 Python (the oldest Python kvmspe supports) and what it links against.
RUNTIME_SUITE = "bookworm"
RUNTIME_PACKAGES = [
    "busybox-static",
    "python3.11-minimal",
    "libpython3.11-minimal",
    "libpython3.11-stdlib",
    "libc6",
    "zlib1g",
    "libexpat1",
    "libffi8",
    "libgcc-s1",
]

# The newest uapi headers (architecture all): upstream's numbers for a test to compare with.
UAPI_SUITE = "sid"
UAPI_PACKAGE = "linux-libc-dev"

# Pure-Python test tools for the guest, pinned (pytest and hypothesis with what they import on 3.11).
WHEELS = [
    ("pytest", "9.0.3"),
    ("pluggy", "1.6.0"),
    ("iniconfig", "2.3.0"),
    ("packaging", "26.2"),
    ("pygments", "2.20.0"),
    ("hypothesis", "6.155.2"),
    ("attrs", "26.1.0"),
    ("sortedcontainers", "2.4.0"),
]

# Parts of the Python runtime the guest never uses (saves initramfs size and boot time).
STDLIB_SKIP = (
    "test",
    "idlelib",
    "tkinter",
    "turtledemo",
    "ensurepip",
    "lib2to3",
    "pydoc_data",
    "distutils",
    "config-3.11-aarch64-linux-gnu",
)

# QEMU: TCG with EL2 (so /dev/kvm exists in the guest) and a GICv3; no network (it would look
# for an option ROM that Debian does not ship for arm64 virt). One host thread for both guest
# CPUs (thread=single): with a thread per guest CPU (thread=multi), Debian's 7.2 kernel, busy
# with VMs and KVM_RUN, locked up ("Watchdog detected hard LOCKUP on cpu 0", seen on its
# console), hung a step or had a process die with SIGSEGV in 3 of 5 boots of 8 Dec 2026.
QEMU = "qemu-system-aarch64"
QEMU_ARGS = [
    "-M", "virt,virtualization=on,gic-version=3",
    "-cpu", "max",
    "-accel", "tcg,thread=single",
    "-smp", "2",
    "-m", "2048",
    "-nic", "none",
    "-nographic",
    "-no-reboot",
]  # fmt: skip
KERNEL_CMDLINE = "console=ttyAMA0 panic=-1 quiet loglevel=1"
# From QEMU's start to the guest's first marker (measured: about 10 s under TCG; generous for a busy host).
BOOT_LIMIT = 180
# Added to the sum of the commands' limits to bound a whole guest run.
RUN_SLACK = 60

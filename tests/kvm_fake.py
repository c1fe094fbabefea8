"""A recording fake of the kernel's ioctl layer, for the /dev/kvm backend's tests on any machine.

The recorder stands in for ``fcntl.ioctl``: it keeps each request number and
the exact bytes passed (and, for device attributes, the bytes behind
``addr``), answers like the kernel would, and fails calls on demand. The
expected numbers and layouts are written out here independently of
:mod:`kvmspe.abi`, from the uapi headers. tests/conftest.py gives its
fixtures (``rec``, ``arm``, ``vcpu``, ``feature_bit``) to every test file.
"""

from __future__ import annotations

import ctypes
import errno
import os
import signal
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from kvmspe import abi
from kvmspe.kvm import Kvm

# Request numbers as the uapi headers give them.
CREATE_VM = 0xAE01
CHECK_EXTENSION = 0xAE03
GET_VCPU_MMAP_SIZE = 0xAE04
CREATE_VCPU = 0xAE41
RUN = 0xAE80
ARM_VCPU_INIT = 0x4020AEAE
ARM_PREFERRED_TARGET = 0x8020AEAF
SET_ATTR = 0x4018AEE1
GET_ATTR = 0x4018AEE2
HAS_ATTR = 0x4018AEE3
ATTR_REQUESTS = (SET_ATTR, GET_ATTR, HAS_ATTR)
# _IOWR(KVMIO, 0xe0, struct kvm_create_device): dir 3, size 12 [include/uapi/linux/kvm.h].
CREATE_DEVICE = 0xC00CAEE0

SPE = 3
IRQ, SPU, MAX = 0, 1, 2
TARGET = 5  # KVM_ARM_TARGET_GENERIC_V8
# The GICv3 device [include/uapi/linux/kvm.h, arch/arm64/include/uapi/asm/kvm.h].
DEV_TYPE_ARM_VGIC_V3 = 7
VGIC_GRP_ADDR, VGIC_GRP_CTRL = 0, 4
VGIC_V3_ADDR_TYPE_DIST, VGIC_V3_ADDR_TYPE_REDIST = 2, 3
VGIC_CTRL_INIT = 0
UNMAPPED = 0xFFFF_FFFF_FFFF_F000


def u32(v: int) -> bytes:
    return (v & 0xFFFF_FFFF).to_bytes(4, sys.byteorder)


def u64(v: int) -> bytes:
    return (v & (1 << 64) - 1).to_bytes(8, sys.byteorder)


def device_attr(group: int, attr: int, addr: int) -> bytes:
    """struct kvm_device_attr { __u32 flags; __u32 group; __u64 attr; __u64 addr; }"""
    return u32(0) + u32(group) + u64(attr) + u64(addr)


def create_device(type_: int, fd: int = 0, flags: int = 0) -> bytes:
    """struct kvm_create_device { __u32 type; __u32 fd; __u32 flags; }"""
    return u32(type_) + u32(fd) + u32(flags)


def vcpu_init(target: int, features: list[int]) -> bytes:
    """struct kvm_vcpu_init { __u32 target; __u32 features[7]; }"""
    return u32(target) + b"".join(u32(f) for f in features)


@dataclass
class Record:
    fd: int
    request: int
    arg: int | bytes
    #: For SET: the 8 bytes behind addr when the call was made.
    value: bytes | None = None
    #: For KVM_CREATE_VM / KVM_CREATE_VCPU: the fd answered.
    result: int | None = None


class Recorder:
    """An ``ioctl(fd, request, arg)`` that records and answers like KVM."""

    def __init__(self, tmp: Path):
        self.tmp = tmp
        self.calls: list[Record] = []
        self.fail: dict[int, list[int]] = {}
        #: What GET writes behind addr, per (group, attr): 8 raw bytes.
        self.stored: dict[tuple[int, int], bytes] = {}
        self.exit: tuple[int, bytes] = (abi.KVM_EXIT_HLT, b"")
        self.opened: list[int] = []
        #: A kernel's VCPU features, when set: the bits KVM_ARM_VCPU_INIT
        #: accepts (others answer ``unknown_feature``), and the bit whose VCPUs
        #: have the SPE group (HAS on group 3 answers ENXIO on any other VCPU).
        self.known_bits: set[int] | None = None
        self.unknown_feature = errno.ENOENT
        self.spe_bit: int | None = None
        self.features: dict[int, int] = {}

    def new_fd(self) -> int:
        path = self.tmp / f"fd{len(self.opened)}"
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        os.ftruncate(fd, 4096)
        self.opened.append(fd)
        return fd

    def requests(self) -> list[int]:
        return [c.request for c in self.calls]

    def __call__(self, fd: int, request: int, arg: Any) -> int:
        payload = arg if isinstance(arg, int) else bytes(arg)
        record = Record(fd, request, payload)
        addr = 0
        if request in ATTR_REQUESTS:
            assert isinstance(payload, bytes) and len(payload) == 24
            addr = int.from_bytes(payload[16:], sys.byteorder)
            if request == SET_ATTR and addr not in (0, UNMAPPED):
                record.value = ctypes.string_at(addr, 8)
        self.calls.append(record)
        pending = self.fail.get(request)
        if pending:
            code = pending.pop(0)
            raise OSError(code, os.strerror(code))
        if request in (CREATE_VM, CREATE_VCPU):
            record.result = self.new_fd()
            return record.result
        if request == CREATE_DEVICE:
            assert isinstance(payload, bytes) and len(payload) == 12
            arg[4:8] = u32(self.new_fd())
        if request == GET_VCPU_MMAP_SIZE:
            return 4096
        if request == ARM_PREFERRED_TARGET:
            arg[:] = vcpu_init(TARGET, [0] * 7)
        if request == ARM_VCPU_INIT and self.known_bits is not None:
            assert isinstance(payload, bytes)
            words = [int.from_bytes(payload[i : i + 4], sys.byteorder) for i in range(4, 32, 4)]
            bits = {32 * w + b for w, word in enumerate(words) for b in range(32) if word >> b & 1}
            if not bits <= self.known_bits:
                raise OSError(self.unknown_feature, os.strerror(self.unknown_feature))
            self.features[fd] = words[0]
        if request == HAS_ATTR and self.known_bits is not None:
            assert isinstance(payload, bytes)
            group = int.from_bytes(payload[4:8], sys.byteorder)
            has_spe = self.spe_bit is not None and self.features.get(fd, 0) >> self.spe_bit & 1
            if group == SPE and not has_spe:
                raise OSError(errno.ENXIO, os.strerror(errno.ENXIO))
        if request in (GET_ATTR, SET_ATTR) and addr == UNMAPPED:
            raise OSError(errno.EFAULT, os.strerror(errno.EFAULT))
        if request == GET_ATTR:
            assert isinstance(payload, bytes)
            group = int.from_bytes(payload[4:8], sys.byteorder)
            attr = int.from_bytes(payload[8:16], sys.byteorder)
            ctypes.memmove(addr, self.stored[group, attr], 8)
        if request == RUN:
            reason, data = self.exit
            os.pwrite(fd, u32(reason), 8)
            os.pwrite(fd, data, 32)
        return 0


#: The SPE feature bit the ``arm`` fixture's backend is given (not an upstream bit).
SPE_BIT = 9


def make_kvm(rec: Recorder, tmp_path: Path, **kw: Any) -> Kvm:
    (tmp_path / "kvm").touch()
    return Kvm(str(tmp_path / "kvm"), **{"ioctl": rec, "arch": "aarch64", **kw})


def probing_kvm(rec: Recorder, tmp_path: Path, known: set[int], unknown: int, spe_bit: int | None) -> Kvm:
    """A backend on ``rec`` as a kernel whose KVM_ARM_VCPU_INIT takes the ``known`` feature
    bits (others answer ``unknown``), and whose VCPUs with ``spe_bit`` have the SPE group."""
    rec.known_bits, rec.unknown_feature, rec.spe_bit = known, unknown, spe_bit
    return make_kvm(rec, tmp_path)


# -- an arm64 kernel with SPE whose KVM_RUN notes its thread's CPUs -------------------------------
#
# The ioctl layer is fake but the threads and their CPU affinity are this
# machine's: the fake KVM_RUN reads sched_getaffinity(0) of the thread that
# issued it, so the tests see the set KVM_RUN really ran under.


@dataclass
class RunSeen:
    """One KVM_RUN as the fake kernel saw it: which thread, on which CPUs."""

    thread: str
    ident: int
    cpus: frozenset[int]


class AffinityRecorder:
    """The recorded arm64 kernel with SPE (bit 12), noting each KVM_RUN's
    thread and CPU affinity; ``block`` makes KVM_RUN wait for a signal, as an
    arm64 VCPU without guest code does."""

    def __init__(self, rec: Recorder, block: bool = False):
        rec.known_bits, rec.unknown_feature, rec.spe_bit = set(range(9)) | {12}, errno.EINVAL, 12
        self.rec = rec
        self.block = block
        self.runs: list[RunSeen] = []

    def __call__(self, fd: int, request: int, arg: Any) -> int:
        if request == RUN:
            me = threading.current_thread()
            self.runs.append(RunSeen(me.name, threading.get_ident(), frozenset(os.sched_getaffinity(0))))
            if self.block:
                signal.pause()
                raise InterruptedError(errno.EINTR, os.strerror(errno.EINTR))
        return self.rec(fd, request, arg)


def spe_host(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    ioctl: AffinityRecorder,
    cpumask: str | None,
    type_: int = 10,
) -> None:
    """This machine as an arm64 host with one SPE unit, ``arm_spe_0`` of perf type
    ``type_`` whose ``cpumask`` is ``cpumask`` (None: no such file)."""
    import kvmspe.kvm
    from kvmspe.host import discovery

    spe = tmp_path / "sys" / "bus" / "event_source" / "devices" / "arm_spe_0"
    spe.mkdir(parents=True)
    (spe / "type").write_text(f"{type_}\n")
    if cpumask is not None:
        (spe / "cpumask").write_text(f"{cpumask}\n")
    real_discover = discovery.discover
    monkeypatch.setattr(discovery, "discover", lambda **kw: real_discover(sysfs_root=str(tmp_path / "sys")))
    monkeypatch.setattr(kvmspe.kvm, "Kvm", lambda *a, **kw: make_kvm(ioctl.rec, tmp_path, ioctl=ioctl))

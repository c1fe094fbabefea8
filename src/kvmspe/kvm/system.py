"""The system fd: an open ``/dev/kvm``, its API version and capabilities, the SPE feature bit, VMs.

:class:`Kvm` is where the real backend starts. It owns its VMs (closing it
closes them), decides the SPE VCPU feature bit once (given, else probed on
throwaway VMs: :mod:`kvmspe.kvm.feature`), and holds the one ``ioctl``
function every fd below it calls through, so that tests can record the
exact bytes of the arm64 paths on any machine.
"""

from __future__ import annotations

import errno
import fcntl
import os
from typing import Any, cast

from .. import abi
from ..errors import InvalidArgumentError, KvmError
from ..validation import check_int
from .fd import IOCTL_INT_MAX, IoctlFn, Owned, fail, retry
from .feature import SPE_FEATURE_CANDIDATES, SpeFeature, no_feature_reason
from .vm import Vm

__all__ = ["Kvm", "normalise_arch"]

_ARCH_ALIASES = {"arm64": "aarch64", "amd64": "x86_64"}


def normalise_arch(machine: str) -> str:
    """``os.uname().machine`` in the spelling KVM code uses: ``aarch64``, ``x86_64``."""
    return _ARCH_ALIASES.get(machine, machine)


def _open_reason(path: str, code: int) -> str:
    if code == errno.ENOENT:
        return f"{path} does not exist: the kernel has no KVM, or its module is not loaded"
    if code in (errno.EACCES, errno.EPERM):
        return f"no permission to open {path}: run as root or join the group that owns it"
    if code == errno.ENXIO or code == errno.ENODEV:
        return f"{path} exists but no KVM driver answers (no virtualisation support enabled?)"
    return f"cannot open {path}: {os.strerror(code)}"


class Kvm(Owned):
    """An open ``/dev/kvm``: API version, capabilities, VM creation.

    ``ioctl`` replaces ``fcntl.ioctl`` (for tests); ``arch`` replaces the
    host architecture (default ``os.uname().machine``), which decides whether
    VCPUs are initialised the arm64 way. ``spe_feature_bit`` gives the SPE
    VCPU feature bit (checked: not an upstream feature, fits
    ``features[7]``); without it :meth:`spe_feature` decides. Closing it
    closes its VMs too.
    """

    def __init__(
        self,
        path: str = "/dev/kvm",
        *,
        ioctl: IoctlFn | None = None,
        arch: str | None = None,
        spe_feature_bit: int | None = None,
    ):
        if spe_feature_bit is not None:
            abi.check_assumed("spe_feature_bit", spe_feature_bit)
        self._spe_bit_arg = spe_feature_bit
        self._spe_feature: SpeFeature | None = None
        self.path = path
        self.ioctl: IoctlFn = ioctl if ioctl is not None else cast(IoctlFn, fcntl.ioctl)
        self.arch = normalise_arch(arch if arch is not None else os.uname().machine)
        self.vms: list[Vm] = []
        self._mmap_size: int | None = None
        self.closed = True  # until the open succeeds
        if not isinstance(path, (str, os.PathLike)) or not os.fspath(path) or "\0" in str(path):
            raise InvalidArgumentError(f"path must be the path of /dev/kvm (a non-empty str), got {path!r}")
        try:
            fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        except OSError as exc:
            code = exc.errno or errno.EIO
            raise KvmError(code, _open_reason(str(path), code), ioctl="open") from None
        self._own(fd, f"Kvm({path!r})")

    def _call(self, request: int, arg: Any, name: str) -> int:
        self._check_open(name)
        try:
            return retry(self.ioctl, self.fd, request, arg)
        except OSError as exc:
            raise fail(exc, name) from None

    def api_version(self) -> int:
        """KVM_GET_API_VERSION (12 on every kernel since 2.6.22)."""
        return self._call(abi.KVM_GET_API_VERSION, 0, "KVM_GET_API_VERSION")

    def check_extension(self, cap: int) -> int:
        """KVM_CHECK_EXTENSION on ``/dev/kvm``: 0 when absent, else a positive value."""
        self._check_open("KVM_CHECK_EXTENSION")
        check_int("capability", cap, 0, IOCTL_INT_MAX)
        return self._call(abi.KVM_CHECK_EXTENSION, cap, "KVM_CHECK_EXTENSION")

    def vcpu_mmap_size(self) -> int:
        """KVM_GET_VCPU_MMAP_SIZE: bytes of the shared ``kvm_run`` area (asked once)."""
        self._check_open("KVM_GET_VCPU_MMAP_SIZE")
        if self._mmap_size is None:
            self._mmap_size = self._call(abi.KVM_GET_VCPU_MMAP_SIZE, 0, "KVM_GET_VCPU_MMAP_SIZE")
        return self._mmap_size

    def create_vm(self, machine_type: int = 0) -> Vm:
        """KVM_CREATE_VM (``machine_type`` 0: the default IPA size on arm64)."""
        self._check_open("KVM_CREATE_VM")
        check_int("machine_type", machine_type, 0, IOCTL_INT_MAX)
        fd = self._call(abi.KVM_CREATE_VM, machine_type, "KVM_CREATE_VM")
        vm = Vm(self, fd)
        self.vms.append(vm)
        return vm

    def spe_feature(self) -> SpeFeature:
        """The SPE VCPU feature bit: given (argument, then
        :data:`kvmspe.abi.ASSUMED`), else probed once and remembered.

        Probing, on arm64: for each bit of :data:`SPE_FEATURE_CANDIDATES`, a
        throwaway VM with one VCPU initialised with only that bit; the bit
        counts only if KVM_ARM_VCPU_INIT accepts it AND the SPE group then
        answers KVM_HAS_DEVICE_ATTR (KVM_ARM_VCPU_SPE_MAX_BUFFER_SIZE). A
        kernel that accepts an unrelated bit (Linux 7.2 takes bit 8,
        KVM_ARM_VCPU_HAS_EL2_E2H0) answers ENXIO there, so that bit does not
        count. Unknown bits answer ENOENT (Linux 6.1) or EINVAL (newer).
        """
        self._check_open("spe_feature")
        if self._spe_feature is not None:
            return self._spe_feature
        if self._spe_bit_arg is not None:
            bit = self._spe_bit_arg
            found = SpeFeature(bit, "argument", f"bit {bit}, given as an argument")
        elif abi.ASSUMED.spe_feature_bit is not None:
            bit = abi.ASSUMED.spe_feature_bit
            source = abi.ASSUMED.source("spe_feature_bit")
            found = SpeFeature(bit, source, f"bit {bit}, given by {source}")
        else:
            found = self._probe_spe_feature()
        self._spe_feature = found
        return found

    def _probe_spe_feature(self) -> SpeFeature:
        if self.arch != "aarch64":
            return SpeFeature(None, "none", f"SPE is an arm64 feature; this host is {self.arch}")
        tried: list[tuple[int, str]] = []
        for bit in SPE_FEATURE_CANDIDATES:
            with self.create_vm() as vm:
                try:
                    vcpu = vm._create(0, spe=True, bit=bit)
                except KvmError as exc:
                    tried.append((bit, f"{exc.ioctl} {exc.name}"))
                    continue
                try:
                    answers = vcpu.has_device_attr(
                        abi.KVM_ARM_VCPU_SPE_CTRL, abi.KVM_ARM_VCPU_SPE_MAX_BUFFER_SIZE
                    )
                except KvmError as exc:
                    answer = f"accepted by KVM_ARM_VCPU_INIT, but HAS on the SPE group answers {exc.name}"
                    tried.append((bit, answer))
                    continue
                if answers:
                    reason = (
                        f"bit {bit}, probed: KVM_ARM_VCPU_INIT accepts it and the KVM_ARM_VCPU_SPE_CTRL"
                        " group then answers KVM_HAS_DEVICE_ATTR"
                    )
                    return SpeFeature(bit, "probed", reason, tuple(tried))
                tried.append((bit, "accepted by KVM_ARM_VCPU_INIT, but the SPE group answers ENXIO"))
        return SpeFeature(None, "none", no_feature_reason(), tuple(tried))

    def close(self) -> None:
        """Close every VM created here, then ``/dev/kvm``. Safe to call twice."""
        if self.closed:
            return
        for vm in list(self.vms):
            vm.close()
        self._close_fd()

"""What a backend offers: the system, VM and VCPU interface of the model and the real kernel.

:class:`kvmspe.model.kernel.Host` and :class:`kvmspe.kvm.Kvm` are both a
:class:`System`: each creates VMs (:class:`GuestVm`) whose VCPUs
(:class:`GuestVcpu`) take the SPE device attributes, run, and let the guest
enable a buffer (the model's guest always; the real one under kvmspe's shim,
whose model is the guest). :class:`AnyVcpu` and :class:`AnyVm`, any backend's
VCPU and VM, are the part of that the conformance runners need. Code written against them (the VMM's bring-up,
the conformance runners) runs unchanged on either. Errors are
:class:`~kvmspe.errors.KvmError` with the kernel's errno on both.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from types import TracebackType

    from . import abi

__all__ = ["AnyVcpu", "AnyVm", "GuestVcpu", "GuestVm", "System"]


class AnyVcpu(Protocol):
    """A VCPU: the SPE device attributes (``KVM_{HAS,SET,GET}_DEVICE_ATTR``) and KVM_RUN."""

    @property
    def index(self) -> int:
        """The VCPU's id in its VM."""
        ...

    def has_device_attr(self, group: int, attr: int) -> bool: ...

    def set_device_attr(self, group: int, attr: int, value: object) -> None: ...

    def get_device_attr(self, group: int, attr: int, addr: object = None) -> int: ...

    def run(self) -> abi.Exit: ...


class AnyVm(Protocol):
    """A VM: it creates VCPUs, with or without the SPE feature, and is closed after use."""

    def create_vcpu(self, index: int | None = None, *, spe: bool = True) -> AnyVcpu: ...

    def close(self) -> None: ...

    def __enter__(self) -> AnyVm: ...

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None: ...


class GuestVcpu(AnyVcpu, Protocol):
    """A VCPU whose guest's side can be scripted: it enables a buffer, reads a
    buffer register, and the host bytes pinned for that buffer are known."""

    def enable_buffer(self, base: int, size: int) -> None: ...

    def guest_read(self, reg: str) -> int: ...

    @property
    def pinned_bytes(self) -> int:
        """Host bytes pinned for this VCPU's buffer."""
        ...


class GuestVm(Protocol):
    """A VM of a :class:`System`: its VCPUs are :class:`GuestVcpu`."""

    def create_vcpu(self, index: int | None = None, *, spe: bool = True) -> GuestVcpu: ...

    def close(self) -> None: ...


class System(Protocol):
    """A kernel, as ``/dev/kvm`` is one: it creates VMs (a model ``Host``, a real ``Kvm``)."""

    def create_vm(self) -> GuestVm: ...


if TYPE_CHECKING:
    from . import kvm
    from .model import kernel as model

    def _both_backends_satisfy(
        mv: model.Vcpu, kv: kvm.Vcpu, mvm: model.Vm, kvm_vm: kvm.Vm
    ) -> tuple[AnyVcpu, AnyVcpu, AnyVm, AnyVm, GuestVcpu, GuestVcpu, GuestVm, GuestVm]:
        return mv, kv, mvm, kvm_vm, mv, kv, mvm, kvm_vm

    def _both_systems_satisfy(host: model.Host, real: kvm.Kvm) -> tuple[System, System]:
        return host, real

"""What a backend offers: the VCPU and VM interface of the model and the real kernel.

:class:`kvmspe.model.kernel.Vcpu` and :class:`kvmspe.kvm.Vcpu` (and their VMs)
both satisfy these protocols, so code written against them (the VMM's
bring-up, the conformance runners) runs unchanged on either. Errors are
:class:`~kvmspe.errors.KvmError` with the kernel's errno on both.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from types import TracebackType

    from . import abi

__all__ = ["Vcpu", "Vm"]


class Vcpu(Protocol):
    """A VCPU: the SPE device attributes (``KVM_{HAS,SET,GET}_DEVICE_ATTR``) and KVM_RUN."""

    @property
    def index(self) -> int:
        """The VCPU's id in its VM."""
        ...

    def has_device_attr(self, group: int, attr: int) -> bool: ...

    def set_device_attr(self, group: int, attr: int, value: object) -> None: ...

    def get_device_attr(self, group: int, attr: int, addr: object = None) -> int: ...

    def run(self) -> abi.Exit: ...


class Vm(Protocol):
    """A VM: it creates VCPUs, with or without the SPE feature, and is closed after use."""

    def create_vcpu(self, index: int | None = None, *, spe: bool = True) -> Vcpu: ...

    def close(self) -> None: ...

    def __enter__(self) -> Vm: ...

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None: ...


if TYPE_CHECKING:
    from . import kvm
    from .model import kernel as model

    def _both_backends_satisfy(
        mv: model.Vcpu, kv: kvm.Vcpu, mvm: model.Vm, kvm_vm: kvm.Vm
    ) -> tuple[Vcpu, Vcpu, Vm, Vm]:
        return mv, kv, mvm, kvm_vm

"""kvmspe: the KVM arm64 SPE max-buffer-size interface, as code.

The names a user needs first are reachable from the package root, and each
is imported only when first used (:pep:`562`), so ``import kvmspe`` stays as
light as the command line needs:

* ``maxbuf``, ``registers`` - the PMBIDR_EL1.MaxBuffSize codec, the SPE buffer registers
* ``abi`` - ioctl numbers, structs, attribute numbers, errno meanings, assumed numbers
* ``Host``, ``Spu`` - the reference model of the kernel side (:mod:`kvmspe.model.kernel`)
* ``Kvm`` - the real ``/dev/kvm`` backend (:mod:`kvmspe.kvm`)
* ``bring_up``, ``choose_backend``, ``configure_spe`` - a VMM's work on either (:mod:`kvmspe.vmm`)
* ``plan`` - buffer sizes and RLIMIT_MEMLOCK for a host (:mod:`kvmspe.planner`)
* the error types, imported with the root: every error kvmspe raises on purpose is a
  :class:`KvmspeError`

The layers themselves: :mod:`kvmspe.arch`, :mod:`kvmspe.abi`, :mod:`kvmspe.model`,
:mod:`kvmspe.host`, :mod:`kvmspe.conformance`, :mod:`kvmspe.export`, :mod:`kvmspe.shim`.
"""

from __future__ import annotations

from importlib import import_module

from .errors import (
    ClosedError,
    InvalidArgumentError,
    KvmError,
    KvmspeError,
    NotRepresentableError,
    RegisterError,
)
from .version import __version__

#: Not typing's: the codec commands start without importing typing (mypy reads the name alike).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from . import abi as abi
    from .arch import maxbuf as maxbuf
    from .arch import registers as registers
    from .kvm import Kvm as Kvm
    from .model.kernel import Host as Host
    from .model.kernel import Spu as Spu
    from .planner import plan as plan
    from .vmm import bring_up as bring_up
    from .vmm import choose_backend as choose_backend
    from .vmm import configure_spe as configure_spe

#: Name at the root -> (module, attribute in it; None: the module itself).
_LAZY: dict[str, tuple[str, str | None]] = {
    "abi": (".abi", None),
    "maxbuf": (".arch.maxbuf", None),
    "registers": (".arch.registers", None),
    "Host": (".model.kernel", "Host"),
    "Spu": (".model.kernel", "Spu"),
    "Kvm": (".kvm", "Kvm"),
    "bring_up": (".vmm", "bring_up"),
    "choose_backend": (".vmm", "choose_backend"),
    "configure_spe": (".vmm", "configure_spe"),
    "plan": (".planner", "plan"),
}

__all__ = [
    "ClosedError",
    "Host",
    "InvalidArgumentError",
    "Kvm",
    "KvmError",
    "KvmspeError",
    "NotRepresentableError",
    "RegisterError",
    "Spu",
    "__version__",
    "abi",
    "bring_up",
    "choose_backend",
    "configure_spe",
    "maxbuf",
    "plan",
    "registers",
]


def __getattr__(name: str) -> Any:
    where = _LAZY.get(name)
    if where is None:
        raise AttributeError(f"module 'kvmspe' has no attribute {name!r}")
    module = import_module(where[0], __name__)
    value = module if where[1] is None else getattr(module, where[1])
    globals()[name] = value  # looked up once
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))

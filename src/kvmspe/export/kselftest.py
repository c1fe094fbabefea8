"""``kvmspe export --lang kselftest``: the conformance cases as a KVM selftest for a kernel tree.

One C file for ``tools/testing/selftests/kvm/arm64/`` (``aarch64/`` up to Linux 6.12),
written against the tree's ``kvm_util.h``/``test_util.h``: VMs from
``vm_create_barebones()``, VCPUs from ``__vm_vcpu_add()`` and ``KVM_ARM_VCPU_INIT``,
the device attributes through ``__vcpu_device_attr_set/get`` and
``__vcpu_has_device_attr`` (an errno is what many cases expect), kselftest TAP
with one test per case (its rule and source in the message), ``__TEST_REQUIRE``
for what the host lacks. Its cases, calls and expectations are the ones the
``c-selftest`` program has: both are :func:`kvmspe.export.c_cases.program` around
the same case table.

The SPE VCPU feature bit and ``KVM_EXIT_RLIMIT`` come from the tree's uapi when it
defines them (a tree with the series), else from build-time defines
(``EXTRA_CFLAGS="-DKVM_ARM_VCPU_SPE=N -DKVM_EXIT_RLIMIT=N"``); without them the
test skips, with the reason, as a whole. No number is built in.
"""

from __future__ import annotations

from collections.abc import Iterable

from ..conformance.cases import CASES, Case
from . import c_cases

__all__ = ["NAME", "render"]

#: The test's name in the tree (``aarch64/NAME.c``, ``arm64/NAME.c``).
NAME = "spe_conformance"


def render(cases: Iterable[Case] = CASES) -> str:
    """The test's C text: ``templates/kselftest.c`` around the shared table of ``cases``."""
    return c_cases.program("kselftest.c", "kselftest", cases=cases)

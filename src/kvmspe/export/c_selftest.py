"""``kvmspe export --lang c-selftest``: the conformance cases as a C program, in
the kernel selftests' style.

The program is generated from the cases
(:data:`kvmspe.conformance.cases.CASES`, as the scenario vectors are), and does
on ``/dev/kvm`` what
``kvmspe conformance --backend kvm`` does: it probes the host (SPE or not,
page size, SPE units from sysfs), skips a case whose needs the host cannot
meet with the same reason, gives each case a fresh VM (on arm64 with its VCPUs
initialised, with the SPE feature where there is SPE, and an in-kernel GICv3),
performs the calls, and compares each result with the expected one. Case
values are the cases' own expressions over the host's numbers (``PAGE * 2``,
``unrep(PAGE)``), translated to C and computed on the host.

It prints TAP (``1..N``, ``ok N name``, ``not ok N name``,
``ok N name # SKIP reason``), one test per case, and exits 0 (no failure), 1
(a case failed) or 4 (every case skipped, as ``KSFT_SKIP``). It needs only
libc: no kernel tree, no kvmspe. Build it with ``gcc -std=c11 -O2 -static``;
for arm64 with Debian's ``aarch64-linux-gnu-gcc``.

The SPE VCPU feature bit is an assumed number: build with
``-DKVM_ARM_VCPU_SPE=N`` or run with ``--spe-feature-bit N``; otherwise, on
arm64, the program probes for it as kvmspe's docs describe (a throwaway VM per
candidate bit; only a bit that makes KVM_ARM_VCPU_SPE_CTRL answer HAS is the
SPE bit), and without one the SPE cases skip with "no SPE VCPU feature".
"""

from __future__ import annotations

from collections.abc import Iterable

from .. import abi
from ..conformance.cases import CASES, Case
from . import c_cases

__all__ = ["render"]


def render(cases: Iterable[Case] = CASES) -> str:
    """The program's text: ``templates/selftest.c`` around the shared table of ``cases``."""
    sizes = {
        "KS_DEVICE_ATTR_SIZE": abi.DEVICE_ATTR.size,
        "KS_VCPU_INIT_SIZE": abi.VCPU_INIT.size,
        "KS_CREATE_DEVICE_SIZE": abi.CREATE_DEVICE.size,
    }
    return c_cases.program("selftest.c", "c-selftest", sizes, cases)

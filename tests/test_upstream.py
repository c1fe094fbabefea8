"""The table of upstream numbers against the uapi headers themselves.

With ``KVMSPE_UAPI_DIR`` naming a directory that holds ``linux/kvm.h``,
``linux/version.h`` and (for the feature bits) arm64's ``asm/kvm.h`` (e.g.
Debian's ``linux-libc-dev`` 7.2 unpacked), every entry whose release is at
or before the headers' ``LINUX_VERSION_CODE`` must be there with the same
number and name, and every later one must be absent. Without the variable
those tests skip and say why. The collision tests need no headers.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from kvmspe import abi
from kvmspe.abi import upstream
from kvmspe.assumptions import DEFAULT
from kvmspe.kvm import SPE_FEATURE_CANDIDATES


def _release(text: str) -> tuple[int, ...]:
    return tuple(int(p) for p in text.split("."))


# --- no default collides with an upstream number (no headers needed) -----------------------------


def test_no_default_assumed_number_collides_with_upstream() -> None:
    defaults = abi.Assumed._DEFAULTS
    assert defaults["spe_feature_bit"] is None  # probed, never guessed
    assert defaults["cap_arm_spe"] is None  # asked only when given
    exit_rlimit = defaults["exit_rlimit"]
    assert exit_rlimit is not None and exit_rlimit not in upstream.EXITS
    assert exit_rlimit != DEFAULT.idle_exit
    # The numbers the older revisions used are all taken now.
    assert upstream.ARM64_VCPU_FEATURES[8][0] == "KVM_ARM_VCPU_HAS_EL2_E2H0"
    assert upstream.ARM64_VCPU_FEATURES[7][0] == "KVM_ARM_VCPU_HAS_EL2"
    assert upstream.CAPS[208][0] == "KVM_CAP_XSAVE2"
    assert upstream.EXITS[42][0] == "KVM_EXIT_ARM_LDST64B"


def test_probing_never_tries_an_upstream_feature_bit() -> None:
    assert not set(SPE_FEATURE_CANDIDATES) & set(upstream.ARM64_VCPU_FEATURES)
    assert min(SPE_FEATURE_CANDIDATES) == max(upstream.ARM64_VCPU_FEATURES) + 1
    assert max(SPE_FEATURE_CANDIDATES) == 31


def test_tables_are_complete_and_well_formed() -> None:
    assert sorted(upstream.ARM64_VCPU_FEATURES) == list(range(9))
    assert sorted(upstream.EXITS) == list(range(44))
    assert max(upstream.CAPS) == upstream.CAP_MAX == 249
    assert sorted(upstream.CAPS) == list(range(185, 250))
    for table, prefix in (
        (upstream.ARM64_VCPU_FEATURES, "KVM_ARM_VCPU_"),
        (upstream.EXITS, "KVM_EXIT_"),
        (upstream.CAPS, "KVM_CAP_"),
    ):
        for name, release in table.values():
            assert name.startswith(prefix)
            assert _release(release) <= _release(upstream.HEADERS_RELEASE)
    assert 9 in upstream.ARM64_FEATURE_CONTESTED


# --- against real headers -------------------------------------------------------------------------


def _headers() -> Path:
    where = os.environ.get("KVMSPE_UAPI_DIR")
    if not where:
        pytest.skip(
            "KVMSPE_UAPI_DIR is not set: give a directory with linux/kvm.h, linux/version.h and arm64"
            " asm/kvm.h (e.g. testbed/run --uapi-headers prints one) to check the table against them"
        )
    root = Path(where)
    if not (root / "linux" / "kvm.h").is_file():
        pytest.fail(f"KVMSPE_UAPI_DIR={where}: no linux/kvm.h there")
    return root


def _defines(path: Path, prefix: str) -> dict[str, int]:
    """Every ``#define PREFIX... NUMBER`` of a header: name -> number."""
    pattern = re.compile(rf"^#define\s+({prefix}\w+)\s+(\d+)\b", re.M)
    return {m.group(1): int(m.group(2)) for m in pattern.finditer(path.read_text())}


def _version(root: Path) -> tuple[int, int]:
    m = re.search(r"LINUX_VERSION_CODE\s+(\d+)", (root / "linux" / "version.h").read_text())
    assert m, "linux/version.h has no LINUX_VERSION_CODE"
    code = int(m.group(1))
    return code >> 16, code >> 8 & 0xFF


def _check(table: dict[int, tuple[str, str]], header: dict[str, int], version: tuple[int, int]) -> list[str]:
    """Entries that disagree with the header: missing or renumbered though due, or present too early."""
    wrong = []
    for number, (name, release) in table.items():
        due = _release(release)[:2] <= version
        if due and header.get(name) != number:
            wrong.append(f"{number} {name} (since {release}): the header says {header.get(name)}")
        if not due and name in header:
            wrong.append(f"{number} {name} (since {release}): already in the {version} header")
    return wrong


def test_exits_match_the_header() -> None:
    root = _headers()
    version = _version(root)
    header = _defines(root / "linux" / "kvm.h", "KVM_EXIT_")
    assert _check(upstream.EXITS, header, version) == []
    if version >= (7, 2):
        # KVM_EXIT_IO_IN/OUT and the Hyper-V/Xen sub-exits number something else.
        sub = ("KVM_EXIT_IO_", "KVM_EXIT_HYPERV_", "KVM_EXIT_XEN_")
        main = {n: v for n, v in header.items() if not n.startswith(sub) or n == "KVM_EXIT_HYPERV"}
        assert {v: n for n, v in main.items()} == {k: v[0] for k, v in upstream.EXITS.items()}


def test_capabilities_match_the_header() -> None:
    root = _headers()
    version = _version(root)
    header = _defines(root / "linux" / "kvm.h", "KVM_CAP_")
    assert _check(upstream.CAPS, header, version) == []
    if version >= (7, 2):
        assert max(header.values()) == upstream.CAP_MAX


def test_arm64_features_match_the_header() -> None:
    root = _headers()
    asm = root / "asm" / "kvm.h"
    if not asm.is_file() or "KVM_ARM_VCPU_POWER_OFF" not in asm.read_text():
        pytest.skip(f"{asm} is not arm64's asm/kvm.h: the feature bits cannot be checked here")
    header = _defines(asm, "KVM_ARM_VCPU_")
    assert _check(upstream.ARM64_VCPU_FEATURES, header, _version(root)) == []
    # No SPE feature, capability or exit upstream: the series is not merged.
    text = asm.read_text() + (root / "linux" / "kvm.h").read_text()
    assert "KVM_ARM_VCPU_SPE" not in text and "KVM_CAP_ARM_SPE" not in text and "KVM_EXIT_RLIMIT" not in text

"""Shared hypothesis settings: the "ci" profile keeps the suite fast and reproducible enough.

Select another profile with ``--hypothesis-profile``; "ci" is the default. The
recorded kernel's fixtures (tests/kvm_fake.py) are every test file's.
"""

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings
from kvm_fake import SPE_BIT, Recorder, make_kvm

from kvmspe import abi
from kvmspe.host import discovery
from kvmspe.kvm import Kvm, Vcpu

settings.register_profile(
    "ci",
    deadline=None,
    derandomize=False,
    max_examples=100,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.load_profile("ci")


@pytest.fixture
def fixture_copy(tmp_path: Path) -> Path:
    """A writable copy of the shipped big.LITTLE host snapshot (sys/ and proc/), to damage."""
    root = tmp_path / "host"
    shutil.copytree(Path(discovery.__file__).parent.parent / "fixtures" / discovery.FIXTURE_HOST, root)
    return root


@pytest.fixture
def spe0(fixture_copy: Path) -> Path:
    """The copy's first SPE instance, ``sys/bus/event_source/devices/arm_spe_0``."""
    return fixture_copy / "sys" / "bus" / "event_source" / "devices" / "arm_spe_0"


@pytest.fixture
def rec(tmp_path: Path) -> Recorder:
    """The recorded kernel (tests/kvm_fake.py): an ioctl that keeps every call and answers like KVM."""
    return Recorder(tmp_path)


@pytest.fixture
def arm(rec: Recorder, tmp_path: Path) -> Iterator[Kvm]:
    """An arm64 backend on ``rec``, given the SPE feature bit :data:`kvm_fake.SPE_BIT`; closed after."""
    with make_kvm(rec, tmp_path, spe_feature_bit=SPE_BIT) as kvm:
        yield kvm


@pytest.fixture
def vcpu(arm: Kvm, rec: Recorder) -> Vcpu:
    """VCPU 0 of a VM of ``arm``, the calls that made it forgotten: a test sees only its own."""
    vcpu = arm.create_vm().create_vcpu(0)
    rec.calls.clear()
    return vcpu


@pytest.fixture
def feature_bit() -> Iterator[None]:
    """Puts back the SPE feature bit a test gave with :func:`kvmspe.abi.set_assumed`."""
    yield
    abi.set_assumed(spe_feature_bit=None)

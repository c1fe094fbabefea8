"""Shared hypothesis settings: the "ci" profile keeps the suite fast and reproducible enough.

Select another profile with ``--hypothesis-profile``; "ci" is the default.
"""

import shutil
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

from kvmspe.host import discovery

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

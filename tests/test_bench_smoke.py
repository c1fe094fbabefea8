"""The bench entry point runs end to end and its --json is parseable.

Not a timed test: one round of a few ioctl calls, and no assertion on any
figure's size, only that each section produced its rows.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
RUN = ROOT / "bench" / "run.py"

pytestmark = [
    pytest.mark.skipif(
        shutil.which("cc") is None and not os.environ.get("CC"),
        reason="no C compiler (cc) on PATH: the bench builds its C baseline",
    ),
    pytest.mark.skipif(
        not os.access("/dev/kvm", os.R_OK | os.W_OK),
        reason="/dev/kvm is missing or not usable: the bench times real KVM ioctls",
    ),
]


@pytest.fixture(scope="module")
def report() -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, str(RUN), "--rounds", "1", "--calls", "50", "--json"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr
    doc: dict[str, Any] = json.loads(done.stdout)
    return doc


def test_json_describes_the_machine_and_the_run(report: dict[str, Any]) -> None:
    assert set(report["machine"]) >= {"cpu", "cores", "kernel", "python"}
    assert report["rounds"] == 1
    assert report["calls"] == 50


def test_every_row_has_the_documented_keys(report: dict[str, Any]) -> None:
    keys = {"section", "name", "unit", "rounds", "median", "min", "max", "baseline", "ratio", "target", "met"}
    assert report["rows"]
    for row in report["rows"]:
        assert keys <= set(row), row


def test_ioctl_rows_measure_c_and_python_for_each_call(report: dict[str, Any]) -> None:
    rows = {r["name"]: r for r in report["rows"] if r["section"] == "ioctl"}
    for call in ("has", "get", "set"):
        c = rows[f"C ioctl_loop {call}"]
        bare = rows[f"bare fcntl.ioctl {call}"]
        assert c["median"] > 0
        assert bare["median"] > 0
        assert bare["baseline"] == "C ioctl_loop"
        assert bare["ratio"] > 0
        against_bare = rows[f"kvmspe.kvm Vcpu {call} vs bare"]
        assert against_bare["baseline"] == "bare fcntl.ioctl" and against_bare["target"] == 1.05
        assert against_bare["ratio"] > 0


def test_codec_rows_are_measured(report: dict[str, Any]) -> None:
    rows = {r["name"]: r for r in report["rows"] if r["section"] == "codec"}
    for name in ("encode", "decode", "round_down", "round_up"):
        assert rows[name]["median"] > 0
        assert rows[name]["min"] <= rows[name]["median"] <= rows[name]["max"]


def test_cli_rows_have_a_baseline(report: dict[str, Any]) -> None:
    rows = [r for r in report["rows"] if r["section"] == "cli"]
    assert any(r["name"] == "python3 -c pass" and r["median"] > 0 for r in rows)
    for row in rows:
        if row["baseline"] is not None:
            assert row["ratio"] > 0
            assert row["target"] == 1.3

"""The docs' examples for the real backend run as written, on arm64 KVM with SPE.

Each ```python block of README.md and docs/*.md that the line before its fence
marks ``<!-- runs on arm64 KVM with SPE -->`` is run here as a script, in a
fresh interpreter, and must exit 0. No host here has SPE, so on x86 and on a
plain arm64 kernel the test skips with the reason; the testbed runs it on
arm64 KVM under kvmspe's shim (check ``docs-kvm``), where it must pass.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
MARK = "<!-- runs on arm64 KVM with SPE -->"
_BLOCK = re.compile(r"^(?P<mark>[^\n]*)\n```python\n(?P<code>.*?)^```$", re.M | re.S)


def _blocks() -> list[tuple[str, int, str]]:
    found = []
    for page in PAGES:
        text = page.read_text()
        for m in _BLOCK.finditer(text):
            if m.group("mark").strip() == MARK:
                found.append((page.name, text[: m.start("code")].count("\n") + 1, m.group("code")))
    return found


BLOCKS = _blocks()


def test_the_readme_has_a_real_backend_example() -> None:
    assert any(page == "README.md" for page, _, _ in BLOCKS)


def _why_not_here() -> str | None:
    """Why this host cannot run an SPE example, or None when it can."""
    if os.uname().machine != "aarch64":
        return f"arm64 only: this host is {os.uname().machine}; the testbed runs it (check docs-kvm)"
    from kvmspe.errors import KvmError
    from kvmspe.host.discovery import probe_spe_group
    from kvmspe.kvm import Kvm

    try:
        with Kvm() as kvm:
            probe = probe_spe_group(kvm)
    except KvmError as exc:
        return f"this arm64 KVM cannot be asked about SPE ({exc}); the testbed runs it under the shim"
    if not (probe.with_feature and probe.attrs.get("KVM_ARM_VCPU_SPE_MAX_BUFFER_SIZE", False)):
        return "this arm64 KVM has no SPE; the testbed runs the example under the shim"
    return None


@pytest.mark.parametrize(("page", "line", "code"), BLOCKS, ids=[f"{p}:{n}" for p, n, _ in BLOCKS])
def test_a_real_backend_example_runs_as_written(page: str, line: int, code: str) -> None:
    why = _why_not_here()
    if why is not None:
        pytest.skip(why)
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env, cwd=ROOT
    )
    assert done.returncode == 0, f"{page}:{line}\n{done.stdout}{done.stderr}"

"""The generated C conformance program: it compiles for x86_64 and (static)
for arm64, lists the cases in order, computes the cases' values as kvmspe
does, and on this machine's /dev/kvm gives, case by case, the status
``kvmspe conformance --backend kvm --json`` gives."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from kvmspe.arch import maxbuf
from kvmspe.conformance.cases import CASES, Case
from kvmspe.conformance.expr import Env, parse
from kvmspe.export import c_selftest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests" / "export"))
from compare_selftest import compare, parse_tap  # noqa: E402

BUILD = ROOT / "tests" / "export" / "build-selftest.sh"
CFLAGS = ["-std=c11", "-O2", "-Wall", "-Wextra", "-Werror"]
TIMEOUT = 300


def _tool(name: str, package: str) -> str:
    path = shutil.which(name)
    if path is None:
        reason = f"{name} is missing: apt-get install {package} (tests/export/setup-tools.sh)"
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    return path


def _build(tmp_path: Path, text: str, cc: str, *flags: str) -> Path:
    src = tmp_path / "selftest.c"
    src.write_text(text)
    exe = tmp_path / "selftest"
    proc = subprocess.run(
        [cc, *CFLAGS, *flags, str(src), "-o", str(exe)],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    return exe


@pytest.fixture(scope="module")
def selftest(tmp_path_factory: pytest.TempPathFactory) -> Path:
    gcc = _tool("gcc", "gcc")
    return _build(tmp_path_factory.mktemp("selftest"), c_selftest.render(), gcc)


def test_lists_every_case_in_order(selftest: Path) -> None:
    out = subprocess.run(
        [str(selftest), "--list"], capture_output=True, text=True, timeout=TIMEOUT, check=True
    )
    assert [ln.split()[0] for ln in out.stdout.splitlines()] == [c.name for c in CASES]
    assert [ln.split()[1] for ln in out.stdout.splitlines()] == [c.rule.key for c in CASES if c.rule]


@pytest.mark.parametrize("page", maxbuf.PAGE_SIZES)
def test_c_computes_the_case_values_as_kvmspe(selftest: Path, page: int) -> None:
    spus, limit = [10, 11], 16 << 20
    out = subprocess.run(
        [str(selftest), "--eval", str(page), *map(str, spus), str(limit)],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=True,
    )
    env = Env(page, tuple(spus), limit)
    rows = [ln.split("\t") for ln in out.stdout.splitlines()]
    assert len(rows) > 20
    for text, got in rows:
        try:
            want = f"{parse(text).evaluate(env) % (1 << 64):#x}"
        except ValueError:
            want = "error"
        assert got == ("0" if want == "0x0" else want), text


def test_bad_usage_exits_2(selftest: Path) -> None:
    for args in (
        ["--bogus"],
        ["--spe-feature-bit"],
        ["--spe-feature-bit", "x"],
        ["--spe-feature-bit", "300"],
    ):
        proc = subprocess.run(
            [str(selftest), *args], capture_output=True, text=True, timeout=TIMEOUT, check=False
        )
        assert proc.returncode == 2 and "kvmspe-selftest:" in proc.stderr, args


def test_builds_static_for_arm64(tmp_path: Path) -> None:
    _tool("aarch64-linux-gnu-gcc", "gcc-aarch64-linux-gnu libc6-dev-arm64-cross")
    out = tmp_path / "kvmspe-selftest-arm64"
    env = dict(
        os.environ, PYTHONPATH=str(ROOT / "src"), PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}"
    )
    proc = subprocess.run(
        ["sh", str(BUILD), str(out), "arm64"],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        env=env,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    elf = out.read_bytes()
    assert elf[:4] == b"\x7fELF" and elf[4] == 2  # ELF64
    assert int.from_bytes(elf[18:20], "little") == 183  # EM_AARCH64
    phoff = int.from_bytes(elf[32:40], "little")
    size, count = int.from_bytes(elf[54:56], "little"), int.from_bytes(elf[56:58], "little")
    types = {int.from_bytes(elf[phoff + i * size : phoff + i * size + 4], "little") for i in range(count)}
    assert 3 not in types and 2 not in types  # no PT_INTERP, no PT_DYNAMIC: static


def _dev_kvm() -> None:
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        pytest.skip("/dev/kvm is not usable here (missing or no permission)")


def _python_kvm() -> dict[str, str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    proc = subprocess.run(
        [sys.executable, "-m", "kvmspe", "conformance", "--backend", "kvm", "--json"],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        env=env,
        check=False,
    )
    assert proc.returncode in (0, 1), proc.stderr
    doc = json.loads(proc.stdout)
    return {r["case"]: r["status"] for r in doc["results"]}


def test_agrees_with_the_python_kvm_runner_case_by_case(selftest: Path) -> None:
    _dev_kvm()
    proc = subprocess.run([str(selftest)], capture_output=True, text=True, timeout=TIMEOUT, check=False)
    assert proc.returncode in (0, 1, 4), proc.stderr
    c = parse_tap(proc.stdout)
    py = _python_kvm()
    table, differ = compare(c, py)
    print(table)  # shown with pytest -s: the comparison, by status
    assert list(c) == list(py)
    assert not differ, "\n".join([table, *differ])
    assert any(s == "passed" for s in c.values()), "no case ran: nothing was compared"


def test_a_wrong_expectation_shows_as_a_disagreement(tmp_path: Path) -> None:
    """Changing one expected errno in the data makes the C program fail that
    case, so the comparison above can fail."""
    _dev_kvm()
    gcc = _tool("gcc", "gcc")
    py = _python_kvm()
    target = next(n for n, s in py.items() if s == "passed")

    def wrong(case: Case) -> Case:
        *calls, last = case.calls
        expect = "EDOM" if last.expectation.kind != "errno" else "ok"
        return dataclasses.replace(case, calls=(*calls, dataclasses.replace(last, expect=expect)))

    changed = [wrong(c) if c.name == target else c for c in CASES]
    exe = _build(tmp_path, c_selftest.render(changed), gcc)
    proc = subprocess.run([str(exe)], capture_output=True, text=True, timeout=TIMEOUT, check=False)
    assert proc.returncode == 1
    c = parse_tap(proc.stdout)
    _, differ = compare(c, py)
    assert differ == [f"{target}: C failed, Python passed"]
    assert f"# {target}: call" in proc.stdout


def test_the_comparison_script_agrees_on_this_machine(selftest: Path) -> None:
    """The script the arm64 testbed runs in its guests, run here."""
    _dev_kvm()
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    proc = subprocess.run(
        [sys.executable, str(ROOT / "tests" / "export" / "compare_selftest.py"), str(selftest)],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        env=env,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "C selftest   kvmspe kvm   cases" in proc.stdout and "DIFFERS" not in proc.stdout


def test_parse_tap_refuses_what_is_not_tap() -> None:
    from compare_selftest import Unreadable

    with pytest.raises(Unreadable, match="plan"):
        parse_tap("ok 1 a\n")
    with pytest.raises(Unreadable, match="order"):
        parse_tap("1..2\nok 2 a\nok 1 b\n")
    with pytest.raises(Unreadable, match="says 2"):
        parse_tap("1..2\nok 1 a\n")
    assert parse_tap("TAP version 13\n1..3\nok 1 a\nnot ok 2 b\nok 3 c # SKIP why\n") == {
        "a": "passed",
        "b": "failed",
        "c": "skipped",
    }

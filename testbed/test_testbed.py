"""The testbed's own logic, without QEMU: the cpio writer, the guest protocol and the judging.

A stand-in for QEMU (a script printing what a guest's console would) drives
guest.boot, so marker parsing, step limits and the whole-run limit are
tested in seconds.
"""

from __future__ import annotations

import io
import shlex
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import checks  # noqa: E402
import guest  # noqa: E402
import initramfs  # noqa: E402
from guest import StepResult  # noqa: E402


def _read_cpio(data: bytes) -> list[tuple[str, int, bytes]]:
    out: list[tuple[str, int, bytes]] = []
    off = 0
    while True:
        hdr = data[off : off + 110]
        assert hdr[:6] == b"070701"
        fields = [int(hdr[6 + 8 * i : 14 + 8 * i], 16) for i in range(13)]
        namesize, filesize = fields[11], fields[6]
        name = data[off + 110 : off + 110 + namesize - 1].decode()
        off += (110 + namesize + 3) & ~3
        body = data[off : off + filesize]
        off += (filesize + 3) & ~3
        if name == "TRAILER!!!":
            return out
        out.append((name, fields[1], body))


def test_cpio_holds_dirs_files_links_and_devices_in_newc_form(tmp_path: Path) -> None:
    (tmp_path / "t/a").mkdir(parents=True)
    (tmp_path / "t/a/f").write_bytes(b"hello")
    (tmp_path / "t/l").symlink_to("a/f")
    buf = io.BytesIO()
    c = initramfs.Cpio(buf)
    c.chardev("dev/console", 5, 1)
    c.tree(tmp_path / "t", "usr")
    c.file("usr/a/f", b"second copy is ignored")
    c.trailer()
    entries = {n: (m, b) for n, m, b in _read_cpio(buf.getvalue())}
    assert stat.S_ISCHR(entries["dev/console"][0])
    assert stat.S_ISDIR(entries["usr"][0]) and stat.S_ISDIR(entries["usr/a"][0])
    assert entries["usr/a/f"][1] == b"hello"
    assert stat.S_ISLNK(entries["usr/l"][0]) and entries["usr/l"][1] == b"a/f"


def test_steps_script_quotes_each_command_as_one_word() -> None:
    text = guest.steps_script([("probe", 60, "python3 -c 'print(\"a b\")'; echo $HOME")])
    line = text.splitlines()[1]
    assert shlex.split(line) == ["step", "probe", "60", "python3 -c 'print(\"a b\")'; echo $HOME"]


def _fake_qemu(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, console: str) -> None:
    script = tmp_path / "fake-qemu"
    script.write_text("#!/bin/sh\n" + textwrap.dedent(console))
    script.chmod(0o755)
    monkeypatch.setattr(guest, "QEMU", str(script))


def test_boot_reads_each_steps_output_status_and_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _fake_qemu(
        tmp_path,
        monkeypatch,
        r"""
        printf '[ 0.1] kernel noise\r\n@@TB BOOTED 8.00\r\n'
        printf '@@TB BEGIN probe 8.50\r\nSPE in KVM  no\r\nno newline at end@@TB END probe 1 9.75\r\n'
        printf '@@TB BEGIN slow 10.00\r\nstarted\r\nKilled\r\n@@TB END slow 137 15.00\r\n@@TB DONE 15.1\r\n'
        """,
    )
    run = guest.boot(Path("Image"), Path("initrd"), [("probe", 60, "x"), ("slow", 5, "y")])
    assert run.booted and run.finished and run.problem is None
    probe = run.steps["probe"]
    assert probe.rc == 1 and probe.output == "SPE in KVM  no\nno newline at end"
    assert probe.seconds == pytest.approx(1.25)
    assert run.steps["slow"].timed_out
    assert checks.judge(checks.by_name("sysinfo"), run.steps["slow"])[0].startswith("timed out after 5 s")


def test_a_guest_that_never_ends_its_step_is_killed_and_the_step_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _fake_qemu(
        tmp_path, monkeypatch, "printf '@@TB BOOTED 1\\n@@TB BEGIN stuck 1\\nworking\\n'; exec sleep 60\n"
    )
    monkeypatch.setattr(guest, "BOOT_LIMIT", 1)
    monkeypatch.setattr(guest, "RUN_SLACK", 0)
    run = guest.boot(Path("Image"), Path("initrd"), [("stuck", 1, "x"), ("after", 1, "y")])
    assert run.seconds < 10
    assert run.hung_step == "stuck" and "passed its limit" in (run.problem or "")
    assert run.steps["stuck"].hung and run.steps["stuck"].output == "working"
    assert checks.judge(checks.by_name("probe"), run.steps["stuck"])[0].startswith("hung")
    assert checks.judge(checks.by_name("probe"), run.steps["after"]) == [
        "never ran (the guest stopped before it)"
    ]


def test_a_guest_that_does_not_boot_is_reported(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_qemu(tmp_path, monkeypatch, "echo 'Kernel panic - not syncing: No working init found.'\n")
    run = guest.boot(Path("Image"), Path("initrd"), [("probe", 1, "x")])
    assert not run.booted and "before the guest reached /init" in (run.problem or "")


def _step(name: str, rc: int, output: str) -> StepResult:
    return StepResult(name, 60, output=output, rc=rc, seconds=1.0, started=True)


def test_probe_on_the_6_1_kernel_as_first_met_fails_with_the_reasons() -> None:
    out = "SPE in KVM       no: could not probe the SPE group: EEXIST: File exists\n"
    problems = checks.judge(checks.by_name("probe"), _step("probe", 1, out))
    assert any("could not probe" in p for p in problems) and any("EEXIST" in p for p in problems)


def test_probe_that_says_not_supported_passes() -> None:
    out = "SPE in KVM       no: SPE not supported on this host: KVM_HAS_DEVICE_ATTR answers ENXIO\n"
    assert checks.judge(checks.by_name("probe"), _step("probe", 1, out)) == []
    assert checks.judge(checks.by_name("probe"), _step("probe", 0, out))[0].startswith("exit status 0")


def test_configure_that_claims_the_spe_feature_fails() -> None:
    out = (
        "  ok   vcpu 0: KVM_CREATE_VCPU with the SPE feature\nstopped: SPE not supported by this host's KVM\n"
    )
    problems = checks.judge(checks.by_name("configure"), _step("configure", 1, out))
    assert len(problems) == 1 and "SPE feature" in problems[0]


def test_conformance_needs_fifteen_passes_and_honest_skips() -> None:
    ok = "PASSED   no-spe-has-irq\nkvm: 15 passed, 0 failed, 108 skipped in 0.2 s\n"
    assert checks.judge(checks.by_name("conformance"), _step("conformance", 0, ok)) == []
    bad = (
        "SKIPPED  no-spe-has-irq  x  cannot create the VCPUs: EEXIST\nkvm: 1 passed, 0 failed, 122 skipped\n"
    )
    problems = checks.judge(checks.by_name("conformance"), _step("conformance", 0, bad))
    assert len(problems) == 2
    js = '{"results": [{"case": "c", "status": "skipped", "reason": "cannot create the VCPUs: EEXIST"}]}'
    assert checks.judge(checks.by_name("conformance-json"), _step("conformance-json", 0, js))
    fine = '{"results": [{"case": "c", "status": "skipped", "reason": "host has no SPE: only ENXIO cases"}]}'
    assert checks.judge(checks.by_name("conformance-json"), _step("conformance-json", 0, fine)) == []


def test_kselftest_on_a_kvm_without_spe_must_skip_with_the_reason_and_status_4() -> None:
    # As the test printed on Debian's 7.2 cloud kernel in the testbed.
    out = (
        "Random seed: 0x6b8b4567\nTAP version 13\n"
        "1..0 # SKIP - KVM has no SPE: a VCPU with the SPE feature (bit 16): ENOENT\n"
    )
    check = checks.by_name("kselftest")
    assert checks.judge(check, _step("kselftest", 4, out)) == []
    assert checks.judge(check, _step("kselftest", 0, out))[0].startswith("exit status 0, expected 4")
    unreasoned = "TAP version 13\n1..0 # SKIP - Requirement not met: H.spe\n"
    assert len(checks.judge(check, _step("kselftest", 4, unreasoned))) == 1


def test_shim_kselftest_needs_every_case_to_agree_and_the_spe_cases_to_run() -> None:
    check = checks.by_name("shim-kselftest")
    ok = (
        "C exit status 0\nC selftest   kvmspe kvm   cases\npassed       passed       128\n"
        "skipped      skipped      33\nagree: 161 of 161 cases agree\n"
    )
    assert checks.judge(check, _step("shim-kselftest", 0, ok)) == []
    differ = ok.replace("C exit status 0", "C exit status 1")
    differ = differ.replace("agree: 161 of 161", "differ: 159 of 161")
    assert len(checks.judge(check, _step("shim-kselftest", 1, differ))) == 2


def test_a_traceback_fails_any_check() -> None:
    out = "Traceback (most recent call last):\n  File x\nValueError\n"
    assert any("traceback" in p for p in checks.judge(checks.by_name("cli-bad-input"), _step("c", 2, out)))


def test_pytest_counts_and_the_running_test() -> None:
    out = "tests/t.py::a PASSED [ 50%]\n==== 3 failed, 6 passed, 1 skipped, 16 errors in 11.7s ====\n"
    assert checks.pytest_counts(out) == {"passed": 6, "failed": 3, "skipped": 1, "errors": 16}
    hung = "tests/t.py::a PASSED [ 50%]\ntests/t.py::test_run_of_an_empty_vm Killed"
    assert checks.running_test(hung) == "tests/t.py::test_run_of_an_empty_vm"
    assert checks.running_test("tests/t.py::a PASSED") is None
    problems = checks.judge(
        checks.by_name("pytest-kvm"), _step("pytest-kvm", 0, "== 2 passed, 1 error in 1s ==")
    )
    assert any("errors" in p for p in problems)


def test_a_check_for_one_page_size_runs_there_and_says_why_elsewhere() -> None:
    check = checks.by_name("shim-kselftest")
    assert check.page_size == 4096 and check.command in check.guest_command
    for page, ran in ((4096, True), (16384, False)):
        script = check.guest_command.replace(check.command, "echo RAN").replace(
            'os.sysconf("SC_PAGE_SIZE")', str(page)
        )
        out = subprocess.run(["sh", "-c", script], capture_output=True, text=True, timeout=30)
        step = StepResult(check.name, check.limit, started=True, rc=out.returncode, output=out.stdout)
        assert (checks.skipped(check, step) is None) is ran, out.stdout
        if not ran:
            assert checks.skipped(check, step) == checks.KSELFTEST_4K_ONLY
    plain = checks.by_name("shim-conformance")
    assert plain.page_size is None and plain.guest_command == plain.command


def test_init_skips_the_steps_the_command_line_names_and_runs_the_others(tmp_path: Path) -> None:
    """init.sh's own step runner, with /proc/cmdline replaced by a file: a step named in
    testbed.skip= prints the skip mark and ends 0 without running; the others run."""
    init = (HERE / "init.sh").read_text()
    body = init[init.index("now() {") : init.index('echo "@@TB BOOTED')]
    cmdline = tmp_path / "cmdline"
    cmdline.write_text("console=ttyAMA0 quiet testbed.skip=b,c\n")
    script = body.replace("/proc/cmdline", str(cmdline)).replace("/proc/uptime", str(cmdline))
    script += "step a 10 'echo ran a'\nstep b 10 'echo ran b'\nstep c 10 'echo ran c; exit 3'\n"
    out = subprocess.run(["sh", "-c", script], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    assert "ran a" in out.stdout and "ran b" not in out.stdout and "ran c" not in out.stdout
    assert out.stdout.count(checks.SKIPPED_MARK) == 2
    check = checks.Check("b", "true", 10, (), kernels=("bookworm",), kernels_why="only on bookworm: why")
    assert check.runs_on(("6.1", "bookworm"), debian=True) and not check.runs_on(("7.2", "sid"), debian=True)
    assert check.runs_on(("mine",), debian=False), "a kernel of one's own runs every check"
    skipped_step = StepResult("b", 10, started=True, rc=0, output=f"{checks.SKIPPED_MARK} not on this kernel")
    assert checks.skipped(check, skipped_step, told=True) == "only on bookworm: why"
    ran_step = StepResult("b", 10, started=True, rc=0, output="ran b")
    assert checks.skipped(check, ran_step, told=True) is None, "told to skip but ran: judged as a run"


def test_the_readme_shows_every_check_as_checks_py_has_it() -> None:
    text = (HERE / "README.md").read_text()
    shown = text[text.index(checks.TABLE_BEGIN) + len(checks.TABLE_BEGIN) : text.index(checks.TABLE_END)]
    assert shown.strip() == checks.markdown_table(), "regenerate it: python3 testbed/checks.py"
    assert all(f"| {c.name} |" in shown for c in checks.CHECKS)

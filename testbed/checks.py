"""What runs in each guest and what it must show: the expectations, as data, each with its reason.

The guest is an arm64 kernel under QEMU TCG with EL2: /dev/kvm works, and
there is no SPE (QEMU does not emulate it), so the SPE group of every VCPU
answers ENXIO. The expectations below are what a correct kvmspe does there.
"""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass, replace
from typing import Protocol

from guest import StepResult

PYTEST = "python3 -m pytest -p no:cacheprovider -o addopts= -v -rfEs --color=no"


class Expectation(Protocol):
    @property
    def reason(self) -> str:
        """Why a correct kvmspe shows this on a KVM without SPE (one line)."""

    def failure(self, step: StepResult) -> str | None:
        """None when STEP shows what is expected, else what it showed instead (one line)."""


@dataclass(frozen=True)
class Exit:
    code: int
    reason: str

    def failure(self, step: StepResult) -> str | None:
        return None if step.rc == self.code else f"exit status {step.rc}, expected {self.code}"


@dataclass(frozen=True)
class Shows:
    pattern: str
    reason: str

    def failure(self, step: StepResult) -> str | None:
        if re.search(self.pattern, step.output, re.M):
            return None
        return f"no line matches /{self.pattern}/"


@dataclass(frozen=True)
class Never:
    pattern: str
    reason: str

    def failure(self, step: StepResult) -> str | None:
        m = re.search(self.pattern, step.output, re.M)
        if m is None:
            return None
        line = step.output[step.output.rfind("\n", 0, m.start()) + 1 :].split("\n", 1)[0]
        return f"shows /{self.pattern}/: {line.strip()[:160]}"


@dataclass(frozen=True)
class Count:
    """The integer a pattern's first group captures, compared with a bound (absent counts as 0)."""

    pattern: str
    least: int | None
    most: int | None
    reason: str

    def failure(self, step: StepResult) -> str | None:
        found = re.findall(self.pattern, step.output, re.M)
        value = int(found[-1]) if found else 0
        if self.least is not None and value < self.least:
            return f"/{self.pattern}/ counts {value}, expected at least {self.least}"
        if self.most is not None and value > self.most:
            return f"/{self.pattern}/ counts {value}, expected at most {self.most}"
        return None


@dataclass(frozen=True)
class JsonSkips:
    """Every skipped case of a JSON conformance report gives a reason that is not kvmspe's own error."""

    bad: str
    reason: str

    def failure(self, step: StepResult) -> str | None:
        try:
            doc = json.loads(step.output[step.output.find("{") :])
        except ValueError as exc:
            return f"no JSON report: {exc}"
        for r in doc.get("results", []):
            if r.get("status") == "skipped" and re.search(self.bad, str(r.get("reason", ""))):
                return f"{r.get('case')} skipped for {r.get('reason')!r}"
        return None


@dataclass(frozen=True)
class Check:
    name: str
    command: str
    limit: int  # seconds, enforced in the guest
    expect: tuple[Expectation, ...]
    pytest: bool = False
    excerpt: bool = True  # show the tail of the output under a failure (not for a JSON document)
    #: Only on kernels with this page size (None: every kernel), and why; elsewhere the
    #: step says so (SKIPPED_MARK) and the check counts as skipped.
    page_size: int | None = None
    only_why: str = ""
    #: Only on these Debian kernels (their aliases, which outlive a version: ``bookworm``,
    #: ``sid-4k``, ``sid-16k``; None: every kernel), and why; elsewhere the guest is told to
    #: skip it (``testbed.skip=`` on the kernel command line) and it counts as skipped. A
    #: kernel of one's own (``--kernel``) runs every check.
    kernels: tuple[str, ...] | None = None
    kernels_why: str = ""

    def runs_on(self, names: tuple[str, ...], debian: bool) -> bool:
        """Whether this check runs on the kernel known by NAMES (label and aliases)."""
        return self.kernels is None or not debian or bool(set(names) & set(self.kernels))

    @property
    def guest_command(self) -> str:
        """The command as the guest runs it: with its page-size condition first."""
        if self.page_size is None:
            return self.command
        test = f"python3 -c 'import os, sys; sys.exit(os.sysconf(\"SC_PAGE_SIZE\") != {self.page_size})'"
        return f"if {test}; then {self.command}; else echo {shlex.quote(f'{SKIPPED_MARK} {self.only_why}')}; fi"


#: What a step prints when its check does not apply to this kernel.
#: Not an "@@TB" line: the host reads those as the steps' own framing.
SKIPPED_MARK = "testbed-skip:"


def skipped(check: Check, step: StepResult, told: bool = False) -> str | None:
    """Why CHECK did not apply to this kernel (its step said so), or None. TOLD: the guest
    was told to skip it on this kernel (``Check.kernels``)."""
    if (check.page_size is None and not told) or not step.started or step.rc != 0:
        return None
    line = next((ln for ln in step.output.splitlines() if ln.startswith(SKIPPED_MARK)), None)
    if line is None:
        return None
    return check.kernels_why if told else line[len(SKIPPED_MARK) :].strip()


NO_TRACEBACK = Never(r"Traceback \(most recent call last\)", "kvmspe never answers with a traceback")


def _pytest(name: str, files: str, limit: int, prefix: str = "") -> Check:
    return Check(
        name,
        f"{prefix}{PYTEST} {files}",
        limit,
        (
            Exit(0, "the tests that need /dev/kvm pass on a real arm64 KVM"),
            Count(r"(\d+) failed", None, 0, "no test fails"),
            Count(r"(\d+) errors?\b", None, 0, "no test errors (a fixture that cannot set up is an error)"),
            Count(r"(\d+) passed", 1, None, "the run tested something"),
        ),
        pytest=True,
    )


KVMSPE = "python3 -m kvmspe"
#: The C conformance program (``kvmspe export --lang c-selftest``): built on the host for arm64
#: by the checkout's script, shipped at SELFTEST_BINARY, compared in the guest.
SELFTEST_BUILD = "tests/export/build-selftest.sh"
SELFTEST_BINARY = "build/kvmspe-selftest-arm64"
#: The same, linked dynamically: the shim (LD_PRELOAD) reaches only a dynamically linked program.
#: No check runs it under the shim now: on Debian's 7.2 kernel under TCG the guest kernel
#: reported a hard lockup on its second CPU during that comparison (twice in three runs), and the
#: step never ended; shim-kselftest compares the same shared case code through kvm_util.
#: ``testbed/run --cmd`` still ships it when a command names it.
SELFTEST_DYNAMIC = "build/kvmspe-selftest-arm64-dynamic"
SELFTEST_COMPARE = "tests/export/compare_selftest.py"
#: The same cases as a KVM selftest (``kvmspe export --lang kselftest``), built on the host in
#: Debian's linux-source-6.12 tree by the checkout's script, dynamically linked as the kernel's
#: selftests are, with the numbers the shim is given below (bit 16, exit 0x10000) as build-time
#: defines, since Linux 6.12's uapi has no SPE series.
KSELFTEST_BUILD = "tests/export/build-kselftest.sh"
KSELFTEST_BINARY = "build/spe_conformance-arm64"
KSELFTEST_DEFINES = "-DKVM_ARM_VCPU_SPE=16 -DKVM_EXIT_RLIMIT=65536"
#: Files arrive in the guest without their execute bit: run a copy.
KSELFTEST_RUN = (
    f"cp {KSELFTEST_BINARY} /tmp/spe_conformance && chmod +x /tmp/spe_conformance && /tmp/spe_conformance"
)
#: Why the kselftest checks run on the 4 KiB kernels only.
KSELFTEST_4K_ONLY = (
    "kvm_util's VMs take minutes under TCG on 16 KiB pages (the plain skip 542 s, the comparison 439 s,"
    " measured); the 16 KiB kernel runs the same cases through the shim in shim-conformance"
)
ERRNO_NOT_ENXIO = r"\bE(?!NXIO\b)[A-Z0-9]{3,}\b"
#: kvmspe's shim (``kvmspe shim build --cc aarch64-linux-gnu-gcc``), built on the host, shipped here.
SHIM_LIB = "build/libkvmspe-shim-arm64.so"
#: Under the shim the numbers the series does not publish are given: bit 16 is no upstream feature.
SHIM = f"{KVMSPE} shim run --lib {SHIM_LIB} --feature-bit 16 --"
#: A soft RLIMIT_MEMLOCK of 64 KiB (the hard one kept), then the command: the bring-up must raise it.
LOW_MEMLOCK = (
    "python3 -c 'import os, resource, sys; L = resource.RLIMIT_MEMLOCK;"
    " resource.setrlimit(L, (65536, resource.getrlimit(L)[1])); os.execvp(sys.argv[1], sys.argv[1:])'"
)

CHECKS: tuple[Check, ...] = (
    Check(
        "sysinfo",
        "echo release $(uname -r); echo machine $(uname -m); "
        "echo pagesize $(python3 -c 'import os; print(os.sysconf(\"SC_PAGE_SIZE\"))'); "
        "ls -l /dev/kvm; ls /sys/bus/event_source/devices/",
        60,
        (
            Exit(0, "the guest's Python runs"),
            Shows(r"^machine aarch64$", "the guest is arm64"),
            Shows(r"^c.* /dev/kvm$", "QEMU's EL2 (virtualization=on) gives the guest kernel KVM"),
        ),
    ),
    Check(
        "probe",
        f"{KVMSPE} probe",
        60,
        (
            Exit(1, "probe exits 1 where the host cannot run SPE guests"),
            Shows(r"^SPE in KVM\s+no\b.*not supported", "the SPE group answers ENXIO: SPE is not supported"),
            Never(r"could not probe", "probing itself must work on a real arm64 KVM"),
            Never(r"\bEEXIST\b", "KVM never frees a VCPU id: kvmspe must not create one twice"),
            Never(r"\bENOENT\b", "an unknown feature bit (ENOENT on 6.1) is not SPE's answer"),
        ),
    ),
    Check(
        "conformance",
        f"{KVMSPE} conformance --backend kvm",
        120,
        (
            Exit(0, "every case that applies passes"),
            Count(r"^kvm: (\d+) passed", 15, None, "every no-SPE (ENXIO) case runs and passes"),
            Count(r"^kvm: \d+ passed, (\d+) failed", None, 0, "no case fails"),
            Never(
                r"^SKIPPED .*cannot create", "a case that could not set up is kvmspe's failure, not a skip"
            ),
        ),
    ),
    Check(
        "conformance-json",
        f"{KVMSPE} conformance --backend kvm --json",
        120,
        (
            Exit(0, "the JSON report agrees with the table"),
            JsonSkips(
                rf"cannot|could not|{ERRNO_NOT_ENXIO}",
                "a skip may only say a case does not apply; an errno other than ENXIO is kvmspe's own error",
            ),
        ),
        excerpt=False,
    ),
    Check(
        "configure",
        f"{KVMSPE} configure --backend kvm",
        120,
        (
            Exit(1, "configure stops when the kernel cannot do SPE"),
            Shows(
                r"(?i)SPE[^\n]{0,60}not supported|not supported[^\n]{0,60}SPE",
                "it says why: SPE is not supported",
            ),
            Never(
                r"(?i)^\s*ok\b.*SPE feature", "no VCPU has the SPE feature here: no line may claim one does"
            ),
        ),
    ),
    Check(
        "shim-configure",
        f"{SHIM} {LOW_MEMLOCK} {KVMSPE} configure --backend kvm --vcpus 2 --max-buffer-size 1M"
        " --enable-buffer --raise-memlock --case best",
        180,
        (
            Exit(0, "under the shim the real backend brings SPE up on every VCPU"),
            Shows(r"KVM_ARM_VCPU_INIT with the SPE feature \(bit 16\)", "the feature bit reaches INIT"),
            Shows(r"^  ok   KVM_DEV_ARM_VGIC_CTRL_INIT$", "the vGIC is made before the interrupts are set"),
            Shows(r"KVM_EXIT_RLIMIT: RLIMIT_MEMLOCK exceeded by", "the model's pinning meets the real limit"),
            Shows(r"by the excess KVM_EXIT_RLIMIT reported", "the VMM raises the real limit and re-enters"),
            Shows(r"^done: SPE is configured on every VCPU$", "and the bring-up ends done"),
            Shows(r"-> exit KVM_EXIT_RLIMIT excess=", "the transcript has the exit the shim completed"),
        ),
    ),
    Check(
        "shim-conformance",
        f"{SHIM} {KVMSPE} conformance --backend kvm",
        300,
        (
            Exit(0, "every case that applies passes through the real backend and the shim"),
            Count(r"^kvm: (\d+) passed", 130, None, "the SPE cases run: far more than the no-SPE ones"),
            Count(r"^kvm: \d+ passed, (\d+) failed", None, 0, "no case fails"),
            Never(r"^SKIPPED .*(host has no SPE|needs guest code|cannot create)", "no case lacks SPE here"),
        ),
    ),
    Check(
        "kselftest",
        KSELFTEST_RUN,
        # The skip took 1 s on 6.1, 14 s on 7.2 (nearly all system time).
        120,
        (
            Exit(4, "a KVM without SPE ends the whole selftest with kselftest's skip status (KSFT_SKIP)"),
            Shows(
                r"^1\.\.0 # SKIP - KVM has no SPE: a VCPU with the SPE feature \(bit 16\): E[A-Z]+$",
                "the skip says why: KVM_ARM_VCPU_INIT refuses the SPE feature bit, with the kernel's errno",
            ),
        ),
        page_size=4096,
        only_why=KSELFTEST_4K_ONLY,
    ),
    Check(
        "shim-kselftest",
        f"{SHIM} python3 {SELFTEST_COMPARE} --kselftest {KSELFTEST_BINARY}",
        # 100-135 s on the 4 KiB kernels.
        600,
        (
            Exit(0, "under the shim the kselftest agrees with the Python kvm runner on every case"),
            Shows(r"^agree: (\d+) of \1 cases agree$", "the comparison ran over every case"),
            Count(r"^passed\s+passed\s+(\d+)$", 100, None, "both ran the SPE cases through kvm_util"),
        ),
        page_size=4096,
        only_why=KSELFTEST_4K_ONLY,
    ),
    replace(
        _pytest("docs-kvm", "tests/test_docs_kvm.py", 120, prefix=f"{SHIM} "),
        expect=(
            *_pytest("docs-kvm", "", 0).expect,
            Count(r"(\d+) skipped", None, 0, "under the shim this KVM has SPE: every example runs"),
        ),
    ),
    # 29 s on 6.1, 41 s on 7.2 (measured, the machine busy).
    _pytest("pytest-kvm", "tests/test_kvm.py", 180),
    # The same but the thousand VM and VCPU cycles, which alone take over 100 s on 16 KiB pages.
    _pytest("pytest-kvm-16k", "tests/test_kvm.py -k 'not fd_leak'", 300),
    # 47 s on 6.1, 44 s on 7.2 (measured, the machine busy; CI once needed more than 90 s).
    _pytest(
        "pytest-kvm-parts",
        "tests/test_conformance.py tests/test_vmm.py tests/test_discovery.py tests/test_cli.py -k kvm",
        240,
    ),
    # 45 s on 6.1, 76 s on 7.2 (measured, the machine busy).
    _pytest(
        "pytest-affinity",
        "tests/test_affinity.py tests/test_kvm_run.py tests/test_kvm_threads.py -k 'pin or thread or cpus or affinity'",
        300,
    ),
    Check(
        "c-selftest",
        f"python3 {SELFTEST_COMPARE} {SELFTEST_BINARY}",
        240,
        (
            Exit(0, "the generated C conformance program agrees with the Python kvm runner, case by case"),
            Shows(r"^agree: (\d+) of \1 cases agree$", "the comparison ran over every case"),
        ),
    ),
    Check(
        "cli-encode",
        f"{KVMSPE} encode 4M",
        60,
        (Exit(0, "4 MiB is representable"), Shows(r"^MaxBuffSize\s+0x0400\b", "4 MiB = 512 << 13: E=2, M=0")),
    ),
    Check(
        "cli-encode-none",
        f"{KVMSPE} encode 0x401000",
        60,
        (
            Exit(1, "4100 KiB has no encoding (steps of 8 KiB from 4 to 8 MiB)"),
            Shows(r"nearest", "it offers the nearest sizes"),
        ),
    ),
    Check(
        "cli-decode",
        f"{KVMSPE} decode 0x400",
        60,
        (Exit(0, "a field value decodes"), Shows(r"^size\s+4 MiB", "field 0x400 is 4 MiB")),
    ),
    Check(
        "cli-round",
        f"{KVMSPE} round 4100K --page-size 16K",
        60,
        (
            Exit(0, "any size rounds"),
            Shows(r"^down\s+4 MiB", "4 MiB is the representable 16 KiB-aligned size below"),
        ),
    ),
    Check(
        "cli-sizes",
        f"{KVMSPE} sizes --from 2M --to 2M",
        60,
        (Exit(0, "a range lists"), Shows(r"^0x200000\s", "2 MiB is representable")),
    ),
    Check(
        "cli-explain",
        f"{KVMSPE} explain EDOM",
        60,
        (Exit(0, "errno names explain"), Shows(r"^EDOM \(errno 33", "EDOM is errno 33 on arm64")),
    ),
    Check(
        "cli-plan",
        f"{KVMSPE} plan --vcpus 4 --max-buffer-size 4M",
        60,
        (
            Exit(0, "a plan is made"),
            Shows(r"MAX_BUFFER_SIZE=4194304\b", "4 MiB is set as is"),
            Shows(r"^systemd\s+LimitMEMLOCK=\d+$", "a systemd line to paste, in bytes"),
            Shows(r"^ulimit\s+ulimit -l \d+$", "a ulimit line to paste, in KiB"),
        ),
    ),
    Check(
        "cli-guest-dt",
        f"{KVMSPE} guest --dt",
        60,
        (
            Exit(0, "the guest's SPE device-tree node is printed"),
            Shows(r'compatible = "arm,statistical-profiling-extension-v1";', "the SPE binding's compatible"),
            Shows(r"interrupts = <1 5 4>;", "PPI 5 (INTID 21), level-high"),
        ),
    ),
    Check(
        "cli-bad-input",
        f"{KVMSPE} encode bogus",
        60,
        (
            Exit(2, "bad input exits 2"),
            Shows(r"invalid size 'bogus'.*accepted", "one line: what was wrong and what is accepted"),
        ),
    ),
)


#: Where each check runs, when not on every kernel, and why: each check runs where it tells
#: something the others do not, so that the three boots fit CI's time (about 26 minutes with
#: every check on every kernel, measured; the 16 KiB kernel alone 11).
_CLI = "the command line is the same Python on every kernel: its smoke tests run on the oldest"
WHERE: dict[str, tuple[tuple[str, ...], str]] = {
    "conformance-json": (
        ("bookworm", "sid-4k"),
        "the JSON form of the same report; on 16 KiB pages the table form runs",
    ),
    "shim-conformance": (
        ("bookworm", "sid-16k"),
        "on the newest 4 KiB kernel shim-kselftest runs the same Python runner under the shim, and"
        " compares it with the kselftest case by case",
    ),
    "shim-kselftest": (
        ("sid-4k",),
        "kvm_util's VMs are slow under TCG (2 min on 7.2, 4 KiB pages); the other kernels run the"
        " same cases through the shim in shim-conformance",
    ),
    "docs-kvm": (("sid-4k",), "the docs' examples need one arm64 KVM with SPE: the newest, under the shim"),
    "pytest-kvm": (("bookworm", "sid-4k"), "on 16 KiB pages pytest-kvm-16k runs the same but the slow one"),
    "pytest-kvm-16k": (("sid-16k",), "the 4 KiB kernels run the whole file in pytest-kvm"),
    "pytest-kvm-parts": (
        ("bookworm", "sid-4k"),
        "the no-SPE paths of the runner, bring-up, discovery and CLI, which the page size does not change",
    ),
    "pytest-affinity": (
        ("bookworm",),
        "VCPU threads and CPU affinity depend on the host's scheduler, not on KVM's version or page"
        " size: the oldest kernel runs them",
    ),
    "c-selftest": (
        ("bookworm", "sid-4k"),
        "the C program's no-SPE cases, the same on 16 KiB pages, where VM creation is slow (56 s)",
    ),
    **{c.name: (("bookworm",), _CLI) for c in CHECKS if c.name.startswith("cli-")},
}
CHECKS = tuple(
    replace(c, kernels=WHERE[c.name][0], kernels_why=WHERE[c.name][1]) if c.name in WHERE else c
    for c in CHECKS
)


def by_name(name: str) -> Check:
    return next(c for c in CHECKS if c.name == name)


def judge(check: Check, step: StepResult) -> list[str]:
    """Every way STEP falls short of CHECK, one line each; empty when it passes."""
    if not step.started:
        return ["never ran (the guest stopped before it)"]
    if step.rc is None and step.hung:
        return [f"hung: the guest run passed its limit during it (step limit {step.limit} s); QEMU killed"]
    if step.rc is None:
        return ["the guest stopped while it ran (see the guest line below)"]
    if step.timed_out:
        where = f" in {running_test(step.output)}" if check.pytest and running_test(step.output) else ""
        return [f"timed out after {step.limit} s{where} and was killed"]
    problems = []
    for e in (*check.expect, NO_TRACEBACK):
        why = e.failure(step)
        if why is not None:
            problems.append(f"{why}  [{e.reason}]")
    return problems


def running_test(output: str) -> str | None:
    """The test pytest -v had started but not finished when its output stops (the one that hung)."""
    for line in reversed(output.splitlines()):
        m = re.match(r"(\S+::\S+)(.*)$", line)
        if m:
            done = re.search(r"\b(PASSED|FAILED|ERROR|SKIPPED|XFAIL|XPASS)\b", m.group(2))
            return None if done else m.group(1)
    return None


def pytest_counts(output: str) -> dict[str, int]:
    """passed/failed/skipped/errors from pytest's closing line."""
    counts = {"passed": 0, "failed": 0, "skipped": 0, "errors": 0}
    lines = [
        ln for ln in output.splitlines() if re.search(r"\b(passed|failed|error|skipped|no tests ran)\b", ln)
    ]
    if not lines:
        return counts
    last = lines[-1]
    for n, word in re.findall(r"(\d+) (passed|failed|skipped|errors?|deselected)", last):
        key = "errors" if word.startswith("error") else word
        if key in counts:
            counts[key] = int(n)
    return counts


#: The README's table of the checks is this function's output, between these two lines.
TABLE_BEGIN = "<!-- the checks: generated by python3 testbed/checks.py -->"
TABLE_END = "<!-- end of the checks -->"


def _shown(command: str) -> str:
    return (
        command.replace(f"{SHIM} {LOW_MEMLOCK} ", "(shim, soft RLIMIT_MEMLOCK 64 KiB) ")
        .replace(f"{SHIM} ", "(shim) ")
        .replace(PYTEST, "pytest")
        .replace("|", "\\|")
    )


def markdown_table() -> str:
    """Every check as a row: name, command (``(shim)``: under kvmspe's shim), where it runs, what it expects."""
    rows = ["| check | command | runs on | expects |", "|---|---|---|---|"]
    for c in CHECKS:
        where = "every kernel"
        if c.kernels is not None:
            where = f"{', '.join(c.kernels)}: {c.kernels_why}"
        if c.page_size is not None:
            where += f"; {c.page_size // 1024} KiB pages only: {c.only_why}"
        expects = "; ".join(e.reason for e in c.expect)
        rows.append(f"| {c.name} | `{_shown(c.command)}` | {where} | {expects} (limit {c.limit} s) |")
    return "\n".join(rows)


if __name__ == "__main__":  # python3 testbed/checks.py: the README's table of the checks
    print(markdown_table())

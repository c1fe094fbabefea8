"""The conformance cases as a KVM selftest: one case table shared with the C
conformance program, the kernel selftests' helpers, built in Debian's 6.12 tree
without a warning, a patch ``git am`` applies, and the kselftest TAP the
comparison script reads."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from kvmspe.conformance.cases import CASES
from kvmspe.export import c_cases, c_selftest, kselftest, render, template

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests" / "export"))
from compare_selftest import Unreadable, compare, parse_tap  # noqa: E402

BUILD = ROOT / "tests" / "export" / "build-kselftest.sh"
CACHE = Path(
    os.environ.get("KVMSPE_KSELFTEST_CACHE")
    or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "kvmspe-kselftest"
)
TREE = CACHE / "src" / "linux-source-6.12"
TIMEOUT = 1200
DEFINES = "-DKVM_ARM_VCPU_SPE=16 -DKVM_EXIT_RLIMIT=65536"


def test_both_harnesses_hold_the_same_case_table_and_the_shared_c() -> None:
    """One renderer: the case table and the two shared files appear, byte for byte, in the
    kselftest and in the standalone program; neither harness template holds case logic."""
    table = c_cases.case_table()
    k, s = kselftest.render(), c_selftest.render()
    for shared in (table, template.text("cases_head.c"), template.text("cases_run.c")):
        assert shared.strip() in k and shared.strip() in s
    for harness in ("kselftest.c", "selftest.c"):
        text = template.text(harness)
        for logic in ("uint64_t eval_expr(", "*skip_reason(", "int execute(", "case EXP_ERRNO", "ks_unrep("):
            assert logic not in text, (harness, logic)
    names = re.findall(r'^\t\{ "([^"]+)", "([^"]+)", "([^"]+)",', table, re.M)
    assert names == [(c.name, c.rule.key, c.rule.source) for c in CASES if c.rule]


def test_kselftest_is_written_for_the_kernel_tree() -> None:
    text = render("kselftest")
    assert text.splitlines()[0] == "// SPDX-License-Identifier: GPL-2.0-only"
    for helper in (
        "#include <kvm_util.h>",
        "#include <test_util.h>",
        "vm_create_barebones()",
        "__vm_vcpu_add(",
        "__vcpu_device_attr_set(",
        "__vcpu_device_attr_get(",
        "__vcpu_has_device_attr(",
        "__TEST_REQUIRE(",
        "ksft_set_plan(",
        "ksft_test_result_skip(",
        "ksft_finished()",
    ):
        assert helper in text, helper
    # The numbers the series does not publish are never built in: uapi or the build gives them.
    for name in ("KVM_ARM_VCPU_SPE", "KVM_EXIT_RLIMIT", "KVM_CAP_ARM_SPE"):
        assert not re.search(rf"^#define {name} ", text, re.M), name


def test_the_cli_prints_it() -> None:
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    proc = subprocess.run(
        [sys.executable, "-m", "kvmspe", "export", "--lang", "kselftest"],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == render("kselftest")


KSFT_SHIM = """\
Random seed: 0x6b8b4567
TAP version 13
# SPE feature bit 16, KVM_EXIT_RLIMIT 65536, page size 4096, 0 SPE units in sysfs
1..3
ok 1 # SKIP no-spe-has-irq: host has SPE: the no-SPE cases do not apply
ok 2 max-set-get: rule max-roundtrip [seed]
# spu-set: call 1 of 1: SET SPE_SPU=SPU: expected ok, got ENXIO
not ok 3 spu-set: rule spu-once [seed]
# Totals: pass:1 fail:1 xfail:0 xpass:0 skip:1 error:0
"""


def test_kselftest_tap_is_read_case_by_case() -> None:
    got = parse_tap(KSFT_SHIM, kselftest=True)
    assert got == {"no-spe-has-irq": "skipped", "max-set-get": "passed", "spu-set": "failed"}
    _, differ = compare(got, {"no-spe-has-irq": "skipped", "max-set-get": "passed", "spu-set": "passed"})
    assert differ == ["spu-set: C failed, Python passed"]
    with pytest.raises(Unreadable, match="not a TAP line"):
        parse_tap(KSFT_SHIM)  # the standalone program's reader refuses kselftest's lines
    with pytest.raises(Unreadable, match="reported twice"):
        parse_tap(KSFT_SHIM.replace("ok 2 max-set-get", "ok 2 no-spe-has-irq"), kselftest=True)


def _script(*args: str, extra_cflags: str = "", timeout: int = TIMEOUT) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"), EXTRA_CFLAGS=extra_cflags)
    env["PATH"] = f"{Path(sys.executable).parent}:{env['PATH']}"
    return subprocess.run(
        ["sh", str(BUILD), *args], capture_output=True, text=True, timeout=timeout, env=env, check=False
    )


def test_bad_usage_exits_2_with_one_line(tmp_path: Path) -> None:
    for args in ([], ["--bogus", "x"], ["--tree"], ["a", "b"]):
        proc = _script(*args, timeout=60)
        assert proc.returncode == 2, args
        assert len(proc.stderr.strip().splitlines()) == 1, (args, proc.stderr)
    proc = _script("--tree", str(tmp_path), str(tmp_path / "out"), timeout=60)
    if proc.returncode == 2 or "missing" in proc.stderr:
        pytest.skip(f"build tools missing here: {proc.stderr.strip()}")
    assert proc.returncode == 1 and "is not a kernel tree" in proc.stderr


def _can_build() -> None:
    """The tools the build needs, and Debian's tree: a failure in CI, a skip with the reason elsewhere."""
    tools = ("make", "rsync", "aarch64-linux-gnu-gcc", "apt-get", "dpkg-deb")
    missing = [t for t in tools if not shutil.which(t)]
    why = ""
    if missing:
        why = f"missing {', '.join(missing)} (tests/export/setup-tools.sh installs them)"
    elif not (TREE / "Makefile").is_file() and os.environ.get("CI") != "true":
        why = f"Debian's linux-source-6.12 is not cached in {CACHE}; build-kselftest.sh OUT fetches it"
    if why and os.environ.get("CI") == "true":
        pytest.fail(why)
    if why:
        pytest.skip(why)


def _is_dynamic_arm64(path: Path) -> bool:
    elf = path.read_bytes()
    if elf[:4] != b"\x7fELF" or int.from_bytes(elf[18:20], "little") != 183:  # EM_AARCH64
        return False
    phoff = int.from_bytes(elf[32:40], "little")
    size, count = int.from_bytes(elf[54:56], "little"), int.from_bytes(elf[56:58], "little")
    types = {int.from_bytes(elf[phoff + i * size : phoff + i * size + 4], "little") for i in range(count)}
    return 3 in types  # PT_INTERP: dynamically linked, so kvmspe's shim reaches it


@pytest.mark.parametrize("defines", ["", DEFINES], ids=["no-defines", "defines"])
def test_builds_without_a_warning_in_debians_6_12_tree(tmp_path: Path, defines: str) -> None:
    _can_build()
    out = tmp_path / "spe_conformance"
    proc = _script(str(out), extra_cflags=defines)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Makefile line (Makefile): TEST_GEN_PROGS_aarch64 += aarch64/spe_conformance" in proc.stdout
    assert _is_dynamic_arm64(out)
    makefile = (TREE / "tools/testing/selftests/kvm/Makefile").read_text()
    assert makefile.count("TEST_GEN_PROGS_aarch64 += aarch64/spe_conformance\n") == 1  # added once


def test_a_warning_fails_the_build(tmp_path: Path) -> None:
    """-Wunused-macros (not among the tree's flags) warns about the header's macros the test
    does not use: the script refuses the build."""
    _can_build()
    proc = _script(str(tmp_path / "t"), extra_cflags=f"{DEFINES} -Wunused-macros")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "warning:" in proc.stderr and "the build gave the warnings above" in proc.stderr
    assert not (tmp_path / "t").exists()


def test_the_patch_applies_with_git_am(tmp_path: Path) -> None:
    _can_build()
    if not shutil.which("git"):
        pytest.skip("git is missing")
    patch = tmp_path / "0001-spe-conformance.patch"
    proc = _script("--patch", str(patch), str(tmp_path / "spe_conformance"), extra_cflags=DEFINES)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    # A repository holding the tree's kvm selftests Makefile as it was before the test was added.
    repo = tmp_path / "linux"
    mk = repo / "tools/testing/selftests/kvm/Makefile"
    mk.parent.mkdir(parents=True)
    line = "TEST_GEN_PROGS_aarch64 += aarch64/spe_conformance\n"
    mk.write_text((TREE / "tools/testing/selftests/kvm/Makefile").read_text().replace(line, ""))
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@localhost", "-C", str(repo)]
    for cmd in (["init", "-q"], ["add", "."], ["commit", "-qm", "base"], ["am", "-q", str(patch)]):
        done = subprocess.run(git + cmd, capture_output=True, text=True, timeout=120, check=False)
        assert done.returncode == 0, (cmd, done.stderr)
    assert (repo / "tools/testing/selftests/kvm/aarch64/spe_conformance.c").read_text() == render("kselftest")
    assert line in mk.read_text()


DOC = (ROOT / "docs" / "export.md").read_text()
SECTION = DOC[DOC.index("## The KVM selftest (`kselftest`)") :]


def test_the_docs_generate_command_writes_the_test(tmp_path: Path) -> None:
    """Step 1 of docs/export.md's path, run in a stand-in tree."""
    line = next(ln.strip() for ln in SECTION.splitlines() if ln.strip().startswith("kvmspe export --lang k"))
    (tmp_path / "tools/testing/selftests/kvm/arm64").mkdir(parents=True)
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    script = f'kvmspe() {{ "{sys.executable}" -m kvmspe "$@"; }}\n{line}\n'
    subprocess.run(["bash", "-c", script], cwd=tmp_path, env=env, timeout=120, check=True)
    written = (tmp_path / "tools/testing/selftests/kvm/arm64/spe_conformance.c").read_text()
    assert written == render("kselftest")


def _console_after(marker: str) -> list[str]:
    rest = SECTION[SECTION.index(marker) :]
    block = rest[
        rest.index("```console") + len("```console") : rest.index("   ```\n", rest.index("```console"))
    ]
    return [ln.strip() for ln in block.strip("\n").splitlines()]


def test_the_docs_build_example_prints_what_the_page_shows() -> None:
    """Step 2's console block, replayed where Debian's tree is cached (the figure in seconds
    and the cache's place may differ)."""
    _can_build()
    lines = _console_after("2. **Build it**")
    assert lines[0].startswith("$ ")
    command = lines[0][2:]
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    env["PATH"] = f"{Path(sys.executable).parent}:{env['PATH']}"
    env.pop("EXTRA_CFLAGS", None)
    proc = subprocess.run(
        ["bash", "-c", command],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr

    def stable(text: str) -> str:
        return re.sub(r" in \S+linux-source-6\.12", " in TREE", re.sub(r"\d+ s\)", "N s)", text))

    assert stable(proc.stdout.strip()) == stable("\n".join(lines[1:]))

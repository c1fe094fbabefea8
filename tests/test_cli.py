"""The command line, run as users run it: ``python -m kvmspe`` in a subprocess.

Each command is run once for its human output and once with ``--json`` (the
document parses and has its documented keys); bad input must give exit 2,
exactly one line on stderr and no traceback.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import kvmspe as kvmspe_pkg


def kvmspe(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "kvmspe", *args], capture_output=True, text=True, timeout=60, env=env
    )


def ok_json(*args: str, code: int = 0) -> Any:
    r = kvmspe(*args, "--json")
    assert r.returncode == code, r.stderr
    assert "Traceback" not in r.stderr
    return json.loads(r.stdout)


def assert_bad_input(r: subprocess.CompletedProcess[str], *needles: str) -> None:
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert "Traceback" not in r.stderr
    lines = r.stderr.splitlines()
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith("kvmspe: error: ")
    for needle in needles:
        assert needle in lines[0]
    assert r.stdout == ""


# --- codec ---------------------------------------------------------------------------------


def test_encode_human_and_json() -> None:
    r = kvmspe("encode", "4M")
    assert r.returncode == 0
    assert "0x0400" in r.stdout and "E=2, M=0" in r.stdout
    doc = ok_json("encode", "4MiB")
    assert doc == {
        "size": 4 << 20,
        "representable": True,
        "field": 0x400,
        "e": 2,
        "m": 0,
        "pmbidr_bits": 0x400 << 32,
    }


def test_encode_not_representable_is_a_no_with_nearest_sizes() -> None:
    r = kvmspe("encode", "0x401000")
    assert r.returncode == 1
    assert "0x400000" in r.stdout and "0x402000" in r.stdout
    doc = ok_json("encode", "0x401000", code=1)
    assert doc == {"size": 0x401000, "representable": False, "below": 0x400000, "above": 0x402000}


def test_decode_field_and_pmbidr() -> None:
    r = kvmspe("decode", "0x400")
    assert r.returncode == 0 and "4 MiB" in r.stdout
    doc = ok_json("decode", "0")
    assert doc["size"] == 0 and doc["no_limit"] is True and doc["field"] == 0
    value = (0x400 << 32) | (1 << 8) | 5
    r = kvmspe("decode", "--pmbidr", hex(value))
    assert r.returncode == 0
    assert "Ignored" in r.stdout and "32 B" in r.stdout and "4 MiB" in r.stdout
    doc = ok_json("decode", "--pmbidr", hex(value))
    assert doc["register"] == "PMBIDR_EL1" and doc["value"] == value
    assert doc["fields"] == {"ALIGN": 5, "P": 0, "F": 0, "EA": "Ignored", "MaxBuffSize": 0x400}
    assert doc["max_buffer_size"] == 4 << 20 and doc["align_bytes"] == 32


def test_decode_refuses_res0_bits_and_field_out_of_range() -> None:
    assert_bad_input(kvmspe("decode", "--pmbidr", hex(1 << 63)), "RES0")
    assert_bad_input(kvmspe("decode", "0x4000"), "0x3fff")
    assert_bad_input(kvmspe("decode"), "exactly one")


def test_round() -> None:
    r = kvmspe("round", "0x401000")
    assert r.returncode == 0 and "0x400000" in r.stdout and "0x402000" in r.stdout
    doc = ok_json("round", "0x401000", "--up", "--page-size", "64K")
    assert doc == {"size": 0x401000, "page_size": 65536, "representable": False, "down": None, "up": 0x410000}
    doc = ok_json("round", "5000T", "--up", code=1)
    assert doc["up"] is None
    assert_bad_input(kvmspe("round", "4M", "--page-size", "8K"), "page size")
    assert_bad_input(kvmspe("round", "4M", "--up", "--down"), "not allowed")


def test_sizes() -> None:
    r = kvmspe("sizes", "--from", "2M", "--to", "4M", "--limit", "2")
    assert r.returncode == 0
    assert r.stdout.splitlines()[0].split()[:2] == ["0x200000", "2"]
    assert "511 more of 513" in r.stdout
    doc = ok_json("sizes", "--from", "2M", "--to", "2056K", "--limit", "0")
    assert doc == {
        "from": 2 << 20,
        "to": 2056 << 10,
        "count": 3,
        "truncated": False,
        "sizes": [
            {"size": 0x200000, "field": 0x200},
            {"size": 0x201000, "field": 0x201},
            {"size": 0x202000, "field": 0x202},
        ],
    }
    assert_bad_input(kvmspe("sizes", "--from", "4M", "--to", "2M"), "below")


# --- explain --------------------------------------------------------------------------------


def test_explain_errno_by_name_and_number() -> None:
    r = kvmspe("explain", "EDOM")
    assert r.returncode == 0
    assert "KVM_ARM_VCPU_SPE_MAX_BUFFER_SIZE set" in r.stdout and "MaxBuffSize encoding" in r.stdout
    doc = ok_json("explain", "34")
    assert doc["kind"] == "errno" and doc["name"] == "ERANGE" and doc["errno"] == 34
    assert [(m["attribute"], m["call"]) for m in doc["meanings"]] == [
        ("KVM_ARM_VCPU_SPE_MAX_BUFFER_SIZE", "set")
    ]


def test_explain_attribute_by_either_spelling() -> None:
    a = ok_json("explain", "KVM_ARM_VCPU_MAX_BUFFER_SIZE")
    b = ok_json("explain", "KVM_ARM_VCPU_SPE_MAX_BUFFER_SIZE")
    assert a["meanings"] == b["meanings"]
    assert a["group"] == 3 and a["attr"] == 2 and a["value_type"] == "__u64"
    pairs = {(m["call"], m["name"]) for m in a["meanings"]}
    assert pairs >= {("set", "EDOM"), ("set", "ERANGE"), ("get", "EINVAL")}


def test_explain_unanswered_errno_is_a_no_and_unknown_name_is_bad_input() -> None:
    r = kvmspe("explain", "EPERM")
    assert r.returncode == 1 and "no SPE attribute" in r.stdout
    assert_bad_input(kvmspe("explain", "KVM_NOPE"), "accepted")


# --- bad input, everywhere ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (("encode", "-4K"), "negative"),
        (("encode", "-4096"), "negative"),
        (("encode", "18446744073709551616"), "2**64 - 1"),
        (("encode", "lots"), "not a size"),
        (("encode", "4X"), "unknown unit"),
        (("encode", "1.5M"), "fractions"),
        (("encode",), "required: SIZE"),
        (("frobnicate",), "invalid choice"),
        ((), "required: COMMAND"),
        (("encode", "4M", "--bogus"), "unrecognized"),
    ],
)
def test_bad_input_is_one_line_exit_2(args: tuple[str, ...], needle: str) -> None:
    assert_bad_input(kvmspe(*args), needle, "accepted" if needle in ("negative", "unknown unit") else "")


def test_help_has_examples() -> None:
    r = kvmspe("encode", "--help")
    assert r.returncode == 0 and "examples:" in r.stdout and "kvmspe encode 4M" in r.stdout


def test_encode_starts_lean() -> None:
    code = (
        "import sys; from kvmspe.cli import main; rc = main(['encode', '4M']);"
        "heavy = [m for m in ('kvmspe.model', 'kvmspe.model.kernel', 'kvmspe.planner', 'kvmspe.kvm',"
        " 'kvmspe.host', 'kvmspe.host.discovery', 'kvmspe.conformance', 'kvmspe.conformance.runner',"
        " 'kvmspe.model.rules', 'kvmspe.vmm', 'kvmspe.host.profiles') if m in sys.modules];"
        "print(rc, heavy)"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.stdout.splitlines()[-1] == "0 []", r.stdout + r.stderr


# --- the codec commands' fast path -------------------------------------------------------------


def bare_python(*args: str) -> subprocess.CompletedProcess[str]:
    """This interpreter without ``site`` (so no .pth file imports anything), kvmspe on its path."""
    src = str(Path(kvmspe_pkg.__file__).parent.parent)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, "-S", *args], capture_output=True, text=True, timeout=60, env=env)


_SHOW_MODULES = "import sys; print(*sorted(sys.modules))"
#: Modules the codec commands' fast path must not import: the argument parser and what
#: it pulls in, typing, and every layer above the codec.
_NOT_ON_THE_FAST_PATH = {
    "argparse",
    "re",
    "typing",
    "collections",
    "dataclasses",
    "enum",
    "json",
    "kvmspe.model",
    "kvmspe.model.kernel",
    "kvmspe.planner",
    "kvmspe.kvm",
    "kvmspe.host",
    "kvmspe.host.discovery",
    "kvmspe.conformance",
    "kvmspe.conformance.runner",
    "kvmspe.arch.registers",
    "kvmspe.model.rules",
    "kvmspe.abi",
}


@pytest.mark.parametrize("argv", [("encode", "4M"), ("decode", "0x400"), ("encode", "--json", "4M")])
def test_codec_commands_import_no_parser_and_no_higher_layer(argv: tuple[str, ...]) -> None:
    at_start = set(bare_python("-c", _SHOW_MODULES).stdout.split())
    allowed: set[str] = set()
    if "--json" in argv:  # json, and what json imports itself (re, enum, ...)
        allowed = set(bare_python("-c", f"import json; {_SHOW_MODULES}").stdout.split()) - at_start
    code = f"import sys; from kvmspe.cli import main; rc = main(); {_SHOW_MODULES}; print(rc)"
    r = bare_python("-c", code, *argv)
    assert r.returncode == 0, r.stderr
    *output, modules, rc = r.stdout.splitlines()
    assert rc == "0" and output
    imported = set(modules.split()) - at_start
    assert "kvmspe.arch.maxbuf" in imported  # the command did run here
    assert imported & (_NOT_ON_THE_FAST_PATH - allowed) == set()


def test_the_parser_is_imported_when_the_fast_path_cannot_answer() -> None:
    # The check above can fail: "encode lots" is left to argparse, which imports re.
    show_at_exit = "import atexit, sys; atexit.register(lambda: print(*sorted(sys.modules)))"
    r = bare_python(
        "-c", f"{show_at_exit}; from kvmspe.cli import main; raise SystemExit(main())", "encode", "lots"
    )
    assert r.returncode == 2
    assert {"argparse", "re"} <= set(r.stdout.split())


# Command lines for the codec commands: valid ones, sizes without an encoding,
# bad operands, and forms the fast path leaves to argparse.
_CODEC_LINES = [
    ("encode", "4M"),
    ("encode", "0"),
    ("encode", "4 MiB", "--json"),
    ("encode", "--json", "1023T"),
    ("encode", "18446744073709551615"),
    ("encode", "0x401000"),
    ("encode", "0x401000", "--json"),
    ("encode", "5000T"),
    ("encode", "lots"),
    ("encode", "1.5M"),
    ("encode", "4X"),
    ("encode", "-4K"),
    ("encode", "18446744073709551616"),
    ("encode", ""),
    ("encode", "4M", "--bogus"),
    ("encode", "--json", "--json"),
    ("encode", "4M", "8M"),
    ("decode", "0x400"),
    ("decode", "0", "--json"),
    ("decode", "--json", "0x3fff"),
    ("decode", "0x4000"),
    ("decode", "4K"),
    ("decode", "-1"),
    ("decode", "0x400", "--pmbidr", "0x5"),
]


@pytest.mark.parametrize("argv", _CODEC_LINES, ids=" ".join)
def test_fast_path_answers_as_argparse_does(argv: tuple[str, ...]) -> None:
    fast = bare_python("-m", "kvmspe", *argv)
    no_fast_path = (
        "import kvmspe.cli as cli; cli._codec_args = lambda argv: None; raise SystemExit(cli.main())"
    )
    slow = bare_python("-c", no_fast_path, *argv)
    assert (fast.returncode, fast.stdout, fast.stderr) == (slow.returncode, slow.stdout, slow.stderr)
    assert "Traceback" not in fast.stderr


@pytest.mark.parametrize("argv", _CODEC_LINES, ids=" ".join)
def test_fast_path_builds_the_namespace_argparse_builds(argv: tuple[str, ...]) -> None:
    from kvmspe import cli

    fast = cli._codec_args(list(argv))
    try:
        parsed = vars(cli.build_parser().parse_args(list(argv)))
    except SystemExit:
        assert fast is None  # argparse refuses it: only argparse may answer
        return
    if len(argv) == 2 or (len(argv) == 3 and "--json" in argv[1:]):
        assert fast is not None and vars(fast) == parsed
    else:
        assert fast is None


def test_fast_path_takes_the_simple_forms() -> None:
    from kvmspe import cli

    for argv in (["encode", "4M"], ["encode", "4M", "--json"], ["decode", "--json", "0x400"]):
        assert cli._codec_args(argv) is not None, argv
    for argv in (["encode", "--help"], ["round", "4M"], ["--json", "encode", "4M"], ["encode", "4M", "--js"]):
        assert cli._codec_args(argv) is None, argv


# --- probe, plan, configure, conformance, vectors --------------------------------------------


def test_probe_answers_with_a_reason() -> None:
    r = kvmspe("probe", "--json")
    assert r.returncode in (0, 1) and "Traceback" not in r.stderr
    doc = json.loads(r.stdout)
    assert set(doc) == {"can_run_spe_guests", "reason", "host"}
    assert (r.returncode == 0) == doc["can_run_spe_guests"] and doc["reason"]
    assert {"arch", "spe_supported", "spe_instances", "memlock_soft", "vm_lck"} <= set(doc["host"])
    r = kvmspe("probe", "--fixture", "arm64-big-little")
    assert "arm_spe_1" in r.stdout and "perf type 11" in r.stdout and "answer:" in r.stdout


def test_probe_shows_which_cpus_each_spu_covers() -> None:
    r = kvmspe("probe", "--fixture", "arm64-big-little")
    assert "Traceback" not in r.stderr
    lines = r.stdout.splitlines()
    assert any(line.startswith("arm_spe_0 ") and "perf type 10, CPUs 0-3 (4 CPUs)," in line for line in lines)
    assert any(line.startswith("arm_spe_1 ") and "perf type 11, CPUs 4-7 (4 CPUs)," in line for line in lines)
    doc = ok_json("probe", "--fixture", "arm64-big-little", code=r.returncode)
    shown = [(i["name"], i["cpumask"], i["cpus"], i["cpu_count"]) for i in doc["host"]["spe_instances"]]
    assert shown == [("arm_spe_0", "0-3", [0, 1, 2, 3], 4), ("arm_spe_1", "4-7", [4, 5, 6, 7], 4)]


def test_probe_says_when_an_spus_cpus_are_not_known(fixture_copy: Path, spe0: Path) -> None:
    (spe0 / "cpumask").write_text("four\n")
    r = kvmspe("probe", "--fixture", str(fixture_copy))
    assert "Traceback" not in r.stderr
    line = next(line for line in r.stdout.splitlines() if line.startswith("arm_spe_0 "))
    assert "perf type 10, CPUs not known (cpumask: bad CPU list 'four'" in line
    doc = ok_json("probe", "--fixture", str(fixture_copy), code=r.returncode)
    first = doc["host"]["spe_instances"][0]
    assert (first["cpus"], first["cpu_count"]) == ([], 0)


def test_plan_human_json() -> None:
    r = kvmspe("plan", "--vcpus", "4", "--max-buffer-size", "4M", "--profile", "default-4k")
    assert r.returncode == 0, r.stderr
    assert "KVM_ARM_VCPU_SPE_MAX_BUFFER_SIZE=4194304" in r.stdout
    assert "LimitMEMLOCK=16908288" in r.stdout and "ulimit -l 16512" in r.stdout
    doc = ok_json("plan", "--vcpus", "4", "--max-buffer-size", "0x401000")
    assert doc["size"] == 0x400000 and doc["warnings"] and doc["plot"] is None
    assert {"pinned", "memlock_limit", "guest_pmbidr", "paste", "host", "spu", "vcpu_cpus"} <= set(doc)
    assert doc["memlock_limit"] == doc["pinned"]["worst"]["per_vm"] and doc["case"] == "worst"
    assert doc["paste"]["systemd"] == f"LimitMEMLOCK={doc['memlock_limit']}"
    assert_bad_input(kvmspe("plan", "--vcpus", "0"), "VCPU count")


def test_plan_human_output_uses_one_unit_style() -> None:
    """Every size in the plan's rows is exact binary units; hex only for the register field,
    bytes only in the lines to paste."""
    import re

    r = kvmspe("plan", "--vcpus", "64", "--max-buffer-size", "16M", "--page-size", "64K", "--granule", "4K")
    assert r.returncode == 0, r.stderr
    hexes = re.findall(r"0x[0-9a-f]+", r.stdout)
    assert hexes == ["0x0800"]  # PMBIDR_EL1.MaxBuffSize
    assert "16440 MiB" in r.stdout and "x16.0547" in r.stdout and "(x16 for data)" in r.stdout
    assert "LimitMEMLOCK=17238589440" in r.stdout and "ulimit -l 16834560" in r.stdout
    assert "<hard_limit unit='KiB'>16834560</hard_limit>" in r.stdout
    assert "prlimit --memlock=17238589440:17238589440 --pid PID" in r.stdout
    assert "guest RAM" in r.stdout  # libvirt's hard_limit caps the whole process


def test_plan_defaults_are_configures() -> None:
    """No --vcpus and no size: one VCPU and 4 MiB, as configure; 'max' is the SPU's limit."""
    doc = ok_json("plan", "--profile", "default-4k")
    assert (doc["vcpus"], doc["size"], doc["requested"], doc["case"]) == (1, 4 << 20, 4 << 20, "worst")
    doc = ok_json("plan", "--profile", "limited-spu", "--max-buffer-size", "64M")
    assert doc["size"] == 4 << 20 and any("clamped" in w for w in doc["warnings"])
    doc = ok_json("plan", "--profile", "default-4k", "--max-buffer-size", "max")
    assert doc["size"] == 0 and doc["memlock_limit"] is None and doc["requested"] is None
    assert doc["paste"]["systemd"] == "LimitMEMLOCK=infinity" and doc["paste"]["libvirt"] is None
    r = kvmspe("plan", "--profile", "default-4k", "--max-buffer-size", "max")
    assert "LimitMEMLOCK=infinity" in r.stdout and "ulimit -l unlimited" in r.stdout
    assert "no finite <hard_limit>" in r.stdout


def test_plan_case_picks_the_limit_and_refuses_others() -> None:
    docs = {c: ok_json("plan", "--vcpus", "4", "--case", c) for c in ("best", "typical", "worst")}
    for case, doc in docs.items():
        assert doc["case"] == case and doc["memlock_limit"] == doc["pinned"][case]["per_vm"]
    assert docs["best"]["memlock_limit"] < docs["typical"]["memlock_limit"] < docs["worst"]["memlock_limit"]
    assert_bad_input(kvmspe("plan", "--case", "average"), "--case", "best", "typical", "worst")
    assert_bad_input(kvmspe("configure", "--case", "average"), "--case", "best", "typical", "worst")


def test_plan_shows_each_spu_its_cpus_and_the_vcpus_cpus() -> None:
    r = kvmspe("plan", "--profile", "big-little", "--spu", "11", "--vcpus", "4")
    assert r.returncode == 0, r.stderr
    assert "SPU 10         CPUs 0-3 (4 CPUs), no limit" in r.stdout
    assert "SPU 11         CPUs 4-7 (4 CPUs), limit 4 MiB  (chosen)" in r.stdout
    assert "vcpus 0-3: CPUs 4-7 (4 CPUs)" in r.stdout
    doc = ok_json("plan", "--fixture", "arm64-big-little", "--spu", "11", "--vcpus", "2")
    assert doc["spu"] == 11 and doc["vcpu_cpus"] == [[4, 5, 6, 7]] * 2 and doc["spu_limit"] == 4 << 20
    assert [s["cpus"] for s in doc["host"]["spus"]] == [[0, 1, 2, 3], [4, 5, 6, 7]]
    r = kvmspe("plan", "--profile", "big-little", "--spu", "11", "--vcpus", "8")
    assert r.returncode == 0
    assert "warning: 8 VCPUs on SPU 11, which only CPUs 4-7 (4 CPUs) have" in r.stdout
    doc = ok_json("plan", "--profile", "big-little", "--spu", "11", "--vcpus", "8")
    assert doc["vcpu_cpus"] == [[4, 5, 6, 7]] * 8  # overcommit: every VCPU on all of the SPU's CPUs
    assert_bad_input(kvmspe("plan", "--profile", "big-little", "--spu", "12"), "SPU 12", "accepted: 10, 11")
    assert_bad_input(kvmspe("plan", "--profile", "nope"), "unknown host profile")
    assert_bad_input(kvmspe("plan", "--profile", "64k", "--fixture", "arm64-big-little"), "not allowed")


def test_plan_default_host_is_configures() -> None:
    plan_doc = ok_json("plan")
    r = kvmspe("configure", "--json")
    assert r.returncode in (0, 1) and "Traceback" not in r.stderr
    conf = json.loads(r.stdout)
    assert plan_doc["spu"] == conf["spu"] and plan_doc["page_size"] == conf["page_size"]


def test_configure_case_is_what_raise_memlock_raises_to() -> None:
    for case in ("best", "worst"):
        plan_doc = ok_json("plan", "--profile", "default-4k", "--vcpus", "2", "--case", case)
        doc = ok_json(
            "configure",
            "--backend",
            "model",
            "--profile",
            "default-4k",
            "--vcpus",
            "2",
            "--memlock",
            "64K",
            "--raise-memlock",
            "--case",
            case,
        )
        assert doc["memlock_limit"] == plan_doc["memlock_limit"] and doc["case"] == case, case
        raised = [s for s in doc["steps"] if s["step"] == "raise RLIMIT_MEMLOCK"]
        assert raised and f"the planner's {case} case" in raised[0]["detail"]


def test_plan_without_matplotlib_is_one_line(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """In this process, matplotlib made unimportable: one line naming the extra, exit 2, no file."""
    import contextlib
    import io

    from kvmspe import cli

    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    out, err = io.StringIO(), io.StringIO()
    target = tmp_path / "out.png"
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli.main(["plan", "--vcpus", "1", "--plot", str(target)])
    assert code == 2 and out.getvalue() == ""
    assert err.getvalue().splitlines() == [
        "kvmspe: error: --plot needs matplotlib, which is not installed: pip install 'kvmspe[plot]'"
    ]
    assert list(tmp_path.iterdir()) == []


def test_configure_on_the_model_reports_every_step() -> None:
    r = kvmspe("configure", "--backend", "model", "--vcpus", "4", "--max-buffer-size", "4M")
    assert r.returncode == 0, r.stderr
    assert "backend: model" in r.stdout and "KVM_ARM_VCPU_SPE_MAX_BUFFER_SIZE=0x400000" in r.stdout
    assert "guest PMBIDR_EL1 = 0x0000040000000000" in r.stdout
    doc = ok_json(
        "configure",
        "--backend",
        "model",
        "--profile",
        "default-4k",
        "--vcpus",
        "2",
        "--enable-buffer",
        "--memlock",
        "4M",
        "--raise-memlock",
    )
    assert doc["ok"] is True and doc["error"] is None and doc["backend"] == "model"
    assert doc["guest_pmbidr"] == 0x400 << 32 and doc["guest_max_buffer_size"] == 4 << 20
    assert all(p > 4 << 20 for p in doc["pinned_per_vcpu"])
    assert doc["vm_lck"] >= doc["locked_bytes"] > 8 << 20
    assert doc["memlock_limit"] >= doc["locked_bytes"]
    names = [(s["vcpu"], s["step"]) for s in doc["steps"]]
    assert names.index((0, "set KVM_ARM_VCPU_SPE_IRQ=21")) < names.index((0, "set KVM_ARM_VCPU_SPE_SPU=10"))
    assert names.index((0, "set KVM_ARM_VCPU_SPE_SPU=10")) < names.index(
        (0, "set KVM_ARM_VCPU_SPE_MAX_BUFFER_SIZE=0x400000")
    )


def test_configure_on_big_little_gives_each_vcpu_its_spus_cluster() -> None:
    for spu, cpus in ((10, [0, 1, 2, 3]), (11, [4, 5, 6, 7])):
        args = ["configure", "--backend", "model", "--profile", "big-little", "--vcpus", "4"]
        args += ["--spu", str(spu)]
        doc = ok_json(*args)
        assert doc["ok"] is True and doc["spu_cpus"] == cpus and doc["vcpu_cpus"] == [cpus] * 4
        assert doc["vcpu_thread_cpus"] is None  # the model pins nothing
        r = kvmspe(*args)
        assert r.returncode == 0
        shown = f"{cpus[0]}-{cpus[-1]}"
        assert f"  ok   VCPU affinity  (SPU {spu} is on CPUs {shown} (4 CPUs): " in r.stdout
        assert f"  ok   vcpus 0-3: would pin VCPU thread to CPUs {shown}\n" in r.stdout


def test_configure_overcommits_more_vcpus_than_the_spu_has_cpus_with_a_warning() -> None:
    args = ("configure", "--backend", "model", "--profile", "big-little", "--vcpus", "8", "--spu", "11")
    r = kvmspe(*args)
    assert r.returncode == 0 and r.stderr == ""
    warnings = [line for line in r.stdout.splitlines() if line.startswith("warning: ")]
    assert len(warnings) == 1 and "time-share those 4 CPUs" in warnings[0], r.stdout
    assert "  ok   vcpus 0-7: would pin VCPU thread to CPUs 4-7" in r.stdout
    doc = ok_json(*args)
    assert doc["ok"] is True and doc["warnings"] == [warnings[0].removeprefix("warning: ")]
    assert doc["vcpu_cpus"] == [[4, 5, 6, 7]] * 8


def test_configure_with_strict_placement_refuses_more_vcpus_than_the_spu_has_cpus() -> None:
    # The model, whatever this host has (auto takes the real kernel on a host with SPE).
    args = (
        "configure",
        "--backend",
        "model",
        "--profile",
        "big-little",
        "--vcpus",
        "8",
        "--spu",
        "11",
        "--strict-placement",
    )
    r = kvmspe(*args)
    assert r.returncode == 1 and r.stderr == ""
    stopped = [line for line in r.stdout.splitlines() if line.startswith("stopped: ")]
    assert len(stopped) == 1
    assert "8 VCPUs on SPU 11" in stopped[0] and "CPUs 4-7" in stopped[0] and "at most 4" in stopped[0]
    assert "  FAIL VCPU affinity  (8 VCPUs on SPU 11" in r.stdout
    assert "KVM_CREATE" not in r.stdout and "done:" not in r.stdout
    doc = ok_json(*args, code=1)
    assert doc["ok"] is False and doc["error"] == stopped[0].removeprefix("stopped: ")
    steps = [(s["step"], s["ok"]) for s in doc["steps"]]
    assert steps == [("backend: model", True), ("VCPU affinity", False)]
    assert doc["spu_cpus"] == [4, 5, 6, 7] and doc["vcpu_cpus"] == []
    assert doc["guest_pmbidr"] is None and doc["pinned_per_vcpu"] is None


def test_configure_stops_at_rlimit_without_raise_memlock() -> None:
    doc = ok_json(
        "configure",
        "--backend",
        "model",
        "--profile",
        "default-4k",
        "--vcpus",
        "2",
        "--enable-buffer",
        "--memlock",
        "6M",
        code=1,
    )
    assert doc["ok"] is False and "KVM_EXIT_RLIMIT" in doc["error"] and "--raise-memlock" in doc["error"]
    assert any("KVM_EXIT_RLIMIT" in s["detail"] for s in doc["steps"] if not s["ok"])


def test_configure_refusals_name_the_step_and_errno() -> None:
    r = kvmspe("configure", "--backend", "model", "--profile", "limited-spu", "--max-buffer-size", "8M")
    assert r.returncode == 1 and "ERANGE" in r.stdout and "FAIL" in r.stdout
    doc = ok_json(
        "configure", "--backend", "model", "--profile", "default-4k", "--max-buffer-size", "0x401000", code=1
    )
    failed = [s for s in doc["steps"] if not s["ok"]]
    assert len(failed) == 1 and failed[0]["step"] == "set KVM_ARM_VCPU_SPE_MAX_BUFFER_SIZE=0x401000"
    assert failed[0]["detail"].startswith("EDOM")
    assert_bad_input(kvmspe("configure", "--backend", "bogus"), "invalid choice")
    assert_bad_input(kvmspe("configure", "--profile", "nope"), "unknown host profile")


def _kvm_usable() -> bool:
    import os

    return os.access("/dev/kvm", os.R_OK | os.W_OK)


@pytest.mark.skipif(not _kvm_usable(), reason="needs a usable /dev/kvm")
def test_configure_on_the_real_kernel() -> None:
    import os

    r = kvmspe("configure", "--backend", "kvm", "--vcpus", "2")
    assert "Traceback" not in r.stderr
    if os.uname().machine in ("x86_64", "amd64"):
        assert r.returncode == 1
        assert "FAIL vcpu 0: has KVM_ARM_VCPU_SPE_IRQ" in r.stdout
        assert "SPE not supported" in r.stdout
    elif "SPE is not supported" in r.stdout:
        # An arm64 kernel without an SPE VCPU feature: stop, never claim the feature.
        assert r.returncode == 1
        assert "this kernel has no SPE VCPU feature" in r.stdout
        assert "ok   vcpu" not in r.stdout and "with the SPE feature (bit" not in r.stdout


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KVMSPE_")}
    env.update(extra)
    return env


@pytest.mark.parametrize(
    ("value", "needle"),
    [
        ("10", "KVM_EXIT_INTR"),
        ("42", "KVM_EXIT_ARM_LDST64B"),
        ("0", "KVM_EXIT_UNKNOWN"),
        ("-1", "decimal or 0x-hex"),
        ("99999999999999999999", "at most 12 digits"),
        ("ten", "decimal"),
    ],
)
def test_a_user_exit_number_that_collides_or_is_absurd_is_bad_input(value: str, needle: str) -> None:
    # KVMSPE_EXIT_RLIMIT=10 used to hang: 10 is also the model's idle exit.
    r = kvmspe("configure", "--enable-buffer", "--raise-memlock", env=_env(KVMSPE_EXIT_RLIMIT=value))
    assert_bad_input(r, "KVMSPE_EXIT_RLIMIT", needle)


@pytest.mark.parametrize(("var", "value"), [("KVMSPE_SPE_FEATURE_BIT", "8"), ("KVMSPE_CAP_ARM_SPE", "208")])
def test_old_guessed_numbers_are_refused_as_bad_input(var: str, value: str) -> None:
    for argv in (("configure",), ("probe",)):
        assert_bad_input(kvmspe(*argv, env=_env(**{var: value})), var, "upstream")


def test_a_free_user_exit_number_is_used_by_the_model() -> None:
    r = kvmspe(
        "configure",
        "--backend",
        "model",
        "--vcpus",
        "1",
        "--enable-buffer",
        "--memlock",
        "4M",
        "--json",
        env=_env(KVMSPE_EXIT_RLIMIT="0x20000"),
    )
    assert r.returncode == 1, r.stderr
    doc = json.loads(r.stdout)
    assert "KVM_EXIT_RLIMIT" in doc["error"]
    assert any("KVM_EXIT_RLIMIT" in s["detail"] for s in doc["steps"] if not s["ok"])


def test_conformance_and_vectors(tmp_path: Any) -> None:
    doc = ok_json("conformance")
    assert doc["backend"] == "model" and doc["ok"] is True and doc["summary"]["failed"] == 0
    out = tmp_path / "vec"
    doc = ok_json("vectors", "--out", str(out))
    assert sorted(p.rsplit("/", 1)[-1] for p in doc["files"]) == sorted(p.name for p in out.iterdir())
    assert_bad_input(kvmspe("vectors"), "--out")

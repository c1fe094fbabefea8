#!/usr/bin/env python3
"""Run the C conformance program and kvmspe's kvm runner on this kernel; compare them case by case.

    python3 tests/export/compare_selftest.py [--kselftest] BINARY [SELFTEST-OPTIONS...]

BINARY is a build of ``kvmspe export --lang c-selftest`` (see
tests/export/build-selftest.sh) or, with ``--kselftest``, of ``kvmspe export
--lang kselftest`` (tests/export/build-kselftest.sh), whose TAP is kselftest's:
``ok N NAME: rule R [SOURCE]``, ``ok N # SKIP NAME: reason``, and kvm_util's
own ``Random seed:`` line. It is copied to a temporary executable first,
so a copy without the execute bit (e.g. in an initramfs) works. kvmspe must be
importable (PYTHONPATH=src). Prints a table of (C status, Python status)
counts and every case where they differ; exit 0 when every case agrees, 1
when one differs, 2 on bad usage or when a program's output cannot be read.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile

TIMEOUT = 900
_TAP = re.compile(r"^(ok|not ok) (\d+) (\S+)(?: # SKIP (.*))?$")
#: kselftest's result lines: the SKIP directive comes before the message (ksft_test_result_skip).
_KSFT = re.compile(r"^(ok|not ok) (\d+) (# SKIP )?([^\s:]+)(?::.*)?$")
_PLAN = re.compile(r"^1\.\.(\d+)$")
#: Lines kvm_util prints outside TAP (its random seed, at start-up).
_KVM_UTIL = ("Random seed: ",)


class Unreadable(Exception):
    """Output that is not what the programs print."""


def parse_tap(text: str, kselftest: bool = False) -> dict[str, str]:
    """TAP -> {case: passed|failed|skipped}, checking the plan and the numbering;
    ``kselftest``: the kselftest form of the result lines (see the module docstring)."""
    plans = [int(m.group(1)) for m in map(_PLAN.match, text.splitlines()) if m]
    if len(plans) != 1:
        raise Unreadable(f"expected one TAP plan line 1..N, found {len(plans)}")
    results: dict[str, str] = {}
    for line in text.splitlines():
        m = (_KSFT if kselftest else _TAP).match(line)
        if not m:
            if not line.startswith(("#", "TAP version", "1..")) and not (
                kselftest and line.startswith(_KVM_UTIL)
            ):
                raise Unreadable(f"not a TAP line: {line!r}")
            continue
        if int(m.group(2)) != len(results) + 1:
            raise Unreadable(f"test number out of order: {line!r}")
        name, skipped = (
            (m.group(4), m.group(3) is not None) if kselftest else (m.group(3), m.group(4) is not None)
        )
        if name in results:
            raise Unreadable(f"case {name} reported twice: {line!r}")
        results[name] = "failed" if m.group(1) == "not ok" else "skipped" if skipped else "passed"
    if len(results) != plans[0]:
        raise Unreadable(f"the plan says {plans[0]} tests, the output has {len(results)}")
    return results


def compare(c: dict[str, str], py: dict[str, str]) -> tuple[str, list[str]]:
    """A table of (C status, Python status) counts, and the cases that differ."""
    counts: dict[tuple[str, str], int] = {}
    for name, status in py.items():
        key = (c.get(name, "missing"), status)
        counts[key] = counts.get(key, 0) + 1
    rows = [f"{'C selftest':<12} {'kvmspe kvm':<12} cases"]
    rows += [f"{a:<12} {b:<12} {n}" for (a, b), n in sorted(counts.items())]
    differ = [f"{n}: C {c.get(n, 'missing')}, Python {s}" for n, s in py.items() if c.get(n) != s]
    differ += [f"{n}: only in the C program" for n in c if n not in py]
    return "\n".join(rows), differ


def run_selftest(binary: str, options: list[str]) -> tuple[int, str]:
    with tempfile.TemporaryDirectory() as tmp:
        exe = os.path.join(tmp, "kvmspe-selftest")
        shutil.copyfile(binary, exe)
        os.chmod(exe, 0o755)
        proc = subprocess.run([exe, *options], capture_output=True, text=True, timeout=TIMEOUT, check=False)
    return proc.returncode, proc.stdout


def run_python() -> dict[str, dict[str, str]]:
    proc = subprocess.run(
        # The C program scripts no guest, so neither does the Python run (under kvmspe's shim).
        [sys.executable, "-m", "kvmspe", "conformance", "--backend", "kvm", "--json", "--no-scripted-guest"],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )
    if proc.returncode not in (0, 1):
        raise Unreadable(f"kvmspe conformance exited {proc.returncode}: {proc.stderr.strip()}")
    return {r["case"]: r for r in json.loads(proc.stdout)["results"]}


def main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__.strip())
        return 0 if argv else 2
    kselftest = argv[0] == "--kselftest"
    if kselftest:
        argv = argv[1:]
    if not argv:
        print(__doc__.strip())
        return 2
    try:
        code, tap = run_selftest(argv[0], argv[1:])
        c = parse_tap(tap, kselftest)
        py = run_python()
    except (OSError, Unreadable, ValueError, subprocess.TimeoutExpired) as exc:
        print(f"compare_selftest: {exc}", file=sys.stderr)
        return 2
    for line in tap.splitlines():
        if line.startswith("# "):
            print(f"C {line}")
    print(f"C exit status {code}")
    table, differ = compare(c, {n: r["status"] for n, r in py.items()})
    print(table)
    for line in differ:
        name = line.split(":")[0]
        reason = py[name]["reason"] if name in py else ""
        print(f"DIFFERS {line}" + (f" ({reason})" if reason else ""))
    total = len(set(c) | set(py))
    print(f"{'differ' if differ else 'agree'}: {total - len(differ)} of {total} cases agree")
    return 1 if differ else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

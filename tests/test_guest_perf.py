"""``kvmspe guest --perf``: the perf AUX buffer a guest's SPE units accept, from guest snapshots.

The shipped snapshots are an arm64 guest whose SPE driver has the proposed
``caps/max_buff_size`` (4 MiB: ``arm64-guest-capped``) and the same guest
without it (``arm64-guest``), where the size must be given. The page
counts are checked against a direct computation: the largest power of two
of pages, at least two, whose bytes are at most the cap.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from test_cli import assert_bad_input, kvmspe

from kvmspe import perfaux
from kvmspe.arch import maxbuf
from kvmspe.errors import InvalidArgumentError
from kvmspe.host import discovery

KiB, MiB = 1 << 10, 1 << 20


def perf_json(*args: str, code: int = 0) -> dict[str, object]:
    r = kvmspe("guest", "--perf", *args, "--json")
    assert r.returncode == code, r.stderr
    assert r.stderr == ""
    doc: dict[str, object] = json.loads(r.stdout)
    return doc


def unit(doc: dict[str, object]) -> dict[str, object]:
    units = doc["units"]
    assert isinstance(units, list) and len(units) == 1
    u: dict[str, object] = units[0]
    return u


def test_the_capped_guest_reads_its_cap_from_sysfs_and_fits_1024_pages() -> None:
    u = unit(perf_json("--fixture", "arm64-guest-capped"))
    assert u["source"] == "caps/max_buff_size"
    assert (u["max_buff_size"], u["pages"], u["aux_bytes"]) == (4 * MiB, 1024, 4 * MiB)
    assert u["command"] == "perf record -a -e arm_spe_0// -m,1024"
    assert (u["refused_from_pages"], u["refused_from_bytes"]) == (2048, 8 * MiB)
    assert u["default_fits"] == {"privileged": True, "unprivileged": True}


def test_the_human_answer_names_the_command_the_page_size_and_the_mmap_error() -> None:
    r = kvmspe("guest", "--perf", "--fixture", "arm64-guest-capped")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0] == "page size 4 KiB (assumed: a snapshot does not record it; --page-size to change)"
    assert "  perf record -a -e arm_spe_0// -m,1024" in lines
    assert any(line.startswith("  -m,2048 (8 MiB) and more") and perfaux.MMAP_ERROR in line for line in lines)
    assert any(line.startswith("note: per CPU (-a, or -C CPUS)") for line in lines)


def test_json_names_the_source_of_every_rule_and_only_the_page_size_of_a_snapshot_is_assumed() -> None:
    facts = perf_json("--fixture", "arm64-guest-capped")["facts"]
    assert isinstance(facts, dict) and set(facts) == set(perfaux.FACTS)
    assumed = [k for k, v in facts.items() if "assumed" in v["source"]]
    assert assumed == ["snapshot_page_size"]


def test_without_the_cap_file_the_size_must_be_given() -> None:
    assert_bad_input(kvmspe("guest", "--perf", "--fixture", "arm64-guest"), "--max-buffer-size SIZE")
    u = unit(perf_json("--fixture", "arm64-guest", "--max-buffer-size", "2M"))
    assert u["source"] == "--max-buffer-size"
    assert (u["pages"], u["aux_bytes"]) == (512, 2 * MiB)
    # perf's privileged default, 4 MiB, is above a 2 MiB cap: a plain `perf record` as root fails.
    assert u["default_fits"] == {"privileged": False, "unprivileged": True}


def test_the_cap_file_wins_over_a_given_size_and_says_so() -> None:
    doc = perf_json("--fixture", "arm64-guest-capped", "--max-buffer-size", "16M")
    assert unit(doc)["max_buff_size"] == 4 * MiB
    notes = doc["notes"]
    assert isinstance(notes, list)
    assert notes[0].startswith("--max-buffer-size 16 MiB is not used for arm_spe_0")


def test_a_cap_that_is_not_a_power_of_two_of_pages_rounds_down() -> None:
    u = unit(perf_json("--fixture", "arm64-guest", "--max-buffer-size", "5M"))
    assert (u["pages"], u["aux_bytes"]) == (1024, 4 * MiB)
    u = unit(perf_json("--fixture", "arm64-guest", "--max-buffer-size", "5M", "--page-size", "64K"))
    assert (u["pages"], u["aux_bytes"], u["page_size"]) == (64, 4 * MiB, 64 * KiB)


def test_a_cap_below_two_pages_fits_nothing_and_exits_1() -> None:
    u = unit(perf_json("--fixture", "arm64-guest", "--max-buffer-size", "4K", code=1))
    assert u["pages"] is None and u["command"] is None
    args = ("--fixture", "arm64-guest", "--max-buffer-size", "64K", "--page-size", "64K")
    r = kvmspe("guest", "--perf", *args)
    assert r.returncode == 1
    assert "no AUX buffer fits: perf needs at least 2 pages (128 KiB), above the cap" in r.stdout


def test_a_cap_of_0_is_no_limit() -> None:
    u = unit(perf_json("--fixture", "arm64-guest", "--max-buffer-size", "0"))
    assert u["no_limit"] is True and u["pages"] is None
    assert u["command"] == "perf record -a -e arm_spe_0//"


def test_a_guest_without_spe_units_is_a_no(tmp_path: Path) -> None:
    (tmp_path / "sys" / "bus" / "event_source" / "devices").mkdir(parents=True)
    (tmp_path / "proc").mkdir()
    doc = perf_json("--fixture", str(tmp_path), code=1)
    assert doc["units"] == []
    assert "no arm_spe_N PMU" in str(doc["reason"])


def test_a_snapshot_copy_with_a_16k_cap_reads_that_cap(tmp_path: Path) -> None:
    """The figure follows the file: a copy of the capped guest with another cap gives another answer."""
    src = Path(discovery.fixture_roots("arm64-guest-capped")["sysfs_root"]).parent
    shutil.copytree(src, tmp_path / "g")
    cap = tmp_path / "g" / "sys" / "bus" / "event_source" / "devices" / "arm_spe_0" / "caps" / "max_buff_size"
    cap.write_text("0x4000\n")
    u = unit(perf_json("--fixture", str(tmp_path / "g")))
    assert (u["max_buff_size"], u["pages"]) == (16 * KiB, 4)


@pytest.mark.parametrize(
    "args,needle",
    [
        (["--max-buffer-size", "0x401000"], "not a MaxBuffSize size"),
        (["--max-buffer-size", "-4M"], "negative sizes are not accepted"),
        (["--page-size", "8K"], "not an arm64 page size"),
        (["--fixture", "no-such-guest"], "no fixture host"),
        (["--gic", "v2"], "not for --perf"),
        (["--vcpus", "4"], "not for --perf"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(args: list[str], needle: str) -> None:
    assert_bad_input(kvmspe("guest", "--perf", "--fixture", "arm64-guest", *args), needle)


def test_perf_options_are_refused_without_perf() -> None:
    assert_bad_input(kvmspe("guest", "--dt", "--max-buffer-size", "4M"), "only for --perf")
    assert_bad_input(kvmspe("guest", "--acpi", "--fixture", "arm64-guest"), "only for --perf")


@given(
    st.sampled_from([4 * KiB, 16 * KiB, 64 * KiB]),
    st.integers(1, 1 << 40).map(lambda n: maxbuf.round_down(n) or 4096),
)
def test_the_largest_pages_are_a_power_of_two_that_fits_and_twice_as_many_do_not(page: int, cap: int) -> None:
    f = perfaux.fit("arm_spe_0", cap, "test", page)
    if f.pages is None:
        assert cap < 2 * page
        return
    assert f.pages >= 2 and f.pages & (f.pages - 1) == 0
    assert f.pages * page <= cap < 2 * f.pages * page


def test_the_library_refuses_sizes_no_vm_advertises() -> None:
    with pytest.raises(InvalidArgumentError, match="not a MaxBuffSize size"):
        perfaux.fit("arm_spe_0", 0x401000, "test", 4096)
    with pytest.raises(InvalidArgumentError, match="arm64 page size"):
        perfaux.fit("arm_spe_0", 4 * MiB, "test", 8192)
    with pytest.raises(InvalidArgumentError):
        perfaux.largest_aux_pages(0, 4096)


@pytest.mark.parametrize("fmt", [[], ["--json"]])
def test_closed_stdout_and_a_full_device_give_one_line_or_nothing(fmt: list[str]) -> None:
    import os
    import subprocess
    import sys

    args = ["guest", "--perf", "--fixture", "arm64-guest-capped", *fmt]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent / "src")}
    run = [sys.executable, "-m", "kvmspe", *args]
    closed = subprocess.run(run, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
    assert closed.returncode == 0 and closed.stderr == ""
    script = '"$@" >&-; echo "closed $?" >&2; "$@" >/dev/full'
    r = subprocess.run(["bash", "-c", script, "x", *run], capture_output=True, text=True, env=env)
    # The CLI's convention (docs/cli.md): a lost answer is one line and exit 2.
    assert r.stderr.splitlines() == [
        "kvmspe: error: cannot write the answer to standard output: it is closed",
        "closed 2",
        "kvmspe: error: cannot write the answer to standard output: No space left on device",
    ]
    assert r.returncode == 2


def test_fit_units_prefers_the_cap_file_and_raises_its_own_error_without_any_cap() -> None:
    with_cap = discovery.SpeInstance("arm_spe_0", caps={"max_buff_size": 4 * MiB})
    without = discovery.SpeInstance("arm_spe_1")
    fits, notes = perfaux.fit_units([with_cap, without], 4096, given=2 * MiB)
    assert [(f.unit, f.max_buff_size, f.source, f.pages) for f in fits] == [
        ("arm_spe_0", 4 * MiB, "caps/max_buff_size", 1024),
        ("arm_spe_1", 2 * MiB, "--max-buffer-size", 512),
    ]
    assert len(notes) == 1 and "is not used for arm_spe_0" in notes[0]
    with pytest.raises(perfaux.CapUnknownError, match="arm_spe_1 has no caps/max_buff_size"):
        perfaux.fit_units([with_cap, without], 4096)
    with pytest.raises(InvalidArgumentError):
        perfaux.fit_units([without], 4096, given=0x401000)

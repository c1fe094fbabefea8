"""The planner: safe rounding, refusals, and agreement with the model to the byte."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from kvmspe import abi
from kvmspe.arch import maxbuf
from kvmspe.arch.registers import PMBIDR_EL1
from kvmspe.assumptions import DEFAULT, Assumptions
from kvmspe.errors import InvalidArgumentError
from kvmspe.model.kernel import Host, Spu
from kvmspe.planner import (
    CONTAINER_ULIMIT_MAX,
    LIBVIRT_UNLIMITED_KIB,
    PINNING_CASES,
    RLIM_FINITE_MAX,
    ULIMIT_KIB_MAX,
    PlanHost,
    memlock_settings,
    placements,
    plan,
)

KiB, MiB, GiB = 1 << 10, 1 << 20, 1 << 30
KEYS = {
    "vcpus",
    "requested",
    "size",
    "max_buff_size_field",
    "guest_pmbidr",
    "page_size",
    "spu_limit",
    "granule",
    "levels",
    "va_bits",
    "warnings",
    "pinned",
    "locked_already",
    "held_at_set",
    "memlock_limit",
    "memlock_limit_kib",
    "case",
    "host",
    "spu",
    "vcpu_cpus",
    "paste",
}
CASE_KEYS = {
    "per_vcpu",
    "per_vm",
    "data",
    "tables",
    "table_pages",
    "amplification",
    "one_more_vcpu",
    "why",
    "assumptions",
}


def test_dict_keys_are_stable() -> None:
    d = plan(4, 4 * MiB).to_dict()
    assert set(d) == KEYS
    assert set(d["pinned"]) == set(PINNING_CASES)
    assert all(set(v) == CASE_KEYS for v in d["pinned"].values())
    assert set(d["paste"]) == {
        "systemd",
        "ulimit",
        "libvirt",
        "prlimit",
        "pam_limits_soft",
        "pam_limits_hard",
        "docker",
        "podman",
    }
    host = plan(4, host=PlanHost.from_profile("big-little")).to_dict()["host"]
    assert set(host) == {"source", "page_size", "spus"}
    assert all(set(s) == {"id", "max_buffer_size", "cpus"} for s in host["spus"])


def test_exact_size_has_no_warning_and_its_encoding() -> None:
    d = plan(2, 4 * MiB).to_dict()
    assert d["size"] == 4 * MiB and d["warnings"] == []
    assert d["max_buff_size_field"] == maxbuf.encode(4 * MiB)
    assert PMBIDR_EL1.get(d["guest_pmbidr"], "MaxBuffSize") == d["max_buff_size_field"]


def test_unrepresentable_size_rounds_down_with_a_warning() -> None:
    d = plan(1, 4 * MiB + 4 * KiB).to_dict()
    assert d["size"] == 4 * MiB and "rounded down" in d["warnings"][0]


def test_size_rounding_to_zero_rounds_up_instead() -> None:
    d = plan(1, 4 * KiB, page_size=65536).to_dict()
    assert d["size"] == 64 * KiB and "rounded up" in d["warnings"][0]


def test_above_spu_limit_is_clamped() -> None:
    d = plan(1, 64 * MiB, spu_limit=16 * MiB).to_dict()
    assert d["size"] == 16 * MiB and "clamped" in d["warnings"][0]


def test_zero_with_spu_limit_uses_the_limit() -> None:
    d = plan(1, 0, spu_limit=16 * MiB).to_dict()
    assert d["size"] == 16 * MiB and d["warnings"]


def test_none_takes_the_spu_limit() -> None:
    assert plan(1, None, spu_limit=32 * MiB).size == 32 * MiB


def test_none_with_unlimited_spu_is_no_limit_and_unbounded() -> None:
    d = plan(1, None).to_dict()
    assert d["size"] == 0 and d["memlock_limit"] is None
    assert d["pinned"]["worst"]["per_vm"] is None and "no limit" in d["warnings"][0]


def test_memlock_adds_locked_already_and_held_charge() -> None:
    base = plan(2, MiB, locked_already=8 * MiB)
    assert base.memlock_limit == 8 * MiB + base.pinned["worst"].per_vm
    held = plan(2, MiB, assumptions=dataclasses.replace(DEFAULT, set_time_charge_mode="held"))
    assert held.held_at_set == MiB
    assert held.memlock_limit == MiB + held.pinned["worst"].per_vm


def test_cases_are_ordered() -> None:
    p = plan(8, 64 * MiB, page_size=65536)
    best, typical, worst = (p.pinned[c].per_vm for c in PINNING_CASES)
    assert 8 * 64 * MiB <= best <= typical <= worst


@pytest.mark.parametrize(
    ("args", "kwargs"),
    [
        ((0, MiB), {}),
        ((True, MiB), {}),
        ((1, -1), {}),
        ((1, MiB), {"page_size": 8192}),
        ((1, MiB), {"granule": 2048}),
        ((1, MiB), {"spu_limit": 4097}),
        ((1, MiB), {"levels": 9}),
        ((1, MiB), {"locked_already": -1}),
        ((1, None), {"spu_limit": 4096, "page_size": 65536}),
        ((8192, GiB), {"levels": 2, "granule": 65536}),
        ((1, MiB), {"levels": 4, "granule": 65536}),
    ],
)
def test_bad_input_is_one_line_value_error(args: tuple[object, ...], kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError) as info:
        plan(*args, **kwargs)  # type: ignore[arg-type]
    message = str(info.value)
    assert "\n" not in message and ("accepted" in message or "must be" in message)


@pytest.mark.parametrize("host", ["big-little", 1, True, [], object()])
def test_a_host_that_is_not_a_planhost_is_a_one_line_value_error(host: object) -> None:
    with pytest.raises(ValueError, match="accepted: a PlanHost") as info:
        plan(1, MiB, host=host)  # type: ignore[arg-type]
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("name", [[], {}, 1, None, b"default-4k"])
def test_a_profile_name_that_is_not_a_str_is_a_one_line_value_error(name: object) -> None:
    with pytest.raises(ValueError, match="accepted: default-4k") as info:
        PlanHost.from_profile(name)  # type: ignore[arg-type]
    assert "\n" not in str(info.value)


def _model_pinned(
    case: str,
    vcpus: int,
    size: int,
    page: int,
    granule: int,
    levels: int | None,
    assumptions: Assumptions,
    limit: int | None,
) -> tuple[int, int, Host]:
    host = Host(page, [Spu(1, 0)], limit, assumptions=assumptions)
    vm = host.create_vm()
    cpus = [vm.create_vcpu() for _ in range(vcpus)]
    for v in cpus:
        v.set_device_attr(abi.KVM_ARM_VCPU_SPE_CTRL, abi.KVM_ARM_VCPU_SPE_IRQ, 20)
    cpus[0].set_device_attr(abi.KVM_ARM_VCPU_SPE_CTRL, abi.KVM_ARM_VCPU_SPE_SPU, 1)
    cpus[0].set_device_attr(abi.KVM_ARM_VCPU_SPE_CTRL, abi.KVM_ARM_VCPU_SPE_MAX_BUFFER_SIZE, size)
    for v in cpus:
        v.set_device_attr(abi.KVM_ARM_VCPU_SPE_CTRL, abi.KVM_ARM_VCPU_SPE_INIT, None)
    for v, where in zip(cpus, placements(case, vcpus, size, granule=granule, levels=levels), strict=True):
        v.enable_buffer(where.base, where.size, where.stage1)
        assert v.run() == abi.Exit(assumptions.idle_exit)
    return cpus[0].pinned_bytes, host.locked_bytes, host


@settings(max_examples=60, deadline=None)
@given(
    vcpus=st.integers(1, 6),
    field=st.integers(1, maxbuf.encode(512 * MiB)),
    page=st.sampled_from(maxbuf.PAGE_SIZES),
    granule=st.sampled_from([4096, 16384, 65536]),
    levels=st.sampled_from([None, 3, 4]),
    held=st.booleans(),
)
def test_planner_and_model_agree_to_the_byte(
    vcpus: int, field: int, page: int, granule: int, levels: int | None, held: bool
) -> None:
    assume(not (granule == 65536 and levels == 4))  # a 64 KiB granule walks at most 3 levels
    assumptions = dataclasses.replace(DEFAULT, set_time_charge_mode="held" if held else "check")
    p = plan(
        vcpus,
        maxbuf.decode(field),
        page_size=page,
        granule=granule,
        levels=levels,
        locked_already=3 * page,
        assumptions=assumptions,
    )
    for case in PINNING_CASES:
        per_vcpu, _, host = _model_pinned(case, vcpus, p.size, page, granule, levels, assumptions, None)
        assert per_vcpu == p.pinned[case].per_vcpu, case
        assert host.locked_bytes - p.held_at_set == p.pinned[case].per_vm, case
    # The recommended limit is exactly enough: the worst case runs with no KVM_EXIT_RLIMIT,
    # counting what was locked before, and leaves no room.
    assert p.memlock_limit is not None
    _, _, host = _model_pinned(
        "worst", vcpus, p.size, page, granule, levels, assumptions, p.memlock_limit - p.locked_already
    )
    assert host.memlock_room() == 0


def test_sweep_is_the_plan_at_each_power_of_two_size() -> None:
    from kvmspe import planner

    s = planner.sweep(3, page_size=16384, up_to=1 << 26)
    assert s.sizes == [16384 << k for k in range(13)]
    for i, size in enumerate(s.sizes):
        p = planner.plan(3, size, page_size=16384)
        assert {case: s.per_vm[case][i] for case in planner.PINNING_CASES} == {
            case: p.pinned[case].per_vm for case in planner.PINNING_CASES
        }
    with pytest.raises(ValueError, match="vcpus"):
        planner.sweep(0)


# --- defaults, cases, the split, the cost of one more VCPU ------------------------------------


def test_defaults_are_one_vcpu_4_mib_and_the_worst_case() -> None:
    from kvmspe import planner

    p = plan()
    assert (p.vcpus, p.size, p.case) == (1, 4 * MiB, "worst")
    shared = (planner.DEFAULT_VCPUS, planner.DEFAULT_MAX_BUFFER_SIZE, planner.DEFAULT_CASE)
    assert shared == (1, 4 * MiB, "worst")
    assert p.memlock_limit == p.pinned["worst"].per_vm


def test_the_default_size_is_clamped_to_the_spu_limit_with_a_warning() -> None:
    p = plan(1, host=PlanHost("test", 4096, (Spu(7, 2 * MiB, cpus=(0, 1)),)))
    assert p.size == 2 * MiB and p.spu_limit == 2 * MiB
    assert any("above the SPU limit; clamped to 2 MiB" in w for w in p.warnings)


@pytest.mark.parametrize("case", PINNING_CASES)
def test_case_picks_the_figure_of_memlock_limit(case: str) -> None:
    p = plan(8, 16 * MiB, page_size=65536, locked_already=MiB, case=case)
    assert p.case == case and p.memlock_limit == MiB + p.pinned[case].per_vm
    assert p.to_dict()["case"] == case


@pytest.mark.parametrize("bad", ["worse", "", "WORST", None, 3])
def test_an_unknown_case_is_a_one_line_error(bad: object) -> None:
    with pytest.raises(ValueError, match="accepted: best, typical, worst") as info:
        plan(1, MiB, case=bad)  # type: ignore[arg-type]
    assert "\n" not in str(info.value)


@settings(max_examples=40, deadline=None)
@given(
    vcpus=st.integers(1, 9),
    field=st.integers(1, maxbuf.encode(64 * MiB)),
    page=st.sampled_from(maxbuf.PAGE_SIZES),
    granule=st.sampled_from([4096, 16384, 65536]),
)
def test_data_plus_tables_is_per_vm_and_one_more_vcpu_is_the_next_plan(
    vcpus: int, field: int, page: int, granule: int
) -> None:
    p = plan(vcpus, maxbuf.decode(field), page_size=page, granule=granule)
    nxt = plan(vcpus + 1, p.size, page_size=page, granule=granule)
    for case in PINNING_CASES:
        c = p.pinned[case]
        assert c.data + c.tables == c.per_vm, case
        assert c.data >= vcpus * p.size and c.tables > 0 and c.table_pages > 0
        assert c.amplification == c.per_vm / (vcpus * p.size)
        assert c.one_more_vcpu == nxt.pinned[case].per_vm - c.per_vm, case
        # The limit for the next plan in this case grows by exactly that.
        here = plan(vcpus, p.size, page_size=page, granule=granule, case=case).memlock_limit
        more = plan(vcpus + 1, p.size, page_size=page, granule=granule, case=case).memlock_limit
        assert here is not None and more == here + c.one_more_vcpu


def test_the_split_is_the_model_hosts_data_and_table_pages() -> None:
    """Data is the host pages behind the buffers, as the model pins them: pin the buffers
    of the worst case without tables' help, i.e. compare with one footprint by hand."""
    p = plan(3, 16 * MiB, page_size=65536, granule=4096)
    worst = p.pinned["worst"]
    # Scattered 4 KiB data pages on 64 KiB host pages: each data page pins a whole host page.
    assert worst.data == 3 * (16 * MiB // 4096) * 65536
    # Each table page, scattered too, pins a host page of its own.
    assert worst.tables == worst.table_pages * 65536
    typical = p.pinned["typical"]
    assert typical.data == 3 * 16 * MiB  # contiguous: the buffers' bytes exactly


def test_the_issue_example_says_x16_and_why() -> None:
    """64 VCPUs, 16 MiB buffers, 64 KiB host pages, 4 KiB granule: 16440 MiB worst case."""
    p = plan(64, 16 * MiB, page_size=65536, granule=4096)
    worst = p.pinned["worst"]
    assert p.memlock_limit == worst.per_vm == 16440 * MiB
    assert worst.data == 16 * GiB and worst.tables == 56 * MiB
    assert worst.amplification == 16440 / 1024
    why = worst.why
    assert why.startswith("x16.0547 (16440 MiB for 1 GiB of buffers)")
    assert "4 KiB guest page" in why and "64 KiB host page" in why and "(x16 for data)" in why
    assert "each VCPU's own 14 stage-1 table pages (levels 0-3) pin 896 KiB more" in why
    assert worst.one_more_vcpu == worst.per_vcpu == 263040 * KiB


def test_why_follows_the_inputs() -> None:
    """The same granule as the host page: no x16, and the sentence says so."""
    why = plan(64, 16 * MiB, page_size=4096, granule=4096).pinned["worst"].why
    assert "(x1 for data)" in why and "host page of its own" not in why
    why = plan(2, 16 * MiB, page_size=16384, granule=4096).pinned["worst"].why
    assert "16 KiB host page" in why and "(x4 for data)" in why


def test_no_limit_leaves_every_figure_none() -> None:
    p = plan(2, 0)
    assert p.pinned == {}
    for case in PINNING_CASES:
        c = p.to_dict()["pinned"][case]
        assert set(c) == CASE_KEYS
        assert all(c[k] is None for k in CASE_KEYS - {"assumptions"}) and c["assumptions"]
    assert p.memlock_limit is None and p.memlock_limit_kib is None


def test_one_more_vcpu_is_none_when_no_more_fit() -> None:
    # A 39-bit VA (3 levels of 4 KiB) holds 512 GiB: 2 buffers of 256 GiB and no third.
    p = plan(2, 256 * GiB, levels=3)
    assert all(p.pinned[c].one_more_vcpu is None for c in PINNING_CASES)


# --- the host planned for ----------------------------------------------------------------------


def test_big_little_spu_11_gives_its_limit_cpus_and_affinity() -> None:
    host = PlanHost.from_profile("big-little")
    p = plan(4, 8 * MiB, host=host, spu=11)
    assert p.spu == 11 and p.spu_limit == 4 * MiB and p.size == 4 * MiB
    assert p.vcpu_cpus == [(4, 5, 6, 7)] * 4
    d = p.to_dict()
    assert d["host"] == {
        "source": "profile 'big-little'",
        "page_size": 4096,
        "spus": [
            {"id": 10, "max_buffer_size": 0, "cpus": [0, 1, 2, 3]},
            {"id": 11, "max_buffer_size": 4 * MiB, "cpus": [4, 5, 6, 7]},
        ],
    }
    assert d["vcpu_cpus"] == [[4, 5, 6, 7]] * 4
    first = plan(2, host=host)
    assert first.spu == 10 and first.spu_limit == 0 and first.vcpu_cpus == [(0, 1, 2, 3)] * 2


def test_more_vcpus_than_the_spus_cpus_is_a_warning() -> None:
    p = plan(8, 4 * MiB, host=PlanHost.from_profile("big-little"), spu=11)
    assert p.vcpu_cpus == [(4, 5, 6, 7)] * 8
    assert any("8 VCPUs on SPU 11" in w and "--strict-placement" in w for w in p.warnings)
    # Every VCPU still pins its own buffer: the limit covers all 8.
    assert p.memlock_limit == plan(8, 4 * MiB).memlock_limit


def test_an_spu_not_on_the_host_is_refused() -> None:
    with pytest.raises(ValueError, match="SPU 12 is not on this host.*accepted: 10, 11"):
        plan(1, host=PlanHost.from_profile("big-little"), spu=12)
    with pytest.raises(ValueError, match="spu=None without a host"):
        plan(1, spu=10)


def test_page_size_and_limit_given_override_the_hosts() -> None:
    host = PlanHost.from_profile("big-little")
    p = plan(1, 16 * MiB, host=host, spu=11, page_size=65536, spu_limit=8 * MiB)
    assert (p.page_size, p.spu_limit, p.size) == (65536, 8 * MiB, 8 * MiB)
    assert plan(1, None, host=PlanHost.from_profile("64k")).page_size == 65536


def test_fixture_host_reads_the_snapshots_spe_units() -> None:
    host = PlanHost.from_fixture("arm64-big-little")
    assert [(s.id, s.max_buffer_size, s.cpus) for s in host.spus] == [
        (10, 0, (0, 1, 2, 3)),
        (11, 4 * MiB, (4, 5, 6, 7)),
    ]
    assert "fixture 'arm64-big-little'" in host.source


def test_configured_host_is_what_configure_models() -> None:
    from kvmspe import vmm

    host = PlanHost.configured()
    choice = vmm.choose_backend("auto")
    if choice.host is None:  # a real SPE host: configure drives the kernel; plan models its units
        assert choice.info is not None and host.spus
        assert [s.id for s in host.spus] == [i.type for i in choice.info.spe_instances if i.type is not None]
    else:
        assert host.page_size == choice.host.page_size
        assert [(s.id, s.max_buffer_size, s.cpus) for s in host.spus] == [
            (s.id, s.max_buffer_size, s.cpus) for s in choice.host.spus
        ]


# --- ready-to-paste limits ----------------------------------------------------------------------


def _parse_back(paste: dict[str, str | None]) -> dict[str, int | None]:
    """The number each pasted line sets, in bytes (None: unlimited), read as its consumer does."""
    import re

    systemd = re.fullmatch(r"LimitMEMLOCK=(\d+|infinity)", paste["systemd"] or "")
    ulimit = re.fullmatch(r"ulimit -l (\d+|unlimited)", paste["ulimit"] or "")
    memlock = r"prlimit --memlock=(\d+|unlimited):(\d+|unlimited) --pid PID"
    prlimit = re.fullmatch(memlock, paste["prlimit"] or "")
    assert systemd and ulimit and prlimit, paste
    assert prlimit[1] == prlimit[2]  # soft = hard

    def num(text: str, unit: int) -> int | None:
        return None if text in ("infinity", "unlimited") else int(text) * unit

    out = {"systemd": num(systemd[1], 1), "ulimit": num(ulimit[1], 1024), "prlimit": num(prlimit[1], 1)}
    # pam_limits: "DOMAIN soft|hard memlock KIB|unlimited", read in KiB; soft = hard.
    pam = {}
    for kind in ("soft", "hard"):
        m = re.fullmatch(rf"(\S+) {kind} memlock (\d+|unlimited)", paste[f"pam_limits_{kind}"] or "")
        assert m and m[1] == "USER", paste
        pam[kind] = num(m[2], 1024)
    assert pam["soft"] == pam["hard"]
    out["pam_limits"] = pam["soft"]
    # docker and podman: "--ulimit memlock=SOFT:HARD", bytes, -1 for unlimited; soft = hard.
    assert paste["docker"] == paste["podman"]
    container = re.fullmatch(r"--ulimit memlock=(-1|\d+):(-1|\d+)", paste["docker"] or "")
    assert container and container[1] == container[2], paste
    out["docker"] = None if container[1] == "-1" else int(container[1])
    if paste["libvirt"] is None:
        out["libvirt"] = None
    else:
        import xml.etree.ElementTree as ET

        memtune = ET.fromstring(paste["libvirt"])
        (hard,) = list(memtune)
        assert (memtune.tag, hard.tag, hard.get("unit")) == ("memtune", "hard_limit", "KiB")
        out["libvirt"] = int(hard.text or "") * 1024
    return out


@settings(max_examples=80, deadline=None)
@given(
    vcpus=st.integers(1, 64),
    field=st.integers(1, maxbuf.encode(1 * GiB)),
    page=st.sampled_from(maxbuf.PAGE_SIZES),
    locked=st.integers(0, 1 << 40),
    case=st.sampled_from(PINNING_CASES),
)
def test_each_pasted_value_reads_back_as_the_planners_bytes(
    vcpus: int, field: int, page: int, locked: int, case: str
) -> None:
    p = plan(vcpus, maxbuf.decode(field), page_size=page, locked_already=locked, case=case)
    limit = p.memlock_limit
    assert limit is not None
    back = _parse_back(p.paste)
    assert back["systemd"] == limit and back["prlimit"] == limit and back["docker"] == limit
    # KiB rounded up: never below the bytes, and less than 1 KiB above.
    for key in ("ulimit", "libvirt", "pam_limits"):
        value = back[key]
        assert value is not None and limit <= value < limit + 1024, key
    assert p.memlock_limit_kib is not None and p.memlock_limit_kib * 1024 == back["ulimit"]
    assert p.to_dict()["paste"] == p.paste


def test_paste_rounds_kib_up_and_says_unlimited() -> None:
    assert memlock_settings(4097) == {
        "systemd": "LimitMEMLOCK=4097",
        "ulimit": "ulimit -l 5",
        "libvirt": "<memtune><hard_limit unit='KiB'>5</hard_limit></memtune>",
        "prlimit": "prlimit --memlock=4097:4097 --pid PID",
        "pam_limits_soft": "USER soft memlock 5",
        "pam_limits_hard": "USER hard memlock 5",
        "docker": "--ulimit memlock=4097:4097",
        "podman": "--ulimit memlock=4097:4097",
    }
    unlimited = memlock_settings(None)
    keys = ("systemd", "ulimit", "prlimit", "pam_limits", "docker", "libvirt")
    assert _parse_back(unlimited) == dict.fromkeys(keys)
    assert unlimited["systemd"] == "LimitMEMLOCK=infinity" and unlimited["libvirt"] is None
    assert plan(1, 0).paste == unlimited
    with pytest.raises(ValueError):
        memlock_settings(-1)


def test_paste_lines_stop_where_bash_and_libvirt_stop() -> None:
    """bash's ``ulimit -l`` takes at most 2**54 - 1 KiB; libvirt reads 2**53 - 1 KiB as unlimited."""
    top = memlock_settings(ULIMIT_KIB_MAX * 1024)
    assert top["ulimit"] == f"ulimit -l {(1 << 54) - 1}"
    above = memlock_settings(ULIMIT_KIB_MAX * 1024 + 1)
    assert above["ulimit"] is None and above["systemd"] == f"LimitMEMLOCK={ULIMIT_KIB_MAX * 1024 + 1}"
    assert memlock_settings(RLIM_FINITE_MAX)["ulimit"] is None
    below = (LIBVIRT_UNLIMITED_KIB - 1) * 1024
    assert memlock_settings(below)["libvirt"] == (
        f"<memtune><hard_limit unit='KiB'>{LIBVIRT_UNLIMITED_KIB - 1}</hard_limit></memtune>"
    )
    assert memlock_settings(below + 1)["libvirt"] is None
    for limit in (below + 1, RLIM_FINITE_MAX):  # systemd and prlimit take every finite value
        lines = memlock_settings(limit)
        assert lines["systemd"] == f"LimitMEMLOCK={limit}"
        assert lines["prlimit"] == f"prlimit --memlock={limit}:{limit} --pid PID"


def test_limits_conf_lines_name_the_user_given_and_refuse_what_would_split_the_line() -> None:
    lines = memlock_settings(16 << 20, user="@kvm")
    assert (lines["pam_limits_soft"], lines["pam_limits_hard"]) == (
        "@kvm soft memlock 16384",
        "@kvm hard memlock 16384",
    )
    for bad in ("", "a b", "qemu#x", "a\tb", "x\n"):
        with pytest.raises(InvalidArgumentError):
            memlock_settings(4096, user=bad)


def test_container_and_pam_lines_stop_where_their_parsers_stop() -> None:
    """docker and podman take a signed 64-bit value; pam_limits multiplies KiB by 1024 as bash does."""
    top = memlock_settings(CONTAINER_ULIMIT_MAX)
    assert top["docker"] == f"--ulimit memlock={CONTAINER_ULIMIT_MAX}:{CONTAINER_ULIMIT_MAX}"
    above = memlock_settings(CONTAINER_ULIMIT_MAX + 1)
    assert above["docker"] is None and above["podman"] is None
    assert memlock_settings(ULIMIT_KIB_MAX * 1024)["pam_limits_soft"] == f"USER soft memlock {ULIMIT_KIB_MAX}"
    assert memlock_settings(ULIMIT_KIB_MAX * 1024 + 1)["pam_limits_hard"] is None


def test_bash_takes_the_largest_ulimit_line_and_refuses_the_next() -> None:
    """The boundary is bash's: one KiB more is "limit out of range" (a permission refusal is not)."""
    import shutil
    import subprocess

    bash = shutil.which("bash")
    if bash is None:
        pytest.skip("bash is not installed: its ulimit cannot be asked")
    line = memlock_settings(ULIMIT_KIB_MAX * 1024)["ulimit"]
    assert line is not None
    ok = subprocess.run([bash, "-c", line], capture_output=True, text=True, timeout=30)
    assert "out of range" not in ok.stderr, ok.stderr
    over = subprocess.run(
        [bash, "-c", f"ulimit -l {ULIMIT_KIB_MAX + 1}"], capture_output=True, text=True, timeout=30
    )
    assert over.returncode != 0 and "out of range" in over.stderr, over.stderr


def test_a_plan_near_the_top_says_which_lines_have_no_value() -> None:
    import contextlib
    import io

    from kvmspe import cli

    pinned = plan(1, 4 * MiB, page_size=4096).pinned["worst"].per_vm
    out = io.StringIO()
    with contextlib.redirect_stdout(out):  # the plan's limit is the largest finite RLIMIT_MEMLOCK
        code = cli.main(["plan", "--profile", "default-4k", "--locked", str(RLIM_FINITE_MAX - pinned)])
    assert code == 0
    rows = dict(line.split(None, 1) for line in out.getvalue().splitlines() if line[:1].isalpha())
    assert rows["ulimit"] == f"none: bash's ulimit -l takes at most {ULIMIT_KIB_MAX} KiB"
    assert rows["libvirt"] == f"none: libvirt reads {LIBVIRT_UNLIMITED_KIB} KiB and more as unlimited"
    assert rows["systemd"] == f"LimitMEMLOCK={RLIM_FINITE_MAX}"


@pytest.mark.parametrize("granule", [4096, 16384, 65536])
@pytest.mark.parametrize("page", [4096, 16384, 65536])
def test_worst_is_not_below_any_buffer_placement_a_guest_can_make(granule: int, page: int) -> None:
    """Every buffer start 4 KiB-aligned (PMBLIMITR_EL1.LIMIT's step) around each table-span
    boundary, for sizes from one page to two granules: none pins more than the worst case."""
    from kvmspe.arch.stage1 import Stage1

    s1 = Stage1(granule, None, blocks=False, layout="scattered")
    for size in sorted({page, 2 * page, granule, 2 * granule, 4 * max(page, granule)}):
        if size % page:
            continue
        worst = plan(1, size, page_size=page, granule=granule, spu_limit=0).pinned["worst"].per_vcpu
        seen = 0
        for depth in range(1, s1.depth):
            boundary = s1.span(depth)
            for back in range(4096, size + 4096, 4096):
                seen = max(seen, s1.footprint(boundary - back, boundary - back + size, page).bytes)
        assert seen <= worst, (size, seen, worst)
        assert seen == worst, (size, seen, worst)  # and the worst case is one of them


def test_why_says_a_misaligned_buffer_pins_a_host_page_more_on_large_granules() -> None:
    p = plan(1, 32 * 1024, page_size=16384, granule=65536, spu_limit=0)
    worst = p.pinned["worst"]
    assert worst.data == 32 * 1024 + 16384
    assert "a buffer starting 4 KiB below a host page boundary touches one 16 KiB host page more" in worst.why
    assert "guest page of a scattered buffer" not in worst.why
    small = plan(1, 64 * 1024, page_size=65536, granule=4096, spu_limit=0).pinned["worst"].why
    assert "each 4 KiB guest page of a scattered buffer can sit in a 64 KiB host page" in small


@pytest.mark.parametrize("spu", [True, 1.0, "1", -1])
def test_an_spu_that_is_not_an_int_id_is_refused_even_where_it_compares_equal(spu: object) -> None:
    host = PlanHost("a host with SPU 1", 4096, (Spu(1, 0, cpus=(0, 1)),))
    assert plan(1, MiB, host=host, spu=1).spu == 1
    with pytest.raises(ValueError, match=r"^spu .*accepted: ") as info:
        plan(1, MiB, host=host, spu=spu)  # type: ignore[arg-type]
    assert "\n" not in str(info.value)


def test_errors_give_sizes_in_the_units_the_output_uses() -> None:
    """No hex in the planner's errors: sizes read as the rest of plan's output does."""
    with pytest.raises(ValueError) as info:
        plan(1, MiB, spu_limit=2048)
    assert str(info.value).startswith("the SPU limit 2 KiB is not a MaxBuffSize size;")
    with pytest.raises(ValueError) as info:
        plan(1, MiB, spu_limit=0, locked_already=RLIM_FINITE_MAX)
    message = str(info.value)
    assert "0x" not in message
    pinned = plan(1, MiB, spu_limit=0).pinned["worst"].per_vm // 1024
    head = f"the RLIMIT_MEMLOCK needed, {RLIM_FINITE_MAX} B locked already + {pinned} KiB for SPE"
    assert message.startswith(head), message


def test_why_counts_the_extra_guest_page_a_misaligned_buffer_touches() -> None:
    """16 KiB guest pages on 64 KiB host pages: a 64 KiB buffer 4 KiB below a boundary
    touches 5 guest pages, hence x5 for data, and the sentence says so."""
    worst = plan(1, 64 * 1024, page_size=65536, granule=16384, spu_limit=0).pinned["worst"]
    assert worst.data == 5 * 65536
    assert (
        "(x5 for data); starting 4 KiB below a guest page boundary, a buffer touches 5 guest pages, not 4"
        in (worst.why)
    )
    aligned = plan(1, 64 * 1024, page_size=65536, granule=4096, spu_limit=0).pinned["worst"].why
    assert "guest pages, not" not in aligned


def test_plan_user_names_the_limits_conf_lines_and_a_bad_one_is_refused() -> None:
    from test_cli import assert_bad_input, kvmspe, ok_json

    doc = ok_json("plan", "--vcpus", "4", "--profile", "default-4k", "--user", "@kvm")
    kib = doc["memlock_limit_kib"]
    assert doc["paste"]["pam_limits_soft"] == f"@kvm soft memlock {kib}"
    assert doc["paste"]["pam_limits_hard"] == f"@kvm hard memlock {kib}"
    assert doc["paste"]["docker"] == f"--ulimit memlock={doc['memlock_limit']}:{doc['memlock_limit']}"
    r = kvmspe("plan", "--vcpus", "4", "--profile", "default-4k", "--user", "qemu")
    assert f"limits.conf      qemu soft memlock {kib}" in r.stdout
    assert_bad_input(kvmspe("plan", "--user", "a b"), "bad limits.conf user", "without spaces")

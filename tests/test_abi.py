"""The ABI table against the uapi headers and the reference patch, and an independent ioctl computation."""

from __future__ import annotations

import ctypes
import errno
import os
import struct
import subprocess
import sys
from collections.abc import Iterator

import pytest

from kvmspe import abi
from kvmspe.abi import structs, upstream
from kvmspe.assumptions import DEFAULT

SPE = abi.KVM_ARM_VCPU_SPE_CTRL
MAX = abi.KVM_ARM_VCPU_SPE_MAX_BUFFER_SIZE


def linux_ioc(direction: str, type_: int, nr: int, size: int) -> int:
    """asm-generic/ioctl.h, written out: dir [31:30], size [29:16], type [15:8], nr [7:0]."""
    bits = {"none": 0, "write": 1, "read": 2}[direction]
    return bits << 30 | size << 16 | type_ << 8 | nr


class KvmDeviceAttr(ctypes.Structure):
    _fields_ = [
        ("flags", ctypes.c_uint32),
        ("group", ctypes.c_uint32),
        ("attr", ctypes.c_uint64),
        ("addr", ctypes.c_uint64),
    ]


class KvmVcpuInit(ctypes.Structure):
    _fields_ = [("target", ctypes.c_uint32), ("features", ctypes.c_uint32 * 7)]


# --- ioctl numbers ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("KVM_SET_DEVICE_ATTR", 0x4018AEE1),
        ("KVM_GET_DEVICE_ATTR", 0x4018AEE2),
        ("KVM_HAS_DEVICE_ATTR", 0x4018AEE3),
        ("KVM_CREATE_VM", 0xAE01),
        ("KVM_CREATE_VCPU", 0xAE41),
        ("KVM_CHECK_EXTENSION", 0xAE03),
        ("KVM_RUN", 0xAE80),
    ],
)
def test_ioctl_numbers_from_facts(name: str, value: int) -> None:
    assert getattr(abi, name) == value


def test_vcpu_init_ioctls_computed_independently() -> None:
    size = ctypes.sizeof(KvmVcpuInit)
    assert size == 32
    assert abi.KVM_ARM_VCPU_INIT == linux_ioc("write", 0xAE, 0xAE, size) == 0x4020AEAE
    assert abi.KVM_ARM_PREFERRED_TARGET == linux_ioc("read", 0xAE, 0xAF, size) == 0x8020AEAF


def test_device_attr_ioctls_computed_independently() -> None:
    size = ctypes.sizeof(KvmDeviceAttr)
    for nr, name in (
        (0xE1, "KVM_SET_DEVICE_ATTR"),
        (0xE2, "KVM_GET_DEVICE_ATTR"),
        (0xE3, "KVM_HAS_DEVICE_ATTR"),
    ):
        assert getattr(abi, name) == linux_ioc("write", 0xAE, nr, size)


# --- structs ------------------------------------------------------------------------------


def test_struct_sizes() -> None:
    assert abi.DEVICE_ATTR.size == ctypes.sizeof(KvmDeviceAttr) == 24
    assert abi.VCPU_INIT.size == ctypes.sizeof(KvmVcpuInit) == 32
    assert abi.U64.size == 8
    assert abi.INT.size == 4


def test_device_attr_layout_matches_c() -> None:
    c = KvmDeviceAttr(flags=0x11223344, group=3, attr=2, addr=0xFFFF_8000_DEAD_B000)
    assert abi.DEVICE_ATTR.pack(0x11223344, 3, 2, 0xFFFF_8000_DEAD_B000) == bytes(c)
    assert abi.DEVICE_ATTR.unpack(bytes(c)) == (0x11223344, 3, 2, 0xFFFF_8000_DEAD_B000)


def test_vcpu_init_layout_matches_c() -> None:
    c = KvmVcpuInit(target=5)
    c.features[0] = 1 << 12
    c.features[6] = 7
    assert abi.VCPU_INIT.pack(5, 1 << 12, 0, 0, 0, 0, 0, 7) == bytes(c)


def test_value_types() -> None:
    assert abi.U64.pack((1 << 64) - 1) == bytes(ctypes.c_uint64((1 << 64) - 1))
    assert abi.INT.pack(-1) == bytes(ctypes.c_int(-1))


# --- groups and attributes ---------------------------------------------------------------------


def test_group_and_attribute_numbers() -> None:
    assert (abi.KVM_ARM_VCPU_PMU_V3_CTRL, abi.KVM_ARM_VCPU_TIMER_CTRL, abi.KVM_ARM_VCPU_PVTIME_CTRL) == (
        0,
        1,
        2,
    )
    assert abi.KVM_ARM_VCPU_SPE_CTRL == 3
    assert (abi.KVM_ARM_VCPU_SPE_IRQ, abi.KVM_ARM_VCPU_SPE_SPU, abi.KVM_ARM_VCPU_SPE_MAX_BUFFER_SIZE) == (
        0,
        1,
        2,
    )
    assert (abi.KVM_VCPU_TSC_CTRL, abi.KVM_VCPU_TSC_OFFSET) == (0, 0)
    assert abi.GROUP_NAMES["arm64"][3] == "KVM_ARM_VCPU_SPE_CTRL"


def test_both_spellings_of_max_buffer_size() -> None:
    assert abi.KVM_ARM_VCPU_MAX_BUFFER_SIZE == abi.KVM_ARM_VCPU_SPE_MAX_BUFFER_SIZE == 2
    assert abi.ATTR_BY_NAME["KVM_ARM_VCPU_SPE_MAX_BUFFER_SIZE"] == (3, 2)
    assert abi.ATTR_BY_NAME["KVM_ARM_VCPU_MAX_BUFFER_SIZE"] == (3, 2)
    assert abi.ATTR_BY_NAME["KVM_ARM_VCPU_SPE_IRQ"] == (3, 0)
    assert abi.ATTR_BY_NAME["KVM_ARM_VCPU_SPE_SPU"] == (3, 1)


def test_attribute_value_types() -> None:
    assert abi.ATTRS[(SPE, MAX)].value is abi.U64
    assert abi.ATTRS[(SPE, abi.KVM_ARM_VCPU_SPE_IRQ)].value is abi.INT
    assert abi.ATTRS[(SPE, abi.KVM_ARM_VCPU_SPE_SPU)].value is abi.INT


@pytest.mark.parametrize("key", list(abi.ATTRS), ids=lambda k: abi.ATTRS[k].name)
def test_every_attribute_has_errno_tables(key: tuple[int, int]) -> None:
    info = abi.ATTRS[key]
    assert (info.group, info.attr) == key
    assert set(info.errnos) == {"set", "get", "has"}
    for call, table in info.errnos.items():
        assert table, call
        for code, text in table.items():
            assert code in errno.errorcode
            assert isinstance(text, str) and len(text) > 20 and "\n" not in text
    # The group-level answers are listed for every call that can give them.
    for call in ("set", "get"):
        # An attribute without a value (INIT) reads and writes nothing: no EFAULT.
        faults = {errno.EFAULT} if info.value is not None else set()
        assert {errno.ENXIO, errno.ENODEV} | faults <= set(info.errnos[call])
    assert errno.ENXIO in info.errnos["has"]
    assert errno.EBUSY in info.errnos["set"]


def test_max_buffer_size_errnos_cover_the_patch() -> None:
    table = abi.ATTRS[(SPE, MAX)].errnos
    documented = {
        errno.EBUSY,
        errno.EDOM,
        errno.EFAULT,
        errno.EINVAL,
        errno.ENXIO,
        errno.ENODEV,
        errno.ERANGE,
    }
    assert documented | {errno.ENOMEM} == set(table["set"])
    assert {errno.EINVAL, errno.EFAULT} <= set(table["get"])


def test_attr_info() -> None:
    assert abi.attr_info(SPE, MAX) is abi.ATTRS[(SPE, MAX)]
    assert abi.attr_info(SPE, 3) is abi.ATTRS[(SPE, abi.KVM_ARM_VCPU_SPE_INIT)]
    assert abi.attr_info(SPE, 4) is None
    assert abi.attr_info(abi.KVM_ARM_VCPU_PMU_V3_CTRL, 0) is None


def test_errno_table() -> None:
    for info in abi.ATTRS.values():
        assert abi.ERRNO_TABLE[info.name] is info.errnos
    assert abi.ERRNO_TABLE["KVM_RUN"]["run"] is abi.RUN_ERRNOS
    assert errno.EINVAL in abi.RUN_ERRNOS


# --- explain --------------------------------------------------------------------------------


@pytest.mark.parametrize("key", list(abi.ATTRS), ids=lambda k: abi.ATTRS[k].name)
def test_explain_returns_our_sentence(key: tuple[int, int]) -> None:
    for call, table in abi.ATTRS[key].errnos.items():
        for code, text in table.items():
            assert abi.explain(call, *key, code) == text


def test_explain_examples() -> None:
    assert "MaxBuffSize encoding" in abi.explain("set", SPE, MAX, errno.EDOM)
    assert "SPU" in abi.explain("set", SPE, MAX, errno.ERANGE)
    # ENXIO on a call whose table does not list it still gets the group sentence.
    assert abi.explain("has", SPE, MAX, errno.ENXIO) == abi.ATTRS[(SPE, MAX)].errnos["has"][errno.ENXIO]
    assert abi.explain("get", SPE, MAX, errno.EDOM) == (
        f"{os.strerror(errno.EDOM)} (not documented for KVM_ARM_VCPU_SPE_MAX_BUFFER_SIZE get)"
    )
    assert (
        abi.explain("set", 7, 0, errno.ENXIO) == "the kernel does not know VCPU attribute group 7 attribute 0"
    )
    assert abi.explain("set", 7, 0, errno.EPERM) == os.strerror(errno.EPERM)


# --- values ----------------------------------------------------------------------------------


@pytest.mark.parametrize("value", [0, 4096, (1 << 64) - 1])
def test_check_value_accepts_u64(value: int) -> None:
    abi.check_value(abi.ATTRS[(SPE, MAX)], value)


@pytest.mark.parametrize("value", [-1, 1 << 64, True, 4096.0, "4096", None])
def test_check_value_refuses_outside_u64(value: object) -> None:
    with pytest.raises(ValueError, match=r"KVM_ARM_VCPU_SPE_MAX_BUFFER_SIZE takes a __u64"):
        abi.check_value(abi.ATTRS[(SPE, MAX)], value)  # type: ignore[arg-type]


@pytest.mark.parametrize("attr", [abi.KVM_ARM_VCPU_SPE_IRQ, abi.KVM_ARM_VCPU_SPE_SPU])
def test_check_value_int(attr: int) -> None:
    info = abi.ATTRS[(SPE, attr)]
    for ok in (-(1 << 31), 0, 23, (1 << 31) - 1):
        abi.check_value(info, ok)
    for bad in (-(1 << 31) - 1, 1 << 31, False, 23.0):
        with pytest.raises(ValueError, match=r"takes a int|takes an int"):
            abi.check_value(info, bad)  # type: ignore[arg-type]


def test_bad_address() -> None:
    assert abi.BAD_ADDRESS is type(abi.BAD_ADDRESS)()
    assert repr(abi.BAD_ADDRESS) == "BAD_ADDRESS"
    assert abi.UNMAPPED_ADDRESS % 4096 == 0
    assert abi.UNMAPPED_ADDRESS >= 1 << 63  # kernel half: never a user mapping


# --- assumed numbers --------------------------------------------------------------------------


@pytest.fixture
def restore_assumed() -> Iterator[None]:
    try:
        yield
    finally:
        abi.set_assumed(spe_feature_bit=None, cap_arm_spe=None, exit_rlimit=None)


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("KVMSPE_SPE_FEATURE_BIT", "KVMSPE_CAP_ARM_SPE", "KVMSPE_EXIT_RLIMIT"):
        monkeypatch.delenv(var, raising=False)


@pytest.mark.usefixtures("clean_env")
def test_assumed_defaults_use_no_upstream_number() -> None:
    fresh = abi.Assumed()
    got = (fresh.spe_feature_bit, fresh.cap_arm_spe, fresh.exit_rlimit)
    assert got == (None, None, abi.MODEL_EXIT_RLIMIT)
    assert "assumed" in (abi.Assumed.__doc__ or "")
    assert abi.MODEL_EXIT_RLIMIT not in upstream.EXITS and abi.MODEL_EXIT_RLIMIT > max(upstream.EXITS)
    assert abi.MODEL_EXIT_RLIMIT != DEFAULT.idle_exit
    assert abi.exit_name(abi.MODEL_EXIT_RLIMIT) == "KVM_EXIT_RLIMIT"


@pytest.mark.usefixtures("restore_assumed", "clean_env")
def test_set_assumed_overrides() -> None:
    abi.set_assumed(cap_arm_spe=260, spe_feature_bit=9)
    assert abi.ASSUMED.cap_arm_spe == 260
    assert abi.ASSUMED.spe_feature_bit == 9
    assert abi.ASSUMED.source("cap_arm_spe") == "set_assumed"
    abi.set_assumed(exit_rlimit=50)
    assert abi.exit_name(50) == "KVM_EXIT_RLIMIT"
    assert abi.exit_name(42) == "KVM_EXIT_ARM_LDST64B"
    assert abi.Exit(50, 4096).is_rlimit
    assert abi.Exit(50).name == "KVM_EXIT_RLIMIT"
    assert not abi.Exit(abi.KVM_EXIT_INTR).is_rlimit
    abi.set_assumed(exit_rlimit=None, cap_arm_spe=None)
    now = abi.ASSUMED.as_dict()
    assert (now["exit_rlimit"], now["cap_arm_spe"]) == (abi.MODEL_EXIT_RLIMIT, None)


@pytest.mark.usefixtures("restore_assumed", "clean_env")
@pytest.mark.parametrize(
    ("values", "match"),
    [
        ({"cap_arm_speX": 1}, r"unknown assumed number 'cap_arm_speX'; accepted: spe_feature_bit"),
        ({"cap_arm_spe": -1}, "must be an integer in"),
        ({"cap_arm_spe": True}, "must be an integer in"),
        ({"exit_rlimit": "42"}, "must be an integer in"),
        ({"exit_rlimit": 1 << 32}, "must be an integer in"),
        ({"spe_feature_bit": 224}, "must be an integer in"),
        ({"cap_arm_spe": 1 << 62}, "must be an integer in"),
        ({"spe_feature_bit": 8}, "KVM_ARM_VCPU_HAS_EL2_E2H0 upstream"),
        ({"spe_feature_bit": 7}, "KVM_ARM_VCPU_HAS_EL2 upstream"),
        ({"cap_arm_spe": 208}, "KVM_CAP_XSAVE2 upstream"),
        ({"cap_arm_spe": 5}, "taken upstream"),
        ({"exit_rlimit": 42}, "KVM_EXIT_ARM_LDST64B upstream"),
        ({"exit_rlimit": 10}, "KVM_EXIT_INTR upstream"),
        ({"exit_rlimit": 60, "cap_arm_spe": 208}, "KVM_CAP_XSAVE2"),
    ],
)
def test_set_assumed_validates(values: dict[str, object], match: str) -> None:
    before = abi.ASSUMED.as_dict()
    with pytest.raises(abi.AssumedNumberError, match=match):
        abi.set_assumed(**values)  # type: ignore[arg-type]
    assert abi.ASSUMED.as_dict() == before  # all or nothing


@pytest.mark.usefixtures("restore_assumed")
def test_every_user_given_upstream_exit_is_refused() -> None:
    for reason in upstream.EXITS:
        with pytest.raises(abi.AssumedNumberError):
            abi.set_assumed(exit_rlimit=reason)
    for bit in upstream.ARM64_VCPU_FEATURES:
        with pytest.raises(abi.AssumedNumberError):
            abi.set_assumed(spe_feature_bit=bit)
    for cap in range(upstream.CAP_MAX + 1):
        with pytest.raises(abi.AssumedNumberError):
            abi.set_assumed(cap_arm_spe=cap)
    abi.set_assumed(exit_rlimit=max(upstream.EXITS) + 1, cap_arm_spe=upstream.CAP_MAX + 1, spe_feature_bit=9)


def _python(code: str, **env: str) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("KVMSPE_")}
    environ.update(env)
    return subprocess.run(
        [sys.executable, "-c", code], env=environ, capture_output=True, text=True, timeout=60
    )


def test_env_var_override_is_read_when_used() -> None:
    code = "from kvmspe import abi; a = abi.ASSUMED; print(a.spe_feature_bit, a.cap_arm_spe, a.exit_rlimit)"
    assert _python(code).stdout.split() == ["None", "None", str(abi.MODEL_EXIT_RLIMIT)]
    out = _python(code, KVMSPE_SPE_FEATURE_BIT="11", KVMSPE_CAP_ARM_SPE="0x100", KVMSPE_EXIT_RLIMIT="44")
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["11", "256", "44"]


@pytest.mark.parametrize(
    ("var", "raw", "match"),
    [
        ("KVMSPE_CAP_ARM_SPE", "many", "expected a decimal or 0x-hex number"),
        ("KVMSPE_EXIT_RLIMIT", "10", "KVM_EXIT_INTR upstream"),
        ("KVMSPE_EXIT_RLIMIT", "-1", "expected a decimal"),
        ("KVMSPE_EXIT_RLIMIT", "99999999999999999999", "at most 12 digits"),
        ("KVMSPE_EXIT_RLIMIT", "0x100000000", "must be an integer in"),
        ("KVMSPE_SPE_FEATURE_BIT", "8", "KVM_ARM_VCPU_HAS_EL2_E2H0"),
        ("KVMSPE_SPE_FEATURE_BIT", "\u0669", "expected a decimal"),
        ("KVMSPE_CAP_ARM_SPE", "208", "KVM_CAP_XSAVE2"),
    ],
)
def test_a_bad_env_var_never_stops_the_import_and_is_refused_when_used(
    var: str, raw: str, match: str
) -> None:
    raw = raw.encode().decode("unicode_escape")
    out = _python("import kvmspe.abi, kvmspe.kvm, kvmspe.cli; print('imported')", **{var: raw})
    assert out.returncode == 0 and out.stdout.strip() == "imported", out.stderr
    code = (
        "from kvmspe import abi\n"
        "try:\n    abi.ASSUMED.check()\n"
        "except abi.AssumedNumberError as e:\n    print(e)\n"
    )
    out = _python(code, **{var: raw})
    assert out.returncode == 0 and out.stdout.startswith(f"{var}="), out
    assert match in out.stdout and len(out.stdout.strip().splitlines()) == 1


# --- structs: the ctypes declarations and the packers derived from them ------------------


@pytest.mark.parametrize(
    ("cls", "packed", "values"),
    [
        (abi.kvm_device_attr, abi.DEVICE_ATTR, (0, 3, 2, 0x7FFF_0000_1000)),
        (abi.kvm_userspace_memory_region, abi.USERSPACE_MEMORY_REGION, (1, 2, 1 << 30, 4096, 0xDEAD_B000)),
        (abi.kvm_create_device, abi.CREATE_DEVICE, (7, 11, 1)),
    ],
)
def test_packer_bytes_are_the_structures_bytes(
    cls: type[ctypes.Structure], packed: struct.Struct, values: tuple[int, ...]
) -> None:
    names = [f[0] for f in cls._fields_]
    c = cls(**dict(zip(names, values, strict=True)))
    assert packed.pack(*values) == bytes(c)


def test_vcpu_init_packer_flattens_the_features_array() -> None:
    c = abi.kvm_vcpu_init(target=5)
    c.features[0] = 1 << 4
    c.features[6] = 1 << 31
    assert abi.VCPU_INIT.pack(5, 1 << 4, 0, 0, 0, 0, 0, 1 << 31) == bytes(c)


def test_kvm_run_offsets_come_from_the_declared_head() -> None:
    assert abi.KVM_RUN_EXIT_REASON_OFFSET == 8
    assert abi.KVM_RUN_EXIT_DATA_OFFSET == 32


def test_packer_refuses_a_layout_with_padding() -> None:
    class padded(ctypes.Structure):  # noqa: N801
        _fields_ = [("a", ctypes.c_uint32), ("b", ctypes.c_uint64)]

    with pytest.raises(ValueError, match="padding"):
        structs.packer(padded)

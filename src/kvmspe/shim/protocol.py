"""The wire format between the preloaded shim (``shim.c``) and the model server.

One ``SOCK_SEQPACKET`` Unix socket per process: the shim sends a fixed-size
:data:`REQUEST` for each KVM call the model must see, and reads one fixed-size
:data:`RESPONSE`. Both sides run on the same machine, so fields are native
endian and every field is naturally aligned (no padding). The shim knows no
KVM number of its own: the server's answer to :data:`OP_HELLO` is the
:data:`CONFIG` table, built from :mod:`kvmspe.abi` (ioctl numbers, attribute
widths, the assumed numbers), so the ABI lives in one place. ``shim.c``
mirrors the indices of that table and the op codes in enums; a test checks
that both agree.

kvmspe's own processes (the real backend's scripted guest) talk to the same
socket in JSON: a message that starts with ``{``.
"""

from __future__ import annotations

import struct

__all__ = [
    "ACTIONS",
    "CONFIG",
    "FLAG_BAD_ADDR",
    "FLAG_RECONNECT",
    "FLAG_SPE",
    "NO_NUMBER",
    "OPS",
    "REQUEST",
    "RESPONSE",
    "config_values",
]

#: op, fd, flags, kind, index, group, attr, value, rlimit (soft RLIMIT_MEMLOCK), aux.
REQUEST = struct.Struct("=IiIIQQQQQQ")
#: err (0 or an errno), action, value, exit reason, excess.
RESPONSE = struct.Struct("=iIQQQ")

#: Op codes: what the shim saw. The order is the C enum ``ks_op``.
OPS = (
    "hello",  # value: pid, flags: FLAG_RECONNECT; answered with the CONFIG table
    "check_extension",  # value: capability (only the SPE capability is sent)
    "create_vm",  # fd: the new VM fd
    "create_vcpu",  # fd: the new VCPU fd, aux: the VM fd, index: the VCPU id
    "vcpu_init",  # fd: VCPU, flags: FLAG_SPE when the SPE bit was set
    "has_attr",  # fd: VCPU, attr
    "get_attr",  # fd: VCPU, attr, flags: FLAG_BAD_ADDR when addr cannot be written
    "set_attr",  # fd: VCPU, attr, value, flags: FLAG_BAD_ADDR when addr cannot be read
    "create_device",  # fd: the device fd, aux: the VM fd, value: device type
    "device_init",  # fd: a vGIC fd whose KVM_DEV_ARM_VGIC_CTRL_INIT succeeded
    "create_irqchip",  # fd: a VM fd whose KVM_CREATE_IRQCHIP succeeded (x86)
    "run",  # fd: VCPU, rlimit
    "dup",  # fd: the new fd, aux: the old one
    "close",  # fd
)
OP = {name: i for i, name in enumerate(OPS)}

#: Actions of a response (the C enum ``ks_action``).
ACTIONS = (
    "pass",  # not the model's: issue the real ioctl as it is
    "answer",  # err/value are the answer; no real ioctl
    "enter",  # KVM_RUN: the model let the VCPU enter; issue the real KVM_RUN
    "exit",  # KVM_RUN: completed without entering; exit reason and excess go to kvm_run
    "track",  # the fd is the model's from now on (create_*: answer 0)
)
ACTION = {name: i for i, name in enumerate(ACTIONS)}

FLAG_BAD_ADDR = 1
FLAG_SPE = 2
#: hello: the same program connects again (it had closed the shim's socket);
#: without it, a pid the server knows is a new program (exec): a fresh start.
FLAG_RECONNECT = 4

#: "No such number" in the CONFIG table (a capability nobody gave, say).
NO_NUMBER = (1 << 64) - 1

#: The CONFIG table's entries, in the order of the C enum ``ks_cfg``.
CONFIG = (
    "version",
    "kvmio",
    "ioctl_check_extension",
    "ioctl_create_vm",
    "ioctl_create_vcpu",
    "ioctl_run",
    "ioctl_arm_vcpu_init",
    "ioctl_set_device_attr",
    "ioctl_get_device_attr",
    "ioctl_has_device_attr",
    "ioctl_create_device",
    "ioctl_create_irqchip",
    "spe_group",
    "cap_arm_spe",
    "spe_feature_bit",
    "exit_rlimit",
    "vcpu_init_size",
    "vgic_v3_type",
    "vgic_v2_type",
    "vgic_grp_ctrl",
    "vgic_ctrl_init",
    "run_exit_reason_offset",
    "run_excess_offset",
    "all_vcpus_spe",
    "attr_widths",  # 8 attributes, one byte each: 0 unknown, 0xff no value, else bytes
    "ioctl_set_signal_mask",
)
VERSION = 1


def config_values(values: dict[str, int]) -> bytes:
    """The CONFIG table as the shim reads it: one ``u64`` per entry, in order."""
    missing = [name for name in CONFIG if name not in values]
    if missing:
        raise ValueError(f"CONFIG entries missing: {', '.join(missing)}")
    return struct.pack(f"={len(CONFIG)}Q", *(values[name] for name in CONFIG))

"""The C structs the ioctls take, and offsets into struct kvm_run [uapi]."""

from __future__ import annotations

import struct

# --- structs ------------------------------------------------------------------

#: struct kvm_device_attr { __u32 flags; __u32 group; __u64 attr; __u64 addr; }
DEVICE_ATTR = struct.Struct("=IIQQ")
#: struct kvm_vcpu_init { __u32 target; __u32 features[7]; }
VCPU_INIT = struct.Struct("=I7I")
#: The value behind kvm_device_attr.addr: a __u64 (max buffer size) or an int (IRQ, SPU).
U64 = struct.Struct("=Q")
INT = struct.Struct("=i")
#: struct kvm_run starts with two __u8, six bytes of padding, then __u32 exit_reason.
KVM_RUN_EXIT_REASON_OFFSET = 8
#: The __u32 exit_reason itself.
U32 = struct.Struct("=I")
#: struct kvm_run: after exit_reason come two __u8, a __u16, and two __u64
#: (cr8, apic_base); the per-exit union starts at byte 32 [uapi].
KVM_RUN_EXIT_DATA_OFFSET = 32
#: KVM_EXIT_RLIMIT data: the excess in bytes as the first __u64 of the
#: per-exit union [assumed: series patch 32 names the data, not its layout].
KVM_RUN_RLIMIT_EXCESS_OFFSET = KVM_RUN_EXIT_DATA_OFFSET
#: struct kvm_userspace_memory_region { __u32 slot; __u32 flags;
#: __u64 guest_phys_addr; __u64 memory_size; __u64 userspace_addr; }
USERSPACE_MEMORY_REGION = struct.Struct("=IIQQQ")
#: struct kvm_create_device { __u32 type; __u32 fd; __u32 flags; }, 12 bytes;
#: the kernel writes the new device's fd into ``fd`` [uapi: include/uapi/linux/kvm.h].
CREATE_DEVICE = struct.Struct("=III")

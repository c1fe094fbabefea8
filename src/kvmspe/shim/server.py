"""The model server: kvmspe's model answering the SPE calls of processes under the shim.

:class:`ModelServer` listens on a Unix socket in a private directory and runs
one thread. Each process that loads the shim connects once (and again after
it closed every descriptor); its state is kept by its pid (``SO_PEERCRED``):
a fresh :class:`kvmspe.model.kernel.Host` of its own (RLIMIT_MEMLOCK is per
process), its VMs and VCPUs by file descriptor, and its call counts for the
injected faults. Every decision is the model's (:mod:`kvmspe.model.rules`);
this module only maps descriptors to model objects, reads what the model
needs from the real process (its soft RLIMIT_MEMLOCK, sent with each call,
and its own VmLck), and records the :class:`~kvmspe.shim.transcript.Entry`
of each call.

The model's irqchip is the real one: a VM's is there once its vGIC's
KVM_DEV_ARM_VGIC_CTRL_INIT succeeded (arm64), or once KVM_CREATE_IRQCHIP
succeeded (x86, which has no vGIC; a stand-in, so the whole path can run on
any KVM host).
"""

from __future__ import annotations

import errno
import json
import os
import selectors
import shutil
import socket
import struct
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

from .. import abi
from ..arch.stage1 import Stage1
from ..errors import KvmError, errno_name
from ..model.kernel import Host
from ..model.kernel import Vcpu as ModelVcpu
from ..model.kernel import Vm as ModelVm
from . import protocol
from .protocol import ACTION, NO_NUMBER, OP, REQUEST, RESPONSE
from .script import Fault, GuestAction
from .transcript import Entry

__all__ = ["ModelServer", "Numbers"]

_U64 = (1 << 64) - 1
_PEERCRED = struct.Struct("3i")


@dataclass(frozen=True)
class Numbers:
    """The numbers the series does not publish, as given for this run (None: not given)."""

    spe_feature_bit: int | None
    cap_arm_spe: int | None
    exit_rlimit: int
    #: No KVM_ARM_VCPU_INIT on this architecture: every VCPU has the SPE feature.
    all_vcpus_spe: bool


@dataclass
class _Vm:
    model: ModelVm
    number: int
    refs: set[int] = field(default_factory=set)


@dataclass
class _Vcpu:
    vm: _Vm
    index: int
    model: ModelVcpu | None = None
    entries: int = 0


@dataclass
class _Process:
    pid: int
    host: Host
    fds: dict[int, _Vm | _Vcpu | tuple[str, _Vm]] = field(default_factory=dict)
    counts: dict[tuple[str, int | None], int] = field(default_factory=dict)
    real_locked: int = 0
    vms: int = 0


def _config(numbers: Numbers) -> bytes:
    widths = 0
    for (group, attr), info in abi.ATTRS.items():
        if group == abi.KVM_ARM_VCPU_SPE_CTRL and attr < 8:
            widths |= (0xFF if info.value is None else info.value.size) << (8 * attr)
    given = {
        "version": protocol.VERSION,
        "kvmio": abi.KVMIO,
        "ioctl_check_extension": abi.KVM_CHECK_EXTENSION,
        "ioctl_create_vm": abi.KVM_CREATE_VM,
        "ioctl_create_vcpu": abi.KVM_CREATE_VCPU,
        "ioctl_run": abi.KVM_RUN,
        "ioctl_arm_vcpu_init": abi.KVM_ARM_VCPU_INIT,
        "ioctl_set_device_attr": abi.KVM_SET_DEVICE_ATTR,
        "ioctl_get_device_attr": abi.KVM_GET_DEVICE_ATTR,
        "ioctl_has_device_attr": abi.KVM_HAS_DEVICE_ATTR,
        "ioctl_create_device": abi.KVM_CREATE_DEVICE,
        "ioctl_create_irqchip": abi.KVM_CREATE_IRQCHIP,
        "spe_group": abi.KVM_ARM_VCPU_SPE_CTRL,
        "cap_arm_spe": NO_NUMBER if numbers.cap_arm_spe is None else numbers.cap_arm_spe,
        "spe_feature_bit": NO_NUMBER if numbers.spe_feature_bit is None else numbers.spe_feature_bit,
        "exit_rlimit": numbers.exit_rlimit,
        "vcpu_init_size": abi.VCPU_INIT.size,
        "vgic_v3_type": abi.KVM_DEV_TYPE_ARM_VGIC_V3,
        "vgic_v2_type": abi.KVM_DEV_TYPE_ARM_VGIC_V2,
        "vgic_grp_ctrl": abi.KVM_DEV_ARM_VGIC_GRP_CTRL,
        "vgic_ctrl_init": abi.KVM_DEV_ARM_VGIC_CTRL_INIT,
        "run_exit_reason_offset": abi.KVM_RUN_EXIT_REASON_OFFSET,
        "run_excess_offset": abi.KVM_RUN_RLIMIT_EXCESS_OFFSET,
        "all_vcpus_spe": int(numbers.all_vcpus_spe),
        "attr_widths": widths,
        "ioctl_set_signal_mask": abi.KVM_SET_SIGNAL_MASK,
    }
    return protocol.config_values(given)


def _attr_name(attr: int) -> str:
    info = abi.attr_info(abi.KVM_ARM_VCPU_SPE_CTRL, attr)
    return info.name if info is not None else f"KVM_ARM_VCPU_SPE_CTRL attribute {attr}"


def _signed(attr: int, raw: int) -> int:
    """The value the shim read, as the attribute's C type holds it."""
    info = abi.attr_info(abi.KVM_ARM_VCPU_SPE_CTRL, attr)
    if info is not None and info.value is not None and info.value.format.endswith("i"):
        return raw - (1 << 64) if raw >> 63 else raw
    return raw


class _Answer(Exception):
    """Ends a request with this response (errno, or an exit)."""

    def __init__(
        self, err: int = 0, action: str = "answer", value: int = 0, reason: int = 0, excess: int = 0
    ):
        super().__init__(err)
        self.response = RESPONSE.pack(err, ACTION[action], value & _U64, reason, excess)


class ModelServer:
    """The model behind the shim: a socket, one thread, a transcript.

    ``host`` makes a fresh model host for each process; ``faults`` and
    ``guest`` are the run's script (:mod:`kvmspe.shim.script`). Use it as a
    context manager: the socket's directory is removed and the thread joined
    when it ends. :attr:`path` is the socket to give as ``KVMSPE_SHIM_SOCKET``.
    """

    def __init__(
        self,
        host: Callable[[], Host],
        numbers: Numbers,
        *,
        faults: tuple[Fault, ...] = (),
        guest: tuple[GuestAction, ...] = (),
    ):
        self._new_host = host
        self._numbers = numbers
        self._config = _config(numbers)
        self._faults = faults
        self._guest = guest
        self.transcript: list[Entry] = []
        self._procs: dict[int, _Process] = {}
        self._lock = threading.Lock()
        self._dir = tempfile.mkdtemp(prefix="kvmspe-shim-")
        self.path = os.path.join(self._dir, "model.sock")
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
        self._sock.bind(self.path)
        self._sock.listen(64)
        self._stop_r, self._stop_w = os.pipe2(os.O_CLOEXEC)
        self._thread = threading.Thread(target=self._serve, name="kvmspe-shim-model", daemon=True)
        self.error: BaseException | None = None
        #: How many times a process loaded the shim and connected.
        self.clients = 0
        #: Requests the model failed on (a bug of kvmspe's): each answered EIO.
        self.failures: list[str] = []

    def __enter__(self) -> ModelServer:
        self._thread.start()
        return self

    def __exit__(
        self, t: type[BaseException] | None, v: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        """Stop the thread, close every socket, remove the directory and what it holds. Safe twice."""
        if self._stop_w >= 0:
            os.write(self._stop_w, b"x")
            if self._thread.is_alive():
                self._thread.join(10)
            os.close(self._stop_w)
            os.close(self._stop_r)
            self._stop_w = -1
        self._sock.close()
        # The directory is the server's own (mkdtemp): the socket, and what the
        # run put next to it (the SPE units shown in sysfs), go with it.
        shutil.rmtree(self._dir, ignore_errors=True)

    # -- the loop -----------------------------------------------------------------------

    def _serve(self) -> None:
        sel = selectors.DefaultSelector()
        sel.register(self._sock, selectors.EVENT_READ)
        sel.register(self._stop_r, selectors.EVENT_READ)
        conns: list[socket.socket] = []
        try:
            while True:
                for key, _ in sel.select():
                    if key.fileobj == self._stop_r:
                        return
                    if key.fileobj is self._sock:
                        conn, _ = self._sock.accept()
                        conn.set_inheritable(False)
                        conns.append(conn)
                        sel.register(conn, selectors.EVENT_READ)
                        continue
                    conn = key.fileobj  # type: ignore[assignment]
                    assert isinstance(conn, socket.socket)
                    if not self._serve_one(conn):
                        sel.unregister(conn)
                        conns.remove(conn)
                        conn.close()
        except BaseException as exc:  # noqa: BLE001 - reported by the run, not lost with the thread
            self.error = exc
        finally:
            for conn in conns:
                conn.close()
            sel.close()

    def _serve_one(self, conn: socket.socket) -> bool:
        try:
            data = conn.recv(65536)
        except OSError:
            return False
        if not data:
            return False
        pid = _PEERCRED.unpack(conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _PEERCRED.size))[0]
        with self._lock:
            if data[:1] == b"{":
                reply = self._json(pid, data)
            elif len(data) == REQUEST.size:
                reply = self._request(pid, data)
            else:
                return False
        try:
            # A shim waits for each answer before it asks again, so its queue
            # holds none: a client whose answers pile up is not reading them,
            # and must not stall the server for every other process.
            conn.send(reply, socket.MSG_DONTWAIT)
        except OSError:
            return False
        return True

    def _process(self, pid: int) -> _Process:
        proc = self._procs.get(pid)
        if proc is None:
            proc = self._procs[pid] = _Process(pid, self._new_host())
        return proc

    def _new_program(self, pid: int) -> None:
        """A program's first connection: a process the server knew under this
        pid ran a new program (exec closed its KVM descriptors, all O_CLOEXEC)
        or its pid was reused. Its VMs are gone, and what they pinned with them."""
        old = self._procs.pop(pid, None)
        if old is None:
            return
        vms = {id(_vm(obj)): _vm(obj) for obj in old.fds.values()}
        for vm in sorted(vms.values(), key=lambda v: v.number):
            vm.model.close()
            self._record(old, call="destroy", target=f"VM {vm.number}", vm=vm.number).answer(
                "ok", why="the process started a new program (exec): its descriptors are gone"
            )

    def _record(self, proc: _Process, **fields: Any) -> Entry:
        entry = Entry(seq=len(self.transcript) + 1, pid=proc.pid, **fields)
        self.transcript.append(entry)
        return entry

    # -- binary requests from the shim ---------------------------------------------------

    def _request(self, pid: int, data: bytes) -> bytes:
        op, fd, flags, _kind, index, group, attr, value, rlimit, aux = REQUEST.unpack(data)
        if op == OP["hello"]:
            if not flags & protocol.FLAG_RECONNECT:
                self._new_program(pid)
            self._process(pid)
            self.clients += 1
            return self._config
        proc = self._process(pid)
        self._sync_memlock(proc, rlimit)
        handler = _HANDLERS.get(op)
        if handler is None:
            return RESPONSE.pack(0, ACTION["pass"], 0, 0, 0)
        try:
            handler(self, proc, _Call(fd, flags, index, group, attr, value, aux))
        except _Answer as answer:
            return answer.response
        except Exception as exc:  # noqa: BLE001 - a bug of ours must not pass for the kernel's answer
            why = " ".join(f"{type(exc).__name__}: {exc}".split())
            self.failures.append(why)
            entry = self._record(proc, call=protocol.OPS[op], target="(kvmspe's model failed)")
            entry.answer("EIO", why=why)
            return RESPONSE.pack(errno.EIO, ACTION["answer"], 0, 0, 0)
        return RESPONSE.pack(0, ACTION["pass"], 0, 0, 0)

    def _sync_memlock(self, proc: _Process, rlimit: int) -> None:
        """The model host's limit and locked memory as the process has them now:
        its soft RLIMIT_MEMLOCK, its own VmLck, plus what the model pinned."""
        from ..host.discovery import read_vm_lck

        host = proc.host
        real, _ = read_vm_lck(pid=proc.pid)
        model_locked = host.locked_bytes - proc.real_locked
        proc.real_locked = real or 0
        host.locked_bytes = proc.real_locked + model_locked
        host.set_memlock_limit(None if rlimit == NO_NUMBER else rlimit)

    def _fault(self, proc: _Process, call: str, attr: int | None) -> Fault | None:
        key = (call, attr)
        proc.counts[key] = count = proc.counts.get(key, 0) + 1
        return next((f for f in self._faults if f.matches(call, attr, count)), None)

    def _vcpu(self, proc: _Process, fd: int) -> _Vcpu:
        obj = proc.fds.get(fd)
        if not isinstance(obj, _Vcpu):
            raise _Answer(action="pass")
        return obj

    def _vm_of(self, proc: _Process, fd: int) -> _Vm:
        obj = proc.fds.get(fd)
        if not isinstance(obj, _Vm):
            raise _Answer(action="pass")
        return obj

    def _check_extension(self, proc: _Process, c: _Call) -> None:
        fault = self._fault(proc, "check_extension", None)
        entry = self._record(proc, call="KVM_CHECK_EXTENSION", target="KVM_CAP_ARM_SPE", value=c.value)
        if fault is not None and fault.errno is not None:
            entry.answer(errno_name(fault.errno), injected=fault.spec)
            raise _Answer(fault.errno)
        entry.answer("1", why="the shim's KVM has the SPE interface")
        raise _Answer(value=1)

    def _create_vm(self, proc: _Process, c: _Call) -> None:
        proc.vms += 1
        vm = _Vm(proc.host.create_vm(irqchip=False), proc.vms, {c.fd})
        proc.fds[c.fd] = vm
        self._record(proc, call="KVM_CREATE_VM", target=f"VM {vm.number}").answer(f"fd {c.fd}")
        raise _Answer(action="track")

    def _create_vcpu(self, proc: _Process, c: _Call) -> None:
        vm = self._vm_of(proc, int(c.aux))
        vcpu = _Vcpu(vm, int(c.index))
        entry = self._record(proc, call="KVM_CREATE_VCPU", target=f"VCPU {c.index}", vm=vm.number)
        if self._numbers.all_vcpus_spe:
            try:
                vcpu.model = vm.model.create_vcpu(vcpu.index, spe=True)
            except KvmError as exc:
                entry.answer(exc.name, why=str(exc.strerror))
                raise _Answer(exc.errno or 0) from None
            entry.answer(f"fd {c.fd}", why="with the SPE feature: this architecture has no KVM_ARM_VCPU_INIT")
        else:
            entry.answer(f"fd {c.fd}")
        vm.refs.add(c.fd)
        proc.fds[c.fd] = vcpu
        raise _Answer(action="track")

    def _vcpu_init(self, proc: _Process, c: _Call) -> None:
        vcpu = self._vcpu(proc, c.fd)
        spe = bool(c.flags & protocol.FLAG_SPE)
        target = "with the SPE feature" if spe else "without the SPE feature"
        entry = self._record(
            proc, call="KVM_ARM_VCPU_INIT", target=target, vcpu=vcpu.index, vm=vcpu.vm.number
        )
        fault = self._fault(proc, "init", None) if spe else None
        if fault is not None and fault.errno is not None:
            entry.answer(errno_name(fault.errno), injected=fault.spec)
            raise _Answer(fault.errno)
        if vcpu.model is not None:
            if vcpu.model.spe != spe:
                have = "with" if vcpu.model.spe else "without"
                why = f"VCPU {vcpu.index} was initialised {have} the SPE feature; its features cannot change"
                entry.answer("EINVAL", why=why)
                raise _Answer(errno.EINVAL)
            entry.answer("ok", why="the same features again (the kernel resets the VCPU)")
            raise _Answer()
        try:
            vcpu.model = vcpu.vm.model.create_vcpu(vcpu.index, spe=spe)
        except KvmError as exc:
            entry.answer(exc.name, why=str(exc.strerror))
            raise _Answer(exc.errno or 0) from None
        entry.answer(
            "ok", why="the SPE bit is stripped; the kernel initialises an ordinary VCPU" if spe else ""
        )
        raise _Answer()

    def _attr_call(self, proc: _Process, c: _Call, call: str) -> None:
        vcpu = self._vcpu(proc, c.fd)
        if vcpu.model is None:
            entry = self._record(proc, call=call.upper(), target=_attr_name(c.attr), vcpu=vcpu.index)
            entry.answer(
                "kernel", why="the VCPU is not initialised yet (KVM_ARM_VCPU_INIT): the kernel answers"
            )
            raise _Answer(action="pass")
        model = vcpu.model
        bad = bool(c.flags & protocol.FLAG_BAD_ADDR)
        value: object = None
        info = abi.attr_info(abi.KVM_ARM_VCPU_SPE_CTRL, c.attr)
        # The shim reads a value only for an attribute that has one: for an
        # attribute the group does not have (the kernel reads nothing either)
        # there is no value to show or to give the model.
        if call == "set" and info is not None and info.value is not None:
            value = abi.BAD_ADDRESS if bad else _signed(c.attr, c.value)
        entry = self._record(
            proc,
            call=call.upper(),
            target=_attr_name(c.attr),
            value=value if isinstance(value, int) else None,
            vcpu=vcpu.index,
            vm=vcpu.vm.number,
        )
        if bad:
            entry.bad_address = True
        fault = self._fault(proc, call, c.attr)
        if fault is not None and fault.errno is not None:
            entry.answer(errno_name(fault.errno), injected=fault.spec)
            raise _Answer(fault.errno)
        model.decided = None
        try:
            if call == "has":
                got = model.has_device_attr(abi.KVM_ARM_VCPU_SPE_CTRL, c.attr)
                self._decided(entry, model, "true" if got else "false")
                raise _Answer(0 if got else errno.ENXIO)  # as the kernel's HAS says "no"
            if call == "get":
                addr = abi.BAD_ADDRESS if bad else None
                result = model.get_device_attr(abi.KVM_ARM_VCPU_SPE_CTRL, c.attr, addr)
                self._decided(entry, model, f"{result:#x}" if result >= 10 else str(result))
                raise _Answer(value=result)
            model.set_device_attr(abi.KVM_ARM_VCPU_SPE_CTRL, c.attr, value)
        except KvmError as exc:
            entry.answer(exc.name, rule=exc.rule or "", why=str(exc.strerror))
            raise _Answer(exc.errno or 0) from None
        self._decided(entry, model, "ok")
        raise _Answer()

    @staticmethod
    def _decided(entry: Entry, model: ModelVcpu, result: str) -> None:
        d = model.decided
        if d is not None:
            entry.answer(result, rule=d.rule, why=d.message)
        else:
            entry.answer(result)

    def _has(self, proc: _Process, c: _Call) -> None:
        self._attr_call(proc, c, "has")

    def _get(self, proc: _Process, c: _Call) -> None:
        self._attr_call(proc, c, "get")

    def _set(self, proc: _Process, c: _Call) -> None:
        self._attr_call(proc, c, "set")

    def _create_device(self, proc: _Process, c: _Call) -> None:
        vm = self._vm_of(proc, int(c.aux))
        if c.value not in (abi.KVM_DEV_TYPE_ARM_VGIC_V3, abi.KVM_DEV_TYPE_ARM_VGIC_V2):
            raise _Answer(action="pass")
        name = "GICv3" if c.value == abi.KVM_DEV_TYPE_ARM_VGIC_V3 else "GICv2"
        self._record(proc, call="KVM_CREATE_DEVICE", target=name, vm=vm.number).answer(f"fd {c.fd}")
        vm.refs.add(c.fd)
        proc.fds[c.fd] = ("vgic", vm)
        raise _Answer(action="track")

    def _irqchip_ready(self, proc: _Process, vm: _Vm, call: str, target: str, why: str) -> None:
        """The model's VM has its in-kernel irqchip from now on (the kernel said yes)."""
        vm.model.irqchip = True
        self._record(proc, call=call, target=target, vm=vm.number).answer("ok", why=why)
        raise _Answer()

    def _device_init(self, proc: _Process, c: _Call) -> None:
        obj = proc.fds.get(c.fd)
        if not isinstance(obj, tuple):
            raise _Answer(action="pass")
        why = "the VM has its in-kernel irqchip"
        self._irqchip_ready(proc, obj[1], "KVM_DEV_ARM_VGIC_CTRL_INIT", "vGIC", why)

    def _create_irqchip(self, proc: _Process, c: _Call) -> None:
        why = "the VM has its in-kernel irqchip (x86's, standing in for a vGIC)"
        self._irqchip_ready(proc, self._vm_of(proc, c.fd), "KVM_CREATE_IRQCHIP", "irqchip", why)

    def _run(self, proc: _Process, c: _Call) -> None:
        vcpu = self._vcpu(proc, c.fd)
        if vcpu.model is None:
            raise _Answer(action="pass")
        model = vcpu.model
        vcpu.entries += 1
        for action in self._guest:
            if action.entry == vcpu.entries and action.vcpu in (None, vcpu.index):
                self._guest_action(proc, vcpu, action)
        entry = self._record(
            proc, call="KVM_RUN", target=f"entry {vcpu.entries}", vcpu=vcpu.index, vm=vcpu.vm.number
        )
        fault = self._fault(proc, "run", None)
        if fault is not None:
            if fault.rlimit_excess is not None:
                entry.answer(f"exit KVM_EXIT_RLIMIT excess={fault.rlimit_excess:#x}", injected=fault.spec)
                raise _Answer(action="exit", reason=self._numbers.exit_rlimit, excess=fault.rlimit_excess)
            assert fault.errno is not None
            entry.answer(errno_name(fault.errno), injected=fault.spec)
            raise _Answer(fault.errno)
        before = model.pinned_bytes
        model.decided = None
        try:
            exit_ = model.run()
        except KvmError as exc:
            entry.answer(exc.name, rule=exc.rule or "", why=str(exc.strerror))
            raise _Answer(exc.errno or 0) from None
        if exit_.is_rlimit:
            excess = exit_.rlimit_excess or 0
            why = f"pinning the enabled buffer exceeds RLIMIT_MEMLOCK by {excess:#x} bytes; nothing is pinned"
            entry.answer(f"exit KVM_EXIT_RLIMIT excess={excess:#x}", rule="memlock", why=why)
            raise _Answer(action="exit", reason=self._numbers.exit_rlimit, excess=excess)
        why = "the model lets the VCPU enter; the kernel runs it"
        if model.pinned_bytes != before:
            why += f" (pinned {model.pinned_bytes:#x} bytes for its buffer)"
        entry.answer("enter", why=why)
        raise _Answer(action="enter")

    def _guest_action(self, proc: _Process, vcpu: _Vcpu, action: GuestAction) -> None:
        assert vcpu.model is not None
        entry = self._record(proc, call="guest", target=action.op, vcpu=vcpu.index, vm=vcpu.vm.number)
        try:
            if action.op == "enable":
                base = action.base_for(vcpu.index)
                vcpu.model.enable_buffer(base, action.size)
                entry.answer(
                    "ok", why=f"--guest {action.spec}: a {action.size:#x}-byte buffer at VA {base:#x}"
                )
            else:
                vcpu.model.disable_buffer()
                entry.answer("ok", why=f"--guest {action.spec}")
        except ValueError as exc:
            entry.answer("refused", why=f"--guest {action.spec}: {exc}")

    def _dup(self, proc: _Process, c: _Call) -> None:
        obj = proc.fds.get(int(c.aux))
        if obj is None:
            raise _Answer(action="pass")
        self._forget(proc, c.fd)
        proc.fds[c.fd] = obj
        _vm(obj).refs.add(c.fd)
        raise _Answer(action="track")

    def _close(self, proc: _Process, c: _Call) -> None:
        self._forget(proc, c.fd)
        raise _Answer()

    def _forget(self, proc: _Process, fd: int) -> None:
        obj = proc.fds.pop(fd, None)
        if obj is None:
            return
        vm = _vm(obj)
        vm.refs.discard(fd)
        if not vm.refs:
            # The kernel destroys a VM once no descriptor refers to it.
            vm.model.close()
            self._record(proc, call="destroy", target=f"VM {vm.number}", vm=vm.number).answer(
                "ok", why="its last descriptor was closed: everything it pinned is released"
            )

    # -- JSON requests from kvmspe's own processes --------------------------------------

    def _json(self, pid: int, data: bytes) -> bytes:
        try:
            msg = json.loads(data)
            if not isinstance(msg, dict):
                raise TypeError(f"a request is a JSON object, got {type(msg).__name__}")
            reply = self._guest_request(self._process(pid), msg)
        except (ValueError, KeyError, TypeError, KvmError) as exc:
            reply = {"error": " ".join(str(exc).split())}
        except Exception as exc:  # noqa: BLE001 - any process may write here: refuse it, keep serving
            # Too deep a document is a RecursionError, an infinite number an OverflowError.
            reply = {"error": " ".join(f"{type(exc).__name__}: {exc}".split())[:500]}
        return json.dumps(reply).encode()

    def _guest_request(self, proc: _Process, msg: dict[str, Any]) -> dict[str, Any]:
        """The scripted guest of one VCPU (``fd``): what kvmspe's real backend asks for."""
        if msg.get("op") == "hello":
            return {"ok": True, "exit_rlimit": self._numbers.exit_rlimit}
        obj = proc.fds.get(int(msg["fd"]))
        if not isinstance(obj, _Vcpu) or obj.model is None:
            raise ValueError(f"fd {msg['fd']} is not an initialised SPE VCPU of this process")
        model = obj.model
        what = msg["what"]
        entry = self._record(proc, call="guest", target=str(what), vcpu=obj.index, vm=obj.vm.number)
        if what == "enable":
            holes = tuple((int(a), int(b)) for a, b in msg.get("unmapped", ()))
            stage1 = Stage1(unmapped=holes) if holes else None
            model.enable_buffer(int(msg["base"]), int(msg["size"]), stage1)
            entry.answer("ok", why=f"a {int(msg['size']):#x}-byte buffer at VA {int(msg['base']):#x}")
            return {"ok": True}
        if what == "disable":
            model.disable_buffer()
            entry.answer("ok")
            return {"ok": True}
        if what == "read":
            value = model.guest_read(str(msg["reg"]))
            entry.answer(f"{value:#x}", why=str(msg["reg"]))
            return {"value": value}
        if what == "state":
            entry.answer("ok")
            return {
                "pinned": model.pinned_bytes,
                "vm_lck": proc.host.vm_lck,
                "locked": proc.host.locked_bytes,
            }
        raise ValueError(f"unknown guest request {what!r}; accepted: enable, disable, read, state")


@dataclass(frozen=True)
class _Call:
    fd: int
    flags: int
    index: int
    group: int
    attr: int
    value: int
    aux: int


def _vm(obj: _Vm | _Vcpu | tuple[str, _Vm]) -> _Vm:
    if isinstance(obj, _Vm):
        return obj
    if isinstance(obj, _Vcpu):
        return obj.vm
    return obj[1]


_HANDLERS: dict[int, Callable[[ModelServer, _Process, _Call], None]] = {
    OP["check_extension"]: ModelServer._check_extension,
    OP["create_vm"]: ModelServer._create_vm,
    OP["create_vcpu"]: ModelServer._create_vcpu,
    OP["vcpu_init"]: ModelServer._vcpu_init,
    OP["has_attr"]: ModelServer._has,
    OP["get_attr"]: ModelServer._get,
    OP["set_attr"]: ModelServer._set,
    OP["create_device"]: ModelServer._create_device,
    OP["device_init"]: ModelServer._device_init,
    OP["create_irqchip"]: ModelServer._create_irqchip,
    OP["run"]: ModelServer._run,
    OP["dup"]: ModelServer._dup,
    OP["close"]: ModelServer._close,
}

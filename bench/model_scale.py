"""Time the kernel model at scale and the planner per plan.

``measure()`` returns one dict per figure (``name``, ``unit`` (seconds),
``median``, ``min``, ``max``, ``runs``, ``samples``, ``note``); run as a
script it prints a table.
Figures: modelling 512 VCPUs that each enable a 4 GiB buffer (create the VM,
configure, enable, run, all pinned), and one :func:`kvmspe.planner.plan`.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

from kvmspe import abi
from kvmspe.model.kernel import Host, Spu
from kvmspe.planner import plan

GiB = 1 << 30
VCPUS = 512
SIZE = 4 * GiB


def model_512_vcpus() -> int:
    """Configure 512 VCPUs, enable a 4 GiB buffer on each, run them all; return locked bytes."""
    host = Host(4096, [Spu(1, 0)])
    vm = host.create_vm()
    ctrl = abi.KVM_ARM_VCPU_SPE_CTRL
    for i in range(VCPUS):
        vcpu = vm.create_vcpu()
        vcpu.set_device_attr(ctrl, abi.KVM_ARM_VCPU_SPE_IRQ, 21)
        if i == 0:
            vcpu.set_device_attr(ctrl, abi.KVM_ARM_VCPU_SPE_SPU, 1)
            vcpu.set_device_attr(ctrl, abi.KVM_ARM_VCPU_SPE_MAX_BUFFER_SIZE, SIZE)
        vcpu.set_device_attr(ctrl, abi.KVM_ARM_VCPU_SPE_INIT, None)
    for i, vcpu in enumerate(vm.vcpus):
        vcpu.enable_buffer(i * SIZE, SIZE)
        exit_ = vcpu.run()
        assert not exit_.is_rlimit
    locked = host.locked_bytes
    assert locked >= VCPUS * SIZE
    vm.close()
    return locked


def one_plan() -> int:
    p = plan(VCPUS, SIZE, page_size=65536, spu_limit=0, granule=4096)
    assert p.memlock_limit is not None
    return p.memlock_limit


def _time(fn: Callable[[], object], runs: int, inner: int) -> list[float]:
    out = []
    for _ in range(runs):
        t0 = time.perf_counter()
        for _ in range(inner):
            fn()
        out.append((time.perf_counter() - t0) / inner)
    return out


def measure(runs: int = 15) -> list[dict[str, Any]]:
    """Median/min/max seconds of each figure over ``runs`` repetitions."""
    figures = [
        ("model 512 VCPUs x 4 GiB buffers", model_512_vcpus, 1, f"{VCPUS} VCPUs, 4 KiB pages"),
        ("planner, one plan", one_plan, 50, f"{VCPUS} VCPUs, 4 GiB, 64 KiB pages; mean of 50 per run"),
    ]
    results = []
    for name, fn, inner, detail in figures:
        fn()  # warm up
        times = _time(fn, runs, inner)
        results.append(
            {
                "name": name,
                "unit": "s",
                "median": statistics.median(times),
                "min": min(times),
                "max": max(times),
                "runs": runs,
                "samples": times,
                "note": detail,
            }
        )
    return results


def _fmt(seconds: float) -> str:
    if seconds >= 1:
        return f"{seconds:.3f} s"
    if seconds >= 1e-3:
        return f"{seconds * 1e3:.2f} ms"
    return f"{seconds * 1e6:.1f} us"


if __name__ == "__main__":
    rows = measure()
    width = max(len(r["name"]) for r in rows)
    print(f"{'figure'.ljust(width)}  {'median':>10}  {'min':>10}  {'max':>10}  runs")
    for r in rows:
        print(
            f"{r['name'].ljust(width)}  {_fmt(r['median']):>10}  {_fmt(r['min']):>10}"
            f"  {_fmt(r['max']):>10}  {r['runs']}"
        )

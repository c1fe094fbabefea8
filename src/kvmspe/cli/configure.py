"""``kvmspe configure``: the bring-up of :func:`kvmspe.vmm.bring_up`, step by step, for
people and in JSON, with what to do about a step the kernel refused."""

from __future__ import annotations

from ..units import format_limit, format_size
from .args import UsageError
from .output import emit, sz

TYPE_CHECKING = False
if TYPE_CHECKING:
    import argparse
    from collections.abc import Sequence

    from ..vmm import BackendChoice, BringUpResult, BringUpStep
    from .args import Doc

    #: A step as shown: the step, and its detail with any hint added.
    Shown = tuple[BringUpStep, str]
    #: A line of steps: the VCPUs, ok, the text, the detail, whether it is a VCPU's HAS+SET pairs.
    Row = tuple[list[int], bool, str, str, bool]

__all__ = ["cmd_configure"]

#: What to do about a configuration step the kernel refused, by its errno.
_HINTS = {
    "EDOM": "'kvmspe round SIZE' gives the nearest sizes KVM accepts",
    "ENOMEM": "raise RLIMIT_MEMLOCK: --raise-memlock, or a larger --memlock on the model",
    "ERANGE": "the SPU limits the size: see 'kvmspe probe'",
}

#: What to do when the bring-up stopped, by :attr:`kvmspe.vmm.BringUpResult.stop`.
_STOP_HINTS = {"rlimit": "pass --raise-memlock to raise the limit and re-enter"}


def cmd_configure(args: argparse.Namespace) -> int:
    from .. import vmm

    _check_options(args)
    choice = vmm.choose_backend(
        args.backend, profile=args.profile, memlock_limit=args.memlock, locked=args.locked or 0
    )
    r = vmm.bring_up(
        choice,
        vcpus=args.vcpus,
        irq=args.irq,
        spu=args.spu,
        max_buffer_size=args.max_buffer_size,
        raise_memlock=args.raise_memlock,
        case=args.case,
        enable_buffer=args.enable_buffer,
        strict_placement=args.strict_placement,
    )
    shown: list[Shown] = []
    for st in r.steps:
        hint = _HINTS.get(st.errno_name or "") if not st.ok else None
        shown.append((st, st.detail + (f"; {hint}" if hint else "")))
    error = r.error
    if error is not None and r.stop is not None:
        error = f"{error}; {_STOP_HINTS[r.stop]}"
    doc = _document(args, choice, r, shown, error)
    return emit(args, doc, _lines(args, r, shown, error), 0 if r.ok else 1)


def _check_options(args: argparse.Namespace) -> None:
    """Refuse options the chosen backend cannot honour, before any work."""
    from .. import vmm

    if args.enable_buffer is not None and args.backend == "kvm" and not vmm._guest_scriptable():
        raise UsageError(
            "--enable-buffer simulates the guest, which only the model can, or the real backend under"
            " kvmspe's shim: use --backend model, or run under 'kvmspe shim run'"
        )
    model_only = [
        opt
        for opt, value in (
            ("--profile", args.profile),
            ("--memlock", args.memlock),
            ("--locked", args.locked),
        )
        if value is not None
    ]
    if model_only and args.backend == "kvm":
        raise UsageError(
            f"{', '.join(model_only)}: only for the model, which the real kernel does not use"
            " (its host is this one, its RLIMIT_MEMLOCK this process's); use --backend model or auto"
        )
    if args.enable_buffer is not None:
        size = args.enable_buffer or args.max_buffer_size
        if size == 0 or size % 4096:
            raise UsageError(f"--enable-buffer {size:#x}: a buffer is a non-zero multiple of 4 KiB")


def _document(
    args: argparse.Namespace,
    choice: BackendChoice,
    r: BringUpResult,
    shown: Sequence[Shown],
    error: str | None,
) -> Doc:
    """The JSON document of ``configure``."""
    return {
        "ok": r.ok,
        "backend": choice.name,
        "backend_reason": choice.reason,
        "profile": args.profile,
        "vcpus": args.vcpus,
        "irq": args.irq,
        "spu": r.spu,
        "max_buffer_size": args.max_buffer_size,
        "case": args.case,
        "page_size": r.page_size,
        "spu_cpus": list(r.spu_cpus),
        "vcpu_cpus": [list(c) for c in r.vcpu_cpus],
        "vcpu_thread_cpus": None
        if r.vcpu_thread_cpus is None
        else [None if c is None else list(c) for c in r.vcpu_thread_cpus],
        "steps": [{"step": st.step, "vcpu": st.vcpu, "ok": st.ok, "detail": detail} for st, detail in shown],
        "guest_pmbidr": r.guest_pmbidr,
        "guest_pmbidr_fields": r.guest_pmbidr_fields,
        "guest_max_buffer_size": r.guest_max_buffer_size,
        "pinned_per_vcpu": r.pinned_per_vcpu,
        "locked_bytes": r.locked_bytes,
        "vm_lck": r.vm_lck,
        "memlock_limit": r.memlock_limit,
        "warnings": list(r.warnings),
        "error": error,
    }


def _lines(
    args: argparse.Namespace, r: BringUpResult, shown: Sequence[Shown], error: str | None
) -> list[str]:
    """The human ``configure``: the steps, what the guest reads and pins, and how it ended."""
    lines = [
        f"kvmspe configure: {args.vcpus} VCPU(s), IRQ {args.irq}, SPU {r.spu},"
        f" max buffer size {sz(r.max_buffer_size)}",
        *_step_lines(shown),
    ]
    if r.guest_pmbidr is not None:
        f = r.guest_pmbidr_fields
        assert f is not None
        lines.append(
            f"guest PMBIDR_EL1 = {r.guest_pmbidr:#018x}  (MaxBuffSize"
            f" {f['MaxBuffSize']:#06x} = {sz(r.guest_max_buffer_size)},"
            f" ALIGN {f['ALIGN']}, EA {f['EA']})"
        )
    if r.pinned_per_vcpu is not None:
        per = ", ".join(format_size(p) for p in r.pinned_per_vcpu)
        lines.append(f"pinned per VCPU: {per}")
    if r.locked_bytes is not None:
        lines.append(
            f"locked {sz(r.locked_bytes)}, VmLck {sz(r.vm_lck)},"
            f" RLIMIT_MEMLOCK {format_limit(r.memlock_limit)}"
        )
    elif r.vm_lck is not None:
        lines.append(f"VmLck {sz(r.vm_lck)}, RLIMIT_MEMLOCK {format_limit(r.memlock_limit)}")
    lines += [f"warning: {w}" for w in r.warnings]
    if error:
        lines.append(f"stopped: {error}")
    else:
        lines.append("done: SPE is configured on every VCPU")
    return lines


def _step_rows(shown: Sequence[Shown]) -> list[Row]:
    """One row per step, except that a VCPU's successful HAS/SET pairs share a row
    (a failing HAS or SET is a row of its own)."""
    from ..vmm import StepKind

    rows: list[Row] = []
    for st, detail in shown:
        quiet = st.ok and not detail
        if quiet and st.kind is StepKind.HAS:
            continue  # shown with its SET
        if quiet and st.kind is StepKind.SET:
            text = st.step.removeprefix("set ")  # the attribute and its value
            last = rows[-1] if rows else None
            if last and last[0] == [st.vcpu] and last[1] and last[4]:
                rows[-1] = (last[0], True, f"{last[2]}, {text}", "", True)
            else:
                rows.append(([] if st.vcpu is None else [st.vcpu], True, f"HAS+SET {text}", "", True))
            continue
        rows.append(([] if st.vcpu is None else [st.vcpu], st.ok, st.step, detail, False))
    return rows


def _step_lines(shown: Sequence[Shown]) -> list[str]:
    """The steps of ``configure`` for people (:func:`_step_rows`), a successful row
    repeated on consecutive VCPUs shown once for all."""
    merged: list[Row] = []
    for row in _step_rows(shown):
        prev = merged[-1] if merged else None
        if (
            prev
            and row[1]
            and prev[1]
            and row[0]
            and prev[0]
            and prev[2:] == row[2:]
            and prev[0][-1] + 1 == row[0][0]
        ):
            prev[0].append(row[0][0])
        else:
            merged.append(row)
    out = []
    for vcpus, ok, step, detail, _ in merged:
        if not vcpus:
            where = ""
        elif len(vcpus) == 1:
            where = f"vcpu {vcpus[0]}: "
        else:
            where = f"vcpus {vcpus[0]}-{vcpus[-1]}: "
        mark = "ok  " if ok else "FAIL"
        out.append(f"  {mark} {where}{step}" + (f"  ({detail})" if detail else ""))
    return out

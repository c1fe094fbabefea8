"""The ``kvmspe shim`` commands: parsing and rendering only; the work is :mod:`kvmspe.shim`'s."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

__all__ = ["add_parser", "cmd_shim_build", "cmd_shim_run", "shim_host"]

#: The model host of a shim run unless one is given: two SPUs, one without
#: its own limit and one with, so every kind of conformance case applies.
DEFAULT_PROFILE = "big-little"

EPILOG = """\
examples:
  kvmspe shim build -o libkvmspe-shim.so
  kvmspe shim build --cc aarch64-linux-gnu-gcc -o libkvmspe-shim-arm64.so
  kvmspe shim run --feature-bit 16 -- ./my-vmm --spe
  kvmspe shim run --fail set:max_buffer_size@3=ERANGE --fail run@1=rlimit:8M -- ./my-vmm
  kvmspe shim run --guest 0@2=enable:4M:0x0 --json --transcript t.json -- ./my-vmm

The numbers the v6 series does not publish are given, never guessed:
--feature-bit (needed on arm64: the bit KVM_ARM_VCPU_INIT takes for SPE),
--cap (KVM_CHECK_EXTENSION answers it), --exit (KVM_EXIT_RLIMIT, default
kvmspe's own 0x10000). A number upstream Linux uses is refused. The command
gets them as KVMSPE_SPE_FEATURE_BIT, KVMSPE_CAP_ARM_SPE and KVMSPE_EXIT_RLIMIT.
Exit status: the command's (128+N when a signal N ended it; 124 when it
ran past --timeout); 2 for bad usage."""


def add_parser(
    sub: Any, common: argparse.ArgumentParser, fmt: type[argparse.HelpFormatter], parser_class: type[Any]
) -> None:
    """The ``shim`` command and its ``build`` and ``run`` subcommands."""
    from .args import uint

    help_ = "run a program against kvmspe's model in front of this host's real KVM (LD_PRELOAD)"
    shim = sub.add_parser("shim", help=help_, description=help_, epilog=EPILOG, formatter_class=fmt)
    verbs = shim.add_subparsers(dest="verb", metavar="build|run", required=True, parser_class=parser_class)
    p = verbs.add_parser("build", parents=[common], help="compile the shim", formatter_class=fmt)
    p.add_argument("-o", "--out", metavar="PATH", default=None, help="where to write it (default: a cache)")
    p.add_argument("--cc", metavar="CC", default=None, help="the C compiler (default $CC, else cc)")
    p.set_defaults(func=cmd_shim_build)

    p = verbs.add_parser("run", parents=[common], help="run COMMAND under the shim", formatter_class=fmt)
    p.add_argument("--lib", metavar="PATH", default=None, help="a shim built elsewhere (default: build one)")
    where = p.add_mutually_exclusive_group()
    where.add_argument(
        "--profile", metavar="NAME", default=None, help=f"model host (default {DEFAULT_PROFILE})"
    )
    where.add_argument("--fixture", metavar="NAME", default=None, help="model the SPE units of a snapshot")
    number = uint("number", (1 << 32) - 1)
    p.add_argument("--feature-bit", metavar="N", type=number, default=None, help="the SPE VCPU feature bit")
    p.add_argument("--cap", metavar="N", type=number, default=None, help="KVM_CAP_ARM_SPE's number")
    p.add_argument("--exit", metavar="N", type=number, default=None, help="KVM_EXIT_RLIMIT's number")
    p.add_argument("--guest", metavar="SPEC", action="append", default=[], help="script the guest's buffer")
    p.add_argument("--fail", metavar="SPEC", action="append", default=[], help="inject a result")
    p.add_argument("--timeout", metavar="S", type=uint("timeout", 86400, 1), default=600)
    p.add_argument("--transcript", metavar="FILE", default=None, help="write the transcript there")
    p.add_argument("command", metavar="COMMAND", nargs=argparse.REMAINDER, help="after --")
    p.set_defaults(func=cmd_shim_run)


def cmd_shim_build(args: argparse.Namespace) -> int:
    from ..shim import build
    from .output import emit

    path = build.build(args.out, args.cc)
    return emit(args, {"path": str(path)}, [f"shim built: {path}"])


def shim_host(profile: str | None, fixture: str | None) -> tuple[Any, str]:
    """The model host of a shim run, and what it is: the profile's (or the
    snapshot's) SPUs on this host's page size, their CPUs those of this host."""
    from ..host import discovery, profiles
    from ..model.kernel import Host, Spu

    if fixture is not None:
        source: Any = discovery.discover(**discovery.fixture_roots(fixture))
        what = f"the SPE units of snapshot {fixture!r}"
    else:
        source = profile or DEFAULT_PROFILE
        what = f"the SPE units of profile {source!r}"
    model = profiles.model_host(source)
    page = os.sysconf("SC_PAGE_SIZE")
    online = sorted(os.sched_getaffinity(0))
    spus = []
    for spu in model.spus:
        cpus = [c for c in spu.cpus if c in online] or online
        spus.append(Spu(spu.id, pmbidr=spu.pmbidr, cpus=cpus))
    why = f"{what} on this host's {page // 1024} KiB pages and CPUs"
    return Host(page, spus), why


def _numbers(args: argparse.Namespace) -> Any:
    from .. import abi
    from ..shim.server import Numbers

    abi.ASSUMED.check()  # a bad KVMSPE_* number in this environment is bad input here too
    bit = None if args.feature_bit is None else abi.check_assumed("spe_feature_bit", args.feature_bit)
    cap = None if args.cap is None else abi.check_assumed("cap_arm_spe", args.cap)
    exit_ = abi.MODEL_EXIT_RLIMIT if args.exit is None else abi.check_assumed("exit_rlimit", args.exit)
    arm64 = os.uname().machine in ("aarch64", "arm64")
    if arm64 and bit is None:
        from .args import UsageError

        raise UsageError(
            "--feature-bit N is needed on arm64: the v6 series does not publish the SPE VCPU feature bit;"
            " give any bit upstream does not use (bits 9..223), as the VMM under test sets it"
        )
    return Numbers(bit, cap, exit_, all_vcpus_spe=not arm64)


def cmd_shim_run(args: argparse.Namespace) -> int:
    from ..shim import build, launch, script
    from .args import UsageError

    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        raise UsageError("no command to run: give it after --, e.g. kvmspe shim run -- ./my-vmm")
    numbers = _numbers(args)
    faults = tuple(script.parse_fault(s) for s in args.fail)
    guest = tuple(script.parse_guest(s) for s in args.guest)
    host, what = shim_host(args.profile, args.fixture)
    lib = Path(args.lib) if args.lib is not None else build.default_path()
    if args.lib is None and not lib.is_file():
        build.build(lib)
        print(f"kvmspe shim: built {lib}", file=sys.stderr)
    from .. import abi

    # The model here reads KVM_EXIT_RLIMIT as the command gets it, whatever this process's environment.
    abi.set_assumed(exit_rlimit=numbers.exit_rlimit)
    out = _Transcript(args.transcript)
    result = launch.run(
        command,
        lib=lib,
        host=host,
        numbers=numbers,
        faults=faults,
        guest=guest,
        timeout=float(args.timeout),
    )
    status = _status(result.status, result.timed_out)
    return out.write(_answer(args, command, numbers, what, result, status) + "\n", status)


def _answer(
    args: argparse.Namespace, command: list[str], numbers: Any, what: str, result: Any, status: int
) -> str:
    """The run's transcript, in JSON or for people, with the facts of the run."""
    from ..shim import transcript

    if args.json:
        import json

        facts = {
            "command": command,
            "status": status,
            "timed_out": result.timed_out,
            "model": what,
            "numbers": {
                "spe_feature_bit": numbers.spe_feature_bit,
                "cap_arm_spe": numbers.cap_arm_spe,
                "exit_rlimit": numbers.exit_rlimit,
            },
            "notes": result.notes,
        }
        return json.dumps(transcript.to_dict(result.transcript, **facts), indent=2)
    ended = "ran past --timeout and was killed" if result.timed_out else f"exit status {status}"
    head = f"kvmspe shim: {len(result.transcript)} call(s) seen; the command's {ended}"
    lines = [head, f"  model: {what}", *(f"  note: {n}" for n in result.notes)]
    return "\n".join([*lines, transcript.render(result.transcript)])


def _status(code: int, timed_out: bool) -> int:
    if timed_out:
        return 124
    return 128 - code if code < 0 else code


class _Transcript:
    """Where the transcript goes: stdout, as every answer of the CLI; a file,
    written whole by :func:`kvmspe.files.replace_whole`, whose directory is
    tried before the run so that a transcript that cannot be written is
    refused before the command runs; or a FIFO or device, written in place."""

    def __init__(self, path: str | None):
        self._target: Path | None = None
        self._direct: Path | None = None
        if path is None:
            return
        from .args import UsageError

        target = Path(path)
        if not path or "\0" in path or target.is_dir():
            raise UsageError(f"--transcript {path!r}: give the path of a file to write")
        if target.exists() and not target.is_file():
            # A device, a FIFO, /dev/stderr: written in place, as tee does.
            # Replacing it by a file would replace the device node itself
            # (as root: /dev/null for everyone).
            if not os.access(target, os.W_OK):
                raise UsageError(f"--transcript {path!r}: not writable")
            self._direct = target
            return
        if target.is_symlink():
            # Write the file the link names; the link stays.
            target = Path(os.path.realpath(target))
        if not target.parent.is_dir():
            raise UsageError(f"--transcript {path!r}: directory {str(target.parent)!r} does not exist")
        probe = target.with_name(f".{target.name}.{os.getpid()}.tmp")
        try:
            os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644))
            probe.unlink()
        except OSError as exc:
            raise UsageError(
                f"--transcript {path!r}: cannot write in {str(target.parent)!r}: {exc.strerror}"
            ) from None
        self._target = target

    def write(self, text: str, status: int) -> int:
        """Write ``text``; return ``status`` (or the CLI's status for a lost answer)."""
        from .. import files
        from .args import UsageError
        from .output import write

        if self._direct is not None:
            with open(self._direct, "w", encoding="utf-8") as f:
                f.write(text)
            return status
        if self._target is None:
            return write(text, status)
        try:
            files.replace_whole([(self._target, lambda f: f.write(text.encode()))])
        except OSError as exc:
            why = exc.strerror or str(exc)
            raise UsageError(f"--transcript {str(self._target)!r}: cannot write it: {why}") from None
        return status

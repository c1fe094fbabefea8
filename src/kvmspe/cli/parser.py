"""The ``kvmspe`` argument parser: every command, its options and its examples.

Built only when the codec commands' fast path cannot answer
(:func:`kvmspe.cli._codec_args`): argparse and re are imported here, in
:func:`build_parser`, not at start-up.
"""

from __future__ import annotations

import sys

from ..units import format_size
from ..version import __version__
from . import codec, configure, conformance, explain, export, guest, plan, probe, shim
from .args import (
    DEFAULT_IRQ,
    SIZE_HELP,
    argtype,
    argtype_or_none,
    argtype_threshold,
    argtype_user,
    parse_field,
    parse_plan_size,
    size,
    uint,
)
from .output import TEXTFILES, say, write

TYPE_CHECKING = False
if TYPE_CHECKING:
    import argparse
    from collections.abc import Callable
    from typing import Any, TypeAlias

    #: Declares one command: its name, its function and its help; answers its parser.
    Add: TypeAlias = Callable[[str, Callable[[argparse.Namespace], int], str], argparse.ArgumentParser]

__all__ = ["build_parser"]

_EPILOGS = {
    "encode": """examples:
  kvmspe encode 4M          MaxBuffSize field of 4 MiB
  kvmspe encode 0x401000    not representable: exit 1, nearest sizes shown
  kvmspe encode 2M --json""",
    "decode": """examples:
  kvmspe decode 0x400               the size a MaxBuffSize field value stands for
  kvmspe decode --pmbidr 0x40000000005
  kvmspe decode 0x3fff --json""",
    "round": """examples:
  kvmspe round 5M                   nearest representable sizes below and above
  kvmspe round 3000001 --up --page-size 64K
  kvmspe round 1T --down --json""",
    "sizes": """examples:
  kvmspe sizes --from 2M --to 4M    representable sizes in a range
  kvmspe sizes --from 1G --limit 5
  kvmspe sizes --to 64K --json""",
    "probe": """examples:
  kvmspe probe                      this host (exit 1 when it cannot run SPE guests)
  kvmspe probe --fixture arm64-big-little --json
  kvmspe probe --prometheus""",
    "plan": """examples:
  kvmspe plan --vcpus 4 --max-buffer-size 4M
  kvmspe plan --vcpus 64 --max-buffer-size 16M --page-size 64K --granule 4K
  kvmspe plan --profile big-little --spu 11 --vcpus 4 --max-buffer-size max
  kvmspe plan --vcpus 4 --locked 1G --case typical --json
  kvmspe plan --vcpus 4 --max-buffer-size 4M --plot pinned.png
  kvmspe plan --vcpus 4 --textfile /var/lib/node_exporter/textfile_collector""",
    "configure": """examples:
  kvmspe configure --vcpus 4 --max-buffer-size 4M
  kvmspe configure --vcpus 4 --max-buffer-size 4M --enable-buffer --memlock 8M --raise-memlock
  kvmspe configure --profile limited-spu --max-buffer-size 8M       refused: ERANGE, exit 1
  kvmspe configure --profile big-little --vcpus 4 --spu 11          VCPUs on CPUs 4-7
  kvmspe configure --profile big-little --vcpus 8 --spu 11          overcommit: SPU 11 has 4 CPUs, a warning
  kvmspe configure --profile big-little --vcpus 8 --spu 11 --strict-placement    refused, exit 1
  kvmspe configure --backend kvm                                    the real kernel only
  kvmspe configure --vcpus 2 --json""",
    "conformance": """examples:
  kvmspe conformance
  kvmspe conformance --backend kvm --json""",
    "vectors": """examples:
  kvmspe vectors --out vectors/""",
    "export": """examples:
  kvmspe export --lang c | gcc -x c -fsyntax-only -Wall -Wextra -Werror -
  kvmspe export --lang rust > src/kvmspe.rs
  kvmspe export --lang c-selftest > kvmspe_selftest.c""",
    "guest": """examples:
  kvmspe guest --dt                 the SPE node for INTID 21 on a GICv3, to paste under /
  kvmspe guest --dt --gic v2 --vcpus 4 --label spe
  kvmspe guest --acpi --vcpus 4     the MADT GICC "SPE overflow interrupt" of each VCPU
  kvmspe guest --dt --irq 22 --json
  kvmspe guest --perf               in the guest: the largest perf -m,PAGES its SPE units accept
  kvmspe guest --perf --max-buffer-size 4M     when the driver has no caps/max_buff_size""",
    "status": """examples:
  kvmspe status                     every process holding KVM VMs (exit 1: one is near its limit)
  kvmspe status --warn-below 64M --json
  kvmspe status --textfile /var/lib/node_exporter/textfile_collector""",
    "explain": """examples:
  kvmspe explain EDOM
  kvmspe explain 33
  kvmspe explain KVM_ARM_VCPU_SPE_MAX_BUFFER_SIZE
  kvmspe explain KVM_RUN --json""",
}


# Options that several commands take, declared once so their types and defaults agree.


def _spu_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--spu",
        metavar="ID",
        type=uint("SPU id", (1 << 31) - 1),
        default=None,
        help="the SPE unit: its perf PMU type (default: the host's first)",
    )


def _irq_option(p: argparse.ArgumentParser, note: str) -> None:
    p.add_argument(
        "--irq",
        metavar="INTID",
        type=uint("IRQ", (1 << 31) - 1),
        default=DEFAULT_IRQ,
        help=f"the SPE interrupt, a PPI 16..31{note} (default {DEFAULT_IRQ})",
    )


def _case_option(p: argparse.ArgumentParser, what: str, shared_with: str) -> None:
    from .. import planner

    p.add_argument(
        "--case",
        choices=planner.PINNING_CASES,
        default=planner.DEFAULT_CASE,
        help=f"{what} (default {planner.DEFAULT_CASE}, as {shared_with})",
    )


def _prometheus_options(p: argparse.ArgumentParser, command: str) -> None:
    p.add_argument(
        "--prometheus",
        action="store_true",
        help="print the Prometheus text exposition format instead",
    )
    p.add_argument(
        "--textfile",
        metavar="DIR",
        default=None,
        help=f"also write the exposition text to DIR/{TEXTFILES[command]}, atomically"
        " (for node_exporter's textfile collector)",
    )


def _parser_class() -> type[argparse.ArgumentParser]:
    """An ArgumentParser whose errors are one line: ``kvmspe: error: ...`` plus a hint."""
    import argparse
    import re
    from typing import NoReturn

    class _Parser(argparse.ArgumentParser):
        """An ArgumentParser whose errors are one line: ``kvmspe: error: ...`` plus a hint."""

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            # A token like "-4K" is a (bad) value, not an unknown option: let the
            # value parser say "negative sizes are not accepted".
            self._negative_number_matcher = re.compile(r"^-[0-9.]")

        def error(self, message: str) -> NoReturn:
            text = " ".join(message.split())
            self.exit(2, f"kvmspe: error: {text} (see '{self.prog} --help')\n")

        def _print_message(self, message: str, file: Any = None) -> None:
            # Help and version go to stdout, checked as every answer is; errors to stderr.
            if not message:
                return
            if file is not None and file is sys.stderr:
                say(message.rstrip("\n"))
            else:
                write(message)

        def _get_values(self, action: argparse.Action, arg_strings: list[str]) -> Any:
            # argparse drops a "--" given as an option's own value (--to=--) and
            # then hands the option an empty list, or its const, unchecked.
            if action.option_strings and "--" in arg_strings:
                self.error(f"argument {'/'.join(action.option_strings)}: expected a value, not '--'")
            return super()._get_values(action, arg_strings)

    return _Parser


def build_parser() -> argparse.ArgumentParser:
    """The ``kvmspe`` argument parser with every subcommand."""
    import argparse

    parser_class = _parser_class()
    fmt = argparse.RawDescriptionHelpFormatter
    common = parser_class(add_help=False)
    common.add_argument(
        "--json",
        action="store_true",
        help="print a JSON document (its keys: kvmspe's CLI reference, in its source)",
    )

    parser = parser_class(
        prog="kvmspe",
        description="Configure and check the KVM arm64 SPE max buffer size, from a shell.",
        epilog="Sizes accept 4096, 0x1000, 4K, 4KiB, 2M, 1G, 1T (binary units: K = 1024).\n"
        "Exit status: 0 success, 1 the answer is no, 2 bad usage or input.\n"
        "Start with: kvmspe configure --vcpus 4 --max-buffer-size 4M",
        formatter_class=fmt,
    )
    parser.add_argument("--version", action="version", version=f"kvmspe {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def add(name: str, func: Callable[[argparse.Namespace], int], help_: str) -> argparse.ArgumentParser:
        p = sub.add_parser(
            name,
            parents=[common],
            help=help_,
            description=help_,
            epilog=_EPILOGS.get(name),
            formatter_class=fmt,
        )
        p.set_defaults(func=func)
        return p

    for declare in (
        _codec_commands,
        _host_commands,
        _plan_command,
        _configure_command,
        _suite_commands,
        _guest_command,
    ):
        declare(add)
    shim.add_parser(sub, common, fmt, parser_class)
    return parser


def _codec_commands(add: Add) -> None:
    """The encode, decode, round and sizes commands."""
    p = add(
        "encode", codec.cmd_encode, "the PMBIDR_EL1.MaxBuffSize field value of a size (exit 1: no encoding)"
    )
    p.add_argument("size", metavar="SIZE", type=size, help=SIZE_HELP)

    p = add("decode", codec.cmd_decode, "the size a MaxBuffSize field stands for, or a whole PMBIDR_EL1")
    p.add_argument(
        "field",
        metavar="FIELD",
        nargs="?",
        type=argtype(parse_field),
        help="a MaxBuffSize field value, 0..0x3fff",
    )
    p.add_argument(
        "--pmbidr",
        metavar="VALUE",
        type=uint("PMBIDR_EL1 value"),
        help="decode a whole PMBIDR_EL1 value instead",
    )

    p = add("round", codec.cmd_round, "the nearest representable, page-aligned max buffer sizes")
    p.add_argument("size", metavar="SIZE", type=size, help=SIZE_HELP)
    way = p.add_mutually_exclusive_group()
    way.add_argument("--up", dest="direction", action="store_const", const="up", help="round up only")
    way.add_argument("--down", dest="direction", action="store_const", const="down", help="round down only")
    p.set_defaults(direction="both")
    p.add_argument(
        "--page-size",
        metavar="SIZE",
        type=size,
        default=4096,
        help="host page size: 4K, 16K or 64K (default 4K)",
    )

    p = add("sizes", codec.cmd_sizes, "list the representable max buffer sizes in a range")
    p.add_argument("--from", dest="lo", metavar="SIZE", type=size, default=0, help="smallest (default 0)")
    p.add_argument(
        "--to",
        dest="hi",
        metavar="SIZE",
        type=size,
        default=None,
        help="largest (default: 1023 << 42, the largest representable)",
    )
    p.add_argument(
        "--limit", metavar="N", type=uint("limit"), default=32, help="list at most N (default 32; 0 for all)"
    )


def _host_commands(add: Add) -> None:
    """The explain, probe and status commands."""
    p = add("explain", explain.cmd_explain, "what an errno means for each SPE attribute and call")
    p.add_argument(
        "topic",
        metavar="ERRNO|NAME",
        help="an errno name or number (EDOM, 33), an attribute name, or KVM_RUN",
    )
    p = add("probe", probe.cmd_probe, "what this host can do for SPE guests, and why not (exit 1: it cannot)")
    p.add_argument(
        "--fixture",
        metavar="NAME",
        help="read sysfs and procfs from a shipped snapshot (e.g. arm64-big-little)",
    )
    _prometheus_options(p, "probe")
    p = add(
        "status",
        probe.cmd_status,
        "each process holding KVM VMs: VCPUs, VmLck, RLIMIT_MEMLOCK, headroom (exit 1: one is low)",
    )
    p.add_argument(
        "--pid",
        metavar="PID",
        action="append",
        type=uint("pid", (1 << 31) - 1, 1),
        default=None,
        help="look at this process only (repeat for more; default: every process)",
    )
    p.add_argument(
        "--warn-below",
        metavar="SIZE|PERCENT",
        type=argtype_threshold,
        default=None,
        help="warn, and exit 1, when a process's headroom (soft RLIMIT_MEMLOCK minus VmLck) is below"
        " this size or this percentage of its soft limit (default 10%%)",
    )
    _prometheus_options(p, "status")


def _plan_command(add: Add) -> None:
    """The plan command."""
    from .. import planner

    p = add(
        "plan", plan.cmd_plan, "the max buffer size to set and the RLIMIT_MEMLOCK a VM needs, ready to paste"
    )
    where = p.add_mutually_exclusive_group()
    where.add_argument(
        "--profile",
        metavar="NAME",
        default=None,
        help="plan for a model host profile (an unknown name lists the known ones;"
        " default: the host configure would use)",
    )
    where.add_argument(
        "--fixture",
        metavar="NAME",
        default=None,
        help="plan for the SPE units of a shipped sysfs snapshot (e.g. arm64-big-little), as probe",
    )
    _spu_option(p)
    p.add_argument(
        "--vcpus",
        metavar="N",
        type=uint("VCPU count", 1 << 16, 1),
        default=planner.DEFAULT_VCPUS,
        help=f"number of VCPUs with SPE (default {planner.DEFAULT_VCPUS}, as configure)",
    )
    p.add_argument(
        "--max-buffer-size",
        metavar="SIZE|max",
        type=argtype_or_none(parse_plan_size),
        default=planner.DEFAULT_MAX_BUFFER_SIZE,
        help=f"wanted max buffer size (default {format_size(planner.DEFAULT_MAX_BUFFER_SIZE)}, as"
        " configure; 'max': the SPU's limit); rounded down safely, clamped to the SPU's limit",
    )
    _case_option(p, "which case RLIMIT_MEMLOCK covers", "configure")
    p.add_argument(
        "--page-size",
        metavar="SIZE",
        type=size,
        default=None,
        help="host page size: 4K, 16K or 64K (default: the host's)",
    )
    p.add_argument(
        "--spu-limit",
        metavar="SIZE",
        type=size,
        default=None,
        help="the SPU's own MaxBuffSize limit, 0 for none (default: the chosen SPU's)",
    )
    p.add_argument(
        "--granule",
        metavar="SIZE",
        type=size,
        default=4096,
        help="the guest's translation granule: 4K, 16K or 64K (default 4K)",
    )
    p.add_argument(
        "--levels",
        metavar="N",
        type=uint("level count", 5, 1),
        default=None,
        help="stage-1 levels the guest walks, 1..5 (default: those of a 48-bit VA)",
    )
    p.add_argument(
        "--locked",
        metavar="SIZE",
        type=size,
        default=0,
        help="memory the VMM locks already, e.g. guest RAM (default 0)",
    )
    _prometheus_options(p, "plan")
    p.add_argument(
        "--user",
        metavar="NAME",
        type=argtype_user,
        default="USER",
        help="the user (or @group) of the limits.conf lines (default: the placeholder USER)",
    )
    p.add_argument(
        "--plot",
        metavar="FILE.png",
        default=None,
        help="draw pinned memory against buffer size (needs kvmspe[plot], i.e. matplotlib)",
    )


def _configure_command(add: Add) -> None:
    """The configure command."""
    from .. import planner

    p = add(
        "configure",
        configure.cmd_configure,
        "create a VM, configure SPE on every VCPU, run it, report each step",
    )
    p.add_argument(
        "--backend",
        choices=("auto", "model", "kvm"),
        default="auto",
        help="auto (default): the real kernel where it supports SPE, else the model",
    )
    p.add_argument(
        "--profile",
        metavar="NAME",
        default=None,
        help="the model host to use, by profile name (an unknown name lists the known ones;"
        " default: this host if it has SPE units, else default-4k)",
    )
    p.add_argument(
        "--vcpus",
        metavar="N",
        type=uint("VCPU count", 512, 1),
        default=planner.DEFAULT_VCPUS,
        help=f"number of VCPUs (default {planner.DEFAULT_VCPUS})",
    )
    _irq_option(p, "")
    _spu_option(p)
    p.add_argument(
        "--max-buffer-size",
        metavar="SIZE",
        type=size,
        default=planner.DEFAULT_MAX_BUFFER_SIZE,
        help=f"KVM_ARM_VCPU_SPE_MAX_BUFFER_SIZE (default {format_size(planner.DEFAULT_MAX_BUFFER_SIZE)})",
    )
    p.add_argument(
        "--memlock",
        metavar="SIZE",
        type=size,
        default=None,
        help="the model's RLIMIT_MEMLOCK (default: this process's soft limit)",
    )
    p.add_argument(
        "--locked",
        metavar="SIZE",
        type=size,
        default=None,
        help="memory the modelled VMM has locked already (default 0)",
    )
    p.add_argument(
        "--raise-memlock",
        action="store_true",
        help="raise RLIMIT_MEMLOCK as the planner says, and by the excess of any KVM_EXIT_RLIMIT",
    )
    _case_option(p, "the planner's case --raise-memlock raises to", "plan")
    p.add_argument(
        "--strict-placement",
        action="store_true",
        help="give each VCPU a CPU of its SPU of its own: refuse more VCPUs than the SPU has CPUs"
        " (default: allow overcommit, with a warning saying what it costs)",
    )
    p.add_argument(
        "--enable-buffer",
        metavar="SIZE",
        nargs="?",
        type=size,
        const=0,
        default=None,
        help="the modelled guest enables a buffer on every VCPU (default size: the max)",
    )


def _suite_commands(add: Add) -> None:
    """The conformance, vectors and export commands."""
    p = add(
        "conformance",
        conformance.cmd_conformance,
        "run the conformance cases on the model or the real kernel",
    )
    p.add_argument("--backend", choices=("model", "kvm"), default="model", help="default: model")
    p.add_argument(
        "--no-scripted-guest",
        action="store_true",
        help="on the real kernel under kvmspe's shim, skip the cases that need guest code, as the C"
        " self-test does",
    )

    p = add(
        "vectors", export.cmd_vectors, "write the codec and scenario test vectors (JSON) into a directory"
    )
    p.add_argument("--out", metavar="DIR", required=True, help="directory to write (created if missing)")

    from ..export import LANGS

    p = add("export", export.cmd_export, "print a C header, a Rust module or a C conformance program")
    p.add_argument(
        "--lang", choices=tuple(LANGS), required=True, help="; ".join(f"{k}: {v}" for k, v in LANGS.items())
    )


def _guest_command(add: Add) -> None:
    """The guest command."""
    p = add(
        "guest",
        guest.cmd_guest,
        "the guest's side of SPE: its firmware's description (a device-tree node, an ACPI field),"
        " and the perf buffer it can use",
    )
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--dt", action="store_true", help="the device-tree node (compatible string and PPI)")
    what.add_argument("--acpi", action="store_true", help="the MADT GICC 'SPE overflow interrupt' field")
    what.add_argument(
        "--perf",
        action="store_true",
        help="in the guest: the largest perf AUX buffer (-m,PAGES) its SPE units accept",
    )
    p.add_argument(
        "--irq",
        metavar="INTID",
        type=uint("IRQ", (1 << 31) - 1),
        default=None,
        help=f"the SPE interrupt, a PPI 16..31, as given to configure (default {DEFAULT_IRQ})",
    )
    p.add_argument(
        "--vcpus",
        metavar="N",
        type=uint("VCPU count", 512, 1),
        default=None,
        help="number of VCPUs: GICCs for --acpi, the PPI's CPU mask for --gic v2 (at most 8); default 1",
    )
    p.add_argument(
        "--max-buffer-size",
        metavar="SIZE",
        type=size,
        default=None,
        help="for --perf: the VM's max buffer size where the guest's driver has no caps/max_buff_size"
        " (the host's 'kvmspe plan' gives it)",
    )
    p.add_argument(
        "--fixture",
        metavar="NAME|DIR",
        default=None,
        help="for --perf: read a guest's sysfs from a shipped snapshot (arm64-guest, arm64-guest-capped)"
        " or a directory with sys/ and proc/",
    )
    p.add_argument(
        "--page-size",
        metavar="SIZE",
        type=size,
        default=None,
        help="for --perf: the guest's page size, 4K, 16K or 64K (default: this system's; 4K for --fixture)",
    )
    p.add_argument(
        "--gic",
        choices=("v3", "v2"),
        default=None,
        help="the guest's GIC, for --dt (default v3, as configure)",
    )
    p.add_argument(
        "--node-name", metavar="NAME", default=None, help="the node's name, for --dt (default spe-pmu)"
    )
    p.add_argument(
        "--label", metavar="LABEL", default=None, help="a label for the node, for --dt (default none)"
    )

"""The plot of a plan: pinned memory per VM against the max buffer size, as a PNG.

What ``kvmspe plan --plot`` draws, from the planner's results: one curve per
pinning case (:func:`kvmspe.planner.sweep`), the chosen size as a vertical
line, the RLIMIT_MEMLOCK the plan gives as a horizontal one, and the
planner's warnings under the axes. Drawing needs matplotlib (the ``plot``
extra), imported only by :func:`figure_class`; only its object-oriented
Figure is used, never pyplot or a global backend. The PNG is written whole
by :func:`kvmspe.files.replace_whole`.
"""

from __future__ import annotations

import importlib
import textwrap
from typing import TYPE_CHECKING, Any

from . import files, planner
from .units import format_size

if TYPE_CHECKING:
    from .planner import Plan, Sweep

__all__ = [
    "COLOURS",
    "DPI",
    "NOTE_COLOUR",
    "NOTE_FONT",
    "NOTE_WIDTH",
    "PIXELS",
    "binary_ticks",
    "distinct_ratios",
    "draw",
    "figure_class",
    "labels",
    "notes",
    "save",
    "sweep",
]

#: The plot's size in pixels, and its resolution: a PNG of exactly this size.
PIXELS = (900, 560)
DPI = 100
#: Colours of the plot: one per pinning case, the chosen size, the RLIMIT_MEMLOCK line.
#: The chosen size's colour is used by nothing else, so the marker can be found in the PNG.
COLOURS = {
    "best": "#1b9e77",
    "typical": "#7570b3",
    "worst": "#d95f02",
    "chosen": "#e7298a",
    "limit": "#444444",
}
#: The plot's notes: characters per line of warning text, its size and colour.
NOTE_WIDTH = 125
NOTE_FONT = 8
NOTE_COLOUR = "#b2182b"

#: Each case's line: best and typical nearly coincide, so best is wide underneath, typical dashed on top.
_STYLES = {"best": ("-", 4.0), "typical": ("--", 1.5), "worst": ("-", 1.5)}


def figure_class() -> Any:
    """matplotlib's Figure class; raises ImportError where matplotlib is not installed."""
    figure = importlib.import_module("matplotlib.figure")
    importlib.import_module("matplotlib.ticker")
    return figure.Figure


def binary_ticks(value: float, _pos: object = None) -> str:
    """An axis label for a power-of-two byte count: ``64 KiB``, ``1 GiB``."""
    n = int(value)
    return format_size(n) if n > 0 and n == value else ""


def distinct_ratios(values: dict[str, float], least: int = 2, most: int = 8) -> dict[str, str]:
    """Each value as ``x1.00``, with more decimals only for values that would otherwise
    read the same as a different one (``x1.0010`` and ``x1.0034``, not both ``x1.00``)."""
    digits = dict.fromkeys(values, least)

    def text(key: str) -> str:
        return f"x{values[key]:.{digits[key]}f}"

    while True:
        clash = {
            a
            for a in values
            for b in values
            if values[a] != values[b] and text(a) == text(b) and digits[a] < most
        }
        if not clash:
            return {key: text(key) for key in values}
        for key in clash:
            digits[key] += 1


def notes(plan: Plan) -> list[str]:
    """The planner's warnings as the plot shows them, wrapped to fit its width."""
    lines: list[str] = []
    for w in plan.warnings:
        lines += textwrap.wrap(f"warning: {w}", NOTE_WIDTH, subsequent_indent="  ")
    return lines


def labels(plan: Plan) -> dict[str, str]:
    """The legend's label of each case: its amplification at the chosen size, told apart."""
    if not plan.size:
        return {case: case for case in planner.PINNING_CASES}
    ratios = distinct_ratios({case: plan.pinned[case].amplification for case in planner.PINNING_CASES})
    return {case: f"{case} ({ratios[case]} at the chosen size)" for case in planner.PINNING_CASES}


def sweep(plan: Plan) -> Sweep:
    """The sizes the plot draws: from one page per VCPU up to four times the chosen
    size (at least 64 MiB), no further than the SPU's limit. Empty only for size 0
    (no limit) when not even one page per VCPU fits the guest's VA space."""
    up_to = max(plan.size * 4, 64 << 20)
    if plan.spu_limit:
        up_to = min(up_to, plan.spu_limit)
    return planner.sweep(
        plan.vcpus, page_size=plan.page_size, granule=plan.granule, levels=plan.levels, up_to=up_to
    )


def draw(figure_class: Any, plan: Plan, sizes: Sweep) -> Any:
    """The figure of ``plan`` over the non-empty ``sizes`` (:func:`sweep`), made with
    ``figure_class`` (:func:`figure_class`); nothing is written."""
    width, height = PIXELS
    fig = figure_class(figsize=(width / DPI, height / DPI), dpi=DPI)
    ax = fig.subplots()
    _draw_cases(ax, plan, sizes)
    if plan.memlock_limit is not None:
        ax.axhline(
            plan.memlock_limit,
            color=COLOURS["limit"],
            linestyle=":",
            linewidth=1.5,
            label=f"RLIMIT_MEMLOCK ({plan.case}): {format_size(plan.memlock_limit)}",
        )
    _draw_axes(ax, plan, sizes)
    ax.legend(loc="upper left", fontsize=9)
    fig.tight_layout()
    _draw_notes(fig, notes(plan))
    return fig


def _draw_cases(ax: Any, plan: Plan, sizes: Sweep) -> None:
    """One curve per case, and the chosen size: a vertical line with each case's figure on it."""
    legend = labels(plan)
    for case in planner.PINNING_CASES:
        linestyle, linewidth = _STYLES[case]
        ax.plot(
            sizes.sizes,
            sizes.per_vm[case],
            linestyle=linestyle,
            linewidth=linewidth,
            marker="o",
            markersize=3,
            color=COLOURS[case],
            label=legend[case],
        )
    if not plan.size:
        return
    ax.axvline(plan.size, color=COLOURS["chosen"], linewidth=2, label=f"chosen: {format_size(plan.size)}")
    for case in planner.PINNING_CASES:
        ax.plot(
            [plan.size],
            [plan.pinned[case].per_vm],
            marker="D",
            markersize=7,
            color=COLOURS["chosen"],
            markeredgecolor=COLOURS[case],
        )


def _draw_axes(ax: Any, plan: Plan, sizes: Sweep) -> None:
    """Binary log scales with byte labels, the grid, the axis names and the title."""
    ticker = importlib.import_module("matplotlib.ticker")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log", base=2)
    # Half an octave of room on each side of the sizes drawn, and no more.
    ax.set_xlim(sizes.sizes[0] / 2**0.5, max(sizes.sizes[-1], plan.size) * 2**0.5)
    for axis in (ax.xaxis, ax.yaxis):
        axis.set_major_formatter(ticker.FuncFormatter(binary_ticks))
    ax.grid(True, which="major", color="#dddddd", linewidth=0.6)
    ax.set_xlabel("max buffer size (KVM_ARM_VCPU_SPE_MAX_BUFFER_SIZE)")
    ax.set_ylabel("host memory pinned per VM")
    ax.set_title(
        f"SPE buffers of {plan.vcpus} VCPU{'s' if plan.vcpus != 1 else ''}: {format_size(plan.page_size)}"
        f" host pages, {format_size(plan.granule)} guest granule, {plan.levels} levels",
        fontsize=11,
    )


def _draw_notes(fig: Any, lines: list[str]) -> None:
    """The notes under the axes, with room made for them."""
    if not lines:
        return
    # A line is about 1.4 times the font size.
    line = 1.4 * NOTE_FONT / 72 * DPI / PIXELS[1]
    bottom = fig.subplotpars.bottom
    fig.subplots_adjust(bottom=bottom + line * len(lines))
    fig.text(
        0.01,
        0.01,
        "\n".join(lines),
        fontsize=NOTE_FONT,
        color=NOTE_COLOUR,
        ha="left",
        va="bottom",
    )


def save(fig: Any, path: str) -> None:
    """Write ``fig`` to ``path`` as a PNG of :data:`PIXELS`, whole
    (:func:`kvmspe.files.replace_whole`: readers see the old file or the new one).
    Raises OSError as that function does."""
    files.replace_whole([(path, lambda f: fig.savefig(f, format="png", dpi=DPI))])

"""``plan --plot FILE.png``: the option's checks, made before any work, and its errors;
the drawing is :mod:`kvmspe.plot`'s."""

from __future__ import annotations

from .args import UsageError
from .output import write_failure

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from ..planner import Plan

__all__ = ["check_target", "draw", "figure_class"]

#: What ``--plot`` accepts, as its errors say.
ACCEPTED = "a new or regular .png file"


def figure_class() -> Any:
    """matplotlib's Figure class, or a one-line error naming the extra that installs it."""
    from .. import plot

    try:
        return plot.figure_class()
    except ImportError:
        raise UsageError(
            "--plot needs matplotlib, which is not installed: pip install 'kvmspe[plot]'"
        ) from None


def check_target(path: str) -> str:
    """``path`` when a PNG may be written there (checked before any work), else a UsageError."""
    import os

    if not path.strip():
        raise UsageError("--plot needs a file name, e.g. --plot pinned.png")
    if not path.lower().endswith(".png"):
        raise UsageError(f"--plot {path!r}: the plot is a PNG; accepted: a file name ending in .png")
    if any(ord(c) < 0x20 or c == "\x7f" for c in path):
        # A NUL cannot reach the OS; a newline would split "plot written to ..." in two.
        raise UsageError(
            f"--plot {path!r} holds a control character; accepted: a file name ending in .png without one"
        )
    if os.path.isdir(path):
        raise UsageError(f"--plot {path!r} is a directory; accepted: a file name ending in .png")
    _check_writable(path)
    return path


def _check_writable(path: str) -> None:
    """The target and its directory, before any drawing: the write itself says again if it fails later."""
    import errno
    import os
    import stat

    from .. import files

    try:
        target = files.target_of(path)
    except OSError as exc:
        raise UsageError(f"--plot {path!r}: cannot write it: {exc.strerror}") from None
    if os.path.exists(target) and not os.path.isfile(target):
        raise UsageError(f"--plot {path!r} is not a regular file; accepted: {ACCEPTED}")
    if os.path.isfile(target) and not os.access(target, os.W_OK):
        raise UsageError(f"--plot {path!r}: cannot write it: {os.strerror(errno.EACCES)}")
    directory = os.path.dirname(target) or "."
    try:
        is_dir = stat.S_ISDIR(os.stat(directory).st_mode)
        reason = "" if is_dir else os.strerror(errno.ENOTDIR)
    except OSError as exc:
        reason = exc.strerror or str(exc)
    if not reason and not os.access(directory, os.W_OK | os.X_OK):
        reason = os.strerror(errno.EACCES)
    if reason:
        raise UsageError(f"--plot {path!r}: cannot write in {directory!r}: {reason}")


def draw(figure_class: Any, path: str, plan: Plan) -> Any:
    """Draw ``plan`` (:func:`kvmspe.plot.draw`) and write it to ``path`` whole; the figure."""
    from .. import plot
    from ..units import format_size

    sizes = plot.sweep(plan)
    if not sizes.sizes:
        raise UsageError(
            f"--plot: not even one {format_size(plan.page_size)} page per VCPU fits {plan.vcpus} VCPUs"
            f" in a {plan.va_bits}-bit guest VA space, so there is no size to draw;"
            " accepted: fewer VCPUs, or more --levels"
        )
    fig = plot.draw(figure_class, plan, sizes)
    try:
        plot.save(fig, path)
    except OSError as exc:
        raise write_failure(exc, path, "--plot", ACCEPTED) from None
    return fig

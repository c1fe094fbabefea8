"""How the command line writes: the answer on stdout (human lines, JSON or Prometheus
text), one line on stderr, tables, and files written whole (``--textfile``, ``--plot``).

Every answer is written and flushed here, so a failure to write it is seen
here (:class:`_Unwritten`), not at interpreter exit. Imported on the fast path:
no more than ``sys`` and the package's light modules at module level.
"""

from __future__ import annotations

import sys
from errno import EBADF as _EBADF
from errno import EPIPE as _EPIPE

from ..units import format_size_hex
from .args import UsageError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Sequence
    from typing import Any, TextIO

    from .args import Args, Doc

__all__ = [
    "TEXTFILES",
    "emit",
    "families",
    "metrics",
    "one_line",
    "output",
    "say",
    "sz",
    "table",
    "textfile_dir",
    "unwritten",
    "write",
    "write_atomically",
    "write_failure",
]

#: Sizes as answers show them: ``0x400000 (4 MiB)``.
sz = format_size_hex


def emit(args: Args, doc: Doc, lines: Sequence[str], code: int = 0) -> int:
    """Print ``doc`` as JSON with --json, else the human ``lines``; return ``code``."""
    if args.json:
        import json  # only when asked: the human path starts faster without it

        return write(json.dumps(doc, indent=2) + "\n", code)
    return write("".join(line + "\n" for line in lines), code)


class _Unwritten(Exception):
    """The answer, whose exit status is ``code``, could not be written to stdout
    (``errno``: EPIPE when the reader has gone). Handled by :func:`kvmspe.cli.main` only."""

    def __init__(self, code: int, errno: int):
        super().__init__(code, errno)
        self.code = code
        self.errno = errno


def write(text: str, code: int = 0) -> int:
    """Write ``text`` on stdout and flush it now, so that a failure is seen here,
    not at interpreter exit; return ``code``. Raises :class:`_Unwritten`."""
    stream = sys.stdout
    try:
        if stream is None:  # Python started with descriptor 1 closed
            raise OSError(_EBADF, "standard output is closed")
        stream.write(text)
        stream.flush()
    except (OSError, ValueError) as exc:  # ValueError: the stream object was closed
        raise _Unwritten(code, getattr(exc, "errno", None) or _EBADF) from None
    return code


def say(line: str) -> None:
    """One line on stderr, if it can still take one; never an error of its own."""
    stream = sys.stderr
    if stream is None:
        return
    try:
        stream.write(line + "\n")
        stream.flush()
    except (OSError, ValueError):
        _discard(stream)


def _discard(stream: TextIO | None) -> None:
    """Point the process's own stdout or stderr that failed at /dev/null, so the
    text still buffered in it cannot fail again, or be reported, at exit."""
    own = stream is not None and (stream is sys.__stdout__ or stream is sys.__stderr__)
    if stream is None or not own:
        return
    import os

    try:
        fd = stream.fileno()
        null = os.open(os.devnull, os.O_WRONLY)
    except (OSError, ValueError):
        return
    try:
        os.dup2(null, fd)
    except OSError:
        pass
    finally:
        os.close(null)


def unwritten(exc: _Unwritten) -> int:
    """The exit status when the answer could not be written.

    A reader that went away (EPIPE, as in ``kvmspe sizes --limit 0 | head -1``)
    chose to stop reading: nothing is said and the answer's own status stands.
    Any other failure (stdout closed, a full device, an I/O error) means the
    answer was lost: one line on stderr and exit status 2, whatever the answer was.
    """
    _discard(sys.stdout)
    if exc.errno == _EPIPE:
        return exc.code
    import os

    why = "it is closed" if exc.errno == _EBADF else os.strerror(exc.errno)
    say(f"kvmspe: error: cannot write the answer to standard output: {why}")
    return 2


def one_line(text: str) -> str:
    """``text`` with every run of blanks and newlines made one space."""
    return " ".join(text.split())


def table(rows: Sequence[tuple[str, str]], indent: str = "") -> list[str]:
    """Rows of key and value, the values aligned after the longest key."""
    width = max((len(k) for k, _ in rows), default=0)
    return [f"{indent}{k:<{width}}  {v}".rstrip() for k, v in rows]


# --- Prometheus and --textfile ---------------------------------------------------------------

#: The file ``--textfile DIR`` writes, by command: node_exporter's textfile collector reads DIR/*.prom.
TEXTFILES = {"status": "kvmspe.prom", "probe": "kvmspe-probe.prom", "plan": "kvmspe-plan.prom"}


def textfile_dir(directory: str | None) -> str | None:
    """``directory`` when a textfile may be written in it (checked before any work), else a UsageError."""
    import errno
    import os

    if directory is None:
        return None
    accepted = "accepted: an existing directory, e.g. /var/lib/node_exporter/textfile_collector"
    if not directory.strip() or any(ord(c) < 0x20 or c == "\x7f" for c in directory):
        raise UsageError(f"--textfile {directory!r}: not a directory name; {accepted}")
    if not os.path.isdir(directory):
        raise UsageError(f"--textfile {directory!r} is not a directory; {accepted}")
    if not os.access(directory, os.W_OK | os.X_OK):
        raise UsageError(f"--textfile {directory!r}: cannot write in it: {os.strerror(errno.EACCES)}")
    return directory


def _write_textfile(directory: str, command: str, text: str) -> str:
    """Write ``text`` as DIR/NAME atomically (a temporary file in DIR, then a rename); its path."""
    import os

    path = os.path.join(directory, TEXTFILES[command])
    data = text.encode("utf-8")
    write_atomically(
        path,
        lambda f: f.write(data),
        option="--textfile",
        accepted=f"a directory whose {TEXTFILES[command]} is a regular file or absent",
    )
    return path


def output(args: Args, command: str, doc: Doc, lines: list[str], families: Any, code: int) -> int:
    """As :func:`emit`, with the exposition text of ``families`` on stdout for ``--prometheus``,
    and written to DIR for ``--textfile DIR`` (whatever stdout shows; the path is reported)."""
    from .. import prometheus

    if families is None:
        return emit(args, doc, lines, code)
    text = prometheus.render(families)
    if args.textfile is not None:
        path = _write_textfile(args.textfile, command, text)
        doc = {**doc, "textfile": path}
        lines = [*lines, f"wrote {path}"]
    if args.prometheus:
        return write(text, code)
    return emit(args, doc, lines, code)


def families(args: Args, make: Callable[[], Any]) -> Any:
    """The metric families when --prometheus or --textfile asks for them, else None."""
    if args.json and args.prometheus:
        raise UsageError("--json and --prometheus both given; accepted: one output format")
    return make() if args.prometheus or args.textfile is not None else None


def metrics() -> Any:
    """:mod:`kvmspe.metrics`, imported when metrics are asked for."""
    from .. import metrics

    return metrics


# --- files written whole -----------------------------------------------------------------------


def write_failure(exc: OSError, path: str, option: str, accepted: str) -> UsageError:
    """The one-line error for ``exc``, raised writing ``path`` whole
    (:func:`kvmspe.files.replace_whole`): ``option`` names the command-line
    option in it, and ``accepted`` what that option accepts."""
    import errno
    import os

    from .. import files

    why = exc.strerror or os.strerror(exc.errno or 0) or str(exc)
    if exc.errno == errno.EINVAL and exc.filename == path:
        return UsageError(f"{option} {path!r} is not a regular file; accepted: {accepted}")
    if isinstance(exc, FileNotFoundError | NotADirectoryError) or exc.filename not in (None, path):
        directory = os.path.dirname(files.target_of(path)) or "."
        return UsageError(f"{option} {path!r}: cannot write in {directory!r}: {why}")
    return UsageError(f"{option} {path!r}: cannot write it: {why}")


def write_atomically(path: str, write: Callable[[Any], None], *, option: str, accepted: str) -> None:
    """Write ``path`` whole with :func:`kvmspe.files.replace_whole`: readers, and
    signals, see the old file or the whole new one; a symbolic link is written
    through and stays, an existing file keeps its mode and owner, and a file a
    plain write could not change is refused. A failure is a :func:`write_failure`."""
    from .. import files

    try:
        files.replace_whole([(path, write)])
    except OSError as exc:
        raise write_failure(exc, path, option, accepted) from None

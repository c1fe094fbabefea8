"""Writing files whole: whatever interrupts it, the files are all old or all new.

:func:`replace_whole` is the one way kvmspe writes a file (the test vectors,
the plot). Each file is written to a temporary file next to its target,
flushed to disk, and only when every one is complete are they renamed over
their targets (``os.replace``, atomic per file). SIGINT, SIGTERM, SIGHUP and
SIGQUIT are held back (blocked in the calling thread) from the first
temporary file to the last rename and delivered afterwards, so such a signal
ends the program with all the old files and no temporary one, or all the
new ones: never a mix. Only what no program can catch (SIGKILL, a power
cut) can leave the rename half done.

A target is replaced only as a plain write would have changed it:

* a symbolic link is written through: the file it names is replaced and the
  link stays; a link that loops, or names a directory, is refused;
* an existing target must be a regular file with one name (a rename would
  split it from its other hard links) that the caller may write
  (``os.access``); it keeps its permission bits, its owner and its group
  (when they cannot be kept, it is refused rather than given other ones);
* a new file gets the mode ``open`` gives it (0666 less the umask).

Refusals and failures are :class:`OSError` (``PermissionError`` and such),
with the errno and the target's name, as ``open`` would raise them.
"""

from __future__ import annotations

import errno
import os
import signal
import stat
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import BinaryIO

__all__ = ["HELD_SIGNALS", "replace_whole", "target_of"]

#: The signals held back while files are replaced: those that end a program by default
#: and that it can catch.
HELD_SIGNALS = frozenset({signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT})


def target_of(path: str | Path) -> str:
    """The file a write of ``path`` changes: ``path``, or the file its symbolic
    links lead to. OSError (ELOOP, EISDIR) when that is no file a write could replace."""
    name = os.fspath(path)
    target = name
    if os.path.islink(name):
        try:
            target = os.path.realpath(name, strict=True)
        except FileNotFoundError:
            target = os.path.realpath(name)  # a dangling link: the write creates its target
        except OSError as exc:  # ELOOP: the link leads back to itself
            raise OSError(exc.errno or errno.ELOOP, "a symbolic link that loops", name) from None
    if os.path.isdir(target):
        raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), name)
    return target


def _check_target(name: str, target: str) -> os.stat_result | None:
    """The target's status if it exists and may be replaced, None if it is new; else OSError."""
    try:
        st = os.stat(target)
    except FileNotFoundError:
        return None
    if not stat.S_ISREG(st.st_mode):
        raise OSError(errno.EINVAL, "not a regular file (a device, FIFO or socket is never replaced)", name)
    if st.st_nlink > 1:
        raise OSError(errno.EMLINK, "the file has other hard links, which a new file would not update", name)
    if not os.access(target, os.W_OK):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), name)
    return st


def _temporary(directory: str) -> tuple[int, str]:
    """A new file of a short random name in ``directory``, mode 0666 less the umask."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
    for _ in range(16):  # a random name taken 16 times in a row: something else is wrong
        # A short name of its own, not one built on the target's: a target name
        # near NAME_MAX (255 bytes) must not make the temporary one too long.
        tmp = os.path.join(directory, f".kvmspe.{os.urandom(6).hex()}.tmp")
        try:
            return os.open(tmp, flags, 0o666), tmp
        except FileExistsError:
            continue
    raise FileExistsError(errno.EEXIST, "cannot create a temporary file", directory)


def _fill(
    fd: int, tmp: str, st: os.stat_result | None, name: str, write: Callable[[BinaryIO], object]
) -> None:
    """Give the temporary file the target's mode and owner, write it, flush it to disk."""
    with os.fdopen(fd, "wb", closefd=False) as f:
        if st is not None:
            os.fchmod(fd, stat.S_IMODE(st.st_mode))
            if (st.st_uid, st.st_gid) != (os.fstat(fd).st_uid, os.fstat(fd).st_gid):
                try:
                    os.fchown(fd, st.st_uid, st.st_gid)
                except PermissionError:
                    raise PermissionError(
                        errno.EPERM, "a new file could not keep its owner and group", name
                    ) from None
        write(f)
        f.flush()
        os.fsync(fd)


def replace_whole(files: Sequence[tuple[str | Path, Callable[[BinaryIO], object]]]) -> list[str]:
    """Write every ``(path, write)`` (``write`` fills a binary file), all or nothing;
    return the paths. See the module docstring for what it guarantees and refuses."""
    plan = []
    for path, write in files:
        name = os.fspath(path)
        target = target_of(name)
        plan.append((name, target, _check_target(name, target), write))
    temps: list[str] = []
    held = signal.pthread_sigmask(signal.SIG_BLOCK, HELD_SIGNALS)
    try:
        for name, target, st, write in plan:
            fd, tmp = _temporary(os.path.dirname(target) or ".")
            temps.append(tmp)
            try:
                _fill(fd, tmp, st, name, write)
            finally:
                os.close(fd)
        for tmp, (_, target, _, _) in zip(temps, plan, strict=True):
            os.replace(tmp, target)
        temps.clear()
    finally:
        for tmp in temps:
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
        signal.pthread_sigmask(signal.SIG_SETMASK, held)
    return [name for name, _, _, _ in plan]
